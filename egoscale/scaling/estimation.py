"""Fitting scaling laws the careful way: robust loss, many starts, convergence check,
held-out validation, and bootstrap uncertainty.

- Loss: Huber on accuracy residuals (delta = 1 point by default), so one bad run cannot drag a fit.
- Starts: a grid (closed-form least squares on the logit for the logit forms; for the power law
  a grid of exponents with the linear coefficients solved by non-negative least squares), each
  refined with L-BFGS-B; the best optimum is kept and its convergence recorded.
- Seeds are repeated measurements of one cell (model, data size, resolution): the pooled
  within-cell standard deviation is the noise floor, used in prediction intervals.
- Bootstrap: resample the seeds within each cell, refit, and take percentiles for parameters
  and predictions (90 % intervals by default).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
from scipy.optimize import minimize, nnls
from scipy.special import logit

from egoscale.scaling.forms import FORMS, Form, features, logit_design


def huber(res: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(res)
    return np.where(a <= delta, 0.5 * res ** 2, delta * (a - 0.5 * delta))


def _objective(form: Form, X, y, delta, ridge=1e-6):
    """The robust loss and its exact gradient, as L-BFGS-B takes them (`jac=True`)."""
    n, d, r = features(*X)

    def f(theta):
        pred, jac = form.jacobian(theta, n, d, r)
        res = pred - y
        loss = huber(res, delta).sum() + ridge * np.sum(theta ** 2)
        return loss, jac.T @ np.clip(res, -delta, delta) + 2 * ridge * theta
    return f


def _starts(form: Form, X, y) -> list[np.ndarray]:
    n, d, r = features(*X)
    yc = np.clip(y, 1e-3, 1 - 1e-3)
    if form.name.startswith("logit"):
        A = logit_design(n, d, r, form.name == "logit_interaction")
        base = np.linalg.lstsq(A, logit(yc), rcond=None)[0]
        starts = [base, np.zeros_like(base)]
        rng = np.random.default_rng(0)
        starts += [base + rng.normal(0, 0.3, base.shape) for _ in range(6)]
        return starts
    starts = []
    err = 1 - y
    for a, b, c in itertools.product((0.1, 0.3, 0.7), repeat=3):
        A = np.stack([np.ones_like(n), np.exp(-a * n), np.exp(-b * d), np.exp(-c * r)], 1)
        coef, _ = nnls(A, err)
        E = np.clip(coef[0], 1e-3, 0.95)
        lin = np.log(np.maximum(coef[1:], 1e-4))
        starts.append(np.array([logit(E), *lin, np.log(a), np.log(b), np.log(c)]))
    return starts


def fit_form(form: Form, X, y, delta: float = 0.01, starts: list[np.ndarray] | None = None) -> dict:
    """Best of many L-BFGS-B runs. Returns theta, loss, converged, rmse."""
    obj = _objective(form, X, y, delta)
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # exp overflow far from the optimum
        for s in starts if starts is not None else _starts(form, X, y):
            res = minimize(obj, s, jac=True, method="L-BFGS-B", options={"maxiter": 2000, "gtol": 1e-9})
            if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                best = res
    theta = best.x
    pred = form.predict(theta, *X)
    grad_norm = float(np.linalg.norm(best.jac)) if best.jac is not None else float("nan")
    return {"theta": theta, "loss": float(best.fun), "converged": bool(best.success or grad_norm < 1e-5),
            "grad_norm": grad_norm, "rmse": float(np.sqrt(np.mean((pred - y) ** 2)))}


def cell_index(X) -> np.ndarray:
    """Cell id per row: rows with the same (N, D, R) are seeds of one cell."""
    keys = list(zip(*(np.round(np.log(np.asarray(v, float)), 9) for v in X)))
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return np.array([index[k] for k in keys])


def seed_noise(X, y) -> float:
    """Pooled within-cell standard deviation (the noise floor); 0 without repeated cells."""
    c = cell_index(X)
    ss, dof = 0.0, 0
    for k in np.unique(c):
        v = y[c == k]
        if len(v) > 1:
            ss += float(((v - v.mean()) ** 2).sum())
            dof += len(v) - 1
    return float(np.sqrt(ss / dof)) if dof else 0.0


def bootstrap(form: Form, X, y, theta: np.ndarray, n_boot: int = 200, delta: float = 0.01, seed: int = 0) -> np.ndarray:
    """Parameter samples (n_boot, P) from refits on seeds resampled within each cell.

    Resampling n seeds shrinks their spread by (n-1)/n (a third with the paper's three seeds), so
    each cell's residuals are first scaled back up by sqrt(n/(n-1)); a cell of a single run has
    nothing to resample, so it gets the pooled seed noise (`seed_noise`) drawn afresh. Without
    either, intervals come out too narrow, most where single runs sit at the edge of the grid
    (the largest data size, the largest model)."""
    rng = np.random.default_rng(seed)
    c = cell_index(X)
    groups = [np.flatnonzero(c == k) for k in np.unique(c)]
    sigma = seed_noise(X, y)
    inflated = np.asarray(y, float).copy()
    for g in groups:
        if len(g) > 1:
            m = y[g].mean()
            inflated[g] = m + (y[g] - m) * np.sqrt(len(g) / (len(g) - 1))
    singles = np.concatenate([g for g in groups if len(g) == 1] or [np.zeros(0, int)])
    out = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        yb = inflated[idx]
        if sigma > 0 and len(singles):
            single = np.isin(idx, singles)
            yb[single] = y[idx[single]] + rng.normal(0, sigma, single.sum())
        Xb = tuple(np.asarray(v)[idx] for v in X)
        out.append(fit_form(form, Xb, yb, delta, starts=[theta])["theta"])
    return np.array(out)


def level_label(level: float) -> str:
    """An interval level for people: 0.9 -> '90%', 0.8 -> '80%', 0.975 -> '97.5%'."""
    return f"{level:.0%}" if round(level * 100, 6) == round(level * 100) else f"{level:.1%}"


def predict_interval(form: Form, samples: np.ndarray, X, noise: float = 0.0, level: float = 0.9, seed: int = 0):
    """(median, lo, hi) of predictions; with noise > 0 a prediction interval for one new run."""
    preds = np.array([form.predict(t, *X) for t in samples])  # (B, n)
    if noise > 0:
        # an accuracy stays in [0, 1] however noisy the run
        preds = np.clip(preds + np.random.default_rng(seed).normal(0, noise, preds.shape), 0.0, 1.0)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return np.median(preds, 0), np.percentile(preds, lo, 0), np.percentile(preds, hi, 0)


__all__ = ["FORMS", "fit_form", "bootstrap", "predict_interval", "seed_noise", "cell_index", "huber"]
