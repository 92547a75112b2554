"""`egoscale plan`: which runs to pay for next, chosen for how much they narrow the answer to one
question far beyond the grid, per GPU-hour.

The question is a prediction at a scale (`--at`) or the scale-together factor k that reaches a
target (`--target T --scale-together`, as log10 k). Its uncertainty has three parts, all from the
fit: each form's parameter spread (its bootstrap covariance), the seed noise and the form's own
error of a new run, and the disagreement between the forms. The forms are averaged with equal
prior weights over the physical ones (Bayesian model averaging); the answer's variance is

    V = sum_f w_f Var_f(q) + sum_f w_f (q_f - q_bar)^2.

A candidate run at x changes both terms. Each form's parameter covariance tightens as in a
linearised Bayesian update, Sigma' = (Sigma^-1 + J(x)^T J(x) / s^2)^-1, with J the form's gradient
at x and s^2 the seed noise plus the form's own error: the c-optimal design criterion for the
variance g^T Sigma' g of the question (g its gradient). The weights move with what the run will
show: the expected between-form term is a Monte-Carlo average over the run's outcome drawn from
each form in turn (the expected posterior of Bayesian model averaging), so a run where the forms'
predictions differ by more than the noise is worth more than one where they agree. Cells are
chosen greedily by expected reduction of V per GPU-hour until the budget is spent.
"""

from __future__ import annotations

import csv
import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import norm

from egoscale.config import opt
from egoscale.errors import ConfigError, DataError
from egoscale.fileio import write_json_atomic
from egoscale.scaling.extrapolate import K_MAX, k_for_target, base_run, parse_at, resolve_target
from egoscale.scaling.forms import FORMS, features
from egoscale.scaling.records import FitResult, load_fit

DRAWS = 256  # Monte-Carlo outcomes per evaluation of the between-form term


@dataclass
class PlanConfig:
    """Choose the runs to pay for next: those that narrow the answer to one question far beyond the grid
(a prediction --at a scale, or the scale that reaches --target) the most per GPU-hour, counting
parameter spread, seed noise and the disagreement between the forms (docs/scaling.md, "Planning").

CANDIDATES: a CSV of runs that could be made (columns model, img_size, data_fraction or data_hours,
seed, optional gpu_hours, and params for a model outside the registry) or a grid YAML (its cells,
priced as `sweep --dry-run` prices them).

examples:
  egoscale plan fit.json --candidates configs/paper_grid.yaml --at params=2.5e9,hours=20000,resolution=952 \\
      --budget-gpu-hours 2000 --out plan.json --grid-out next.yaml
  egoscale plan fit.json --candidates cells.csv --grid configs/paper_grid.yaml --target 0.9 --scale-together \\
      --budget-gpu-hours 500"""

    fit: str = opt("fit.json", "the fit (from `egoscale fit`), or a results table, fitted here with `egoscale fit`'s "
                   "defaults (into OUT's folder as plan_fit.json)", positional=True, metavar="FIT_OR_RESULTS")
    metric: str = opt("top1", "with a results table: the accuracy column to fit", choices=["top1", "top5"])
    candidates: str = opt("candidates.csv", "runs that could be made: a CSV, or a grid (YAML, or a sweep's grid.json)",
                          required=True)
    budget_gpu_hours: float = opt(100.0, "GPU-hours to spend", required=True)
    at: str | None = opt(None, "the question: the prediction at params=N,hours=D,resolution=R", metavar="SCALE")
    target: str | None = opt(None, "the question: the scale that reaches this accuracy (with --scale-together)")
    scale_together: bool = opt(False, "with --target: k, the common factor of N, D and pixels")
    grid: str | None = opt(None, "a grid YAML whose settings price CSV candidates without gpu_hours (and the "
                           "base of --grid-out)")
    out: str = opt("plan.json", "where to write the plan")
    grid_out: str | None = opt(None, "write the chosen cells as a grid that `egoscale sweep` runs")
    seed: int = opt(0, "seed of the Monte-Carlo outcomes")

    def __post_init__(self):
        if (self.at is None) == (self.target is None):
            raise ConfigError("ask one question: --at params=...,hours=...,resolution=... or --target T "
                              "--scale-together")
        if self.at:
            parse_at(self.at)
        if self.target is not None and not self.scale_together:
            raise ConfigError("--target needs --scale-together (the scale k that reaches it)")
        if self.budget_gpu_hours <= 0:
            raise ConfigError(f"--budget-gpu-hours must be positive, got {self.budget_gpu_hours:g}")


@dataclass
class Candidate:
    id: str
    model: str
    img_size: int
    data_fraction: float | None
    data_hours: float
    seed: int
    gpu_hours: float
    params: float = 0.0  # N at the architecture's reference resolution, as the fit reads it


@dataclass
class FormState:
    """One form's part of the answer: its weight, its answer, the answer's gradient, the parameter
    covariance and the noise of one new run."""

    name: str
    weight: float
    theta: np.ndarray
    q: float
    grad: np.ndarray
    cov: np.ndarray
    noise: float
    _jac: dict = field(default_factory=dict, repr=False)

    def jac(self, c: Candidate) -> tuple[float, np.ndarray]:
        """The form's prediction and gradient at a candidate, once per candidate (the greedy choice
        asks again at every step)."""
        if c.id not in self._jac:
            n, d, r = features(np.array([c.params]), np.array([c.data_hours]), np.array([float(c.img_size)]))
            pred, jac = FORMS[self.name].jacobian(self.theta, n, d, r)
            self._jac[c.id] = (float(pred[0]), jac[0])
        return self._jac[c.id]


def main(cfg: PlanConfig) -> int:
    plan = make_plan(cfg)
    for line in describe_plan(plan):
        print(line)
    return 0


def make_plan(cfg: PlanConfig) -> dict:
    fit = _fit_of(cfg)
    question = _question(fit, cfg)
    cands, skipped = read_candidates(cfg.candidates, fit, cfg.grid)
    states = form_states(fit, question)
    planner = Planner(states, np.random.default_rng(cfg.seed))
    chosen = planner.greedy(cands, cfg.budget_gpu_hours)
    z = float(norm.ppf((1 + fit.level) / 2))
    now = planner.summary([])
    after = planner.summary([c for c, _ in chosen])
    plan = {"question": question["text"], "unit": question["unit"], "level": fit.level, "fit": str(cfg.fit),
            "candidates": str(cfg.candidates), "budget_gpu_hours": cfg.budget_gpu_hours,
            "spent_gpu_hours": sum(c.gpu_hours for c, _ in chosen),
            "forms": {s.name: {"weight": s.weight, "answer": s.q, "sd": math.sqrt(max(0.0, s.grad @ s.cov @ s.grad))}
                      for s in states},
            "now": _interval(now, z), "after": _interval(after, z),
            "chosen": [{**_describe_candidate(c), **why, "interval_after": _interval(why.pop("state"), z)}
                       for c, why in chosen],
            "not_considered": skipped}
    write_json_atomic(cfg.out, plan)
    if cfg.grid_out:
        write_grid(cfg, [c for c, _ in chosen])
        plan["grid_out"] = cfg.grid_out
        write_json_atomic(cfg.out, plan)
    return plan


def _fit_of(cfg: PlanConfig) -> FitResult:
    """The fit the plan reads: fit.json as given, or a results table fitted with the defaults."""
    if Path(cfg.fit).suffix != ".csv":
        return load_fit(cfg.fit)
    from egoscale.scaling.fit import FitConfig, run_fit

    out = Path(cfg.out).with_name("plan_fit.json")
    return run_fit(FitConfig(table=cfg.fit, out=str(out), metric=cfg.metric), log=lambda *a: None)


def _interval(state: dict, z: float) -> dict:
    sd = math.sqrt(max(0.0, state["variance"]))
    return {"mean": state["mean"], "sd": sd, "interval": [state["mean"] - z * sd, state["mean"] + z * sd],
            "parameters_sd": math.sqrt(max(0.0, state["within"])), "forms_sd": math.sqrt(max(0.0, state["between"]))}


def _describe_candidate(c: Candidate) -> dict:
    return {"cell": c.id, "model": c.model, "img_size": c.img_size, "data_fraction": c.data_fraction,
            "data_hours": c.data_hours, "seed": c.seed, "gpu_hours": c.gpu_hours}


# --- the question -------------------------------------------------------------------------------
def _question(fit: FitResult, cfg: PlanConfig) -> dict:
    if cfg.at:
        N, D, R = parse_at(cfg.at)
        return {"kind": "at", "scale": (N, D, R), "unit": fit.metric,
                "text": f"{fit.metric} at {N:.3g} params, {D:.3g} h, {R:.0f} px"}
    value, source = resolve_target(fit, cfg.target)
    return {"kind": "k", "target": value, "unit": "log10 k", "base": base_run(fit.data),
            "text": f"log10 k, the scale-together factor from the largest run that reaches {fit.metric} {value:.3f} "
                    f"({source})"}


def answer(form: str, theta: np.ndarray, question: dict) -> float:
    """One form's answer to the question at parameters theta."""
    if question["kind"] == "at":
        return float(FORMS[form].predict(theta, *question["scale"]))
    k = k_for_target(FORMS[form], theta, question["base"], question["target"])
    return math.log10(K_MAX) if k is None else math.log10(k)  # unreachable: as far as the search looks


def form_states(fit: FitResult, question: dict) -> list[FormState]:
    """The physical forms (all, when none is), equally weighted, with their answers, gradients and
    bootstrap covariances."""
    names = [k for k, f in fit.forms.items() if not f.non_physical] or list(fit.forms)
    out = []
    for name in names:
        f = fit.forms[name]
        theta = np.asarray(f.theta, float)
        boot = np.asarray(f.bootstrap, float)
        cov = np.cov(boot.T) if len(boot) > 2 else np.eye(len(theta)) * 1e-4
        cov = np.atleast_2d(cov) + np.eye(len(theta)) * 1e-10
        q = answer(name, theta, question)
        grad = np.zeros(len(theta))
        for i in range(len(theta)):  # central differences: the k question has no closed-form gradient
            h = 1e-4 * (1 + abs(theta[i]))
            up, down = theta.copy(), theta.copy()
            up[i] += h
            down[i] -= h
            grad[i] = (answer(name, up, question) - answer(name, down, question)) / (2 * h)
        noise = math.sqrt(fit.noise_sigma ** 2 + f.form_sigma ** 2) or 1e-3
        out.append(FormState(name, 1.0 / len(names), theta, q, grad, cov, noise))
    return out


# --- candidates ---------------------------------------------------------------------------------
def hours_per_fraction(fit: FitResult) -> float | None:
    ratios = [r["data_hours"] / r["data_fraction"] for r in fit.data if r.get("data_fraction")]
    return float(np.median(ratios)) if ratios else None


def read_candidates(path: str, fit: FitResult, grid_path: str | None) -> tuple[list[Candidate], list[dict]]:
    """Candidates from a CSV or a grid YAML, priced, with N as the fit reads it; runs already in the
    fit (same model, size, data and seed) are left out and listed."""
    from egoscale.scaling.fit import reference_params

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such candidates file")
    rows = _grid_rows(p) if p.suffix in (".yaml", ".yml", ".json") else _csv_rows(p, grid_path)
    per = hours_per_fraction(fit)
    # a run is its model, size, data and pretraining seed (whole-data repeats share the subset's seed)
    done = {(r.get("model"), float(r["img_size"]), round(float(r["data_hours"]), 9),
             r.get("pretrain_seed") if r.get("pretrain_seed") is not None else r.get("seed")) for r in fit.data}
    cands, skipped = [], []
    for r in rows:
        if r.get("data_hours") is None:
            if per is None:
                raise DataError(f"{p}: {r['id']}: give data_hours (the fit's rows say no hours per data fraction)")
            r["data_hours"] = r["data_fraction"] * per
        n = reference_params([{"model": r["model"], "params": r.get("params") or 0.0, "img_size": r["img_size"]}])
        c = Candidate(r["id"], r["model"], int(r["img_size"]), r.get("data_fraction"), float(r["data_hours"]),
                      int(r["seed"]), float(r["gpu_hours"]), float(n[0]["params"]))
        key = (c.model, float(c.img_size), round(c.data_hours, 9), float(c.seed))
        if key in done:
            skipped.append({"cell": c.id, "why": "already in the fit"})
        elif not c.gpu_hours > 0:
            skipped.append({"cell": c.id, "why": "no cost"})
        else:
            cands.append(c)
    if not cands:
        raise DataError(f"{p}: no candidate left to choose from ({len(skipped)} already in the fit or without cost)")
    return cands, skipped


def _grid_rows(path: Path) -> list[dict]:
    from egoscale.sweep.grid import cells, load_grid
    from egoscale.sweep.sweep import estimate

    grid = load_grid(path)
    cost = {r["cell"]: r["gpu_hours"] for r in estimate(grid)}
    return [{"id": c.id, "model": c.model, "img_size": c.img_size, "data_fraction": c.fraction, "seed": c.seed,
             "gpu_hours": cost[c.id]} for c in cells(grid)]


def _csv_rows(path: Path, grid_path: str | None) -> list[dict]:
    with open(path, newline="") as f:
        raw = list(csv.DictReader(f))
    if not raw:
        raise DataError(f"{path}: no candidate rows")
    need = {"model", "img_size", "seed"} - set(raw[0])
    if need or not {"data_fraction", "data_hours"} & set(raw[0]):
        raise DataError(f"{path}: a candidates CSV needs columns model, img_size, seed and data_fraction or "
                        f"data_hours (missing {', '.join(sorted(need)) or 'data_fraction/data_hours'})")
    rows = []
    for i, r in enumerate(raw, 2):
        try:
            frac = float(r["data_fraction"]) if r.get("data_fraction") else None
            hours = float(r["data_hours"]) if r.get("data_hours") else None
            row = {"model": r["model"], "img_size": int(float(r["img_size"])), "seed": int(float(r["seed"])),
                   "data_fraction": frac, "data_hours": hours,
                   "params": float(r["params"]) if r.get("params") else None,  # for models outside the registry
                   "gpu_hours": float(r["gpu_hours"]) if r.get("gpu_hours") else None}
        except ValueError as e:
            raise DataError(f"{path}:{i}: {e}") from None
        row["id"] = f"{row['model']}@{row['img_size']}_{frac if frac is not None else hours:g}" \
                    f"{'' if frac is not None else 'h'}_s{row['seed']}"
        rows.append(row)
    unpriced = [r for r in rows if r["gpu_hours"] is None]
    if unpriced:
        if not grid_path:
            raise ConfigError(f"{path}: {len(unpriced)} candidate(s) without gpu_hours, e.g. {unpriced[0]['id']}: "
                              "give the column, or --grid GRID.yaml to price them as `sweep --dry-run` does")
        _price(unpriced, grid_path)
    return rows


def _price(rows: list[dict], grid_path: str) -> None:
    from egoscale.sweep.grid import Cell, load_grid
    from egoscale.sweep.sweep import estimate_cell

    grid = load_grid(grid_path)
    for r in rows:
        if r["data_fraction"] is None:
            raise ConfigError(f"{r['id']}: a run priced with --grid needs its data_fraction (the grid's subsets)")
        r["gpu_hours"] = estimate_cell(grid, Cell(r["model"], r["img_size"], r["data_fraction"], r["seed"]))[
            "gpu_hours"]


# --- the choice ---------------------------------------------------------------------------------
class Planner:
    """The expected variance of the answer after a set of runs, and the greedy choice."""

    def __init__(self, states: list[FormState], rng: np.random.Generator):
        self.states = states
        self.z = rng.standard_normal((DRAWS, 64))  # common outcomes for every set compared (paired differences)
        self.truth = rng.choice(len(states), size=DRAWS, p=[s.weight for s in states])

    def summary(self, chosen: list[Candidate]) -> dict:
        """Expected answer variance after `chosen`: within forms (parameters), between forms, total."""
        S = self.states
        post_var = []
        preds, sds = np.zeros((len(S), len(chosen))), np.zeros((len(S), len(chosen)))
        for i, s in enumerate(S):
            info = np.linalg.inv(s.cov)
            for j, c in enumerate(chosen):
                pred, J = s.jac(c)
                preds[i, j] = pred
                sds[i, j] = math.sqrt(s.noise ** 2 + float(J @ s.cov @ J))
                info = info + np.outer(J, J) / s.noise ** 2
            post_var.append(float(s.grad @ np.linalg.inv(info) @ s.grad))
        post_var = np.array(post_var)
        q = np.array([s.q for s in S])
        w0 = np.array([s.weight for s in S])
        if chosen:  # outcomes drawn from each true form; each form's weight after seeing them
            y = preds[self.truth] + self.z[:, :len(chosen)] * sds[self.truth]
            loglik = -0.5 * (((y[:, None, :] - preds[None]) / sds[None]) ** 2).sum(-1) - np.log(sds).sum(-1)[None]
            w = w0[None] * np.exp(loglik - loglik.max(1, keepdims=True))
            w /= w.sum(1, keepdims=True)
        else:
            w = w0[None]
        mean = w @ q
        between = float(np.mean(w @ (q ** 2) - mean ** 2))
        within = float(np.mean(w @ post_var))
        return {"mean": float(w0 @ q), "within": within, "between": max(0.0, between),
                "variance": within + max(0.0, between)}

    def greedy(self, cands: list[Candidate], budget: float) -> list[tuple[Candidate, dict]]:
        chosen: list[Candidate] = []
        out = []
        state = self.summary(chosen)
        left = budget
        pool = list(cands)
        while True:
            best, best_score, best_state = None, 0.0, None
            for c in pool:
                if c.gpu_hours > left + 1e-9 or len(chosen) >= self.z.shape[1]:
                    continue
                new = self.summary(chosen + [c])
                gain = state["variance"] - new["variance"]
                score = gain / c.gpu_hours
                if gain > 1e-12 * max(state["variance"], 1e-30) and score > best_score:
                    best, best_score, best_state = c, score, new
            if best is None:
                return out
            why = self._why(best, state, best_state)
            chosen.append(best)
            pool.remove(best)
            left -= best.gpu_hours
            out.append((best, {**why, "state": best_state}))
            state = best_state

    def _why(self, c: Candidate, before: dict, after: dict) -> dict:
        """What a run pins down: the forms it tells apart (where they differ most, beyond the noise),
        or the parameter whose share of the answer's spread shrinks most."""
        forms_gain = before["between"] - after["between"]
        param_gain = before["within"] - after["within"]
        preds = {s.name: s.jac(c)[0] for s in self.states}
        text = []
        if len(preds) > 1 and forms_gain > 0.25 * (forms_gain + param_gain):
            a, b = max(((a, b) for a in preds for b in preds if a < b), key=lambda p: abs(preds[p[0]] - preds[p[1]]))
            noise = max(s.noise for s in self.states)
            text.append(f"tells apart {a} and {b}: they predict {preds[a]:.3f} and {preds[b]:.3f} here, "
                        f"{abs(preds[a] - preds[b]) / noise:.1f} x the noise of a run apart")
        if param_gain > 0 or not text:
            s = max(self.states, key=lambda s: s.weight * float(_param_shares(s, c).sum()))
            i = int(np.argmax(_param_shares(s, c)))
            name = FORMS[s.name].params[i]
            text.append(f"pins down {s.name}'s {_MEANING.get(name, name)}")
        return {"why": "; ".join(text), "expected_gain_forms": forms_gain, "expected_gain_parameters": param_gain}


# what each parameter of each form is, for the plan's reasons
_MEANING = {"a": "intercept a", "b": "model slope b", "c": "data slope c", "e": "resolution slope e",
            "f": "model x data term f", "g": "model x resolution term g", "h": "data x resolution term h",
            "logit_E": "floor E", "ln_A": "model term A", "ln_B": "data term B", "ln_C": "resolution term C",
            "ln_alpha": "model exponent alpha", "ln_beta": "data exponent beta",
            "ln_gamma": "resolution exponent gamma"}


def _param_shares(s: FormState, c: Candidate) -> np.ndarray:
    """How much each parameter's contribution to the answer's variance falls with one run at c."""
    _, J = s.jac(c)
    new = np.linalg.inv(np.linalg.inv(s.cov) + np.outer(J, J) / s.noise ** 2)
    return s.grad ** 2 * (np.diag(s.cov) - np.diag(new))


# --- output -------------------------------------------------------------------------------------
def describe_plan(plan: dict) -> list[str]:
    lab = f"{plan['level']:.0%}"
    now, after = plan["now"], plan["after"]
    lines = [f"question: {plan['question']}",
             f"now: {now['mean']:.3f}, {lab} interval [{now['interval'][0]:.3f}, {now['interval'][1]:.3f}] "
             f"(sd {now['sd']:.3f}: parameters {now['parameters_sd']:.3f}, forms {now['forms_sd']:.3f})"]
    for name, f in plan["forms"].items():
        lines.append(f"  {name:<18} answers {f['answer']:.3f} (sd {f['sd']:.3f}), weight {f['weight']:.2f}")
    lines.append(f"plan: {len(plan['chosen'])} run(s), {plan['spent_gpu_hours']:.3g} of {plan['budget_gpu_hours']:g} "
                 "GPU-hours")
    for i, c in enumerate(plan["chosen"], 1):
        iv = c["interval_after"]
        lines.append(f"  {i:>2}. {c['cell']:<26} {c['gpu_hours']:9.3g} GPU-h  -> sd {iv['sd']:.3f}  {c['why']}")
    narrower = (1 - after["sd"] / now["sd"]) * 100 if now["sd"] else 0.0
    lines.append(f"after: {lab} interval [{after['interval'][0]:.3f}, {after['interval'][1]:.3f}] "
                 f"(sd {after['sd']:.3f}, {narrower:.0f} % narrower), expected")
    if plan.get("grid_out"):
        lines.append(f"grid: {plan['grid_out']} (egoscale sweep {plan['grid_out']} --out RUNS)")
    return lines


def write_grid(cfg: PlanConfig, chosen: list[Candidate]) -> None:
    """The chosen cells as a grid file: the candidates' grid (or --grid) with `only` set to them."""
    import yaml

    base = cfg.candidates if Path(cfg.candidates).suffix in (".yaml", ".yml", ".json") else cfg.grid
    if not base:
        raise ConfigError("--grid-out needs a grid to start from: candidates as a grid YAML, or --grid GRID.yaml")
    from egoscale.sweep.grid import load_grid

    raw = load_grid(base).to_dict()  # its paths resolved: the new file may live elsewhere
    ids = [c.id for c in chosen]
    raw["models"] = [m for m in raw["models"] if any(c.model == m for c in chosen)]
    raw["img_sizes"] = [s for s in raw["img_sizes"] if any(c.img_size == s for c in chosen)]
    raw["only"] = ids
    raw["cell_overrides"] = {k: v for k, v in raw["cell_overrides"].items() if any(fnmatch.fnmatchcase(i, k)
                                                                                  for i in ids)}
    text = (f"# the {len(ids)} run(s) `egoscale plan` chose from {cfg.candidates} ({cfg.out}), in the grid of {base}\n"
            + yaml.safe_dump(raw, sort_keys=False))
    Path(cfg.grid_out).write_text(text)
    try:
        load_grid(cfg.grid_out)
    except ConfigError as e:
        raise ConfigError(f"{cfg.grid_out}: the chosen cells do not make a grid of {base}: {e}") from None

