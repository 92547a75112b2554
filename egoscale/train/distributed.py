"""Where am I running: one process or many (torchrun), which device, how the model is wrapped.

The model code knows nothing of this; `parallelize` wraps a built model (DDP by default, FSDP
for models that do not fit one device, plus gradient checkpointing and torch.compile).
"""

from __future__ import annotations

import ctypes
import datetime
import os
import socket
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as tdist
import torch.nn as nn

from egoscale.errors import EgoscaleError
from egoscale.models.block import Block

# The oldest torch with what training uses (FSDP2's public `fully_shard`, `torch.OutOfMemoryError`);
# checked where every training and evaluation stage passes (`resolve_device`), before any work,
# instead of failing mid-run.
TORCH_FLOOR = (2, 6)


def check_torch(version: str = torch.__version__) -> None:
    have = tuple(int(p) for p in version.split("+")[0].split(".")[:2])
    if have < TORCH_FLOOR:
        raise EgoscaleError(f"egoscale needs torch >= {'.'.join(map(str, TORCH_FLOOR))} (this is {version}): "
                            "pip install -U torch torchvision")



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


# glibc's malloc returns blocks above its mmap threshold (adaptive, at most 32 MiB) to the OS
# on free, so a CPU training step's large activations arrive as fresh pages the kernel must
# fault in and zero, every step. Kept in the heap, freed blocks are reused; peak memory stays
# what the step needs, it is just not handed back (benchmarks/README.md has the figures).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of unmapping it; True if done.

    Does nothing (False) where the C library is not glibc, or where the user tunes malloc
    through the environment (MALLOC_*_ or GLIBC_TUNABLES), which then wins.
    """
    if "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # 1 GiB: above any one activation of the CPU-sized models; mallopt(3) documents 32 MiB as
    # the ceiling, which not every glibc enforces: 32 MiB where 1 GiB is refused
    return bool((mallopt(_M_MMAP_THRESHOLD, 1 << 30) or mallopt(_M_MMAP_THRESHOLD, 32 << 20))
                and mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def resolve_device(device: str | None = "auto", local_rank: int = 0) -> torch.device:
    """auto -> this process's GPU if there is one, else the CPU; makes it the current device.

    On the CPU, malloc keeps freed memory for reuse (`keep_freed_memory`). A torch older than
    training needs is a one-line error here (`check_torch`).
    """
    check_torch()
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from egoscale.errors import ConfigError

        raise ConfigError("--device cuda: no CUDA device is visible here (use --device auto or cpu)")
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    dev = torch.device(device)
    if dev.type == "cpu":
        keep_freed_memory()
    return dev


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the one that prints summaries."""
    return os.environ.get("RANK", "0") == "0"


def init_distributed(device: str | None = None) -> Dist:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); start the process group.

    CUDA with NCCL when GPUs are present, else CPU with gloo (so tests run here).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dist = Dist(rank, world, local, resolve_device(device, local))
    if world > 1:
        _start_group(dist)
    return dist


def _start_group(dist: Dist) -> None:
    if tdist.is_initialized():
        return
    # a group of one needs no rendezvous: an in-process store instead of torchrun's
    one = dict(store=tdist.HashStore(), rank=0, world_size=1) if dist.world_size == 1 else {}
    tdist.init_process_group("nccl" if dist.device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30),
                            device_id=dist.device if dist.device.type == "cuda" else None, **one)


def node_name() -> str:
    """The node this process runs on: SLURM's name for it inside a job, else the hostname."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def rank_nodes(dist: Dist) -> list[str]:
    """Every rank's node, in rank order (a collective: every rank calls it)."""
    if not dist.enabled:
        return [node_name()]
    names: list = [None] * dist.world_size
    tdist.all_gather_object(names, node_name())
    return names


def cleanup() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def fully_sharded(dist: Dist, fsdp: bool, bf16_params: bool) -> bool:
    """Whether `parallelize` wraps the model with FSDP2's `fully_shard` (its parameters become
    DTensors: the optimizer and checkpoints treat them so): for --fsdp, and for bf16-params over
    several processes."""
    return fsdp or (bf16_params and dist.enabled)


def parallelize(model: nn.Module, dist: Dist, fsdp: bool = False, grad_checkpointing: bool = False,
                compile: bool = False, bf16_params: bool = False, compile_mode: str = "default") -> nn.Module:
    """Apply activation checkpointing, torch.compile (per block, in `compile_mode`), and FSDP or DDP
    to a built model.

    With FSDP (PyTorch's `fully_shard`), each transformer block is its own shard unit so that
    only one block's full weights exist at a time. `bf16_params` runs the whole model in bf16
    from fp32 master weights cast once per step, with no autocast re-casting weights and
    activations op by op; gradients are reduced and kept in fp32. In one process without `fsdp`
    a bf16 copy of the model does it (`mixed_precision.Bf16Model`); otherwise FSDP2's
    mixed-precision policy, where without `fsdp` the bf16 weights stay for the backward pass (no
    re-gather: memory as DDP's) and with it they are freed after each block's forward.
    Returns the module to call for training; `model` still holds the (possibly sharded) fp32
    parameters that the optimizer steps and checkpoints save.
    """
    for m in model.modules():
        if hasattr(m, "set_grad_checkpointing") and grad_checkpointing:
            m.set_grad_checkpointing(True)
    if bf16_params and not fully_sharded(dist, fsdp, bf16_params):
        from egoscale.train.mixed_precision import Bf16Model

        wrapped = Bf16Model(model)
        if compile:  # the copy that runs, compiled for bf16
            compile_blocks(wrapped.model, mode=compile_mode)
        return wrapped
    if compile:
        compile_blocks(model, mode=compile_mode)
    if fully_sharded(dist, fsdp, bf16_params):
        wrapped = shard(model, dist, reshard_after_forward=fsdp, bf16_params=bf16_params)
    elif dist.enabled:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)
    else:
        wrapped = model
    return wrapped


def shard(model: nn.Module, dist: Dist, reshard_after_forward: bool, bf16_params: bool) -> nn.Module:
    """FSDP2's `fully_shard` on each transformer block and on the root (in place; returns `model`),
    with its bf16 mixed-precision policy for `bf16_params`. A plain process gets a group of one."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    _start_group(dist)  # a plain process too: `fully_shard` needs a process group
    # FSDP2 warns that an output is a view (an in-place op on it would skip its hooks); the
    # MAE's outputs are only read
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view")
    mp = {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)} \
        if bf16_params else {}
    for m in model.modules():
        if isinstance(m, nn.Sequential) and any(isinstance(c, Block) for c in m.children()):
            for blk in m.children():
                fully_shard(blk, reshard_after_forward=reshard_after_forward, **mp)
    # the root keeps its weights after forward (FSDP2's default for the root: its backward
    # starts at once); resharding it as well failed in backward under autocast on a GPU
    fully_shard(model, **mp)
    return model


def compile_blocks(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> int:
    """torch.compile each transformer block in place (encoder and decoder); returns how many.

    Per block rather than the whole model: identical blocks share one compiled graph, so
    compiling takes about as long for 40 blocks as for one, and FSDP's per-block units and
    activation checkpointing wrap compiled blocks unchanged. Parameter names do not change.
    """
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for m in blocks:
        m.compile(backend=backend, mode=mode)
    return len(blocks)


def keep_grad_buffers(params) -> None:
    """Give every parameter a zeroed gradient buffer that lives for the whole run.

    CUDA graphs (`--compile-mode reduce-overhead`) replay each block's backward into memory of
    their own pool, which the next replay overwrites. A gradient that autograd's accumulation
    took over as `.grad` would be overwritten too; accumulated into a buffer of its own (the
    optimizer then zeroes it instead of dropping it), it is safe across micro-steps and steps.
    """
    for p in params:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def all_reduce_mean(x: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.enabled:
        x = x.clone()
        tdist.all_reduce(x, op=tdist.ReduceOp.AVG if x.device.type == "cuda" else tdist.ReduceOp.SUM)
        if x.device.type != "cuda":  # gloo has no AVG
            x /= dist.world_size
    return x
