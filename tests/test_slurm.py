"""The sweep's SLURM backend on a real cluster of two nodes (slurmctld and two slurmd on this
machine, started by tests/slurm_cluster.sh; skipped with its reason where that cannot be had):
jobs with dependencies, requeues, failures, a pretraining run across both nodes, and ingest as
a job array over both."""

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
    r = subprocess.run(["bash", str(SCRIPT), "start", str(state), "2"], capture_output=True, text=True, timeout=600)
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


def _write_grid(root: Path, path: Path, nodes: int = 1, **over) -> Path:
    import yaml

    g = _grid(root, slurm={"partition": "test", "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10,
                           "eval_timeout_min": 10, "nodes": nodes}, **over)
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


def _metric_lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def test_a_two_node_pretraining_job_runs_across_both_nodes_and_resumes_exactly_after_a_requeue(
        cluster, tiny_study, tmp_path, capsys):
    import sys

    cell = "vit_pico4@32_1_s1"
    grid = _write_grid(tiny_study, tmp_path / "grid.yaml", nodes=2, fractions=[1.0], seeds=[1], evals=[],
                       pretrain={"steps": 120, "batch_size": 8, "workers": 0, "log_every": 10, "save_every": 20,
                                 "shuffle_buffer": 100})
    out = tmp_path / "runs"
    assert main(["sweep", str(grid), "--out", str(out), "--backend", "slurm"]) == 0
    job = _jobs(out)[f"pt_{cell}"]
    metrics = out / "pretrain" / cell / "metrics.jsonl"
    t0 = time.time()
    while len(_metric_lines(metrics)) < 4:  # at step 40: checkpoints to resume from
        assert time.time() - t0 < 240, "the two-node job did not get going"
        time.sleep(0.5)
    running = _status(out, capsys)
    assert running["running"] == 1 and running["running_lines"] == [f"pretrain {cell} (job {job}, 2 nodes)"]
    subprocess.run(["scontrol", "requeue", job], check=True)
    done = _wait(out, capsys, lambda g: g["done"] == 1 or g["failed"])
    assert done["done"] == 1, {k: v for k, v in done.items() if v}
    summary = json.loads((out / "pretrain" / cell / "summary.json").read_text())
    assert sorted(summary["nodes"]) == ["n1", "n2"]  # one rank on each node
    logs = "".join(p.read_text() for p in (out / "slurm" / f"pt_{cell}").glob("*_log.out"))
    assert "resumed from step" in logs and "over nodes" in logs
    assert "Restarts=1" in subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout

    # the same cell as one process accumulating two micro-batches (the same global batch, each
    # micro-batch drawing the frames and masks of one of the two ranks): the same loss at every step,
    # although the two-node run was requeued half-way
    ref = tmp_path / "ref"
    ref.mkdir()
    g = json.loads((out / "grid.json").read_text())
    g["slurm"]["nodes"], g["pretrain"]["accum_steps"] = 1, 2
    (ref / "grid.json").write_text(json.dumps(g))
    r = subprocess.run([sys.executable, "-m", "egoscale.sweep.job", str(ref), "pretrain", cell], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "global batch 16 = 8 x 2 accum x 1 devices" in r.stdout
    got, want = _metric_lines(metrics), _metric_lines(ref / "pretrain" / cell / "metrics.jsonl")
    assert [m["step"] for m in got] == list(range(10, 121, 10))
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in want], rel=1e-4)


def test_ingest_as_a_job_array_over_both_nodes_merges_into_what_one_process_makes(cluster, tmp_path):
    import sys

    import webdataset as wds

    from tests.videos import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        write_video(videos / f"v{i}.mp4", n=40 + 10 * i, fps=10, w=64, h=48)
    common = [sys.executable, "-m", "egoscale", "ingest", "--source", f"cam={videos}", "--fps", "2", "--shard-frames",
              "16", "--no-progress"]
    one = subprocess.run(common + ["--out", str(tmp_path / "one")], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    parts, logs = tmp_path / "parts", tmp_path / "logs"
    logs.mkdir()
    # each task asks for a whole node's cores, so the two land on different nodes
    cpus = os.cpu_count()
    wrap = f"echo node=$SLURMD_NODENAME; {' '.join(common)} --out {parts} --part slurm"
    r = subprocess.run(["sbatch", "--wait", "--array=0-1", "-p", "test", f"--cpus-per-task={cpus}",
                        f"--output={logs}/%a.out", "--wrap", wrap], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr + "".join(p.read_text() for p in logs.glob("*.out"))
    said = [(logs / f"{i}.out").read_text() for i in range(2)]
    assert sorted(s.split("node=", 1)[1].split()[0] for s in said) == ["n1", "n2"]
    assert sorted(p.name for p in parts.glob("manifest-part*")) == ["manifest-part000of002.json",
                                                                  "manifest-part001of002.json"]
    merged = subprocess.run([sys.executable, "-m", "egoscale", "ingest", "--merge", "--out", str(parts)],
                            capture_output=True, text=True, timeout=300)
    assert merged.returncode == 0, merged.stderr

    def frames(folder: Path) -> list[tuple]:
        man = json.loads((folder / "manifest.json").read_text())
        urls = [str(folder / s["name"]) for s in man["shards"]]
        return [(json.loads(s["json"])["video"], json.loads(s["json"])["k"], s["jpg"])
                for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]

    assert frames(parts) == frames(tmp_path / "one")  # the same frames, bytes and order
