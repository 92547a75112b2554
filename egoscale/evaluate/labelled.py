"""Labelled image folders (ImageNet layout: one folder per class) and label-fraction subsets.

Class indices come from the train tree (sorted folder names); the val tree must have the same
classes. The paper's conditions draw a uniformly random fraction of all training images
("permissive" 2 %, "stringent" 1.0147 %, i.e. 13,000 ImageNet images); `per-class` sampling
takes the same number from every class instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from egoscale.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
CONDITIONS = {"permissive": 0.02, "stringent": 0.010147}


@dataclass
class Labelled:
    root: Path
    classes: list[str]
    files: list[str]  # relative to root
    labels: list[int]

    def __len__(self) -> int:
        return len(self.files)


def scan(root: str | Path, classes: list[str] | None = None) -> Labelled:
    """List images under root/CLASS/...; with `classes`, require exactly those class folders."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{root}: no class folders (expected ROOT/CLASS/image.jpg)")
    if classes is not None and found != classes:
        extra, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
        raise DataError(f"{root}: classes differ from the train tree: "
                        f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                        f"extra {extra[:5]}{'...' if len(extra) > 5 else ''}")
    classes = classes or found
    files, labels = [], []
    for i, c in enumerate(classes):
        imgs = sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        files += [str(p.relative_to(root)) for p in imgs]
        labels += [i] * len(imgs)
    if not files:
        raise DataError(f"{root}: no images found")
    return Labelled(root, classes, files, labels)


def label_subset(data: Labelled, fraction: float, sampling: str = "random", seed: int = 0) -> Labelled:
    """A seeded subset: `random` = uniform over all images, `per-class` = equal count per class."""
    if not 0 < fraction <= 1:
        raise DataError(f"label fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.labels)
    if sampling == "random":
        n = max(1, round(fraction * len(data)))
        idx = np.sort(rng.choice(len(data), size=n, replace=False))
    elif sampling == "per-class":
        per = math.floor(fraction * len(data) / len(data.classes) + 1e-9)
        if per < 1:
            need = len(data.classes) / len(data)
            raise DataError(f"label fraction {fraction:g} of {len(data)} images leaves some of the "
                            f"{len(data.classes)} classes with no example in per-class sampling; use "
                            f"--label-fraction {min(1.0, need):.3g} or more, or --sampling random")
        idx = []
        for c in range(len(data.classes)):
            pool = np.flatnonzero(labels == c)
            if len(pool) < per:
                raise DataError(f"class {data.classes[c]!r} has {len(pool)} images, fewer than the {per} "
                                "per class that per-class sampling needs; lower --label-fraction or use "
                                "--sampling random")
            idx += rng.choice(pool, size=per, replace=False).tolist()
        idx = np.sort(np.asarray(idx))
    else:
        raise DataError(f"unknown sampling {sampling!r} (random or per-class)")
    return Labelled(data.root, data.classes, [data.files[i] for i in idx], [data.labels[i] for i in idx])


def write_list(data: Labelled, path: str | Path) -> None:
    from egoscale.fileio import write_text_atomic

    write_text_atomic(path, "".join(f"{f}\t{y}\n" for f, y in zip(data.files, data.labels)))


def read_list(path: str | Path, root: str | Path, classes: list[str]) -> Labelled:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file list")
    files, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            f, y = line.rsplit("\t", 1)
            files.append(f)
            labels.append(int(y))
        except ValueError:
            raise DataError(f"{path}:{n}: expected 'relative/path<TAB>label'") from None
    return Labelled(Path(root), classes, files, labels)


def topk_correct(logits, targets, ks=(1, 5)) -> dict[int, int]:
    """Number of samples whose target is among the k highest logits, for each k.

    With fewer classes than k, top-k counts every sample as correct (k covers all classes).
    """
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices  # (B, maxk)
    hit = top.eq(targets.view(-1, 1))
    return {k: int(hit[:, : min(k, maxk)].any(dim=1).sum().item()) for k in ks}
