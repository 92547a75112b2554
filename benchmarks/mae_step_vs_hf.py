"""MAE training step on the CPU: egoscale against Hugging Face transformers' ViTMAEForPreTraining.

Same architecture (encoder of the given size, 512-wide 8-block decoder), image size, mask
ratio 0.8, batch, fp32, fused AdamW; images/s of a full step (forward, backward, optimizer),
and the step's model FLOP/s as a fraction of this CPU's own fp32 matmul throughput (a large
torch.mm on the same threads): the practical ceiling.

Every measurement runs in a fresh process, the tools taking turns over the rounds: each tool
as its users run it (egoscale's CPU training has glibc malloc keep freed memory, see
`keep_freed_memory`; transformers leaves malloc alone), and each with the other's malloc
setting, to tell the model code and the allocator apart.

    python benchmarks/mae_step_vs_hf.py [--model vit_s14] [--batch 16] [--steps 4] [--compile] [--bf16] [--profile]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from egoscale.models import build_mae, choose_attention, get_spec
from egoscale.models.flops import mae_train_flops
from egoscale.train.distributed import keep_freed_memory
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


def time_steps(step, steps: int) -> dict:
    """Seconds, page faults and system (kernel) CPU seconds per step, after two warm-up steps."""
    step()  # warm-up (allocations, compile)
    step()
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    dt, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    return {"s_per_step": dt / steps, "faults": (r1.ru_minflt - r0.ru_minflt) / steps,
            "sys_s": (r1.ru_stime - r0.ru_stime) / steps}


# (tool, malloc): each tool as its users run it, then each with the other's malloc setting, so
# that the model code and the allocator setting are told apart
RUNS = [("egoscale", "egoscale"), ("transformers", "glibc"), ("egoscale", "glibc"), ("transformers", "egoscale")]


def build_step(tool: str, spec, batch: int, bf16: bool):
    """One training step (forward, backward, AdamW) of `tool`, on a fixed random batch."""
    img, ratio = spec.img_size, 0.8
    x = torch.randn(batch, 3, img, img)
    if tool.startswith("egoscale"):
        model = build_mae(spec, mask_ratio=ratio)
        # the attention kernel egoscale picks for the device and precision, as `pretrain` does
        choose_attention(model, torch.device("cpu"), bf16)
        # egoscale's fused AdamW; transformers' Trainer defaults to the same on torch >= 2.8
        opt = adamw([p for p in model.parameters() if p.requires_grad], 1e-4, torch.device("cpu"),
                    betas=(0.9, 0.95))
        fwd = torch.compile(model) if tool == "egoscale+compile" else model
    else:
        model = fwd = hf_model(spec, img, ratio, "eager" if tool == "transformers eager" else "sdpa")
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                betas=(0.9, 0.95), fused=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = fwd(x).loss if tool.startswith("egoscale") else fwd(pixel_values=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, sum(p.numel() for p in model.parameters())


def child(args) -> None:
    """Time one tool in this fresh process (a fresh heap); print seconds per step as JSON."""
    if args.malloc == "egoscale":
        keep_freed_memory()  # what egoscale's CPU training does at start (init_distributed)
    torch.manual_seed(0)
    step, n_params = build_step(args.child, get_spec(args.model, img_size=args.img_size), args.batch, args.bf16)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    # the matmul peak in the same process, right before and after the steps, so that "of peak"
    # compares like with like on a shared machine whose speed drifts
    before = matmul_peak(dtype)
    timed = time_steps(step, args.steps)
    peak = max(before, matmul_peak(dtype))
    print(json.dumps({**timed, "params": n_params, "peak": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_s14")
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="run every tool this many times; best kept")
    ap.add_argument("--compile", action="store_true", help="also time egoscale under torch.compile")
    ap.add_argument("--bf16", action="store_true",
                    help="both under CPU bf16 autocast (egoscale's --precision bf16); peak = bf16 matmul")
    ap.add_argument("--profile", action="store_true", help="also break egoscale's step down by op")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--malloc", default="glibc", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    spec = get_spec(args.model, img_size=args.img_size)
    runs = list(RUNS)
    if args.bf16:
        runs.append(("transformers eager", "glibc"))
    if args.compile:
        runs.append(("egoscale+compile", "egoscale"))
    best, params, kernel, of_peak = {r: float("inf") for r in runs}, {}, {}, {r: 0.0 for r in runs}
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    peaks, per_round = [], []
    img = spec.img_size
    # each tool's own work: egoscale predicts the masked patches only, transformers every patch
    flops = {tool: mae_train_flops(spec, img, 0.8, predict_all=not tool.startswith("egoscale")) * args.batch
             for tool, _ in runs}
    for i in range(args.rounds):
        this_round = {}
        for tool, malloc in runs[i % len(runs):] + runs[:i % len(runs)]:  # each round starts elsewhere
            cmd = [sys.executable, __file__, "--child", tool, "--malloc", malloc, "--model", args.model,
                   "--batch", str(args.batch), "--steps", str(args.steps)]
            cmd += ["--bf16"] * args.bf16 + (["--img-size", str(args.img_size)] if args.img_size else [])
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            if res["s_per_step"] < best[tool, malloc]:
                best[tool, malloc], kernel[tool, malloc] = res["s_per_step"], (res["faults"], res["sys_s"])
            params[tool] = res["params"]
            peaks.append(res["peak"])
            this_round[tool, malloc] = res["s_per_step"]
            of_peak[tool, malloc] = max(of_peak[tool, malloc], flops[tool] / res["s_per_step"] / res["peak"])
            print(f"round {i + 1}: {tool} ({malloc} malloc) {res['s_per_step']:.3f} s/step, "
                  f"{res['faults']:.0f} page faults, {res['sys_s']:.2f} s system time", flush=True)
        per_round.append(this_round["transformers", "glibc"] / this_round["egoscale", "egoscale"])
    print(f"\n{spec.name} MAE at {img}px, decoder {spec.decoder_width}x{spec.decoder_depth}, mask 0.8, "
          f"batch {args.batch}, {'bf16 autocast' if args.bf16 else 'fp32'}, {torch.get_num_threads()} threads; "
          f"params {params['egoscale']:,} vs {params['transformers']:,}; each run a fresh process")
    print(f"{str(dtype).split('.')[-1]} matmul peak of this CPU, measured in each run's own process: "
          f"{min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f} GFLOP/s; step GFLOP per image: "
          f"{flops['egoscale'] / args.batch / 1e9:.2f} (egoscale), {flops['transformers'] / args.batch / 1e9:.2f} "
          f"(transformers)")
    print(f"{'tool':<20}{'malloc':<10}{'s/step':>8}{'img/s':>8}{'GFLOP/s':>9}{'of peak':>9}{'faults':>9}{'sys s':>7}")
    for (tool, malloc), t in best.items():
        f = flops[tool]
        faults, sys_s = kernel[tool, malloc]
        print(f"{tool:<20}{malloc:<10}{t:>8.3f}{args.batch / t:>8.2f}{f / t / 1e9:>9.0f}{of_peak[tool, malloc]:>8.0%}"
              f"{faults:>9.0f}{sys_s:>7.2f}")
    ours, peer = best["egoscale", "egoscale"], min(t for (k, m), t in best.items() if k.startswith("transformers")
                                                   and m == "glibc")
    print(f"egoscale / transformers, each as shipped: {peer / ours:.2f}x (best of each); round by round "
          f"{', '.join(f'{r:.2f}x' for r in per_round)} (range {min(per_round):.2f}-{max(per_round):.2f}x)")
    print(f"same malloc: {best['transformers', 'glibc'] / best['egoscale', 'glibc']:.2f}x (glibc's), "
          f"{best['transformers', 'egoscale'] / ours:.2f}x (egoscale's)")
    if args.compile:
        print(f"egoscale+compile / transformers: {peer / best['egoscale+compile', 'egoscale']:.2f}x")
    if args.profile:
        keep_freed_memory()
        profile_step(build_step("egoscale", spec, args.batch, args.bf16)[0])


if __name__ == "__main__":
    main()
