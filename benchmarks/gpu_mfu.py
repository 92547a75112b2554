"""MAE training-step throughput on one GPU: images/s, TFLOP/s and MFU (bf16 autocast).

For ViT-B/14, L/14, H/14 at 224 px and H/14 at 476 px (512x8 decoder, mask 0.8), a full step
(forward, backward, fused AdamW) on synthetic inputs; FLOPs from egoscale.models.flops
(2 per multiply-add, forward + backward = 3x forward); MFU against the device's dense bf16
peak (egoscale.train.loop.PEAK_TFLOPS, or $EGOSCALE_PEAK_TFLOPS).

    python benchmarks/gpu_mfu.py [--compile] [--steps 20] [--only vit_h14@476]
"""

from __future__ import annotations

import argparse
import time

import torch

from egoscale.models import build_mae, get_spec
from egoscale.models.flops import mae_train_flops
from egoscale.train.metrics import device_peak_tflops

CASES = [("vit_b14", 224, 256), ("vit_l14", 224, 128), ("vit_h14", 224, 128), ("vit_h14", 476, 32)]


def run(name: str, size: int, batch: int, steps: int, compile: bool, dev: torch.device) -> dict:
    torch.manual_seed(0)
    spec = get_spec(name, img_size=size)
    mae = build_mae(spec, mask_ratio=0.8).to(dev)
    module = torch.compile(mae) if compile else mae
    opt = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95), fused=True)
    x = torch.randn(batch, 3, size, size, device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module(x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    tflops = mae_train_flops(spec, size, 0.8) * batch / dt / 1e12
    peak = device_peak_tflops(dev)
    return {"model": f"{name}@{size}", "batch": batch, "img_s": batch / dt, "tflops": tflops,
            "mfu": tflops / peak if peak else float("nan"), "mem_gb": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--only", default=None, help="e.g. vit_h14@476")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_mfu.py needs a CUDA GPU")
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"{torch.cuda.get_device_name(dev)}, peak {device_peak_tflops(dev)} TFLOP/s bf16, compile={args.compile}")
    print(f"{'model':<14}{'batch':>6}{'img/s':>9}{'TFLOP/s':>9}{'MFU':>7}{'mem GB':>8}")
    for name, size, batch in CASES:
        if args.only and args.only != f"{name}@{size}":
            continue
        r = run(name, size, batch, args.steps, args.compile, dev)
        print(f"{r['model']:<14}{r['batch']:>6}{r['img_s']:>9.1f}{r['tflops']:>9.1f}{r['mfu']:>7.1%}{r['mem_gb']:>8.1f}")


if __name__ == "__main__":
    main()
