"""`egoscale extrapolate`: predictions far from the data, with intervals, per form.

`--scale-together` is the paper's framing: multiply N, D and the pixel count R^2 of the largest
run by one common factor k, and find the k at which the form reaches the target. Every
bootstrap sample gives its own k, hence an interval. A target above a form's asymptote is
reported as unreachable, not as a number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from egoscale.config import opt
from egoscale.constants import MASK_RATIO
from egoscale.errors import ConfigError
from egoscale.models.flops import decoder_params
from egoscale.scaling.forms import FORMS
from egoscale.scaling.records import (Cheapest, CheapestPlan, ClaimCheck, ClaimForm, FitResult, KToTarget, Prediction,
                                      ScaleTogether, jsonable, level_label, load_fit)

# Named targets with their source. Human top-5 error of a trained annotator on ImageNet:
# 5.1 % (Russakovsky et al. 2015, IJCV, section 6.4), so top-5 accuracy 0.949.
TARGETS = {"human": {"value": 0.949, "metric": "top5",
                     "source": "trained human annotator, 5.1% ImageNet top-5 error (Russakovsky et al. 2015)"}}
K_MAX = 1e12
# The paper's claim: human-level recognition at about 2.5B parameters, 20,000 h of video and 952 px.
CLAIMS = {"paper": {"params": 2.5e9, "hours": 20000.0, "resolution": 952.0, "target": "human",
                    "text": "human-level accuracy at about 2.5B parameters, 20,000 h of video and 952 px (Orhan 2023)"}}
K_PATH = 1e6  # how far along the scale-together path a form must keep rising to count as physical


@dataclass
class ExtrapolateConfig:
    """Per form, with intervals: the predicted accuracy at a given scale (--at), the common factor k by
which N, D and pixels of the largest run must grow to reach a target (--target T --scale-together),
or the cheapest (N, D, R) that reaches it under a compute model (--target T --budget-flops C).
Targets: a number, or 'human' (top-5 0.949, Russakovsky et al. 2015).

examples:
  egoscale extrapolate fit.json --at params=2.5e9,hours=20000,resolution=952
  egoscale extrapolate fit.json --target human --scale-together
  egoscale extrapolate fit.json --target human --budget-flops 1e24"""

    fit: str = opt("fit.json", "the fit (from `egoscale fit`)", positional=True, metavar="FIT")
    at: str | None = opt(None, "params=N,hours=D,resolution=R", metavar="SCALE")
    target: str | None = opt(None, "accuracy in (0, 1) or a named target (human)")
    scale_together: bool = opt(False, "with --target: scale N, D and pixels by one factor k")
    budget_flops: float | None = opt(None, "with --target: the cheapest (N, D, R) reaching it under the MAE compute "
                                     "model (6 x (N x visible tokens + decoder x all tokens) per image), whether "
                                     "it fits this budget, and the frontier")
    epochs: float = opt(1.0, "compute model: passes over the D hours")
    claim: str | None = opt(None, "check a claim: 'paper' (human level at 2.5B parameters, 20,000 h, 952 px): "
                            "every form's prediction there with intervals, and the k each needs to reach the target",
                            choices=list(CLAIMS))
    other_fit: str | None = opt(None, "with --claim: a second fit of the other metric (e.g. top-1 next to top-5)")
    json: bool = opt(False, "print JSON")

    def __post_init__(self):
        if self.at:
            parse_at(self.at)
        elif self.claim:
            pass
        elif not self.target:
            raise ConfigError("give --at params=...,hours=...,resolution=... or --target T with --scale-together "
                              "or --budget-flops C")
        elif not self.scale_together and self.budget_flops is None:
            raise ConfigError("--target needs --scale-together or --budget-flops C")
        if self.target and self.target not in TARGETS:
            try:
                ok = 0 < float(self.target) < 1
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"--target {self.target!r}: a number in (0, 1) or one of {', '.join(TARGETS)}")
        if self.budget_flops is not None and self.budget_flops <= 0:
            raise ConfigError(f"--budget-flops must be positive, got {self.budget_flops:g}")
        if self.epochs <= 0:
            raise ConfigError(f"--epochs must be positive, got {self.epochs:g}")


def main(cfg: ExtrapolateConfig) -> int:
    fit = load_fit(cfg.fit)
    if cfg.claim:
        fits = [fit] + ([load_fit(cfg.other_fit)] if cfg.other_fit else [])
        res = [check_claim(f, cfg.claim, cfg.target) for f in fits]
        print(_json(res) if cfg.json else "\n\n".join(describe_claim(r) for r in res))
        return 0
    if cfg.at:
        res = at(fit, *parse_at(cfg.at))
        print(_json(res) if cfg.json else "\n".join(
            f"{name:<18} {fit.metric} {describe_prediction(r, fit.level)}{'  <- chosen' if name == fit.chosen else ''}"
            for name, r in res.items()))
        return 0
    value, source = resolve_target(fit, cfg.target)
    if cfg.budget_flops is not None:
        res = cheapest(fit, value, cfg.budget_flops, epochs=cfg.epochs)
        print(_json(res) if cfg.json else describe_cheapest(fit, res, source))
        return 0
    res = scale_together(fit, value)
    print(_json(res) if cfg.json else describe_scale_together(fit, res, source))
    return 0


def _json(res) -> str:
    return json.dumps(jsonable(res), indent=2)


def describe_prediction(p: Prediction, level: float) -> str:
    """'0.734  90% CI [0.701, 0.760]  90% PI [0.690, 0.771]', labelled with the fit's level."""
    lab = level_label(level)
    return f"{p.pred:.3f}  {lab} CI [{p.ci[0]:.3f}, {p.ci[1]:.3f}]  {lab} PI [{p.pi[0]:.3f}, {p.pi[1]:.3f}]"


def check_claim(fit: FitResult, name: str = "paper", target: str | None = None) -> ClaimCheck:
    """Every form's prediction at a claim's scale (with intervals at the fit's level), the target,
    the scale-together k each form needs to reach it, and whether the claim lies inside each form's
    interval."""
    c = CLAIMS[name]
    tname = target or c["target"]
    try:
        value, source = resolve_target(fit, tname)
    except ConfigError:  # the named target is defined on another metric: show the predictions anyway
        value, source = None, f"{tname} is defined on {TARGETS[tname]['metric']}, not {fit.metric}"
    preds = at(fit, c["params"], c["hours"], c["resolution"])
    st = scale_together(fit, value) if value is not None else None
    forms = {}
    for form, p in preds.items():
        rec = ClaimForm(prediction=p, non_physical=bool(fit.forms[form].non_physical))
        if st is not None:
            rec.k_to_target = st.forms[form].k
            lo, hi = p.pi
            rec.claim = ("inside: the form's interval reaches the target" if hi >= value > lo else
                         "the form predicts the target is passed there" if lo >= value else
                         "outside: the form's interval stays below the target")
        forms[form] = rec
    return ClaimCheck(claim=c["text"], metric=fit.metric, target=value, target_source=source,
                      scale={k: c[k] for k in ("params", "hours", "resolution")}, forms=forms, level=fit.level,
                      verdict=None if st is None else verdict(fit, st, f"{fit.metric} {value:.3f}"))


def describe_claim(r: ClaimCheck) -> str:
    sc = r.scale
    lines = [f"claim: {r.claim}", f"{r.metric} at {sc['params']:.3g} params, {sc['hours']:.3g} h, "
             f"{sc['resolution']:.0f} px; target "
             + (f"{r.target:.3f} ({r.target_source})" if r.target is not None else r.target_source)]
    for name, p in r.forms.items():
        need = "" if r.target is None else (f"; reaches the target at k={p.k_to_target:.3g}" if p.k_to_target
                                            else "; never reaches it")
        lines.append(f"  {name:<18} {describe_prediction(p.prediction, r.level)}{need}"
                     + (f"; {p.claim}" if p.claim else "") + ("  (NON-PHYSICAL)" if p.non_physical else ""))
    if r.verdict:
        lines.append(r.verdict)
    return "\n".join(lines)


def verdict(fit: FitResult, res: ScaleTogether, target_text: str) -> str:
    """One sentence on what the forms together say about reaching a target (`scale_together`'s
    result): a scale when the physical forms agree within a factor of 10, else that the runs
    cannot decide, with every form's answer."""
    def answer(name, r: KToTarget):
        bad = " (non-physical)" if fit.forms[name].non_physical else ""
        return f"{name} {'unreachable' if r.k is None else format(r.k, '.3g') + 'x'}{bad}"

    forms = res.forms
    physical = {k: r for k, r in forms.items() if not fit.forms[k].non_physical}
    ks = [r.k for r in physical.values()]
    everyone = "; ".join(answer(k, r) for k, r in forms.items())
    if physical and all(k is not None for k in ks) and max(ks) / min(ks) <= 10:
        r = physical[fit.chosen] if fit.chosen in physical else next(iter(physical.values()))
        return (f"{target_text} needs about {r.params:.3g} params, {r.hours:.3g} h, {r.resolution:.0f} px "
                f"(k = {min(ks):.3g}-{max(ks):.3g} x the largest run, the physical forms agree within 10x: "
                f"{everyone})")
    return (f"the runs cannot decide where {target_text} is: the forms disagree (k = how many times the largest "
            f"run's model, data and pixels: {everyone})")


def describe_cheapest(fit: FitResult, res: CheapestPlan, source: str) -> str:
    lines = [f"target {fit.metric} {res.target:.3f} ({source}); budget {res.budget:.3g} FLOPs, "
             f"{res.epochs:g} epoch(s) over the data:"]
    for name, r in res.forms.items():
        if r.unreachable:
            lines.append(f"  {name:<18} unreachable: {r.unreachable}")
            continue
        edge = f"; at the edge of the searched {', '.join(r.at_search_edge)}" if r.at_search_edge else ""
        iv, ivs = r.flops_interval, ""
        if iv and iv[0] is not None:
            upper = f"{iv[1]:.3g}" if iv[1] is not None else "unbounded"
            ivs = f"; {fit.label} interval [{iv[0]:.3g}, {upper}], P(within budget) {r.p_within_budget:.0%}"
        lines.append(f"  {name:<18} cheapest: {r.params:.3g} params, {r.hours:.3g} h, {r.resolution:.0f} px "
                     f"= {r.flops:.3g} FLOPs ({'within' if r.within_budget else 'OVER'} budget{ivs}); "
                     f"frontier of {len(r.frontier)} model sizes in --json{edge}")
    return "\n".join(lines)


def describe_scale_together(fit: FitResult, res: ScaleTogether, source: str) -> str:
    b = res.base
    lines = [f"target {fit.metric} {res.target:.3f} ({source}); from the largest run N={b['params']:.3g}, "
             f"D={b['hours']:.3g} h, R={b['resolution']:.0f} px, scaling N, D, pixels by k:"]
    for name, r in res.forms.items():
        mark = "  <- chosen" if name == fit.chosen else ""
        if fit.forms[name].non_physical:
            mark += f"  (NON-PHYSICAL: {fit.forms[name].non_physical['note']})"
        if r.unreachable:
            lines.append(f"  {name:<18} unreachable: {r.unreachable}{mark}")
            continue
        iv = r.k_interval
        ivs = f"{fit.label} CI k in [{iv[0]:.3g}, {iv[1]:.3g}]" if iv else (r.note or "")
        lines.append(f"  {name:<18} k={r.k:.3g}: {r.params:.3g} params, {r.hours:.3g} h, "
                     f"{r.resolution:.0f} px; {ivs}{mark}")
    lines.append(verdict(fit, res, f"{fit.metric} {res.target:.3f}"))
    return "\n".join(lines)


def parse_at(text: str) -> tuple[float, float, float]:
    vals = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        try:
            vals[k.strip()] = float(v)
        except ValueError:
            raise ConfigError(f"--at {text!r}: expected params=...,hours=...,resolution=...") from None
    missing = {"params", "hours", "resolution"} - set(vals)
    if missing:
        raise ConfigError(f"--at {text!r}: missing {', '.join(sorted(missing))}")
    return vals["params"], vals["hours"], vals["resolution"]


def resolve_target(fit: FitResult, target: str) -> tuple[float, str]:
    if target in TARGETS:
        t = TARGETS[target]
        if t["metric"] != fit.metric:
            raise ConfigError(f"target {target!r} is defined on {t['metric']}, but the fit models {fit.metric}; "
                              f"fit with --metric {t['metric']}, or give a number")
        return t["value"], t["source"]
    try:
        v = float(target)
    except ValueError:
        raise ConfigError(f"--target {target!r}: a number in (0, 1) or one of {', '.join(TARGETS)}") from None
    if not 0 < v < 1:
        raise ConfigError(f"--target {v}: accuracy must be in (0, 1)")
    return v, "given number"


def at(fit: FitResult, N: float, D: float, R: float) -> dict[str, Prediction]:
    """Every form's prediction at N parameters, D hours and R px, with intervals at the fit's level."""
    out = {}
    lo, hi = (1 - fit.level) / 2 * 100, (1 + fit.level) / 2 * 100
    for name, e in fit.forms.items():
        form = FORMS[name]
        samples = np.array([form.predict(t, N, D, R) for t in e.bootstrap]).ravel()
        # one new run: parameter uncertainty + seed noise + the form's own (held-out) error
        sd = (fit.noise_sigma ** 2 + e.form_sigma ** 2) ** 0.5
        noisy = np.clip(samples + np.random.default_rng(0).normal(0, sd or 1e-12, samples.shape), 0.0, 1.0)
        out[name] = Prediction(pred=float(form.predict(e.theta, N, D, R)),
                               ci=[float(np.percentile(samples, lo)), float(np.percentile(samples, hi))],
                               pi=[float(np.percentile(noisy, lo)), float(np.percentile(noisy, hi))])
    return out


def base_run(rows: list[dict]) -> tuple[float, float, float]:
    """The largest run: the maximum N, D and R among the fitted rows."""
    return max(r["params"] for r in rows), max(r["data_hours"] for r in rows), max(r["img_size"] for r in rows)


def path_range(rows: list[dict]) -> tuple[float, float]:
    """The scale-together path's range checked for physical behaviour: from the smallest run's
    scale (the smallest of N, D and pixels relative to the largest run) to k = K_PATH."""
    N0, D0, R0 = base_run(rows)
    lo = min(min(r["params"] / N0, r["data_hours"] / D0, (r["img_size"] / R0) ** 2) for r in rows)
    return max(lo, 1e-9), K_PATH


def turning_point(form, theta, rows: list[dict], points: int = 600, tol: float = 1e-4) -> dict | None:
    """Where a form stops rising along the scale-together path, or None if it never does.

    More model, data and pixels together should never lower accuracy, and less of all three
    should never raise it. A form whose prediction falls anywhere as k grows past the data (up to
    K_PATH), or rises as k shrinks below it (down to the smallest run), is non-physical there:
    its extrapolation says more about the form than about the runs. `tol` (accuracy) ignores
    flat stretches.
    """
    base = base_run(rows)
    lo, hi = path_range(rows)
    ks = np.geomspace(lo, hi, points)
    pred = np.asarray(form.predict(theta, base[0] * ks, base[1] * ks, base[2] * np.sqrt(ks)), float)
    peak = np.maximum.accumulate(pred)
    falls = np.flatnonzero(peak - pred > tol)
    if not len(falls):
        return None
    i = int(np.argmax(pred[: falls[0] + 1]))  # the highest point before the first fall
    j = i + int(np.argmin(pred[i:]))  # the lowest point after it
    if ks[j] < 1:  # a valley below the data: shrinking every axis raises the prediction
        note = (f"below the data it rises as scale shrinks: {pred[j]:.3f} at k={ks[j]:.3g}, "
                f"{pred[0]:.3f} at k={ks[0]:.3g}")
    else:
        note = f"turns down at k={ks[i]:.3g}: {pred[i]:.3f} there, {pred[j]:.3f} at k={ks[j]:.3g}"
    k = float(ks[i] if ks[j] >= 1 else ks[j])  # where it turns: the peak beyond, or the valley below
    return {"k": k, "params": float(base[0] * k), "hours": float(base[1] * k), "resolution": float(base[2] * k ** 0.5),
            "accuracy": float(pred[i]), "lowest_after": float(pred[j]), "note": note}


def k_for_target(form, theta, base, target) -> float | None:
    """The scale-together factor k from `base` (N, D, R of the largest run) at which the form at
    theta reaches `target`: 1 when already there, None when not within K_MAX."""
    N0, D0, R0 = base
    g = lambda lk: float(form.predict(theta, N0 * math.exp(lk), D0 * math.exp(lk), R0 * math.exp(lk / 2))) - target  # noqa: E731
    if g(0.0) >= 0:
        return 1.0
    if g(math.log(K_MAX)) < 0:
        return None  # not reached at any scale up to K_MAX: beyond the form's reach
    return math.exp(brentq(g, 0.0, math.log(K_MAX), xtol=1e-6))


def scale_together(fit: FitResult, target: float) -> ScaleTogether:
    """Per form: the common factor k (N x k, D x k, pixels x k) that reaches `target`, with intervals."""
    base = base_run(fit.data)
    lvl = fit.level
    out = ScaleTogether(base={"params": base[0], "hours": base[1], "resolution": base[2]}, target=target, forms={})
    for name, e in fit.forms.items():
        form = FORMS[name]
        asym = form.asymptote(e.theta)
        k = k_for_target(form, e.theta, base, target)
        ks = [k_for_target(form, t, base, target) for t in e.bootstrap]
        reached = [x for x in ks if x is not None]
        frac = len(reached) / len(ks) if ks else 0.0
        rec = KToTarget(asymptote=asym, reachable_fraction=frac)
        if k is None:
            rec.unreachable = (f"{name} levels off at {asym:.3f} (its asymptote), below the target {target:.3f}"
                               if asym < target else f"{name} does not reach {target:.3f} within k <= {K_MAX:g}")
        else:
            rec.k, rec.params, rec.hours, rec.resolution = k, base[0] * k, base[1] * k, base[2] * math.sqrt(k)
        if reached and frac >= (1 + lvl) / 2:  # an interval only when most samples reach the target
            lo, hi = np.percentile(reached, [(1 - lvl) / 2 * 100, (1 + lvl) / 2 * 100])
            rec.k_interval = [float(lo), float(hi)]
            rec.params_interval = [base[0] * lo, base[0] * hi]
            rec.hours_interval = [base[1] * lo, base[1] * hi]
            rec.resolution_interval = [base[2] * math.sqrt(lo), base[2] * math.sqrt(hi)]
        elif ks:
            rec.note = (f"only {frac:.0%} of bootstrap fits reach the target: the upper end of the interval is "
                        "unbounded")
        out.forms[name] = rec
    return out


def curve(fit: FitResult, ks: np.ndarray) -> dict:
    """Predicted accuracy along the scale-together path, per form: median and interval bands."""
    base = base_run(fit.data)
    out = {}
    for name, e in fit.forms.items():
        form = FORMS[name]
        N, D, R = base[0] * ks, base[1] * ks, base[2] * np.sqrt(ks)
        samples = np.array([form.predict(t, N, D, R) for t in e.bootstrap])
        out[name] = {"pred": form.predict(e.theta, N, D, R).tolist(),
                     "lo": np.percentile(samples, (1 - fit.level) / 2 * 100, 0).tolist(),
                     "hi": np.percentile(samples, (1 + fit.level) / 2 * 100, 0).tolist()}
    return out


# --- compute ---------------------------------------------------------------------------------
def train_flops(N, D, R, epochs: float = 1.0, fps: float = 1.0, patch: int = 14, mask_ratio: float = MASK_RATIO,
                decoder: float | None = None):
    """Compute model of one MAE pretraining run (FLOPs): 6 x (N x visible tokens + decoder params x
    all tokens) per image (forward + backward, 2 FLOPs per multiply-add, the linear layers), times
    the images seen, epochs x frames of D hours at `fps`. `decoder`: its parameters (default: the
    paper's 512 x 8, `models.flops.decoder_params`).
    """
    decoder = decoder_params() if decoder is None else decoder
    tokens = (np.asarray(R, float) / patch) ** 2
    per_image = 6.0 * (np.asarray(N, float) * tokens * (1 - mask_ratio) + decoder * tokens)
    return per_image * epochs * np.asarray(D, float) * 3600.0 * fps


def cheapest(fit: FitResult, target: float, budget: float | None = None, epochs: float = 1.0, fps: float = 1.0,
             points: int = 48) -> CheapestPlan:
    """Per form: the cheapest (N, D, R) on a log grid whose predicted accuracy reaches `target`,
    its compute, whether it fits `budget`, and the frontier (the cheapest D and R for each N).

    Uncertainty from the fit's bootstrap: each resampled fit gives its own cheapest compute
    (infinite when it never reaches the target on the grid). `flops_interval` holds their
    central `level` quantiles (the upper end None = unbounded: too many samples never get
    there), `reachable_fraction` the share that gets there at all, and with a budget
    `p_within_budget` the share whose cheapest compute fits it.
    """
    Ns = np.geomspace(1e6, 1e12, points)
    Ds = np.geomspace(1e-2, 1e7, points)
    Rs = np.geomspace(112, 2048, points // 2)
    NN, DD, RR = np.meshgrid(Ns, Ds, Rs, indexing="ij")
    cost = train_flops(NN, DD, RR, epochs, fps)
    lvl = fit.level
    out = CheapestPlan(target=target, budget=budget, epochs=epochs, fps=fps, forms={})
    for name, e in fit.forms.items():
        form = FORMS[name]
        boot = np.array([cost[reach].min() if (reach := form.predict(t, NN, DD, RR) >= target).any() else np.inf
                         for t in e.bootstrap])
        rec = Cheapest()
        if len(boot):
            # "lower"/"higher" quantiles pick sample values, so an unreachable sample stays inf, not nan
            lo, hi = (float(np.quantile(boot, (1 - lvl) / 2, method="lower")),
                      float(np.quantile(boot, (1 + lvl) / 2, method="higher")))
            rec.flops_interval = [lo if math.isfinite(lo) else None, hi if math.isfinite(hi) else None]
            rec.reachable_fraction = float(np.isfinite(boot).mean())
            if budget is not None:
                rec.p_within_budget = float((boot <= budget).mean())
        out.forms[name] = rec
        ok = form.predict(e.theta, NN, DD, RR) >= target
        if not ok.any():
            rec.unreachable = (f"no N <= 1e12, D <= 1e7 h, R <= 2048 px reaches {target:.3f} "
                               f"(asymptote {form.asymptote(e.theta):.3f})")
            continue
        c = np.where(ok, cost, np.inf)
        i = np.unravel_index(np.argmin(c), c.shape)
        rec.params, rec.hours, rec.resolution = float(Ns[i[0]]), float(Ds[i[1]]), float(Rs[i[2]])
        rec.flops = float(c[i])
        # the optimum on the searched range's edge: the form wants more (or less) there
        rec.at_search_edge = [n for n, k, m in (("params", i[0], points), ("hours", i[1], points),
                                                ("resolution", i[2], points // 2)) if k in (0, m - 1)]
        if budget is not None:
            rec.within_budget = bool(c[i] <= budget)
        for a in range(points):  # for each model size: the cheapest data and resolution that reach the target
            ca = c[a]
            if np.isfinite(ca).any():
                j = np.unravel_index(np.argmin(ca), ca.shape)
                rec.frontier.append({"params": float(Ns[a]), "hours": float(Ds[j[0]]), "resolution": float(Rs[j[1]]),
                                     "flops": float(ca[j])})
    return out
