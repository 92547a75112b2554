"""The demo sizes its sweep to a time budget from timings taken on the machine that runs it."""

import json
from dataclasses import replace

import pytest

from egoscale.demo_sizes import SIZES
from egoscale.demo_budget import (PARALLEL_SLOWDOWN, PLAN, REPORT_RESERVE, EvalWork, describe_plan, evaluation_work,
                                  floor_status, plan, predict_sweep_seconds)

SIZE = replace(SIZES["default"], categories=4, train_per_class=4, val_per_class=4, models=("vit_pico4",),
               img_sizes=(24,), steps=400, floor_steps=100, epochs=1, batch=16)
CELLS = [("vit_pico4", 24)] * 4
quiet = lambda *a, **k: None  # noqa: E731
NO_EVALS = {"a": EvalWork(0, 0), "b": EvalWork(0, 0)}


def _grid(tmp_path, size=SIZE):
    from egoscale.demo import demo_grid
    from egoscale.sweep.grid import load_grid

    return load_grid(demo_grid(tmp_path, size))


def test_the_plan_fits_the_budget_and_is_kept_for_the_folder(tmp_path):
    grid = _grid(tmp_path)
    work = evaluation_work(grid, 16, 16)
    roomy = plan(tmp_path / "a", SIZE, grid, CELLS, parallel=2, threads=1, budget_min=60, elapsed_s=0, log=quiet)
    assert roomy["steps"] == 400 and "design length" in roomy["why"]  # never more than the design length

    timing = roomy["timing"]
    # a budget that the design length overruns: fewer steps, whose predicted sweep fits what is left
    need = predict_sweep_seconds(CELLS, 400, timing, work, 2)
    budget_min = (need * 0.6 + 5) / 60 / (1 - REPORT_RESERVE)
    tight = plan(tmp_path / "b", SIZE, grid, CELLS, parallel=2, threads=1, budget_min=budget_min, elapsed_s=5,
                 log=quiet, timing=timing)  # the same timings: the choice itself is exact
    left = budget_min * 60 * (1 - REPORT_RESERVE) - tight["seconds_before_sweep"]  # after the reserve
    assert 100 <= tight["steps"] < 400 and tight["floor_steps"] == 100
    # the most steps that fit (10-step granularity); the plan's own figure is rounded for display
    assert predict_sweep_seconds(CELLS, tight["steps"], tight["timing"], work, 2) <= left
    assert abs(tight["predicted_sweep_seconds"] - predict_sweep_seconds(CELLS, tight["steps"], timing, work, 2)) <= 0.05
    assert predict_sweep_seconds(CELLS, tight["steps"] + 10, tight["timing"], work, 2) > left

    # the floor does not fit: never fewer steps than the floor (a study that could show nothing); the
    # plan runs the floor and says so before the sweep, with how long the whole demo will take
    said = []
    hopeless = plan(tmp_path / "c", SIZE, grid, CELLS, parallel=2, threads=1, budget_min=0.01, elapsed_s=5,
                    log=said.append, timing=timing)
    assert hopeless["steps"] == 100
    expected = (5 + predict_sweep_seconds(CELLS, 100, timing, work, 2)) / 60 / (1 - REPORT_RESERVE)
    assert hopeless["predicted_total_minutes"] == pytest.approx(expected, abs=0.05)
    assert "floor of 100 steps" in said[-1] and f"about {expected:.0f} min" in said[-1]
    assert floor_status(hopeless) == "100 pretraining steps per run (at the floor of 100)"
    assert "above the floor of 100" in floor_status(tight) and "at the floor" in describe_plan(hopeless, 1, 2)[0]

    # re-running the demo in a folder reuses its plan, whatever the budget now: one study, one length
    again = plan(tmp_path / "c", SIZE, grid, CELLS, parallel=2, threads=1, budget_min=60, elapsed_s=0, log=quiet)
    assert again["steps"] == 100 and json.loads((tmp_path / "c" / PLAN).read_text())["steps"] == 100


def test_the_sweep_prediction_runs_cells_longest_first_on_each_free_worker():
    timing = {"a@8": {"pretrain_step": 1.0, "finetune_step": 0.0, "extract_image": 0.0},
              "b@8": {"pretrain_step": 3.0, "finetune_step": 0.0, "extract_image": 0.0}}
    cells = [("a", 8), ("a", 8), ("b", 8)]
    # 10 steps: cells of 10+2, 10+2 and 30+2 s; two workers: 32 on one, 24 on the other, slowed by
    # sharing the machine
    assert predict_sweep_seconds(cells, 10, timing, NO_EVALS, 2) == pytest.approx(32 * PARALLEL_SLOWDOWN)
    assert predict_sweep_seconds(cells, 10, timing, NO_EVALS, 1) == 56
    # a random-weight baseline is evaluated (2 s here) but never pretrained
    assert predict_sweep_seconds(cells, 10, timing, NO_EVALS, 1, baselines=[("b", 8)]) == 58
    # the run beyond the grid runs beside the others, as one more run: 32 on one worker, 12 + 12 + 12
    assert predict_sweep_seconds(cells, 10, timing, NO_EVALS, 2, beside=[("a", 8)]) == pytest.approx(
        36 * PARALLEL_SLOWDOWN)
    assert predict_sweep_seconds(cells, 10, timing, NO_EVALS, 1, beside=[("a", 8)]) == 68


def test_the_evaluations_are_priced_from_the_grid_the_sweep_runs(tmp_path):
    # the demo's evaluations as its grid sets them: finetuning for each model's epochs (vit_pico4
    # longer) at the eval's batch, the head's warm-up features and one scoring of the val set, and the
    # probe's features of both sets; another setting in the grid changes the price with it
    size = replace(SIZE, models=("vit_pico4", "vit_nano4"), model_epochs=(("vit_pico4", 3),), epochs=2)
    grid = _grid(tmp_path, size)
    work = evaluation_work(grid, n_train=40, n_val=20)
    assert work == {"vit_pico4": EvalWork(3 * 3, 40 + 20 + 40 + 20), "vit_nano4": EvalWork(2 * 3, 40 + 20 + 40 + 20)}
    grid.evals[0].settings["eval_every"] = 1  # the val set scored after every epoch
    grid.evals[0].model_overrides = {}
    assert evaluation_work(grid, 40, 20)["vit_pico4"] == EvalWork(2 * 3, 40 + 2 * 20 + 40 + 20)


def test_workers_count_the_cores_this_process_may_use(monkeypatch):
    """Under `taskset -c 0` on a 2-core machine the demo runs one cell at a time, not two on one core."""
    import os

    from egoscale.machine import usable_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert usable_cores() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert usable_cores() == 3


def test_the_prediction_counts_the_data_loader_of_each_step(tiny_study):
    from egoscale.demo_budget import time_machine

    # the demo's runs load their frames in the process that trains: each step waits for its batch
    timed = time_machine([("vit_pico4", 24)], batch=8, threads=1, frames=tiny_study / "frames")
    assert timed["vit_pico4@24"]["load_batch"] > 0
    assert "load_batch" not in time_machine([("vit_pico4", 24)], batch=8, threads=1)["vit_pico4@24"]
    timing = {"a@8": {"pretrain_step": 1.0, "load_batch": 0.5, "finetune_step": 0.0, "extract_image": 0.0}}
    assert predict_sweep_seconds([("a", 8)], 10, timing, NO_EVALS, 1) == 10 * 1.5 + 2
