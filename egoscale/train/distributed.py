"""Where am I running: one process or many (torchrun), which device, how the model is wrapped.

The model code knows nothing of this; `parallelize` wraps a built model (DDP by default, FSDP
for models that do not fit one device, plus gradient checkpointing and torch.compile).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> Dist:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); start the process group.

    CUDA with NCCL when GPUs are present, else CPU with gloo (so tests run here).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                                device_id=dev if dev.type == "cuda" else None)
    return Dist(rank, world, local, dev)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model: nn.Module, d: Dist, fsdp: bool = False, grad_checkpointing: bool = False,
                compile: bool = False) -> nn.Module:
    """Apply activation checkpointing, FSDP or DDP, and compile to a built model.

    With FSDP (PyTorch's `fully_shard`), each transformer block is its own shard unit so that
    only one block's full weights exist at a time. Returns the module to call for training;
    the original `model` still holds the (possibly sharded) parameters.
    """
    for m in model.modules():
        if hasattr(m, "set_grad_checkpointing") and grad_checkpointing:
            m.set_grad_checkpointing(True)
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for m in model.modules():
            if isinstance(m, nn.Sequential) and any(type(c).__name__ == "Block" for c in m.children()):
                for blk in m.children():
                    fully_shard(blk)
        fully_shard(model)
        wrapped = model
    elif d.enabled:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    else:
        wrapped = model
    if compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def all_reduce_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.AVG if x.device.type == "cuda" else dist.ReduceOp.SUM)
        if x.device.type != "cuda":  # gloo has no AVG
            x /= d.world_size
    return x


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
