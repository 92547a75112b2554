"""`egoscale pretrain`: MAE pretraining on frame shards (or a subset of them), on a CPU, one GPU,
or all GPUs of many nodes under torchrun (examples in `PretrainConfig`)."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from egoscale.config import opt, to_dict
from egoscale.constants import MASK_RATIO
from egoscale.data.loader import FrameStream, describe_data, make_loader, normalize_batch, resolve_pieces
from egoscale.errors import ConfigError
from egoscale.fileio import write_json_atomic
from egoscale.models.checkpoint import mae_meta, mae_to_released, released_to_mae
from egoscale.models.flops import mae_train_flops
from egoscale.models.mae import MaskedAutoencoder
from egoscale.models.registry import get_spec
from egoscale.models.vit import choose_attention
from egoscale.train.distributed import (COMPILE_MODES, CUDA_GRAPH_MODES, cleanup, fully_sharded, init_distributed,
                                        is_main_process, parallelize)
from egoscale.runfolder import FolderLock, check_identity, record_config
from egoscale.train.tracking import TrackingConfig
from egoscale.train.visualize import reconstruction_grid
from egoscale.train.loop import (CHECKPOINT, PRETRAIN_PRECISION_HELP, PRETRAIN_PRECISIONS, LoopSettings, Trainer, adamw,
                                 check_precision, lr_schedule, resolve_precision)


# Per-block compilation of the paper's models pays back well within this many steps on one GPU
# (benchmarks/README.md, "GPU"); shorter runs stay eager unless --compile is given.
COMPILE_PAYS_STEPS = 1000


def resolve_compile(asked: bool | None, device: torch.device, precision: str, world_size: int, fsdp: bool,
                    max_steps: int, grad_checkpointing: bool = False, mode: str = "default") -> bool:
    """--compile as given (a --compile-mode other than default asks for it), else on where it was
    measured to pay: one CUDA process, bf16 autocast, no FSDP, no gradient checkpointing, a run of
    at least COMPILE_PAYS_STEPS steps."""
    if asked is not None or mode != "default":
        return asked is not False
    return (device.type == "cuda" and precision == "bf16" and world_size == 1 and not fsdp
            and not grad_checkpointing and max_steps >= COMPILE_PAYS_STEPS)


def resolve_workers(asked: int | None, device: torch.device) -> int:
    """--workers as given, else 8 per GPU (capped by the cores each of this node's processes has), 4 on
    the CPU: enough to feed the step at the speeds measured in benchmarks/README.md ("GPU")."""
    if asked is not None:
        return asked
    if device.type != "cuda":
        return 4
    per_process = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, per_process))


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
    lr: float | None = opt(None, "learning rate (default: 3e-4, or 1e-4 from ViT-H up)")
    lr_schedule: str = opt("constant", "constant (paper) or cosine", choices=["constant", "cosine"])
    warmup_steps: int = opt(0, "linear warmup steps")
    weight_decay: float = opt(0.0, "AdamW weight decay (paper: 0)")
    mask_ratio: float = opt(MASK_RATIO, "fraction of patches masked (paper: 0.8)")
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
        return self.lr if self.lr is not None else (1e-4 if self.spec().width >= 1280 else 3e-4)


def main(cfg: PretrainConfig) -> int:
    s = pretrain(cfg)
    if s and "samples" in s and is_main_process():
        print(f"{s['steps']} steps, {s['samples']} images, final loss {s.get('final_loss', float('nan')):.4f}, "
              f"{s['seconds']:.0f} s -> {cfg.out}")
    return 0


# Settings that make a run folder's weights what they are: a resumed run must not change them.
IDENTITY = ("model", "img_size", "patch_size", "decoder_width", "decoder_depth", "mask_ratio", "norm_pix_loss",
            "data_fraction", "data_frames", "data_subset")


def run_record(cfg: PretrainConfig, data: dict | None = None) -> dict:
    """What a run folder's config.json records: the flags, with the model and the data as resolved
    (so that a moved data folder or a default spelled out is not a change)."""
    spec = cfg.spec()
    data = data if data is not None else describe_data(cfg.data, cfg.subset)
    return {**to_dict(cfg), "model": spec.name, "img_size": spec.img_size, "patch_size": spec.patch_size,
            "decoder_width": spec.decoder_width, "decoder_depth": spec.decoder_depth,
            "data_fraction": data["fraction"], "data_frames": data["frames"], "data_subset": data["subset"]}


def pretrain(cfg: PretrainConfig, log=print) -> dict:
    """Run (or resume) MAE pretraining; returns the summary."""
    spec = cfg.spec()
    pieces, frames = resolve_pieces(cfg.data, cfg.subset)
    data = describe_data(cfg.data, cfg.subset)
    out = Path(cfg.out)
    record = run_record(cfg, data)
    d = init_distributed(cfg.device)
    try:
        with FolderLock(out, "pretrain") if d.is_main else contextlib.nullcontext():
            has_state = cfg.resume not in ("auto", "none") or (out / CHECKPOINT).is_file()
            changed = check_identity(out, record, IDENTITY, "pretraining run", cfg.resume, has_state)
            return _pretrain(cfg, spec, pieces, frames, data, d, out, record, changed, log)
    finally:
        cleanup()


def _pretrain(cfg: PretrainConfig, spec, pieces, frames, data: dict, d, out: Path, record: dict,
              changed: dict, log) -> dict:
    if cfg.compile_mode in CUDA_GRAPH_MODES and (d.device.type != "cuda" or d.enabled):
        raise ConfigError(f"--compile-mode {cfg.compile_mode} records CUDA graphs: it needs one CUDA process "
                          f"(here: {d.device.type} x{d.world_size}); use --compile-mode default")
    global_batch = cfg.batch_size * cfg.accum_steps * d.world_size
    steps = [cfg.steps] if cfg.steps else []
    if cfg.epochs is not None:
        if frames is None:
            raise ConfigError("--epochs needs a frame count: pass an ingest folder or a --subset")
        steps.append(max(1, math.ceil(cfg.epochs * frames / global_batch)))
    max_steps = min(steps) if steps else 2**62
    torch.manual_seed(cfg.seed)
    mae = MaskedAutoencoder(spec, mask_ratio=cfg.mask_ratio, norm_pix_loss=cfg.norm_pix_loss).to(d.device)
    torch.manual_seed(cfg.seed * 7919 + d.rank)  # different masks on every rank
    lr = cfg.default_lr()
    precision = resolve_precision(cfg.precision, d.device, PRETRAIN_PRECISIONS)
    sharded = fully_sharded(d, cfg.fsdp, precision == "bf16-params")
    attention = choose_attention(mae, d.device, precision != "fp32")
    if d.is_main:
        log(f"pretrain {spec.name} at {spec.img_size}px on {d.device} x{d.world_size}: "
            f"global batch {global_batch} = {cfg.batch_size} x {cfg.accum_steps} accum x {d.world_size} "
            f"devices, lr {lr:g} ({cfg.lr_schedule}), mask {cfg.mask_ratio}, {precision} "
            f"({attention} attention), "
            f"{'?' if frames is None else frames} frames, "
            f"{'budget ' + str(cfg.budget_hours) + ' h' if cfg.budget_hours else str(max_steps) + ' steps'}")
    compile_ = resolve_compile(cfg.compile, d.device, precision, d.world_size, cfg.fsdp, max_steps,
                               cfg.grad_checkpointing, cfg.compile_mode)
    cuda_graphs = cfg.compile_mode in CUDA_GRAPH_MODES
    module = parallelize(mae, d, fsdp=cfg.fsdp, grad_checkpointing=cfg.grad_checkpointing, compile=compile_,
                         bf16_params=precision == "bf16-params", compile_mode=cfg.compile_mode)
    params = [p for p in mae.parameters() if p.requires_grad]
    optimizer = adamw(params, lr, d.device, sharded=sharded, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    settings = LoopSettings(out=out, max_steps=max_steps,
                            budget_seconds=cfg.budget_hours * 3600 if cfg.budget_hours else None,
                            accum_steps=cfg.accum_steps, log_every=cfg.log_every, save_every=cfg.save_every,
                            resume=cfg.resume, seed=cfg.seed, progress=cfg.progress, desc=f"pretrain {spec.name}",
                            flops_per_sample=mae_train_flops(spec, spec.img_size, cfg.mask_ratio),
                            tokens_per_sample=(spec.img_size // spec.patch_size) ** 2, precision=precision,
                            # sharded over several processes, the pictures would need every rank
                            image_every=0 if sharded and d.enabled else cfg.image_every, cuda_graphs=cuda_graphs)
    schedule = lr_schedule(cfg.lr_schedule, lr, cfg.warmup_steps, max_steps)
    sample: list = []  # (4, 3, H, W) frames in [0, 1], taken from the first batch
    trainer = Trainer(settings, d, mae, module, optimizer, schedule, _loss_fn(d.device),
                      to_file=lambda st: {"model": mae_to_released(st),
                                          "egoscale": {**mae_meta(mae), "data": data, "seed": cfg.seed}},
                      from_file=lambda obj: released_to_mae(obj["model"]), config=to_dict(cfg), fsdp=sharded,
                      tracking=cfg, images=lambda: {"reconstructions": reconstruction_grid(mae, sample[0])})
    if trainer.resume() and d.is_main:
        log(f"resumed from step {trainer.step} ({trainer.samples} images seen)")
    if d.is_main:  # written once the folder's checkpoint (if any) has loaded
        record_config(out, record, changed)
    if compile_ and d.is_main:
        asked = cfg.compile or cfg.compile_mode != "default"
        log(f"{'--compile' if asked else 'compiled (a long single-GPU run; --no-compile to stay eager)'}"
            f"{'' if cfg.compile_mode == 'default' else ' (' + cfg.compile_mode + ')'}: the first step compiles "
            "every distinct block (a minute or more for the big models); its time is reported as first_step_seconds")
    if trainer.step >= max_steps:
        if d.is_main:
            log(f"{out}: already trained for {trainer.step} steps; nothing to do")
        done = out / "summary.json"
        return json.loads(done.read_text()) if done.is_file() else {"steps": trainer.step}
    # A resumed run draws a fresh, deterministic stream (the shuffle position is not restorable).
    stream = FrameStream(pieces, spec.img_size, seed=cfg.seed * 1_000_003 + trainer.step, rank=d.rank,
                         world_size=d.world_size, shuffle_buffer=cfg.shuffle_buffer)
    loader = make_loader(stream, cfg.batch_size, resolve_workers(cfg.workers, d.device),
                         pin_memory=d.device.type == "cuda")
    batches = iter(loader)
    first = next(batches)
    sample.append(first[:4].to(d.device).float() / 255)  # the same frames in every reconstruction picture
    summary = trainer.fit(itertools.chain([first], batches))
    summary.update(model=spec.name, img_size=spec.img_size, frames=frames, global_batch=global_batch)
    if d.is_main:
        write_json_atomic(out / "summary.json", summary)
    return summary


def _loss_fn(device):
    def loss(module, batch):
        return module(normalize_batch(batch, device)).loss
    return loss
