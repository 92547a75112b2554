"""The default demo's targets, run by run and cell by cell, from finished demo folders.

For each folder (an `egoscale demo --out DIR` that ran to the end) it reads fit.json, plan.json,
beyond/check.json and demo.json, and checks what the demo exists to show:

- every whole-data model@size at least +GAIN points of linear-probe top-1 over its random weights,
  the best at least +BEST;
- the data, model and resolution trends positive and beyond seed noise (their 90 % intervals above 0);
- finetuning at least the probe of the same weights minus TOL points, cell by cell;
- the run beyond the grid inside the chosen form's prediction interval;
- the whole demo within its budget (where demo.json recorded the time).

Prints one table per run (each cell's random, pretrained, gain and finetune - probe, with the misses
marked by how much), then one line per run, the count of runs meeting each target, and, where several
runs are given, every run's gains side by side (misses in bold) and each model@size across them: in
how many runs it reaches +GAIN, its gains' range, and how its gain goes with its random weights'
top-1 and with its pretrained top-1 (correlation over the runs: which of the two decides a miss).
Markdown, to paste into benchmarks/README.md.

    python benchmarks/demo_targets.py DIR [DIR ...] [--gain 10 --best 15 --tol 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from egoscale.models.registry import get_spec
from egoscale.scaling.records import load_fit


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def check_run(folder: Path, gain_min: float, best_min: float, tol: float) -> dict:
    """One demo folder against the targets: each target's verdict and, cell by cell, the misses."""
    if not (folder / "fit.json").is_file():
        raise SystemExit(f"{folder}: no fit.json (did the demo run to the end?)")
    fit = load_fit(folder / "fit.json")
    plan, beyond, demo = (_load(folder / n) for n in ("plan.json", "beyond/check.json", "demo.json"))
    top = max(g["data_hours"] for g in fit.gains)
    gains = {(g["model"], g["img_size"]): g for g in fit.gains if g["data_hours"] == top}
    sbs = {(s["model"], s["img_size"]): s for s in fit.side_by_side if s["data_hours"] == top}
    cells = []
    for key in sorted(gains, key=lambda k: (get_spec(k[0]).width, k[1])):  # smallest model first
        g, s = gains[key], sbs.get(key)
        cells.append({"cell": f"{key[0]} @ {key[1]:.0f}", "random": g["random"], "pretrained": g["mean"],
                      "gain": g["gain"], "interval": g["interval"],
                      "finetune": s["finetune"] if s else None,
                      "ft_minus_probe": s["difference"] if s else None})
    trends = {t["axis"]: t for t in fit.trends}
    chosen = beyond["forms"][beyond["chosen"]] if beyond else None
    out = {
        "folder": str(folder), "world_seed": (demo or {}).get("world_seed"), "steps": (plan or {}).get("steps"),
        "floor": (plan or {}).get("floor_steps"), "cores": (demo or {}).get("cores"),
        "seconds": (demo or {}).get("seconds"), "budget_minutes": (plan or {}).get("budget_minutes"),
        "cells": cells,
        "gain_ok": sum(c["gain"] * 100 >= gain_min for c in cells),
        "best": max(c["gain"] for c in cells) * 100,
        "trends": {a: (t["effect"] * 100, t["interval"][0] * 100, t["interval"][1] * 100) for a, t in trends.items()},
        "ft_ok": sum(c["ft_minus_probe"] is not None and c["ft_minus_probe"] * 100 >= -tol for c in cells),
        "beyond_inside": None if chosen is None else bool(chosen["inside"]),
    }
    out["trends_ok"] = [a for a, (_, lo, _) in out["trends"].items() if lo > 0]
    return out


def describe_run(r: dict, gain_min: float, best_min: float, tol: float) -> list[str]:
    """The run's table, misses marked with how far they fall short."""
    lines = [f"{r['folder']} (world seed {r['world_seed']}, {r['steps']} steps, floor {r['floor']}, "
             f"{r['cores']} core(s), {_minutes(r)})", "",
             "| model @ px | random | pretrained | gain [90 % interval] | finetune - probe |", "|---|---|---|---|---|"]
    for c in r["cells"]:
        short = gain_min - c["gain"] * 100
        gain = f"{c['gain'] * 100:+.1f} [{c['interval'][0] * 100:+.1f}, {c['interval'][1] * 100:+.1f}]"
        gain += f" **{short:.1f} short**" if short > 0 else ""
        ft = "" if c["ft_minus_probe"] is None else f"{c['ft_minus_probe'] * 100:+.1f}"
        if c["ft_minus_probe"] is not None and c["ft_minus_probe"] * 100 < -tol:
            ft += f" **{-tol - c['ft_minus_probe'] * 100:.1f} short**"
        lines.append(f"| {c['cell']} | {c['random'] * 100:.1f} | {c['pretrained'] * 100:.1f} | {gain} | {ft} |")
    trends = ", ".join(f"{a} {e:+.1f} [{lo:+.1f}, {hi:+.1f}]" + ("" if lo > 0 else " (within noise)")
                       for a, (e, lo, hi) in r["trends"].items())
    inside = {True: "inside", False: "OUTSIDE", None: "?"}[r["beyond_inside"]]
    lines += ["", f"gain >= {gain_min:g} in {r['gain_ok']}/{len(r['cells'])}, best {r['best']:+.1f} (target "
              f"{best_min:g}); trends {trends}; finetuning >= probe - {tol:g} in {r['ft_ok']}/{len(r['cells'])}; "
              f"beyond the grid {inside}", ""]
    return lines


def _minutes(r: dict) -> str:
    if r["seconds"] is None:
        return "time not recorded"
    return f"{r['seconds'] / 60:.1f} min of a {r['budget_minutes']:g}-minute budget" if r["budget_minutes"] else \
        f"{r['seconds'] / 60:.1f} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--gain", type=float, default=10.0, help="points over random weights every whole-data cell needs")
    ap.add_argument("--best", type=float, default=15.0, help="points over random weights the best cell needs")
    ap.add_argument("--tol", type=float, default=2.0, help="points finetuning may fall below the probe")
    args = ap.parse_args()
    runs = [check_run(f, args.gain, args.best, args.tol) for f in args.folders]
    for r in runs:
        print("\n".join(describe_run(r, args.gain, args.best, args.tol)))
    print(f"| world seed | cores | steps | min | gain >= {args.gain:g} | best | data | model | resolution "
          f"| ft >= probe - {args.tol:g} | beyond |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        t = {a: f"{e:+.1f}" + ("" if lo > 0 else " (noise)") for a, (e, lo, _) in r["trends"].items()}
        mins = "?" if r["seconds"] is None else f"{r['seconds'] / 60:.1f}"
        print(f"| {r['world_seed']} | {r['cores']} | {r['steps']} | {mins} | {r['gain_ok']}/{len(r['cells'])} | "
              f"{r['best']:+.1f} | {t.get('data', '')} | {t.get('model', '')} | {t.get('resolution', '')} | "
              f"{r['ft_ok']}/{len(r['cells'])} | {'inside' if r['beyond_inside'] else 'outside'} |")
    n = len(runs)
    print(f"\nruns meeting each target, of {n}: every cell >= {args.gain:g}: "
          f"{sum(r['gain_ok'] == len(r['cells']) for r in runs)}; best >= {args.best:g}: "
          f"{sum(r['best'] >= args.best for r in runs)}; all three trends beyond noise: "
          f"{sum(len(r['trends_ok']) == 3 for r in runs)}; "
          f"finetuning: {sum(r['ft_ok'] == len(r['cells']) for r in runs)}; "
          f"beyond inside: {sum(bool(r['beyond_inside']) for r in runs)}")
    if n > 1:
        print("\n".join(["", *across_runs(runs, args.gain)]))


def across_runs(runs: list[dict], gain_min: float) -> list[str]:
    """Each model@size over the runs: how often it reaches the gain, and what its misses follow."""
    import numpy as np

    cells = [c["cell"] for c in runs[0]["cells"]]
    # every run's whole-data cells side by side: the gain over random weights, misses in bold
    lines = ["| world seed | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]
    for r in runs:
        gains = {c["cell"]: c["gain"] * 100 for c in r["cells"]}
        lines.append(f"| {r['world_seed']} | " + " | ".join(
            "-" if n not in gains else f"{gains[n]:+.1f}" if gains[n] >= gain_min else f"**{gains[n]:+.1f}**"
            for n in cells) + " |")
    lines += ["", f"| model @ px | runs at >= +{gain_min:g} | gain, min .. mean .. max | random top-1, mean | "
              "corr(gain, random) | corr(gain, pretrained) |", "|---|---|---|---|---|---|"]
    for name in cells:
        rows = [c for r in runs for c in r["cells"] if c["cell"] == name]
        g = np.array([c["gain"] for c in rows]) * 100
        rnd = np.array([c["random"] for c in rows]) * 100
        pre = np.array([c["pretrained"] for c in rows]) * 100
        corr = (lambda a, b: f"{np.corrcoef(a, b)[0, 1]:+.2f}" if len(a) > 2 and a.std() and b.std() else "-")
        lines.append(f"| {name} | {int((g >= gain_min).sum())}/{len(g)} | {g.min():+.1f} .. {g.mean():+.1f} .. "
                     f"{g.max():+.1f} | {rnd.mean():.1f} | {corr(g, rnd)} | {corr(g, pre)} |")
    axes = sorted({a for r in runs for a in r["trends"]})
    lines += ["", "trends beyond seed noise: " + ", ".join(
        f"{a} {sum(a in r['trends_ok'] for r in runs)}/{len(runs)} (effect "
        f"{min(r['trends'][a][0] for r in runs if a in r['trends']):+.1f} .. "
        f"{max(r['trends'][a][0] for r in runs if a in r['trends']):+.1f})" for a in axes)]
    return lines


if __name__ == "__main__":
    main()
