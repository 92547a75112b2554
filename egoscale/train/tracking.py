"""Live views of a run's metrics: TensorBoard event files and Weights & Biases.

`metrics.jsonl` stays the source of truth (the results and every egoscale tool read it); the
trackers are views of the same records, written as they are logged, so that a long run can be
watched while it runs. Both are optional extras: TensorBoard event files are written under
OUT/tensorboard whenever the `tensorboard` package is installed (`tensorboard --logdir RUNS`
shows every run under RUNS, a sweep's whole grid included); W&B logs only when asked
(`--wandb PROJECT`, `pip install wandb`; `WANDB_MODE=offline` keeps it on disk).
"""

from __future__ import annotations

import numbers
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from egoscale.config import opt
from egoscale.errors import ConfigError


@dataclass
class TrackingConfig:
    """The trackers' flags, shared by pretrain, finetune and probe."""

    tensorboard: bool = opt(True, "also write TensorBoard event files under OUT/tensorboard (when the tensorboard "
                            "package is installed)", last=True)
    wandb: str | None = opt(None, "also log to Weights & Biases, in this project (pip install wandb; "
                            "WANDB_MODE=offline keeps it on disk)", metavar="PROJECT", last=True)
    wandb_group: str | None = opt(None, "W&B group of the run (a sweep sets its grid's name)", last=True)


class Trackers:
    """TensorBoard and/or W&B for one run; does nothing on ranks other than 0 or when neither is on."""

    def __init__(self, out: Path, name: str, config: dict, cfg: TrackingConfig | None, step: int = 0,
                 enabled: bool = True, resume: bool = True):
        """`step`: where a resumed run continues (what was logged past it is hidden); `resume=False`
        for a run that starts over each time (the probe retrains from its cached features): a new
        W&B run, and the TensorBoard curves of the previous attempt hidden."""
        self.tb = self.run = None
        if cfg is None or not enabled:
            return
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the optional extra is absent: metrics.jsonl alone
                SummaryWriter = None
            if SummaryWriter is not None:
                # what a previous attempt logged past the checkpoint's step (all of it, for a run that
                # starts over) is hidden, so that every step shows once
                tb = out / "tensorboard"
                self.tb = SummaryWriter(str(tb), purge_step=step + 1 if tb.is_dir() else None)
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise ConfigError("--wandb needs the wandb package: pip install wandb") from None
            id_file = out / "wandb-run-id"
            run_id = id_file.read_text().strip() if id_file.is_file() and resume else secrets.token_hex(4)
            id_file.write_text(run_id + "\n")
            self.run = wandb.init(project=cfg.wandb, group=cfg.wandb_group, name=name, id=run_id, resume="allow",
                                  dir=str(out), config=config, reinit="finish_previous")

    @property
    def active(self) -> bool:
        return self.tb is not None or self.run is not None

    def scalars(self, record: dict) -> None:
        """Every number in a metrics record (its "step" is the x axis)."""
        if not self.active:
            return
        step = int(record["step"])
        values = {k: float(v) for k, v in record.items()
                  if k != "step" and isinstance(v, numbers.Number) and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.run is not None:
            self.run.log(values, step=step)

    def image(self, tag: str, img: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 picture, e.g. MAE reconstructions."""
        if self.tb is not None:
            self.tb.add_image(tag, img, step, dataformats="HWC")
        if self.run is not None:
            import wandb

            self.run.log({tag: wandb.Image(img)}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.run is not None:
            self.run.finish()
            self.run = None
