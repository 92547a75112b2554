"""The settings of `egoscale finetune` and `egoscale probe`: the labelled data and encoder both
evaluate (`EvalData`), and what each adds.

Declarations only, without torch (like `egoscale.train.config`): `--help`, a bad flag and a grid's
check answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from egoscale.config import opt, to_dict
from egoscale.constants import INTERPOLATION, INTERPOLATIONS
from egoscale.errors import ConfigError
from egoscale.evaluate.labelled import CONDITIONS
from egoscale.train.config import PRECISION_HELP, PRECISIONS, check_precision
from egoscale.train.tracking import TrackingConfig


@dataclass
class EvalData:
    """What to evaluate, on which labelled images, where: the fields finetune and probe share."""

    checkpoint: str = opt("none", "checkpoint file, run folder, released id (e.g. vits14_0.01_1), or none "
                          "(a randomly initialised --model, the baseline)")
    train: str = opt("train", "training folder, one subfolder per class")
    val: str = opt("val", "validation folder with the same classes")
    out: str = opt("evals", "output folder: result.json, metrics.jsonl, train_files.txt")
    model: str | None = opt(None, "model for --checkpoint none (random initialisation)")
    condition: str | None = opt("permissive", "permissive (2%), stringent (1.0147%) or full",
                                choices=["permissive", "stringent", "full"])
    label_fraction: float | None = opt(None, "fraction of training images (overrides --condition)")
    sampling: str = opt("random", "random (uniform over images, the paper's) or per-class (the same number "
                        "from every class, at least one)", choices=["random", "per-class"])
    train_list: str | None = opt(None, "reuse the exact training files of an earlier run (its train_files.txt)")
    seed: int = opt(0, "seed of the label subset and of training")
    init_seed: int | None = opt(None, "with --checkpoint none: seed of the random initialisation (default: --seed)")
    img_size: int | None = opt(None, "image side in px (default: the checkpoint's)")
    pool: str = opt("token", "features the head reads: token (class token, the paper's) or avg (mean of "
                    "the patch tokens)", choices=["token", "avg"])
    interpolation: str = opt(INTERPOLATION, "how images are resized to the model: bicubic (the paper's) or "
                             "bilinear", choices=list(INTERPOLATIONS))
    workers: int = opt(4, "data loader processes")
    device: str = opt("auto", "auto, cuda or cpu")
    precision: str = opt("auto", PRECISION_HELP, choices=list(PRECISIONS))
    progress: bool = opt(True, "show progress bars")

    def __post_init__(self):
        resolve_fraction(self.condition, self.label_fraction)
        if self.pool not in ("token", "avg"):
            raise ConfigError(f"--pool {self.pool!r}: token or avg")
        if self.sampling not in ("random", "per-class"):
            raise ConfigError(f"--sampling {self.sampling!r}: random or per-class")
        if self.workers < 0:
            raise ConfigError(f"--workers must be at least 0, got {self.workers}")
        if self.img_size is not None and self.img_size < 1:
            raise ConfigError(f"--img-size must be positive, got {self.img_size}")
        check_precision(self.precision)
        if self.checkpoint == "none" and not self.model:
            raise ConfigError("--checkpoint none needs --model (a randomly initialised baseline)")
        if self.init_seed is not None and self.checkpoint != "none":
            raise ConfigError("--init-seed seeds a random initialisation: it needs --checkpoint none")


def resolve_fraction(condition: str | None, label_fraction: float | None) -> tuple[str, float]:
    if label_fraction is not None:
        if not 0 < label_fraction <= 1:
            raise ConfigError(f"--label-fraction must be in (0, 1], got {label_fraction}")
        return condition or "custom", label_fraction
    if condition is None or condition == "full":
        return "full", 1.0
    if condition not in CONDITIONS:
        raise ConfigError(f"--condition {condition!r}: choose permissive, stringent or full")
    return condition, CONDITIONS[condition]


# Settings that make an evaluation folder's results (and cached features) what they are.
IDENTITY = ("checkpoint", "train", "val", "model", "condition", "label_fraction", "sampling", "train_list", "seed",
            "init_seed", "img_size", "pool", "interpolation")


def eval_record(cfg: EvalData) -> dict:
    """What an evaluation folder's config.json records: the flags, paths made absolute."""
    rec = to_dict(cfg)
    for k in ("train", "val", "train_list", "checkpoint"):
        if rec.get(k) and Path(rec[k]).exists():
            rec[k] = str(Path(rec[k]).resolve())
    return rec


# The paper's finetuning learning rates: lower at the high resolutions.
FINETUNE_LR, HIGH_RES_FINETUNE_LR, HIGH_RES_FROM = 1e-4, 5e-5, 448


def finetune_lr(cfg, img_size: int) -> float:
    """--lr, else the paper's rate for this image size."""
    if cfg.lr is not None:
        return cfg.lr
    return HIGH_RES_FINETUNE_LR if img_size >= HIGH_RES_FROM else FINETUNE_LR


@dataclass
class FinetuneConfig(EvalData, TrackingConfig):
    """Finetune the whole encoder with a BatchNorm+Linear head on a random fraction of a labelled folder
(ImageNet layout) and report top-1/top-5 on the whole val folder after every epoch (or every
--eval-every epochs, and after the last). Defaults are the paper's recipe. Resumable; runs under
torchrun like pretraining.

example:
  egoscale finetune --checkpoint runs/vith14@476_1.0_1 --train /data/imagenet/train \\
      --val /data/imagenet/val --condition permissive --img-size 476 --out evals/vith14@476_1.0_1_permissive"""

    out: str = opt("evals/finetune", "output folder: result.json, metrics.jsonl, train_files.txt")
    epochs: int = opt(50, "passes over the training subset")
    batch_size: int = opt(64, "images per device per step")
    lr: float | None = opt(None, f"learning rate (default {FINETUNE_LR:.0e}; {HIGH_RES_FINETUNE_LR:.0e} from "
                                 f"{HIGH_RES_FROM} px up)")
    weight_decay: float = opt(0.05, "AdamW weight decay")
    crop_scale: float = opt(0.08, "smallest area share of RandomResizedCrop's training crops (paper and "
                            "torchvision: 0.08; tiny images keep little at that)")
    head_warmup: int = opt(0, "before the whole encoder trains, fit the fresh head alone for this many steps on frozen "
                           "features of the training subset (LP-FT: the encoder's first updates then follow a head "
                           "that already reads it, instead of a random one; 0: the paper's recipe)")
    eval_every: int = opt(1, "score the val folder every N epochs and after the last (the result is the best of "
                          "those scored): a large val folder costs a pass of the encoder per image each time")
    compile: bool = opt(False, "torch.compile the model")
    grad_checkpointing: bool = opt(False, "recompute activations in backward")
    log_every: int = opt(10, "training-loss line every N steps")
    resume: str = opt("auto", "auto, none or a checkpoint path")

    def __post_init__(self):
        super().__post_init__()
        if self.epochs < 1 or self.batch_size < 1 or self.log_every < 1 or self.eval_every < 1:
            raise ConfigError("--epochs, --batch-size, --log-every and --eval-every must be at least 1")
        if not 0 < self.crop_scale <= 1:
            raise ConfigError(f"--crop-scale must be in (0, 1], got {self.crop_scale}")
        if self.head_warmup < 0:
            raise ConfigError(f"--head-warmup must be at least 0, got {self.head_warmup}")


@dataclass
class ProbeConfig(EvalData, TrackingConfig):
    """Extract frozen features once (class token, or --pool avg; cached, resumable), train a
BatchNorm+Linear classifier on them, and report top-1/top-5 (and k-NN) on the val folder.

example:
  egoscale probe --checkpoint vits14_0.01_1 --train /data/imagenet/train --val /data/imagenet/val \\
      --condition permissive --out evals/probe"""

    out: str = opt("evals/probe", "output folder: result.json, metrics.jsonl, features/")
    epochs: int = opt(100, "classifier epochs over the cached features (at least --min-steps updates)")
    min_steps: int = opt(1000, "minimum classifier updates, so that small label sets are not underfitted")
    batch_size: int = opt(256, "batch for extraction and for the classifier")
    lr: float = opt(1e-3, "classifier learning rate (AdamW)")
    weight_decay: float = opt(0.0, "classifier weight decay")
    knn: int = opt(20, "also report k-NN (cosine, k neighbours) accuracy; 0 turns it off")
    chunk: int = opt(2048, "images per cached feature chunk")

    def __post_init__(self):
        super().__post_init__()
        if self.epochs < 1 or self.batch_size < 2 or self.chunk < 1 or self.min_steps < 0 or self.knn < 0:
            raise ConfigError("--epochs and --chunk must be at least 1, --batch-size at least 2, "
                              "--min-steps and --knn at least 0")
