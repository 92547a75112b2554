"""The sweep's SLURM backend on a real single-node cluster (slurmctld + slurmd on this machine,
started by tests/slurm_cluster.sh; skipped with its reason where that cannot be had)."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from egoscale.cli import main
from tests.study import grid_dict as _grid

pytestmark = pytest.mark.slurm
SCRIPT = Path(__file__).with_name("slurm_cluster.sh")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    r = subprocess.run(["bash", str(SCRIPT), "start", str(state)], capture_output=True, text=True, timeout=600)
    if r.returncode == 3:
        pytest.skip(f"no SLURM test cluster here: {r.stderr.strip()}")
    assert r.returncode == 0 and "ready" in r.stdout, r.stderr
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    subprocess.run(["bash", str(SCRIPT), "stop", str(state)], capture_output=True)
    if before is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = before


def _write_grid(root: Path, path: Path, **over) -> Path:
    import yaml

    g = _grid(root, slurm={"partition": "test", "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10,
                           "eval_timeout_min": 10}, **over)
    path.write_text(yaml.safe_dump(g))
    return path


def _status(out: Path, capsys) -> dict:
    """`sweep status` as printed: {state: count} and, under "failed"/"running"/"queued", their lines."""
    capsys.readouterr()
    assert main(["sweep", "status", str(out)]) == 0
    groups, key = {}, None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith(" "):
            groups[key + "_lines"].append(line.strip())
        else:
            key, n = line.split()[:2]
            groups[key], groups[key + "_lines"] = int(n), []
    return groups


def _wait(out: Path, capsys, until, timeout: float = 300) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        groups = _status(out, capsys)
        if until(groups):
            return groups
        time.sleep(2)
    raise AssertionError(f"timed out waiting; last status {groups}")


def _jobs(out: Path) -> dict:
    return json.loads((out / "slurm" / "jobs.json").read_text())


def test_a_grid_runs_through_slurm_with_dependencies_and_is_not_submitted_twice(cluster, tiny_study, tmp_path,
                                                                                 capsys):
    grid = _write_grid(tiny_study, tmp_path / "grid.yaml", fractions=[1.0, 0.5], seeds=[1])
    out = tmp_path / "runs"
    assert main(["sweep", str(grid), "--out", str(out), "--backend", "slurm"]) == 0
    first = _jobs(out)
    assert len(first) == 4  # 2 pretraining jobs + 2 probes
    seen = _status(out, capsys)
    assert seen["queued"] + seen["running"] + seen["done"] == 4
    # submitted again while they are queued or running: nothing is submitted twice
    capsys.readouterr()
    assert main(["sweep", str(grid), "--out", str(out), "--backend", "slurm"]) == 0
    said = capsys.readouterr().out
    assert _jobs(out) == first and "0 jobs submitted" in said

    done = _wait(out, capsys, lambda g: g["done"] == 4 or g["failed"])
    assert done["done"] == 4 and not done["failed"], done
    # each probe started after its pretraining job had finished (afterok)
    for cell in ("vit_pico4@32_1_s1", "vit_pico4@32_0.5_s1"):
        pre = json.loads((out / "pretrain" / cell / "cell.json").read_text())
        ev = json.loads((out / "eval" / f"{cell}_probe" / "cell.json").read_text())
        assert ev["started"] >= pre["updated"] and ev["slurm_job"] == first[f"probe_{cell}"]
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 2  # a row per probe
    # everything done: a third submission skips every stage
    capsys.readouterr()
    assert main(["sweep", str(grid), "--out", str(out), "--backend", "slurm"]) == 0
    assert "0 jobs submitted, 4 stages already done" in capsys.readouterr().out


def test_a_requeued_pretraining_job_resumes_from_its_checkpoint(cluster, tiny_study, tmp_path, capsys):
    grid = _write_grid(tiny_study, tmp_path / "grid.yaml", fractions=[1.0], seeds=[1], evals=[],
                       pretrain={"steps": 300, "batch_size": 8, "workers": 0, "log_every": 10, "save_every": 20})
    out = tmp_path / "runs"
    assert main(["sweep", str(grid), "--out", str(out), "--backend", "slurm"]) == 0
    job = _jobs(out)["pt_vit_pico4@32_1_s1"]
    metrics = out / "pretrain" / "vit_pico4@32_1_s1" / "metrics.jsonl"
    t0 = time.time()
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 6):  # past step 60: checkpoints
        assert time.time() - t0 < 240, "the pretraining job did not get going"
        time.sleep(1)
    subprocess.run(["scontrol", "requeue", job], check=True)
    # (a requeued job waits for its old credential to expire: 10 s on the test cluster, 2 min by default)
    done = _wait(out, capsys, lambda g: g["done"] == 1 or g["failed"])
    assert done["done"] == 1, {k: v for k, v in done.items() if v}
    steps = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()]
    assert steps == list(range(10, 301, 10))  # every step logged once, in order: no second start from 0
    logs = "".join(p.read_text() for p in (out / "slurm" / "pt_vit_pico4@32_1_s1").glob("*_log.out"))
    assert "resumed from step" in logs
    show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "Restarts=1" in show


def test_a_failed_job_keeps_its_log_and_the_sweep_names_it(cluster, tiny_study, tmp_path, capsys):
    evals = [{"name": "probe", "kind": "probe", "train": str(tmp_path / "no-such-folder"),
              "val": str(tiny_study / "world" / "labelled" / "val"), "condition": "full", "workers": 0}]
    grid = _write_grid(tiny_study, tmp_path / "grid.yaml", fractions=[1.0], seeds=[1], evals=evals)
    out = tmp_path / "runs"
    assert main(["sweep", str(grid), "--out", str(out), "--backend", "slurm"]) == 0
    final = _wait(out, capsys, lambda g: g["failed"])
    assert final["done"] == 1 and final["failed"] == 1
    line = final["failed_lines"][0]
    assert line.startswith("probe vit_pico4@32_1_s1") and "no-such-folder" in line
    log = Path(line.rsplit("log: ", 1)[1])
    assert log.is_file() and "no-such-folder" in log.read_text()
