"""SLURM backend of `egoscale sweep`.

One job per pretraining cell (over `gpus_per_node` GPUs of `nodes` nodes, torchrun started by
the job itself) and one single-GPU job per evaluation, which waits for its pretraining job
(`afterok`). Every job runs `python -m egoscale.sweep.job OUT STAGE CELL`: the stage with its
state in the cell's folder, as a local sweep runs it; a requeued job (preemption, `scontrol
requeue`) runs the same command again and the stage resumes from its checkpoint.

Submitting is idempotent: stages that are done are skipped, and a stage whose recorded job is
still queued or running (as `squeue` says) is not submitted again; its evaluations then wait
for that job. The job ids are kept in OUT/slurm/jobs.json; `sweep status` reads SLURM's view of
them (queued, running) and the cells' own state (done, failed with the log to read).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from egoscale.errors import ConfigError
from egoscale.fileio import write_json_atomic
from egoscale.sweep.grid import Grid, all_cells, stages
from egoscale.sweep.folders import CellState, cell_state, groups, is_done, stage_dir, update_results

@dataclass(frozen=True)
class SlurmSettings:
    """A grid's `slurm:` section: where and how big its jobs are. A pretraining job takes `nodes`
    nodes of `gpus_per_node` GPUs for `timeout_min`; an evaluation one GPU (and its share of the
    CPUs) for `eval_timeout_min`."""

    partition: str | None = None
    gpus_per_node: int = 8
    nodes: int = 1
    timeout_min: int = 2880
    cpus_per_task: int = 32
    eval_timeout_min: int = 720
    mem_gb: int = 0
    account: str | None = None
    constraint: str | None = None
    python: str | None = None  # the interpreter on the nodes (default: this one)


SLURM_KEYS = tuple(f.name for f in dataclasses.fields(SlurmSettings))
# squeue states of a job that will still run (or is running): never submit its stage again
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "STAGE_OUT", "SIGNALING"}


def slurm_settings(grid: Grid) -> SlurmSettings:
    unknown = set(grid.slurm) - set(SLURM_KEYS)
    if unknown:
        raise ConfigError(f"slurm: unknown keys {sorted(unknown)} (known: {', '.join(SLURM_KEYS)})")
    return SlurmSettings(**grid.slurm)


def slurm_jobs(grid: Grid, out: str | Path) -> list[dict]:
    """The job specifications of a sweep, pretraining jobs before the evaluations that wait for them."""
    out = Path(out).resolve()
    sl = slurm_settings(grid)
    python = sl.python or sys.executable
    g, n = sl.gpus_per_node, sl.nodes
    jobs = []
    for cell in all_cells(grid):
        for stage in stages(grid, cell):
            pre = stage == "pretrain"
            cmd = [python, "-m", "egoscale.sweep.job", str(out), stage, cell.id]
            jobs.append({"name": f"{'pt' if pre else stage}_{cell.id}", "stage": stage, "cell": cell.id,
                         "folder": str(stage_dir(grid, out, cell, stage)), "command": cmd,
                         "nodes": n if pre else 1, "gpus_per_node": g if pre else min(g, 1), "tasks_per_node": 1,
                         "cpus_per_task": sl.cpus_per_task if pre else max(1, sl.cpus_per_task // max(1, g)),
                         "timeout_min": sl.timeout_min if pre else sl.eval_timeout_min,
                         "partition": sl.partition, "account": sl.account, "constraint": sl.constraint,
                         "mem_gb": sl.mem_gb, "requeue": True,
                         "depends_on": None if pre or cell.baseline else f"pt_{cell.id}"})
    return jobs


def _records(out: Path) -> dict[str, str]:
    f = out / "slurm" / "jobs.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def job_states(ids: list[str]) -> dict[str, str]:
    """SLURM's state of each job id it still knows (squeue), e.g. PENDING, RUNNING."""
    if not ids:
        return {}
    for attempt in range(5):  # a busy controller can time out: ask again before giving up
        try:
            r = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"], capture_output=True,
                               text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ConfigError(f"cannot ask SLURM about the sweep's jobs (squeue: {e})") from None
        # squeue fails outright when none of the ids is known any more; that is an answer
        if r.returncode == 0 or "Invalid job id" in r.stderr:
            break
        time.sleep(1 + attempt)
    else:
        raise ConfigError(f"cannot ask SLURM about the sweep's jobs (squeue: {r.stderr.strip()[:200]})")
    states = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    for jid in set(ids) - set(states):  # not listed (e.g. in the middle of a requeue): ask the controller
        for attempt in range(3):
            r = subprocess.run(["scontrol", "-o", "show", "job", jid], capture_output=True, text=True, timeout=60)
            m = re.search(r"JobState=(\S+)", r.stdout)
            if m or "Invalid job id" in r.stderr:
                break
            time.sleep(1 + attempt)
        if m:
            states[jid] = m.group(1)
    return states


def submit_slurm(grid: Grid, jobs: list[dict], out: str | Path, log=print) -> dict[str, str]:
    """Submit what is neither done nor already queued or running, through submitit
    (pip install 'egoscale[slurm]'); returns {job name: job id} of everything submitted."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("the slurm backend needs submitit: pip install 'egoscale[slurm]'") from None
    out = Path(out).resolve()
    (out / "slurm").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "grid.json", grid.to_dict())  # what the jobs run
    records = _records(out)
    live = job_states(list(records.values()))
    ids: dict[str, str] = {}  # jobs of this sweep that are queued or running after this call
    submitted, skipped_done, skipped_live = {}, 0, 0
    for job in jobs:
        if is_done(Path(job["folder"])):
            skipped_done += 1
            continue
        old = records.get(job["name"])
        if old and live.get(old) in ACTIVE:
            ids[job["name"]] = old
            skipped_live += 1
            continue
        ex = submitit.AutoExecutor(folder=str(out / "slurm" / job["name"]))
        extra = {"requeue": True}
        dep = ids.get(job["depends_on"]) if job["depends_on"] else None
        if dep:
            extra["dependency"] = f"afterok:{dep}"
        for key in ("account", "constraint"):
            if job.get(key):
                extra[key] = job[key]
        params = dict(name=job["name"], nodes=job["nodes"], tasks_per_node=job["tasks_per_node"],
                      cpus_per_task=job["cpus_per_task"], timeout_min=job["timeout_min"],
                      slurm_partition=job["partition"], slurm_additional_parameters=extra)
        if job["gpus_per_node"]:
            params["gpus_per_node"] = job["gpus_per_node"]
        if job.get("mem_gb"):
            params["mem_gb"] = job["mem_gb"]
        ex.update_parameters(**params)
        j = ex.submit(submitit.helpers.CommandFunction(job["command"]))
        ids[job["name"]] = submitted[job["name"]] = str(j.job_id)
        records[job["name"]] = str(j.job_id)
        write_json_atomic(out / "slurm" / "jobs.json", records)
        log(f"submitted {job['name']} as {j.job_id}" + (f" (after {dep})" if dep else ""))
    log(f"sweep: {len(submitted)} jobs submitted, {skipped_done} stages already done, {skipped_live} already "
        "queued or running")
    return submitted


def slurm_status(grid: Grid, out: str | Path) -> dict[str, list[str]]:
    """Each stage of the sweep by state: queued and running as SLURM reports its job; done and
    failed from the stage's own record (failed with the log to read); pending otherwise."""
    out = Path(out).resolve()
    records = _records(out)
    live = job_states(list(records.values()))
    # a stage that says "running" while SLURM has no active job for it is asked about once more,
    # all together after a second: a requeue passes through such a moment
    jobs = slurm_jobs(grid, out)
    doubtful = [jid for j in jobs if (jid := records.get(j["name"])) and live.get(jid) not in ACTIVE
                and cell_state(Path(j["folder"]))["state"] == CellState.RUNNING]
    if doubtful:
        time.sleep(1)
        live.update(job_states(doubtful))
    by_state = groups(*CellState)
    for job in jobs:
        jid = records.get(job["name"])
        st = cell_state(Path(job["folder"]))
        span = f"{job['nodes']} nodes" if job["nodes"] > 1 else ""
        label = f"{job['stage']} {job['cell']}" + (f" (job {jid}{', ' + span if span else ''})" if jid
                                                     else f" ({span})" if span else "")
        slurm = live.get(jid) if jid else None
        if st["state"] == CellState.DONE:
            by_state[CellState.DONE].append(label)
        elif slurm in ACTIVE:
            by_state[CellState.RUNNING if slurm in ("RUNNING", "COMPLETING", "CONFIGURING") else CellState.QUEUED
                     ].append(label)
        elif st["state"] == CellState.FAILED or (jid and st["state"] == CellState.RUNNING):
            logs = sorted((out / "slurm" / job["name"]).glob(f"{jid}_*_log.err")) if jid else []
            where = st.get("log") or (str(logs[-1]) if logs else str(out / "slurm" / job["name"]))
            why = st.get("error") or "the job ended without finishing its stage"
            by_state[CellState.FAILED].append(f"{label}: {why}; log: {where}")
        else:
            by_state[CellState.PENDING].append(label)
    update_results(out, grid)  # results.csv as of now, whichever jobs wrote theirs last
    return by_state


__all__ = ["slurm_jobs", "submit_slurm", "slurm_status", "job_states", "slurm_settings"]
