"""Exact resume: a pretraining run killed at random moments and run again logs the same loss at
every step as a run never killed, each step once (metrics.jsonl and TensorBoard); the loader's
position is part of the checkpoint."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from egoscale.data.cursor import Cursor
from egoscale.data.loader import FrameStream, make_loader, resolve_pieces
from tests.conftest import metrics


@pytest.fixture(scope="module")
def frames(clip_frames):
    return clip_frames




def _kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (torchrun starts its workers as process-group leaders
    of their own, out of reach of a kill of its group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            os.kill(p, 9)
        except ProcessLookupError:
            pass


def _command(frames, out, steps, workers, nproc):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)] if nproc > 1
                else [sys.executable])
    return launcher + ["-m", "egoscale", "pretrain", "--data", str(frames), "--out", str(out), "--model", "vit_pico4",
                       "--batch-size", "8", "--workers", str(workers), "--no-progress", "--log-every", "1",
                       "--save-every", "7", "--shuffle-buffer", "100", "--steps", str(steps), "--lr", "1e-3"]


def _run_with_kills(cmd, run: Path, kill_at: list[int], rng: random.Random) -> str:
    """Run `cmd` to the end, killing it (SIGKILL, its whole tree) once it has logged each step in
    `kill_at` plus a random moment; returns the last attempt's output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for target in kill_at:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            m = metrics(run)
            if m and m[-1]["step"] >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.15))  # anywhere in the following steps: mid-step, mid-save, mid-log
        _kill_tree(proc.pid)
        proc.wait()
    final = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert final.returncode == 0, final.stderr[-2000:]
    return final.stdout


@pytest.mark.slow
@pytest.mark.parametrize("nproc,workers", [(1, 2), (2, 0)], ids=["one-process-2-workers", "torchrun-2"])
def test_a_run_killed_at_random_moments_logs_every_step_exactly_as_an_unkilled_run(frames, tmp_path, nproc,
                                                                                    workers):
    steps = 60
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_command(frames, tmp_path / "ref", steps, workers, nproc), capture_output=True, text=True,
                         timeout=300, env=env)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "run"
    rng = random.Random(nproc * 10 + workers)
    out = _run_with_kills(_command(frames, run, steps, workers, nproc), run,
                          sorted(rng.sample(range(2, steps - 2), 3)), rng)
    assert "resumed from step" in out
    want, got = metrics(tmp_path / "ref"), metrics(run)
    assert [r["step"] for r in got] == list(range(1, steps + 1))  # every step exactly once, in order
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bit for bit, not within a tolerance
    assert [r["samples"] for r in got] == [r["samples"] for r in want]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == steps and summary["final_loss"] == want[-1]["loss"]
    assert not list(run.glob(".*.tmp"))
    if nproc == 1 and _has_tensorboard():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
        acc.Reload()
        assert [e.step for e in acc.Scalars("loss")] == list(range(1, steps + 1))


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_a_resume_with_another_number_of_workers_says_the_data_order_changes(frames, tmp_path):
    from tests.cli import egoscale

    common = ["pretrain", "--data", str(frames), "--out", str(tmp_path / "run"), "--model", "vit_pico4",
              "--batch-size", "8", "--no-progress", "--shuffle-buffer", "50", "--log-every", "5"]
    assert egoscale(*common, "--workers", "0", "--steps", "10").returncode == 0
    r = egoscale(*common, "--workers", "2", "--steps", "20")
    assert r.returncode == 0, r.stderr
    assert "the data order changes from here" in r.stdout and "workers 1" in r.stdout and "workers 2" in r.stdout
    assert [m["step"] for m in metrics(tmp_path / "run")] == [5, 10, 15, 20]
    # the same layout again continues exactly: no such line
    r = egoscale(*common, "--workers", "2", "--steps", "30")
    assert r.returncode == 0 and "data order" not in r.stdout


def _frames_of(stream: FrameStream, n: int) -> list[torch.Tensor]:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_a_stream_continued_from_a_saved_position_gives_the_frames_that_follow(frames):
    pieces, _ = resolve_pieces(frames, piece_size=32)
    make = lambda **kw: FrameStream(pieces, 16, seed=3, rank=1, world_size=2, shuffle_buffer=40, **kw)  # noqa: E731
    whole = _frames_of(make(), 700)  # past the end of the first epoch (about 150 frames for this rank)
    batches = make_loader(make(), batch_size=10, workers=0)
    for _ in range(37):
        next(batches)
    state = batches.state_dict()
    rest = _frames_of(make(resume=state), 330)
    assert all(torch.equal(a, b) for a, b in zip(rest, whole[370:]))
    assert state["readers"]["0/0"]["emitted"] == 370 and state["batches"] == 37


def test_twin_cursors_track_two_loader_workers_that_take_turns(frames):
    pieces, _ = resolve_pieces(frames, piece_size=32)
    stream = FrameStream(pieces, 16, seed=5, shuffle_buffer=30)
    batches = make_loader(stream, batch_size=4, workers=2)
    taken = [next(batches) for _ in range(9)]  # batches 0, 2, .. from worker 0; 1, 3, .. from worker 1
    state = batches.state_dict()
    assert [state["readers"][r]["emitted"] for r in ("0/0", "0/1")] == [20, 16] and state["batches"] == 9
    resumed = make_loader(FrameStream(pieces, 16, seed=5, shuffle_buffer=30, resume=state), batch_size=4, workers=2)
    more = [next(resumed) for _ in range(4)]
    fresh = make_loader(FrameStream(pieces, 16, seed=5, shuffle_buffer=30), batch_size=4, workers=2)
    uninterrupted = [next(fresh) for _ in range(13)]
    assert all(torch.equal(a, b) for a, b in zip(taken + more, uninterrupted))


def test_a_cursor_walks_every_sample_once_per_epoch_and_survives_a_round_trip(frames):
    pieces, total = resolve_pieces(frames, piece_size=32)
    a = Cursor(pieces, seed=1, unit=0, units=1, shuffle_buffer=50)
    first_epoch = [a.next() for _ in range(total - 50)]
    assert len(set(first_epoch)) == len(first_epoch)  # no sample twice before the epoch ends
    b = Cursor(pieces, seed=1, unit=0, units=1, shuffle_buffer=50)
    b.load_state_dict(a.state_dict())
    assert [a.next() for _ in range(400)] == [b.next() for _ in range(400)]
