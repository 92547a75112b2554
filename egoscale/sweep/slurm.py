"""SLURM backend of `egoscale sweep`: one multi-GPU job per pretraining cell (torchrun over a
node's GPUs), one single-GPU job per evaluation that waits for its pretraining job; every job
re-runs the same command on requeue, and the stages resume from their checkpoints."""

from __future__ import annotations

import shlex
from pathlib import Path

from egoscale.config import to_dict
from egoscale.errors import ConfigError
from egoscale.sweep.grid import Grid, cells, eval_config, pretrain_config
from egoscale.sweep.sweep import eval_dir, pretrain_dir


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


__all__ = ["slurm_jobs", "submit_slurm"]
