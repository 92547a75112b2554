"""MAE training step on the CPU: egoscale against Hugging Face transformers' ViTMAEForPreTraining.

Same architecture (encoder of the given size, 512-wide 8-block decoder), image size, mask
ratio 0.8, batch, fp32, AdamW; images/s of a full step (forward, backward, optimizer) for
both, alternating in one process, and the step's model FLOP/s as a fraction of this CPU's
own fp32 matmul throughput (a large torch.mm on the same threads): the practical ceiling.

    python benchmarks/mae_step_vs_hf.py [--model vit_s14] [--batch 16] [--steps 6] [--compile] [--bf16] [--profile]
"""

from __future__ import annotations

import argparse
import time

import torch

from egoscale.models import build_mae, choose_attention, get_spec
from egoscale.models.flops import mae_train_flops
from egoscale.train.loop import adamw

# where a step's time goes, by the profiler's op names
CATEGORIES = {"GEMM (mm, addmm, bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
              "attention (SDPA fwd+bwd)": ("aten::_scaled_dot_product",),
              "GELU fwd+bwd": ("aten::gelu",), "LayerNorm fwd+bwd": ("aten::native_layer_norm",),
              "optimizer": ("aten::_fused_adamw", "Optimizer."), "copies": ("aten::copy_",)}


def profile_step(step) -> None:
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print("where egoscale's step goes (profiler self time):")
    seen = 0.0
    for name, prefixes in CATEGORIES.items():
        t = sum(e.self_cpu_time_total for e in events if e.key.startswith(prefixes))
        seen += t
        print(f"  {name:<28}{t / total:>6.1%}")
    print(f"  {'everything else':<28}{(total - seen) / total:>6.1%}")


def matmul_peak(dtype=torch.float32, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def hf_model(spec, img, mask_ratio, attn="sdpa"):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = ViTMAEConfig(image_size=img, patch_size=spec.patch_size, hidden_size=spec.width,
                       num_hidden_layers=spec.depth, num_attention_heads=spec.heads, intermediate_size=spec.mlp_dim,
                       decoder_hidden_size=spec.decoder_width, decoder_num_hidden_layers=spec.decoder_depth,
                       decoder_num_attention_heads=spec.decoder_heads, decoder_intermediate_size=4 * spec.decoder_width,
                       mask_ratio=mask_ratio, norm_pix_loss=False, qkv_bias=True, layer_norm_eps=1e-6,
                       attn_implementation=attn)
    return ViTMAEForPreTraining(cfg)


def time_steps(step, steps: int) -> float:
    step()  # warm-up (allocations, compile)
    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_s14")
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3, help="alternate the tools this many times; best kept")
    ap.add_argument("--compile", action="store_true", help="also time egoscale under torch.compile")
    ap.add_argument("--bf16", action="store_true",
                    help="both under CPU bf16 autocast (egoscale's --precision bf16); peak = bf16 matmul")
    ap.add_argument("--profile", action="store_true", help="also break egoscale's step down by op")
    args = ap.parse_args()
    torch.manual_seed(0)
    spec = get_spec(args.model, img_size=args.img_size)
    img, ratio = spec.img_size, 0.8
    x = torch.randn(args.batch, 3, img, img)

    ours = build_mae(spec, mask_ratio=ratio)
    # each side's optimizer as its trainer builds it: egoscale's fused AdamW, and the fused
    # AdamW that transformers' Trainer defaults to on torch >= 2.8 ("adamw_torch_fused")
    opt_ours = adamw([p for p in ours.parameters() if p.requires_grad], 1e-4, torch.device("cpu"), betas=(0.9, 0.95))

    def step_ours(m=ours):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = m(x).loss
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def peer_step(attn):
        peer = hf_model(spec, img, ratio, attn)
        opt = torch.optim.AdamW([p for p in peer.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                                fused=True)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = peer(pixel_values=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step, sum(p.numel() for p in peer.parameters())

    # egoscale picks its attention kernel per device and precision, as `pretrain` does; the peer
    # runs with its default (SDPA) and, under bf16, also with its plain ("eager") attention
    attention = choose_attention(ours, torch.device("cpu"), args.bf16)
    step_peer, n_peer = peer_step("sdpa")
    tools = {"egoscale": step_ours, "transformers": step_peer}
    if args.bf16:
        tools["transformers eager"] = peer_step("eager")[0]
    if args.compile:
        compiled = torch.compile(ours)
        tools["egoscale+compile"] = lambda: step_ours(compiled)
    best = {k: float("inf") for k in tools}
    for _ in range(args.rounds):
        for name, fn in tools.items():
            best[name] = min(best[name], time_steps(fn, args.steps))
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak = matmul_peak(dtype)
    flops = mae_train_flops(spec, img, ratio) * args.batch
    n_params = (sum(p.numel() for p in ours.parameters()), n_peer)
    print(f"{spec.name} MAE at {img}px, decoder {spec.decoder_width}x{spec.decoder_depth}, mask {ratio}, "
          f"batch {args.batch}, {'bf16 autocast' if args.bf16 else 'fp32'}, "
          f"{torch.get_num_threads()} threads; params {n_params[0]:,} vs {n_params[1]:,}; "
          f"egoscale attention: {attention}")
    print(f"{str(dtype).split('.')[-1]} matmul peak of this CPU: {peak / 1e9:.0f} GFLOP/s")
    print(f"{'tool':<20}{'s/step':>8}{'img/s':>8}{'GFLOP/s':>9}{'of peak':>9}")
    for name, t in best.items():
        print(f"{name:<20}{t:>8.3f}{args.batch / t:>8.2f}{flops / t / 1e9:>9.0f}{flops / t / peak:>8.0%}")
    peer_best = min(t for k, t in best.items() if k.startswith("transformers"))
    print(f"egoscale / transformers (its faster attention) speed: {peer_best / best['egoscale']:.2f}x")
    if args.profile:
        profile_step(step_ours)
    if args.compile:
        print(f"egoscale+compile / transformers speed: {peer_best / best['egoscale+compile']:.2f}x")


if __name__ == "__main__":
    main()
