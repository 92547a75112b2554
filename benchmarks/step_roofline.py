"""How fast could the MAE training step run on a GPU, given the operations it is made of?

Every operation of one bf16 training step (forward, backward, fused AdamW) is recorded below
autograd (a `TorchDispatchMode`) while the step runs on the CPU: its FLOPs (torch's own
formulas) and the bytes it reads and writes (views cost nothing). The step runs at two small
batches, so each operation class's cost is split into a per-image part and a per-step part and
carried to the batch a GPU would run. Each operation then costs at least the larger of its FLOPs
at the GPU's matmul rate and its bytes at the memory bandwidth, one after another as kernels on
one stream run. Their sum is the step's roofline: the most the step could reach (its "MFU
ceiling") with its operations as they are, one kernel each. A measured MFU far below it means
time is lost in how kernels run (launches, small or poorly shaped kernels, the host); near it,
the operations themselves (bytes) must change: fusion (torch.compile), a bf16 residual stream.

The same for the step as `--compile` runs it (each transformer block compiled, the rest eager):
each kind of block (encoder, decoder, the decoder's last, rows-only block) is compiled by
torch.compile's inductor on the CPU at both batches, and the bytes of its fused kernels (inductor's
own count) replace the block's memory-bound operations; matmuls and attention stay as they were.
Inductor fuses on a CPU much as it does for a GPU, but not identically: an estimate.

The step runs under bf16 autocast with fp32 weights (`--precision bf16`), or with `--weights bf16`
as `--precision bf16-params` runs it in one process: a bf16 copy of the model, its fp32 master
weights cast into it once per step and its gradients added to theirs in fp32.

    python benchmarks/step_roofline.py                          # B/14@224 b256, H/14@224 b128, H/14@476 b32
    python benchmarks/step_roofline.py --models vit_b14:224:256 --matmul-tflops 774 --bandwidth-tbs 4.8
    python benchmarks/step_roofline.py --no-compiled --weights bf16  # the eager step only, a bf16 model

The defaults are one H200's: its datasheet bf16 peak (MFU's denominator), the rate an 8192^3 bf16
matmul reached on it (`gpu_check.py`, benchmarks/README.md) and its HBM bandwidth. Bytes count as
if every operation went to memory; the GPU's L2 cache keeps some activations, so the ceilings are
somewhat pessimistic. Attention counts the fused SDPA kernel's inputs and outputs.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from egoscale.models import get_spec
from egoscale.models.flops import mae_train_flops
from training_step import build

aten = torch.ops.aten
GEMMS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
COPIES = {aten._to_copy, aten.copy_, aten._foreach_copy_, aten.clone, aten.cat, aten.stack}
NORMS = {aten.native_layer_norm, aten.native_layer_norm_backward}
REDUCTIONS = {aten.sum, aten.mean}


def _kind(func) -> str:
    return _packet_kind(func.overloadpacket)


def _packet_kind(p) -> str:
    name = p.__name__
    if p in GEMMS:
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name or "efficient_attention" in name:
        return "attention"
    if p in NORMS:
        return "layer norm"
    if p in COPIES:
        return "copies, casts"
    if "adam" in name:
        return "optimizer"
    if p in REDUCTIONS:
        return "reductions"
    return "elementwise"


# GPU kernel names -> the same kinds, for reading a profile against the roofline (a heuristic on
# the names cuBLAS, cuDNN, PyTorch and inductor give their kernels; first match wins)
KERNEL_KINDS = (("attention", ("flash", "fmha", "sdpa", "attention")),
                ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "matmul")),
                ("fused (compiled)", ("triton_",)),
                ("optimizer", ("adam",)),
                ("layer norm", ("layer_norm", "layernorm", "gammabeta")),
                ("copies, casts", ("copy", "catarray", "memcpy", "memset")),
                ("reductions", ("reduce",)))


def kernel_kind(name: str) -> str:
    if name.startswith("aten::") and hasattr(aten, name[6:]):  # a CPU profile lists operators
        return _packet_kind(getattr(aten, name[6:]))
    low = name.lower()
    return next((kind for kind, marks in KERNEL_KINDS if any(m in low for m in marks)), "elementwise")


def _bytes(t: torch.Tensor) -> int:
    # the elements a kernel touches: a broadcast (expanded) tensor is read once, a slice only its part
    return min(t.numel(), t.untyped_storage().nbytes() // max(1, t.element_size())) * t.element_size()


def _key(t: torch.Tensor) -> tuple:
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)


def _attention_flops(func, args, out) -> int:
    name = func.overloadpacket.__name__
    if "backward" in name:  # (grad_out, q, k, v, ...)
        return sdpa_backward_flop_count(args[0].shape, args[1].shape, args[2].shape, args[3].shape)
    return sdpa_flop_count(args[0].shape, args[1].shape, args[2].shape)


class Tally(TorchDispatchMode):
    """FLOPs and bytes of every operation that runs under it, by kind."""

    def __init__(self):
        super().__init__()
        self.flops, self.bytes, self.calls = defaultdict(float), defaultdict(float), defaultdict(int)
        self.op_bytes: dict[tuple[str, str], float] = defaultdict(float)  # (kind, op) -> bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flat_in = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        flat_out = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        # written: the arguments the op mutates (in place, out=, the optimizer's lists) and the
        # outputs in new memory; an op that does neither is a view (no kernel, no bytes)
        mutated = [a for arg, a in zip(func._schema.arguments, list(args) + [kwargs.get(x.name) for x in
                                                                          func._schema.arguments[len(args):]])
                   if arg.alias_info is not None and arg.alias_info.is_write]
        mutated = [t for t in torch.utils._pytree.tree_leaves(mutated) if isinstance(t, torch.Tensor)]
        inputs_at = {t.untyped_storage().data_ptr() for t in flat_in}
        fresh = [o for o in flat_out if o.untyped_storage().data_ptr() not in inputs_at]
        if not mutated and not fresh:
            return out
        seen, moved = set(), 0
        if func.overloadpacket in (aten.copy_, aten._foreach_copy_):  # destinations are written, not read
            seen.update(_key(t) for t in mutated)
        for t in flat_in:  # read once each
            key = _key(t)
            if key not in seen:
                seen.add(key)
                moved += _bytes(t)
        moved += sum(_bytes(t) for t in mutated + fresh)
        kind = _kind(func)
        flops = 0
        if kind == "attention":
            flops = _attention_flops(func, args, out)
        elif func.overloadpacket in flop_registry:
            flops = flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
        self.flops[kind] += flops
        self.bytes[kind] += moved
        self.op_bytes[kind, str(func.overloadpacket.__name__)] += moved
        self.calls[kind] += 1
        return out


MEMORY_KINDS = ("elementwise", "copies, casts", "layer norm", "reductions", "optimizer")


def _roofline_s(flops: float, moved: float, matmul_tflops: float, bandwidth: float) -> tuple[float, str]:
    compute_s, memory_s = flops / (matmul_tflops * 1e12), moved / (bandwidth * 1e12)
    return max(compute_s, memory_s), "compute" if compute_s >= memory_s else "memory"


def tally_steps(name: str, size: int, batches: tuple[int, ...], weights: str = "autocast",
                device: torch.device = torch.device("cpu")) -> tuple[list[Tally], list[dict]]:
    """One tally per batch size, each of one training step after an untallied one (which creates
    the optimizer's state); and per batch size, each kind of block with its count and the inputs it
    received in that step.

    weights: "autocast" (fp32 weights, bf16 autocast, as `--precision bf16`) or "bf16" (a bf16
    copy of the model from fp32 masters, as `--precision bf16-params` runs in one process).
    """
    bf16 = weights == "bf16"
    # the fused SDPA kernel, as on a GPU
    step = build(get_spec(name, img_size=size), device, "bf16-params" if bf16 else "bf16", attention="sdpa")
    master, runs = step.model, step.module.model if bf16 else step.model  # runs: the modules whose kernels run

    def blocks_of(m):
        return {"encoder block": list(m.encoder.blocks), "decoder block": list(m.decoder_blocks)[:-1],
                "last decoder block": list(m.decoder_blocks)[-1:]}

    kinds = blocks_of(runs)
    # replayed alone, a block must not carry the bf16 copy's gradient hooks (their casts stay the
    # step's, not the block's): the master's blocks, or a plain bf16 copy of them
    replays = blocks_of(copy.deepcopy(master).to(torch.bfloat16) if bf16 else master)

    step(torch.randn(batches[0], 3, size, size, device=device))
    tallies, blocks = [], []
    for b in batches:
        seen: dict[str, dict] = {}
        hooks = [blks[0].register_forward_pre_hook(
            functools.partial(_keep_inputs, seen, k, replays[k][0], len(blks), not bf16), with_kwargs=True)
            for k, blks in kinds.items() if blks]
        x = torch.randn(b, 3, size, size, device=device)
        with Tally() as t:
            step(x)
        for h in hooks:
            h.remove()
        tallies.append(t)
        blocks.append(seen)
    return tallies, blocks


def _keep_inputs(seen: dict, kind: str, replay, count: int, autocast: bool, block, args, kwargs) -> None:
    """A forward pre-hook: the first inputs a kind of block receives, kept for replaying it alone."""
    if kind not in seen:
        with _disable_current_modes():  # the copies are not the step's
            seen[kind] = {"block": replay, "count": count, "autocast": autocast,
                          "args": [a.detach().clone() for a in args],
                          "kwargs": {n: v.detach().clone() for n, v in kwargs.items()}}


def _block_step(block, args, kwargs, autocast: bool = True) -> None:
    x = args[0].detach().requires_grad_(True)  # as in the step: the block's input carries a gradient
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        y = block(x, *args[1:], **kwargs)
    y.backward(torch.ones_like(y))


def eager_block(entry: dict) -> Tally:
    with Tally() as t:
        _block_step(entry["block"], entry["args"], entry["kwargs"], entry["autocast"])
    entry["block"].zero_grad(set_to_none=True)
    return t


def compiled_block_bytes(entry: dict) -> float:
    """Bytes the fused (non-library) kernels of the block's compiled forward and backward move,
    as inductor counts them."""
    import torch._inductor.compile_fx as compile_fx
    import torch._inductor.config as inductor_config
    from torch._inductor import metrics
    from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

    inductor_config.fx_graph_cache = False  # a cached graph would skip the count
    torch._functorch.config.enable_autograd_cache = False
    # inductor counts bytes per kernel where its metrics log is on; counted, not printed
    log = compile_fx.inductor_metrics_log
    log.isEnabledFor, log.info = (lambda level: True), (lambda *a, **k: None)
    torch._dynamo.reset()
    metrics.reset()
    _block_step(torch.compile(entry["block"], dynamic=False), entry["args"], entry["kwargs"], entry["autocast"])
    entry["block"].zero_grad(set_to_none=True)
    return 4.0 * sum(elems for node, elems in metrics.nodes_num_elem
                     if not isinstance(node, (ExternKernelSchedulerNode, NopKernelSchedulerNode)))


def roofline(name: str, size: int, batch: int, tflops: float, matmul_tflops: float, bandwidth: float,
             compiled: bool = True, weights: str = "autocast", device: str = "cpu") -> dict:
    small = (1, 2)  # two batches: cost = per step + per image x batch, exactly, for every kind

    def at(v1: float, v2: float) -> float:  # carried to `batch` from the two small runs
        return v1 + (v2 - v1) / (small[1] - small[0]) * (batch - small[0])

    (t1, t2), (b1, b2) = tally_steps(name, size, small, weights, torch.device(device))
    kinds = sorted(set(t1.flops) | set(t2.flops), key=lambda k: -(t2.bytes[k] + t2.flops[k]))
    rows, total_s = [], 0.0
    for k in kinds:
        flops, moved = at(t1.flops[k], t2.flops[k]), at(t1.bytes[k], t2.bytes[k])
        s, bound = _roofline_s(flops, moved, matmul_tflops, bandwidth)
        total_s += s
        rows.append({"kind": k, "gflop": flops / 1e9, "gb": moved / 1e9, "ms": 1e3 * s, "bound": bound,
                     "calls": t2.calls[k]})
    model_flops = mae_train_flops(get_spec(name, img_size=size), size, 0.8) * batch
    ops = [{"kind": k[0], "op": k[1], "gb": at(t1.op_bytes[k], t2.op_bytes[k]) / 1e9}
           for k in set(t1.op_bytes) | set(t2.op_bytes) if k[0] not in ("matmul", "attention")]
    out = {"model": f"{name}@{size}", "batch": batch, "weights": weights, "rows": rows, "step_ms": 1e3 * total_s,
           "memory_ops": sorted(ops, key=lambda x: -x["gb"]),
           "ceiling_mfu": model_flops / total_s / (tflops * 1e12), "model_tflop": model_flops / 1e12}
    if compiled:
        # each block's memory-bound operations as eager runs them, then as its compiled kernels move them
        blocks, compiled_s = [], total_s
        for kind in b1:
            e1, e2 = eager_block(b1[kind]), eager_block(b2[kind])
            eager_gb = sum(at(e1.bytes[k], e2.bytes[k]) for k in MEMORY_KINDS) / 1e9
            fused_gb = at(compiled_block_bytes(b1[kind]), compiled_block_bytes(b2[kind])) / 1e9
            n = b1[kind]["count"]
            compiled_s -= n * sum(_roofline_s(at(e1.flops[k], e2.flops[k]), at(e1.bytes[k], e2.bytes[k]),
                                              matmul_tflops, bandwidth)[0] for k in MEMORY_KINDS)
            compiled_s += n * fused_gb * 1e9 / (bandwidth * 1e12)
            blocks.append({"kind": kind, "count": n, "eager_gb": eager_gb, "compiled_gb": fused_gb})
        torch._dynamo.reset()
        out.update(blocks=blocks, compiled_step_ms=1e3 * compiled_s,
                   compiled_ceiling_mfu=model_flops / compiled_s / (tflops * 1e12))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit_b14:224:256,vit_h14:224:128,vit_h14:476:32",
                    help="NAME:SIZE:BATCH, comma-separated")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="MFU's denominator (datasheet bf16 peak)")
    ap.add_argument("--matmul-tflops", type=float, default=774.0, help="the matmul rate the GPU reaches")
    ap.add_argument("--bandwidth-tbs", type=float, default=4.8, help="memory bandwidth, TB/s")
    ap.add_argument("--ops", type=int, default=8, help="list this many memory-bound operations, most bytes first")
    ap.add_argument("--weights", default="autocast", choices=["autocast", "bf16"],
                    help="autocast: fp32 weights under bf16 autocast (--precision bf16); bf16: a bf16 copy of the "
                         "model from fp32 masters (--precision bf16-params in one process)")
    ap.add_argument("--device", default="cpu", help="where the step runs to be counted: cpu, or cuda (the GPU's "
                    "own autocast, attention kernel and, compiled, inductor's GPU kernels)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                    help="also estimate the step with its blocks compiled (inductor compiles each kind of "
                         "block twice on the CPU: minutes)")
    args = ap.parse_args()
    results = []
    for item in args.models.split(","):
        name, size, batch = item.split(":")
        r = roofline(name, int(size), int(batch), args.peak_tflops, args.matmul_tflops, args.bandwidth_tbs,
                     args.compiled, args.weights, args.device)
        results.append(r)
        print(f"\n{r['model']} batch {r['batch']}, weights {r['weights']}: {r['model_tflop']:.1f} TFLOP per step; "
              f"roofline {r['step_ms']:.1f} ms per step -> MFU ceiling {r['ceiling_mfu']:.1%}")
        print(f"  {'kind':<15}{'GFLOP':>10}{'GB':>9}{'ms':>8}{'share':>8}  bound    calls (batch 2)")
        for x in r["rows"]:
            print(f"  {x['kind']:<15}{x['gflop']:>10.0f}{x['gb']:>9.1f}{x['ms']:>8.2f}{x['ms'] / r['step_ms']:>8.1%}"
                  f"  {x['bound']:<8} {x['calls']}")
        memory_total = sum(x["gb"] for x in r["rows"] if x["kind"] not in ("matmul", "attention"))
        print(f"  memory-bound operations with the most bytes ({memory_total:.1f} GB in all):")
        for x in r["memory_ops"][:args.ops]:
            print(f"    {x['op']:<40}{x['kind']:<15}{x['gb']:>7.1f} GB {x['gb'] / memory_total:>6.1%}")
        if args.compiled:
            print(f"  blocks compiled: roofline {r['compiled_step_ms']:.1f} ms per step -> MFU ceiling "
                  f"{r['compiled_ceiling_mfu']:.1%}; memory-bound bytes per block, eager -> compiled:")
            for x in r["blocks"]:
                print(f"    {x['kind']:<20} x{x['count']:<3} {x['eager_gb']:7.2f} -> {x['compiled_gb']:7.2f} GB "
                      f"({x['compiled_gb'] / x['eager_gb']:.0%})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
