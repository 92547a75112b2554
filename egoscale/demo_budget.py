"""Sizing the demo's sweep to a time budget on whatever machine runs it.

After the world, ingest and subsets (their time is known by then), the demo times this machine:
a few pretraining, finetuning and feature-extraction steps of every model@size the sweep runs,
and a few batches of the data loader at each size, each on the threads one sweep worker gets.
From those it predicts the sweep's time for a given number of pretraining steps (cells run
`parallel` at a time, longest first) and picks the most steps, up to the size's design value,
that fit what is left of the budget after a reserve for the fit and the report. It never goes
below the size's floor, the fewest steps at which the study was measured to show what it is
about (benchmarks/README.md, "The floor"): where the floor does not fit, it runs the floor
anyway and says, before the sweep starts, how long that will take and why. The plan is saved in
OUT/plan.json and reused when the demo is re-run, so one study never mixes runs of different
lengths; the report shows it next to the sweep's actual time.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from egoscale.demo_sizes import DemoSize
from egoscale.fileio import write_json_atomic

PLAN = "plan.json"
CELL_OVERHEAD_S = 2.0  # per cell: worker start-up, model build, checkpoint and result writes
REPORT_RESERVE = 0.03  # share of the budget kept for the fit, extrapolation and report
# Runs side by side are slower than the timing of one run alone predicts (they share the memory
# system and the last-level cache): benchmarks/README.md, "The demo" and "The floor"
PARALLEL_SLOWDOWN = 1.16


def _timed(fn, warm: int = 1, reps: int = 3) -> float:
    """Seconds per call: the fastest of `reps` after `warm` calls. On a shared machine a call is
    slowed by whatever else runs; the fastest is what the code costs (the slowdown of runs side by
    side is counted apart, PARALLEL_SLOWDOWN)."""
    for _ in range(warm):
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _time_one(spec, batch: int, mae_settings: dict) -> dict:
    import torch

    from egoscale.models import build_mae, build_vit
    from egoscale.train.loop import adamw

    x = torch.randn(batch, 3, spec.img_size, spec.img_size)
    decoder = {k: v for k, v in mae_settings.items() if k.startswith("decoder_")}  # fields of the model's shape
    mae = build_mae(replace(spec, **decoder), **{k: v for k, v in mae_settings.items() if k not in decoder})
    opt = adamw(mae.parameters(), 1e-4, torch.device("cpu"))
    vit = build_vit(spec, num_classes=8, global_pool="avg")
    vopt = adamw(vit.parameters(), 1e-4, torch.device("cpu"))
    y = torch.randint(0, 8, (batch,))

    def pretrain_step():
        mae(x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def finetune_step():
        torch.nn.functional.cross_entropy(vit(x), y).backward()
        vopt.step()
        vopt.zero_grad(set_to_none=True)

    def extract():
        with torch.no_grad():
            vit.forward_features(x)

    return {"pretrain_step": _timed(pretrain_step), "finetune_step": _timed(finetune_step),
            "extract_image": _timed(extract) / batch}


def _time_loading(frames: Path, size: int, batch: int, shuffle_buffer: int) -> float:
    """Seconds per pretraining batch of the data loader in the run's own process (the demo's runs load
    in the process that trains): read, decode, crop, resize, normalise."""
    from egoscale.data.loader import FrameStream, make_loader, normalize_batch, resolve_pieces

    pieces, _ = resolve_pieces(frames)
    batches = iter(make_loader(FrameStream(pieces, size, shuffle_buffer=shuffle_buffer, batch_size=batch), batch,
                               workers=0))
    next(batches)  # fills the shuffle buffer: once per run, not per step
    return _timed(lambda: normalize_batch(next(batches)), warm=1, reps=4)


def time_machine(pairs: list[tuple[str, int]], batch: int, threads: int, mae_settings: dict | None = None,
                 frames: Path | None = None, shuffle_buffer: int = 10_000) -> dict[str, dict]:
    """Seconds per pretraining step, per finetuning step and per extracted image, for each
    (model, image size), measured here on `threads` threads (what one sweep worker gets); with
    `frames`, also seconds per pretraining batch of the data loader at each size ("load_batch")."""
    import torch

    from egoscale.models import get_spec

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        loading = {z: _time_loading(frames, z, batch, shuffle_buffer) for z in {z for _, z in pairs}} if frames else {}
        return {f"{name}@{size}": {**_time_one(get_spec(name, img_size=size), batch, mae_settings or {}),
                                   **({"load_batch": loading[size]} if frames else {})}
                for name, size in sorted(set(pairs))}
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class EvalWork:
    """What one cell's evaluations cost on one model: finetuning steps and images passed through the
    encoder without training (the head's warm-up, each scoring of the val set, the probe's features)."""

    finetune_steps: int
    extracted_images: int


def evaluation_work(grid, n_train: int, n_val: int) -> dict[str, EvalWork]:
    """Per model, the work of the evaluations the grid sets (its per-model overrides included), on a
    labelled set of `n_train` training and `n_val` val images: read from the grid the sweep will
    run, so that a change to its settings changes the prediction too."""
    from egoscale.evaluate.config import resolve_fraction
    from egoscale.sweep.grid import Cell, eval_config

    work = {}
    for m in grid.models:
        cell = Cell(m, grid.img_sizes[0], 1.0, grid.seeds[0])
        steps = images = 0
        for ev in grid.evals:
            cfg = eval_config(grid, ev, Path("checkpoint.pt"), Path("eval"), cell)
            train = max(2, round(n_train * resolve_fraction(cfg.condition, cfg.label_fraction)[1]))
            if ev.kind == "finetune":
                steps += cfg.epochs * math.ceil(train / cfg.batch_size)
                scored = cfg.epochs // cfg.eval_every + (cfg.epochs % cfg.eval_every > 0)  # and after the last
                images += (train if cfg.head_warmup else 0) + scored * n_val
            else:  # the probe: features of both sets, once
                images += train + n_val
        work[m] = EvalWork(steps, images)
    return work


def predict_sweep_seconds(cells: list[tuple[str, int]], steps: int, timing: dict[str, dict],
                          work: dict[str, EvalWork], parallel: int, baselines: list[tuple[str, int]] = (),
                          beside: list[tuple[str, int]] = ()) -> float:
    """The sweep's wall time: each cell's pretraining and evaluations (`work`), each baseline's
    evaluations (no pretraining), and the `beside` cells (the run beyond the grid, priced as a cell
    of the grid), `parallel` at a time (longest first, so the last round is the
    shortest cells), slowed by sharing the machine."""

    def evaluations(m: str, t: dict) -> float:
        w = work[m]
        return w.finetune_steps * t["finetune_step"] + w.extracted_images * t["extract_image"] + CELL_OVERHEAD_S

    def cell(m: str, z: int) -> float:
        t = timing[f"{m}@{z}"]
        return steps * (t["pretrain_step"] + t.get("load_batch", 0.0)) + evaluations(m, t)

    per = ([cell(m, z) for m, z in [*cells, *beside]]
           + [evaluations(m, timing[f"{m}@{z}"]) for m, z in baselines])
    workers = [0.0] * max(1, parallel)
    for p in sorted(per, reverse=True):  # longest first, each to the worker that frees up first
        workers[workers.index(min(workers))] += p
    return max(workers) * (PARALLEL_SLOWDOWN if parallel > 1 else 1.0)


def plan(out: Path, s: DemoSize, grid, cells: list[tuple[str, int]], parallel: int, threads: int,
         budget_min: float | None, elapsed_s: float, log, timing: dict | None = None,
         baselines: list[tuple[str, int]] = (), mae_settings: dict | None = None,
         beside: list[tuple[str, int]] = ()) -> dict:
    """The demo's pretraining steps for this machine and budget (reused from OUT/plan.json).

    `grid` is the sweep's (its evaluations' settings price them); `timing` (from `time_machine`,
    with the runs' `mae_settings`: mask ratio, targets) is measured here unless given; `baselines`
    are the model@size evaluated without pretraining."""
    path = Path(out) / PLAN
    if path.is_file():
        saved = json.loads(path.read_text())
        log(f"  plan: {saved['steps']} pretraining steps per run, as chosen when this demo folder was started")
        return saved
    if budget_min is None:
        p = {"steps": s.steps, "floor_steps": None, "budget_minutes": None,
             "why": "no time budget: the size's design length"}
        write_json_atomic(path, p)
        return p
    t0 = time.time()
    frames = Path(out) / "frames"
    timing = timing or time_machine([*cells, *beside], s.batch, threads, mae_settings,
                                    frames if (frames / "manifest.json").is_file() else None)
    elapsed_s += time.time() - t0
    budget = budget_min * 60
    left = budget * (1 - REPORT_RESERVE) - elapsed_s
    design = s.steps
    floor = min(s.floor_steps or design, design)

    work = evaluation_work(grid, s.categories * s.train_per_class, s.categories * s.val_per_class)

    def predict(n: int) -> float:
        return predict_sweep_seconds(cells, n, timing, work, parallel, baselines, beside)

    fits = [n for n in range(design, floor - 1, -10) if predict(n) <= left]
    steps = fits[0] if fits else floor
    predicted = predict(steps)
    # the whole demo, as the user will wait for it: what is done, the sweep, the fit and report
    total_min = (elapsed_s + predicted) / 60 / (1 - REPORT_RESERVE)
    if steps >= design:
        why = f"the size's design length ({design} steps) fits the {budget_min:g}-minute budget on this machine"
    elif fits:
        why = (f"{design} steps would take about {predict(design) / 60:.1f} "
               f"min of sweep here; {steps} steps fit the {budget_min:g}-minute budget (the floor is {floor})")
    else:
        why = (f"the floor of {floor} steps (the fewest at which this study was measured to show pretraining's "
               f"gains and the scaling trends beyond seed noise) does not fit the {budget_min:g}-minute budget on "
               f"this machine: the demo runs the floor anyway and will take about {total_min:.0f} min")
    p = {"steps": steps, "design_steps": design, "floor_steps": floor, "budget_minutes": budget_min,
         "parallel": parallel, "threads_per_run": threads, "seconds_before_sweep": round(elapsed_s, 1),
         "predicted_sweep_seconds": round(predicted, 1), "predicted_total_minutes": round(total_min, 1),
         "timing": timing, "why": why}
    write_json_atomic(path, p)
    log(f"  plan: {steps} pretraining steps per run: {why}")
    return p


def floor_status(p: dict) -> str:
    """Where the plan's steps stand against the floor, in a few words."""
    floor = p.get("floor_steps")
    if floor is None:
        return f"{p['steps']} pretraining steps per run"
    return f"{p['steps']} pretraining steps per run ({'at' if p['steps'] == floor else 'above'} the floor of {floor})"


def describe_plan(p: dict, sweep_seconds: float | None, total_seconds: float | None) -> list[str]:
    """Report lines: what the demo chose and why, and how the prediction held up."""
    lines = [f"{floor_status(p)[:1].upper() + floor_status(p)[1:]}. {p['why'][:1].upper() + p['why'][1:]}."]
    if p.get("timing"):
        slow = max(p["timing"].items(), key=lambda kv: kv[1]["pretrain_step"])
        lines.append(f"This machine, one run's {p['threads_per_run']} thread(s): {slow[0]} takes "
                     f"{slow[1]['pretrain_step'] * 1000:.0f} ms per pretraining step (the slowest of the grid); "
                     f"{p['parallel']} runs at a time.")
    if sweep_seconds is not None and p.get("predicted_sweep_seconds"):
        lines.append(f"Sweep: predicted {p['predicted_sweep_seconds'] / 60:.1f} min, "
                     f"took {sweep_seconds / 60:.1f} min.")
    if total_seconds is not None and p.get("budget_minutes"):
        lines.append(f"The whole demo took {total_seconds / 60:.1f} min of a {p['budget_minutes']:g}-minute budget.")
    return lines
