"""Evaluation: label subsets, top-k, few-shot finetuning and linear probing end to end."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from egoscale.errors import DataError
from egoscale.evaluate.finetune import FinetuneConfig, finetune
from egoscale.evaluate.labelled import label_subset, read_list, scan, topk_correct
from egoscale.evaluate.probe import ProbeConfig, probe
from tests.cli import egoscale
from tests.conftest import metrics
from tests.images import labelled_folder

quiet = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return labelled_folder(tmp_path_factory.mktemp("labelled"), n_train=40, n_val=10, n_classes=4)


def test_label_subsets_have_the_requested_size_and_follow_the_seed(folder):
    full = scan(folder / "train")
    assert len(full) == 160 and full.classes == ["class0", "class1", "class2", "class3"]
    a, b, c = (label_subset(full, 0.1, "random", s) for s in (1, 1, 2))
    assert len(a) == 16 and a.files == b.files and a.files != c.files
    per = label_subset(full, 0.1, "per-class", 3)
    assert [per.labels.count(k) for k in range(4)] == [4, 4, 4, 4]


def test_per_class_sampling_that_leaves_a_class_empty_is_an_error(folder):
    with pytest.raises(DataError, match="leaves some of the 4 classes with no example"):
        label_subset(scan(folder / "train"), 0.01, "per-class")


def test_val_classes_must_match_the_train_classes(folder, tmp_path):
    (tmp_path / "val" / "class0").mkdir(parents=True)
    (tmp_path / "val" / "zebra").mkdir()
    with pytest.raises(DataError, match=r"missing \['class1', 'class2', 'class3'\], extra \['zebra'\]"):
        scan(tmp_path / "val", classes=scan(folder / "train").classes)


def test_labelled_images_are_decoded_once_and_read_again_when_their_file_changes(tmp_path):
    import os
    import random

    import numpy as np
    from PIL import Image

    from egoscale.evaluate.common import DecodedImages, ImageList, train_transform

    root = labelled_folder(tmp_path / "lab", n_train=3, n_val=1, n_classes=2)
    data = scan(root / "train")
    kept, fresh = DecodedImages(), DecodedImages(limit=0)
    outs = []
    for decoded in (kept, fresh, kept):  # the last pass reads what the first kept
        random.seed(0), torch.manual_seed(0)
        ds = ImageList(data, train_transform(24, (0.5, 1.0)), decoded)
        outs.append([ds[i][0] for i in range(len(ds))])
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(*outs))  # augmentation unchanged
    assert len(kept.images) == 6 and kept.used == 6 * 48 * 48 * 3 and not fresh.images
    # a file written again is decoded again, not served from what was kept
    path = data.root / data.files[0]
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(path, quality=95)
    os.utime(path, ns=(1, 1))  # a new modification time even where the clock is coarse
    assert np.asarray(kept.rgb(path)).max() == 0
    # a limit below one image keeps none; images are still read
    small = DecodedImages(limit=48 * 48 * 3 - 1)
    assert small.rgb(data.root / data.files[1]).size == (48, 48) and not small.images


def test_topk_on_hand_made_logits():
    logits = torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.0, 0.0],   # target 0: top-1 hit
                           [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],   # target 1: 5th highest -> top-5 hit only
                           [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])  # target 5: lowest -> miss
    assert topk_correct(logits, torch.tensor([0, 1, 5])) == {1: 1, 5: 2}


def test_finetune_end_to_end_writes_the_result_row(folder, tmp_path):
    cfg = FinetuneConfig(checkpoint="none", model="vit_pico4", train=str(folder / "train"), val=str(folder / "val"),
                         out=str(tmp_path / "ft"), condition=None, label_fraction=0.5, epochs=3, batch_size=16,
                         workers=0, progress=False, lr=1e-3)
    r = finetune(cfg, log=quiet)
    assert r["eval"] == "finetune" and r["n_train"] == 80 and r["n_val"] == 40 and r["classes"] == 4
    assert r["params"] == 107_456 and r["img_size"] == 32
    assert 0 <= r["top1"] <= r["top5"] <= 1 and r["top5"] == 1.0  # 4 classes: top-5 covers them all
    evals = metrics(tmp_path / "ft", having="top1")
    assert [e["epoch"] for e in evals] == [1, 2, 3] and r["top1"] == max(e["top1"] for e in evals)
    again = read_list(tmp_path / "ft" / "train_files.txt", folder / "train", r and scan(folder / "train").classes)
    assert len(again) == 80


def test_finetune_scores_the_val_set_every_n_epochs_and_after_the_last(folder, tmp_path):
    cfg = FinetuneConfig(checkpoint="none", model="vit_pico4", train=str(folder / "train"), val=str(folder / "val"),
                         out=str(tmp_path / "ft"), condition=None, label_fraction=0.5, epochs=3, batch_size=16,
                         workers=0, progress=False, lr=1e-3, eval_every=2)
    r = finetune(cfg, log=quiet)
    evals = metrics(tmp_path / "ft", having="top1")
    assert [e["epoch"] for e in evals] == [2, 3] and r["top1"] == max(e["top1"] for e in evals)


def test_head_warmup_fits_the_head_alone_before_finetuning(folder, tmp_path):
    # LP-FT's first half: only the head moves, and it learns to read the frozen encoder
    from egoscale.evaluate.common import ImageList, load_backbone, prepare_labelled, val_transform
    from egoscale.evaluate.finetune import _frozen_features, warm_head
    from egoscale.train.distributed import Dist

    cfg = FinetuneConfig(checkpoint="none", model="vit_pico4", train=str(folder / "train"), val=str(folder / "val"),
                         out=str(tmp_path / "ft"), condition="full", batch_size=32, workers=0, head_warmup=150)
    data = prepare_labelled(cfg)
    torch.manual_seed(0)
    vit, _ = load_backbone("none", "vit_pico4", None, data.classes, "avg")
    d = Dist(device=torch.device("cpu"))
    ds = ImageList(data.train, val_transform(32))
    encoder = {k: v.clone() for k, v in vit.state_dict().items() if not k.startswith("head.")}
    feats, labels = _frozen_features(vit, ds, cfg, d, False)
    vit.head.eval()
    before = torch.nn.functional.cross_entropy(vit.head(feats), labels).item()
    warm_head(vit, ds, cfg, d, False)
    vit.head.eval()
    after = torch.nn.functional.cross_entropy(vit.head(feats), labels).item()
    assert after < before - 0.1  # (random features of 4 synthetic classes: a head learns them slowly)
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in encoder.items())
    # in a run it is logged once; a resumed run loads its own head and does not warm it again
    lines = []
    cfg = FinetuneConfig(checkpoint="none", model="vit_pico4", train=str(folder / "train"), val=str(folder / "val"),
                         out=str(tmp_path / "run"), condition="full", epochs=1, batch_size=32, workers=0,
                         progress=False, head_warmup=20)
    finetune(cfg, log=lines.append)
    assert sum("head warm-up: 20 steps" in x for x in lines) == 1
    cfg.epochs = 2
    lines.clear()
    finetune(cfg, log=lines.append)
    assert not any("head warm-up" in x for x in lines) and any("resumed at epoch 1" in x for x in lines)


@pytest.mark.slow
def test_finetune_resumes_after_a_kill(folder, tmp_path):
    args = [sys.executable, "-m", "egoscale", "finetune", "--checkpoint", "none", "--model", "vit_pico4",
            "--train", str(folder / "train"), "--val", str(folder / "val"), "--condition", "full", "--epochs", "6",
            "--batch-size", "8", "--workers", "0", "--no-progress", "--out", str(tmp_path / "ft")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "ft" / "checkpoint.pt").exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "ft" / "result.json").exists(), "killed too late to test a resume"
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed at epoch" in r.stdout
    evals = metrics(tmp_path / "ft", having="top1")
    assert [e["epoch"] for e in evals] == [1, 2, 3, 4, 5, 6]


def test_probe_caches_features_and_reports_a_linear_probe(folder, tmp_path):
    cfg = ProbeConfig(checkpoint="none", model="vit_pico4", train=str(folder / "train"), val=str(folder / "val"),
                      out=str(tmp_path / "pr"), condition="full", workers=0, progress=False, chunk=64)
    r = probe(cfg, log=quiet)
    assert r["eval"] == "linear_probe" and r["n_train"] == 160 and 0 <= r["top1"] <= 1 and "knn_top1" in r
    chunks = sorted((tmp_path / "pr" / "features" / "train").glob("*.pt"))
    assert len(chunks) == 3  # 160 images in chunks of 64
    stamp = [c.stat().st_mtime_ns for c in chunks]
    chunks[-1].unlink()  # as if killed during extraction: only the missing chunk is recomputed
    r2 = probe(cfg, log=quiet)
    assert [c.stat().st_mtime_ns for c in chunks[:2]] == stamp[:2] and chunks[-1].exists()
    assert r2["top1"] == r["top1"]


def test_avg_pool_reads_the_mean_patch_token_and_caches_apart(folder, tmp_path):
    from egoscale.models.vit import build_vit

    vit = build_vit("vit_pico4", num_classes=0, global_pool="avg").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.forward_features(x)
        assert torch.allclose(vit.forward_head(tokens, pre_logits=True), tokens[:, 1:].mean(1))
    cfg = dict(checkpoint="none", model="vit_pico4", train=str(folder / "train"), val=str(folder / "val"),
               out=str(tmp_path / "pr"), condition="full", workers=0, progress=False)
    tok, avg = probe(ProbeConfig(**cfg), log=quiet), probe(ProbeConfig(**cfg, pool="avg"), log=quiet)
    assert tok["pool"] == "token" and avg["pool"] == "avg"
    feats = [torch.load(tmp_path / "pr" / d / "train" / "00000.pt")["features"] for d in ("features", "features-avg")]
    assert feats[0].shape == feats[1].shape and not torch.allclose(feats[0], feats[1])


def test_cli_errors_are_one_line(folder, tmp_path):
    r = egoscale("probe", "--checkpoint", "none", "--train", folder / "train", "--val", folder / "val",
                 "--out", tmp_path)
    assert r.returncode == 2 and "needs --model" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.slow
def test_pretrained_tiny_model_beats_random_init_on_an_easy_task(tmp_path):
    """An MAE pretrained on unlabelled gratings gives better features for orientation than a
    random initialisation: at least 10 points of probe top-1 on 120 val images (over twice the
    standard error of the difference), after 1000 steps (the margin appears late in this run)."""
    from egoscale.train.pretrain import PretrainConfig, pretrain
    from tests.images import unlabelled_shards

    lab = labelled_folder(tmp_path / "lab", n_train=40, n_val=30, n_classes=4)
    shards = unlabelled_shards(tmp_path / "shards", n=1000)
    pretrain(PretrainConfig(data=str(shards), out=str(tmp_path / "run"), model="vit_pico4", batch_size=32,
                            steps=1000, workers=0, lr=1.5e-3, mask_ratio=0.75, progress=False, log_every=100),
             log=quiet)
    acc = {}
    for name, ck in (("pretrained", str(tmp_path / "run")), ("random", "none")):
        acc[name] = probe(ProbeConfig(checkpoint=ck, model="vit_pico4", train=str(lab / "train"),
                                      val=str(lab / "val"), out=str(tmp_path / name), condition="full", workers=0,
                                      progress=False), log=quiet)["top1"]
    assert acc["pretrained"] >= acc["random"] + 0.10, acc


def test_a_released_file_passed_by_path_keeps_its_provenance(tmp_path):
    # the paper's files carry no record of their own: fraction and seed come from the name, by
    # identifier or by path alike, also for a classifier file whose record says nothing of pretraining
    from egoscale.evaluate.common import load_backbone
    from egoscale.models import build_vit, save_vit

    (tmp_path / "ckpts").mkdir()
    torch.save({"model": build_vit("vit_s14").state_dict()}, tmp_path / "ckpts" / "vits14_0.01_1.pth")
    _, info = load_backbone(str(tmp_path / "ckpts" / "vits14_0.01_1.pth"), None, None, 4)
    assert info["data_fraction"] == 0.01 and info["data_seed"] == 1
    save_vit(tmp_path / "vits14_0.1_2.pth", build_vit("vit_s14", num_classes=4))
    _, info = load_backbone(str(tmp_path / "vits14_0.1_2.pth"), None, None, 4)
    assert info["data_fraction"] == 0.1 and info["data_seed"] == 2
