"""`egoscale report`: plots, report.md and a self-contained report.html from a fit.json.

The forms' disagreement is shown plainly: every form's curve and interval, every form's
prediction at the paper's headline scale, and what each says about the target.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from egoscale.config import opt
from egoscale.fileio import write_text_atomic
from egoscale.scaling.extrapolate import TARGETS, cheapest, check_claim, curve, resolve_target, scale_together, verdict
from egoscale.scaling.fit import config_of, heldout_text
from egoscale.scaling.forms import FORMS
from egoscale.scaling.plotting import pyplot, save
from egoscale.scaling.baselines import describe_bought
from egoscale.scaling.evaluations import describe_side_by_side, eval_name
from egoscale.scaling.records import FitResult, FormFit, load_fit
from egoscale.scaling.trends import cell_table, describe

COLORS = {"logit_linear": "tab:blue", "power_error": "tab:red", "logit_interaction": "tab:green"}


@dataclass
class ReportConfig:
    """Write report.html (self-contained) and report.md with PNG plots: accuracy vs hours/params/resolution
with fitted curves, held-out predictions, and the extrapolation with interval bands for every form."""

    fit: str = opt("fit.json", "the fit (from `egoscale fit`)", positional=True, metavar="FIT")
    out: str = opt("report", "output folder")
    target: str | None = opt(None, "target accuracy or 'human' (default: human for top5 fits)")
    runs: str | None = opt(None, "the sweep folder of the runs, for pictures of the data and the runs (default: "
                           "the results table's folder when it is a sweep's)")
    plan: str | None = opt(None, "a plan.json from `egoscale plan`: shown as the runs to make next")


def main(cfg: ReportConfig) -> int:
    notes = [plan_section(cfg.plan)] if cfg.plan else None
    print(f"wrote {report(cfg.fit, cfg.out, cfg.target, notes=notes, runs=cfg.runs)}")
    return 0


def plan_section(path: str) -> tuple[str, list[str]]:
    """The runs `egoscale plan` chose, as a report section."""
    import json

    from egoscale.errors import DataError

    try:
        plan = json.loads(Path(path).read_text())
        lab = f"{plan['level']:.0%}"
        now, after = plan["now"], plan["after"]
    except (OSError, ValueError, KeyError):
        raise DataError(f"{path}: not a plan.json (from `egoscale plan`)") from None
    rows = [[str(i), c["cell"], f"{c['gpu_hours']:.1f}", f"{c['interval_after']['sd']:.3f}", c["why"]]
            for i, c in enumerate(plan["chosen"], 1)]
    return ("The runs to make next", [
        f"The question: {plan['question']}. Now {now['mean']:.3f}, {lab} interval [{now['interval'][0]:.3f}, "
        f"{now['interval'][1]:.3f}]; after the {len(rows)} run(s) below ({plan['spent_gpu_hours']:.1f} of "
        f"{plan['budget_gpu_hours']:g} GPU-hours), expected [{after['interval'][0]:.3f}, {after['interval'][1]:.3f}] "
        f"(`{path}`).",
        _md_table(["#", "cell", "GPU-hours", "sd after", "why"], rows)])


def _pct(x):
    return f"{100 * x:.1f}%"


def plot_vs_hours(fit: FitResult, out: Path) -> Path:
    plt = pyplot()
    rows, metric, chosen, e = fit.data, fit.metric, fit.chosen, fit.chosen_form
    fig, ax = plt.subplots(figsize=(7, 4.5))
    combos = sorted({(r["params"], r["img_size"]) for r in rows})
    cmap = plt.get_cmap("viridis")
    hrs = np.array([r["data_hours"] for r in rows])
    grid = np.geomspace(hrs.min() / 2, hrs.max() * 4, 100)
    for i, (N, R) in enumerate(combos):
        c = cmap(i / max(1, len(combos) - 1))
        pts = [r for r in rows if r["params"] == N and r["img_size"] == R]
        label = f"{pts[0].get('model') or f'{N / 1e6:.0f}M'} @{R:.0f}px"
        ax.scatter([r["data_hours"] for r in pts], [r[metric] for r in pts], color=c, s=18, alpha=0.8)
        ax.plot(grid, FORMS[chosen].predict(e.theta, N, grid, R), color=c, lw=1.5, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("hours of video (D)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs data size; lines: {chosen} fit, dots: runs (seeds)")
    ax.legend(fontsize=7)
    return save(fig, out)


def plot_vs(fit: FitResult, out: Path, col: str, label: str) -> Path:
    plt = pyplot()
    rows, metric, chosen, e = fit.data, fit.metric, fit.chosen, fit.chosen_form
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # Group runs that differ only in `col`. A model's parameter count grows a little with the image
    # size (its position table), so along resolution the groups are (model, hours), not (N, D).
    other = ["model", "data_hours"] if col == "img_size" else [c for c in ("params", "data_hours", "img_size")
                                                                if c != col]
    groups = sorted({(r.get(other[0]) or "", r[other[1]]) for r in rows}, key=str)
    vals = np.array([r[col] for r in rows])
    grid = np.geomspace(vals.min() / 1.5, vals.max() * 3, 100)
    cmap = plt.get_cmap("plasma")
    for i, g in enumerate(groups):
        pts = [r for r in rows if ((r.get(other[0]) or ""), r[other[1]]) == g]
        if len({r[col] for r in pts}) < 2:
            continue
        c = cmap(i / max(1, len(groups) - 1))
        ax.scatter([r[col] for r in pts], [r[metric] for r in pts], color=c, s=18)
        args = {col: grid, other[1]: g[1]}
        if col == "img_size":
            args["params"] = float(np.mean([r["params"] for r in pts]))
        else:
            args[other[0]] = g[0]
        ax.plot(grid, FORMS[chosen].predict(e.theta, args["params"], args["data_hours"], args["img_size"]),
                color=c, lw=1.2, label=f"{other[0]}={g[0]:.3g}, {other[1]}={g[1]:.3g}" if col != "img_size"
                else f"{g[0]}, {g[1]:.3g} h")
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {label} ({chosen} fit)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    return save(fig, out)


def plot_heldout(fit: FitResult, out: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, e in fit.forms.items():
        for h in e.holdout:
            p = h.get("predictions") or []
            if not p:
                continue
            t = np.array([x["true"] for x in p])
            m = np.array([x["pred"] for x in p])
            err = np.array([[x["pred"] - x["lo"] for x in p], [x["hi"] - x["pred"] for x in p]]).clip(0)
            ax.errorbar(t, m, yerr=err, fmt="o", ms=3, color=COLORS.get(name), alpha=0.6,
                        label=f"{name} ({h['split']})")
    lim = ax.get_xlim()
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel(f"true {fit.metric}")
    ax.set_ylabel("predicted (fit without these runs)")
    ax.set_title(f"held-out predictions, {fit.label} prediction intervals")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    else:  # a fit with no held-out split: an empty picture that says why
        ax.text(0.5, 0.5, "no runs were held out", transform=ax.transAxes, ha="center", va="center")
    return save(fig, out)


def plot_frontier(fit: FitResult, out: Path, target: float) -> Path:
    """Per form: the cheapest training compute that reaches `target` for each model size (the
    frontier of `extrapolate --budget-flops`), the cheapest point, and its bootstrap interval."""
    plt = pyplot()
    res = cheapest(fit, target)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    reachable = [k for k, r in res.forms.items() if not r.unreachable]
    for name, r in res.forms.items():
        col = COLORS.get(name)
        if r.unreachable:
            ax.plot([], [], color=col, label=f"{name}: unreachable")
            continue
        bad = " (non-physical)" if fit.forms[name].non_physical else ""
        ax.plot([f["params"] for f in r.frontier], [f["flops"] for f in r.frontier], color=col, label=name + bad,
                ls="--" if bad else "-")
        iv = r.flops_interval or [None, None]
        lo = iv[0] if iv[0] is not None else r.flops
        hi = iv[1] if iv[1] is not None else r.flops * 1e3  # unbounded above: drawn as a long bar
        # the fit's own answer may lie outside its bootstrap interval: the bar then starts at the dot
        ax.errorbar([r.params], [r.flops], yerr=[[max(0.0, r.flops - lo)], [max(0.0, hi - r.flops)]], fmt="o",
                    color=col, capsize=3)
    if reachable:
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:  # nothing to draw on log axes: the picture says so
        ax.text(0.5, 0.5, "no form reaches the target", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("encoder parameters (N)")
    ax.set_ylabel("training FLOPs (compute model)")
    ax.set_title(f"cheapest compute reaching {fit.metric} {target:.3f} per model size\n"
                 f"(dot: the cheapest of all, with its {fit.label} bootstrap interval)", fontsize=10)
    ax.legend(fontsize=7)
    return save(fig, out)


def plot_extrapolation(fit: FitResult, out: Path, target: float | None) -> Path:
    plt = pyplot()
    ks = np.geomspace(1e-3, 1e4, 120)
    cur = curve(fit, ks)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in cur.items():
        col = COLORS.get(name)
        ax.plot(ks, c["pred"], color=col, label=name)
        ax.fill_between(ks, c["lo"], c["hi"], color=col, alpha=0.15)
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:.3f}")
    ax.axvline(1.0, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("k: N x k, D x k, pixels x k (1 = the largest run)")
    ax.set_ylabel(fit.metric)
    ax.set_ylim(0, 1)
    ax.set_title(f"extrapolation along the scale-together path ({fit.label} bands)")
    ax.legend(fontsize=7)
    return save(fig, out)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _md_table(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def plot_gains(fit: FitResult, out: Path) -> Path:
    """Each cell's gain over random weights against data size, one line per model@size, with its
    interval; the zero line is what the untrained encoder gives."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    combos = sorted({(g["model"], g["img_size"]) for g in fit.gains}, key=lambda k: (k[1], str(k[0])))
    cmap = plt.get_cmap("viridis")
    for i, (m, px) in enumerate(combos):
        gs = sorted((g for g in fit.gains if (g["model"], g["img_size"]) == (m, px)), key=lambda g: g["data_hours"])
        x = np.array([g["data_hours"] for g in gs]) * (1 + 0.04 * (i - len(combos) / 2))  # spread the bars
        y = np.array([g["gain"] for g in gs]) * 100
        err = np.array([[g["gain"] - g["interval"][0], g["interval"][1] - g["gain"]] for g in gs]).T * 100
        ax.errorbar(x, y, yerr=err, color=cmap(i / max(1, len(combos) - 1)), marker="o", ms=4, lw=1.2, capsize=2,
                    label=f"{m} @{px:.0f}px")
    ax.axhline(0, color="k", lw=1, ls="--")
    ax.text(ax.get_xlim()[0], 0, " random weights", va="bottom", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("hours of video (D)")
    ax.set_ylabel(f"gain in {fit.metric} over random weights (points)")
    ax.set_title(f"what pretraining bought ({fit.label} intervals from seed noise)")
    ax.legend(fontsize=7)
    return save(fig, out)


def _baselines_section(fit: FitResult) -> list[str]:
    """Each cell beside the same encoder untrained: the gain, its interval, the gain's trends."""
    if not fit.gains:
        return []
    hours = sorted({g["data_hours"] for g in fit.gains})
    combos = sorted({(g["model"], g["img_size"]) for g in fit.gains}, key=lambda k: (k[1], str(k[0])))
    by = {(g["model"], g["img_size"], g["data_hours"]): g for g in fit.gains}
    rows = []
    for m, px in combos:
        random = next(g["random"] for g in fit.gains if (g["model"], g["img_size"]) == (m, px))
        cells = []
        for h in hours:
            g = by.get((m, px, h))
            mark = "" if g is None or g["verdict"] == "within noise" else (" ▲" if g["verdict"] == "above" else " ▼")
            cells.append("" if g is None else f"{g['gain'] * 100:+.1f} [{g['interval'][0] * 100:+.1f}, "
                                              f"{g['interval'][1] * 100:+.1f}]{mark}")
        rows.append([f"{m} @{px:.0f} px", f"{random * 100:.1f}", *cells])
    known = all(g["random_noise_known"] for g in fit.gains)
    bought = describe_bought(fit.gains)
    return (["## What pretraining bought", "",
             f"Each cell's mean {fit.metric} minus that of the same model at the same image size with random "
             f"weights, evaluated the same way (▲ above, ▼ below random beyond seed noise; {fit.label} intervals "
             "from the cell's seed noise and the baseline's" + ("" if known else
                                                                ", which is unknown without repeated baselines "
                                                                "and left out") + ").", "",
             _sentence(bought), "",
             _md_table(["model @ image size", f"random weights ({fit.metric}, pts)",
                        *[f"gain at {h:.3g} h" for h in hours]], rows), ""]
            + [f"- gain over random weights, {describe(t)}" for t in fit.gain_trends]
            + [""])


def _side_by_side_section(fit: FitResult) -> list[str]:
    """The paper's evaluation (finetuning) beside the linear probe of the same weights."""
    records = fit.side_by_side
    if not records:
        return []
    first, second = records[0]["first"], records[0]["second"]
    names = {first: eval_name(first), second: eval_name(second)}
    rows = []
    for r in records:
        rand = r["random"]
        rows.append([f"{r['model']} @{r['img_size']:.0f} px", f"{r[second] * 100:.1f}", f"{r[first] * 100:.1f}",
                     f"{r['difference'] * 100:+.1f}", r["verdict"],
                     " / ".join(f"{rand[k] * 100:.1f}" if k in rand else "-" for k in (second, first))])
    return (["## Finetuning beside the linear probe", "",
             f"The same weights read two ways at {records[0]['data_hours']:.3g} h of video, mean {fit.metric} over "
             f"the runs: {names[first]} can only keep what the {names[second]} reads if its recipe suits the "
             f"labelled set; it should end at least level with it (here: at most "
             f"{records[0]['tolerance'] * 100:.0f} points below).", "",
             _sentence(describe_side_by_side(records)), "",
             _md_table(["model @ image size", f"{names[second]} (pts)", f"{names[first]} (pts)", "difference",
                        "verdict", f"random weights: {names[second]} / {names[first]}"], rows), ""])


def _trends_section(fit: FitResult) -> list[str]:
    """What the runs show per axis, with seed intervals, before any form is fitted."""
    trends = fit.trends
    header, rows = cell_table(fit.data, fit.metric)
    return (["## Measured trends", "",
             "Each axis's change from its smallest to its largest value, averaged over the lines that hold "
             "the other two axes fixed; the interval is from seed noise alone (pooled per data size).", ""]
            + [f"- {describe(t)}" for t in trends]
            + ["", f"Cell means, {fit.metric} in points: mean ± seed s.d. (seeds)", "",
               _md_table(header, rows), ""])


def report(fit_path: str, out: str, target: str | None = None,
           notes: list[tuple[str, list[str]]] | None = None, runs: str | None = None) -> Path:
    """Plots, report.md and report.html from a fit; `notes` adds (heading, paragraphs) sections.

    `runs`: the sweep folder the results came from (default: the results table's folder, when it
    is a sweep's), for pictures of the data and the runs (`figures.py`)."""
    fit = load_fit(fit_path)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if target is None:
        target = "human" if fit.metric == TARGETS["human"]["metric"] else None
    tval, tsrc = resolve_target(fit, target) if target else (None, None)
    plots = _plots(fit, out_dir, tval)
    md = (_header(fit) + _trends_section(fit) + _baselines_section(fit) + _side_by_side_section(fit)
          + _forms_section(fit)
          + _claim_section(fit, target) + (_target_section(fit, tval, tsrc) if tval is not None else []))
    for heading, paragraphs in notes or []:
        md += [f"## {heading}", ""] + [x for para in paragraphs for x in (para, "")]
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    md += _sweep_section(Path(runs) if runs else Path(fit.table).parent, out_dir)
    text = "\n".join(md)
    write_text_atomic(out_dir / "report.md", text)
    write_text_atomic(out_dir / "report.html", _html(text, out_dir))
    return out_dir / "report.html"


def _plots(fit: FitResult, out_dir: Path, tval: float | None) -> list[Path]:
    plots = [plot_vs_hours(fit, out_dir / "accuracy_vs_hours.png"),
             plot_vs(fit, out_dir / "accuracy_vs_params.png", "params", "encoder parameters (N)"),
             plot_vs(fit, out_dir / "accuracy_vs_resolution.png", "img_size", "image side (R, px)"),
             plot_heldout(fit, out_dir / "heldout.png"),
             plot_extrapolation(fit, out_dir / "extrapolation.png", tval)]
    if tval is not None:
        plots.append(plot_frontier(fit, out_dir / "compute_frontier.png", tval))
    if fit.gains:
        plots.insert(0, plot_gains(fit, out_dir / "gain_over_random.png"))
    return plots


def _header(fit: FitResult) -> list[str]:
    return [f"# Scaling report: {fit.metric}", "",
            f"{fit.n_rows} runs from `{fit.table}`"
            + (f" (evaluation: {fit.config['eval']})" if fit.config.get("eval") else "")
            + "; seed noise (pooled within-cell s.d.) "
            f"{fit.noise_sigma * 100:.2f} points; {len(fit.dropped)} rows not used (listed in fit.json).", "",
            f"**Chosen form: {fit.chosen}** — {fit.why}.", ""]


def _form_row(name: str, e: FormFit) -> list[str]:
    seeds = [h["coverage_seeds_only"] for h in e.holdout if "coverage_seeds_only" in h]
    ps = ", ".join(f"{k}={v:.3g} [{e.params_ci[k][0]:.3g}, {e.params_ci[k][1]:.3g}]" for k, v in e.params.items())
    sigma = e.form_sigma * 100
    return [name, f"`{e.formula}`", f"{e.rmse * 100:.2f}", heldout_text(e.heldout_points, e.heldout_floor_points),
            "n/a" if e.heldout_mae_points is None else f"{e.heldout_mae_points:.2f}",
            "n/a" if not seeds else f"{np.mean(seeds):.0%}", "n/a" if e.coverage is None else f"{e.coverage:.0%}",
            f"{sigma:.2f}" if sigma > 0 else "none beyond seed noise", f"{e.asymptote:.3f}",
            "yes" if e.converged else "**no**",
            f"**non-physical**: {e.non_physical['note']}" if e.non_physical else "rises",
            "yes" if e.validated.ok else f"no: {e.validated.why_not}",
            ps]


def _forms_section(fit: FitResult) -> list[str]:
    rows = [_form_row(name, e) for name, e in fit.forms.items()]
    bar = config_of(fit)
    return ["## Forms", "",
            _md_table(["form", "formula", "RMSE (pts)", "held-out error (cell means, pts)", "held-out MAE (runs)",
                       "PI coverage (seeds only)", "+ extrapolation error",
                       "form error (pts)", "asymptote", "converged", "along the path", "validated",
                       f"parameters [{fit.label} CI]"], rows),
            "",
            "Along the path: whether the form keeps rising as model, data and pixels grow together (from the "
            "smallest run's scale to a million times the largest). A form that turns down is non-physical there "
            "and is not chosen for extrapolation. Held-out error: of the predicted cell means, with the seed "
            "noise's share taken out (a run's error also holds its seed's luck); the runs' own error beside it. "
            "An error that seed noise hides is shown as within seed noise, with the smallest error these runs "
            f"could show. Coverage: the share of held-out runs inside their {fit.label} prediction intervals, from "
            "seed noise and parameter uncertainty alone, and with the form's extrapolation error along the split's "
            "axis added (measured one step back within the fitted runs). "
            "Validated: the form's held-out error is at most "
            f"{bar.max_heldout_points:g} points and its prediction intervals cover at least "
            f"{bar.min_coverage:.0%} of held-out runs on every split; a form below that bar "
            "is chosen only when no physical form meets it, and then the choice says so.", "",
            "The prediction intervals below add the form's own error (the part of its held-out errors that seeds "
            "and parameters do not explain), measured one step beyond the data; far beyond, it grows, as the "
            "spread between the forms shows.", ""]


def _claim_section(fit: FitResult, target: str | None) -> list[str]:
    claim = check_claim(fit, "paper", None if fit.metric == TARGETS["human"]["metric"] else target)
    preds = [v.prediction.pred for v in claim.forms.values()]
    has_target = claim.target is not None
    rows = []
    for k, v in claim.forms.items():
        p = v.prediction
        rows.append([k + (" (non-physical)" if v.non_physical else ""), _pct(p.pred),
                     f"{_pct(p.ci[0])} – {_pct(p.ci[1])}", f"{_pct(p.pi[0])} – {_pct(p.pi[1])}"]
                    + ([("never" if v.k_to_target is None else f"{v.k_to_target:.3g}"), v.claim] if has_target else []))
    return ["## The paper's claim: 2.5B parameters, 20,000 h, 952 px", "",
            f"Claim: {claim.claim}. Target: "
            + (f"{claim.target:.3f} {fit.metric} ({claim.target_source})." if has_target
               else f"{claim.target_source}."), "",
            _md_table(["form", f"predicted {fit.metric}", f"{fit.label} CI", f"{fit.label} PI"]
                      + (["k to reach the target", "the claim"] if has_target else []), rows),
            "", f"The forms disagree by {100 * (max(preds) - min(preds)):.1f} points here: far from the data, "
            "the choice of form dominates the answer."
            + (f" {_sentence(claim.verdict)}" if claim.verdict else ""), ""]


def _target_section(fit: FitResult, tval: float, tsrc: str) -> list[str]:
    st = scale_together(fit, tval)
    b = st.base
    rows = []
    for name, r in st.forms.items():
        if r.unreachable:
            rows.append([name, "unreachable", r.unreachable, "", ""])
            continue
        iv = r.k_interval
        rows.append([name, f"{r.k:.3g}" + (f" [{iv[0]:.3g}, {iv[1]:.3g}]" if iv else " [open-ended]"),
                     f"{r.params:.3g}", f"{r.hours:.3g}", f"{r.resolution:.0f}"])
    return [f"## Reaching {tval:.3f} {fit.metric} ({tsrc})", "",
            f"Scaling N, D and pixels together by k from the largest run (N={b['params']:.3g}, "
            f"D={b['hours']:.3g} h, R={b['resolution']:.0f} px):", "",
            _md_table(["form", f"k [{fit.label} CI]", "params", "hours", "resolution (px)"], rows), "",
            _sentence(verdict(fit, st, f"{tval:.3f} {fit.metric}")), ""]


def _sweep_section(sweep: Path, out_dir: Path) -> list[str]:
    """Pictures of the data and the runs, when the results came from a sweep's folder."""
    if not (sweep / "grid.json").is_file():
        return []
    from egoscale.scaling.figures import sweep_figures

    md = ["## What the data and the runs look like", "", f"From the sweep in `{sweep}`.", ""]
    for heading, fig in sweep_figures(sweep, out_dir):
        md += [f"### {heading}", "", f"![{fig.stem}]({fig.name})" if isinstance(fig, Path) else fig, ""]
    return md


def _html(md: str, folder: Path) -> str:
    """A minimal Markdown -> HTML (headings, tables, lists, paragraphs, images inlined as base64)."""
    out, table, items = [], [], []

    def inline(s):
        s = html.escape(s)
        import re
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    def flush():
        if table:
            head, *body = [[c.strip() for c in r.strip("|").split("|")] for r in table if not r.startswith("|---")]
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if line.startswith("#"):
            lvl = len(line) - len(line.lstrip("#"))
            out.append(f"<h{lvl}>{inline(line.lstrip('#').strip())}</h{lvl}>")
        elif line.startswith("!["):
            name = line[line.index("(") + 1:-1]
            data = base64.b64encode((folder / name).read_bytes()).decode()
            out.append(f'<p><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></p>')
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px}"
             "th{background:#f3f3f3}img{max-width:100%}code{background:#f6f6f6}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>egoscale report</title><style>{style}</style>" \
           f"</head><body>{''.join(out)}</body></html>\n"


__all__ = ["report"]
