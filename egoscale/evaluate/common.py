"""The evaluation core that `finetune` and `probe` share.

Both read the same labelled folders and label subsets, load the encoder the same way, pick
device and precision through the helpers the training loop uses, keep the same best/last
bookkeeping over their per-epoch evaluations, and write the same result row (`result.json`,
one row of the results table). Each stage adds only how it trains its classifier.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T

from egoscale.constants import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATION
from egoscale.errors import ConfigError, DataError
from egoscale.evaluate.config import EvalData, resolve_fraction
from egoscale.evaluate.labelled import Labelled, label_subset, read_list, scan, write_list
from egoscale.models.checkpoint import load_vit, read_checkpoint, resolve_checkpoint
from egoscale.models.registry import get_spec, parse_released
from egoscale.models.vit import VisionTransformer, count_params

# What a randomly initialised encoder's result row says of its (absent) pretraining.
RANDOM_BASELINE = {"baseline": "random", "pretrain_steps": 0, "pretrain_images": 0, "pretrain_flops": 0,
                   "data_fraction": 0.0, "data_hours": 0.0, "data_frames": 0}

# BatchNorm in the classifier head needs at least two images in every training batch.
MIN_TRAIN_IMAGES = 2


@dataclass
class LabelledSplit:
    """The labelled images of one evaluation: the whole train folder, the chosen subset, val."""

    full: Labelled
    train: Labelled
    val: Labelled
    condition: str
    fraction: float

    @property
    def classes(self) -> int:
        return len(self.full.classes)


def prepare_labelled(cfg: EvalData) -> LabelledSplit:
    """The training subset and the full val set (`record_run` saves the subset's file list).

    A subset too small to train the BatchNorm head (fewer than two images) is an error that
    names the flag to change, before any work starts.
    """
    full = scan(cfg.train)
    val = scan(cfg.val, classes=full.classes)
    condition, fraction = resolve_fraction(cfg.condition, cfg.label_fraction)
    if cfg.train_list:
        train = read_list(cfg.train_list, full.root, full.classes)
    else:
        train = label_subset(full, fraction, cfg.sampling, cfg.seed) if fraction < 1 else full
    if len(train) < MIN_TRAIN_IMAGES:
        need = MIN_TRAIN_IMAGES / len(full)
        raise DataError(f"{cfg.train}: {condition} ({fraction:g} of {len(full)} images) leaves {len(train)} "
                        f"training image; the classifier's BatchNorm needs at least {MIN_TRAIN_IMAGES}: use "
                        f"--label-fraction {min(1.0, need):.3g} or more, or --condition full")
    return LabelledSplit(full, train, val, condition, fraction)


def record_run(out: Path, data: LabelledSplit, record: dict, changed: dict) -> None:
    """Once the evaluation's inputs have all loaded: its config.json and train_files.txt."""
    from egoscale.runfolder import record_config

    write_list(data.train, out / "train_files.txt")
    record_config(out, record, changed)


def load_backbone(checkpoint: str, model: str | None, img_size: int | None, num_classes: int, pool: str = "token",
                  init_seed: int | None = None) -> tuple[VisionTransformer, dict]:
    """The encoder to evaluate (fresh BN+Linear head for `num_classes`) and its provenance.

    `checkpoint="none"` gives a randomly initialised `model` (the baseline; `init_seed` seeds its
    weights, else the caller's torch seed does), marked as such in the result row: no pretraining
    steps, no video, `baseline: random`. The provenance
    (pretraining data fraction, hours, frames, steps, seed) is read from the checkpoint's own
    `egoscale` entry, written by the run that made it, or from a released file's name (its
    identifier, or the file name of one passed by path: `ckpts/vits14_0.01_1.pth`).
    """
    if checkpoint == "none":
        if not model:
            raise ConfigError("--checkpoint none needs --model (a randomly initialised baseline)")
        spec = get_spec(model, img_size=img_size)
        if init_seed is not None:
            torch.manual_seed(init_seed)
        return (VisionTransformer(spec, num_classes=num_classes, global_pool=pool),
                {"checkpoint": "none (random init)", "pool": pool, **RANDOM_BASELINE,
                 "init_seed": init_seed})
    path = resolve_checkpoint(checkpoint)
    obj = read_checkpoint(path)
    released = parse_released(str(checkpoint))
    if img_size is None and released:
        img_size = released.img_size
    vit, _ = load_vit(path, img_size=img_size, num_classes=num_classes, obj=obj)
    vit.global_pool = pool
    info = {"checkpoint": str(checkpoint), "checkpoint_file": str(Path(path).resolve()), "pool": pool,
            "checkpoint_sha256_16": _digest(path), **provenance(obj)}
    if released:  # the paper's released checkpoints: fraction and seed are in the name
        info.update(data_fraction=released.fraction, data_seed=released.seed)
    elif named := parse_released(Path(path).stem):  # a released file passed by its path: the same, from
        # its file name, where the file itself does not say (an egoscale file's own record comes first)
        info.setdefault("data_fraction", named.fraction)
        info.setdefault("data_seed", named.seed)
    return vit, info


def provenance(obj: dict) -> dict:
    """Pretraining facts a checkpoint carries in its `egoscale` entry, as result-row fields."""
    meta = obj.get("egoscale") or {}
    if meta.get("kind") != "mae":  # a finetuned file's training is not pretraining
        return {}
    data, trained = meta.get("data") or {}, meta.get("trained") or {}
    out = {"data_fraction": data.get("fraction"), "data_seed": data.get("subset_seed"),
           "data_frames": data.get("frames"), "data_hours": data.get("hours"),
           "pretrain_seed": meta.get("seed"), "pretrain_steps": trained.get("steps"),
           "pretrain_images": trained.get("images"), "pretrain_flops": trained.get("flops")}
    return {k: v for k, v in out.items() if v is not None}


def _digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_info(vit: VisionTransformer) -> dict:
    s = vit.spec
    enc = count_params(vit) - sum(p.numel() for p in vit.head.parameters())
    return {"model": s.name, "params": enc, "width": s.width, "depth": s.depth, "img_size": s.img_size,
            "patch_size": s.patch_size}


def best_and_last(evals: list[dict]) -> dict:
    """The best epoch (by top-1, then top-5) and the last, from per-epoch evaluation records."""
    if not evals:
        raise DataError("no evaluation was recorded")
    best = max(evals, key=lambda r: (r["top1"], r["top5"]))
    last = evals[-1]
    return {"top1": best["top1"], "top5": best["top5"], "best_epoch": best.get("epoch"),
            "top1_last": last["top1"], "top5_last": last["top5"], "val_loss_last": last.get("val_loss")}


def result_row(kind: str, cfg: EvalData, split: LabelledSplit, vit: VisionTransformer, info: dict,
               evals: list[dict], **extra) -> dict:
    """result.json: the results-table row of one evaluation."""
    return {"eval": kind, "condition": split.condition, "label_fraction": split.fraction, "sampling": cfg.sampling,
            "seed": cfg.seed, "n_train": len(split.train), "n_train_total": len(split.full),
            "n_val": len(split.val), "classes": split.classes, **model_info(vit), **info, **best_and_last(evals),
            **extra}


def describe_result(r: dict, out: str) -> str:
    """The one-line summary `egoscale finetune` and `egoscale probe` print."""
    extra = f", k-NN top-1 {r['knn_top1']:.2%}" if "knn_top1" in r else ""
    return (f"{r['eval']} {r['model']} ({r['condition']}, {r['n_train']} images): top-1 {r['top1']:.2%}, "
            f"top-5 {r['top5']:.2%} (best, epoch {r['best_epoch']}){extra} -> {out}/result.json")


def train_transform(size: int, scale=(0.08, 1.0), interpolation: str = INTERPOLATION):
    """The paper's minimal augmentation: RandomResizedCrop (bicubic, as the paper's) + horizontal flip."""
    mode = T.InterpolationMode(interpolation)
    return T.Compose([T.RandomResizedCrop(size, scale=scale, interpolation=mode), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def val_transform(size: int, interpolation: str = INTERPOLATION):
    """Resize then CenterCrop(size): the paper's Resize(size + 32), but keeping at least 87.5 % of the
    side (ImageNet's 224/256), which the 32-px margin alone would not at small sizes (at 32 px it
    would keep the central quarter of the image)."""
    short = min(size + 32, round(size / 0.875))
    return T.Compose([T.Resize(short, interpolation=T.InterpolationMode(interpolation)), T.CenterCrop(size),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class DecodedImages:
    """Labelled images decoded once per process, up to `limit` bytes of pixels.

    An evaluation reads its labelled set every epoch, and a sweep worker evaluates cell after
    cell on the same set; decoding a small image costs about a third of what a tiny model's
    finetuning spends on it (benchmarks/README.md, "The demo"). An image is kept while its file's size and modification
    time are unchanged; past the limit, images are decoded from disk every time, as without it.
    Loader worker processes keep nothing: theirs would go when the epoch ends, and each of them
    would hold its own copy. The transforms that follow make new images, so a kept one is never
    changed.
    """

    def __init__(self, limit: int = 256 << 20):
        self.limit, self.used, self.images = limit, 0, {}

    def rgb(self, path: Path) -> Image.Image:
        if torch.utils.data.get_worker_info() is not None:
            with Image.open(path) as f:
                return f.convert("RGB")
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        img = self.images.get(key)
        if img is None:
            with Image.open(path) as f:
                img = f.convert("RGB")
            size = img.width * img.height * 3
            if self.used + size <= self.limit:
                self.images[key], self.used = img, self.used + size
        return img


DECODED = DecodedImages()


class ImageList(torch.utils.data.Dataset):
    def __init__(self, data: Labelled, transform, decoded: DecodedImages = DECODED):
        self.data, self.transform, self.decoded = data, transform, decoded

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.transform(self.decoded.rgb(self.data.root / self.data.files[i])), self.data.labels[i]
