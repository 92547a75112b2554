"""Pieces the finetuning and probing stages share: the backbone, transforms, datasets, result rows."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T

from egoscale.config import opt
from egoscale.data.loader import IMAGENET_MEAN, IMAGENET_STD
from egoscale.errors import ConfigError
from egoscale.evaluate.labelled import CONDITIONS, Labelled
from egoscale.models.checkpoint import RELEASED_ID, load_vit, read_checkpoint, resolve_checkpoint
from egoscale.models.registry import get_spec
from egoscale.models.vit import VisionTransformer, count_params


@dataclass
class EvalData:
    """What to evaluate and on which labelled images: the fields finetune and probe share."""

    checkpoint: str = opt("none", "checkpoint file, run folder, released id (e.g. vits14_0.01_1), or none "
                          "(a randomly initialised --model, the baseline)")
    train: str = opt("train", "training folder, one subfolder per class")
    val: str = opt("val", "validation folder with the same classes")
    out: str = opt("evals", "output folder: result.json, metrics.jsonl, train_files.txt")
    model: str | None = opt(None, "model for --checkpoint none (random initialisation)")
    condition: str | None = opt("permissive", "permissive (2%), stringent (1.0147%) or full",
                                choices=["permissive", "stringent", "full"])
    label_fraction: float | None = opt(None, "fraction of training images (overrides --condition)")
    sampling: str = opt("random", "random (uniform over images, the paper's) or per-class",
                        choices=["random", "per-class"])
    train_list: str | None = opt(None, "reuse the exact training files of an earlier run (its train_files.txt)")
    seed: int = opt(0, "seed of the label subset and of training")
    img_size: int | None = opt(None, "image side in px (default: the checkpoint's)")
    pool: str = opt("token", "features the head reads: token (class token, the paper's) or avg (mean of "
                    "the patch tokens)", choices=["token", "avg"])

    def __post_init__(self):
        resolve_fraction(self.condition, self.label_fraction)
        if self.pool not in ("token", "avg"):
            raise ConfigError(f"--pool {self.pool!r}: token or avg")


def resolve_fraction(condition: str | None, label_fraction: float | None) -> tuple[str, float]:
    if label_fraction is not None:
        return condition or "custom", label_fraction
    if condition is None or condition == "full":
        return "full", 1.0
    if condition not in CONDITIONS:
        raise ConfigError(f"--condition {condition!r}: choose permissive, stringent or full")
    return condition, CONDITIONS[condition]


def load_backbone(checkpoint: str, model: str | None, img_size: int | None,
                  num_classes: int, pool: str = "token") -> tuple[VisionTransformer, dict]:
    """The encoder to evaluate (fresh BN+Linear head for `num_classes`) and what is known of its pretraining.

    `checkpoint="none"` gives a randomly initialised `model` (the baseline).
    """
    if checkpoint == "none":
        if not model:
            raise ConfigError("--checkpoint none needs --model (a randomly initialised baseline)")
        spec = get_spec(model, img_size=img_size)
        return (VisionTransformer(spec, num_classes=num_classes, global_pool=pool),
                {"checkpoint": "none (random init)", "pool": pool})
    path = resolve_checkpoint(checkpoint)
    obj = read_checkpoint(path)
    m = RELEASED_ID.match(str(checkpoint))
    if img_size is None and m:
        from egoscale.models.registry import RELEASED_ARCHS
        img_size = RELEASED_ARCHS[m.group(1)][1]
    vit, report = load_vit(path, img_size=img_size, num_classes=num_classes, obj=obj)
    vit.global_pool = pool
    info = {"checkpoint": str(checkpoint), "checkpoint_file": str(Path(path).resolve()), "pool": pool,
            "checkpoint_sha256_16": _digest(path)}
    info.update(_pretrain_info(obj, checkpoint))
    summary = Path(path).parent / "summary.json"  # written by egoscale pretrain beside its checkpoint
    if summary.is_file():
        info["pretrain_flops"] = json.loads(summary.read_text()).get("estimated_flops")
    return vit, info


def _digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _pretrain_info(obj: dict, checkpoint: str) -> dict:
    """Data fraction, hours, frames and length of the pretraining run, when the file says."""
    info: dict = {}
    cfg = obj.get("config") or {}
    if isinstance(cfg, dict) and cfg:
        info.update(pretrain_steps=obj.get("step"), pretrain_images=obj.get("samples"), pretrain_seed=cfg.get("seed"))
        sub = cfg.get("subset")
        if sub and Path(sub).is_file():
            s = json.loads(Path(sub).read_text())
            info.update(data_fraction=s.get("fraction"), data_seed=s.get("seed"), data_frames=s.get("frames"),
                        data_hours=s.get("hours"))
        elif cfg.get("data"):
            man = Path(cfg["data"]) / "manifest.json"
            if man.is_file():
                t = json.loads(man.read_text())["total"]
                info.update(data_fraction=1.0, data_frames=t["frames"], data_hours=t["hours"])
    m = RELEASED_ID.match(str(checkpoint))
    if m:  # the paper's released checkpoints: fraction and seed are in the name
        info.update(data_fraction=float(m.group(2)), data_seed=int(m.group(3)))
    return info


def model_info(vit: VisionTransformer) -> dict:
    s = vit.spec
    enc = count_params(vit) - sum(p.numel() for p in vit.head.parameters())
    return {"model": s.name, "params": enc, "width": s.width, "depth": s.depth, "img_size": s.img_size,
            "patch_size": s.patch_size}


def train_transform(size: int, scale=(0.08, 1.0)):
    """The paper's minimal augmentation: RandomResizedCrop + horizontal flip."""
    return T.Compose([T.RandomResizedCrop(size, scale=scale), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def val_transform(size: int):
    """Resize(size + 32) then CenterCrop(size), as in the paper."""
    return T.Compose([T.Resize(size + 32), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ImageList(torch.utils.data.Dataset):
    def __init__(self, data: Labelled, transform):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        with Image.open(self.data.root / self.data.files[i]) as img:
            return self.transform(img.convert("RGB")), self.data.labels[i]
