"""One command that runs every CUDA path of egoscale on a GPU machine and prints one table.

    python benchmarks/gpu_check.py                 # on a GPU machine: about 8 minutes on one H200
    python benchmarks/gpu_check.py --smoke         # the same checks with tiny models, on a CPU (plumbing)

Checks, each in its own process so that one failure does not stop the rest:
  mfu          MAE training step of ViT-B/14@224, ViT-H/14@224 and @476: img/s and MFU, eager and
               with --compile (per-block compile: compile time = the first step's time)
  real-data    world -> ingest -> `egoscale pretrain` from JPEG shards: img/s next to the synthetic step
  resume       `egoscale pretrain` killed (SIGKILL) mid-run and run again: every step logged once
  ddp, fsdp    `torchrun --nproc-per-node <all GPUs> -m egoscale pretrain` (DDP, then --fsdp)
  grad-ckpt    pretraining with --grad-checkpointing
  fsdp-g14     one FSDP step of ViT-g/14 (1.0B)
  finetune     `egoscale finetune` on the world's labelled set
  probe        `egoscale probe` on the same
No network is needed. Figures go into benchmarks/README.md with this command.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable


def _cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "egoscale", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _metrics(run: Path) -> list[dict]:
    f = run / "metrics.jsonl"
    return [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()] if f.is_file() else []


def _steady(recs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in recs if key in r][1:]  # the first window includes start-up (and compile)
    return sum(vals) / len(vals) if vals else None


class Check:
    def __init__(self, smoke: bool, root: Path):
        self.smoke, self.root = smoke, root
        self.dev = "cpu" if smoke else "cuda"
        self.rows: list[tuple[str, str, str, float]] = []

    def run(self, name: str, fn) -> None:
        t0 = time.time()
        try:
            ok, text = fn()
        except Exception as e:  # noqa: BLE001 - a failed check is a row of the table, the rest go on
            ok, text = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        self.rows.append((name, "ok" if ok else "FAILED", text, time.time() - t0))
        print(f"{name:<12} {'ok' if ok else 'FAILED':<7} {time.time() - t0:6.0f} s  {text}", flush=True)

    # --- the checks ----------------------------------------------------------------------------
    def mfu(self):
        cases = [("vit_pico4", 32, 16)] if self.smoke else [("vit_b14", 224, 256), ("vit_h14", 224, 128),
                                                             ("vit_h14", 476, 32)]
        out = []
        for compile_ in (False, True):
            for name, size, batch in cases:
                r = subprocess.run([PY, "-c", _MFU_CHILD, name, str(size), str(batch), str(int(compile_)), self.dev,
                                    "3" if self.smoke else "8"], capture_output=True, text=True, timeout=600)
                if r.returncode:
                    return False, f"{name}@{size}: {r.stderr.strip().splitlines()[-1][:200]}"
                res = json.loads(r.stdout.strip().splitlines()[-1])
                out.append(f"{name}@{size} b{batch} {'compiled' if compile_ else 'eager'}: {res['img_s']:.0f} img/s"
                           + (f", MFU {res['mfu']:.1%}" if res.get("mfu") else "")
                           + (f", first step {res['first_s']:.0f} s" if compile_ else ""))
        return True, "; ".join(out)

    def world(self) -> tuple[Path, Path]:
        world, frames = self.root / "world", self.root / "frames"
        if not (frames / "manifest.json").is_file():
            # on the GPU, 256-px frames, so that the loader decodes and resizes as it would real video
            r = _cli("world", "--out", str(world), "--hours", "0.1" if self.smoke else "0.3", "--categories", "4",
                     "--frame-size", "64" if self.smoke else "256", "--train-per-class", "16", "--val-per-class", "8",
                     "--no-progress")
            assert r.returncode == 0, r.stderr
            r = _cli("ingest", "--source", f"w={world / 'videos'}", "--out", str(frames), "--fps", "2",
                     "--short-side", "0" if self.smoke else "256", "--workers", "4", "--no-progress")
            assert r.returncode == 0, r.stderr
        return world, frames

    def _pretrain_args(self, out: Path, steps: int, *extra: str) -> list[str]:
        _, frames = self.world()
        model = ["--model", "vit_pico4", "--batch-size", "16", "--workers", "0"] if self.smoke else [
            "--model", "vit_b14", "--batch-size", "256", "--workers", "12"]
        return ["pretrain", "--data", str(frames), "--out", str(out), "--steps", str(steps), "--log-every", "5",
                "--no-progress", "--device", self.dev, *model, *extra]

    def real_data(self):
        out = self.root / "real"
        r = _cli(*self._pretrain_args(out, 20 if self.smoke else 60))
        if r.returncode:
            return False, r.stderr.strip()[-200:]
        recs = _metrics(out)
        return True, (f"{_steady(recs, 'images_per_s'):.0f} img/s from JPEG shards"
                      + (f", MFU {_steady(recs, 'mfu'):.1%}" if _steady(recs, "mfu") else ""))

    def resume(self):
        out = self.root / "resume"
        args = [PY, "-m", "egoscale", *self._pretrain_args(out, 40 if self.smoke else 120, "--save-every", "10")]
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        while len(_metrics(out)) < 4 and p.poll() is None and time.time() - t0 < 300:
            time.sleep(0.5)
        p.send_signal(signal.SIGKILL)
        p.wait()
        r = subprocess.run(args, capture_output=True, text=True, timeout=600)
        steps = [m["step"] for m in _metrics(out)]
        ok = r.returncode == 0 and steps == sorted(set(steps)) and steps[-1] == (40 if self.smoke else 120)
        return ok, f"killed after {len(steps) and steps[min(3, len(steps) - 1)]} steps; resumed to {steps[-1]}, " \
                   f"every logged step once: {steps == sorted(set(steps))}"

    def torchrun(self, fsdp: bool):
        import torch

        n = max(1, torch.cuda.device_count()) if not self.smoke else 2
        out = self.root / ("fsdp" if fsdp else "ddp")
        args = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m", "egoscale",
                *self._pretrain_args(out, 10 if self.smoke else 30, *(["--fsdp"] if fsdp else []))]
        r = subprocess.run(args, capture_output=True, text=True, timeout=600)
        recs = _metrics(out)
        return r.returncode == 0 and bool(recs), (f"{n} processes, {_steady(recs, 'images_per_s') or 0:.0f} img/s"
                                                  if not r.returncode else r.stderr.strip()[-200:])

    def grad_ckpt(self):
        out = self.root / "ckpt"
        r = _cli(*self._pretrain_args(out, 10 if self.smoke else 30, "--grad-checkpointing"))
        recs = _metrics(out)
        mem = [m.get("peak_memory_gb") for m in recs if m.get("peak_memory_gb")]
        return r.returncode == 0, (f"{_steady(recs, 'images_per_s') or 0:.0f} img/s"
                                   + (f", peak {max(mem):.1f} GB" if mem else "")) if not r.returncode else \
            r.stderr.strip()[-200:]

    def fsdp_g14(self):
        import torch

        _, frames = self.world()
        out = self.root / "g14"
        model = "vit_pico4" if self.smoke else "vit_g14"
        n = max(1, torch.cuda.device_count()) if not self.smoke else 1
        args = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m", "egoscale",
                "pretrain", "--data", str(frames), "--out", str(out), "--steps", "2", "--log-every", "1",
                "--model", model, "--batch-size", "8", "--workers", "2", "--fsdp", "--no-progress",
                "--device", self.dev]
        r = subprocess.run(args, capture_output=True, text=True, timeout=600)
        recs = _metrics(out)
        return r.returncode == 0 and len(recs) == 2, (f"{model}: 2 FSDP steps, loss {recs[-1]['loss']:.3f}"
                                                      + (f", peak {recs[-1]['peak_memory_gb']:.1f} GB"
                                                         if "peak_memory_gb" in recs[-1] else "")
                                                      if recs else r.stderr.strip()[-200:])

    def evaluation(self, kind: str):
        world, _ = self.world()
        ckpt = self.root / "real" / "checkpoint.pt"
        out = self.root / kind
        extra = ["--epochs", "2", "--batch-size", "32"] if kind == "finetune" else ["--epochs", "5"]
        r = _cli(kind, "--checkpoint", str(ckpt), "--train", str(world / "labelled" / "train"), "--val",
                 str(world / "labelled" / "val"), "--condition", "full", "--out", str(out), "--workers", "4",
                 "--no-progress", "--device", self.dev, *extra)
        return r.returncode == 0, r.stdout.strip().splitlines()[-1][:200] if r.returncode == 0 else \
            r.stderr.strip()[-200:]


_MFU_CHILD = r"""
import json, sys, time, torch
from egoscale.models import build_mae, get_spec
from egoscale.models.flops import mae_train_flops
from egoscale.train.distributed import compile_blocks
from egoscale.train.loop import adamw, device_peak_tflops
name, size, batch, comp, dev, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", \
    torch.device(sys.argv[5]), int(sys.argv[6])
spec = get_spec(name, img_size=size)
mae = build_mae(spec, mask_ratio=0.8).to(dev)
if comp:
    compile_blocks(mae)
opt = adamw([p for p in mae.parameters() if p.requires_grad], 1e-4, dev, betas=(0.9, 0.95))
x = torch.randn(batch, 3, size, size, device=dev)
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
def step():
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        loss = mae(x).loss
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
t = time.perf_counter(); step(); sync(); first = time.perf_counter() - t
step(); step(); sync()
t = time.perf_counter()
for _ in range(steps):
    step()
sync()
dt = (time.perf_counter() - t) / steps
peak = device_peak_tflops(dev)
tf = mae_train_flops(spec, size, 0.8) * batch / dt / 1e12
print(json.dumps({"img_s": batch / dt, "tflops": tf, "mfu": tf / peak if peak else None, "first_s": first}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script, not the GPU")
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    args = ap.parse_args()
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("gpu_check.py needs a CUDA GPU (or --smoke for the CPU plumbing check)")
        print(f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        c = Check(args.smoke, root)
        c.run("mfu", c.mfu)
        c.run("real-data", c.real_data)
        c.run("resume", c.resume)
        c.run("ddp", lambda: c.torchrun(False))
        c.run("fsdp", lambda: c.torchrun(True))
        c.run("grad-ckpt", c.grad_ckpt)
        c.run("fsdp-g14", c.fsdp_g14)
        c.run("finetune", lambda: c.evaluation("finetune"))
        c.run("probe", lambda: c.evaluation("probe"))
        print("\n| check | result | seconds | what |\n|---|---|---|---|")
        for name, ok, text, sec in c.rows:
            print(f"| {name} | {ok} | {sec:.0f} | {text} |")
        if args.json:
            Path(args.json).write_text(json.dumps(c.rows, indent=2))
        if any(ok != "ok" for _, ok, _, _ in c.rows):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
