"""Does `egoscale plan` buy a better far answer per GPU-hour than other ways of choosing runs?

Replays studies on the paper-shaped grids of `scaling_validation.py` (ViT-S/B/L/H at 224 px, ViT-H
at 448 and 476 px, by 13 data subsets, seed noise 1.5 points), for each law there (each form,
and two no form can represent). A study starts from the small end: ViT-S and ViT-B at 224 px on
every subset, ViT-L at 224 px and ViT-H at 448 px on the 0.01 % and 0.1 % subsets. The other cells
are the candidates, priced in GPU-hours by the paper grids (`configs/paper_grid*.yaml`, as
`sweep --dry-run` prices them). Under a budget (a share of what all candidates cost), each
strategy picks cells, "runs" them (their simulated results join the table), the table is refitted
(`egoscale fit --form auto`), and the question, top-1 at the paper's claim (2.5B parameters,
20,000 h, 952 px), is answered by the chosen form. Its error against the law's value, per strategy:
the planner; random cells (the median of --random draws); cheapest first; largest first.

    python benchmarks/plan_validation.py [--draws 2] [--random 8] [--budget-share 0.25]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from scaling_validation import CLAIM, LAWS, paper_grid  # noqa: E402

from egoscale.scaling.fit import FitConfig, run_fit  # noqa: E402
from egoscale.scaling.forms import FORMS  # noqa: E402
from egoscale.scaling.plan import PlanConfig, make_plan  # noqa: E402
from egoscale.scaling.results import write_table  # noqa: E402
from egoscale.sweep.grid import load_grid  # noqa: E402
from egoscale.sweep.sweep import estimate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AT = "params={:g},hours={:g},resolution={:g}".format(*CLAIM)


def cell_id(r: dict) -> str:
    return f"{r['model']}@{r['img_size']}_{r['data_fraction']:g}_s{r['seed']}"


def costs() -> dict[str, float]:
    out = {}
    for name in ("paper_grid.yaml", "paper_grid_448.yaml", "paper_grid_476.yaml"):
        out.update({r["cell"]: r["gpu_hours"] for r in estimate(load_grid(ROOT / "configs" / name))})
    return out


def is_start(r: dict) -> bool:
    small_model = r["model"] in ("vit_s14", "vit_b14") and r["img_size"] == 224
    small_data = r["data_fraction"] <= 0.001 and (r["model"], r["img_size"]) in (("vit_l14", 224), ("vit_h14", 448))
    return small_model or small_data


def answer(rows: list[dict], folder: Path, name: str, bootstrap: int) -> tuple[float, str]:
    table = folder / f"{name}.csv"
    write_table(rows, table)
    fit = run_fit(FitConfig(table=str(table), out=str(folder / f"{name}.json"), bootstrap=bootstrap),
                  log=lambda *a: None)
    return float(FORMS[fit.chosen].predict(np.array(fit.chosen_form.theta), *CLAIM)), fit.chosen


def fill(order: list[dict], cost: dict[str, float], budget: float) -> list[dict]:
    """Cells in this order, each that still fits the budget."""
    out, left = [], budget
    for r in order:
        if cost[cell_id(r)] <= left:
            out.append(r)
            left -= cost[cell_id(r)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=2, help="noise draws per law")
    ap.add_argument("--random", type=int, default=8, help="random selections per draw (their median is reported)")
    ap.add_argument("--budget-share", type=float, default=0.25, help="budget: this share of all candidates' cost")
    ap.add_argument("--noise", type=float, default=0.015)
    ap.add_argument("--bootstrap", type=int, default=40)
    ap.add_argument("--laws", nargs="*", default=list(LAWS), choices=list(LAWS))
    args = ap.parse_args()
    cost = costs()
    t0 = time.time()
    print(f"start: {sum(is_start(r) for r in paper_grid(LAWS['logit_linear'], 0.0, np.random.default_rng(0)))} "
          f"runs; budget {args.budget_share:.0%} of the candidates' GPU-hours; {args.draws} draw(s) per law; "
          f"random: median of {args.random}")
    print("| law | start error | planner | random (median) | cheapest first | largest first | planner / random "
          "| planner GPU-h | planner's runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for law_name in args.laws:
            law = LAWS[law_name]
            truth = float(law(*CLAIM))
            errs: dict[str, list[float]] = {k: [] for k in ("start", "planner", "random", "cheapest", "largest")}
            spent, picks = [], []
            for d in range(args.draws):
                rng = np.random.default_rng(1000 + d)
                rows = paper_grid(law, args.noise, rng)
                start = [r for r in rows if is_start(r)]
                cands = [r for r in rows if not is_start(r)]
                budget = args.budget_share * sum(cost[cell_id(r)] for r in cands)
                pred, _ = answer(start, folder, "start", args.bootstrap)
                errs["start"].append(abs(pred - truth) * 100)
                with open(folder / "cands.csv", "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=["model", "img_size", "data_fraction", "seed", "gpu_hours"])
                    w.writeheader()
                    for r in cands:
                        w.writerow({"model": r["model"], "img_size": r["img_size"], "data_fraction": r["data_fraction"],
                                    "seed": r["seed"], "gpu_hours": cost[cell_id(r)]})
                plan = make_plan(PlanConfig(fit=str(folder / "start.json"), candidates=str(folder / "cands.csv"),
                                            budget_gpu_hours=budget, at=AT, out=str(folder / "plan.json")))
                chosen = {c["cell"] for c in plan["chosen"]}
                mine = [r for r in cands if cell_id(r) in chosen]
                spent.append(plan["spent_gpu_hours"] / budget)
                picks.append(len(mine))
                errs["planner"].append(abs(answer(start + mine, folder, "planner", args.bootstrap)[0] - truth) * 100)
                rand = []
                for k in range(args.random):
                    order = [cands[i] for i in np.random.default_rng(k).permutation(len(cands))]
                    rand.append(abs(answer(start + fill(order, cost, budget), folder, "random", args.bootstrap)[0]
                                    - truth) * 100)
                errs["random"].append(float(np.median(rand)))
                by_cost = sorted(cands, key=lambda r: cost[cell_id(r)])
                errs["cheapest"].append(abs(answer(start + fill(by_cost, cost, budget), folder, "cheap",
                                                   args.bootstrap)[0] - truth) * 100)
                errs["largest"].append(abs(answer(start + fill(by_cost[::-1], cost, budget), folder, "large",
                                                  args.bootstrap)[0] - truth) * 100)
            m = {k: float(np.mean(v)) for k, v in errs.items()}
            print(f"| {law_name} | {m['start']:.1f} | {m['planner']:.1f} | {m['random']:.1f} | {m['cheapest']:.1f} | "
                  f"{m['largest']:.1f} | {m['planner'] / m['random']:.2f} | {np.mean(spent):.0%} of budget | "
                  f"{np.mean(picks):.1f} |", flush=True)
    print(f"errors: points of top-1 at 2.5B / 20,000 h / 952 px, the refitted chosen form against the law, mean over "
          f"draws; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
