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
the order; the median step time of each, and each against the first.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from timm.models.vision_transformer import Block as TimmBlock

from egoscale.models import build_mae, get_spec
from egoscale.models.vit import choose_attention
from egoscale.train.distributed import Dist, cleanup, parallelize, shard
from egoscale.train.loop import adamw


def with_timm_blocks(mae: torch.nn.Module) -> torch.nn.Module:
    """Swap the MAE's blocks (but the decoder's rows-only last one) for timm's, same weights."""
    enc, dec = mae.encoder.blocks, mae.decoder_blocks
    for seq, n in ((enc, len(enc)), (dec, len(dec) - 1)):
        for i in range(n):
            ours = seq[i]
            dim = ours.norm1.normalized_shape[0]
            theirs = TimmBlock(dim, ours.attn.heads, mlp_ratio=ours.mlp.fc1.out_features / dim, qkv_bias=True,
                               norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))
            theirs.load_state_dict(ours.state_dict())
            seq[i] = theirs.to(ours.norm1.weight.device)
    return mae


def build(way: str, spec, dev: torch.device, bf16: bool):
    """(module to call, optimizer, autocast on?) for one way of running the step."""
    torch.manual_seed(0)
    mae = build_mae(spec, mask_ratio=0.8).to(dev)
    if way == "timm":
        with_timm_blocks(mae)
    choose_attention(mae, dev, bf16)
    params = way in ("bf16-params", "fsdp2 bf16-params")
    if way == "fsdp2 bf16-params":  # FSDP2's policy on a group of one, as several processes run it
        module = shard(mae, Dist(device=dev), reshard_after_forward=False, bf16_params=True)
    else:
        module = parallelize(mae, Dist(device=dev), bf16_params=params)
    opt = adamw([p for p in mae.parameters() if p.requires_grad], 1e-4, dev, sharded=way == "fsdp2 bf16-params",
                betas=(0.9, 0.95))
    return module, opt, bf16 and not params


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
    built = {w: build(w, spec, dev, bf16) for w in ways}
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=dev)
    times: dict[str, list[float]] = {w: [] for w in ways}
    try:
        for r in range(args.rounds):
            for w in ways[r % len(ways):] + ways[:r % len(ways)]:  # each way goes first in turn
                module, opt, autocast = built[w]
                for i in range(args.steps + 1):
                    sync()
                    t = time.perf_counter()
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                        loss = module(x).loss
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
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
