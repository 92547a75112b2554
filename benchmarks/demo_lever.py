"""One lever of the demo's recipe, measured on many worlds against the demos that already ran there.

For each finished demo folder (`egoscale demo --seed S --out DIR`), the demo's own sweep grid
(DIR/runs/grid.json) is run again with the lever's pretraining settings, on its whole-data cells
and pretraining seed 1 only, with the linear probe only and no random-weight baselines (the
demo's are reused): six pretraining runs per world, through `egoscale sweep`, into
OUT/WORLD/runs. Each run is then paired with the demo's run of the same model@size and seed, and
the table gives every pair's probe top-1 and gain over the demo's random weights, and the mean
difference over all pairs with its standard error (pairs share a world and a pretraining seed, so
the difference is the lever's, not a world's or a seed's).

    python benchmarks/demo_lever.py --set lr_schedule=cosine --out /tmp/lever-cosine DIR [DIR ...] \\
        [--cores 0,1]

`--cores` runs the worlds two (or more) at a time, each pinned to one core (`taskset`), as the
demos at the floor were measured; without it they run one after another on every core. A world
whose lever sweep finished is not run again (the sweep skips finished cells).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml


def lever_grid(demo: Path, settings: dict, out: Path) -> Path:
    """The demo's grid reduced to its whole-data cells of seed 1, probe only, with `settings`."""
    grid = json.loads((demo / "runs" / "grid.json").read_text())
    grid["evals"] = [e for e in grid["evals"] if e["kind"] == "probe"]
    if not grid["evals"]:
        raise SystemExit(f"{demo}: its grid has no probe")
    grid.update(baselines=[], fractions=[1.0], full_seeds=[1], only=None)
    grid["pretrain"].update(settings)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "grid.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in grid.items() if v is not None}))
    return path


def probe_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return [r for r in csv.DictReader(f) if r["eval"] == "linear_probe"]


def pairs(demo: Path, lever_runs: Path) -> list[dict]:
    """Each lever run beside the demo's run of the same model@size and seed, with the random weights."""
    base = probe_rows(demo / "runs" / "results.csv")
    random, ref = {}, {}
    for r in base:
        key = (r["model"], int(float(r["img_size"])))
        if r["baseline"] == "random":
            random.setdefault(key, []).append(float(r["top1"]))
        elif float(r["data_fraction"]) == 1.0:
            ref[key, r["pretrain_seed"]] = float(r["top1"])
    out = []
    for r in probe_rows(lever_runs / "results.csv"):
        key = (r["model"], int(float(r["img_size"])))
        if (key, r["pretrain_seed"]) in ref:
            out.append({"cell": f"{key[0]} @ {key[1]}", "demo": ref[key, r["pretrain_seed"]],
                        "lever": float(r["top1"]), "random": statistics.mean(random[key]) if key in random else None})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demos", nargs="+", type=Path, help="finished demo folders, one per world")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a pretraining setting of the lever (YAML value), e.g. lr_schedule=cosine; repeatable")
    ap.add_argument("--out", type=Path, required=True, help="folder for the lever's sweeps, one per world")
    ap.add_argument("--cores", default=None, help="comma-separated cores: run that many worlds at once, one per core")
    args = ap.parse_args()
    settings = {}
    for kv in args.set:
        key, sep, value = kv.partition("=")
        if not sep:
            raise SystemExit(f"--set {kv!r}: KEY=VALUE")
        settings[key] = yaml.safe_load(value)
    if not settings:
        raise SystemExit("--set: at least one pretraining setting (the lever)")
    worlds = []
    for demo in args.demos:
        if not (demo / "runs" / "results.csv").is_file():
            raise SystemExit(f"{demo}: not a finished demo folder (no runs/results.csv)")
        seed = json.loads((demo / "demo.json").read_text()).get("world_seed", demo.name)
        out = args.out / f"world{seed}"
        worlds.append((demo, out, lever_grid(demo, settings, out)))
    cores = args.cores.split(",") if args.cores else [None]
    queues = [worlds[i::len(cores)] for i in range(len(cores))]
    procs = []
    for core, queue in zip(cores, queues):
        # each core's worlds one after another, in one shell, so that the cores run side by side
        cmds = [f"{'taskset -c ' + core + ' ' if core else ''}{sys.executable} -m egoscale sweep {grid} "
                f"--out {out / 'runs'} > {out / 'sweep.log'} 2>&1" for _, out, grid in queue]
        if cmds:
            procs.append(subprocess.Popen(" && ".join(cmds), shell=True))
    if any(p.wait() for p in procs):
        raise SystemExit(f"a lever sweep failed: see {args.out}/world*/sweep.log")
    diffs, by_cell = [], {}
    print(f"lever {settings}: probe top-1, the demo's run -> the lever's (gain over random weights)\n")
    cells = [p["cell"] for p in pairs(worlds[0][0], worlds[0][1] / "runs")]
    print("| world | " + " | ".join(cells) + " |\n" + "|---" * (len(cells) + 1) + "|")
    for demo, out, _ in worlds:
        row = pairs(demo, out / "runs")
        for p in row:
            d = (p["lever"] - p["demo"]) * 100
            diffs.append(d)
            by_cell.setdefault(p["cell"], []).append(d)
        print(f"| {out.name} | " + " | ".join(
            f"{p['demo'] * 100:.1f} -> {p['lever'] * 100:.1f}"
            + ("" if p["random"] is None else f" ({(p['lever'] - p['random']) * 100:+.1f})") for p in row) + " |")
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    print(f"\nlever - demo: {statistics.mean(diffs):+.2f} points over {len(diffs)} pairs (standard error {se:.2f}); "
          + ", ".join(f"{c} {statistics.mean(v):+.1f}" for c, v in by_cell.items()))


if __name__ == "__main__":
    main()
