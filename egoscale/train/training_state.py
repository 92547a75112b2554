"""A run's checkpoint: weights, optimizer, step, and each rank's RNGs, data position and
unfinished metrics window, written atomically by rank 0 and read back by every rank.

What is saved is whole and keyed by parameter name however the run is wrapped (one process,
DDP, FSDP), so a run resumes sharded from an unsharded checkpoint and the other way round, and
optimizer states that torch keyed by position are renamed on load.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist

from egoscale.errors import CheckpointError, EgoscaleError
from egoscale.models.checkpoint import read_checkpoint, save_checkpoint
from egoscale.train.distributed import Dist

CHECKPOINT = "checkpoint.pt"


def has_checkpoint(folder: str | os.PathLike, resume: str) -> bool:
    """Whether a training stage will resume: from the folder's own checkpoint, or from a path."""
    return resume not in ("auto", "none") or (Path(folder) / CHECKPOINT).is_file()


def rng_state() -> dict:
    """Every RNG a step may draw from, whole (the generators' positions included)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    _, internal, gauss_next = random.getstate()
    s = {"torch": torch.get_rng_state(), "numpy": [key.tolist(), pos, has_gauss, gauss],
         "python": [list(internal), gauss_next]}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    # checkpoints written before the positions were kept hold the bare key and internal state
    key, pos, has_gauss, gauss = s["numpy"] if len(s["numpy"]) == 4 else (s["numpy"], 624, 0, 0.0)
    np.random.set_state(("MT19937", np.array(key, dtype=np.uint32), pos, has_gauss, gauss))
    internal, gauss_next = s["python"] if len(s["python"]) == 2 else (s["python"], None)
    random.setstate((3, tuple(internal), gauss_next))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


@dataclass
class Resumed:
    """What a checkpoint says about where the run is."""

    step: int = 0
    samples: int = 0
    elapsed: float = 0.0
    # this rank's saved state ({"rng", "data", "window"}), or None when the checkpoint was written
    # by another number of processes (or holds none)
    rank_state: dict | None = field(default=None)


class Checkpointer:
    """Saves and restores one run's state in OUT/checkpoint.pt.

    Args:
        model: the bare module holding the parameters.
        generators: RNGs of the stage's own (one per virtual rank for the masks), per rank.
        to_file / from_file: model state <-> checkpoint entries, in the stage's layout.
        config: the run's settings, stored beside the weights.
    """

    def __init__(self, out: Path, dist: Dist, model, optimizer, to_file: Callable[[dict], dict],
                 from_file: Callable[[dict], dict], config: dict, fsdp: bool = False,
                 generators: list[torch.Generator] = ()):
        self.path, self.dist, self.model, self.opt = Path(out) / CHECKPOINT, dist, model, optimizer
        self.to_file, self.from_file, self.config, self.fsdp = to_file, from_file, config, fsdp
        self.generators = list(generators)  # the stage's own RNGs (e.g. the masks'), saved with the global ones

    def _full_states(self) -> tuple[dict, dict]:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.model, options=opts) if self.fsdp else self.model.state_dict()
        return model_state, get_optimizer_state_dict(self.model, self.opt, options=opts)

    def save(self, step: int, samples: int, elapsed: float, rank_state: dict, trained: dict) -> None:
        """Collective: every rank calls it. `rank_state`: this rank's part ({"data", "window"});
        its RNGs are added here. `trained`: what the weights have been through (evaluations read it)."""
        model_state, opt_state = self._full_states()
        mine = {**rank_state, "rng": rng_state(), "generators": [g.get_state() for g in self.generators]}
        ranks = [None] * self.dist.world_size
        if self.dist.enabled:
            tdist.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        if self.dist.is_main:
            obj = self.to_file(model_state)
            obj["egoscale"] = {**obj.get("egoscale", {}), "trained": trained}
            obj = {**obj, "optimizer": opt_state, "step": step, "samples": samples, "elapsed": elapsed,
                   "ranks": ranks, "config": self.config}
            save_checkpoint(self.path, obj)
        if self.dist.enabled:
            tdist.barrier()

    def find(self, resume: str) -> Path | None:
        """The checkpoint `resume` (auto | none | PATH) points to, or None to start afresh."""
        path = None if resume == "none" else self.path if resume == "auto" else Path(resume)
        if path is None or not path.is_file():
            if resume not in ("auto", "none"):
                raise EgoscaleError(f"--resume {path}: no such checkpoint")
            return None
        return path

    def load(self, path: Path) -> Resumed:
        """Weights, optimizer and this rank's RNGs from `path`; the rest is returned."""
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
        # older checkpoints kept only each rank's RNGs, under "rng"
        ranks = obj.get("ranks") or [{"rng": r} for r in obj.get("rng") or []]
        mine = ranks[self.dist.rank] if len(ranks) == self.dist.world_size else None
        if mine is not None:
            set_rng_state(mine["rng"])
            saved = mine.get("generators") or []
            if len(saved) == len(self.generators):  # else another accumulation: the generators start afresh
                for g, state in zip(self.generators, saved):
                    g.set_state(state)
        return Resumed(obj["step"], obj["samples"], obj.get("elapsed", 0.0), mine)

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
