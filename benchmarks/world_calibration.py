"""Calibration of the built-in world: does scale show at CPU size?

For each (model, pretraining steps, data fraction) and each seed: pretrain an MAE on the
world's frames (a contiguous subset), then evaluate on the world's labelled set by linear
probe, k-NN and few-shot finetuning; a random-init baseline per model anchors the table.
Prints mean and [min, max] over seeds — trends are measured, not assumed.

    python benchmarks/world_calibration.py --hours 1 --steps 150,600 --fractions 1,0.1,0.01 \\
        --models vit_pico4,vit_micro4 --seeds 1,2 --out /tmp/calib
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from egoscale.data.ingest import IngestConfig, ingest
from egoscale.data.subset import SubsetConfig, make_subsets, subset_name
from egoscale.evaluate.finetune import FinetuneConfig, finetune
from egoscale.evaluate.probe import ProbeConfig, probe
from egoscale.train.pretrain import PretrainConfig, pretrain
from egoscale.world.world import WorldConfig, make_world

quiet = lambda *a, **k: None  # noqa: E731


def evaluate(ck: str, model: str, size: int, lab: Path, out: Path, epochs: int) -> dict:
    p = probe(ProbeConfig(checkpoint=ck, model=model, img_size=size, train=str(lab / "train"), val=str(lab / "val"),
                          out=str(out / "probe"), condition="full", workers=0, progress=False, knn=10), log=quiet)
    f = finetune(FinetuneConfig(checkpoint=ck, model=model, img_size=size, train=str(lab / "train"),
                                val=str(lab / "val"), out=str(out / "ft"), condition="full", epochs=epochs,
                                batch_size=32, lr=5e-4, workers=0, progress=False), log=quiet)
    return {"probe": p["top1"], "knn": p["knn_top1"], "finetune": f["top1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/egoscale-calibration")
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--categories", type=int, default=8)
    ap.add_argument("--models", default="vit_pico4,vit_micro4")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--steps", default="150,600")
    ap.add_argument("--fractions", default="1,0.1,0.01")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--epochs", type=int, default=8, help="finetuning epochs")
    args = ap.parse_args()
    out = Path(args.out)
    models, steps = args.models.split(","), [int(s) for s in args.steps.split(",")]
    fractions, seeds = [float(f) for f in args.fractions.split(",")], [int(s) for s in args.seeds.split(",")]
    make_world(WorldConfig(out=str(out / "world"), hours=args.hours, categories=args.categories, train_per_class=20,
                           val_per_class=20, progress=False), log=quiet)
    ingest(IngestConfig(source=[f"w={out / 'world' / 'videos'}"], out=str(out / "frames"), short_side=0,
                        progress=False), log=quiet)
    make_subsets(SubsetConfig(frames=str(out / "frames"), fractions=fractions, seeds=seeds), log=quiet)
    lab = out / "world" / "labelled"
    rows = []
    for model in models:
        base = [evaluate("none", model, args.img_size, lab, out / "eval" / f"{model}_random_{s}", args.epochs)
                for s in seeds[:1]]
        rows.append((model, "random init", "-", base))
        for st in steps:
            for f in fractions:
                res = []
                for s in (seeds[:1] if f == 1 else seeds):
                    run = out / "runs" / f"{model}_{st}_{f:g}_{s}"
                    t = time.time()
                    pretrain(PretrainConfig(data=str(out / "frames"), out=str(run), model=model, img_size=args.img_size,
                                            subset=str(out / "frames" / "subsets" / f"{subset_name(f, s)}.json"),
                                            steps=st, batch_size=32, lr=1.5e-3, mask_ratio=0.75, workers=0,
                                            progress=False, seed=s, shuffle_buffer=500), log=quiet)
                    r = evaluate(str(run), model, args.img_size, lab, out / "eval" / run.name, args.epochs)
                    r["seconds"] = time.time() - t
                    res.append(r)
                rows.append((model, f"{st} steps", f"{f:g}", res))
                print(f"{model} {st} steps fraction {f:g}: " + json.dumps(
                    {k: round(float(np.mean([x[k] for x in res])), 3) for k in res[0]}), flush=True)
    print(f"\n{'model':<12}{'pretraining':<14}{'data':>6}{'probe top-1':>22}{'k-NN top-1':>22}{'finetune top-1':>22}")
    for model, what, f, res in rows:
        cells = []
        for k in ("probe", "knn", "finetune"):
            v = [x[k] for x in res]
            cells.append(f"{np.mean(v):.3f} [{min(v):.3f}, {max(v):.3f}]")
        print(f"{model:<12}{what:<14}{f:>6}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
