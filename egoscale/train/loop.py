"""The training loop shared by pretraining and finetuning.

A stage builds the model, optimizer, batches and a loss function; `Trainer` runs the steps:
gradient accumulation, bf16 autocast on CUDA, lr schedule, metrics (metrics.jsonl, a line per
logging step), progress bar, atomic checkpoints with optimizer/step/RNG state, resume, a
wall-clock budget, and a stop on a non-finite loss that keeps the last good checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from egoscale.errors import EgoscaleError
from egoscale.fileio import append_jsonl, remove_stale_temps
from egoscale.train.training_state import CHECKPOINT, Checkpointer
from egoscale.train.config import PRECISIONS, PRETRAIN_PRECISIONS, check_precision
from egoscale.train.distributed import Dist, keep_grad_buffers
from egoscale.train.metrics import MetricsWindow, read_metrics, truncate_metrics
from egoscale.train.seeds import relayout_seed
from egoscale.train.tracking import Trackers

__all__ = ["CHECKPOINT", "LoopSettings", "Trainer", "TrainingDiverged", "adamw", "lr_schedule", "read_metrics",
           "resolve_precision", "use_bf16"]


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

    # the flags a stage's config shares with the loop, under the same names
    SHARED = ("accum_steps", "log_every", "save_every", "resume", "seed", "progress", "precision")

    @classmethod
    def of(cls, cfg, **run) -> LoopSettings:
        """The loop's settings from a stage's config (the flags it shares, by name) and what the
        stage works out for this run (`run`: out, max_steps, desc, ...), which wins."""
        shared = {k: getattr(cfg, k) for k in cls.SHARED if hasattr(cfg, k)}
        return cls(**{**shared, **run})


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
    default (foreach): the fused kernel runs on them but leaks memory every step
    (pytorch/pytorch#188174)."""
    fused = not sharded and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, fused=fused or None, **kwargs)


class Trainer:
    """Runs `loss_fn` over `batches` for `settings.max_steps` optimizer steps.

    Args:
        model: the bare module holding the parameters (saved and loaded).
        module: what is called in training (model after DDP/FSDP/compile).
        to_file / from_file: model state <-> checkpoint entries, in the stage's layout.
        loss_fn(module, batch) -> scalar loss (mean over the batch).
        evaluate(step) -> dict of metrics or None, called every `eval_every` steps and at the end.

    The batches may carry their position (`state_dict()`, as `data.cursor.ResumableBatches`
    does): it is saved with every checkpoint, and `data_state` holds it after `resume`.
    """

    def __init__(self, settings: LoopSettings, dist: Dist, model, module, optimizer, lr_fn, loss_fn,
                 to_file: Callable[[dict], dict], from_file: Callable[[dict], dict], config: dict,
                 evaluate: Callable[[int], dict | None] | None = None, eval_every: int = 0, fsdp: bool = False,
                 tracking=None, images: Callable[[], dict] | None = None,
                 generators: list[torch.Generator] = ()):
        self.settings, self.dist, self.model, self.module, self.opt = settings, dist, model, module, optimizer
        self.lr_fn, self.loss_fn, self.config = lr_fn, loss_fn, config
        self.evaluate, self.eval_every = evaluate, eval_every
        self.checkpoints = Checkpointer(settings.out, dist, model, optimizer, to_file, from_file, config, fsdp,
                                        generators)
        self.window = MetricsWindow(dist, settings.flops_per_sample, settings.tokens_per_sample)
        self.step, self.samples, self.elapsed_before = 0, 0, 0.0
        self.data_state: dict | None = None
        self.metrics_path = settings.out / "metrics.jsonl"
        # live views of metrics.jsonl (TensorBoard, W&B: `tracking.TrackingConfig`), opened by `fit`
        self.tracking, self.images, self.trackers = tracking, images, None
        # bf16-params runs a bf16 module (`distributed.parallelize`) and needs no autocast
        self.autocast = resolve_precision(settings.precision, dist.device, PRETRAIN_PRECISIONS) == "bf16"
        self._batches = None
        self._t0 = time.time()

    # --- checkpoints ----------------------------------------------------------------------
    def save(self) -> None:
        trained = {"steps": self.step, "images": self.samples}
        if self.settings.flops_per_sample:
            trained["flops"] = self.samples * self.settings.flops_per_sample
        position = getattr(self._batches, "state_dict", None)
        self.checkpoints.save(self.step, self.samples, self.elapsed(),
                              {"data": position() if position else None, "window": self.window.state_dict()},
                              trained)

    def resume(self) -> bool:
        """Continue from the folder's (or the given) checkpoint, if any; True if one was loaded.
        Metrics logged past it (all of them, for a run that starts over) are dropped."""
        s = self.settings
        if self.dist.is_main:  # a run killed while saving left temporary files; only rank 0 writes here
            for name in (CHECKPOINT, self.metrics_path.name):
                remove_stale_temps(s.out / name)
        path = self.checkpoints.find(s.resume)
        if path is not None:
            r = self.checkpoints.load(path)
            self.step, self.samples, self.elapsed_before = r.step, r.samples, r.elapsed
            if r.rank_state is None:  # another number of processes: fresh but deterministic streams
                torch.manual_seed(relayout_seed(s.seed, self.dist.rank, self.step))
            else:
                self.data_state = r.rank_state.get("data")
                if r.rank_state.get("window"):
                    self.window.load_state_dict(r.rank_state["window"])
        if self.dist.is_main:
            truncate_metrics(self.metrics_path, self.step)
        return path is not None

    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self._t0)

    # --- the loop --------------------------------------------------------------------------
    def train_step(self, batches: Iterator, lr: float) -> int:
        """One optimizer step over `accum_steps` micro-batches; returns the images it took on this rank."""
        s = self.settings
        for g in self.opt.param_groups:
            g["lr"] = lr
        n = 0
        for _ in range(s.accum_steps):
            batch = next(batches)
            if s.cuda_graphs:  # the previous micro-step's graph outputs have all been consumed
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss = self.loss_fn(self.module, batch)
            (loss / s.accum_steps).backward()
            self.window.add(loss.detach(), s.accum_steps)
            n += _batch_len(batch)
        self.opt.step()
        self.opt.zero_grad(set_to_none=not s.cuda_graphs)
        self.step += 1
        return n

    def fit(self, batches: Iterator) -> dict:
        s, dist = self.settings, self.dist
        self._t0, self._batches = time.time(), batches
        self.trackers = Trackers(s.out, f"{s.desc} {s.out.name}", self.config, self.tracking, step=self.step,
                                 enabled=dist.is_main)
        bar = Progress(s, dist, self.step)
        first_step, last, last_eval, stop_reason = None, {}, None, "steps"
        if s.cuda_graphs:
            keep_grad_buffers(self.model.parameters())
        try:
            while self.step < s.max_steps:
                if s.budget_seconds is not None and self.elapsed() >= s.budget_seconds:
                    stop_reason = "budget"
                    break
                lr = self.lr_fn(self.step)
                n = self.train_step(batches, lr) * dist.world_size
                self.samples += n
                self.window.step_done(n)
                if first_step is None:  # includes torch.compile's compilation and the loader's start
                    first_step = time.time() - self._t0
                done = self.step >= s.max_steps
                if self.step % s.log_every == 0 or done:
                    self._check()
                    last = self._log(lr, first_step if not last else None)
                    bar.show(last)
                bar.update()
                if not done:
                    last_eval = self._between_steps() or last_eval
            self._check()
            if self.evaluate:
                last_eval = self._evaluate()
            self.save()
            if s.image_every and dist.is_main:
                self._pictures()
        except torch.OutOfMemoryError:
            raise EgoscaleError(
                f"out of memory on {dist.device}: the batch does not fit; lower --batch-size (use "
                "--accum-steps to keep the global batch), or add --grad-checkpointing / --fsdp") from None
        finally:
            bar.close()
            self.trackers.close()
        return self._summary(stop_reason, last.get("loss", float("nan")), first_step, last_eval)

    def _log(self, lr: float, first_step: float | None) -> dict:
        w = self.window.record(self.step)
        rec = {"step": self.step, "loss": w.pop("loss"), "lr": lr, "images_per_s": w.pop("images_per_s"),
               "samples": self.samples, "seconds": round(self.elapsed(), 3)}
        if first_step is not None:
            rec["first_step_seconds"] = round(first_step, 3)
        rec.update(w)
        if self.dist.is_main:
            append_jsonl(self.metrics_path, rec)
            self.trackers.scalars(rec)
        return rec

    def _between_steps(self) -> dict | None:
        """Evaluation, checkpoint and pictures, each on its own cadence (the last step has its own)."""
        s, res = self.settings, None
        if self.evaluate and self.eval_every and self.step % self.eval_every == 0:
            res = self._evaluate()
        if self.step % s.save_every == 0:
            self._check()
            self.save()
        if s.image_every and self.step % s.image_every == 0 and self.dist.is_main:
            self._pictures()
        return res

    def _summary(self, stop_reason: str, final_loss: float, first_step: float | None, last_eval) -> dict:
        s = self.settings
        summary = {"steps": self.step, "samples": self.samples, "seconds": round(self.elapsed(), 3),
                   "stopped_by": stop_reason, "final_loss": final_loss}
        if first_step is not None:
            summary["first_step_seconds"] = round(first_step, 3)
        graphs = compiled_graphs(self.module)
        if graphs is not None:
            summary["compiled_graphs"] = graphs
        if s.flops_per_sample:
            summary["estimated_flops"] = self.samples * s.flops_per_sample
        if last_eval:
            summary["eval"] = last_eval
        return summary

    def _check(self) -> None:
        if self.window.diverged():
            raise TrainingDiverged(f"non-finite loss by step {self.step}; stopped without saving. The last good "
                                   f"checkpoint ({self.settings.out / CHECKPOINT}, if any) is kept; lower --lr "
                                   "or check the data")

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


class Progress:
    """The step bar on rank 0 (nothing elsewhere, or with --no-progress)."""

    def __init__(self, s: LoopSettings, dist: Dist, step: int):
        self.bar = None
        if s.progress and dist.is_main:
            from tqdm import tqdm
            self.bar = tqdm(total=s.max_steps, initial=step, desc=s.desc, unit="step", dynamic_ncols=True)

    def show(self, rec: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['images_per_s']:.1f}")

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def compiled_graphs(module) -> int | None:
    """How many distinct graphs torch.compile made (constant after the first step), if the module
    or a block in it is compiled; from dynamo's counters, which have no public interface."""
    if not any(getattr(m, "_compiled_call_impl", None) for m in module.modules()):
        return None
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _batch_len(batch) -> int:
    if isinstance(batch, (tuple, list)):
        return len(batch[0])
    return len(batch)
