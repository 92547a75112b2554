"""What a small image costs before the model sees it, in the demo's two input paths.

- Pretraining frames (`egoscale.data.loader.augment`): the frame's size read from its JPEG header
  by `jpeg_size`, against PIL's `Image.open` reading it (what the loader did before; PIL still
  decodes the crops of the reduced-DCT route). Outputs checked identical, frame by frame.
- Labelled images of finetuning and the probe (`egoscale.evaluate.common.ImageList`): decoded once
  per process (`DecodedImages`), against decoding the file at every read (a limit of 0). Outputs
  checked identical under the same random state. Then the train transform's parts, timed one by one.
- Then one whole finetuning and one probe of a pretrained checkpoint with and without kept images,
  each in a fresh process, taking turns: the top-1 must be the same and the time is what changes.

Reads a finished demo folder (its frames, labelled set and a whole-data checkpoint); one thread,
as the demo's runs have on a 2-core machine.

    python benchmarks/small_images.py DEMO_DIR [--rounds 6] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def best_per_item(fn, items, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, (time.perf_counter() - t) / len(items))
    return best


def crops(data: list[bytes], size: int, header, rounds: int) -> tuple[list[torch.Tensor], float]:
    """Every frame's crop (seeded by its position) and the best seconds per frame, with `header` as
    the loader's JPEG header reader (None: PIL's `Image.open` reads the size, as before)."""
    from egoscale.data import loader

    kept = loader.jpeg_size
    loader.jpeg_size = header or (lambda _: None)
    try:
        out = [loader.augment(d, size, random.Random(i)) for i, d in enumerate(data)]
        rng = random.Random(0)
        return out, best_per_item(lambda d: loader.augment(d, size, rng), data, rounds)
    finally:
        loader.jpeg_size = kept


def frames_ab(demo: Path, rounds: int) -> None:
    from egoscale.data.loader import jpeg_size
    from egoscale.data.shards import load_index

    shard = sorted((demo / "frames").glob("*.tar"))[0]
    with open(shard, "rb") as f:
        data = []
        for off, size in load_index(shard)[:300].tolist():
            f.seek(off)
            data.append(f.read(size))
    for size in (24, 32):
        ours, t_ours = crops(data, size, jpeg_size, rounds)
        pil, t_pil = crops(data, size, None, rounds)
        assert all(torch.equal(a, b) for a, b in zip(ours, pil)), "the two header readers crop differently"
        print(f"pretraining frame -> {size} px crop: {t_ours * 1e6:.0f} us with jpeg_size, {t_pil * 1e6:.0f} us "
              f"with PIL's header: {t_pil / t_ours:.2f}x (identical crops)")


def labelled_ab(demo: Path, rounds: int) -> None:
    from egoscale.evaluate.common import DecodedImages, ImageList, train_transform, val_transform
    from egoscale.evaluate.labelled import scan

    data = scan(demo / "world" / "labelled" / "train")
    for name, tf in (("train (crop, flip)", train_transform(24, (0.8, 1.0))),
                     ("val (resize, centre)", val_transform(24))):
        kept, fresh = ImageList(data, tf, DecodedImages()), ImageList(data, tf, DecodedImages(limit=0))
        outs = []
        for ds in (fresh, kept, kept):
            random.seed(0), torch.manual_seed(0)
            outs.append([ds[i][0] for i in range(len(ds))])
        assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(*outs)), "kept images read differently"
        idx = range(len(data))
        t_kept, t_fresh = best_per_item(kept.__getitem__, idx, rounds), best_per_item(fresh.__getitem__, idx, rounds)
        print(f"labelled image, {name} at 24 px: {t_kept * 1e6:.0f} us kept, {t_fresh * 1e6:.0f} us decoded at "
              f"every read: {t_fresh / t_kept:.2f}x (identical tensors)")


def transform_parts(demo: Path, rounds: int) -> None:
    """The train transform's parts one after another on kept images: what is left after decoding."""
    from torchvision import transforms as T

    from egoscale.constants import IMAGENET_MEAN, IMAGENET_STD
    from egoscale.evaluate.common import DecodedImages, train_transform
    from egoscale.evaluate.labelled import scan

    data, decoded = scan(demo / "world" / "labelled" / "train"), DecodedImages()
    x = [decoded.rgb(data.root / f) for f in data.files]
    parts = train_transform(24, (0.8, 1.0)).transforms
    assert [type(t) for t in parts] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert (list(parts[3].mean), list(parts[3].std)) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    times = []
    for t in parts:
        times.append(f"{type(t).__name__} {best_per_item(t, x, rounds) * 1e6:.0f} us")
        x = [t(i) for i in x]
    print("train transform, per labelled image at 24 px: " + ", ".join(times))


def child(demo: Path, keep: bool) -> None:
    import egoscale.evaluate.common as common
    from egoscale.evaluate.finetune import FinetuneConfig, finetune
    from egoscale.evaluate.probe import ProbeConfig, probe

    if not keep:
        common.DECODED.limit = 0
    ck = sorted((demo / "runs" / "pretrain").glob("vit_pico4@24_1_s1"))[0] / "checkpoint.pt"
    lab, out = demo / "world" / "labelled", Path(tempfile.mkdtemp(prefix="egoscale-small-images-"))
    quiet = lambda *a, **k: None  # noqa: E731
    common_args = dict(checkpoint=str(ck), train=str(lab / "train"), val=str(lab / "val"), condition="full",
                       workers=0, pool="avg", progress=False, tensorboard=False)
    t = time.perf_counter()
    ft = finetune(FinetuneConfig(**common_args, out=str(out / "ft"), epochs=10, batch_size=32, lr=1e-4,
                                 head_warmup=1000, crop_scale=0.8, eval_every=10, resume="none"), log=quiet)
    t_ft = time.perf_counter() - t
    t = time.perf_counter()
    pr = probe(ProbeConfig(**common_args, out=str(out / "probe"), knn=10), log=quiet)  # a fresh feature cache
    print(json.dumps({"finetune_s": t_ft, "probe_s": time.perf_counter() - t, "ft_top1": ft["top1"],
                      "probe_top1": pr["top1"]}))
    shutil.rmtree(out)


def whole_runs(demo: Path, runs: int) -> None:
    seen = {True: [], False: []}
    for _ in range(runs):
        for keep in (False, True):
            cmd = [sys.executable, __file__, str(demo), "--child", str(int(keep))]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            r = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            seen[keep].append(json.loads(r.stdout.splitlines()[-1]))
    for k in ("ft_top1", "probe_top1"):
        assert len({r[k] for r in seen[True] + seen[False]}) == 1, f"{k} differs with kept images"
    for what, key in (("finetuning (10 epochs)", "finetune_s"), ("probe", "probe_s")):
        kept, fresh = min(r[key] for r in seen[True]), min(r[key] for r in seen[False])
        print(f"vit_pico4 @ 24 px {what}: {kept:.2f} s with kept images, {fresh:.2f} s decoding at every read: "
              f"{fresh / kept:.2f}x (same top-1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", type=Path, help="a finished `egoscale demo` folder")
    ap.add_argument("--rounds", type=int, default=6, help="passes over the images per measurement; best kept")
    ap.add_argument("--runs", type=int, default=2, help="fresh-process finetune+probe runs per setting")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.child is not None:
        return child(args.demo, bool(int(args.child)))
    frames_ab(args.demo, args.rounds)
    labelled_ab(args.demo, args.rounds)
    transform_parts(args.demo, args.rounds)
    whole_runs(args.demo, args.runs)


if __name__ == "__main__":
    main()
