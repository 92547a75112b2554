"""`--precision bf16-params` in one process: the model runs in bf16, the optimizer keeps fp32.

Under autocast every matmul re-casts its fp32 weight and the residual stream stays fp32; a bf16
model moves fewer bytes through the step's memory-bound kernels (benchmarks/README.md, "The
step's roofline"). Over several processes FSDP2's mixed-precision
policy does this (`distributed.parallelize`); in one process its sharding machinery is overhead,
so `Bf16Model` does it directly: a bf16 copy of the model runs forward and backward, each of its
gradients is added in fp32 to the master parameter's as soon as it is ready, and the masters
(the model the optimizer steps, checkpoints save and evaluations read) are cast into the copy
again before the first forward after they change: after any optimizer step over them (a global
optimizer hook: the fused AdamW updates in place without advancing version counters) and after
any other in-place change (a loaded checkpoint: their version counters).
"""

from __future__ import annotations

import copy
import functools
import weakref

import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils._pytree import tree_map


def _grad_to_master(master: torch.Tensor, param: torch.Tensor) -> None:
    # fp32 accumulation across micro-steps; the bf16 gradient is dropped at once
    if master.grad is None:
        master.grad = param.grad.to(master.dtype)
    else:
        master.grad.add_(param.grad)
    param.grad = None


class Bf16Model(nn.Module):
    """Runs a bf16 copy of `master`, whose fp32 parameters stay the ones trained; call it as the model.

    `.model` is the bf16 copy that runs (compile or hook that one); floating inputs are cast to
    bf16. The masters' gradients are fp32 once backward has finished.
    """

    def __init__(self, master: nn.Module):
        super().__init__()
        if any(getattr(m, "_compiled_call_impl", None) is not None for m in master.modules()):
            # a copied compiled module would still call the master's own forward
            raise ValueError("Bf16Model: compile the copy that runs (.model), not the fp32 master")
        self.model = copy.deepcopy(master).to(torch.bfloat16)
        self._pairs = list(zip(self.model.parameters(), master.parameters()))
        for run, m in self._pairs:
            if m.requires_grad:
                run.register_post_accumulate_grad_hook(functools.partial(_grad_to_master, m))
        self._masters_seen: int | None = None
        self._stepped = False
        masters = {id(m) for _, m in self._pairs}
        me = weakref.ref(self)

        def after_step(opt, args, kwargs):
            if me() is not None and any(id(p) in masters for g in opt.param_groups for p in g["params"]):
                me()._stepped = True

        handle = register_optimizer_step_post_hook(after_step)
        weakref.finalize(self, handle.remove)

    @torch.no_grad()
    def refresh(self) -> None:
        """Cast the masters into the bf16 copy if they changed since the last cast."""
        version = sum(m._version for _, m in self._pairs)
        if self._stepped or version != self._masters_seen:
            torch._foreach_copy_([r for r, _ in self._pairs], [m for _, m in self._pairs])
            self._masters_seen, self._stepped = version, False

    def forward(self, *args, **kwargs):
        self.refresh()
        to_bf16 = functools.partial(tree_map, lambda t: t.to(torch.bfloat16)
                                    if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
        return self.model(*to_bf16(args), **to_bf16(kwargs))
