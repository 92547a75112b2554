"""Every user mistake gets one clear line (exit code 2, no traceback) and changes nothing on disk;
a run folder has one owner and one identity; small labelled sets work."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from egoscale.cli import main
from egoscale.models import build_mae, get_spec, save_mae
from egoscale.runfolder import LOCK, FolderLock
from tests.images import labelled_folder, unlabelled_shards

TINY = ["--model", "vit_pico4", "--batch-size", "8", "--workers", "0", "--no-progress", "--log-every", "1",
        "--shuffle-buffer", "16"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Real inputs the mistakes are made with: shards, a finished tiny run, labelled folders, bad files."""
    root = tmp_path_factory.mktemp("mistakes")
    shards = unlabelled_shards(root / "shards", n=64, per_shard=32)
    assert main(["pretrain", "--data", str(shards), "--out", str(root / "run"), "--steps", "2", *TINY]) == 0
    labelled_folder(root / "lab", n_train=12, n_val=4, n_classes=6)  # 72 training images, as in the report
    ckpt = root / "mae.pt"
    save_mae(ckpt, build_mae(get_spec("vit_pico4")))
    data = ckpt.read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "notes.pt").write_text("not a checkpoint\n")
    (root / "empty").mkdir()
    (root / "table.csv").write_text("a,b\n1,2\n")
    (root / "grid.yaml").write_text(f"data: {shards}\nsubsets: {root}\nmodels: [vit_pico4]\nimg_sizes: [32]\n"
                                    "fractions: [1.0]\nseeds: [1]\nwarmup: 3\n")
    return root


def _snapshot(root: Path) -> dict:
    """Every file under root with its content hash (the folder locks' bookkeeping aside)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK}


# (argv with {root} for the fixture's folder, text the one error line must contain)
MISTAKES = [
    (["world", "--label-size", "8", "--out", "{root}/w"], "--label-size"),
    (["world", "--frame-size", "33", "--out", "{root}/w"], "--frame-size"),
    (["world", "--hours", "0", "--out", "{root}/w"], "--hours"),
    (["world", "--categories", "x"], "--categories"),
    (["ingest", "--source", "x={root}/missing", "--out", "{root}/f"], "missing"),
    (["ingest", "--source", "x={root}/empty", "--fps", "0", "--out", "{root}/f"], "--fps"),
    (["ingest", "--source", "nofolder", "--out", "{root}/f"], "NAME=FOLDER"),
    (["subset", "{root}/empty"], "manifest"),
    (["subset", "{root}/empty", "--fractions", "0,2"], "--fractions"),
    (["pretrain", "--data", "{root}/missing", "--out", "{root}/p", "--steps", "1"], "missing"),
    (["pretrain", "--data", "{root}/shards", "--out", "{root}/p", "--steps", "0"], "--steps"),
    (["pretrain", "--data", "{root}/shards", "--out", "{root}/p"], "--steps"),
    (["pretrain", "--data", "{root}/shards", "--out", "{root}/p", "--steps", "1", "--model", "vit_pico4",
      "--img-size", "30"], "--img-size 30"),
    (["pretrain", "--data", "{root}/shards", "--out", "{root}/p", "--steps", "1", "--model", "vit_zz"], "vit_zz"),
    (["pretrain", "--data", "{root}/shards", "--out", "{root}/p", "--steps", "1", "--decoder-width", "30"],
     "--decoder-width 30"),
    (["pretrain", "--data", "{root}/shards", "--out", "{root}/p", "--steps", "1", "--mask-ratio", "1.5"],
     "--mask-ratio"),
    # a changed run folder: the finished run was vit_pico4 at 32 px
    (["pretrain", "--data", "{root}/shards", "--out", "{root}/run", "--steps", "4", *TINY, "--img-size", "64"],
     "img-size 32 -> 64"),
    (["pretrain", "--data", "{root}/shards", "--out", "{root}/run", "--steps", "4", *TINY[2:],
      "--model", "vit_nano4"], "model 'vit_pico4' -> 'vit_nano4'"),
    (["pretrain", "--data", "{root}/shards", "--out", "{root}/p", "--steps", "4", *TINY,
      "--resume", "{root}/truncated.pt"], "truncated.pt"),
    (["finetune", "--checkpoint", "{root}/truncated.pt", "--train", "{root}/lab/train", "--val",
      "{root}/lab/val", "--out", "{root}/e", "--condition", "full"], "truncated"),
    (["finetune", "--checkpoint", "{root}/notes.pt", "--train", "{root}/lab/train", "--val",
      "{root}/lab/val", "--out", "{root}/e", "--condition", "full"], "notes.pt"),
    (["finetune", "--checkpoint", "{root}/mae.pt", "--train", "{root}/missing", "--val", "{root}/lab/val",
      "--out", "{root}/e"], "no such folder"),
    (["finetune", "--checkpoint", "{root}/mae.pt", "--train", "{root}/lab/train", "--val", "{root}/lab/val",
      "--out", "{root}/e", "--label-fraction", "1.5"], "--label-fraction"),
    (["finetune", "--checkpoint", "{root}/mae.pt", "--train", "{root}/lab/train", "--val", "{root}/lab/val",
      "--out", "{root}/e", "--epochs", "0"], "--epochs"),
    # 72 images at the default permissive 2 %: one image, too few for the BatchNorm head
    (["probe", "--checkpoint", "{root}/mae.pt", "--train", "{root}/lab/train", "--val", "{root}/lab/val",
      "--out", "{root}/e"], "--label-fraction 0.0278"),
    (["probe", "--checkpoint", "{root}/mae.pt", "--train", "{root}/lab/train", "--val", "{root}/lab/val",
      "--out", "{root}/e", "--sampling", "per-class", "--label-fraction", "0.05"], "--sampling random"),
    (["probe", "--checkpoint", "none", "--train", "{root}/lab/train", "--val", "{root}/lab/val",
      "--out", "{root}/e"], "needs --model"),
    (["visualize", "{root}/empty", "--images", "{root}/lab/train"], "empty"),
    (["results", "collect", "{root}/empty"], "no result.json"),
    (["results", "import-logs", "{root}/empty"], "--total-hours"),
    (["results", "frobnicate", "{root}/empty"], "frobnicate"),
    (["fit", "{root}/missing.csv"], "no such results table"),
    (["fit", "{root}/table.csv"], "not a results table"),
    (["fit", "{root}/table.csv", "--level", "1.5"], "--level"),
    (["extrapolate", "{root}/missing.json", "--target", "0.9", "--scale-together"], "no such fit"),
    (["extrapolate", "{root}/table.csv", "--target", "2", "--scale-together"], "--target"),
    (["extrapolate", "{root}/table.csv"], "--at"),
    (["report", "{root}/missing.json"], "no such fit"),
    (["sweep", "{root}/missing.yaml", "--out", "{root}/s"], "missing.yaml"),
    (["sweep", "{root}/grid.yaml", "--out", "{root}/s"], "unknown key 'warmup'"),
    (["sweep", "{root}/grid.yaml", "--out", "{root}/s", "--parallel", "0"], "--parallel"),
    (["models", "vit_zz"], "vit_zz"),
    (["models", "--img-size", "-3"], "--img-size"),
    (["inspect", "{root}/missing.pt"], "missing.pt"),
    (["inspect", "{root}/truncated.pt"], "truncated"),
    (["convert", "{root}/notes.pt", "{root}/out.safetensors"], "notes.pt"),
    (["demo", "--size", "huge"], "huge"),
    (["demo", "--quick", "--minutes", "3"], "--quick always runs its 20 steps"),
    (["finetune", "--checkpoint", "none", "--model", "vit_pico4", "--crop-scale", "0"], "--crop-scale"),
    (["finetune", "--checkpoint", "none", "--model", "vit_pico4", "--head-warmup", "-1"], "--head-warmup"),
    (["probe", "--checkpoint", "{root}/missing.pt", "--init-seed", "1"], "--init-seed"),
]


@pytest.mark.parametrize("argv,says", MISTAKES, ids=[" ".join(a[:2]) + f" [{i}]" for i, (a, _) in enumerate(MISTAKES)])
def test_every_mistake_is_one_line_exit_2_and_changes_nothing(world, argv, says, capsys):
    before = _snapshot(world)
    argv = [a.replace("{root}", str(world)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (wrong type, unknown choice)
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert says in lines[0], lines[0]
    assert _snapshot(world) == before, "a mistake changed files on disk"


def test_settings_that_may_change_on_resume_are_accepted_and_recorded(world, tmp_path):
    run = tmp_path / "run"
    common = ["pretrain", "--data", str(world / "shards"), "--out", str(run), *TINY]
    assert main([*common, "--steps", "2"]) == 0
    assert main([*common, "--steps", "4", "--log-every", "2", "--img-size", "32"]) == 0  # 32 px is the default
    changes = [json.loads(ln) for ln in (run / "resumes.jsonl").read_text().splitlines()]
    assert changes[-1]["changed"] == {"steps": [2, 4], "log_every": [1, 2]}
    assert json.loads((run / "config.json").read_text())["steps"] == 4
    assert [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 4]


def test_a_folder_in_use_is_refused_and_a_killed_owner_does_not_block(world, tmp_path, capsys):
    run = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom egoscale.runfolder import FolderLock\n"
                               f"with FolderLock({str(run)!r}, 'pretrain'):\n    print('held', flush=True)\n"
                               "    time.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["pretrain", "--data", str(world / "shards"), "--out", str(run), "--steps", "1", *TINY]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert f"in use by another pretrain process (pid {holder.pid} on" in err and "\n" not in err
        assert not (run / "config.json").exists()  # the refused run wrote nothing
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert main(argv) == 0  # the killed holder's lock went with it
    with FolderLock(run, "test"):  # and the finished run released its own
        pass


def test_small_labelled_sets_train_without_batches_of_one(world, tmp_path):
    # 7 images in batches of 2 leave a batch of one at the end of every epoch
    from egoscale.evaluate.finetune import FinetuneConfig, finetune
    from egoscale.evaluate.probe import ProbeConfig, probe

    common = dict(checkpoint=str(world / "mae.pt"), train=str(world / "lab" / "train"), val=str(world / "lab" / "val"),
                  condition=None, label_fraction=0.1, workers=0, progress=False, seed=3)
    r = finetune(FinetuneConfig(**common, out=str(tmp_path / "ft"), epochs=2, batch_size=2), log=lambda *a: None)
    assert r["n_train"] == 7 and 0 <= r["top1"] <= 1
    r = probe(ProbeConfig(**common, out=str(tmp_path / "pr"), batch_size=2, epochs=1, min_steps=5),
              log=lambda *a: None)
    assert r["n_train"] == 7 and 0 <= r["top1"] <= 1


def test_an_evaluation_folder_keeps_its_label_subset(world, tmp_path, capsys):
    args = ["probe", "--checkpoint", str(world / "mae.pt"), "--train", str(world / "lab" / "train"), "--val",
            str(world / "lab" / "val"), "--out", str(tmp_path / "pr"), "--workers", "0", "--no-progress",
            "--epochs", "1", "--min-steps", "2"]
    assert main([*args, "--label-fraction", "0.5"]) == 0
    before = _snapshot(tmp_path)
    assert main([*args, "--label-fraction", "0.25"]) == 2  # its cached features are of the other subset
    assert "label-fraction 0.5 -> 0.25" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_world_renders_labelled_images_larger_than_a_room(tmp_path):
    from egoscale.world.world import WorldConfig, make_world

    make_world(WorldConfig(out=str(tmp_path / "w"), hours=0.01, categories=2, train_per_class=1, val_per_class=1,
                           label_size=224, progress=False), log=lambda *a: None)
    from PIL import Image

    imgs = sorted((tmp_path / "w" / "labelled").rglob("*.png"))
    assert len(imgs) == 4 and all(Image.open(p).size == (224, 224) for p in imgs)
