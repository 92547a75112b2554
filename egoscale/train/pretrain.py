"""`egoscale pretrain`: MAE pretraining on frame shards (or a subset of them), on a CPU, one GPU,
or all GPUs of many nodes under torchrun (examples in `PretrainConfig`)."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import torch

from egoscale.config import to_dict
from egoscale.data.loader import FrameStream, make_loader, normalize_batch, resolve_pieces
from egoscale.data.subset import describe_data, frame_short_side
from egoscale.train.seeds import data_seed, rank_seed
from egoscale.errors import ConfigError
from egoscale.fileio import write_json_atomic
from egoscale.machine import usable_cores
from egoscale.models.checkpoint import mae_meta, mae_to_released, released_to_mae
from egoscale.models.flops import mae_train_flops
from egoscale.models.mae import MaskedAutoencoder
from egoscale.models.vit import choose_attention
from egoscale.runfolder import record_config, stage_folder
from egoscale.train.training_state import has_checkpoint
from egoscale.train.config import (COMPILE_PAYS_STEPS, CUDA_GRAPH_MODES, IDENTITY, PRETRAIN_PRECISIONS, PretrainConfig,
                                   run_record)
from egoscale.train.distributed import (cleanup, fully_sharded, init_distributed, is_main_process, parallelize,
                                        rank_nodes)
from egoscale.train.loop import (LoopSettings, Trainer, adamw, lr_schedule, read_metrics,
                                 resolve_precision)
from egoscale.train.visualize import reconstruction_grid


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
    per_process = usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, per_process))



def main(cfg: PretrainConfig) -> int:
    s = pretrain(cfg)
    if s and "samples" in s and is_main_process():
        print(f"{s['steps']} steps, {s['samples']} images, final loss {s.get('final_loss', float('nan')):.4f}, "
              f"{s['seconds']:.0f} s -> {cfg.out}")
    return 0


def pretrain(cfg: PretrainConfig, log=print) -> dict:
    """Run (or resume) MAE pretraining; returns the summary."""
    spec = cfg.spec()
    pieces, frames = resolve_pieces(cfg.data, cfg.subset)
    data = describe_data(cfg.data, cfg.subset)
    out = Path(cfg.out)
    record = run_record(cfg, data)
    dist = init_distributed(cfg.device)
    try:
        if cfg.compile_mode in CUDA_GRAPH_MODES and (dist.device.type != "cuda" or dist.enabled):
            raise ConfigError(f"--compile-mode {cfg.compile_mode} records CUDA graphs: it needs one CUDA process "
                              f"(here: {dist.device.type} x{dist.world_size}); use --compile-mode default")
        with stage_folder(out, "pretrain", record, IDENTITY, has_state=has_checkpoint(out, cfg.resume),
                          resume=cfg.resume, lock=dist.is_main) as changed:
            return _pretrain(cfg, spec=spec, pieces=pieces, frames=frames, data=data, dist=dist, out=out,
                             record=record, changed=changed, log=log)
    finally:
        cleanup()


def _pretrain(cfg: PretrainConfig, *, spec, pieces, frames: int, data: dict, dist, out: Path, record: dict,
              changed: dict, log) -> dict:
    global_batch = cfg.batch_size * cfg.accum_steps * dist.world_size
    max_steps = _max_steps(cfg, frames, global_batch)
    torch.manual_seed(cfg.seed)
    mae = MaskedAutoencoder(spec, mask_ratio=cfg.mask_ratio, norm_pix_loss=cfg.norm_pix_loss).to(dist.device)
    torch.manual_seed(rank_seed(cfg.seed, dist.rank))
    generators, lr, nodes = mask_generators(cfg, dist), cfg.default_lr(), rank_nodes(dist)  # nodes: for summary.json
    precision = resolve_precision(cfg.precision, dist.device, PRETRAIN_PRECISIONS)
    sharded = fully_sharded(dist, cfg.fsdp, precision == "bf16-params")
    attention = choose_attention(mae, dist.device, precision != "fp32")
    if dist.is_main:
        length = f"budget {cfg.budget_hours} h" if cfg.budget_hours else f"{max_steps} steps"
        log(f"pretrain {spec.name} at {spec.img_size}px on {dist.device} x{dist.world_size}{_over(nodes)}: global "
            f"batch {global_batch} = {cfg.batch_size} x {cfg.accum_steps} accum x {dist.world_size} devices, lr {lr:g} "
            f"({cfg.lr_schedule}), mask {cfg.mask_ratio}, {precision} ({attention} attention), {frames} frames, "
            + length)
        _say_if_upsampled(cfg.data, spec.img_size, log)
    compile_ = resolve_compile(cfg.compile, dist.device, precision, dist.world_size, cfg.fsdp, max_steps,
                               cfg.grad_checkpointing, cfg.compile_mode)
    module = parallelize(mae, dist, fsdp=cfg.fsdp, grad_checkpointing=cfg.grad_checkpointing, compile=compile_,
                         bf16_params=precision == "bf16-params", compile_mode=cfg.compile_mode)
    optimizer = adamw([p for p in mae.parameters() if p.requires_grad], lr, dist.device, sharded=sharded,
                      betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    settings = _loop_settings(cfg, spec, out, max_steps, precision, pictures=not (sharded and dist.enabled))
    schedule = lr_schedule(cfg.lr_schedule, lr, cfg.warmup_steps, max_steps)
    sample: list = []  # (4, 3, H, W) frames in [0, 1], taken from the first batch
    trainer = Trainer(settings, dist, mae, module, optimizer, schedule, _loss_fn(dist.device, generators),
                      to_file=lambda st: {"model": mae_to_released(st),
                                          "egoscale": {**mae_meta(mae), "data": data, "seed": cfg.seed}},
                      from_file=lambda obj: released_to_mae(obj["model"]), config=to_dict(cfg), fsdp=sharded,
                      tracking=cfg, images=lambda: {"reconstructions": reconstruction_grid(mae, sample[0])},
                      generators=generators)
    if trainer.resume() and dist.is_main:
        log(f"resumed from step {trainer.step} ({trainer.samples} images seen)")
    if dist.is_main:  # written once the folder's checkpoint (if any) has loaded
        record_config(out, record, changed)
    if compile_ and dist.is_main:
        asked = cfg.compile or cfg.compile_mode != "default"
        log(f"{'--compile' if asked else 'compiled (a long single-GPU run; --no-compile to stay eager)'}"
            f"{'' if cfg.compile_mode == 'default' else ' (' + cfg.compile_mode + ')'}: the first step compiles every "
            "distinct block (a minute or more for the big models); its time is reported as first_step_seconds")
    if trainer.step >= max_steps:
        if dist.is_main:
            log(f"{out}: already trained for {trainer.step} steps; nothing to do")
        return _finished(trainer, out, dist, model=spec.name, img_size=spec.img_size, frames=frames,
                         global_batch=global_batch)
    workers = resolve_workers(cfg.workers, dist.device)
    batches = make_loader(_stream(cfg, pieces, spec.img_size, dist, trainer, max(1, workers), log), cfg.batch_size,
                          workers, pin_memory=dist.device.type == "cuda")
    first = batches.peek()
    sample.append(first[:4].to(dist.device).float() / 255)  # the same frames in every reconstruction picture
    summary = trainer.fit(batches)
    summary.update(model=spec.name, img_size=spec.img_size, frames=frames, global_batch=global_batch,
                   nodes=nodes)
    if dist.is_main:
        write_json_atomic(out / "summary.json", summary)
    return summary


def _over(nodes: list[str]) -> str:
    """' over nodes n1, n2' for a run that spans nodes."""
    return " over nodes " + ", ".join(dict.fromkeys(nodes)) if len(set(nodes)) > 1 else ""


def _loop_settings(cfg: PretrainConfig, spec, out: Path, max_steps: int, precision: str, pictures: bool
                   ) -> LoopSettings:
    return LoopSettings.of(cfg, out=out, max_steps=max_steps, precision=precision, desc=f"pretrain {spec.name}",
                           budget_seconds=cfg.budget_hours * 3600 if cfg.budget_hours else None,
                           flops_per_sample=mae_train_flops(spec, spec.img_size, cfg.mask_ratio),
                           tokens_per_sample=(spec.img_size // spec.patch_size) ** 2,
                           # sharded over several processes, the pictures would need every rank
                           image_every=cfg.image_every if pictures else 0,
                           cuda_graphs=cfg.compile_mode in CUDA_GRAPH_MODES)


def _max_steps(cfg: PretrainConfig, frames: int, global_batch: int) -> int:
    """The first of --steps and --epochs (a --budget-hours run alone: no step limit)."""
    steps = [cfg.steps] if cfg.steps else []
    if cfg.epochs is not None:
        steps.append(max(1, math.ceil(cfg.epochs * frames / global_batch)))
    return min(steps) if steps else 2**62


def _finished(trainer: Trainer, out: Path, dist, **about) -> dict:
    """The summary of a run that is already done; one killed after its last checkpoint but before
    its summary gets it now, from what the checkpoint and metrics.jsonl hold."""
    done = out / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    losses = [r["loss"] for r in read_metrics(trainer.metrics_path) if "loss" in r]
    summary = {"steps": trainer.step, "samples": trainer.samples, "seconds": round(trainer.elapsed_before, 3),
               "stopped_by": "steps", "final_loss": losses[-1] if losses else float("nan"), **about}
    if dist.is_main:
        write_json_atomic(done, summary)
    return summary


def _say_if_upsampled(data: str, img_size: int, log) -> None:
    """Said, not refused (a small study may mean it): crops larger than the ingested frames."""
    short = frame_short_side(data)
    if short is not None and short < img_size:
        log(f"note: the frames in {data} are {short} px on their short side, so every {img_size}-px crop is "
            f"upsampled; for this size ingest with --short-side 0 (the videos' own) or at least {img_size}")


def _stream(cfg: PretrainConfig, pieces, img_size: int, dist, trainer: Trainer, workers: int, log) -> FrameStream:
    """The frame stream, continued exactly from the checkpoint's data position when the run keeps
    its layout (processes, accumulation, loader workers, shuffle buffer, batch); otherwise fresh,
    seeded by the step."""
    seed = data_seed(cfg.seed)
    kw = dict(rank=dist.rank, world_size=dist.world_size, shuffle_buffer=cfg.shuffle_buffer, batch_size=cfg.batch_size,
              accum_steps=cfg.accum_steps, interpolation=cfg.interpolation)
    stream = FrameStream(pieces, img_size, seed=seed, **kw)
    saved = trainer.data_state
    if saved is not None and all(saved.get(k) == v for k, v in stream.layout(workers).items()):
        return FrameStream(pieces, img_size, seed=saved["seed"], resume=saved, **kw)
    if trainer.step:
        stream.seed = seed + trainer.step
        if dist.is_main:
            now = stream.layout(workers)
            was = ("another number of processes, or no record of it" if saved is None else
                   ", ".join(f"{k} {saved.get(k)}" for k in now))
            log(f"the data order changes from here: the checkpoint's data position ({was}) does not carry over to "
                + ", ".join(f"{k} {v}" for k, v in now.items()))
    return stream


def mask_generators(cfg: PretrainConfig, dist) -> list[torch.Generator]:
    """One RNG for the masks of each of this process's virtual ranks (its micro-steps, `FrameStream`),
    so that the masks, like the data, depend on the global batch's make-up, not on how many
    processes share it."""
    return [torch.Generator(device=dist.device).manual_seed(rank_seed(cfg.seed, dist.rank * cfg.accum_steps + k))
            for k in range(cfg.accum_steps)]


def _loss_fn(device, generators: list[torch.Generator]):
    micro = itertools.count()  # the loop calls it once per micro-step, in order, from a step's start

    def loss(module, batch):
        g = generators[next(micro) % len(generators)]
        return module(normalize_batch(batch, device), generator=g).loss
    return loss
