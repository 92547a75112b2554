"""One stage of one sweep cell, as a SLURM job runs it:

    python -m egoscale.sweep.job OUT STAGE CELL      (STAGE: pretrain, or an evaluation's name)

It reads the sweep's grid from OUT/grid.json (written when the sweep was submitted) and runs
the stage with the cell's state kept in its folder, like a local sweep does. A pretraining job
over several GPUs or nodes starts torchrun itself, with the rendezvous on the job's first node,
and torchrun runs this same module on every GPU. A requeued job runs the same command again and
the stage resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from egoscale.sweep.grid import all_cells, load_grid


def _first_node_address() -> str:
    """Where the job's first node is reached: its NodeAddr in SLURM's view (the hostname on most
    clusters; an address where a node's name does not resolve)."""
    nodes = os.environ.get("SLURM_JOB_NODELIST", "localhost")
    try:
        first = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                               check=True).stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodes.split(",")[0]
    try:
        shown = subprocess.run(["scontrol", "-o", "show", "node", first], capture_output=True, text=True,
                               check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return first
    m = re.search(r"\bNodeAddr=(\S+)", shown)
    return m.group(1) if m else first


def rendezvous_port(job_id: str) -> int:
    """A port for the job's rendezvous, from its id: two jobs sharing a first node do not collide."""
    return 20000 + int(job_id) % 20000 if job_id.isdigit() else 29500


def main(argv: list[str] | None = None) -> int:
    out, stage, cell_id = (argv if argv is not None else sys.argv[1:])[:3]
    out = Path(out)
    grid = load_grid(json.loads((out / "grid.json").read_text()))
    cell = next((c for c in all_cells(grid) if c.id == cell_id), None)
    if cell is None:
        print(f"egoscale sweep job: no cell {cell_id!r} in {out / 'grid.json'}", file=sys.stderr)
        return 2
    from egoscale.sweep.slurm import slurm_settings

    sl = slurm_settings(grid)
    procs, nodes = max(1, sl.gpus_per_node), sl.nodes
    if stage == "pretrain" and (procs > 1 or nodes > 1) and "LOCAL_RANK" not in os.environ:
        job = os.environ.get("SLURM_JOB_ID", "egoscale")
        endpoint = f"{_first_node_address()}:{rendezvous_port(job)}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", str(procs),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", job,
               "-m", "egoscale.sweep.job", str(out), stage, cell_id]
        return subprocess.run(cmd).returncode
    from egoscale.sweep.sweep import run_stage

    ok = run_stage(grid, out, cell, stage, f"{stage} {cell_id}", progress=False, stage_log=print)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
