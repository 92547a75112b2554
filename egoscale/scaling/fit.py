"""`egoscale fit`: fit every scaling-law form, validate each on held-out runs, choose by
held-out error (not in-sample fit), and write fit.json with everything later stages need.
The fitting primitives (robust loss, starts, bootstrap, intervals) are in `estimation.py`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from egoscale.config import opt
from egoscale.errors import ConfigError, DataError
from egoscale.scaling.extrapolate import turning_point
from egoscale.scaling.baselines import (baseline_variances, describe_bought, gain_table, is_baseline,
                                        subtract_baselines)
from egoscale.scaling.estimation import FORMS, bootstrap, cell_index, fit_form, predict_interval, seed_noise
from egoscale.scaling.evaluations import describe_side_by_side, side_by_side
from egoscale.scaling.records import FitResult, FormFit, Validation
from egoscale.scaling.results import read_table
from egoscale.scaling.trends import describe, measured_trends, same_trend

SPECIAL_SPLITS = {"largest-data": "data_hours", "largest-model": "params", "largest-resolution": "img_size"}


@dataclass
class FitConfig:
    """Fit accuracy as a function of parameters N, hours D and resolution R with several forms (robust
Huber loss, many starts), validate each on held-out runs, bootstrap intervals (seeds resampled within
cells), and choose by held-out error.

example:
  egoscale fit results.csv --metric top1 --form auto --holdout data_fraction=1.0 --out fit.json"""

    table: str = opt("results.csv", "results table (CSV) from the sweep or `egoscale results`", positional=True,
                     metavar="RESULTS")
    out: str = opt("fit.json", "where to write the fit")
    metric: str = opt("top1", "accuracy column to model", choices=["top1", "top5", "top1_last", "top5_last"])
    form: str = opt("auto", "a form name, 'all', or 'auto' (choose by held-out error)",
                    choices=["auto", "all", *FORMS])
    holdout: list[str] = opt([], "held-out split: COLUMN=VALUE, largest-data, largest-model or largest-resolution "
                             "(repeatable; default with auto: the three 'largest' splits that exist)",
                             action="append", metavar="SPLIT")
    eval: str | None = opt(None, "use only rows of this evaluation (e.g. finetune, linear_probe)")
    gains: bool = opt(False, "fit each run's gain over the random-initialisation baseline of its model@size "
                      "(rows marked baseline=random in the table) instead of its accuracy")
    condition: str | None = opt(None, "use only rows of this finetuning condition (e.g. permissive)")
    bootstrap: int = opt(200, "bootstrap refits for intervals")
    level: float = opt(0.9, "interval level")
    huber_delta: float = opt(0.01, "Huber loss threshold in accuracy (0.01 = 1 point)")
    seed: int = opt(0, "bootstrap seed")
    max_heldout_points: float = opt(1.0, "validation bar: a form's held-out error on every split (of its predicted "
                                    "cell means, seed noise taken out) at most this many points of the metric")
    min_coverage: float = opt(0.85, "validation bar: its prediction intervals at --level (with its "
                              "extrapolation error along the split's axis) cover at least this share of held-out runs "
                              "on every split, up to chance in the split's number of runs")

    def __post_init__(self):
        for h in self.holdout:
            if h not in SPECIAL_SPLITS and "=" not in h:
                raise ConfigError(f"--holdout {h!r}: expected COLUMN=VALUE or one of {', '.join(SPECIAL_SPLITS)}")
        if not 0 < self.level < 1:
            raise ConfigError("--level must be in (0, 1)")


def _rows(cfg: FitConfig, rows: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Of the results table's rows: those to fit, those left out (each with why) and the random
    baselines of the fitted rows' evaluation."""
    used, dropped, baselines = [], [], []
    for r in rows:
        why = None
        if cfg.eval and r.get("eval") != cfg.eval:
            why = f"eval is {r.get('eval')!r}, not {cfg.eval!r}"
        elif cfg.condition and r.get("condition") != cfg.condition:
            why = f"condition is {r.get('condition')!r}, not {cfg.condition!r}"
        elif is_baseline(r):  # no pretraining, no data: the reference the pretrained rows are read against
            baselines.append(r)
            continue
        else:
            for k in ("params", "data_hours", "img_size", cfg.metric):
                if r.get(k) is None or not np.isfinite(r[k]) or (k != cfg.metric and r[k] <= 0):
                    why = f"no usable {k}"
                    break
        (dropped if why else used).append({**r, "dropped_because": why} if why else r)
    if len({(r.get("eval"), r.get("condition")) for r in used}) > 1 and cfg.gains:
        raise ConfigError(f"{cfg.table}: rows of several evaluations; pick one with --eval (and --condition) to read "
                          "them against their random baselines")
    if cfg.gains:
        if not baselines:
            raise DataError(f"{cfg.table}: --gains needs random-initialisation baselines (rows with baseline=random; "
                            "a grid's `baselines: [random]` or `egoscale probe --checkpoint none` makes them)")
        used, missing = subtract_baselines(used, baselines, cfg.metric)
        dropped += missing
    if len(used) < 3:
        raise DataError(f"{cfg.table}: only {len(used)} usable rows for --metric {cfg.metric}; need at least 3")
    return reference_params(used), dropped, reference_params(baselines)


def reference_params(rows: list[dict]) -> list[dict]:
    """One N per architecture: the scaling law's N is the encoder's parameter count at the
    architecture's reference resolution (its registered image size: 224 px for the paper's ViTs),
    not the table's count, which grows with the position table at higher resolutions (ViT-H/14:
    632.0M at 224 px, 633.2M at 476). So resolution stays the R axis alone, and the largest-model
    split holds out an architecture at every resolution. The table's count is kept as
    `params_at_resolution`. Architectures outside the registry keep the count of their smallest
    image size."""
    from egoscale.errors import ModelNotFoundError
    from egoscale.models.registry import get_spec

    ref: dict[str, float] = {}
    for r in sorted(rows, key=lambda r: r["img_size"]):
        name = str(r.get("model") or f"N={r['params']:g}")
        if name in ref:
            continue
        try:
            spec = get_spec(name)
            if r.get("patch_size"):
                spec = get_spec(name, patch_size=int(r["patch_size"]))
            ref[name] = float(spec.encoder_params())
        except ModelNotFoundError:
            ref[name] = float(r["params"])
    return [{**r, "params_at_resolution": r["params"], "params": ref[str(r.get("model") or f"N={r['params']:g}")]}
            for r in rows]


def common_resolution(rows: list[dict]) -> float:
    """The image size most architectures were run at (the smallest on a tie): where model-size
    extrapolation is scored."""
    models_at: dict[float, set] = {}
    for r in rows:
        models_at.setdefault(r["img_size"], set()).add(r["params"])
    return min(models_at, key=lambda s: (-len(models_at[s]), s))


def _split_mask(rows: list[dict], split: str) -> np.ndarray:
    if split in SPECIAL_SPLITS:
        col = SPECIAL_SPLITS[split]
        v = np.array([r[col] for r in rows], float)
        return np.isclose(v, v.max())
    col, _, val = split.partition("=")
    if col not in rows[0]:
        raise ConfigError(f"--holdout {split}: no column {col!r} in the table")
    vals = [r.get(col) for r in rows]
    try:
        target = float(val)
        return np.array([v is not None and np.isclose(float(v), target) for v in vals])
    except ValueError:
        return np.array([str(v) == val for v in vals])


def _arrays(rows, metric):
    X = tuple(np.array([r[k] for r in rows], float) for k in ("params", "data_hours", "img_size"))
    return X, np.array([r[metric] for r in rows], float)


def coverage_shortfall(covered: int, n: int, bar: float) -> float:
    """How likely so few covered runs (at most `covered` of `n`) are if the intervals did cover
    `bar` of all runs: the binomial tail. A handful of held-out runs says little: with 6 runs,
    calibrated 90 % intervals miss at least one of them about half the time."""
    from scipy.stats import binom

    return float(binom.cdf(covered, n, bar))


def _validation(holdout: list[dict], cfg: FitConfig) -> Validation:
    """Whether a form meets the validation bar on every held-out split: the error of its predicted
    cell means (seed noise taken out) at most the bar, and no split's coverage short of the bar by
    more than chance in its number of runs explains (one-sided binomial test at 5 %)."""
    done = [h for h in holdout if "mae_points" in h]
    worst_err = max((h["cell_error_points"] for h in done), default=None)
    worst_cov = min((h["coverage"] for h in done), default=None)
    short = [h for h in done if h["coverage"] < cfg.min_coverage and coverage_shortfall(
        round(h["coverage"] * h["n_scored"]), h["n_scored"], cfg.min_coverage) < 0.05]
    ok = bool(done) and worst_err <= cfg.max_heldout_points and not short
    fails = []
    if done and worst_err > cfg.max_heldout_points:
        fails.append(f"held-out error {worst_err:.2f} > {cfg.max_heldout_points:g} points on a split")
    for h in short:
        fails.append(f"interval coverage {h['coverage']:.0%} of {h['n_scored']} runs on {h['split']}, short of "
                     f"{cfg.min_coverage:.0%} beyond chance")
    return Validation(ok=ok, worst_split_points=worst_err, worst_split_coverage=worst_cov,
                      why_not="; ".join(fails) if fails else (None if done else "no held-out split"))


def _form_sigma(excess: list[np.ndarray]) -> float:
    """sqrt of the mean squared held-out error left over after seed noise and bootstrap variance."""
    if not excess:
        return 0.0
    return float(max(0.0, np.concatenate(excess).mean()) ** 0.5)


def cell_error(pred: np.ndarray, y: np.ndarray, X, noise: float) -> float:
    """How far predictions are from the true cell values, estimated from noisy runs: the RMS over
    cells of (predicted - observed cell mean), with the seed noise's share of each squared error
    (noise^2 / runs in the cell) taken out. A run's own error also holds its seed's luck, which no
    law can predict; this is the error of the law."""
    c = cell_index(X)
    sq = [(pred[c == k].mean() - y[c == k].mean()) ** 2 - noise ** 2 / (c == k).sum() for k in np.unique(c)]
    return float(max(0.0, float(np.mean(sq))) ** 0.5)


def noise_floor(X, noise: float) -> float:
    """The smallest cell error that seed noise lets one see in these cells: the RMS over cells of
    the noise's share of each cell mean (noise / sqrt(runs)). An error estimated at 0 is an error
    below this, not a law without error."""
    c = cell_index(X)
    return float(np.mean([noise ** 2 / (c == k).sum() for k in np.unique(c)]) ** 0.5)


def heldout_text(points: float | None, floor_points: float | None) -> str:
    """A held-out error for people: its points, or "within seed noise (<= X)" where seed noise
    hides it (never an exact zero, which no finite set of runs can show)."""
    if points is None:
        return "n/a"
    if points == 0.0 and floor_points is not None:
        return f"within seed noise (<= {floor_points:.2f})"
    return f"{points:.2f}"


def extrapolation_sigma(form, rows: list[dict], X, y, split: str, noise: float, delta: float) -> float | None:
    """The form's error one step further along a split's axis, from the rows the split leaves to
    fit: those rows' own largest level is held out in turn (largest-model: the next-largest
    architecture), fitted from the rest, and its cell error is the estimate. Held-out runs of one
    architecture (or data size, or resolution) share one extrapolation error, which resampling
    seeds cannot see; prediction intervals on the split include this. None for COLUMN=VALUE splits
    and where too few rows remain."""
    if split not in SPECIAL_SPLITS:
        return None
    inner = _split_mask(rows, split)
    if inner.all() or not inner.any() or (~inner).sum() <= len(form.params):
        return None
    f = fit_form(form, tuple(v[~inner] for v in X), y[~inner], delta)
    te = tuple(v[inner] for v in X)
    return cell_error(form.predict(f["theta"], *te), y[inner], te, noise)


def main(cfg: FitConfig) -> int:
    run_fit(cfg)
    return 0


def run_fit(cfg: FitConfig, log=print, summary: bool = True) -> FitResult:
    """Fit every form, score each on the held-out splits, choose one, read the runs against their
    random baselines; write fit.json and return what it holds. `summary=False` logs the forms and the
    choice only, for a caller that says the rest once in its own closing lines (the demo)."""
    t0 = time.time()
    table = read_table(cfg.table)
    rows, dropped, baselines = _rows(cfg, table)
    X, y = _arrays(rows, cfg.metric)
    noise = seed_noise(X, y)
    names = list(FORMS) if cfg.form in ("auto", "all") else [cfg.form]
    splits = list(cfg.holdout)
    if not splits and cfg.form == "auto":
        splits = [s for s, col in SPECIAL_SPLITS.items() if len({r[col] for r in rows}) > 1]
    forms, skipped = {}, {}
    for name in names:
        form = FORMS[name]
        if len(rows) <= len(form.params):
            log(f"{name}: skipped, {len(rows)} rows cannot determine {len(form.params)} parameters")
            skipped[name] = f"{len(rows)} rows for {len(form.params)} parameters"
            continue
        forms[name] = fit_one(form, rows, X, y, noise, splits, cfg)
        log(describe_form(name, forms[name]))
    if not forms:
        raise DataError("no form could be fitted: too few rows")
    chosen, why = choose(forms, len(splits), cfg)
    result = FitResult(metric=cfg.metric, table=cfg.table, level=cfg.level, noise_sigma=noise, n_rows=len(rows),
                       data=rows, forms=forms, chosen=chosen, why=why, dropped=dropped, splits=splits,
                       skipped=skipped, config={k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
    if baselines and len({(r.get("eval"), r.get("condition")) for r in rows}) > 1:
        log("random baselines not read: the rows hold several evaluations (pick one with --eval)")
        baselines = []
    if baselines:
        _read_gains(result, rows, baselines, cfg)
    result.trends = (result.gain_trends if cfg.gains else measured_trends(rows, cfg.metric, cfg.level))
    # the paper's evaluation beside the probe of the same weights, where the table holds both
    result.side_by_side = side_by_side(table, cfg.metric)
    result.seconds = round(time.time() - t0, 2)
    result.save(cfg.out)
    for line in summary_lines(result, cfg)[:None if summary else 1]:
        log(line)
    return result


def fit_one(form, rows: list[dict], X, y, noise: float, splits: list[str], cfg: FitConfig) -> FormFit:
    """One form: fitted to every row with bootstrap intervals, scored on each held-out split,
    checked against the validation bar and along the scale-together path."""
    full = fit_form(form, X, y, cfg.huber_delta)
    samples = bootstrap(form, X, y, full["theta"], cfg.bootstrap, cfg.huber_delta, cfg.seed)
    lo, hi = (1 - cfg.level) / 2 * 100, (1 + cfg.level) / 2 * 100
    readable = [form.readable(t) for t in samples]
    ci = {k: [float(np.percentile([r[k] for r in readable], q)) for q in (lo, hi)] for k in readable[0]}
    holdout, excess = [], []  # per split, per held-out row: squared error beyond what seeds and the bootstrap explain
    for split in splits:
        record, over = score_split(form, rows, X, y, split, noise, cfg)
        holdout.append(record)
        if over is not None:
            excess.append(over)
    valid = [h for h in holdout if "mae_points" in h]
    mean = lambda key: float(np.mean([h[key] for h in valid])) if valid else None  # noqa: E731
    # The form's own error (form_sigma): held-out rows miss by more than seed noise and parameter
    # uncertainty explain when the form is wrong; prediction intervals for new runs (`extrapolate`)
    # include its size, estimated from all the held-out errors.
    return FormFit(formula=form.formula, theta=full["theta"].tolist(), params=form.readable(full["theta"]),
                   params_ci=ci, rmse=full["rmse"], converged=full["converged"], grad_norm=full["grad_norm"],
                   asymptote=form.asymptote(full["theta"]), bootstrap=samples.tolist(), holdout=holdout,
                   form_sigma=_form_sigma(excess), heldout_mae_points=mean("mae_points"),
                   heldout_points=mean("cell_error_points"), heldout_floor_points=mean("noise_floor_points"),
                   validated=_validation(holdout, cfg), non_physical=turning_point(form, full["theta"], rows))


def score_split(form, rows: list[dict], X, y, split: str, noise: float, cfg: FitConfig
                ) -> tuple[dict, np.ndarray | None]:
    """The form fitted without the split's rows and scored on them: the held-out record (errors,
    interval coverage, each prediction) and each held-out row's squared error beyond what seeds
    and the bootstrap explain (None when the split could not be scored)."""
    mask = _split_mask(rows, split)
    if mask.all() or not mask.any():
        return {"split": split, "skipped": "holds out all rows or none"}, None
    if (~mask).sum() <= len(form.params):
        return {"split": split, "skipped": f"{(~mask).sum()} rows left to fit"}, None
    tr, te = tuple(v[~mask] for v in X), tuple(v[mask] for v in X)
    f = fit_form(form, tr, y[~mask], cfg.huber_delta)
    bs = bootstrap(form, tr, y[~mask], f["theta"], max(50, cfg.bootstrap // 2), cfg.huber_delta, cfg.seed)
    sig = extrapolation_sigma(form, [r for r, m in zip(rows, mask) if not m], tr, y[~mask], split, noise,
                              cfg.huber_delta)
    _, slo, shi = predict_interval(form, bs, te, noise=max(noise, 1e-9), level=cfg.level, seed=cfg.seed)
    _, plo, phi = predict_interval(form, bs, te, noise=max((noise ** 2 + (sig or 0.0) ** 2) ** 0.5, 1e-9),
                                   level=cfg.level, seed=cfg.seed)
    pred, yt = form.predict(f["theta"], *te), y[mask]
    err = np.abs(pred - yt)
    boot_var = np.array([form.predict(t, *te) for t in bs]).var(0)
    scored, extra = _scored_runs(split, rows, te, err)
    kept = tuple(v[scored] for v in te)
    return {"split": split, "n": int(mask.sum()), "n_scored": int(scored.sum()),
            "mae_points": float(err[scored].mean() * 100),
            "cell_error_points": 100 * cell_error(pred[scored], yt[scored], kept, noise),
            "noise_floor_points": 100 * noise_floor(kept, noise),
            **extra,
            "extrapolation_sigma_points": None if sig is None else 100 * sig,
            # on the scored runs, as the error: the fit cannot know a resolution it never saw
            "coverage": float(np.mean(((yt >= plo) & (yt <= phi))[scored])),
            "coverage_seeds_only": float(np.mean(((yt >= slo) & (yt <= shi))[scored])),
            "predictions": [{"row": int(i), "true": float(t), "pred": float(p), "lo": float(a), "hi": float(b)}
                            for i, t, p, a, b in zip(np.flatnonzero(mask), yt, pred, plo, phi)]
            }, err ** 2 - boot_var - noise ** 2


def _scored_runs(split: str, rows: list[dict], te, err: np.ndarray) -> tuple[np.ndarray, dict]:
    """Which held-out runs a split is scored on: all, except that largest-model is scored at the
    common resolution (the other resolutions' errors reported apart)."""
    scored = np.ones(len(err), bool)
    if split != "largest-model":
        return scored, {}
    sizes = te[2]
    at_common = np.isclose(sizes, common_resolution(rows))
    if not at_common.any() or at_common.all():
        return scored, {}
    return at_common, {"other_resolutions": {f"{s:g}": float(err[np.isclose(sizes, s)].mean() * 100)
                                             for s in np.unique(sizes[~at_common])},
                       "scored_at_resolution": float(common_resolution(rows))}


def choose(fitted: dict[str, FormFit], n_splits: int, cfg: FitConfig) -> tuple[str, str]:
    """The form to extrapolate with, and why: the lowest mean held-out error of its predicted cell
    means (the runs' error breaking ties) among physical forms that meet the validation bar, else
    among physical forms, else among all; by in-sample RMSE when nothing could be held out."""
    scored = {k: v.heldout_points + 1e-6 * v.heldout_mae_points for k, v in fitted.items()
              if v.heldout_points is not None}
    if not scored:
        return (min(fitted, key=lambda k: fitted[k].rmse),
                "no held-out split was possible; chosen by in-sample RMSE, which favours flexible forms")
    # a form that turns down along the scale-together path is not chosen for extrapolation
    physical = {k: v for k, v in scored.items() if not fitted[k].non_physical}
    validated = {k: v for k, v in physical.items() if fitted[k].validated.ok}
    pool = validated or physical or scored
    chosen = min(pool, key=pool.get)
    why = (f"lowest mean held-out error of its predicted cell means ({scored[chosen]:.2f} points over "
           f"{n_splits} split(s): "
           + ", ".join(f"{k} {v:.2f}" for k, v in sorted(scored.items(), key=lambda kv: kv[1])) + ")")
    skipped = sorted(set(scored) - set(physical))
    if skipped and physical:
        why += f"; {', '.join(skipped)} not considered: non-physical along the scale-together path"
    elif skipped:
        why += "; every form is non-physical along the scale-together path: its extrapolation is not to be trusted"
    failing = sorted(set(physical) - set(validated))
    if validated and failing:
        why += f"; {', '.join(failing)} not chosen: below the validation bar"
    elif not validated:
        why += (f"; no physical form meets the validation bar (held-out error <= {cfg.max_heldout_points:g} "
                f"points of its cell means and coverage >= {cfg.min_coverage:.0%} up to chance, on every split; "
                f"{chosen}: {fitted[chosen].validated.why_not}): its extrapolation is not validated by these "
                "runs")
    return chosen, why


def _read_gains(result: FitResult, rows: list[dict], baselines: list[dict], cfg: FitConfig) -> None:
    """What pretraining bought, cell by cell, and the trends of those gains, into `result`."""
    pretrained = [{**r, cfg.metric: r[f"{cfg.metric}_pretrained"]} for r in rows] if cfg.gains else rows
    gains = rows if cfg.gains else subtract_baselines(rows, baselines, cfg.metric)[0]
    result.baselines = baselines
    result.gains = gain_table(pretrained, baselines, cfg.metric, cfg.level)
    result.gain_trends = measured_trends(gains, cfg.metric, cfg.level, baseline_variances(rows, baselines, cfg.metric))


def describe_form(name: str, entry: FormFit) -> str:
    """One form's line in the fit's printout."""
    held = ("n/a" if entry.heldout_points is None else
            f"{heldout_text(entry.heldout_points, entry.heldout_floor_points)} pts (cell means; runs "
            f"{entry.heldout_mae_points:.2f})")
    return (f"{name:<18} in-sample RMSE {entry.rmse * 100:5.2f} pts, held-out error {held}"
            f", asymptote {entry.asymptote:.3f}{'' if entry.converged else ' (NOT converged)'}"
            + (f"; NON-PHYSICAL: {entry.non_physical['note']}" if entry.non_physical else ""))


def summary_lines(result: FitResult, cfg: FitConfig) -> list[str]:
    """The fit's closing lines: the choice, the measured trends, what pretraining bought."""
    lines = [f"chosen: {result.chosen} — {result.why}"]
    lines += [f"measured: {describe(t)}" for t in result.trends]
    if result.gains is not None:
        bought = describe_bought(result.gains)
        if bought:
            lines.append(f"random baselines: {bought}")
        if not cfg.gains:  # along data the baseline is the same at every size: that trend is the one above
            lines += [f"measured gain over random: {describe(t)}" for t in result.gain_trends
                      if not same_trend(t, result.trends)]
    both = describe_side_by_side(result.side_by_side)
    if both:
        lines.append(both)
    return lines


def config_of(fit: FitResult) -> FitConfig:
    """The FitConfig a fit was made with; settings a fit written before them lacks take today's defaults."""
    known = {k: v for k, v in fit.config.items() if k in FitConfig.__dataclass_fields__}
    return FitConfig(**known)

