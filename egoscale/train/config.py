"""The settings of `egoscale pretrain` and `egoscale visualize`, and the precision and compile
choices the training stages share.

Declarations only, without torch: `egoscale pretrain --help`, a bad flag and `egoscale sweep
--dry-run` answer at once, and the stages' modules (which load torch) are imported only to run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from egoscale.config import opt, to_dict
from egoscale.constants import INTERPOLATION, INTERPOLATIONS, MASK_RATIO
from egoscale.data.subset import describe_data
from egoscale.errors import ConfigError
from egoscale.models.registry import get_spec
from egoscale.train.tracking import TrackingConfig

PRECISIONS = ("auto", "bf16", "fp32")  # evaluations
PRETRAIN_PRECISIONS = ("auto", "bf16", "bf16-params", "fp32")
PRECISION_HELP = ("auto (bf16 autocast on CUDA, fp32 on CPU), bf16 (autocast; also on CPUs with bf16 "
                  "matrix units such as AMX, where it pays for the paper's model sizes but not for the tiny "
                  "CPU models) or fp32")
PRETRAIN_PRECISION_HELP = (
    "auto (bf16 on CUDA, fp32 on CPU), bf16 (autocast: fp32 weights, each op cast to bf16 as it runs), "
    "bf16-params (the model itself runs in bf16: the fp32 master weights are cast to it once per step and its "
    "gradients kept in fp32; in one process by a bf16 copy of the model, over several by FSDP2's mixed-precision "
    "policy) or fp32")


def check_precision(precision: str, choices: tuple[str, ...] = PRECISIONS) -> None:
    if precision not in choices:
        raise ConfigError(f"--precision {precision!r}: one of {', '.join(choices)}")


# The paper's pretraining learning rates: constant, lower for the widest models (ViT-H and up).
PRETRAIN_LR, WIDE_PRETRAIN_LR, WIDE_FROM_WIDTH = 3e-4, 1e-4, 1280

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead",)  # the compile modes that record CUDA graphs

# Per-block compilation of the paper's models pays back well within this many steps on one GPU
# (benchmarks/README.md, "GPU"); shorter runs stay eager unless --compile is given.
COMPILE_PAYS_STEPS = 1000


@dataclass
class PretrainConfig(TrackingConfig):
    """Pretrain a masked autoencoder on frames from `egoscale ingest` (optionally a subset). Runs on a CPU,
one GPU (bf16), or many under torchrun. Re-running the same command resumes from OUT/checkpoint.pt.
Defaults follow the paper (Orhan 2023).

examples:
  egoscale pretrain --model vit_h14 --img-size 476 --data /data/frames \\
      --subset /data/frames/subsets/0.01_s2.json --out runs/vith14@476_0.01_2 \\
      --batch-size 34 --lr 1e-4 --budget-hours 48
  torchrun --nproc-per-node 8 -m egoscale pretrain ...      (DDP over one node)
  torchrun --nnodes 4 ... -m egoscale pretrain ... --fsdp   (sharded, big models)"""

    data: str = opt("frames", "ingest folder (manifest.json + shards) or a folder of .tar shards")
    out: str = opt("runs/pretrain", "run folder: checkpoint.pt, metrics.jsonl, summary.json")
    subset: str | None = opt(None, "subset file from `egoscale subset` (default: all frames)")
    model: str = opt("vit_s14", "family member (`egoscale models`)")
    img_size: int | None = opt(None, "image side in px (default: the model's)")
    patch_size: int | None = opt(None, "override the model's patch size")
    batch_size: int = opt(256, "images per device per micro-step (paper: 256-512 at 224 px)")
    accum_steps: int = opt(1, "micro-steps per optimizer step")
    lr: float | None = opt(None, f"learning rate (default: {PRETRAIN_LR:.0e}, or {WIDE_PRETRAIN_LR:.0e} for models "
                                 f"{WIDE_FROM_WIDTH} wide and wider: ViT-H and up)")
    lr_schedule: str = opt("constant", "constant (paper) or cosine", choices=["constant", "cosine"])
    warmup_steps: int = opt(0, "linear warmup steps")
    weight_decay: float = opt(0.0, "AdamW weight decay (paper: 0)")
    mask_ratio: float = opt(MASK_RATIO, "fraction of patches masked (paper: 0.8)")
    interpolation: str = opt(INTERPOLATION, "how training crops are resized: bicubic (paper) or bilinear",
                             choices=list(INTERPOLATIONS))
    norm_pix_loss: bool = opt(False, "per-patch normalised pixel targets (paper: off)")
    decoder_width: int | None = opt(None, "override decoder width (paper: 512)")
    decoder_depth: int | None = opt(None, "override decoder blocks (paper: 8)")
    steps: int | None = opt(None, "stop after this many optimizer steps")
    epochs: float | None = opt(None, "stop after this many passes over the frames")
    budget_hours: float | None = opt(None, "stop after this much wall-clock time")
    save_every: int = opt(1000, "checkpoint every N steps (and at the end)")
    log_every: int = opt(10, "metrics line every N steps")
    workers: int | None = opt(None, "data loader processes per device (default: 8 per GPU, at most the CPU "
                                    "cores per process; 4 on the CPU)")
    shuffle_buffer: int = opt(2000, "frames mixed before batching")
    seed: int = opt(0, "random seed")
    device: str = opt("auto", "auto, cuda or cpu")
    compile: bool | None = opt(None, "torch.compile each transformer block (default: on for a single-GPU bf16 "
                                     "run without FSDP or gradient checkpointing of at least "
                                     f"{COMPILE_PAYS_STEPS} steps, where the first step's compilation pays back; "
                                     "off elsewhere)")
    compile_mode: str = opt("default", "torch.compile's mode for the blocks: default; reduce-overhead (each compiled "
                                       "block is also recorded as CUDA graphs and replayed, so the CPU no longer "
                                       "launches kernels one by one; one CUDA process without FSDP, bf16-params or "
                                       "gradient checkpointing); max-autotune-no-cudagraphs (kernels chosen by "
                                       "timing candidates: a much longer first step). Other than default, it "
                                       "implies --compile", choices=list(COMPILE_MODES))
    precision: str = opt("auto", PRETRAIN_PRECISION_HELP, choices=list(PRETRAIN_PRECISIONS))
    grad_checkpointing: bool = opt(False, "recompute activations in backward")
    fsdp: bool = opt(False, "fully sharded data parallel (multi-GPU, big models)")
    resume: str = opt("auto", "auto (continue from OUT/checkpoint.pt), none, or a path")
    progress: bool = opt(True, "show a progress bar")
    image_every: int = opt(1000, "a reconstruction picture for TensorBoard/W&B every N steps and at the end (0: none)")

    def __post_init__(self):
        if self.image_every < 0:
            raise ConfigError(f"--image-every must be at least 0, got {self.image_every}")
        if not 0 <= self.mask_ratio < 1:
            raise ConfigError(f"--mask-ratio must be in [0, 1), got {self.mask_ratio}")
        check_precision(self.precision, PRETRAIN_PRECISIONS)
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"--compile-mode {self.compile_mode!r}: one of {', '.join(COMPILE_MODES)}")
        if self.compile_mode != "default" and self.compile is False:
            raise ConfigError(f"--compile-mode {self.compile_mode} compiles the blocks: drop --no-compile")
        if self.compile_mode in CUDA_GRAPH_MODES:
            # FSDP re-gathers weights into new memory and checkpointing re-runs blocks in backward,
            # neither of which a recorded graph follows
            clash = [f for f, on in (("--fsdp", self.fsdp), ("--grad-checkpointing", self.grad_checkpointing),
                                     ("--precision bf16-params", self.precision == "bf16-params")) if on]
            if clash:
                raise ConfigError(f"--compile-mode {self.compile_mode} records CUDA graphs, which do not go with "
                                  f"{' or '.join(clash)}; use --compile-mode default")
        for name in ("batch_size", "accum_steps", "save_every", "log_every", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if (self.workers or 0) < 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ConfigError("--workers, --warmup-steps and --weight-decay must be at least 0")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        for name in ("epochs", "budget_hours", "lr"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.img_size is not None and self.img_size < 1 or self.patch_size is not None and self.patch_size < 1:
            raise ConfigError("--img-size and --patch-size must be positive")
        for name in ("decoder_width", "decoder_depth"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.steps is None and self.epochs is None and self.budget_hours is None:
            raise ConfigError("say how long to train: --steps, --epochs or --budget-hours (whichever comes first)")
        self.spec()  # the model name, sizes and decoder fit together

    def spec(self):
        spec = get_spec(self.model, patch_size=self.patch_size, img_size=self.img_size)
        if spec.img_size % spec.patch_size:
            raise ConfigError(f"--img-size {spec.img_size} is not divisible by the patch size {spec.patch_size} "
                              f"of {spec.name}")
        if self.decoder_width:
            spec = replace(spec, decoder_width=self.decoder_width)
            if self.decoder_width % spec.decoder_heads:
                raise ConfigError(f"--decoder-width {self.decoder_width} is not divisible by the decoder's "
                                  f"{spec.decoder_heads} heads")
        if self.decoder_depth:
            spec = replace(spec, decoder_depth=self.decoder_depth)
        return spec

    def default_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return WIDE_PRETRAIN_LR if self.spec().width >= WIDE_FROM_WIDTH else PRETRAIN_LR


# Settings that make a pretraining run what it is: a run folder resumes only with the same ones.
IDENTITY = ("model", "img_size", "patch_size", "decoder_width", "decoder_depth", "mask_ratio", "norm_pix_loss",
            "interpolation", "data_fraction", "data_frames", "data_subset")


def run_record(cfg: PretrainConfig, data: dict | None = None) -> dict:
    """What a run folder's config.json records: the flags, with the model and the data as resolved
    (so that a moved data folder or a default spelled out is not a change)."""
    spec = cfg.spec()
    data = data if data is not None else describe_data(cfg.data, cfg.subset)
    return {**to_dict(cfg), "model": spec.name, "img_size": spec.img_size, "patch_size": spec.patch_size,
            "decoder_width": spec.decoder_width, "decoder_depth": spec.decoder_depth,
            "data_fraction": data["fraction"], "data_frames": data["frames"], "data_subset": data["subset"]}


@dataclass
class VisualizeConfig:
    """For N images: original | masked input | reconstruction (visible patches from the input, masked
ones predicted), one row each, as a PNG."""

    checkpoint: str = opt("checkpoint.pt", "MAE checkpoint (file or run folder)", positional=True, required=True,
                          metavar="CHECKPOINT")
    images: str = opt("frames", "folder of images, ingest folder, or folder of shards")
    out: str = opt("reconstructions.png", "PNG to write")
    n: int = opt(8, "images", short="-n")
    mask_ratio: float | None = opt(None, "default: the checkpoint's")
    seed: int = opt(0, "mask seed")

    def __post_init__(self):
        if self.n < 1:
            raise ConfigError(f"--n must be at least 1, got {self.n}")
        if self.mask_ratio is not None and not 0 <= self.mask_ratio < 1:
            raise ConfigError(f"--mask-ratio must be in [0, 1), got {self.mask_ratio}")
