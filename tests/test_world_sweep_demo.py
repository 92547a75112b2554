"""The built-in world, the sweep runner (skip / resume / failed cells, SLURM specs), the demo."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from egoscale.constants import ASSUMED_GPU_TFLOPS, ASSUMED_MFU
from egoscale.data.video import probe, sample_chunk
from egoscale.errors import ConfigError
from egoscale.scaling.records import load_fit
from egoscale.sweep.grid import all_cells, baseline_cells, cells, load_grid
from egoscale.sweep.slurm import slurm_jobs
from egoscale.sweep.sweep import Counts, estimate, run_local, status
from egoscale.world.world import WorldConfig, make_world
from tests.study import grid_dict as _grid

quiet = lambda *a, **k: None  # noqa: E731


def _frames(path):
    return [s.jpeg for s in sample_chunk(path, 1, 0, None, short_side=0).samples]


def test_world_is_deterministic_and_writes_valid_video(tmp_path):
    cfgs = [WorldConfig(out=str(tmp_path / n), hours=0.02, categories=4, train_per_class=2, val_per_class=2,
                        minutes_per_video=0.5, progress=False) for n in ("a", "b")]
    info = [make_world(c, log=quiet) for c in cfgs]
    assert info[0]["videos"] == ["walk-0000.mp4", "walk-0001.mp4", "walk-0002.mp4"]  # 72 s in 30 s files
    vid = tmp_path / "a" / "videos" / "walk-0000.mp4"
    meta = probe(vid)
    assert (meta.width, meta.height, meta.codec) == (64, 64, "h264") and meta.duration == pytest.approx(30, abs=0.6)
    assert _frames(vid) == _frames(tmp_path / "b" / "videos" / "walk-0000.mp4")  # same seed, same frames
    a = sorted((tmp_path / "a" / "labelled").rglob("*.png"))
    assert len(a) == 4 * 2 * 2 and [p.read_bytes() for p in a] == [
        (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes() for p in a]
    other = make_world(WorldConfig(out=str(tmp_path / "c"), hours=0.02, categories=4, train_per_class=2,
                                   val_per_class=2, minutes_per_video=0.5, seed=1, progress=False), log=quiet)
    assert other["videos"] == info[0]["videos"]
    assert _frames(tmp_path / "c" / "videos" / "walk-0000.mp4") != _frames(vid)  # another seed, another world
    with pytest.raises(ConfigError, match="other settings"):
        make_world(WorldConfig(out=str(tmp_path / "a"), hours=0.03, progress=False), log=quiet)


def test_sweep_skips_finished_cells_records_failures_and_resumes(tiny_study, tmp_path):
    grid = load_grid(_grid(tiny_study))
    assert [c.id for c in cells(grid)] == ["vit_pico4@32_1_s1", "vit_pico4@32_0.5_s1", "vit_pico4@32_0.5_s2"]
    hidden = tiny_study / "frames" / "subsets" / "0.5_s2.json"
    shutil.move(hidden, tmp_path / "x.json")  # this cell's data is missing: it fails, the rest go on
    try:
        counts = run_local(grid, tmp_path / "runs", log=quiet)
    finally:
        shutil.move(tmp_path / "x.json", hidden)
    assert counts == Counts(done=4, skipped=0, failed=1, blocked=1)
    st = status(tmp_path / "runs")
    assert st["failed"] == ["pretrain/vit_pico4@32_0.5_s2"] and len(st["done"]) == 4
    # `egoscale sweep status` answers from the cells' files at once, without loading torch
    code = ("import sys; from egoscale.cli import main; main(['sweep', 'status', sys.argv[1]]); "
            "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True)
    assert r.returncode == 0 and "no torch" in r.stdout, r.stdout + r.stderr
    assert "done     4\n" in r.stdout and "failed   1\n         pretrain/vit_pico4@32_0.5_s2\n" in r.stdout
    err = json.loads((tmp_path / "runs" / "pretrain" / "vit_pico4@32_0.5_s2" / "cell.json").read_text())
    assert "no such subset file" in err["error"] and err["log"].endswith("error.log")
    rows = (tmp_path / "runs" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2
    counts = run_local(grid, tmp_path / "runs", log=quiet)  # again: only the failed cell and its eval run
    assert counts == Counts(done=2, skipped=4, failed=0, blocked=0)
    assert len((tmp_path / "runs" / "results.csv").read_text().splitlines()) == 1 + 3
    assert status(tmp_path / "runs")["failed"] == []


def test_full_data_repeats_are_independent_runs_on_the_whole_data(tiny_study, tmp_path):
    # the whole data has one subset; full_seeds repeats its runs with other pretraining seeds, and
    # the results table tells the repeats apart, so the fit sees them as seeds of one cell
    grid = load_grid(_grid(tiny_study, fractions=[1.0], full_seeds=[1, 2]))
    assert [c.id for c in cells(grid)] == ["vit_pico4@32_1_s1", "vit_pico4@32_1_s2"]
    assert run_local(grid, tmp_path / "runs", log=quiet).failed == 0
    runs = [tmp_path / "runs" / "pretrain" / f"vit_pico4@32_1_s{s}" for s in (1, 2)]
    cfgs = [json.loads((r / "config.json").read_text()) for r in runs]
    assert [c["seed"] for c in cfgs] == [1, 2] and cfgs[0]["subset"] == cfgs[1]["subset"]
    losses = [[json.loads(line)["loss"] for line in (r / "metrics.jsonl").read_text().splitlines()] for r in runs]
    assert losses[0] != losses[1]
    rows = list(csv.DictReader(open(tmp_path / "runs" / "results.csv")))
    assert sorted((r["data_fraction"], r["seed"], r["pretrain_seed"]) for r in rows) == [("1.0", "1", "1"),
                                                                                          ("1.0", "1", "2")]
    with pytest.raises(ConfigError, match="full_seeds"):
        load_grid(_grid(tiny_study, full_seeds=[2, 2]))
    # a seed the grid fixes for every run would make the repeats identical
    fixed = _grid(tiny_study, full_seeds=[1, 2])
    fixed["pretrain"]["seed"] = 0
    with pytest.raises(ConfigError, match="pretrain.seed fixes every run's seed"):
        load_grid(fixed)
    fixed = _grid(tiny_study, full_seeds=[1, 2], model_overrides={"vit_pico4": {"seed": 3}})
    with pytest.raises(ConfigError, match="model_overrides.vit_pico4.seed"):
        load_grid(fixed)
    load_grid(_grid(tiny_study, pretrain={"seed": 0, "steps": 3}))  # one run per whole-data cell: fine


def test_an_evaluation_can_take_other_settings_for_one_model(tiny_study, tmp_path):
    from egoscale.sweep.grid import eval_config

    g = _grid(tiny_study, models=["vit_pico4", "vit_nano4"], fractions=[1.0], seeds=[1], baselines=["random"])
    g["evals"][0]["model_overrides"] = {"vit_pico4": {"epochs": 3}}
    grid = load_grid(g)
    ev = grid.evals[0]
    # the model's own settings in its runs and its random baselines alike; the others keep the eval's
    epochs = {c.id: eval_config(grid, ev, tmp_path / "ck.pt", tmp_path / "o", c).epochs for c in all_cells(grid)}
    assert epochs == {"vit_pico4@32_1_s1": 3, "vit_nano4@32_1_s1": 1, "vit_pico4@32_random_s1": 3,
                      "vit_nano4@32_random_s1": 1}
    g["evals"][0]["model_overrides"] = {"vit_micro4": {"epochs": 3}}
    with pytest.raises(ConfigError, match=r"evals\[0\].model_overrides names 'vit_micro4', which is not in models"):
        load_grid(g)
    g["evals"][0]["model_overrides"] = {"vit_pico4": {"epoch": 3}}
    with pytest.raises(ConfigError, match=r"evals\[0\].model_overrides.vit_pico4"):
        load_grid(g)


def test_cells_take_their_own_pretraining_settings_by_id_or_pattern(tiny_study, tmp_path):
    # a published grid's runs differ in length cell by cell: patterns in file order, after the model's
    from egoscale.sweep.grid import pretrain_config

    g = _grid(tiny_study, models=["vit_pico4", "vit_nano4"], model_overrides={"vit_nano4": {"steps": 5}},
              cell_overrides={"*_0.5_*": {"steps": 7}, "vit_pico4@32_0.5_s2": {"steps": 9, "mask_ratio": 0.75}})
    grid = load_grid(g)
    got = {c.id: (pretrain_config(grid, c, tmp_path).steps, pretrain_config(grid, c, tmp_path).mask_ratio)
           for c in cells(grid)}
    assert got == {"vit_pico4@32_1_s1": (3, 0.8), "vit_pico4@32_0.5_s1": (7, 0.8), "vit_pico4@32_0.5_s2": (9, 0.75),
                   "vit_nano4@32_1_s1": (5, 0.8), "vit_nano4@32_0.5_s1": (7, 0.8), "vit_nano4@32_0.5_s2": (7, 0.8)}
    # the sweep's cost estimate reads each cell's own length
    steps = {r["cell"]: r["flops"] for r in estimate(grid)}
    assert steps["vit_nano4@32_0.5_s1"] == pytest.approx(steps["vit_nano4@32_1_s1"] * 7 / 5, rel=1e-6)
    for over, match in (({"vit_pico4@32_0.25_s1": {"steps": 2}}, "matches no cell .* named like vit_pico4@32_1_s1"),
                        ({"*": {"model": "vit_nano4"}}, "may not set model"),
                        ({"*_s1": {"stepz": 2}}, "cell_overrides for vit_pico4@32_1_s1")):
        with pytest.raises(ConfigError, match=match):
            load_grid({**g, "cell_overrides": over})
    # a length per cell is enough; a cell left without one is named
    unbounded = {**g, "pretrain": {k: v for k, v in g["pretrain"].items() if k != "steps"}, "model_overrides": {}}
    load_grid({**unbounded, "cell_overrides": {"*": {"steps": 2}}})
    with pytest.raises(ConfigError, match="cell vit_pico4@32_1_s1: say how long to train"):
        load_grid({**unbounded, "cell_overrides": {"*_0.5_*": {"steps": 2}}})


def test_a_grid_can_run_only_some_of_its_cells(tiny_study):
    # what `egoscale plan --grid-out` writes: the grid's settings, only the chosen cells (and the
    # random baselines of their model@sizes)
    g = _grid(tiny_study, models=["vit_pico4", "vit_nano4"], baselines=["random"], only=["vit_nano4@32_0.5_s2"])
    grid = load_grid(g)
    assert [c.id for c in cells(grid)] == ["vit_nano4@32_0.5_s2"]
    assert {c.model for c in baseline_cells(grid)} == {"vit_nano4"}
    with pytest.raises(ConfigError, match="only names 'vit_nano4@32_0.25_s2', which is not a cell of the grid"):
        load_grid({**g, "only": ["vit_nano4@32_0.25_s2"]})


def test_random_baselines_are_evaluated_once_per_seed_and_marked_in_the_table(tiny_study, tmp_path):
    # `baselines: [random]`: every model@size evaluated untrained, once per seed (each its own
    # initialisation), by every evaluation, without pretraining; the table marks them (steps 0)
    grid = load_grid(_grid(tiny_study, fractions=[1.0], seeds=[1, 2], baselines=["random"]))
    assert [c.id for c in all_cells(grid)] == ["vit_pico4@32_1_s1", "vit_pico4@32_random_s1",
                                               "vit_pico4@32_random_s2"]
    # a grid that repeats only its whole-data runs gets an initialisation per repeat
    repeats = load_grid(_grid(tiny_study, fractions=[1.0, 0.5], seeds=[1], full_seeds=[1, 3], baselines=["random"]))
    assert [c.id for c in baseline_cells(repeats)] == ["vit_pico4@32_random_s1", "vit_pico4@32_random_s3"]
    out = tmp_path / "runs"
    assert run_local(grid, out, log=quiet) == Counts(done=4, skipped=0, failed=0, blocked=0)
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["vit_pico4@32_1_s1"]  # no pretraining for them
    rows = list(csv.DictReader(open(out / "results.csv")))
    base = sorted((r for r in rows if r["baseline"] == "random"), key=lambda r: r["seed"])
    assert [r["seed"] for r in base] == ["1", "2"] and [r["baseline"] for r in rows].count("") == 1
    assert all(r["pretrain_steps"] == "0" and float(r["data_hours"]) == 0 and r["model"] == "vit_pico4"
               and r["img_size"] == "32" and r["eval"] == "linear_probe" for r in base)
    # two seeds, two initialisations: not the same features
    feats = [torch.load(next((out / "eval" / f"vit_pico4@32_random_s{s}_probe").glob("features*/val/*.pt")),
                        weights_only=True)["features"] for s in (1, 2)]
    assert not torch.equal(*feats)
    assert sorted(status(out, grid)["done"]) == ["eval/vit_pico4@32_1_s1_probe", "eval/vit_pico4@32_random_s1_probe",
                                                "eval/vit_pico4@32_random_s2_probe", "pretrain/vit_pico4@32_1_s1"]
    assert run_local(grid, out, log=quiet) == Counts(done=0, skipped=4, failed=0, blocked=0)
    # on SLURM a baseline is an evaluation job that waits for nothing
    jobs = {j["name"]: j for j in slurm_jobs(grid, out)}
    assert jobs["probe_vit_pico4@32_random_s1"]["depends_on"] is None
    assert jobs["probe_vit_pico4@32_1_s1"]["depends_on"] == "pt_vit_pico4@32_1_s1"
    assert "pt_vit_pico4@32_random_s1" not in jobs
    with pytest.raises(ConfigError, match="baselines: 'pretrained' is not one of random"):
        load_grid(_grid(tiny_study, baselines=["pretrained"]))
    with pytest.raises(ConfigError, match="registered patch size"):
        load_grid(_grid(tiny_study, baselines=["random"], pretrain={"steps": 3, "patch_size": 8}))


@pytest.mark.slow
def test_sweep_runs_cells_in_parallel_worker_processes(tiny_study, tmp_path, monkeypatch):
    import concurrent.futures

    grid = load_grid(_grid(tiny_study))
    lines = []
    counts = run_local(grid, tmp_path / "runs", log=lines.append, parallel=2)
    assert counts == Counts(done=6, skipped=0, failed=0, blocked=0)
    assert len(status(tmp_path / "runs")["done"]) == 6
    assert len((tmp_path / "runs" / "results.csv").read_text().splitlines()) == 1 + 3
    assert sum("pretrain vit_pico4@32_0.5_s2: done" in m for m in lines) == 1  # workers' lines reach the log
    # run again when every cell is done: no worker processes are started, and a results table removed
    # since is written again
    (tmp_path / "runs" / "results.csv").unlink()
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", None)
    assert run_local(grid, tmp_path / "runs", log=quiet, parallel=2).skipped == 6
    assert len((tmp_path / "runs" / "results.csv").read_text().splitlines()) == 1 + 3


@pytest.mark.slow
def test_a_worker_killed_mid_cell_does_not_stop_the_sweep(tiny_study, tmp_path):
    # what the OOM killer does: SIGKILL a worker while it pretrains; the cells it took down with the
    # pool run again in new workers, and the sweep ends with every cell done
    import signal
    import threading

    grid = load_grid(_grid(tiny_study, pretrain={"steps": 300, "batch_size": 8, "workers": 0, "log_every": 50}))
    lines, result = [], {}
    t = threading.Thread(target=lambda: result.update(counts=run_local(grid, tmp_path / "runs", log=lines.append,
                                                                       parallel=2)))
    t.start()
    victim, deadline = None, time.time() + 120
    while victim is None and time.time() < deadline:
        for f in (tmp_path / "runs" / "pretrain").glob("*/cell.json"):
            try:
                st = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if st.get("state") == "running" and st.get("pid") not in (None, os.getpid()):
                victim = st["pid"]
                break
        time.sleep(0.02)
    assert victim is not None, "no cell was seen running"
    os.kill(victim, signal.SIGKILL)
    t.join(timeout=600)
    assert not t.is_alive()
    assert any("worker process died" in m for m in lines)
    assert result["counts"].failed == 0 and len(status(tmp_path / "runs")["done"]) == 6
    assert len((tmp_path / "runs" / "results.csv").read_text().splitlines()) == 1 + 3


def test_grid_unknown_keys_are_errors(tiny_study):
    with pytest.raises(ConfigError, match="unknown key 'modles'"):
        load_grid({**_grid(tiny_study), "modles": ["x"]})
    bad = _grid(tiny_study)
    bad["evals"][0]["epoch"] = 3
    with pytest.raises(ConfigError, match=r"evals\[0\] \(probe\): unknown key 'epoch' for ProbeConfig; did you mean"):
        load_grid(bad)


def test_slurm_job_specifications(tiny_study, tmp_path, monkeypatch):
    g = _grid(tiny_study, slurm={"partition": "gpu", "gpus_per_node": 4, "nodes": 2, "timeout_min": 600,
                                 "account": "lab", "python": "/opt/py/bin/python"})
    out = tmp_path / "runs"
    jobs = slurm_jobs(load_grid(g), out)
    pre = [j for j in jobs if j["stage"] == "pretrain"]
    ev = [j for j in jobs if j["stage"] == "probe"]
    assert len(pre) == 3 and len(ev) == 3
    j = pre[1]
    assert j["command"] == ["/opt/py/bin/python", "-m", "egoscale.sweep.job", str(out.resolve()), "pretrain",
                            "vit_pico4@32_0.5_s1"]
    assert (j["nodes"], j["gpus_per_node"], j["timeout_min"], j["partition"], j["account"], j["requeue"]) == (
        2, 4, 600, "gpu", "lab", True)
    assert ev[1]["depends_on"] == j["name"] and ev[1]["gpus_per_node"] == 1 and ev[1]["nodes"] == 1
    with pytest.raises(ConfigError, match="unknown keys"):
        slurm_jobs(load_grid(_grid(tiny_study, slurm={"gpu": 1})), out)

    # a multi-GPU pretraining job starts torchrun over the job's nodes, rendezvous on its first node
    import subprocess as sp

    from egoscale.sweep import job

    out.mkdir()
    (out / "grid.json").write_text(json.dumps(load_grid(g).to_dict()))
    seen = []
    monkeypatch.setattr(job, "_first_node_address", lambda: "node07")
    monkeypatch.setattr(sp, "run", lambda cmd, **kw: seen.append(cmd) or sp.CompletedProcess(cmd, 0))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert job.main([str(out), "pretrain", "vit_pico4@32_0.5_s1"]) == 0
    cmd = seen[0]
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[cmd.index("--nnodes") + 1] == "2"
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4"
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == f"node07:{20000 + 4242}"  # a port of the job's own
    assert cmd[-4:] == ["egoscale.sweep.job", str(out), "pretrain", "vit_pico4@32_0.5_s1"]


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "egoscale", "demo", "--quick", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "report:" in r.stdout and "[7/7] report" in r.stdout
    # the closing lines say each finding once: each trend, what pretraining bought, finetuning beside the probe
    assert all(r.stdout.count(f"measured {a} (") == 1 for a in ("data", "model", "resolution"))
    assert r.stdout.count("bought") == 1 and r.stdout.count("is at least the linear probe") == 1
    assert "done in" in r.stdout and "20 pretraining steps per run:" in r.stdout
    rows = list(csv.DictReader(open(out / "runs" / "results.csv")))
    # 3 models x 2 image sizes x (1 + 2 fractions x 2 seeds) cells, each finetuned and probed, and each
    # model@size with random weights, once per seed, evaluated the same way
    assert len(rows) == 3 * 2 * 5 * 2 + 3 * 2 * 2 * 2
    assert sum(r["baseline"] == "random" and r["pretrain_steps"] == "0" for r in rows) == 24
    html = (out / "report" / "report.html").read_text()
    # 7 plots of the fit (gains over random weights first), and the sweep's frames, labelled images,
    # loss curves and reconstructions
    assert html.count("data:image/png;base64,") == 11 and "not drawn" not in html
    assert "How this demo was sized" in html and "20 pretraining steps per run." in html
    assert json.loads((out / "plan.json").read_text())["steps"] == 20  # quick has no budget: always 20
    assert "What pretraining bought" in html and "over random weights" in r.stdout
    # the paper's evaluation beside the probe of the same weights, in the report and the closing lines
    assert "Finetuning beside the linear probe" in html
    assert "finetuning at 0.2 h is at least the linear probe of the same weights in" in r.stdout
    # one run beyond the grid (more pixels), kept out of the fit, checked against the fit's prediction
    check = json.loads((out / "beyond" / "check.json").read_text())
    assert check["model"] == "vit_pico4" and check["img_size"] == 40 and 0 <= check["measured"] <= 1
    assert "vit_pico4@40" not in (out / "runs" / "results.csv").read_text()
    lo, hi = check["forms"][check["chosen"]]["pi"]
    assert check["forms"][check["chosen"]]["inside"] == (lo <= check["measured"] <= hi)
    assert "A run the fit never saw" in html and "beyond the grid (vit_pico4 at 40 px" in r.stdout
    assert "Measured trends" in html and "<li>data (" in html and "vit_micro4 @32 px" in html
    assert (out / "report" / "reconstructions.png").is_file()
    fit = load_fit(out / "fit.json")
    assert fit.n_rows == 30 and len(fit.baselines) == 12 and len(fit.gains) == 18
    assert set(fit.splits) >= {"largest-data", "largest-model", "largest-resolution"}
    again = subprocess.run([sys.executable, "-m", "egoscale", "demo", "--quick", "--out", str(out), "--no-progress"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "sweep: 0 cells run, 114 already done, 0 failed" in again.stdout
    assert np.isfinite(fit.noise_sigma)
    # the run's record, and the benchmark that reads demo folders against the targets
    record = json.loads((out / "demo.json").read_text())
    assert record["steps"] == 20 and record["size"] == "quick" and record["floor_steps"] is None
    # run twice in one folder: both invocations kept, the demo's time their sum
    assert len(record["invocations"]) == 2
    assert record["seconds"] == pytest.approx(sum(r["seconds"] for r in record["invocations"]), abs=0.11)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import demo_targets

    run = demo_targets.check_run(out, 10, 15, 2)
    assert [c["cell"] for c in run["cells"]][:2] == ["vit_pico4 @ 24", "vit_pico4 @ 32"] and len(run["cells"]) == 6
    top = max(g["data_hours"] for g in fit.gains)
    assert run["gain_ok"] == sum(g["gain"] >= 0.1 for g in fit.gains if g["data_hours"] == top)
    assert run["beyond_inside"] == check["forms"][check["chosen"]]["inside"]
    # across runs: one row per model@size, a count out of the runs given, and the trends' tally
    across = demo_targets.across_runs([run, run], 10)
    rows = [line for line in across if line.startswith("| vit_")]
    assert len(rows) == 6 and all(f"| {2 * (c['gain'] >= 0.1)}/2 |" in row for c, row in zip(run["cells"], rows))
    assert across[-1].startswith("trends beyond seed noise: data ")


def test_a_changed_grid_is_refused_over_an_existing_sweep_folder(tiny_study, tmp_path):
    out = tmp_path / "runs"
    run_local(load_grid(_grid(tiny_study, fractions=[1.0], seeds=[1], evals=[])), out, log=lambda *a: None)
    before = (out / "results.csv").exists(), sorted(p.name for p in (out / "pretrain").iterdir())
    changed = _grid(tiny_study, fractions=[1.0], seeds=[1], evals=[],
                    pretrain={"steps": 3, "batch_size": 8, "workers": 0, "log_every": 1, "mask_ratio": 0.5})
    with pytest.raises(ConfigError, match=r"made by another grid: 1 cells would change: vit_pico4@32_1_s1 "
                                          r"\(mask-ratio 0.8 -> 0.5\)"):
        run_local(load_grid(changed), out, log=lambda *a: None)
    assert ((out / "results.csv").exists(), sorted(p.name for p in (out / "pretrain").iterdir())) == before
    # settings that may change (more steps) are not a different grid
    longer = _grid(tiny_study, fractions=[1.0], seeds=[1], evals=[],
                   pretrain={"steps": 4, "batch_size": 8, "workers": 0, "log_every": 1})
    run_local(load_grid(longer), out, log=lambda *a: None)
    # an evaluation whose identity changed is named with the cell
    probed = _grid(tiny_study, fractions=[1.0], seeds=[1],
                   pretrain={"steps": 4, "batch_size": 8, "workers": 0, "log_every": 1})
    run_local(load_grid(probed), out, log=lambda *a: None)
    probed["evals"][0]["pool"] = "avg"
    with pytest.raises(ConfigError, match=r"1 cells would change: vit_pico4@32_1_s1 probe \(pool 'token' -> 'avg'\)"):
        run_local(load_grid(probed), out, log=lambda *a: None)


def test_dry_run_prices_the_papers_grid_without_running_or_loading_torch(tmp_path):
    from egoscale.models.flops import mae_train_flops
    from egoscale.models.registry import get_spec
    from egoscale.sweep.grid import eval_config, pretrain_config

    # 4 models x (the full set once + 4 fractions x 3 seeds), each run as long as its published log
    # says, at mask 0.75 on 4 GPUs of the per-GPU batch (ViT-S 512, the others 256)
    code = ("import sys; from egoscale.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, 'torch loaded' if 'torch' in sys.modules else 'no torch')")
    r = subprocess.run([sys.executable, "-c", code, "sweep", "configs/paper_grid.yaml", "--out", str(tmp_path / "runs"),
                        "--dry-run"], capture_output=True, text=True)
    lines = r.stdout.splitlines()
    assert lines[-1] == "0 no torch", r.stdout[-500:] + r.stderr[-2000:]
    rows = [ln.split() for ln in lines[1:-2]]
    assert len(rows) == 52 and lines[-2].startswith("52 pretraining cells x 1 evaluations;")
    paper = load_grid("configs/paper_grid.yaml")
    steps = {c.id: pretrain_config(paper, c, tmp_path).steps for c in cells(paper)}
    assert steps["vit_h14@224_1_s1"] == 580000 and steps["vit_s14@224_1_s1"] == 491000
    assert min(steps.values()) == 60000 and len(set(steps.values())) > 10
    want = sum(mae_train_flops(get_spec(c.model), 224, 0.75) * (512 if c.model == "vit_s14" else 256) * 4
               * steps[c.id] for c in cells(paper)) / (989e12 * 0.4) / 3600
    assert f"{want:.1f} GPU-hours" in lines[-2]
    assert not (tmp_path / "runs").exists()
    for size, batch, epochs in ((448, 14, 10), (476, 11, 8)):  # the high-resolution files: their own recipe
        hi = load_grid(f"configs/paper_grid_{size}.yaml")
        c = cells(hi)[0]
        assert pretrain_config(hi, c, tmp_path).mask_ratio == 0.8 and len(cells(hi)) == 13
        ev = eval_config(hi, hi.evals[0], tmp_path / "ck.pt", tmp_path / "o", c)
        assert (ev.batch_size, ev.epochs) == (batch, epochs)
    # a run given in steps is priced at the analytic FLOPs per image x images
    g = load_grid(_grid(tmp_path, models=["vit_b14"], img_sizes=[224], fractions=[1.0], seeds=[1],
                        pretrain={"steps": 1000, "batch_size": 64}))
    (row,) = estimate(g)
    assert row["flops"] == pytest.approx(mae_train_flops(get_spec("vit_b14"), 224, 0.8) * 64 * 1000)
    assert row["gpu_hours"] == pytest.approx(row["flops"] / (ASSUMED_GPU_TFLOPS * 1e12 * ASSUMED_MFU) / 3600)
    # a grid that reshapes the model is priced as the model its runs train; the batch is the runs' default
    from dataclasses import replace

    g = load_grid(_grid(tmp_path, models=["vit_b14"], img_sizes=[224], fractions=[1.0], seeds=[1],
                        pretrain={"steps": 10, "patch_size": 16, "decoder_width": 256, "decoder_depth": 2,
                                  "mask_ratio": 0.75}))
    (row,) = estimate(g)
    spec = replace(get_spec("vit_b14", patch_size=16), decoder_width=256, decoder_depth=2)
    assert row["flops"] == pytest.approx(mae_train_flops(spec, 224, 0.75) * 256 * 10)
    assert row["flops"] < 0.6 * mae_train_flops(get_spec("vit_b14"), 224, 0.75) * 256 * 10
