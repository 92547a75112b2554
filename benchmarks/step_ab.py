"""The same MAE training step run two (or more) ways, rounds alternating: step time and ratios.

    python benchmarks/step_ab.py timm                          # egoscale's block vs timm's, fp32, CPU
    python benchmarks/step_ab.py timm --model vit_h14 --batch 128 --device cuda --bf16
    python benchmarks/step_ab.py bf16-params                   # bf16 autocast vs a bf16 model (+ FSDP2's)

timm: egoscale's transformer block against timm's `Block`. The two compute the same function with
the same weights (tests/test_models.py); egoscale's splits q/k/v along the projection's own
layout, so its backward copies the q/k/v gradients once where timm's copies them twice. The
encoder blocks and all decoder blocks but the last (which computes the masked rows only,
egoscale's in both) are built either way with the same weights. Runs in fp32 unless --bf16.

bf16-params: bf16 autocast (fp32 weights, `--precision bf16`) against `--precision bf16-params`
as one process runs it (a bf16 copy of the model from fp32 masters, egoscale/train/
mixed_precision.py) and as FSDP2's mixed-precision policy runs it on a group of one (what
several processes use).

Each way gets its own model and fused AdamW, same initial weights and input; rounds alternate
the order; the median step time of each, and each against the first (benchmarks/training_step.py
builds and runs the step as `egoscale pretrain` does).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from egoscale.models import get_spec
from egoscale.models.vit import choose_attention
from egoscale.train.distributed import Dist, cleanup, shard
from egoscale.train.loop import adamw
from training_step import TrainingStep, build


def build_way(way: str, spec, dev: torch.device, bf16: bool) -> TrainingStep:
    if way == "fsdp2 bf16-params":  # FSDP2's policy on a group of one, as several processes run it
        step = build(spec, dev, "fp32")  # the fp32 model; FSDP2 then runs it in bf16
        choose_attention(step.model, dev, bf16=True)
        module = shard(step.model, Dist(device=dev), reshard_after_forward=False, bf16_params=True)
        opt = adamw([p for p in step.model.parameters() if p.requires_grad], 1e-4, dev, sharded=True,
                    betas=(0.9, 0.95))
        return TrainingStep(step.model, module, opt, autocast=False)
    precision = "bf16-params" if way == "bf16-params" else "bf16" if bf16 else "fp32"
    return build(spec, dev, precision, blocks="timm" if way == "timm" else "egoscale")


WAYS = {"timm": ("egoscale", "timm"), "bf16-params": ("autocast", "bf16-params", "fsdp2 bf16-params")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("compare", choices=sorted(WAYS), help="what to compare")
    ap.add_argument("--model", default="vit_s14")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round, after one untimed")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (timm); always on for bf16-params")
    args = ap.parse_args()
    dev = torch.device(args.device)
    bf16 = args.bf16 or args.compare == "bf16-params"
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    spec = get_spec(args.model, img_size=args.img_size)
    ways = WAYS[args.compare]
    built = {w: build_way(w, spec, dev, bf16) for w in ways}
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=dev)
    times: dict[str, list[float]] = {w: [] for w in ways}
    try:
        for r in range(args.rounds):
            for w in ways[r % len(ways):] + ways[:r % len(ways)]:  # each way goes first in turn
                for i in range(args.steps + 1):
                    sync()
                    t = time.perf_counter()
                    built[w](x)
                    sync()
                    if i:
                        times[w].append(time.perf_counter() - t)
    finally:
        cleanup()
    med = {w: statistics.median(ts) for w, ts in times.items()}
    print(f"{args.model}@{args.img_size} batch {args.batch} on {dev.type}{' bf16' if bf16 else ' fp32'}, "
          f"{args.rounds} rounds x {args.steps} steps")
    for w, s in med.items():
        print(f"  {w:<18} {s:.4f} s/step  {args.batch / s:8.1f} img/s" +
              (f"  step time {s / med[ways[0]]:.3f}x {ways[0]}'s" if w != ways[0] else ""))


if __name__ == "__main__":
    main()
