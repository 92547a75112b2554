"""One command that runs every CUDA path of egoscale on a GPU machine and prints one table.

    python benchmarks/gpu_check.py                 # on a GPU machine, within --minutes (default 8.5)
    python benchmarks/gpu_check.py --smoke         # the same checks with tiny models, on a CPU (plumbing)
    python benchmarks/gpu_check.py --only mfu,profile   # some of the checks

Checks, each in its own process so that one failure does not stop the rest:
  mfu          MAE training step of ViT-B/14@224, ViT-H/14@224 and @476: img/s and MFU for each
               --precisions (bf16 autocast; bf16-params: the model in bf16, fp32 masters cast
               once per step), eager and per-block compiled (compile time = the first step's extra time;
               graphs added after the first step); on top of compilation, twice the batch (H/14@224)
               and CUDA graphs (torch.compile's reduce-overhead mode: B/14, H/14@224); eager for B/14
               and H/14@224: timm's Block in place of egoscale's (the q/k/v split,
               benchmarks/step_ab.py), attention as batched matmuls instead of the fused SDPA
               kernel, and bf16-params (a bf16 copy of the model) eager and compiled; rows that would
               start past --minutes are skipped
  loader       frames/s of one loader worker (decode, crop, resize, collate) at 224 and 476 px, and
               the workers a step at the measured speed needs
  shard-index  benchmarks/shard_index.py on this machine's CPU: a worker's first-pass frames/s when
               it finds its frames in a large shard by ingest's index, against reading the tar headers
  real-data    world -> ingest -> `egoscale pretrain` from JPEG shards in each precision, eager and
               compiled (default workers), and with --compile-mode reduce-overhead: img/s and MFU next to
               the synthetic step
  resume       `egoscale pretrain` killed (SIGKILL) mid-run and run again: every step logged once
  ddp, fsdp    `torchrun --nproc-per-node <all GPUs> -m egoscale pretrain` (DDP, then --fsdp)
  grad-ckpt    pretraining with --grad-checkpointing
  fsdp-g14     one FSDP step of ViT-g/14 (1.0B)
  finetune     `egoscale finetune` on the world's labelled set
  probe        `egoscale probe` on the same
  gpu-tests    the test suite's `gpu` group (dtypes, fused attention, no host syncs in a step)
  roofline     benchmarks/step_roofline.py on this GPU for ViT-B/14 and ViT-H/14 at 224 px: the MFU the
               step's operations allow, eager and with its blocks compiled (inductor's GPU kernels)
  profile      where a compiled bf16 step's GPU kernel time goes, ViT-B/14 and ViT-H/14 at 224 px: the
               largest kernels, the step's wall time against its kernels' time (the gap: the GPU
               idles), and kernel time by kind beside the roofline's bound
  matmul       the bf16 matmul rate this GPU reaches (8192^3)
A check that would start past --minutes is reported as skipped.
No network is needed. Figures go into benchmarks/README.md with this command.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
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
    def __init__(self, smoke: bool, root: Path, minutes: float, precisions: list[str], only: set[str] | None = None):
        self.smoke, self.root, self.precisions, self.only = smoke, root, precisions, only
        self.dev = "cpu" if smoke else "cuda"
        self.rows: list[tuple[str, str, str, float]] = []
        self.deadline = time.time() + minutes * 60
        self.details: dict[str, object] = {}  # every measurement, for --json

    def run(self, name: str, fn, needs_s: float = 0) -> None:
        if self.only and name not in self.only:
            return
        t0 = time.time()
        if t0 + needs_s > self.deadline:
            self.rows.append((name, "skipped", "out of time (--minutes)", 0.0))
            print(f"{name:<12} skipped: out of time", flush=True)
            return
        try:
            ok, text = fn()
        except Exception as e:  # noqa: BLE001 - a failed check is a row of the table, the rest go on
            ok, text = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        self.rows.append((name, "ok" if ok else "FAILED", text, time.time() - t0))
        print(f"{name:<12} {'ok' if ok else 'FAILED':<7} {time.time() - t0:6.0f} s  {text}", flush=True)

    # --- the checks ----------------------------------------------------------------------------
    def mfu(self):
        # each precision eager and compiled per block; then levers, each against its row above: on
        # top of compilation, twice the batch (H/14@224) and CUDA graphs (reduce-overhead); eager,
        # timm's transformer block in place of egoscale's (same weights: what splitting q/k/v along
        # the projection's layout saves), attention as batched matmuls instead of the fused SDPA
        # kernel (the encoder's 52-token sequences are short for flash kernels); and bf16-params
        # eager and compiled (a bf16 copy of the model in one process: the roofline's highest ceiling)
        def case(model, size, batch, compile=None, blocks="egoscale", modes=None, attention="sdpa"):
            return dict(model=model, size=size, batch=batch, compile=compile, blocks=blocks, modes=modes,
                        attention=attention)

        if self.smoke:
            p = ("vit_pico4", 32, 16)
            cases = [case(*p), case(*p, "default"), case("vit_pico4", 32, 32, "default"),
                     case(*p, "reduce-overhead"), case(*p, blocks="timm"), case(*p, attention="matmul"),
                     case(*p, modes=["bf16-params"]), case(*p, "default", modes=["bf16-params"])]
        else:
            # most telling first (rows past --minutes are skipped): the baselines, then the levers
            # no GPU has timed yet, then the rest
            b14, h14 = ("vit_b14", 224, 256), ("vit_h14", 224, 128)
            cases = [case(*m, c) for m in (b14, h14) for c in (None, "default")]
            cases += [case(*m, **lever) for m in (b14, h14) for lever in (
                dict(modes=["bf16-params"]), dict(compile="default", modes=["bf16-params"]),
                dict(attention="matmul", modes=["bf16"]), dict(compile="reduce-overhead", modes=["bf16"]),
                dict(blocks="timm", modes=["bf16"]))]
            cases += [case("vit_h14", 476, 32, c) for c in (None, "default")]
            cases += [case("vit_h14", 224, 256, "default")]
        out, rows, failed = [], [], []
        for i, c in enumerate(cases):
            if time.time() > self.deadline:  # not a failure: what was measured stands
                out.append(f"{len(cases) - i} rows skipped: out of time (--minutes)")
                break
            spec = json.dumps({**c, "batches": [c["batch"]], "compile_mode": c["compile"],
                               "bench_dir": str(Path(__file__).parent), "device": self.dev,
                               "steps": 3 if self.smoke else 6, "modes": c["modes"] or self.precisions})
            r = subprocess.run([PY, "-c", _MFU_CHILD, spec], capture_output=True, text=True, timeout=600)
            rows += [json.loads(ln[5:]) for ln in r.stdout.splitlines() if ln.startswith("ROW: ")]
            if r.returncode:
                failed.append(f"{c['model']}@{c['size']} b{c['batch']} {c['compile'] or 'eager'} {c['blocks']} "
                              f"blocks {c['attention']} attention{' ' + ','.join(c['modes']) if c['modes'] else ''}"
                              f": {(r.stderr.strip().splitlines() or ['?'])[-1][:160]}")
        print(f"\n{'model':<14}{'precision':<13}{'compile':<17}{'blocks':<10}{'attention':<10}{'batch':>6}{'img/s':>9}"
              f"{'MFU':>7}{'GB':>6}{'first s':>9}{'graphs+':>8}")
        for x in rows:
            print(f"{x['model']:<14}{x['mode']:<13}{x['compile'] or 'eager':<17}{x['blocks']:<10}{x['attention']:<10}"
                  f"{x['batch']:>6}"
                  f"{x['img_s']:>9.0f}{(x['mfu'] or 0):>7.1%}{x['mem_gb']:>6.1f}{x['first_s']:>9.1f}"
                  f"{x['graphs_after_first']:>8}")
        print()
        self.details["mfu"] = rows
        for x in rows:
            out.append(f"{x['model']} {x['mode']} {x['compile'] or 'eager'} {x['blocks']} blocks {x['attention']} "
                       f"attention b{x['batch']}: "
                       f"{x['img_s']:.0f} img/s" + (f" {x['mfu']:.1%}" if x.get("mfu") else ""))
        return not failed, "; ".join(failed + out)

    def loader(self):
        _, frames = self.world()
        r = subprocess.run([PY, "-c", _LOADER_CHILD, str(frames), json.dumps([64] if self.smoke else [224, 476]),
                            "64" if self.smoke else "512"], capture_output=True, text=True, timeout=300)
        if r.returncode:
            return False, r.stderr.strip()[-200:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        self.details["loader"] = res
        return True, "; ".join(f"{size} px from {v['source_px'][0]}x{v['source_px'][1]}: {v['fps']:.0f} frames/s "
                               f"per worker (augment {v['augment_ms']:.2f} ms incl. decoding, a full decode alone "
                               f"{v['decode_ms']:.2f} ms, collate+pin {v['collate_ms']:.2f} ms per frame)"
                               for size, v in res.items())

    def shard_index(self):
        args = ["--frames", "600", "--units", "1", "8", "--rounds", "1"] if self.smoke else ["--rounds", "2"]
        r = subprocess.run([PY, str(Path(__file__).parent / "shard_index.py"), *args], capture_output=True,
                           text=True, timeout=300)
        if r.returncode:
            return False, r.stderr.strip()[-200:]
        lines = r.stdout.strip().splitlines()
        self.details["shard-index"] = lines
        rows = [ln.split() for ln in lines[2:]]
        return True, lines[0] + "; worker fps, index / headers: " + ", ".join(
            f"{row[0]} units {row[-2]} / {row[-3]} ({row[-1]})" for row in rows)

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
            "--model", "vit_b14", "--batch-size", "256"]  # --workers: the default
        return ["pretrain", "--data", str(frames), "--out", str(out), "--steps", str(steps), "--log-every", "5",
                "--no-progress", "--device", self.dev, *model, *extra]

    def real_data(self, precision: str, compile_: bool, mode: str = "default"):
        what = "" if not compile_ else " compiled" if mode == "default" else f" compiled {mode}"
        out = self.root / f"real-{precision}{what.replace(' ', '-')}"
        r = _cli(*self._pretrain_args(out, 20 if self.smoke else 80, "--precision", precision,
                                      "--compile" if compile_ else "--no-compile", "--compile-mode", mode))
        if r.returncode:
            return False, r.stderr.strip()[-200:]
        recs = _metrics(out)
        self.details[out.name] = recs
        return True, (f"{precision}{what}: {_steady(recs, 'images_per_s'):.0f} img/s "
                      "from JPEG shards" + (f", MFU {_steady(recs, 'mfu'):.1%}" if _steady(recs, "mfu") else "")
                      + f", first step {recs[0].get('first_step_seconds', 0):.0f} s")

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
        ckpt = self.root / "real-bf16" / "checkpoint.pt"  # the real-data check's, else a short run of its own
        if not ckpt.is_file():
            ckpt = self.root / "eval-pretrain" / "checkpoint.pt"
            if not ckpt.is_file():
                r = _cli(*self._pretrain_args(ckpt.parent, 10))
                assert r.returncode == 0, r.stderr[-300:]
        out = self.root / kind
        extra = ["--epochs", "2", "--batch-size", "32"] if kind == "finetune" else ["--epochs", "5"]
        r = _cli(kind, "--checkpoint", str(ckpt), "--train", str(world / "labelled" / "train"), "--val",
                 str(world / "labelled" / "val"), "--condition", "full", "--out", str(out), "--workers", "4",
                 "--no-progress", "--device", self.dev, *extra)
        return r.returncode == 0, r.stdout.strip().splitlines()[-1][:200] if r.returncode == 0 else \
            r.stderr.strip()[-200:]


    def roofline(self):
        # the step's operations counted on this GPU (its autocast, its attention kernel, inductor's
        # GPU kernels for the compiled blocks), costed at this GPU's measured matmul rate
        out = self.root / "roofline.json"
        models = "vit_pico4:32:16" if self.smoke else "vit_b14:224:256,vit_h14:224:128"
        r = subprocess.run([PY, str(Path(__file__).parent / "step_roofline.py"), "--device", self.dev, "--models",
                            models, "--ops", "0", "--json", str(out),
                            "--matmul-tflops", f"{self.details.get('matmul_tflops', 774.0):.4g}",
                            *(["--no-compiled"] if self.smoke else [])], capture_output=True, text=True, timeout=600)
        if r.returncode:
            return False, (r.stderr.strip().splitlines() or ["?"])[-1][:200]
        print(r.stdout)
        res = {x["model"]: x for x in json.loads(out.read_text())}
        self.details["roofline"] = res
        return True, "; ".join(f"{m} b{x['batch']}: MFU ceiling {x['ceiling_mfu']:.1%} eager" + (
            f", {x['compiled_ceiling_mfu']:.1%} blocks compiled" if "compiled_ceiling_mfu" in x else "")
            for m, x in res.items())

    def profile(self, name: str, size: int, batch: int, mode: str, compile_: bool):
        r = subprocess.run([PY, "-c", _PROFILE_CHILD, name, str(size), str(batch), mode, str(int(compile_)),
                            str(Path(__file__).parent), self.dev], capture_output=True, text=True, timeout=400)
        if r.returncode:
            return False, (r.stderr.strip().splitlines() or ["?"])[-1][:200]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        top = res["top"]
        self.details[f"profile {name}@{size} {mode}{' compiled' if compile_ else ''}"] = res
        for t in top:
            print(f"  {t['share']:6.1%} {t['calls']:6d}  {t['kernel']}")
        # kernel time per step by kind, beside the roofline's bound for the same kind (eager operations;
        # a compiled step's fused kernels stand for its blocks' memory-bound ones)
        bound = {x["kind"]: x["ms"] for x in self.details.get("roofline", {}).get(f"{name}@{size}", {}).get("rows", [])}
        print(f"  step {res['step_ms']:.1f} ms wall, {res['kernel_ms']:.1f} ms of kernels; per kind, kernel ms per step"
              " (roofline's bound, eager operations):")
        for kind, ms in sorted(res["kinds_ms"].items(), key=lambda kv: -kv[1]):
            print(f"    {kind:<18}{ms:8.2f}" + (f"  ({bound[kind]:.2f})" if kind in bound else ""))
        return True, (f"{name}@{size} b{batch} {mode}{' compiled' if compile_ else ''}: step {res['step_ms']:.1f} ms, "
                      f"kernels {res['kernel_ms']:.1f} ms: " + "; ".join(
                          f"{k} {v:.1f}" for k, v in sorted(res["kinds_ms"].items(), key=lambda kv: -kv[1])))

    def matmul(self):
        import torch

        k = 1024 if self.smoke else 8192
        a = torch.randn(k, k, device=self.dev, dtype=torch.bfloat16)
        b = torch.randn(k, k, device=self.dev, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        sync = torch.cuda.synchronize if self.dev == "cuda" else (lambda: None)
        sync()
        t = time.perf_counter()
        n = 2 if self.smoke else 50
        for _ in range(n):
            a @ b
        sync()
        tf = 2 * k**3 * n / (time.perf_counter() - t) / 1e12
        self.details["matmul_tflops"] = tf
        return True, f"bf16 {k}^3 matmul: {tf:.3g} TFLOP/s (MFU's denominator is the datasheet peak)"

    def gpu_tests(self):
        r = subprocess.run([PY, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", "-m", "gpu",
                            str(Path(__file__).resolve().parents[1] / "tests" / "test_gpu.py")],
                           capture_output=True, text=True, timeout=300)
        last = next((ln for ln in reversed(r.stdout.splitlines()) if re.search(r"\d+ (passed|failed|skipped)", ln)),
                    "no summary line")
        failures = [ln[:160] for ln in r.stdout.splitlines() if ln.startswith(("FAILED", "ERROR", "E "))][:4]
        return r.returncode == 0 and (self.smoke or "skipped" not in last), " | ".join([last.strip("= "), *failures])


_MFU_CHILD = r"""
import json, sys, time, torch
from torch._dynamo.utils import counters
from egoscale.models import get_spec
from egoscale.models.flops import mae_train_flops
from egoscale.train.distributed import cleanup
from egoscale.train.metrics import device_peak_tflops
a = json.loads(sys.argv[1])
sys.path.insert(0, a["bench_dir"])
from training_step import build  # the step as `egoscale pretrain` runs it
dev = torch.device(a["device"], 0) if a["device"] == "cuda" else torch.device(a["device"])
spec = get_spec(a["model"], img_size=a["size"])
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
peak = device_peak_tflops(dev)
for mode in a["modes"]:
    step = build(spec, dev, mode, a["compile_mode"], a["blocks"], a["attention"])
    for batch in a["batches"]:
        x = torch.randn(batch, 3, a["size"], a["size"], device=dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter(); step(x); sync(); first = time.perf_counter() - t
        graphs = counters["stats"]["unique_graphs"]
        step(x); step(x); sync()
        t = time.perf_counter()
        for _ in range(a["steps"]):
            step(x)
        sync()
        dt = (time.perf_counter() - t) / a["steps"]
        tf = mae_train_flops(spec, a["size"], 0.8) * batch / dt / 1e12
        print("ROW: " + json.dumps({
            "model": f"{a['model']}@{a['size']}", "mode": mode, "compile": a["compile_mode"], "batch": batch,
            "blocks": a["blocks"], "attention": a["attention"],
            "img_s": batch / dt, "tflops": tf, "mfu": tf / peak if peak else None, "step_s": dt,
            "first_s": first - dt, "graphs_after_first": counters["stats"]["unique_graphs"] - graphs,
            "mem_gb": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0}), flush=True)
    del step
    if dev.type == "cuda":
        torch.cuda.empty_cache()
cleanup()
"""

_PROFILE_CHILD = r"""
import json, sys, time, torch
from collections import defaultdict
from torch.profiler import ProfilerActivity, profile
from egoscale.models import get_spec
from egoscale.train.distributed import cleanup
name, size, batch, mode, compile_ = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
sys.path.insert(0, sys.argv[6])
from step_roofline import kernel_kind
from training_step import build
dev = torch.device(sys.argv[7], 0) if sys.argv[7] == "cuda" else torch.device(sys.argv[7])
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
train_step = build(get_spec(name, img_size=size), dev, mode, "default" if compile_ else None)
x = torch.randn(batch, 3, size, size, device=dev)
for _ in range(3):
    train_step(x)
sync()
n = 3
with profile(activities=[ProfilerActivity.CUDA if dev.type == "cuda" else ProfilerActivity.CPU]) as prof:
    t = time.perf_counter()
    for _ in range(n):
        train_step(x)
    sync()
    wall = (time.perf_counter() - t) / n
# device events only (kernels, copies): each kernel's own time once
ev = [e for e in prof.key_averages() if e.self_device_time_total > 0] if dev.type == "cuda" else \
    [e for e in prof.key_averages() if e.key.startswith("aten::")]
own = (lambda e: e.self_device_time_total) if dev.type == "cuda" else (lambda e: e.self_cpu_time_total)
total = sum(own(e) for e in ev) or 1
kinds = defaultdict(float)
for e in ev:
    kinds[kernel_kind(e.key)] += own(e) / n / 1e3
top = sorted(ev, key=lambda e: -own(e))[:15]
print(json.dumps({"top": [{"kernel": e.key[:90], "share": own(e) / total, "calls": e.count} for e in top],
                  "kinds_ms": kinds, "kernel_ms": total / n / 1e3, "step_ms": 1e3 * wall}))
cleanup()
"""

_LOADER_CHILD = r"""
import io, json, random, sys, time, torch
from PIL import Image
from egoscale.data.loader import FrameStream, augment, collate_uint8, decode_rgb, read_piece, resolve_pieces
torch.set_num_threads(1)  # as in a DataLoader worker
pieces, _ = resolve_pieces(sys.argv[1])
sizes, n = json.loads(sys.argv[2]), int(sys.argv[3])
raw = [b for p in pieces for b in read_piece(p, {})][:n]
def bigger(data, short):  # the frames re-encoded at a short side that a 476-px crop needs
    im = Image.open(io.BytesIO(data)).convert("RGB")
    f = short / min(im.size)
    buf = io.BytesIO()
    im.resize((round(im.size[0] * f), round(im.size[1] * f)), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()
pin = torch.cuda.is_available()
res = {}
for size in sizes:
    frames = raw if size <= min(Image.open(io.BytesIO(raw[0])).size) else [bigger(b, round(size * 1.15)) for b in raw]
    t = time.perf_counter()
    for b in frames:
        decode_rgb(b)
    decode = (time.perf_counter() - t) / len(frames)
    rng = random.Random(0)
    t = time.perf_counter()
    outs = [augment(b, size, rng) for b in frames]
    aug = (time.perf_counter() - t) / len(frames)
    t = time.perf_counter()
    for i in range(0, len(outs) - 31, 32):
        batch = collate_uint8(outs[i:i + 32])
        if pin:
            batch = batch.pin_memory()
    coll = (time.perf_counter() - t) / (len(outs) // 32 * 32)
    res[size] = {"fps": 1 / (aug + coll), "decode_ms": 1e3 * decode, "resize_ms": 1e3 * max(aug - decode, 0.0),
                 "augment_ms": 1e3 * aug, "collate_ms": 1e3 * coll,
                 "source_px": list(Image.open(io.BytesIO(frames[0])).size)}
print(json.dumps(res))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script, not the GPU")
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the table and every measurement as JSON here")
    ap.add_argument("--minutes", type=float, default=8.5, help="checks that would start later are skipped")
    ap.add_argument("--precisions", default="bf16", help="pretraining precisions the MFU table and the real-data "
                    "runs compare, comma-separated (e.g. bf16,bf16-params; each adds about two minutes)")
    ap.add_argument("--only", default=None, help="run these checks only, comma-separated (names as listed above)")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    known = {"mfu", "loader", "real-data", "resume", "ddp", "fsdp", "grad-ckpt", "fsdp-g14", "finetune", "probe",
             "gpu-tests", "profile", "matmul", "roofline", "shard-index"}
    if only and only - known:
        raise SystemExit(f"--only: no check named {', '.join(sorted(only - known))} "
                         f"(checks: {', '.join(sorted(known))})")
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("gpu_check.py needs a CUDA GPU (or --smoke for the CPU plumbing check)")
        print(f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        c = Check(args.smoke, root, args.minutes, args.precisions.split(","), only)
        # what no earlier run on a GPU has shown working comes first, then the step's speed and where
        # its time goes, then paths measured before
        c.run("matmul", c.matmul)
        c.run("gpu-tests", c.gpu_tests)
        c.run("fsdp", lambda: c.torchrun(True), needs_s=30)
        c.run("fsdp-g14", c.fsdp_g14, needs_s=40)
        c.run("mfu", c.mfu)
        # where a compiled bf16 step's GPU time goes (B/14 sits further from its goal), beside its roofline
        c.run("roofline", c.roofline, needs_s=60)
        for prof in ([("vit_pico4", 32, 16)] if args.smoke else [("vit_b14", 224, 256), ("vit_h14", 224, 128)]):
            c.run("profile", functools.partial(c.profile, *prof, "bf16", True), needs_s=40)
        for precision in c.precisions:
            for compile_ in (False, True):
                c.run("real-data", functools.partial(c.real_data, precision, compile_), needs_s=40)
        if not args.smoke:  # CUDA graphs as `egoscale pretrain --compile-mode reduce-overhead` records them
            c.run("real-data", functools.partial(c.real_data, "bf16", True, "reduce-overhead"), needs_s=40)
        c.run("finetune", lambda: c.evaluation("finetune"), needs_s=30)
        c.run("probe", lambda: c.evaluation("probe"), needs_s=20)
        c.run("resume", c.resume, needs_s=40)
        c.run("ddp", lambda: c.torchrun(False), needs_s=30)
        c.run("grad-ckpt", c.grad_ckpt, needs_s=20)
        c.run("loader", c.loader, needs_s=20)
        c.run("shard-index", c.shard_index, needs_s=40)
        print("\n| check | result | seconds | what |\n|---|---|---|---|")
        for name, ok, text, sec in c.rows:
            print(f"| {name} | {ok} | {sec:.0f} | {text} |")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": c.rows, "details": c.details}, indent=2))
        if any(ok == "FAILED" for _, ok, _, _ in c.rows):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
