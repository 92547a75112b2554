"""A sweep's folder: where each cell's stages live, the state each is in, and the results table.

    OUT/pretrain/{cell}/            a pretraining run; OUT/eval/{cell}_{evaluation}/  an evaluation
    FOLDER/cell.json                the stage's state (pending, running with its pid, done, failed)
    OUT/results.csv                 the grid's finished evaluations

The local runner and the SLURM backend both read and write these, and nothing else.
"""

from __future__ import annotations

import json
import os
import time
from enum import Enum
from pathlib import Path

from egoscale.errors import ConfigError
from egoscale.fileio import write_json_atomic
from egoscale.sweep.grid import Cell, Evaluation, Grid, all_cells


def pretrain_dir(out: Path, cell: Cell) -> Path:
    return out / "pretrain" / cell.id


def eval_dir(out: Path, cell: Cell, ev: Evaluation) -> Path:
    return out / "eval" / f"{cell.id}_{ev.name}"


class CellState(str, Enum):
    """Where one stage of one cell stands (its folder's cell.json says; `queued`: SLURM only)."""

    DONE = "done"
    RUNNING = "running"
    QUEUED = "queued"
    FAILED = "failed"
    PENDING = "pending"


def groups(*states: CellState) -> dict[str, list[str]]:
    """Empty lists of stage folders by state, in the order a status printout lists them."""
    return {s.value: [] for s in states}


def cell_state(folder: Path) -> dict:
    f = folder / "cell.json"
    return json.loads(f.read_text()) if f.is_file() else {"state": CellState.PENDING.value}


def is_done(folder: Path) -> bool:
    return cell_state(folder)["state"] == CellState.DONE


def set_cell_state(folder: Path, **kw) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "cell.json", {**cell_state(folder), **kw, "updated": time.time()})


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def stage_dir(grid: Grid, out: Path, cell: Cell, stage: str) -> Path:
    """A cell's folder for `stage`: "pretrain" or the name of one of the grid's evaluations."""
    if stage == "pretrain":
        return pretrain_dir(out, cell)
    ev = next((e for e in grid.evals if e.name == stage), None)
    if ev is None:
        raise ConfigError(f"no stage {stage!r} in the grid (pretrain, {', '.join(e.name for e in grid.evals)})")
    return eval_dir(out, cell, ev)


def update_results(out: Path, grid: Grid) -> None:
    """results.csv from the evaluations of this grid's cells (a folder's other results stay out)."""
    from egoscale.scaling.results import collect, write_table

    files = [eval_dir(out, c, e) / "result.json" for c in all_cells(grid) for e in grid.evals]
    if any(f.is_file() for f in files):
        write_table(collect(out / "eval", [f for f in files if f.is_file()]), out / "results.csv")
