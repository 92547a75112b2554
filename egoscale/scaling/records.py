"""The records the scaling stages hand each other: what `egoscale fit` writes (fit.json) and what
`extrapolate` answers, as dataclasses that read and write their own JSON.

A reader takes fields, not keys with defaults of its own: the interval level, the validation bar
and every default live here (or in `FitConfig`) once. fit.json keeps the layout it always had, so
files written before these types load unchanged (`FitResult.from_json`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from egoscale.errors import DataError
from egoscale.fileio import write_json_atomic
from egoscale.scaling.estimation import level_label

DEFAULT_LEVEL = 0.9  # the level fits written before the field existed were made at


def jsonable(obj: Any) -> Any:
    """A record (or a dict or list holding records) as plain JSON values."""
    if hasattr(obj, "to_json"):
        return obj.to_json()
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def _known(cls, d: dict) -> dict:
    """The entries of `d` that are fields of `cls` (a newer file's extra keys are not an error)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class Validation:
    """Whether a form meets the validation bar on every held-out split (`fit._validation`)."""

    ok: bool = False
    worst_split_points: float | None = None
    worst_split_coverage: float | None = None
    why_not: str | None = "not validated"


@dataclass
class FormFit:
    """One scaling-law form fitted to the runs: its parameters with bootstrap intervals, its
    held-out scores per split, whether it passes the validation bar and whether it stays physical
    along the scale-together path."""

    formula: str
    theta: list[float]
    params: dict[str, float]
    params_ci: dict[str, list[float]]
    rmse: float
    converged: bool
    grad_norm: float
    asymptote: float
    bootstrap: list[list[float]]
    holdout: list[dict] = field(default_factory=list)  # per split: errors, coverage, each prediction
    form_sigma: float = 0.0  # the form's own error beyond seeds and parameters (accuracy units)
    heldout_mae_points: float | None = None
    heldout_points: float | None = None
    heldout_floor_points: float | None = None
    validated: Validation = field(default_factory=Validation)
    non_physical: dict | None = None  # where it turns down along the path (`extrapolate.turning_point`)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> FormFit:
        d = _known(cls, d)
        d["validated"] = Validation(**_known(Validation, d.get("validated") or {}))
        return cls(**d)

    @property
    def coverage(self) -> float | None:
        """The mean share of held-out runs inside their prediction intervals over the scored splits."""
        cov = [h["coverage"] for h in self.holdout if "coverage" in h]
        return sum(cov) / len(cov) if cov else None


@dataclass
class FitResult:
    """What `egoscale fit` found (fit.json): every form, the chosen one and why, the measured trends
    and what pretraining bought, at one interval level."""

    metric: str
    table: str
    level: float
    noise_sigma: float
    n_rows: int
    data: list[dict]  # the fitted rows, N at each architecture's reference resolution
    forms: dict[str, FormFit]
    chosen: str
    why: str
    dropped: list[dict] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # form -> why it was not fitted
    config: dict = field(default_factory=dict)  # the FitConfig it was made with
    trends: list[dict] = field(default_factory=list)  # `trends.measured_trends`
    baselines: list[dict] = field(default_factory=list)  # the random-weight rows read against
    gains: list[dict] | None = None  # `baselines.gain_table`, None without baselines
    gain_trends: list[dict] = field(default_factory=list)
    side_by_side: list[dict] = field(default_factory=list)  # `evaluations.side_by_side`
    seconds: float = 0.0

    @property
    def label(self) -> str:
        """The interval level as every printout and figure names it ('90%' at the default)."""
        return level_label(self.level)

    @property
    def chosen_form(self) -> FormFit:
        return self.forms[self.chosen]

    def to_json(self) -> dict:
        """fit.json's layout: a skipped form sits among the forms as {"skipped": why}."""
        d = {f.name: jsonable(getattr(self, f.name)) for f in fields(self) if f.name != "skipped"}
        d["forms"] = {**d["forms"], **{k: {"skipped": why} for k, why in self.skipped.items()}}
        if self.gains is None:  # a fit without baselines never had these keys
            for k in ("baselines", "gains", "gain_trends"):
                d.pop(k)
        return d

    @classmethod
    def from_json(cls, d: dict) -> FitResult:
        d = _known(cls, d)
        forms = d.pop("forms")
        d["skipped"] = {k: v["skipped"] for k, v in forms.items() if "skipped" in v}
        d["forms"] = {k: FormFit.from_json(v) for k, v in forms.items() if "skipped" not in v}
        d.setdefault("level", DEFAULT_LEVEL)
        fit = cls(**d)
        if not fit.trends:  # fits written before trends were recorded: computed from their rows
            from egoscale.scaling.trends import measured_trends

            fit.trends = measured_trends(fit.data, fit.metric, fit.level)
        return fit

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_json())


def load_fit(path: str | Path) -> FitResult:
    """fit.json as a `FitResult`; a one-line DataError for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such fit (run `egoscale fit` first)")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{path}: not a fit.json (not valid JSON)") from None
    if not isinstance(raw, dict) or not {"forms", "metric", "data", "chosen"} <= set(raw):
        raise DataError(f"{path}: not a fit.json")
    try:
        return FitResult.from_json(raw)
    except (TypeError, KeyError, AttributeError) as e:
        raise DataError(f"{path}: not a fit.json egoscale can read ({e})") from None


# --- what `extrapolate` answers -----------------------------------------------------------------
@dataclass
class Prediction:
    """One form's prediction at a scale: the central value, the interval of the law's mean (ci,
    from the bootstrap) and the interval for one new run (pi: adds seed noise and the form's own
    error), both at the fit's level."""

    pred: float
    ci: list[float]
    pi: list[float]

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class KToTarget:
    """One form along the scale-together path: the common factor k of N, D and pixels that reaches
    the target (None: unreachable, with why), its interval over the bootstrap, and the scale."""

    asymptote: float
    reachable_fraction: float
    k: float | None = None
    params: float | None = None
    hours: float | None = None
    resolution: float | None = None
    unreachable: str | None = None
    k_interval: list[float] | None = None  # None when too few bootstrap fits reach the target
    params_interval: list[float] | None = None
    hours_interval: list[float] | None = None
    resolution_interval: list[float] | None = None
    note: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ScaleTogether:
    """`extrapolate --target T --scale-together`: from the largest run (`base`), per form."""

    base: dict[str, float]
    target: float
    forms: dict[str, KToTarget]

    def to_json(self) -> dict:
        return jsonable({"base": self.base, "target": self.target, "forms": self.forms})


@dataclass
class Cheapest:
    """One form's cheapest (N, D, R) reaching a target under the compute model, with the spread of
    that compute over the bootstrap; `unreachable` says why there is none on the searched grid."""

    params: float | None = None
    hours: float | None = None
    resolution: float | None = None
    flops: float | None = None
    unreachable: str | None = None
    flops_interval: list[float | None] | None = None  # an end None: unbounded
    reachable_fraction: float | None = None
    p_within_budget: float | None = None
    within_budget: bool | None = None
    at_search_edge: list[str] = field(default_factory=list)
    frontier: list[dict] = field(default_factory=list)  # per model size: the cheapest D and R

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class CheapestPlan:
    """`extrapolate --target T --budget-flops C`: per form, the cheapest scale reaching T."""

    target: float
    budget: float | None
    epochs: float
    fps: float
    forms: dict[str, Cheapest]

    def to_json(self) -> dict:
        return jsonable({"target": self.target, "budget": self.budget, "epochs": self.epochs, "fps": self.fps,
                         "forms": self.forms})


@dataclass
class ClaimForm:
    """One form at a claim's scale: its prediction, whether it is physical, and (with a target)
    the k it needs to reach it and where the claim falls against its interval."""

    prediction: Prediction
    non_physical: bool
    k_to_target: float | None = None
    claim: str | None = None

    def to_json(self) -> dict:
        return {**self.prediction.to_json(), "non_physical": self.non_physical, "k_to_target": self.k_to_target,
                "claim": self.claim}


@dataclass
class ClaimCheck:
    """`extrapolate --claim`: every form at the claim's scale and, with a target, the verdict."""

    claim: str
    metric: str
    target: float | None
    target_source: str
    scale: dict[str, float]
    forms: dict[str, ClaimForm]
    level: float
    verdict: str | None = None

    def to_json(self) -> dict:
        return jsonable({k.name: getattr(self, k.name) for k in fields(self)})
