"""How well `egoscale fit --form auto` does on paper-shaped grids generated from known laws.

The grid is the paper's shape: ViT-S/B/L/H at 224 px and ViT-H at 448 and 476 px, by 13 data
subsets (the whole ~5,000 h once, and 10 %, 1 %, 0.1 %, 0.01 % three times each), every run with
seed noise (default 1.5 points of top-1). The laws: each of the three forms (so one form is
right), and two that none of them can represent: accuracy saturating in resolution, and a data
curve with a knee. For each law and noise draw, the fit's chosen form is scored on the three
held-out splits (error, 90 % interval coverage with the form's own error), against the
validation bar, and far away: its prediction at the paper's claim (2.5B parameters, 20,000 h,
952 px) against the law's, "wrong" when more than 5 points off.

    python benchmarks/scaling_validation.py [--draws 6] [--noise 0.015] [--bootstrap 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.special import expit

from egoscale.models.registry import get_spec
from egoscale.scaling.estimation import FORMS
from egoscale.scaling.fit import FitConfig, run_fit
from egoscale.scaling.results import write_table

ROWS = [("vit_s14", 224), ("vit_b14", 224), ("vit_l14", 224), ("vit_h14", 224), ("vit_h14", 448), ("vit_h14", 476)]
SUBSETS = [(1.0, 1)] + [(f, s) for f in (0.1, 0.01, 0.001, 0.0001) for s in (1, 2, 3)]
TOTAL_HOURS = 5000.0
CLAIM = (2.5e9, 20000.0, 952.0)

LAWS = {
    "logit_linear": lambda N, D, R: FORMS["logit_linear"].predict(np.array([-1.2, 0.35, 0.25, 0.6]), N, D, R),
    "power_error": lambda N, D, R: FORMS["power_error"].predict(
        np.array([np.log(0.15 / 0.85), np.log(0.3), np.log(0.35), np.log(0.15), np.log(0.35), np.log(0.2),
                  np.log(0.6)]), N, D, R),
    "logit_interaction": lambda N, D, R: FORMS["logit_interaction"].predict(
        np.array([-1.2, 0.35, 0.25, 0.6, 0.03, -0.05, 0.04]), N, D, R),
    # no form can represent these two
    "saturating_resolution": lambda N, D, R: expit(-1.2 + 0.35 * np.log(N / 1e8) + 0.25 * np.log(D / 100)
                                                   + 1.2 * (1 - np.exp(-(R - 112) / 150))),
    "data_knee": lambda N, D, R: expit(-1.2 + 0.35 * np.log(N / 1e8) + 0.6 * np.log(R / 224)
                                       + np.where(D < 50, 0.1 * np.log(D / 50), 0.4 * np.log(D / 50))),
}


def paper_grid(law, noise: float, rng) -> list[dict]:
    rows = []
    for model, size in ROWS:
        N = get_spec(model).encoder_params()
        for fraction, seed in SUBSETS:
            D = fraction * TOTAL_HOURS
            acc = float(np.clip(law(N, D, size) + rng.normal(0, noise), 0.001, 0.999))
            rows.append(dict(model=model, params=get_spec(model).encoder_params(size), img_size=size, data_hours=D,
                             data_fraction=fraction, seed=seed, eval="finetune", condition="permissive", top1=acc))
    return rows


def true_error(fit, h: dict, law) -> float:
    """RMS over the split's scored cells of (prediction - the law's value), in points: what the
    fit's cell error estimates from noisy runs."""
    rows = fit.data
    cells = {}
    for p in h["predictions"]:
        r = rows[p["row"]]
        if "scored_at_resolution" in h and r["img_size"] != h["scored_at_resolution"]:
            continue
        cells[(r["params"], r["data_hours"], r["img_size"])] = p["pred"]
    return float(np.sqrt(np.mean([(pred - law(*k)) ** 2 for k, pred in cells.items()])) * 100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=6, help="noise draws per law")
    ap.add_argument("--noise", type=float, default=0.015, help="seed noise (s.d., accuracy)")
    ap.add_argument("--bootstrap", type=int, default=30)
    args = ap.parse_args()
    splits = ("largest-data", "largest-model", "largest-resolution")
    print(f"paper-shaped grid: {len(ROWS)} architecture x resolution rows x {len(SUBSETS)} subsets, seed noise "
          f"{args.noise * 100:.1f} points, {args.draws} draws per law, bootstrap {args.bootstrap}")
    print("| law | chosen forms | held-out error of the chosen form per split: cell means, seed noise out "
          "(its true error against the law) | runs' MAE | coverage per split, with extrapolation error (seeds "
          "only) | validated | far extrapolation wrong (> 5 points at 2.5B/20k h/952 px) | best form there |")
    print("|---|---|---|---|---|---|---|---|")
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for law_name, law in LAWS.items():
            rng = np.random.default_rng(0)
            chosen, valid, wrong, best_far = [], 0, 0, []
            errs, true_errs, maes, covs, seed_covs = ({s: [] for s in splits} for _ in range(5))
            truth = float(law(*CLAIM))
            for d in range(args.draws):
                table = Path(tmp) / f"{law_name}_{d}.csv"
                write_table(paper_grid(law, args.noise, rng), table)
                fit = run_fit(FitConfig(table=str(table), out=str(table.with_suffix(".json")),
                                        bootstrap=args.bootstrap, seed=d), log=lambda *a: None)
                name = fit.chosen
                chosen.append(name)
                e = fit.chosen_form
                for h in e.holdout:
                    if "mae_points" in h:
                        sp = h["split"]
                        errs[sp].append(h["cell_error_points"])
                        maes[sp].append(h["mae_points"])
                        covs[sp].append(h["coverage"])
                        seed_covs[sp].append(h["coverage_seeds_only"])
                        true_errs[sp].append(true_error(fit, h, law))
                valid += bool(e.validated.ok)
                far = {k: float(FORMS[k].predict(np.array(v.theta), *CLAIM)) for k, v in fit.forms.items()}
                wrong += abs(far[name] - truth) > 0.05
                best_far.append(min(far, key=lambda k: abs(far[k] - truth)))
            picks = ", ".join(f"{k} {chosen.count(k)}" for k in sorted(set(chosen)))
            err = " / ".join(f"{np.mean(errs[s]):.2f} ({np.mean(true_errs[s]):.2f})" for s in splits)
            mae = " / ".join(f"{np.mean(maes[s]):.2f}" for s in splits)
            cov = " / ".join(f"{np.mean(covs[s]):.0%} ({np.mean(seed_covs[s]):.0%})" for s in splits)
            bests = ", ".join(f"{k} {best_far.count(k)}" for k in sorted(set(best_far)))
            print(f"| {law_name} | {picks} | {err} | {mae} | {cov} | {valid}/{args.draws} | {wrong}/{args.draws} "
                  f"(truth {truth:.3f}) | {bests} |", flush=True)
    print(f"({time.time() - t0:.0f} s; splits in the order {', '.join(splits)})")


if __name__ == "__main__":
    main()
