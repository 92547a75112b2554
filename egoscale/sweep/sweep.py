"""`egoscale sweep`: run every cell of a grid, skip what is done, record what failed, keep the
results table current.

Layout under OUT:
    pretrain/{model}@{size}_{fraction}_s{seed}/     a pretraining run (checkpoint.pt, summary.json, ...)
    eval/{cell}_{eval name}/                       an evaluation (result.json, metrics.jsonl, ...)
    eval/{model}@{size}_random_s{seed}_{eval name}/ a random-initialisation baseline (grid `baselines`)
    */cell.json                                    state: running / done / failed (+ error, log)
    results.csv                                    one row per finished evaluation
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from egoscale.config import opt
from egoscale.constants import ASSUMED_GPU_TFLOPS, ASSUMED_MFU
from egoscale.errors import ConfigError
from egoscale.fileio import write_json_atomic
from egoscale.machine import usable_cores
from egoscale.models.flops import mae_train_flops
from egoscale.sweep.folders import (CellState, cell_state, eval_dir, groups, is_done, pid_alive, pretrain_dir,
                                     set_cell_state, stage_dir, update_results)
from egoscale.sweep.grid import Cell, Grid, all_cells, cells, eval_config, load_grid, pretrain_config, stages


@dataclass
class SweepConfig:
    """Run every cell of a grid file (see egoscale/sweep/grid.py and configs/paper_grid.yaml): finished
cells are skipped, failed ones recorded and the rest go on; OUT/results.csv is updated as
evaluations finish. `egoscale sweep status OUT` shows each cell's state.

examples:
  egoscale sweep grid.yaml --out runs/ --dry-run
  egoscale sweep grid.yaml --out runs/ --gpus 8
  egoscale sweep grid.yaml --out runs/ --backend slurm
  egoscale sweep status runs/"""

    grid: str = opt("grid.yaml", "grid YAML file, or 'status'", positional=True, required=True, metavar="GRID")
    folder: str | None = opt(None, "with 'status': the sweep's output folder", positional=True, metavar="FOLDER")
    out: str = opt("runs", "output folder")
    backend: str = opt("local", "local or slurm", choices=["local", "slurm"])
    gpus: int = opt(0, "local: run this many cells at once, one per GPU")
    parallel: int = opt(1, "local, CPU: run this many cells at once, splitting the cores between them")
    dry_run: bool = opt(False, "print the cells and the estimated compute; run nothing")
    print_jobs: bool = opt(False, "slurm: print the job specifications, submit nothing")

    def __post_init__(self):
        if self.gpus < 0 or self.parallel < 1:
            raise ConfigError("--gpus must be at least 0 and --parallel at least 1")


def main(cfg: SweepConfig) -> int:
    if cfg.grid == "status":
        folder = Path(cfg.folder or cfg.out)
        if (folder / "slurm" / "jobs.json").is_file() and (folder / "grid.json").is_file():
            from egoscale.sweep.slurm import slurm_status

            by_state = slurm_status(load_grid(json.loads((folder / "grid.json").read_text())), folder)
        else:
            by_state = status(folder)
        for k in CellState:
            if k in by_state:
                print(f"{k.value:<8} {len(by_state[k])}")
            if k in (CellState.FAILED, CellState.RUNNING, CellState.QUEUED):
                for c in by_state.get(k, []):
                    print(f"         {c}")
        return 0
    grid = load_grid(cfg.grid)
    if cfg.dry_run:
        dry_run(grid)
        return 0
    if cfg.backend == "slurm":
        from egoscale.sweep.slurm import slurm_jobs, submit_slurm

        from egoscale.runfolder import FolderLock

        jobs = slurm_jobs(grid, cfg.out)
        if cfg.print_jobs:
            print(json.dumps(jobs, indent=2))
            return 0
        with FolderLock(cfg.out, "sweep"):
            check_grid(grid, Path(cfg.out))
            submit_slurm(grid, jobs, cfg.out)
        return 0
    counts = run_local(grid, cfg.out, parallel=cfg.parallel, gpus=cfg.gpus)
    return 1 if counts.failed else 0


# New worker pools after a worker dies, before the unfinished cells are recorded as failed.
WORKER_RESTARTS = 2


def status(out: str | Path, grid: Grid | None = None) -> dict[str, list[str]]:
    """Cells by state: done / running / failed / pending (running = a live process holds it)."""
    out = Path(out)
    by_state = groups(CellState.DONE, CellState.RUNNING, CellState.FAILED, CellState.PENDING)
    folders = sorted([*out.glob("pretrain/*"), *out.glob("eval/*")])
    if grid is not None:
        folders = [stage_dir(grid, out, c, st) for c in all_cells(grid) for st in stages(grid, c)]
    for f in folders:
        st = cell_state(f)
        s = CellState(st["state"])
        if s == CellState.RUNNING and not pid_alive(st.get("pid")):
            s = CellState.FAILED if st.get("error") else CellState.PENDING  # a killed run: resumable, so pending
        by_state.setdefault(s.value, []).append(str(f.relative_to(out)))
    return by_state


def compute_assumptions(grid: Grid) -> dict:
    """The grid's `compute:` section over the defaults a dry run assumes."""
    return {"gpu_tflops": ASSUMED_GPU_TFLOPS, "mfu": ASSUMED_MFU, "gpus_per_run": 1, **grid.compute}


def estimate(grid: Grid) -> list[dict]:
    """Per pretraining cell: training FLOPs (when the length is in steps) and GPU-hours at the assumed MFU."""
    return [estimate_cell(grid, c) for c in cells(grid)]


def estimate_cell(grid: Grid, c) -> dict:
    """One pretraining cell's training FLOPs and GPU-hours, from its own settings as its run would have
    them (model shape, mask, batch, length) and the grid's compute assumptions. A cell need not be
    one of the grid's: `egoscale plan` prices candidate runs with a grid's settings."""
    comp = compute_assumptions(grid)
    cfg = pretrain_config(grid, c, Path("."))
    spec = cfg.spec()
    per_img = mae_train_flops(spec, spec.img_size, cfg.mask_ratio)
    batch = cfg.batch_size * cfg.accum_steps * comp["gpus_per_run"]
    flops = per_img * batch * cfg.steps if cfg.steps else None
    # GPU-hours: the run's FLOPs at one GPU's sustained rate, however many GPUs share them
    hours = flops / (comp["gpu_tflops"] * 1e12 * comp["mfu"]) / 3600 if flops else None
    if cfg.budget_hours:
        budget = cfg.budget_hours * comp["gpus_per_run"]
        hours = min(hours, budget) if hours else budget
        flops = hours * 3600 * comp["gpu_tflops"] * 1e12 * comp["mfu"]  # what the budget buys
    return {"cell": c.id, "flops": flops, "gpu_hours": hours}


def check_grid(grid: Grid, out: Path) -> None:
    """Refuse to run a grid over a sweep folder whose cells were made with other settings.

    Cells that exist in the folder are compared, setting by setting, with what this grid asks
    of them (the same identity settings a resumed run is held to); new cells are welcome.
    """
    from egoscale.evaluate.config import IDENTITY as EVAL_IDENTITY
    from egoscale.evaluate.config import eval_record
    from egoscale.runfolder import CONFIG, describe_differences, differences
    from egoscale.train.config import IDENTITY, run_record

    changed = []
    for c in all_cells(grid):
        pdir = pretrain_dir(out, c)
        if not c.baseline and (pdir / CONFIG).is_file():
            diff = differences(json.loads((pdir / CONFIG).read_text()), run_record(pretrain_config(grid, c, pdir)),
                               IDENTITY)
            if diff:
                changed.append(f"{c.id} ({describe_differences(diff)})")
        for ev in grid.evals:
            edir = eval_dir(out, c, ev)
            if (edir / CONFIG).is_file():
                rec = eval_record(eval_config(grid, ev, pdir / "checkpoint.pt", edir, c))
                diff = differences(json.loads((edir / CONFIG).read_text()), rec, EVAL_IDENTITY)
                if diff:
                    changed.append(f"{c.id} {ev.name} ({describe_differences(diff)})")
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ConfigError(f"{out}: made by another grid: {len(changed)} cells would change: {'; '.join(changed[:3])}"
                          f"{more}. Run this grid into another --out, or restore the grid the folder was made with")


def run_local(grid: Grid, out: str | Path, log=print, progress: bool = False, parallel: int = 1,
              gpus: int = 0) -> Counts:
    """Every cell (its pretraining, then its evaluations); finished cells are skipped, failures recorded.

    parallel > 1 runs that many cells at once in worker processes on the CPU, each with an equal
    share of the cores (tiny models use many threads poorly, so two one-thread runs beat one
    two-thread run); gpus = N runs N cells at once, one per GPU (CUDA_VISIBLE_DEVICES).
    """
    from egoscale.runfolder import FolderLock

    out = Path(out)
    with FolderLock(out, "sweep"):
        check_grid(grid, out)
        write_json_atomic(out / "grid.json", grid.to_dict())
        return _run_local(grid, out, log, progress, parallel, gpus)


@dataclass
class Counts:
    """What a sweep did with its stages: ran them (done), found them done (skipped), saw them fail,
    or could not run them (evaluations blocked by a failed pretraining)."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    blocked: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def describe(self) -> str:
        return (f"sweep: {self.done} cells run, {self.skipped} already done, {self.failed} failed"
                + (f" ({self.blocked} evaluations blocked by failed pretraining)" if self.blocked else ""))


def _run_local(grid: Grid, out: Path, log, progress: bool, parallel: int, gpus: int) -> Counts:
    todo = all_cells(grid)
    counts = Counts()
    # finished cells are counted here, so that re-running a finished sweep starts no worker processes
    numbered = []
    for i, cell in enumerate(todo, 1):
        if all(is_done(stage_dir(grid, out, cell, st)) for st in stages(grid, cell)):
            counts.skipped += len(stages(grid, cell))
        else:
            numbered.append((i, cell))
    slots = gpus or parallel
    if slots <= 1 or len(numbered) <= 1:
        for i, cell in numbered:
            counts += run_cell_stages(grid, out, cell, f"[{i}/{len(todo)}]", progress, log)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        ctx = mp.get_context("spawn")  # no CUDA or thread-pool state inherited from this process
        threads = max(1, usable_cores() // slots)
        # longest cells first (by estimated FLOPs), so that no long cell runs alone at the end
        cost = {r["cell"]: r["flops"] or 0.0 for r in estimate(grid)}
        left = {cell.id: (i, cell) for i, cell in sorted(numbered, key=lambda ic: -cost.get(ic[1].id, 0.0))}
        for attempt in range(1 + WORKER_RESTARTS):
            devices = ctx.Queue()
            for k in range(slots):
                devices.put(str(k) if gpus else None)
            with ProcessPoolExecutor(slots, mp_context=ctx, initializer=_init_worker,
                                     initargs=(devices, None if gpus else threads, slots)) as pool:
                futures = {pool.submit(_run_cell_stages_in_worker, grid, out, cell, f"[{i}/{len(todo)}]"): cell.id
                           for i, cell in left.values()}
                for f in as_completed(futures):
                    try:
                        c, lines = f.result()
                    except BrokenProcessPool:  # a worker was killed (e.g. by the OOM killer): all of the pool's
                        continue              # unfinished cells land here; they are run again below
                    for line in lines:
                        log(line)
                    counts += c
                    del left[futures[f]]
                    update_results(out, grid)
            if not left:
                break
            again = attempt < WORKER_RESTARTS
            log(f"sweep: a worker process died (killed by the OS? out of memory?) with {len(left)} cells unfinished"
                + ("; they run again in new workers, resuming from their checkpoints" if again else ""))
        for _, cell in left.values():  # gave up on these: recorded like any failure
            _mark_failed(grid, out, cell, "its worker process died (killed by the OS? out of memory?) "
                         f"{1 + WORKER_RESTARTS} times")
            counts.failed += 1
    update_results(out, grid)  # also when every cell was done already (a results.csv removed since is rebuilt)
    log(counts.describe())
    return counts


def _mark_failed(grid: Grid, out: Path, cell: Cell, error: str) -> None:
    """Record a cell that never reported back: its pretraining, or else its unfinished evaluations."""
    pdir = pretrain_dir(out, cell)
    if not cell.baseline and not is_done(pdir):
        set_cell_state(pdir, state=CellState.FAILED.value, error=error, pid=None)
        return
    for ev in grid.evals:
        edir = eval_dir(out, cell, ev)
        if not is_done(edir):
            set_cell_state(edir, state=CellState.FAILED.value, error=error, pid=None)


def _init_worker(devices, threads: int | None, slots: int = 1) -> None:
    dev = devices.get()
    if dev is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = dev
        # the cells running at once share this node's cores: the loader's default worker count
        # divides them by the processes on the node, as under torchrun (pretrain.resolve_workers)
        os.environ["LOCAL_WORLD_SIZE"] = str(slots)
    if threads:
        import torch

        torch.set_num_threads(threads)


def _run_cell_stages_in_worker(grid: Grid, out: Path, cell: Cell, label: str) -> tuple[Counts, list[str]]:
    lines: list[str] = []
    return run_cell_stages(grid, out, cell, label, False, lines.append, update=False), lines


def run_cell_stages(grid: Grid, out: Path, cell: Cell, label: str, progress: bool, log,
                    update: bool = True) -> Counts:
    """Every stage of one cell in order: its pretraining (unless done), then each of its evaluations
    (unless done, or blocked by a pretraining that failed)."""
    counts = Counts()
    for stage in stages(grid, cell):
        if stage != "pretrain" and not cell.baseline and not is_done(pretrain_dir(out, cell)):
            counts.blocked += 1
            continue
        if is_done(stage_dir(grid, out, cell, stage)):
            counts.skipped += 1
            continue
        ok = run_stage(grid, out, cell, stage, f"{label} {stage} {cell.id}", progress, log, update=update)
        if ok:
            counts.done += 1
        else:
            counts.failed += 1
    return counts


def run_stage(grid: Grid, out: Path, cell: Cell, stage: str, label: str, progress: bool = False, log=print,
              stage_log=None, update: bool = True) -> bool:
    """Run one stage of one cell (pretraining, or an evaluation of its checkpoint) with the cell's
    state kept in its folder's cell.json; the same for local workers and SLURM jobs. Under
    torchrun only rank 0 keeps the state; every rank runs the stage."""
    from egoscale.evaluate.finetune import finetune
    from egoscale.evaluate.probe import probe
    from egoscale.train.distributed import is_main_process
    from egoscale.train.pretrain import pretrain

    folder = stage_dir(grid, out, cell, stage)
    if stage == "pretrain":
        cfg = pretrain_config(grid, cell, folder)
        fn = pretrain
    else:
        ev = next(e for e in grid.evals if e.name == stage)
        cfg = eval_config(grid, ev, pretrain_dir(out, cell) / "checkpoint.pt", folder, cell)
        fn = finetune if ev.kind == "finetune" else probe
    cfg.progress = progress
    run = lambda: fn(cfg, log=stage_log or (lambda *a: None))  # noqa: E731
    if not is_main_process():
        run()
        return True
    ok = _run_recorded(folder, run, label, log)
    if ok and update and stage != "pretrain":  # (worker processes leave it to the sweep's own process)
        update_results(out, grid)
    return ok


def _run_recorded(folder: Path, fn, label: str, log) -> bool:
    """Run one stage's function with its state (running, then done or failed with the error and its
    log) kept in the stage folder's cell.json."""
    t0 = time.time()
    set_cell_state(folder, state=CellState.RUNNING.value, pid=os.getpid(), host=socket.gethostname(), started=t0,
                   error=None, slurm_job=os.environ.get("SLURM_JOB_ID"))
    try:
        res = fn()
    except Exception as e:  # noqa: BLE001 - a failed cell is recorded and the sweep goes on
        (folder / "error.log").write_text(traceback.format_exc())
        set_cell_state(folder, state=CellState.FAILED.value, error=f"{type(e).__name__}: {e}",
                       log=str(folder / "error.log"))
        log(f"{label}: FAILED ({type(e).__name__}: {str(e)[:200]}); see {folder / 'error.log'}")
        return False
    set_cell_state(folder, state=CellState.DONE.value, seconds=round(time.time() - t0, 2), pid=None)
    extra = f" top-1 {res['top1']:.3f}" if isinstance(res, dict) and "top1" in res else ""
    log(f"{label}: done in {time.time() - t0:.0f} s{extra}")
    return True


def dry_run(grid: Grid, log=print) -> list[dict]:
    rows = estimate(grid)
    log(f"{'cell':<32}{'train FLOPs':>14}{'GPU-hours':>11}")
    for r in rows:
        log(f"{r['cell']:<32}{'?' if r['flops'] is None else format(r['flops'], '.3g'):>14}"
            f"{'?' if r['gpu_hours'] is None else format(r['gpu_hours'], '.2f'):>11}")
    tot_f = sum(r["flops"] or 0 for r in rows)
    tot_h = sum(r["gpu_hours"] or 0 for r in rows)
    log(f"{len(rows)} pretraining cells x {len(grid.evals)} evaluations; total {tot_f:.3g} FLOPs, "
        f"{tot_h:.1f} GPU-hours at {compute_assumptions(grid)['mfu']:.0%} MFU of "
        f"{compute_assumptions(grid)['gpu_tflops']:g} TFLOP/s (evaluations not counted)")
    return rows


__all__ = ["run_local", "status", "dry_run", "estimate", "SweepConfig", "main"]
