"""`egoscale sweep`: run every cell of a grid, skip what is done, record what failed, keep the
results table current.

Layout under OUT:
    pretrain/{model}@{size}_{fraction}_s{seed}/     a pretraining run (checkpoint.pt, summary.json, ...)
    eval/{cell}_{eval name}/                       an evaluation (result.json, metrics.jsonl, ...)
    */cell.json                                    state: running / done / failed (+ error, log)
    results.csv                                    one row per finished evaluation
"""

from __future__ import annotations

import json
import os
import shlex
import time
import traceback
from pathlib import Path

from egoscale.config import to_dict
from egoscale.errors import ConfigError
from egoscale.fileio import write_json_atomic
from egoscale.models.flops import mae_train_flops
from egoscale.models.registry import get_spec
from egoscale.sweep.grid import Cell, Grid, cells, eval_config, pretrain_config


# New worker pools after a worker dies, before the unfinished cells are recorded as failed.
WORKER_RESTARTS = 2


def pretrain_dir(out: Path, cell: Cell) -> Path:
    return out / "pretrain" / cell.id


def eval_dir(out: Path, cell: Cell, ev: dict) -> Path:
    return out / "eval" / f"{cell.id}_{ev['name']}"


def _state(folder: Path) -> dict:
    f = folder / "cell.json"
    return json.loads(f.read_text()) if f.is_file() else {"state": "pending"}


def _set_state(folder: Path, **kw) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "cell.json", {**_state(folder), **kw, "updated": time.time()})


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def status(out: str | Path, grid: Grid | None = None) -> dict[str, list[str]]:
    """Cells by state: done / running / failed / pending (running = a live process holds it)."""
    out = Path(out)
    groups: dict[str, list[str]] = {"done": [], "running": [], "failed": [], "pending": []}
    folders = sorted([*out.glob("pretrain/*"), *out.glob("eval/*")])
    if grid is not None:
        folders = ([pretrain_dir(out, c) for c in cells(grid)]
                   + [eval_dir(out, c, e) for c in cells(grid) for e in grid.evals])
    for f in folders:
        st = _state(f)
        s = st["state"]
        if s == "running" and not _pid_alive(st.get("pid")):
            s = "failed" if st.get("error") else "pending"  # a killed run: resumable, so pending
        groups.setdefault(s, []).append(str(f.relative_to(out)))
    return groups


def estimate(grid: Grid) -> list[dict]:
    """Per pretraining cell: training FLOPs (when the length is in steps) and GPU-hours at the assumed MFU."""
    comp = {"gpu_tflops": 989.0, "mfu": 0.4, "gpus_per_run": 1, **grid.compute}
    rows = []
    for c in cells(grid):
        cfg = {**grid.pretrain, **grid.model_overrides.get(c.model, {})}
        spec = get_spec(c.model, img_size=c.img_size)
        per_img = mae_train_flops(spec, c.img_size, cfg.get("mask_ratio", 0.8))
        batch = cfg.get("batch_size", 256) * cfg.get("accum_steps", 1) * comp["gpus_per_run"]
        flops = per_img * batch * cfg["steps"] if cfg.get("steps") else None
        hours = flops / (comp["gpu_tflops"] * 1e12 * comp["mfu"]) / 3600 * comp["gpus_per_run"] if flops else None
        if cfg.get("budget_hours"):
            budget = cfg["budget_hours"] * comp["gpus_per_run"]
            hours = min(hours, budget) if hours else budget
            flops = hours * 3600 * comp["gpu_tflops"] * 1e12 * comp["mfu"]  # what the budget buys
        rows.append({"cell": c.id, "flops": flops, "gpu_hours": hours})
    return rows


def _update_results(out: Path) -> None:
    from egoscale.scaling.table import collect, write_table

    if any(out.glob("eval/*/result.json")):
        write_table(collect(out / "eval"), out / "results.csv")


def run_local(grid: Grid, out: str | Path, log=print, progress: bool = False, parallel: int = 1,
              gpus: int = 0) -> dict:
    """Every cell (its pretraining, then its evaluations); finished cells are skipped, failures recorded.

    parallel > 1 runs that many cells at once in worker processes on the CPU, each with an equal
    share of the cores (tiny models use many threads poorly, so two one-thread runs beat one
    two-thread run); gpus = N runs N cells at once, one per GPU (CUDA_VISIBLE_DEVICES).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = cells(grid)
    counts = {"done": 0, "skipped": 0, "failed": 0, "blocked": 0}

    def add(c: dict) -> None:
        for k in counts:
            counts[k] += c[k]

    slots = gpus or parallel
    if slots <= 1 or len(todo) <= 1:
        for i, cell in enumerate(todo, 1):
            add(_run_whole_cell(grid, out, cell, f"[{i}/{len(todo)}]", progress, log))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        ctx = mp.get_context("spawn")  # no CUDA or thread-pool state inherited from this process
        threads = max(1, (os.cpu_count() or 1) // slots)
        # longest cells first (by estimated FLOPs), so that no long cell runs alone at the end
        cost = {r["cell"]: r["flops"] or 0.0 for r in estimate(grid)}
        left = {cell.id: (i, cell) for i, cell in sorted(enumerate(todo, 1), key=lambda ic: -cost.get(ic[1].id, 0.0))}
        for attempt in range(1 + WORKER_RESTARTS):
            devices = ctx.Queue()
            for k in range(slots):
                devices.put(str(k) if gpus else None)
            with ProcessPoolExecutor(slots, mp_context=ctx, initializer=_init_worker,
                                     initargs=(devices, None if gpus else threads)) as pool:
                futures = {pool.submit(_run_cell_in_worker, grid, out, cell, f"[{i}/{len(todo)}]"): cell.id
                           for i, cell in left.values()}
                for f in as_completed(futures):
                    try:
                        c, lines = f.result()
                    except BrokenProcessPool:  # a worker was killed (e.g. by the OOM killer): all of the pool's
                        continue              # unfinished cells land here; they are run again below
                    for line in lines:
                        log(line)
                    add(c)
                    del left[futures[f]]
                    _update_results(out)
            if not left:
                break
            again = attempt < WORKER_RESTARTS
            log(f"sweep: a worker process died (killed by the OS? out of memory?) with {len(left)} cells unfinished"
                + ("; they run again in new workers, resuming from their checkpoints" if again else ""))
        for _, cell in left.values():  # gave up on these: recorded like any failure
            _mark_failed(grid, out, cell, "its worker process died (killed by the OS? out of memory?) "
                         f"{1 + WORKER_RESTARTS} times")
            counts["failed"] += 1
    log(f"sweep: {counts['done']} cells run, {counts['skipped']} already done, {counts['failed']} failed"
        + (f" ({counts['blocked']} evaluations blocked by failed pretraining)" if counts["blocked"] else ""))
    return counts


def _mark_failed(grid: Grid, out: Path, cell: Cell, error: str) -> None:
    """Record a cell that never reported back: its pretraining, or else its unfinished evaluations."""
    pdir = pretrain_dir(out, cell)
    if _state(pdir)["state"] != "done":
        _set_state(pdir, state="failed", error=error, pid=None)
        return
    for ev in grid.evals:
        edir = eval_dir(out, cell, ev)
        if _state(edir)["state"] != "done":
            _set_state(edir, state="failed", error=error, pid=None)


def _init_worker(devices, threads: int | None) -> None:
    dev = devices.get()
    if dev is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = dev
    if threads:
        import torch

        torch.set_num_threads(threads)


def _run_cell_in_worker(grid: Grid, out: Path, cell: Cell, label: str) -> tuple[dict, list[str]]:
    lines: list[str] = []
    return _run_whole_cell(grid, out, cell, label, False, lines.append, update=False), lines


def _run_whole_cell(grid: Grid, out: Path, cell: Cell, label: str, progress: bool, log,
                    update: bool = True) -> dict:
    """One cell's pretraining (unless done) and each of its evaluations (unless done)."""
    from egoscale.evaluate.finetune import finetune
    from egoscale.evaluate.probe import probe
    from egoscale.train.pretrain import pretrain

    counts = {"done": 0, "skipped": 0, "failed": 0, "blocked": 0}
    pdir = pretrain_dir(out, cell)
    if _state(pdir)["state"] == "done":
        counts["skipped"] += 1
    else:
        def run_pretrain():
            cfg = pretrain_config(grid, cell, pdir)
            cfg.progress = progress
            return pretrain(cfg, log=lambda *a: None)

        ok = _run_cell(pdir, run_pretrain, f"{label} pretrain {cell.id}", log)
        counts["done" if ok else "failed"] += 1
        if not ok:
            counts["blocked"] += len(grid.evals)
            return counts
    for ev in grid.evals:
        edir = eval_dir(out, cell, ev)
        if _state(edir)["state"] == "done":
            counts["skipped"] += 1
            continue

        def run_eval(ev=ev, edir=edir):
            ecfg = eval_config(grid, ev, pdir / "checkpoint.pt", edir)
            ecfg.progress = progress
            return (finetune if ev["kind"] == "finetune" else probe)(ecfg, log=lambda *a: None)

        ok = _run_cell(edir, run_eval, f"{label} {ev['name']} {cell.id}", log)
        counts["done" if ok else "failed"] += 1
        if ok and update:
            _update_results(out)
    return counts


def _run_cell(folder: Path, fn, label: str, log) -> bool:
    t0 = time.time()
    _set_state(folder, state="running", pid=os.getpid(), started=t0, error=None)
    try:
        res = fn()
    except Exception as e:  # noqa: BLE001 - a failed cell is recorded and the sweep goes on
        (folder / "error.log").write_text(traceback.format_exc())
        _set_state(folder, state="failed", error=f"{type(e).__name__}: {e}", log=str(folder / "error.log"))
        log(f"{label}: FAILED ({type(e).__name__}: {str(e)[:200]}); see {folder / 'error.log'}")
        return False
    _set_state(folder, state="done", seconds=round(time.time() - t0, 2), pid=None)
    extra = f" top-1 {res['top1']:.3f}" if isinstance(res, dict) and "top1" in res else ""
    log(f"{label}: done in {time.time() - t0:.0f} s{extra}")
    return True


# --- SLURM ---------------------------------------------------------------------------------
def _flags(cfg) -> list[str]:
    args = []
    for k, v in to_dict(cfg).items():
        if v is None or k == "progress":
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, list):
            args += [flag, ",".join(str(x) for x in v)]
        else:
            args += [flag, str(v)]
    return args + ["--no-progress"]


def slurm_jobs(grid: Grid, out: str | Path) -> list[dict]:
    """The SLURM job specifications for a sweep: one multi-GPU job per pretraining cell (torchrun
    over the node's GPUs), and one single-GPU job per evaluation, which waits for its
    pretraining job. Every job re-runs the same command on requeue, and the stages resume."""
    out = Path(out)
    sl = {"partition": None, "gpus_per_node": 8, "nodes": 1, "timeout_min": 2880, "cpus_per_task": 32,
          "eval_timeout_min": 720, "mem_gb": 0, "account": None, **grid.slurm}
    unknown = set(sl) - {"partition", "gpus_per_node", "nodes", "timeout_min", "cpus_per_task", "eval_timeout_min",
                         "mem_gb", "account", "constraint"}
    if unknown:
        raise ConfigError(f"slurm: unknown keys {sorted(unknown)}")
    jobs = []
    for cell in cells(grid):
        pdir = pretrain_dir(out, cell)
        cfg = pretrain_config(grid, cell, pdir)
        g, n = sl["gpus_per_node"], sl["nodes"]
        rdzv = ["--rdzv-backend", "c10d", "--rdzv-endpoint", "$MASTER_ADDR:29500"] if n > 1 else ["--standalone"]
        cmd = ["torchrun", "--nnodes", str(n), "--nproc-per-node", str(g), *rdzv, "-m", "egoscale", "pretrain",
               *_flags(cfg)]
        jobs.append({"name": f"pt_{cell.id}", "kind": "pretrain", "cell": cell.id, "command": cmd,
                     "shell": shlex.join(cmd), "nodes": n, "gpus_per_node": g, "tasks_per_node": 1,
                     "cpus_per_task": sl["cpus_per_task"], "timeout_min": sl["timeout_min"],
                     "partition": sl["partition"], "account": sl["account"], "requeue": True,
                     "output": str(pdir / "slurm-%j.out"), "depends_on": None})
        for ev in grid.evals:
            edir = eval_dir(out, cell, ev)
            ecfg = eval_config(grid, ev, pdir / "checkpoint.pt", edir)
            ecmd = ["python", "-m", "egoscale", ev["kind"], *_flags(ecfg)]
            jobs.append({"name": f"{ev['name']}_{cell.id}", "kind": ev["kind"], "cell": cell.id, "command": ecmd,
                         "shell": shlex.join(ecmd), "nodes": 1, "gpus_per_node": 1, "tasks_per_node": 1,
                         "cpus_per_task": max(1, sl["cpus_per_task"] // max(1, g)),
                         "timeout_min": sl["eval_timeout_min"], "partition": sl["partition"], "account": sl["account"],
                         "requeue": True, "output": str(edir / "slurm-%j.out"), "depends_on": f"pt_{cell.id}"})
    return jobs


def submit_slurm(jobs: list[dict], out: str | Path, log=print) -> list[str]:
    """Submit the jobs through submitit (pip install egoscale[slurm]); returns job ids."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("the slurm backend needs submitit: pip install 'egoscale[slurm]'") from None
    out = Path(out)
    ids: dict[str, str] = {}
    for job in jobs:
        ex = submitit.AutoExecutor(folder=str(out / "slurm" / job["name"]))
        extra = {"requeue": True}
        if job["depends_on"] and job["depends_on"] in ids:
            extra["dependency"] = f"afterok:{ids[job['depends_on']]}"
        if job.get("account"):
            extra["account"] = job["account"]
        ex.update_parameters(name=job["name"], nodes=job["nodes"], gpus_per_node=job["gpus_per_node"],
                             tasks_per_node=job["tasks_per_node"], cpus_per_task=job["cpus_per_task"],
                             timeout_min=job["timeout_min"], slurm_partition=job["partition"],
                             slurm_additional_parameters=extra)
        j = ex.submit(submitit.helpers.CommandFunction(["bash", "-lc", job["shell"]]))
        ids[job["name"]] = j.job_id
        log(f"submitted {job['name']} as {j.job_id}")
    return list(ids.values())


def dry_run(grid: Grid, log=print) -> list[dict]:
    rows = estimate(grid)
    log(f"{'cell':<32}{'train FLOPs':>14}{'GPU-hours':>11}")
    for r in rows:
        log(f"{r['cell']:<32}{'?' if r['flops'] is None else format(r['flops'], '.3g'):>14}"
            f"{'?' if r['gpu_hours'] is None else format(r['gpu_hours'], '.2f'):>11}")
    tot_f = sum(r["flops"] or 0 for r in rows)
    tot_h = sum(r["gpu_hours"] or 0 for r in rows)
    log(f"{len(rows)} pretraining cells x {len(grid.evals)} evaluations; total {tot_f:.3g} FLOPs, "
        f"{tot_h:.1f} GPU-hours at {grid.compute.get('mfu', 0.4):.0%} MFU of "
        f"{grid.compute.get('gpu_tflops', 989.0):g} TFLOP/s (evaluations not counted)")
    return rows


__all__ = ["run_local", "status", "slurm_jobs", "submit_slurm", "dry_run", "estimate"]
