"""Measured trends: what the runs themselves say about each scaling axis, before any fitted form.

For one axis (data, model or resolution) every combination of the other two axes is a *line*;
along it the cell means (mean over seeds) should rise. The axis's effect is the mean, over the
lines that have both ends, of (largest value's mean - smallest value's mean). Its interval comes
from seed noise: each cell mean has variance sigma^2 / n_seeds, and the lines use disjoint
cells, so the variances add. Sigma is the within-cell s.d. pooled over the cells *of the same
data size*, because runs spread more as they learn more; where a data size has no repeated
cell, the largest s.d. of the other sizes stands in, and the trend says so. The counts of lines
that rise end to end and at every step say how consistent the trend is. Nothing here is asserted: an interval that
includes 0 is reported as within seed noise.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from egoscale.scaling.estimation import level_label, seed_noise

AXES = {"data": "data_hours", "model": "model", "resolution": "img_size"}
_KEYS = ("model", "data_hours", "img_size")


def model_name(r: dict) -> str:
    # a model is one architecture; its parameter count shifts a little with the image size
    # (position table), so models are told apart by name where the table has one
    return r.get("model") or f"{float(r['params']):.4g}"


def cell_means(rows: list[dict], metric: str) -> dict[tuple, list[float]]:
    """(model, data_hours, img_size) -> the metric of each seed."""
    out: dict[tuple, list[float]] = {}
    for r in rows:
        out.setdefault((model_name(r), float(r["data_hours"]), float(r["img_size"])), []).append(float(r[metric]))
    return out


def _order(rows: list[dict], col: str) -> dict:
    """Axis value -> rank (models by their smallest parameter count)."""
    if col != "model":
        vals = sorted({float(r[col]) for r in rows})
        return {v: i for i, v in enumerate(vals)}
    size: dict[str, float] = {}
    for r in rows:
        size[model_name(r)] = min(size.get(model_name(r), np.inf), float(r["params"]))
    return {m: i for i, m in enumerate(sorted(size, key=size.get))}


def axis_trend(rows: list[dict], metric: str, axis: str, level: float = 0.9,
               extra_var: dict[tuple, float] | None = None) -> dict | None:
    """The measured effect of one axis (see the module docstring); None if it has one value.

    `extra_var`: (model, image size) -> a variance to add to every cell mean of that model@size,
    for metrics with a per-model@size quantity subtracted (gains over a random baseline,
    `baselines.py`). Along the data axis both ends share it, so it cancels there."""
    col = AXES[axis]
    i = _KEYS.index(col)
    cells = cell_means(rows, metric)
    rank = _order(rows, col)
    values = sorted(rank, key=rank.get)
    if len(values) < 2:
        return None
    sigma, borrowed = noise_by_hours(rows, metric)
    extra_var = extra_var or {}
    lines: dict[tuple, dict] = {}  # the other two axes -> {this axis's value: (data size, seeds)}
    for k, ys in cells.items():
        lines.setdefault(k[:i] + k[i + 1:], {})[k[i]] = (k[1], ys)
    diffs, var, rising, monotone = [], 0.0, 0, 0
    for key, line in lines.items():
        if values[0] not in line or values[-1] not in line:
            continue
        (lo_h, lo), (hi_h, hi) = line[values[0]], line[values[-1]]
        d = np.mean(hi) - np.mean(lo)
        diffs.append(d)
        var += sigma[lo_h] ** 2 / len(lo) + sigma[hi_h] ** 2 / len(hi)
        if axis != "data":  # the two ends are different model@size, each with its own baseline
            ends = [key[:i] + (v,) + key[i:] for v in (values[0], values[-1])]
            var += sum(extra_var.get((e[0], e[2]), 0.0) for e in ends)
        rising += d > 0
        means = [np.mean(line[v][1]) for v in values if v in line]
        monotone += bool(np.all(np.diff(means) > 0))
    n_lines = len(diffs)
    if not n_lines:
        return None
    effect = float(np.mean(diffs))
    half = float(norm.ppf((1 + level) / 2) * np.sqrt(var) / n_lines)
    return {"axis": axis, "column": col, "from": values[0], "to": values[-1], "steps": len(values) - 1,
            "effect": effect, "interval": [effect - half, effect + half], "level": level, "lines": n_lines,
            "rising": int(rising), "monotone": int(monotone),
            "seed_sigma": {f"{h:g}": v for h, v in sigma.items()}, "noise_borrowed_for_hours": borrowed,
            "clear": bool(effect - half > 0 or effect + half < 0)}


def noise_by_hours(rows: list[dict], metric: str) -> tuple[dict[float, float], list[float]]:
    """Seed s.d. per data size (pooled over that size's repeated cells) and the sizes without repeats."""
    def pooled(rs):
        X = tuple(np.array([r[k] for r in rs], float) for k in ("params", "data_hours", "img_size"))
        return seed_noise(X, np.array([r[metric] for r in rs], float))
    sigma = {h: pooled([r for r in rows if float(r["data_hours"]) == h])
             for h in sorted({float(r["data_hours"]) for r in rows})}
    # no repeats at a size: take the largest s.d. measured elsewhere (cautious: noise grows with data)
    borrowed = [h for h, s in sigma.items() if s == 0.0]
    fallback = max(sigma.values())
    return {h: s or fallback for h, s in sigma.items()}, borrowed


def measured_trends(rows: list[dict], metric: str, level: float = 0.9,
                    extra_var: dict[tuple, float] | None = None) -> list[dict]:
    return [t for a in AXES if (t := axis_trend(rows, metric, a, level, extra_var)) is not None]


def _value(col: str, v) -> str:
    if col == "data_hours":
        return f"{v:.3g} h"
    if col == "img_size":
        return f"{v:.0f} px"
    return str(v)


def describe(t: dict) -> str:
    """One line, e.g. 'data (0.02 h → 2 h): +15.1 pts [+12.0, +18.2] (90%), rises in 6/6 lines ...'."""
    lo, hi = (x * 100 for x in t["interval"])
    verdict = "beyond seed noise" if t["clear"] else "within seed noise"
    if t["noise_borrowed_for_hours"]:
        verdict += (" (no repeats at " + ", ".join(f"{h:g} h" for h in t["noise_borrowed_for_hours"])
                    + ": noise there taken from the other sizes)")
    steps = f", at every step in {t['monotone']}/{t['lines']}" if t["steps"] > 1 else ""
    return (f"{t['axis']} ({_value(t['column'], t['from'])} → {_value(t['column'], t['to'])}): "
            f"{t['effect'] * 100:+.1f} pts [{lo:+.1f}, {hi:+.1f}] ({level_label(t['level'])}), "
            f"rises in {t['rising']}/{t['lines']} lines{steps}; {verdict}")


def same_trend(t: dict, trends: list[dict]) -> bool:
    """Whether `trends` holds one along t's axis that measured the same (a gain's trend along data:
    the random baseline of a model@size is the same at every data size, so it changes nothing)."""
    return any(o["axis"] == t["axis"] and np.isclose(o["effect"], t["effect"])
               and np.allclose(o["interval"], t["interval"]) for o in trends)


def describe_gain(t: dict) -> str:
    """A gain's trend after the trend of the accuracies along the same axis, e.g. 'over random weights
    +1.7 pts [-0.4, +3.8], within seed noise'."""
    lo, hi = (x * 100 for x in t["interval"])
    return (f"over random weights {t['effect'] * 100:+.1f} pts [{lo:+.1f}, {hi:+.1f}], "
            f"{'beyond' if t['clear'] else 'within'} seed noise")


def cell_table(rows: list[dict], metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (model, image size), one column per data size, 'mean ± s.d. (n)'."""
    cells = cell_means(rows, metric)
    hours = sorted({k[1] for k in cells})
    rank = _order(rows, "model")
    out = []
    for m, px in sorted({(k[0], k[2]) for k in cells}, key=lambda k: (rank[k[0]], k[1])):
        row = [f"{m} @{px:.0f} px"]
        for h in hours:
            ys = cells.get((m, h, px))
            if not ys:
                row.append("")
            elif len(ys) == 1:
                row.append(f"{ys[0] * 100:.1f} (1)")
            else:
                row.append(f"{np.mean(ys) * 100:.1f} ± {np.std(ys, ddof=1) * 100:.1f} ({len(ys)})")
        out.append(row)
    return ["model @ image size", *[_value("data_hours", h) for h in hours]], out
