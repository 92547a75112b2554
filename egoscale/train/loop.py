"""The training loop shared by pretraining and finetuning.

A stage builds the model, optimizer, batches and a loss function; `Trainer` runs the steps:
gradient accumulation, bf16 autocast on CUDA, lr schedule, metrics (metrics.jsonl, a line per
logging step), progress bar, atomic checkpoints with optimizer/step/RNG state, resume, a
wall-clock budget, and a stop on a non-finite loss that keeps the last good checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist

from egoscale.constants import PEAK_BF16_TFLOPS
from egoscale.errors import CheckpointError, EgoscaleError
from egoscale.fileio import append_jsonl, remove_stale_temps, write_json_atomic, write_text_atomic
from egoscale.models.checkpoint import read_checkpoint, save_checkpoint
from egoscale.train.config import PRECISIONS, PRETRAIN_PRECISIONS, check_precision
from egoscale.train.distributed import Dist, all_reduce_mean, keep_grad_buffers

CHECKPOINT = "checkpoint.pt"


class TrainingDiverged(EgoscaleError):
    """The loss became NaN or infinite."""


@dataclass
class LoopSettings:
    out: Path
    max_steps: int
    budget_seconds: float | None = None
    accum_steps: int = 1
    log_every: int = 10
    save_every: int = 1000
    resume: str = "auto"  # auto | none | PATH
    seed: int = 0
    progress: bool = True
    desc: str = "train"
    flops_per_sample: float | None = None  # training FLOPs per sample, for TFLOP/s and MFU
    tokens_per_sample: int | None = None
    # bf16: the step runs under bf16 autocast; fp32 or bf16-params (the module runs in bf16
    # itself, `distributed.parallelize`): no autocast; auto: bf16 on CUDA, else fp32
    precision: str = "auto"
    image_every: int = 0  # pictures (`Trainer.images`) for the trackers every N steps and at the end; 0: none
    # the module's compiled blocks replay CUDA graphs (`--compile-mode reduce-overhead`): every
    # micro-step is marked as a new graph generation, and gradients accumulate in buffers that
    # live for the run (`distributed.keep_grad_buffers`) instead of being set to None
    cuda_graphs: bool = False


def lr_schedule(kind: str, base: float, warmup: int, total: int) -> Callable[[int], float]:
    """constant (the paper's), or cosine to zero after a linear warmup."""
    def constant(step: int) -> float:
        return base * min(1.0, (step + 1) / warmup) if warmup else base

    def cosine(step: int) -> float:
        if warmup and step < warmup:
            return base * (step + 1) / warmup
        p = (step - warmup) / max(1, total - warmup)
        return base * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    return {"constant": constant, "cosine": cosine}[kind]


def resolve_precision(precision: str, device: torch.device, choices: tuple[str, ...] = PRECISIONS) -> str:
    """`auto` made concrete for this device: bf16 (autocast) on CUDA, fp32 elsewhere."""
    check_precision(precision, choices)
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether an evaluation's forward pass runs under bf16 autocast (weights and optimizer fp32)."""
    return resolve_precision(precision, device) == "bf16"


def adamw(params, lr: float, device: torch.device, sharded: bool = False, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel wherever it runs (CPU and CUDA): one pass over all parameters
    instead of a dozen kernels per tensor. FSDP's sharded parameters (DTensors) keep PyTorch's
    default (foreach): the fused kernel runs on them, but leaked memory every step in torch 2.11
    (pytorch/pytorch#188174)."""
    fused = not sharded and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, fused=fused or None, **kwargs)


def device_peak_tflops(device: torch.device) -> float | None:
    if os.environ.get("EGOSCALE_PEAK_TFLOPS"):
        return float(os.environ["EGOSCALE_PEAK_TFLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(), "python": random.getstate()[1]}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state()
    return s


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", np.array(s["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(s["python"]), None))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


class Trainer:
    """Runs `loss_fn` over `batches` for `settings.max_steps` optimizer steps.

    Args:
        model: the bare module holding the parameters (saved and loaded).
        module: what is called in training (model after DDP/FSDP/compile).
        to_file / from_file: model state <-> checkpoint entries, in the stage's layout.
        loss_fn(module, batch) -> scalar loss (mean over the batch).
        evaluate(step) -> dict of metrics or None, called every `eval_every` steps and at the end.
    """

    def __init__(self, settings: LoopSettings, d: Dist, model, module, optimizer, lr_fn, loss_fn,
                 to_file: Callable[[dict], dict], from_file: Callable[[dict], dict], config: dict,
                 evaluate: Callable[[int], dict | None] | None = None, eval_every: int = 0, fsdp: bool = False,
                 tracking=None, images: Callable[[], dict] | None = None):
        self.settings, self.dist, self.model, self.module, self.opt = settings, d, model, module, optimizer
        self.lr_fn, self.loss_fn, self.to_file, self.from_file = lr_fn, loss_fn, to_file, from_file
        self.config, self.evaluate, self.eval_every, self.fsdp = config, evaluate, eval_every, fsdp
        self.step, self.samples, self.elapsed_before = 0, 0, 0.0
        self.metrics_path = settings.out / "metrics.jsonl"
        # live views of metrics.jsonl (TensorBoard, W&B: `tracking.TrackingConfig`), opened by `fit`
        self.tracking, self.images, self.trackers = tracking, images, None
        # bf16-params runs a bf16 module (`distributed.parallelize`) and needs no autocast
        self.autocast = resolve_precision(settings.precision, d.device, PRETRAIN_PRECISIONS) == "bf16"

    # --- checkpoints ----------------------------------------------------------------------
    def _full_states(self) -> tuple[dict, dict]:
        """Model and optimizer state, whole and keyed by parameter name, however the run is wrapped,
        so that a run can resume sharded from an unsharded checkpoint and the other way round."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.model, options=opts) if self.fsdp else self.model.state_dict()
        return model_state, get_optimizer_state_dict(self.model, self.opt, options=opts)

    def _load_optimizer(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        groups = state.get("param_groups") or [{}]
        if groups[0].get("params") and isinstance(groups[0]["params"][0], int):
            # a checkpoint keyed by position in the optimizer (torch's own layout): name the
            # positions after the parameters the optimizer was built from, in the same order
            names = {id(p): n for n, p in self.model.named_parameters()}
            order = [names[id(p)] for g in self.opt.param_groups for p in g["params"]]
            state = {"state": {order[i]: v for i, v in state["state"].items()},
                     "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in groups]}
        set_optimizer_state_dict(self.model, self.opt, state, options=StateDictOptions(full_state_dict=True))

    def save(self) -> None:
        model_state, opt_state = self._full_states()
        rngs = [None] * self.dist.world_size
        if self.dist.enabled:
            tdist.all_gather_object(rngs, _rng_state())
        else:
            rngs = [_rng_state()]
        if self.dist.is_main:
            obj = self.to_file(model_state)
            # what the weights have been through travels with them (evaluations read it)
            trained = {"steps": self.step, "images": self.samples}
            if self.settings.flops_per_sample:
                trained["flops"] = self.samples * self.settings.flops_per_sample
            obj["egoscale"] = {**obj.get("egoscale", {}), "trained": trained}
            obj = {**obj, "optimizer": opt_state, "step": self.step, "samples": self.samples,
                   "elapsed": self.elapsed(), "rng": rngs, "config": self.config}
            save_checkpoint(self.settings.out / CHECKPOINT, obj)
        if self.dist.enabled:
            tdist.barrier()

    def resume(self) -> bool:
        if self.dist.is_main:  # a run killed while saving left temporary files; only rank 0 writes here
            for name in (CHECKPOINT, self.metrics_path.name):
                remove_stale_temps(self.settings.out / name)
        path = None if self.settings.resume == "none" else (
            self.settings.out / CHECKPOINT if self.settings.resume == "auto" else Path(self.settings.resume))
        if path is None or not path.is_file():
            if self.settings.resume not in ("auto", "none"):
                raise EgoscaleError(f"--resume {path}: no such checkpoint")
            return False
        obj = read_checkpoint(path)
        state = self.from_file(obj)
        try:
            if self.fsdp:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

                set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))
            else:
                self.model.load_state_dict(state)
            self._load_optimizer(obj["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:  # a checkpoint of another model or run
            first = str(e).strip().splitlines()
            raise CheckpointError(f"{path}: does not fit this run's model ({first[-1][:160] if first else e}); "
                                  "start over in another folder (--out NEW) or with --resume none") from None
        self.step, self.samples, self.elapsed_before = obj["step"], obj["samples"], obj.get("elapsed", 0.0)
        rngs = obj.get("rng") or []
        if len(rngs) == self.dist.world_size:
            _set_rng_state(rngs[self.dist.rank])
        else:  # another world size: fresh but deterministic streams
            torch.manual_seed(self.settings.seed * 7919 + self.dist.rank * 104729 + self.step)
        if self.dist.is_main and self.metrics_path.exists():  # drop lines past the checkpoint
            keep = [ln for ln in self.metrics_path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
            write_text_atomic(self.metrics_path, "".join(k + "\n" for k in keep))
        return True

    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self._t0)

    # --- the loop --------------------------------------------------------------------------
    def fit(self, batches: Iterator) -> dict:
        s, d = self.settings, self.dist
        self._t0 = time.time()
        bar = None
        if s.progress and d.is_main:
            from tqdm import tqdm
            bar = tqdm(total=s.max_steps, initial=self.step, desc=s.desc, unit="step", dynamic_ncols=True)
        window_loss = torch.zeros((), device=d.device)
        bad = torch.zeros((), dtype=torch.bool, device=d.device)
        window_n, window_steps, window_t0, last_loss, last_eval = 0, 0, time.time(), float("nan"), None
        first_step, first_logged = None, False
        peak = device_peak_tflops(d.device)
        stop_reason = "steps"
        from egoscale.train.tracking import Trackers

        self.trackers = Trackers(s.out, f"{s.desc} {s.out.name}", self.config, self.tracking, step=self.step,
                                 enabled=d.is_main)
        if s.cuda_graphs:
            keep_grad_buffers(self.model.parameters())
        try:
            while self.step < s.max_steps:
                if s.budget_seconds is not None and self.elapsed() >= s.budget_seconds:
                    stop_reason = "budget"
                    break
                lr = self.lr_fn(self.step)
                for g in self.opt.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)
                n_step = 0
                for _ in range(s.accum_steps):
                    batch = next(batches)
                    if s.cuda_graphs:  # the previous micro-step's graph outputs have all been consumed
                        torch.compiler.cudagraph_mark_step_begin()
                    with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                        loss = self.loss_fn(self.module, batch)
                    (loss / s.accum_steps).backward()
                    ld = loss.detach()
                    bad |= ~torch.isfinite(ld)
                    window_loss += ld / s.accum_steps
                    n_step += _batch_len(batch)
                self.opt.step()
                self.opt.zero_grad(set_to_none=not s.cuda_graphs)
                self.step += 1
                if first_step is None:  # includes torch.compile's compilation and the loader's start
                    first_step = time.time() - self._t0
                self.samples += n_step * d.world_size
                window_n += n_step * d.world_size
                window_steps += 1
                last_step = self.step >= s.max_steps
                if self.step % s.log_every == 0 or last_step:
                    if bool(bad):
                        raise TrainingDiverged(
                            f"non-finite loss by step {self.step}; stopped. The last good checkpoint "
                            f"({s.out / CHECKPOINT}, if any) is kept; lower --lr or check the data")
                    dt = max(time.time() - window_t0, 1e-9)
                    mean_loss = float(all_reduce_mean(window_loss, d)) / window_steps
                    rec = {"step": self.step, "loss": mean_loss, "lr": lr, "images_per_s": window_n / dt,
                           "samples": self.samples, "seconds": round(self.elapsed(), 3)}
                    if first_step is not None and not first_logged:
                        rec["first_step_seconds"] = round(first_step, 3)
                        first_logged = True
                    if s.tokens_per_sample:
                        rec["tokens_per_s"] = window_n * s.tokens_per_sample / dt
                    if s.flops_per_sample and d.device.type == "cuda":
                        tflops = window_n * s.flops_per_sample / dt / 1e12 / d.world_size
                        rec["tflops_per_device"] = tflops
                        if peak:
                            rec["mfu"] = tflops / peak
                        rec["peak_memory_gb"] = torch.cuda.max_memory_allocated(d.device) / 2**30
                    if d.is_main:
                        append_jsonl(self.metrics_path, rec)
                        self.trackers.scalars(rec)
                    last_loss = mean_loss
                    window_loss.zero_()
                    window_n, window_steps, window_t0 = 0, 0, time.time()
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rec['images_per_s']:.1f}")
                if bar is not None:
                    bar.update(1)
                if self.evaluate and self.eval_every and self.step % self.eval_every == 0 and not last_step:
                    last_eval = self._evaluate()
                if self.step % s.save_every == 0 and not last_step:
                    self._check(bad)
                    self.save()
                if s.image_every and self.step % s.image_every == 0 and not last_step and d.is_main:
                    self._pictures()
            self._check(bad)
            if self.evaluate:
                last_eval = self._evaluate()
            self.save()
            if s.image_every and d.is_main:
                self._pictures()
        except torch.OutOfMemoryError:
            raise EgoscaleError(
                f"out of memory on {d.device}: the batch does not fit; lower --batch-size (use "
                "--accum-steps to keep the global batch), or add --grad-checkpointing / --fsdp") from None
        finally:
            if bar is not None:
                bar.close()
            self.trackers.close()
        summary = {"steps": self.step, "samples": self.samples, "seconds": round(self.elapsed(), 3),
                   "stopped_by": stop_reason, "final_loss": last_loss}
        if first_step is not None:
            summary["first_step_seconds"] = round(first_step, 3)
        if any(getattr(m, "_compiled_call_impl", None) for m in self.module.modules()):  # what ran (a bf16 copy)
            from torch._dynamo.utils import counters

            summary["compiled_graphs"] = counters["stats"]["unique_graphs"]  # constant after the first step
        if s.flops_per_sample:
            summary["estimated_flops"] = self.samples * s.flops_per_sample
        if last_eval:
            summary["eval"] = last_eval
        if d.is_main:
            write_json_atomic(s.out / "summary.json", summary)
        return summary

    def _check(self, bad: torch.Tensor) -> None:
        if bool(bad):
            raise TrainingDiverged(f"non-finite loss by step {self.step}; stopped without saving. The last good "
                                   f"checkpoint ({self.settings.out / CHECKPOINT}, if any) is kept")

    def _pictures(self) -> None:
        if self.images is not None and self.trackers.active:
            if self.settings.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            for tag, img in self.images().items():
                self.trackers.image(tag, img, self.step)

    def _evaluate(self) -> dict | None:
        res = self.evaluate(self.step)
        if res is not None and self.dist.is_main:
            append_jsonl(self.metrics_path, {"step": self.step, **res})
            self.trackers.scalars({"step": self.step, **res})
        return res


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl file, in order."""
    if not Path(path).is_file():
        return []
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def _batch_len(batch) -> int:
    if isinstance(batch, (tuple, list)):
        return len(batch[0])
    return len(batch)
