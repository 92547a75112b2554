"""Scaling-law forms: accuracy as a function of N (encoder parameters), D (hours of video) and
R (image side in px).

Inputs enter through centred logs, n = ln(N / 1e8), d = ln(D / 100 h), r = ln(R / 224 px), which
keeps the fits well conditioned. Each form maps a parameter vector to predicted accuracy in (0, 1).

- logit_linear:       logit(acc) = a + b n + c d + e r
  (additive log-linear on a logit scale; approaches 100 % if all slopes are positive)
- power_error:        1 - acc = E + A e^(-alpha n) + B e^(-beta d) + C e^(-gamma r)
  (Chinchilla-style saturating power law in each factor: N^-alpha etc.; floor E = irreducible error,
   so accuracy can never exceed 1 - E)
- logit_interaction:  logit(acc) = a + b n + c d + e r + f n d + g n r + h d r
  (log-linear with pairwise interactions: the benefit of data may grow with model size, etc.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy.special import expit

N0, D0, R0 = 1e8, 100.0, 224.0


def features(N, D, R) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.log(np.asarray(N, float) / N0), np.log(np.asarray(D, float) / D0),
            np.log(np.asarray(R, float) / R0))


@dataclass(frozen=True)
class Form:
    name: str
    params: tuple[str, ...]
    formula: str

    def predict(self, theta: np.ndarray, N, D, R) -> np.ndarray:
        n, d, r = features(N, D, R)
        return _PREDICT[self.name](np.asarray(theta, float), n, d, r)

    def jacobian(self, theta: np.ndarray, n: np.ndarray, d: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prediction (k,) and its derivatives by theta (k, P) at centred log features (`features`),
        so fits run on exact gradients rather than finite differences."""
        return _JACOBIAN[self.name](np.asarray(theta, float), n, d, r)

    def readable(self, theta: np.ndarray) -> dict:
        """Parameters on their natural scale (exponents, floors), for tables."""
        return _READABLE[self.name](np.asarray(theta, float))

    def asymptote(self, theta: np.ndarray) -> float:
        """The accuracy this form approaches when N, D and R all grow without bound."""
        if self.name == "power_error":
            return float(1 - expit(theta[0]))
        big = 1e6  # ln-scale far beyond any run: n = d = r = big
        return float(_PREDICT[self.name](np.asarray(theta, float), np.array(big), np.array(big), np.array(big)))


def logit_design(n, d, r, interactions: bool) -> np.ndarray:
    """The logit forms' linear features, (..., 4) or (..., 7): 1, n, d, r[, n d, n r, d r]."""
    n, d, r = np.broadcast_arrays(n, d, r)
    cols = [np.ones_like(n), n, d, r] + ([n * d, n * r, d * r] if interactions else [])
    return np.stack(cols, -1)


def _logit(t, n, d, r, interactions: bool):
    return expit(logit_design(n, d, r, interactions) @ t)


def _power_error(t, n, d, r):
    # t = [logit E, ln A, ln B, ln C, ln alpha, ln beta, ln gamma]: positivity by construction
    E = expit(t[0])
    a, b, c = np.exp(t[4]), np.exp(t[5]), np.exp(t[6])
    err = E + np.exp(t[1] - a * n) + np.exp(t[2] - b * d) + np.exp(t[3] - c * r)
    return 1 - np.minimum(err, 1.0)


def _logit_jacobian(t, n, d, r, interactions: bool):
    A = logit_design(n, d, r, interactions)
    p = expit(A @ t)
    return p, A * (p * (1 - p))[:, None]


def _power_error_jacobian(t, n, d, r):
    E = expit(t[0])
    a, b, c = np.exp(t[4]), np.exp(t[5]), np.exp(t[6])
    terms = np.exp(t[1] - a * n), np.exp(t[2] - b * d), np.exp(t[3] - c * r)
    err = E + terms[0] + terms[1] + terms[2]
    inside = (err < 1.0).astype(float)  # where the error is capped at 1 the prediction is flat
    cols = [np.full_like(n, E * (1 - E)), *terms, -terms[0] * a * n, -terms[1] * b * d, -terms[2] * c * r]
    return 1 - np.minimum(err, 1.0), -np.stack(cols, 1) * inside[:, None]


_PREDICT = {"logit_linear": partial(_logit, interactions=False), "power_error": _power_error,
            "logit_interaction": partial(_logit, interactions=True)}
_JACOBIAN = {"logit_linear": partial(_logit_jacobian, interactions=False), "power_error": _power_error_jacobian,
             "logit_interaction": partial(_logit_jacobian, interactions=True)}
_READABLE = {
    "logit_linear": lambda t: dict(zip(("a", "b_logN", "c_logD", "e_logR"), t.tolist())),
    "power_error": lambda t: {"E": float(expit(t[0])), "A": float(np.exp(t[1])), "B": float(np.exp(t[2])),
                              "C": float(np.exp(t[3])), "alpha": float(np.exp(t[4])), "beta": float(np.exp(t[5])),
                              "gamma": float(np.exp(t[6]))},
    "logit_interaction": lambda t: dict(zip(("a", "b_logN", "c_logD", "e_logR", "f_logN_logD", "g_logN_logR",
                                             "h_logD_logR"), t.tolist())),
}

FORMS: dict[str, Form] = {
    "logit_linear": Form("logit_linear", ("a", "b", "c", "e"), "logit(acc) = a + b·ln N + c·ln D + e·ln R"),
    "power_error": Form("power_error", ("logit_E", "ln_A", "ln_B", "ln_C", "ln_alpha", "ln_beta", "ln_gamma"),
                        "1 − acc = E + A·N^−α + B·D^−β + C·R^−γ"),
    "logit_interaction": Form("logit_interaction", ("a", "b", "c", "e", "f", "g", "h"),
                              "logit(acc) = a + b·ln N + c·ln D + e·ln R + f·ln N·ln D + g·ln N·ln R + h·ln D·ln R"),
}
