"""Grid files: models x image sizes x data subsets (fraction, seed) x evaluations.

    data: /data/frames                 # an ingest folder
    subsets: /data/frames/subsets      # subset files {fraction}_s{seed}.json (egoscale subset)
    models: [vit_s14, vit_b14]
    img_sizes: [224]
    fractions: [1.0, 0.1, 0.01]
    seeds: [1, 2, 3]                   # subset seeds; each also seeds its pretraining run
    full_seeds: [1]                    # runs on the whole data (fraction 1); default: the first seed
                                       # (more than one: pretrain must not fix `seed`)
    baselines: [random]                # also evaluate every model@size with random weights (one
                                       # evaluation per seed of seeds and full_seeds, no pretraining):
                                       # what pretraining buys
    pretrain: {batch_size: 512, budget_hours: 48}          # PretrainConfig fields
    model_overrides: {vit_h14: {lr: 1.0e-4}}                # per model
    cell_overrides:                                         # per cell, by its id or a pattern of ids
      "vit_h14@224_1_s1": {steps: 580000}                   #   (fnmatch: * and ?), after model_overrides;
      "vit_h14@*_0.0001_*": {lr: 5.0e-5}                    #   each pattern must match a cell
    evals:
      - {name: permissive, kind: finetune, train: /data/imagenet/train, val: /data/imagenet/val,
         condition: permissive,
         model_overrides: {vit_h14: {lr: 5.0e-5}}}          # per model, as for pretraining
    only: [vit_s14@224_0.1_s1, vit_b14@224_1_s1]            # just these cells (what `egoscale plan` chose)
    compute: {gpu_tflops: 989, mfu: 0.4, gpus_per_run: 8}   # for --dry-run estimates
    slurm: {partition: gpu, gpus_per_node: 8, timeout_min: 2880, cpus_per_task: 64}

Relative paths are relative to the grid file. Unknown keys are errors, at every level.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from egoscale.config import build, load_yaml
from egoscale.errors import ConfigError
from egoscale.evaluate.config import FinetuneConfig, ProbeConfig
from egoscale.train.config import PretrainConfig

# each stage's config class: a grid's sections are checked against their fields
_CONFIGS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "probe": ProbeConfig}
EVAL_KINDS = tuple(k for k in _CONFIGS if k != "pretrain")


_PATH_KEYS = {"data", "subsets", "train", "val", "train_list"}
_LENGTHS = {"steps", "epochs", "budget_hours"}


@dataclass
class Evaluation:
    """One entry of a grid's `evals`: its name (the stage's, in folder names and the results table),
    its kind (finetune or probe), its settings (that stage's config fields, paths resolved) and the
    settings it takes for particular models."""

    name: str
    kind: str
    settings: dict = field(default_factory=dict)
    model_overrides: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The entry as a grid file writes it."""
        return {"name": self.name, "kind": self.kind, **self.settings,
                **({"model_overrides": self.model_overrides} if self.model_overrides else {})}


@dataclass
class Grid:
    data: str
    subsets: str
    models: list[str]
    img_sizes: list[int]
    fractions: list[float]
    seeds: list[int]
    # The whole data has one subset, so repeats at fraction 1 differ only in the pretraining seed
    # (init, masks, crops, order). Repeating them is the cheapest way to tell a model or resolution
    # trend from seed noise where the runs are most accurate.
    full_seeds: list[int] | None = None
    # Evaluations without pretraining: "random" evaluates every model@size with randomly
    # initialised weights (one per seed of `seeds` and `full_seeds`, each its own initialisation),
    # by every evaluation. An
    # accuracy means something only beside what the same encoder gives untrained.
    baselines: list[str] = field(default_factory=list)
    pretrain: dict = field(default_factory=dict)
    model_overrides: dict = field(default_factory=dict)
    # Pretraining settings per cell, keyed by a cell id or an fnmatch pattern of ids, applied after
    # model_overrides in the file's order: what makes one published run differ from its neighbours
    # (its length, a mask ratio it was launched with).
    cell_overrides: dict = field(default_factory=dict)
    evals: list[Evaluation] = field(default_factory=list)  # read as the file's mappings, checked into these
    # Only these cells of the cross product (by id), when given: the runs `egoscale plan` chose.
    only: list[str] | None = None
    compute: dict = field(default_factory=dict)
    slurm: dict = field(default_factory=dict)
    name: str = "sweep"

    def to_dict(self) -> dict:
        """The grid in the grid-file format (what a sweep folder's grid.json holds and `load_grid` reads)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["evals"] = [e.to_dict() for e in self.evals]
        return d


BASELINES = ("random",)


@dataclass(frozen=True)
class Cell:
    model: str
    img_size: int
    fraction: float
    seed: int
    baseline: str | None = None  # "random": no pretraining, the evaluations read randomly initialised weights

    @property
    def id(self) -> str:
        if self.baseline:
            return f"{self.model}@{self.img_size}_{self.baseline}_s{self.seed}"
        return f"{self.model}@{self.img_size}_{self.fraction:g}_s{self.seed}"


def _resolve(value, base: Path):
    return str((base / value).resolve()) if isinstance(value, str) and not Path(value).is_absolute() else value


def _checked_eval(i: int, ev: dict, base: Path, src: str, models: list[str]) -> Evaluation:
    """One entry of `evals`, its paths resolved and its settings checked as its stage would, with
    each model's overrides."""
    ev = dict(ev)
    kind, name = ev.pop("kind", None), ev.pop("name", None)
    overrides = ev.pop("model_overrides", None) or {}
    if kind not in EVAL_KINDS:
        raise ConfigError(f"{src}: evals[{i}].kind must be one of {', '.join(EVAL_KINDS)}, got {kind!r}")
    if not name:
        raise ConfigError(f"{src}: evals[{i}] needs a unique name")
    for k in ev:
        if k in _PATH_KEYS:
            ev[k] = _resolve(ev[k], base)
    for key in set(ev) & {"checkpoint", "out", "progress"}:
        raise ConfigError(f"{src}: evals[{i}].{key} is set by the sweep itself; remove it")
    # the checkpoint is the cell's pretraining run; any path stands in for it here
    build(_CONFIGS[kind], {**ev, "checkpoint": "pretrain/CELL/checkpoint.pt"}, source=f"{src}: evals[{i}] ({name})")
    for m, over in overrides.items():
        if m not in models:
            raise ConfigError(f"{src}: evals[{i}].model_overrides names {m!r}, which is not in models")
        for key in sorted(set(over) & {"checkpoint", "out", "progress", "model", "img_size"}):
            raise ConfigError(f"{src}: evals[{i}].model_overrides.{m} may not set {key}: the sweep sets it")
        build(_CONFIGS[kind], {**ev, **over, "checkpoint": "pretrain/CELL/checkpoint.pt"},
              source=f"{src}: evals[{i}].model_overrides.{m}")
    return Evaluation(name=name, kind=kind, settings=ev, model_overrides=overrides)


def load_grid(path: str | Path | dict, base: Path | None = None) -> Grid:
    """Read and validate a grid (a YAML file or an equivalent dict), the stages' settings included."""
    if isinstance(path, dict):
        raw, base, src = dict(path), base or Path("."), "grid"
    else:
        raw, base, src = load_yaml(path), Path(path).parent, str(path)
    for k in ("data", "subsets"):
        if k in raw:
            raw[k] = _resolve(raw[k], base)
    grid = build(Grid, raw, source=src)
    missing = [f.name for f in dataclasses.fields(Grid) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and getattr(grid, f.name) in (None, [], "")]
    if missing:
        raise ConfigError(f"{src}: missing {', '.join(missing)}")
    reserved = {"data", "subset", "out", "model", "img_size", "progress"}
    for key in set(grid.pretrain) & reserved:
        raise ConfigError(f"{src}: pretrain.{key} is set by the grid itself; remove it")
    # a length may come per model or per cell: each section is checked with one filled in, and
    # every cell below with its own
    length = {} if set(grid.pretrain) & _LENGTHS else {"steps": 1}
    build(PretrainConfig, {**grid.pretrain, **length}, source=f"{src}: pretrain")
    for m, over in grid.model_overrides.items():
        if m not in grid.models:
            raise ConfigError(f"{src}: model_overrides names {m!r}, which is not in models")
        build(PretrainConfig, {**grid.pretrain, **length, **over}, source=f"{src}: model_overrides.{m}")
    if grid.only is not None:
        every = {Cell(m, s, f, seed).id for m in grid.models for s in grid.img_sizes for f in grid.fractions
                 for seed in (full_seeds(grid) if f == 1 else grid.seeds)}
        unknown = [i for i in grid.only if i not in every]
        if unknown or not grid.only:
            raise ConfigError(f"{src}: only names {unknown[0]!r}, which is not a cell of the grid" if unknown
                              else f"{src}: only is empty")
    _check_cell_overrides(grid, src, reserved)
    grid.evals = [_checked_eval(i, ev, base, src, grid.models) for i, ev in enumerate(grid.evals)]
    dup = [n for n in {e.name for e in grid.evals} if sum(e.name == n for e in grid.evals) > 1]
    if dup:
        raise ConfigError(f"{src}: evals need unique names ({dup[0]!r} is given twice)")
    if grid.full_seeds is not None and (not grid.full_seeds or len(set(grid.full_seeds)) != len(grid.full_seeds)):
        raise ConfigError(f"{src}: full_seeds must be a non-empty list of distinct seeds")
    fixed = ["pretrain"] * ("seed" in grid.pretrain) + [f"model_overrides.{m}" for m, o in
                                                        grid.model_overrides.items() if "seed" in o]
    if len(full_seeds(grid)) > 1 and fixed:
        # a seed fixed in the grid wins over the cell's, and the whole data has one subset
        raise ConfigError(f"{src}: {fixed[0]}.seed fixes every run's seed, so the full_seeds repeats would be "
                          "identical runs; remove one of the two")
    for f in grid.fractions:
        if not 0 < f <= 1:
            raise ConfigError(f"{src}: fraction {f} outside (0, 1]")
    for b in grid.baselines:
        if b not in BASELINES:
            raise ConfigError(f"{src}: baselines: {b!r} is not one of {', '.join(BASELINES)}")
    if grid.baselines and not grid.evals:
        raise ConfigError(f"{src}: baselines need at least one entry in evals (a baseline is an evaluation)")
    patched = ["pretrain"] * ("patch_size" in grid.pretrain) + [f"model_overrides.{m}" for m, o in
                                                                grid.model_overrides.items() if "patch_size" in o]
    if grid.baselines and patched:
        # an evaluation builds a random encoder from the registry's shape; it must be the pretrained one's
        raise ConfigError(f"{src}: baselines build each model with its registered patch size, but {patched[0]}."
                          "patch_size changes it; register a model with that patch size instead")
    return grid


def _check_cell_overrides(grid: Grid, src: str, reserved: set[str]) -> None:
    """Every pattern names at least one cell (a typo would silently change nothing), sets no key the
    grid sets itself, and gives every cell it matches valid settings."""
    ids = [c.id for c in cells(dataclasses.replace(grid, only=None))]  # any cell of the cross product
    for pattern, over in grid.cell_overrides.items():
        if not isinstance(over, dict):
            raise ConfigError(f"{src}: cell_overrides.{pattern} must be a mapping of pretraining settings")
        hit = [i for i in ids if fnmatch.fnmatchcase(i, pattern)]
        if not hit:
            raise ConfigError(f"{src}: cell_overrides names {pattern!r}, which matches no cell (cells are named like "
                              f"{ids[0]})")
        for key in sorted(set(over) & (reserved | {"seed"})):
            raise ConfigError(f"{src}: cell_overrides.{pattern} may not set {key}: the grid sets it")
    for c in cells(grid):
        overridden = any(fnmatch.fnmatchcase(c.id, p) for p in grid.cell_overrides)
        values = _pretrain_values(grid, c)
        if overridden or not set(values) & _LENGTHS:
            where = f"{src}: {'cell_overrides for ' if overridden else 'cell '}{c.id}"
            try:
                build(PretrainConfig, values, source=where)
            except ConfigError as e:
                raise ConfigError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None


def _pretrain_values(grid: Grid, cell: Cell) -> dict:
    """The grid's pretraining settings for a cell: `pretrain`, then its model's overrides, then every
    cell_overrides pattern that matches it, in order."""
    values = {**grid.pretrain, **grid.model_overrides.get(cell.model, {})}
    for pattern, over in grid.cell_overrides.items():
        if fnmatch.fnmatchcase(cell.id, pattern):
            values.update(over)
    return values


def cells(grid: Grid) -> list[Cell]:
    out = []
    for m in grid.models:
        for s in grid.img_sizes:
            for f in grid.fractions:
                for seed in (full_seeds(grid) if f == 1 else grid.seeds):
                    out.append(Cell(m, s, f, seed))
    return out if grid.only is None else [c for c in out if c.id in set(grid.only)]


def full_seeds(grid: Grid) -> list[int]:
    return grid.full_seeds or grid.seeds[:1]


def baseline_cells(grid: Grid) -> list[Cell]:
    """The grid's evaluations without pretraining: every model@size, once per seed that pretrains
    (`seeds` and `full_seeds`), each its own initialisation."""
    seeds = sorted({*grid.seeds, *full_seeds(grid)})
    pretrained = {(c.model, c.img_size) for c in cells(grid)}  # with `only`: the model@sizes it runs
    return [Cell(m, s, 0.0, seed, baseline=b) for b in grid.baselines for m in grid.models for s in grid.img_sizes
            for seed in seeds if (m, s) in pretrained]


def all_cells(grid: Grid) -> list[Cell]:
    """Pretraining cells, then baseline cells."""
    return cells(grid) + baseline_cells(grid)


def stages(grid: Grid, cell: Cell) -> list[str]:
    """What a cell runs, in order: its pretraining (none for a baseline), then each evaluation by name."""
    return ["pretrain"] * (cell.baseline is None) + [ev.name for ev in grid.evals]


def pretrain_config(grid: Grid, cell: Cell, run_dir: Path) -> PretrainConfig:
    from egoscale.data.subset import subset_name

    # `egoscale subset` writes the whole-data subset once, under the first seed
    sub_seed = grid.seeds[0] if cell.fraction == 1 else cell.seed
    sub = Path(grid.subsets) / f"{subset_name(cell.fraction, sub_seed)}.json"
    # the cell's seed seeds its run too (unless the grid fixes one), so repeats are independent draws
    values = {"seed": cell.seed, **_pretrain_values(grid, cell), "data": grid.data,
              "subset": str(sub), "model": cell.model, "img_size": cell.img_size, "out": str(run_dir)}
    return build(PretrainConfig, _grouped(grid, values), source=f"cell {cell.id}")


def _grouped(grid: Grid, values: dict) -> dict:
    """A sweep's runs logged to W&B form one group, named after the grid (unless it names one)."""
    return {"wandb_group": grid.name, **values} if values.get("wandb") else values


def eval_config(grid: Grid, ev: Evaluation, checkpoint: Path, out: Path, cell: Cell | None = None):
    """An evaluation's settings: of `checkpoint`, or for a baseline cell of its randomly initialised model
    (seeded by the cell's seed; the label subset stays the grid's; `checkpoint` is not read)."""
    values = dict(ev.settings)
    if cell is not None:
        values.update(ev.model_overrides.get(cell.model, {}))
    if cell is not None and cell.baseline:
        values = {**values, "checkpoint": "none", "model": cell.model, "img_size": cell.img_size,
                  "init_seed": cell.seed, "out": str(out)}
    else:
        values = {**values, "checkpoint": str(checkpoint), "out": str(out)}
    return build(_CONFIGS[ev.kind], _grouped(grid, values), source=f"eval {ev.name}")
