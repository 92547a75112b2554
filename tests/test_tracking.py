"""Live views of metrics.jsonl: TensorBoard event files and W&B (offline), read back from disk."""

import glob
import json
from pathlib import Path

import pytest

from egoscale.cli import main
from tests.images import labelled_folder, unlabelled_shards
from tests.conftest import metrics

TINY = ["--model", "vit_pico4", "--batch-size", "8", "--workers", "0", "--no-progress", "--shuffle-buffer", "16"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return unlabelled_shards(tmp_path_factory.mktemp("track") / "shards", n=64, per_shard=32)


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc




def test_pretraining_writes_tensorboard_scalars_and_reconstructions_and_resumes_cleanly(shards, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(shards), "--out", str(run), *TINY, "--log-every", "2", "--image-every", "3"]
    assert main([*args, "--steps", "6"]) == 0
    acc = _events(run / "tensorboard")
    assert {"loss", "lr", "images_per_s", "tokens_per_s", "samples"} <= set(acc.Tags()["scalars"])
    logged = metrics(run)
    assert [(e.step, round(e.value, 5)) for e in acc.Scalars("loss")] == [(r["step"], round(r["loss"], 5))
                                                                         for r in logged]
    pics = acc.Images("reconstructions")
    assert [p.step for p in pics] == [3, 6] and (pics[0].width, pics[0].height) == (3 * 32, 4 * 32)
    # resumed to 10 steps: the event files show each step once, as metrics.jsonl does
    assert main([*args, "--steps", "10"]) == 0
    acc = _events(run / "tensorboard")
    assert [e.step for e in acc.Scalars("loss")] == [r["step"] for r in metrics(run)] == [2, 4, 6, 8, 10]


def test_finetuning_writes_its_evaluations_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    lab = labelled_folder(tmp_path / "lab", n_train=8, n_val=4, n_classes=2)
    out = tmp_path / "ft"
    assert main(["finetune", "--checkpoint", "none", "--model", "vit_pico4", "--train", str(lab / "train"), "--val",
                 str(lab / "val"), "--condition", "full", "--epochs", "2", "--batch-size", "8", "--workers", "0",
                 "--no-progress", "--out", str(out)]) == 0
    acc = _events(out / "tensorboard")
    evals = [r for r in metrics(out) if "top1" in r]
    assert [(e.step, round(e.value, 5)) for e in acc.Scalars("top1")] == [(r["step"], round(r["top1"], 5))
                                                                         for r in evals]
    assert {"top5", "val_loss", "epoch", "loss"} <= set(acc.Tags()["scalars"])


def test_no_tensorboard_flag_writes_no_event_files(shards, tmp_path):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(shards), "--out", str(run), *TINY, "--steps", "2",
                 "--log-every", "1", "--no-tensorboard"]) == 0
    assert not (run / "tensorboard").exists() and len(metrics(run)) == 2


def test_wandb_offline_logs_what_metrics_jsonl_holds(shards, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from tests.wandb_file import history

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(shards), "--out", str(run), *TINY, "--steps", "4", "--log-every", "2",
                 "--image-every", "4", "--wandb", "egoscale-test", "--wandb-group", "grid-a", "--no-tensorboard"]) == 0
    files = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    rows = history(Path(files[0]))
    assert [(r["_step"], round(r["loss"], 5)) for r in rows if "loss" in r] == [
        (m["step"], round(m["loss"], 5)) for m in metrics(run)]
    pic = next(r for r in rows if "reconstructions/path" in r)
    assert pic["_step"] == 4 and (Path(files[0]).parent / "files" / pic["reconstructions/path"]).is_file()


def test_one_tensorboard_shows_a_whole_sweep(tiny_study, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    from egoscale.sweep.grid import load_grid
    from egoscale.sweep.sweep import run_local
    from tests.study import grid_dict

    grid = load_grid(grid_dict(tiny_study, fractions=[1.0, 0.5], seeds=[1], evals=[]))
    run_local(grid, tmp_path / "runs", log=lambda *a: None)
    mux = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "runs"))
    mux.Reload()
    runs = {name: tags["scalars"] for name, tags in mux.Runs().items()}
    assert set(runs) == {"pretrain/vit_pico4@32_1_s1/tensorboard", "pretrain/vit_pico4@32_0.5_s1/tensorboard"}
    assert all("loss" in tags for tags in runs.values())


def test_probing_writes_its_classifier_curves_and_starts_them_over_when_rerun(tmp_path):
    pytest.importorskip("tensorboard")
    lab = labelled_folder(tmp_path / "lab", n_train=8, n_val=4, n_classes=2)
    out = tmp_path / "probe"
    args = ["probe", "--checkpoint", "none", "--model", "vit_pico4", "--train", str(lab / "train"), "--val",
            str(lab / "val"), "--condition", "full", "--epochs", "3", "--min-steps", "0", "--knn", "3",
            "--workers", "0", "--no-progress", "--out", str(out)]
    for _ in range(2):  # the rerun retrains from the cached features: its curves replace the first's
        assert main(args) == 0
        acc = _events(out / "tensorboard")
        logged = metrics(out)
        assert [(e.step, round(e.value, 5)) for e in acc.Scalars("top1")] == [(r["epoch"], round(r["top1"], 5))
                                                                             for r in logged] != []
    result = json.loads((out / "result.json").read_text())
    assert [(e.step, round(e.value, 5)) for e in acc.Scalars("knn_top1")] == [(3, round(result["knn_top1"], 5))]
    assert {"train_loss", "val_loss", "top5"} <= set(acc.Tags()["scalars"])
