"""What pretraining bought: every pretrained cell beside the same encoder with random weights.

A results table may hold random-initialisation baselines (rows with `baseline: random`, from a
grid's `baselines: [random]` or `egoscale probe/finetune --checkpoint none`): the same model at the
same image size, evaluated the same way, never pretrained. A cell's *gain* is its mean accuracy
minus its baseline's mean. Its interval adds two noises: the cell's seed noise (the s.d. pooled
over the cells of its data size, as the trends use it, over its number of runs) and the
baseline's (the s.d. of baseline repeats pooled over all model@size, over their number). Without
repeated baselines their noise is unknown and the gain's interval says so by leaving it out.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from egoscale.scaling.trends import model_name, cell_means, noise_by_hours


def is_baseline(row: dict) -> bool:
    return bool(row.get("baseline"))


def baseline_key(row: dict) -> tuple:
    """Rows are compared with the baseline of the same model, image size and evaluation."""
    return (model_name(row), float(row["img_size"]), row.get("eval"), row.get("condition"))


def baseline_stats(baselines: list[dict], metric: str) -> tuple[dict[tuple, dict], float]:
    """Per baseline key: mean, the variance of that mean, and the runs; and the pooled s.d. of
    baseline repeats (0.0 without repeats)."""
    groups: dict[tuple, list[float]] = {}
    for r in baselines:
        if r.get(metric) is not None and np.isfinite(r[metric]):
            groups.setdefault(baseline_key(r), []).append(float(r[metric]))
    ss = sum(float(((np.array(v) - np.mean(v)) ** 2).sum()) for v in groups.values())
    dof = sum(len(v) - 1 for v in groups.values())
    sigma = float(np.sqrt(ss / dof)) if dof else 0.0
    return {k: {"mean": float(np.mean(v)), "var_of_mean": sigma ** 2 / len(v), "runs": v}
            for k, v in groups.items()}, sigma


def subtract_baselines(rows: list[dict], baselines: list[dict], metric: str) -> tuple[list[dict], list[dict]]:
    """Each row with its metric replaced by its gain over the matching baseline (the accuracy
    itself kept as `{metric}_pretrained`, the baseline's mean as `{metric}_random`); rows
    without a baseline are returned apart, with why."""
    stats, _ = baseline_stats(baselines, metric)
    out, missing = [], []
    for r in rows:
        b = stats.get(baseline_key(r))
        if b is None:
            missing.append({**r, "dropped_because": f"no random baseline of {model_name(r)} at "
                                                    f"{float(r['img_size']):g} px for eval {r.get('eval')!r}"})
            continue
        out.append({**r, metric: float(r[metric]) - b["mean"], f"{metric}_pretrained": r[metric],
                    f"{metric}_random": b["mean"]})
    return out, missing


def gain_table(rows: list[dict], baselines: list[dict], metric: str, level: float = 0.9) -> list[dict]:
    """One record per pretrained cell (model, hours, image size) that has a baseline: its mean,
    the baseline's mean, the gain and its interval (see the module docstring)."""
    stats, base_sigma = baseline_stats(baselines, metric)
    sigma, _ = noise_by_hours(rows, metric)
    z = float(norm.ppf((1 + level) / 2))
    evals = {(r.get("eval"), r.get("condition")) for r in rows}
    if len(evals) > 1:
        raise ValueError(f"gain_table needs rows of one evaluation, got {sorted(map(str, evals))}")
    ev, cond = next(iter(evals))
    out = []
    for (model, hours, px), ys in cell_means(rows, metric).items():
        b = stats.get((model, px, ev, cond))
        if b is None:
            continue
        gain = float(np.mean(ys)) - b["mean"]
        half = z * float(np.sqrt(sigma[hours] ** 2 / len(ys) + b["var_of_mean"]))
        out.append({"model": model, "data_hours": hours, "img_size": px, "runs": len(ys), "mean": float(np.mean(ys)),
                    "random": b["mean"], "random_runs": len(b["runs"]), "gain": gain,
                    "interval": [gain - half, gain + half], "level": level,
                    "random_noise_known": base_sigma > 0,
                    "verdict": "above" if gain - half > 0 else "below" if gain + half < 0 else "within noise"})
    return out


def baseline_variances(rows: list[dict], baselines: list[dict], metric: str) -> dict[tuple, float]:
    """(model, image size) -> the variance of the baseline mean subtracted from that model@size's
    cells, for trends measured on gains (`trends.axis_trend(extra_var=...)`)."""
    stats, _ = baseline_stats(baselines, metric)
    return {(k[0], k[1]): v["var_of_mean"] for k, v in stats.items()}


def describe_bought(table: list[dict]) -> str | None:
    """One sentence: what pretraining bought at the largest data size (mean over its cells, and the
    best cell), with how many of those cells are clearly above, within noise of or below random weights."""
    if not table:
        return None
    top = max(r["data_hours"] for r in table)
    at = [r for r in table if r["data_hours"] == top]
    mean = float(np.mean([r["gain"] for r in at]))
    best = max(at, key=lambda r: r["gain"])
    counts = {v: sum(r["verdict"] == v for r in at) for v in ("above", "within noise", "below")}
    lo, hi = (x * 100 for x in best["interval"])
    return (f"pretraining on {top:.3g} h bought {mean * 100:+.1f} pts over random weights on average over "
            f"{len(at)} model@size (best {best['model']} @{best['img_size']:.0f} px: {best['gain'] * 100:+.1f} "
            f"[{lo:+.1f}, {hi:+.1f}]); above random in {counts['above']}, within noise in {counts['within noise']}, "
            f"below in {counts['below']}")
