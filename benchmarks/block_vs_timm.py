"""egoscale's transformer block against timm's `Block` inside the same MAE training step.

The two blocks compute the same function with the same weights (tests/test_models.py); egoscale's
splits q/k/v along the projection's own layout, so its backward copies the q/k/v gradients once
where timm's copies them twice. Here: one MAE, its encoder blocks and all decoder blocks but the
last (which computes the masked rows only, egoscale's in both) built either way with the same
weights; rounds alternate which goes first; the median step time of each and their ratio.

    python benchmarks/block_vs_timm.py                              # ViT-S/14, fp32, on the CPU
    python benchmarks/block_vs_timm.py --model vit_h14 --batch 128 --device cuda --bf16
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_s14")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round, after one untimed")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    spec = get_spec(args.model, img_size=args.img_size)
    steps = {}
    for name in ("egoscale", "timm"):
        torch.manual_seed(0)
        mae = build_mae(spec, mask_ratio=0.8).to(dev)
        if name == "timm":
            with_timm_blocks(mae)
        choose_attention(mae, dev, args.bf16)
        opt = adamw([p for p in mae.parameters() if p.requires_grad], 1e-4, dev)
        steps[name] = (mae, opt)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=dev)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name in (("egoscale", "timm") if r % 2 == 0 else ("timm", "egoscale")):
            mae, opt = steps[name]
            for i in range(args.steps + 1):
                sync()
                t = time.perf_counter()
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
                    loss = mae(x).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                sync()
                if i:
                    times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"{args.model}@{args.img_size} batch {args.batch} on {dev.type}{' bf16' if args.bf16 else ' fp32'}, "
          f"{args.rounds} rounds x {args.steps} steps")
    for name, s in med.items():
        print(f"  {name:<9} {s:.4f} s/step  {args.batch / s:8.1f} img/s")
    print(f"  timm / egoscale step time: {med['timm'] / med['egoscale']:.3f}x")


if __name__ == "__main__":
    main()
