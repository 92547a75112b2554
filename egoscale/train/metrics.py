"""A run's metrics: the window of steps between two log lines, and metrics.jsonl itself.

`MetricsWindow` sums the loss on the device (no host sync per step) and turns a window into
one record: mean loss, throughput, and on CUDA TFLOP/s, MFU and peak memory. Its sums are part
of the checkpoint, so the first line after a resume averages the same steps as an unbroken run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from egoscale.constants import PEAK_BF16_TFLOPS
from egoscale.fileio import write_text_atomic
from egoscale.train.distributed import Dist, all_reduce_mean


def device_peak_tflops(device: torch.device) -> float | None:
    if os.environ.get("EGOSCALE_PEAK_TFLOPS"):
        return float(os.environ["EGOSCALE_PEAK_TFLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


class MetricsWindow:
    """The optimizer steps since the last log line.

    Args:
        flops_per_sample: training FLOPs per sample (TFLOP/s and MFU on CUDA).
        tokens_per_sample: for tokens/s.
    """

    def __init__(self, dist: Dist, flops_per_sample: float | None = None, tokens_per_sample: int | None = None):
        self.dist, self.flops, self.tokens = dist, flops_per_sample, tokens_per_sample
        self.peak = device_peak_tflops(dist.device)
        self.loss = torch.zeros((), device=dist.device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=dist.device)  # sticky: any bad loss since start
        self.steps, self.samples, self.t0 = 0, 0, time.time()

    def add(self, loss: torch.Tensor, micro_steps: int = 1) -> None:
        """One micro-step's (detached) loss, of `micro_steps` in the optimizer step."""
        self.nonfinite |= ~torch.isfinite(loss)
        self.loss += loss / micro_steps

    def step_done(self, samples: int) -> None:
        """An optimizer step over `samples` images (all ranks together)."""
        self.steps += 1
        self.samples += samples

    def diverged(self) -> bool:
        return bool(self.nonfinite)

    def record(self, step: int) -> dict:
        """The window as a metrics record (a collective: every rank calls it); then a new window."""
        dist = self.dist
        dt = max(time.time() - self.t0, 1e-9)
        rec = {"step": step, "loss": float(all_reduce_mean(self.loss, dist)) / max(self.steps, 1),
               "images_per_s": self.samples / dt}
        if self.tokens:
            rec["tokens_per_s"] = self.samples * self.tokens / dt
        if self.flops and dist.device.type == "cuda":
            tflops = self.samples * self.flops / dt / 1e12 / dist.world_size
            rec["tflops_per_device"] = tflops
            if self.peak:
                rec["mfu"] = tflops / self.peak
            rec["peak_memory_gb"] = torch.cuda.max_memory_allocated(dist.device) / 2**30
        self.loss.zero_()
        self.steps, self.samples, self.t0 = 0, 0, time.time()
        return rec

    def state_dict(self) -> dict:
        # the float32 sum as a Python float is exact, so a resumed window adds up bit for bit
        return {"loss": float(self.loss), "steps": self.steps, "samples": self.samples}

    def load_state_dict(self, state: dict) -> None:
        self.loss.fill_(state["loss"])
        self.steps, self.samples = state["steps"], state["samples"]


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl file, in order (a line cut short by a kill is skipped)."""
    if not Path(path).is_file():
        return []
    out = []
    for ln in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to `step` (where a resumed run continues; 0 for a run starting over),
    so that every step appears once."""
    path = Path(path)
    if not path.exists():
        return
    keep = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))
