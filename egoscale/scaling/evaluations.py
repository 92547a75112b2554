"""Few-shot finetuning beside the linear probe of the same weights.

The paper evaluates by finetuning the whole encoder; a linear probe on frozen features reads what
the encoder learned without any chance to lose it. Finetuning that ends clearly below the probe of
the same weights has spent what pretraining bought (a recipe too harsh for the labelled set), so a
study that reports finetuning should show the two side by side. Here: per model@size at the
largest data size, each evaluation's mean over its runs, for the pretrained weights and, where the
table has them, for random ones.
"""

from __future__ import annotations

import numpy as np

from egoscale.scaling.baselines import is_baseline
from egoscale.scaling.trends import model_name

# "within 2 points": how far below the probe finetuning may end and still count as keeping what
# the probe reads (about the seed noise of one demo cell)
TOLERANCE = 0.02
NAMES = {"finetune": "finetuning", "linear_probe": "linear probe"}


def eval_name(evaluation: str) -> str:
    return NAMES.get(evaluation, evaluation.replace("_", " "))


def side_by_side(rows: list[dict], metric: str, first: str = "finetune", second: str = "linear_probe",
                 tolerance: float = TOLERANCE) -> list[dict]:
    """One record per (model, image size, condition) that both evaluations scored at the largest data
    size: their means, the difference (`first` minus `second`) and its verdict ("at least", "within"
    `tolerance` below, or "below"); [] where the table does not hold both evaluations."""
    usable = [r for r in rows if r.get(metric) is not None and np.isfinite(r[metric])]
    pretrained = [r for r in usable if not is_baseline(r) and r.get("eval") in (first, second)]
    if {r.get("eval") for r in pretrained} != {first, second}:
        return []
    top = max(float(r["data_hours"]) for r in pretrained)

    def means(group: list[dict]) -> dict[tuple, dict[str, list[float]]]:
        out: dict[tuple, dict[str, list[float]]] = {}
        for r in group:
            key = (model_name(r), float(r["img_size"]), r.get("condition"))
            out.setdefault(key, {}).setdefault(r["eval"], []).append(float(r[metric]))
        return out

    pre = means([r for r in pretrained if float(r["data_hours"]) == top])
    rand = means([r for r in usable if is_baseline(r) and r.get("eval") in (first, second)])
    records = []
    for (model, px, condition), by in sorted(pre.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if set(by) != {first, second}:
            continue
        a, b = float(np.mean(by[first])), float(np.mean(by[second]))
        diff = a - b
        verdict = "at least" if diff >= 0 else "within" if diff >= -tolerance else "below"
        r = rand.get((model, px, condition), {})
        records.append({"model": model, "img_size": px, "condition": condition, "data_hours": top,
                        "first": first, "second": second, first: a, second: b, "runs": len(by[first]),
                        "difference": diff, "verdict": verdict, "tolerance": tolerance,
                        "random": {k: float(np.mean(v)) for k, v in r.items()}})
    return records


def describe_side_by_side(records: list[dict]) -> str | None:
    """One sentence: in how many model@size finetuning kept what the probe reads."""
    if not records:
        return None
    first, second, tol = records[0]["first"], records[0]["second"], records[0]["tolerance"]
    counts = {v: sum(r["verdict"] == v for r in records) for v in ("at least", "within", "below")}
    low = min(records, key=lambda r: r["difference"])
    mean = float(np.mean([r["difference"] for r in records]))
    return (f"{eval_name(first)} at {records[0]['data_hours']:.3g} h is at least the {eval_name(second)} of the same "
            f"weights in {counts['at least']}, within {tol * 100:.0f} points below it in {counts['within']} and "
            f"further below in {counts['below']} of {len(records)} model@size (mean difference {mean * 100:+.1f} "
            f"pts; lowest {low['model']} @{low['img_size']:.0f} px: {low['difference'] * 100:+.1f})")
