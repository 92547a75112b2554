"""`egoscale demo`: the paper's whole study on the built-in world, on a CPU, in minutes.

world -> ingest -> subsets -> sweep (models x image sizes x data sizes x seeds; few-shot
finetuning and linear probe) -> results table -> fit with held-out validation -> extrapolation
to the world's "human level" -> report. Every stage writes under --out and is reused when the
demo is run again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from egoscale.config import opt
from egoscale.demo_sizes import SIZES, DemoSize
from egoscale.errors import ConfigError
from egoscale.fileio import write_json_atomic
from egoscale.machine import usable_cores
from egoscale.scaling.records import FitResult, level_label

# The world's "human level": top-1 on the world's labelled val set. Fixed and documented rather
# than measured, so that runs at different sizes aim at the same thing.
DEMO_TARGET = 0.9
FIT_EVAL = "linear_probe"



@dataclass
class DemoConfig:
    """The paper's whole study on the built-in world, on a CPU: world -> ingest -> subsets -> sweep
(pretrain, finetune, probe) -> fit -> extrapolate -> report, all under --out; re-running reuses
finished stages and ends by printing the path of report.html."""

    out: str = opt("egoscale-demo", "folder for everything the demo writes")
    size: str = opt("default", "quick (every stage once, a fixed 20 steps per run), default (the whole study, "
                    "10-minute budget) or large (where scale shows; no budget: about 1.5 h on 2 cores)",
                    choices=list(SIZES))
    minutes: float | None = opt(None, "time budget of the default and large sizes: the demo times this machine and "
                                "runs as many pretraining steps as fit, up to the size's design length and never "
                                "below its floor (where the floor does not fit, it says before the sweep how long "
                                "the demo will take instead) (default: the size's budget)")
    quick: bool = opt(False, "same as --size quick")
    seed: int = opt(0, "world seed")
    parallel: int | None = opt(None, "pretraining runs at once, each on its share of the cores (default: one per "
                               "core, at most 8)")
    progress: bool = opt(True, "show progress bars")

    def __post_init__(self):
        if self.quick:
            self.size = "quick"
        if self.size not in SIZES:
            raise ConfigError(f"--size {self.size!r}: one of {', '.join(SIZES)}")
        if self.minutes is not None and self.minutes <= 0:
            raise ConfigError(f"--minutes must be positive, got {self.minutes:g}")
        if self.minutes is not None and self.size == "quick":
            raise ConfigError("--minutes sizes the default and large demos; --quick always runs its 20 steps per run")
        if self.parallel is not None and self.parallel < 1:
            raise ConfigError(f"--parallel must be at least 1, got {self.parallel}")


# The MAE of the tiny models on the built-in world (benchmarks/world_calibration.py, benchmarks/README.md
# "The demo"): per-patch normalised targets and half the patches masked learn what the probe reads
# several times sooner than the paper's raw pixels at 0.8, which tiny images and a few hundred steps
# cannot afford; a one-block decoder learns as much for less time per step.
DEMO_MAE = {"mask_ratio": 0.5, "norm_pix_loss": True, "decoder_depth": 1}


# Pretraining lr 3e-3 with 100 warmup steps: the fastest-learning setting of the calibration for
# vit_pico4 (batch 32); wider models take it scaled by PICO_WIDTH / width, as a wider layer's
# updates move its outputs more (vit_micro4 learned more at half of it: benchmarks/README.md).
DEMO_LR, PICO_WIDTH = 3e-3, 64


def demo_lr(model: str) -> float:
    from egoscale.models.registry import get_spec

    return DEMO_LR * PICO_WIDTH / get_spec(model).width


def demo_grid(out: Path, s: DemoSize) -> dict:
    """The sweep grid of the demo (a dict in the grid-file format)."""
    lab = out / "world" / "labelled"
    return {"name": "demo", "data": str(out / "frames"), "subsets": str(out / "frames" / "subsets"),
            "models": list(s.models), "img_sizes": list(s.img_sizes), "fractions": list(s.fractions),
            "seeds": list(s.seeds), "full_seeds": list(s.full_seeds) if s.full_seeds else None,
            # every model@size also evaluated untrained: the reference every accuracy is read against
            "baselines": ["random"],
            "pretrain": {"steps": s.steps, "batch_size": s.batch, "lr": DEMO_LR, "warmup_steps": 100,
                         **DEMO_MAE, "workers": 0, "log_every": 10, "save_every": 10_000,
                         # the whole data in the shuffle buffer: frames a second apart are near copies, and
                         # batches drawn from a few pieces (one room each) teach markedly less (calibration)
                         "shuffle_buffer": 10_000},
            "model_overrides": {m: {"lr": lr} for m in s.models if (lr := demo_lr(m)) != DEMO_LR},
            # few-shot finetuning of 160 tiny images: the head first fitted on frozen features (LP-FT), then
            # a gentle lr and crops that keep most of the image; the paper's fresh head, lr and 8 % crops
            # left these runs below the linear probe of the same weights (benchmarks/README.md)
            "evals": [{"name": "finetune", "kind": "finetune", "train": str(lab / "train"), "val": str(lab / "val"),
                       "condition": "full", "epochs": s.epochs, "batch_size": s.batch, "lr": 1e-4, "workers": 0,
                       "log_every": 50, "pool": "avg", "head_warmup": 1000, "crop_scale": 0.8,
                       # the val set scored once, after the last epoch: per epoch it cost as much as the training
                       "eval_every": s.epochs,
                       "model_overrides": {m: {"epochs": s.epochs_for(m), "eval_every": s.epochs_for(m)}
                                           for m in s.models if s.epochs_for(m) != s.epochs}},
                      # mean-pooled patch tokens: early MAE features are read far better than from the
                      # class token (calibration), though the paper's protocol reads the class token
                      {"name": "probe", "kind": "probe", "train": str(lab / "train"), "val": str(lab / "val"),
                       "condition": "full", "workers": 0, "knn": 10, "pool": "avg"}]}


def beyond_grid(out: Path, s: DemoSize) -> dict:
    """One run beyond the demo's grid (more pixels, the whole data), linear probe only: the fit never
    sees it, and its prediction is checked against what it measures (`check_beyond`)."""
    model, size = s.beyond
    g = demo_grid(out, s)
    return {**g, "name": "demo-beyond", "models": [model], "img_sizes": [size], "fractions": [1.0],
            "model_overrides": {k: v for k, v in g["model_overrides"].items() if k == model},
            "seeds": list(s.seeds[:1]), "full_seeds": None, "baselines": [],
            "evals": [e for e in g["evals"] if e["kind"] == "probe"]}


def check_beyond(fit: FitResult, result: dict) -> dict:
    """The fitted forms' predictions (with their prediction intervals for one new run, at the fit's
    level) for a run the fit never saw, beside what the run measured."""
    from egoscale.scaling.extrapolate import at
    from egoscale.scaling.fit import reference_params

    row = reference_params([{"model": result["model"], "params": result["params"], "img_size": result["img_size"],
                             "patch_size": result.get("patch_size")}])[0]
    N, D, R = row["params"], float(result["data_hours"]), float(result["img_size"])
    preds = at(fit, N, D, R)
    forms = {k: {**v.to_json(), "inside": bool(v.pi[0] <= result["top1"] <= v.pi[1])} for k, v in preds.items()}
    return {"model": result["model"], "img_size": R, "data_hours": D, "params": N, "measured": result["top1"],
            "chosen": fit.chosen, "forms": forms, "level": fit.level}


def describe_beyond(c: dict) -> str:
    f = c["forms"][c["chosen"]]
    return (f"beyond the grid ({c['model']} at {c['img_size']:.0f} px, {c['data_hours']:.3g} h, never fitted): "
            f"{c['chosen']} predicted {f['pred']:.1%} [{f['pi'][0]:.1%}, {f['pi'][1]:.1%}], measured "
            f"{c['measured']:.1%}: {'inside' if f['inside'] else 'OUTSIDE'} its {level_label(c['level'])} prediction "
            "interval")


def main(cfg: DemoConfig) -> int:
    demo(cfg)
    return 0


def demo(cfg: DemoConfig, log=print) -> dict:
    from egoscale.demo_budget import describe_plan
    from egoscale.scaling.extrapolate import scale_together, verdict
    from egoscale.scaling.fit import FitConfig, run_fit
    from egoscale.scaling.report import report
    from egoscale.sweep.grid import baseline_cells, cells

    s = SIZES[cfg.size]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def stage(n, name):
        log(f"[{n}/7] {name} ({time.time() - t0:.0f} s)")

    _make_data(cfg, s, out, stage, log)
    parallel = cfg.parallel or min(8, usable_cores())
    grid, beyond, p = _planned_grids(cfg, s, out, parallel, time.time() - t0, log)
    stage(4, f"sweep: {len(cells(grid))} pretraining runs of {p['steps']} steps, each finetuned and probed, "
             f"{parallel} at a time; {len(baseline_cells(grid))} random-weight baselines evaluated the same way")
    t_sweep = time.time()
    _sweep_and_beyond(grid, beyond, out, parallel, log)
    t_sweep = time.time() - t_sweep
    # The fit uses the linear probe: it reacts to representation quality sooner than few-shot
    # finetuning of these tiny models (README, the demo's tables). Both are in results.csv.
    stage(5, f"fit: scaling-law forms on the {FIT_EVAL.replace('_', ' ')}, validated on held-out runs")
    fit_path = out / "fit.json"
    fit = run_fit(FitConfig(table=str(out / "runs" / "results.csv"), out=str(fit_path), metric="top1",
                            eval=FIT_EVAL, form="auto", bootstrap=100), log=lambda m: log("  " + m), summary=False)
    stage(6, f"extrapolate: what reaches the world's 'human level' ({DEMO_TARGET:.0%} top-1)")
    # far beyond the data the forms disagree: the summary says whether they agree, and what each answers
    headline = verdict(fit, scale_together(fit, DEMO_TARGET), f"{DEMO_TARGET:.0%} top-1")
    check, checked = _check_beyond_run(fit, out, cells(beyond)[0])
    stage(7, "report")
    html = report(str(fit_path), str(out / "report"), target=str(DEMO_TARGET),
                  notes=[("A run the fit never saw", checked),
                         ("How this demo was sized", describe_plan(p, t_sweep, time.time() - t0))])
    bought = _closing_lines(fit, p, check, checked, headline, time.time() - t0, log)
    log(f"report: {html.resolve()}")
    # what this run of the demo was, beside fit.json's findings: its length, its time, the machine's cores
    # a demo re-run in its folder (after an interruption) finishes what was left: its time adds to the
    # earlier invocations', each kept
    runs = _earlier_runs(out) + [{"sweep_seconds": round(t_sweep, 1), "seconds": round(time.time() - t0, 1),
                                  "cores": usable_cores(), "parallel": parallel}]
    record = {"size": cfg.size, "world_seed": cfg.seed, "steps": p["steps"], "floor_steps": p.get("floor_steps"),
              "budget_minutes": p.get("budget_minutes"), "parallel": parallel, "cores": usable_cores(),
              "sweep_seconds": round(sum(r.get("sweep_seconds", 0.0) for r in runs), 1),
              "seconds": round(sum(r.get("seconds", 0.0) for r in runs), 1), "invocations": runs, "headline": headline,
              "bought": bought}
    write_json_atomic(out / "demo.json", record)
    return {**record, "beyond": check, "report": str(html), "fit": fit.chosen, "trends": fit.trends,
            "gains": fit.gains}


def _earlier_runs(out: Path) -> list[dict]:
    """The invocations an earlier demo.json in this folder records (none, for a fresh folder)."""
    try:
        old = json.loads((out / "demo.json").read_text())
    except (OSError, ValueError):
        return []
    return old.get("invocations") or [{k: old[k] for k in ("sweep_seconds", "seconds") if k in old}]


def _make_data(cfg: DemoConfig, s: DemoSize, out: Path, stage, log) -> None:
    """Stages 1-3: the world's video and labelled set, its frames in shards, the data-size subsets."""
    from egoscale.data.ingest import IngestConfig, ingest
    from egoscale.data.subset import SubsetConfig, make_subsets
    from egoscale.world.world import WorldConfig, make_world

    quiet = lambda *a, **k: None  # noqa: E731
    stage(1, "world: rendering video and the labelled set")
    make_world(WorldConfig(out=str(out / "world"), hours=s.hours, categories=s.categories,
                           train_per_class=s.train_per_class, val_per_class=s.val_per_class, seed=cfg.seed,
                           progress=cfg.progress), log=log)
    stage(2, "ingest: frames at 1 fps into shards")
    man = ingest(IngestConfig(source=[f"world={out / 'world' / 'videos'}"], out=str(out / "frames"), fps=1,
                              short_side=0, shard_size="64MB", progress=cfg.progress), log=quiet)
    log(f"  {man['total']['frames']} frames, {man['total']['hours']:.2f} h, {len(man['shards'])} shards")
    stage(3, "subsets: contiguous stretches of experience")
    make_subsets(SubsetConfig(frames=str(out / "frames"), fractions=list(s.fractions), seeds=list(s.seeds)),
                 log=quiet)


def _sweep_and_beyond(grid, beyond, out: Path, parallel: int, log) -> None:
    """The sweep, and the run beyond the grid beside it: the check of the extrapolation, a run in a
    folder (and results table) of its own, never fitted.

    The run beyond the grid has the threads one sweep worker has, so that it computes as a cell of
    the sweep does, the same on a machine of one core or of many (with every core's threads its
    arithmetic rounds differently, and its verdict can flip where it lies near an interval's edge);
    with several workers it runs in this process while they run, on the core their last round
    leaves free.
    """
    import threading

    import torch

    from egoscale.sweep.sweep import run_local

    threads = max(1, usable_cores() // parallel)

    def run_beyond():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)  # OpenMP's thread count is this thread's own
        try:
            run_local(beyond, out / "beyond", log=lambda m: log("  beyond the grid: " + m), parallel=1)
        finally:
            torch.set_num_threads(before)

    if parallel == 1:
        run_local(grid, out / "runs", log=lambda m: log("  " + m), parallel=1)
        return run_beyond()
    failed: list[BaseException] = []

    def beside():
        try:
            run_beyond()
        except BaseException as e:  # raised again in the main thread
            failed.append(e)

    # a daemon, so that Ctrl-C stops the demo at once (the run resumes when the demo is run again)
    thread = threading.Thread(target=beside, name="beyond-the-grid", daemon=True)
    thread.start()
    run_local(grid, out / "runs", log=lambda m: log("  " + m), parallel=parallel)
    thread.join()
    if failed:
        raise failed[0]


def _planned_grids(cfg: DemoConfig, s: DemoSize, out: Path, parallel: int, elapsed: float, log):
    """The grid and the run beyond it, at the number of steps the time budget allows on this machine."""
    from egoscale.demo_budget import plan
    from egoscale.sweep.grid import baseline_cells, cells, load_grid

    grid, beyond = load_grid(demo_grid(out, s)), load_grid(beyond_grid(out, s))
    budget = cfg.minutes if cfg.minutes is not None else s.minutes
    p = plan(out, s, grid, [(c.model, c.img_size) for c in cells(grid)], parallel,
             max(1, usable_cores() // parallel), budget, elapsed, log,
             baselines=[(c.model, c.img_size) for c in baseline_cells(grid)], mae_settings=DEMO_MAE,
             beside=[(c.model, c.img_size) for c in cells(beyond)])
    sized = replace(s, steps=p["steps"])
    return load_grid(demo_grid(out, sized)), load_grid(beyond_grid(out, sized)), p


def _check_beyond_run(fit: FitResult, out: Path, cell) -> tuple[dict | None, list[str]]:
    """The run beyond the grid beside every form's prediction for it (beyond/check.json), and the
    report's paragraphs about it."""
    found = out / "beyond" / "eval" / f"{cell.id}_probe" / "result.json"
    if not found.is_file():  # its failure was logged with the file to read; the study stands without the check
        return None, [f"The run beyond the grid ({cell.id}) failed: see {out / 'beyond'} (`egoscale sweep status`)."]
    check = check_beyond(fit, json.loads(found.read_text()))
    write_json_atomic(out / "beyond" / "check.json", check)
    line = describe_beyond(check)
    return check, [line[:1].upper() + line[1:] + ".",
                   f"Every form, with its {fit.label} prediction interval for one new run:"] + [
        f"- {k}: {v['pred']:.1%} [{v['pi'][0]:.1%}, {v['pi'][1]:.1%}], {'inside' if v['inside'] else 'outside'}"
        for k, v in check["forms"].items()]


def _closing_lines(fit: FitResult, p: dict, check: dict | None, checked: list[str], headline: str, seconds: float,
                   log) -> str:
    """The run's findings, each said once: what pretraining bought, the measured trends (with their
    gains over random weights where those differ), finetuning beside the probe, the run beyond the grid,
    and what the forms extrapolate; returns the first."""
    from egoscale.demo_budget import floor_status
    from egoscale.scaling.baselines import describe_bought
    from egoscale.scaling.evaluations import describe_side_by_side
    from egoscale.scaling.trends import describe, describe_gain, same_trend

    log(f"done in {seconds:.0f} s, {floor_status(p)}:")
    bought = describe_bought(fit.gains or [])
    gains = {g["axis"]: g for g in fit.gain_trends}
    lines = [bought] + [f"measured {describe(t)}" + (
        f"; {describe_gain(gains[t['axis']])}" if t["axis"] in gains and not same_trend(gains[t["axis"]], [t]) else "")
        for t in fit.trends]
    lines += [describe_side_by_side(fit.side_by_side), describe_beyond(check) if check else checked[0],
              f"extrapolation: {headline}"]
    for line in filter(None, lines):
        log(f"  {line}")
    return bought
