"""Small labelled image folders written by the tests: oriented gratings, one class per
orientation, with random colour, phase, frequency and noise (easy for a model that has learned
local structure, not solvable from colour alone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image


def grating(rng, cls: int, n_classes: int, size: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    th = cls * np.pi / n_classes
    f = rng.uniform(0.25, 0.45)
    g = np.sin(f * (np.cos(th) * xx + np.sin(th) * yy) + rng.uniform(0, 2 * np.pi))
    col, bg = rng.uniform(0.2, 1, 3), rng.uniform(0, 0.5, 3)
    img = bg + (g[..., None] * 0.5 + 0.5) * col * 0.8 + rng.normal(0, 0.05, (size, size, 3))
    return (img.clip(0, 1) * 255).astype(np.uint8)


def labelled_folder(root: Path, n_train: int = 40, n_val: int = 20, n_classes: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(n_classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(grating(rng, c, n_classes)).save(d / f"{i:03d}.jpg", quality=95)
    return root


def unlabelled_shards(root: Path, n: int = 1000, n_classes: int = 4, seed: int = 1, per_shard: int = 250) -> Path:
    """WebDataset shards of JPEG gratings (no labels), for pretraining."""
    import io

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for s in range(0, n, per_shard):
        with wds.TarWriter(str(root / f"shard-{s // per_shard:04d}.tar")) as w:
            for i in range(s, min(n, s + per_shard)):
                buf = io.BytesIO()
                Image.fromarray(grating(rng, int(rng.integers(n_classes)), n_classes)).save(buf, "JPEG", quality=95)
                w.write({"__key__": f"{i:08d}", "jpg": buf.getvalue()})
    return root
