"""Checkpoint I/O: the paper's released layout written by timm itself, round trips, bad files."""

import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer as TimmViT

from egoscale.errors import CheckpointError
from egoscale.models import (
    build_mae,
    build_vit,
    export_safetensors,
    get_spec,
    load_mae,
    load_model,
    load_vit,
    read_checkpoint,
    save_checkpoint,
    save_mae,
    save_vit,
)
from egoscale.models.checkpoint import load_into, mae_to_released, resolve_checkpoint
from tests.cli import egoscale


def _timm_vit_s14(num_classes=0):
    """timm's own ViT with the paper's ViT-S/14 configuration, as the released files were made."""
    m = TimmViT(img_size=224, patch_size=14, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4,
                qkv_bias=True, class_token=True, global_pool="token", num_classes=0)
    for p in m.parameters():  # random, non-default values everywhere
        nn.init.normal_(p, std=0.05)
    if num_classes:
        bn = nn.BatchNorm1d(384, affine=False, eps=1e-6)  # the paper's finetuning script's head
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        m.head = nn.Sequential(bn, nn.Linear(384, num_classes))
    return m.eval()


@pytest.fixture(scope="module")
def released_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    (root / "vits14").mkdir()
    pre = _timm_vit_s14()
    decoder = {k: v for k, v in mae_to_released(build_mae(get_spec("vit_s14")).state_dict()).items()
               if k.startswith(("decoder_", "mask_token"))}
    torch.save({"model": {**pre.state_dict(), **decoder}}, root / "vits14" / "vits14_0.01_1.pth")
    fin = _timm_vit_s14(num_classes=1000)
    (root / "finetuned_vits14").mkdir()  # the Hub's layout, as the paper's helper downloads it
    torch.save({"model": fin.state_dict()}, root / "finetuned_vits14" / "vits14_0.01_1.pth")
    return root, pre, fin


def test_released_pretrained_file_gives_timms_features(released_files):
    root, pre, _ = released_files
    model = load_model("vits14_0.01_1", local_dirs=[root]).eval()
    assert any(k.startswith("decoder_") for k in model.load_report.ignored)
    assert "mask_token" in model.load_report.ignored
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (model.forward_features(x) - pre.forward_features(x)).abs().max().item()
    assert diff <= 1e-4


def test_released_finetuned_file_gives_timms_logits(released_files):
    root, _, fin = released_files
    model = load_model("vits14_0.01_1", finetuned=True, local_dirs=[root]).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - fin(x)).abs().max().item()
    assert model.num_classes == 1000
    assert diff <= 1e-4


def test_released_files_are_found_in_a_hugging_face_cache_laid_out_as_the_hub(released_files, tmp_path,
                                                                              monkeypatch):
    # a warm cache, as hf_hub_download leaves it: snapshots/<commit>/{ARCH,finetuned_ARCH}/ID.pth
    from huggingface_hub import constants

    root, pre, fin = released_files
    repo = tmp_path / "hub" / "models--eminorhan--humanlike-vits"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for sub in ("vits14", "finetuned_vits14"):
        (repo / "snapshots" / commit / sub).mkdir(parents=True)
        shutil.copy(root / sub / "vits14_0.01_1.pth", repo / "snapshots" / commit / sub / "vits14_0.01_1.pth")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    got = resolve_checkpoint("vits14_0.01_1", finetuned=True)
    assert got.parent.name == "finetuned_vits14" and got.name == "vits14_0.01_1.pth"
    assert resolve_checkpoint("vits14_0.01_1").parent.name == "vits14"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (load_model("vits14_0.01_1", finetuned=True).eval()(x) - fin(x)).abs().max() <= 1e-4
    with pytest.raises(CheckpointError, match=r"finetuned_vits14/vits14_0.1_1.pth"):  # where it would be
        resolve_checkpoint("vits14_0.1_1", finetuned=True)


def test_a_fresh_head_is_the_papers(tmp_path):
    # BatchNorm eps 1e-6 and a Linear started at truncated normal std 0.01 with zero bias, as the
    # paper's finetuning and linear-probe scripts make it: the first logits are small
    vit = build_vit("vit_s14", num_classes=1000)
    bn, linear = vit.head
    assert bn.eps == 1e-6 and not bn.affine
    assert 0.009 < linear.weight.std().item() < 0.011
    assert torch.count_nonzero(linear.bias) == 0
    with torch.no_grad():
        logits = vit.train()(torch.randn(8, 3, 224, 224))
    assert logits.std().item() < 0.5


def test_loading_at_another_size_resamples_positions(released_files):
    root, _, _ = released_files
    model = load_model("vits14_0.01_1", local_dirs=[root], img_size=112)
    assert model.load_report.resampled == ((16, 16), (8, 8))
    with torch.no_grad():
        assert model.eval().forward_features(torch.randn(1, 3, 112, 112)).shape == (1, 65, 384)


def test_absent_released_checkpoint_offline_says_where_it_looked(tmp_path):
    with pytest.raises(CheckpointError, match=r"not found; looked in .*vith14@476.*offline"):
        load_model("vith14@476_1.0_1", local_dirs=[tmp_path])


def test_mae_round_trip_is_exact(tmp_path):
    mae = build_mae(get_spec("vit_pico4"), mask_ratio=0.75, norm_pix_loss=True)
    save_mae(tmp_path / "m.pt", mae, step=7)
    again = load_mae(tmp_path / "m.pt")
    assert again.mask_ratio == 0.75 and again.norm_pix_loss
    a, b = mae.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the encoder of an MAE file loads as a ViT too, the decoder reported as ignored
    vit, report = load_vit(tmp_path / "m.pt")
    assert torch.equal(vit.blocks[0].attn.qkv.weight, mae.encoder.blocks[0].attn.qkv.weight)
    assert report.ignored


def test_vit_and_safetensors_round_trip_are_exact(tmp_path):
    vit = build_vit("vit_pico4", num_classes=7)
    save_vit(tmp_path / "v.pt", vit)
    export_safetensors(tmp_path / "v.pt", tmp_path / "v.safetensors")
    for f in ("v.pt", "v.safetensors"):
        again, _ = load_vit(tmp_path / f)
        a, b = vit.state_dict(), again.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
        assert again.spec == vit.spec


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(3)}})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_truncated_and_foreign_files_give_one_clear_error(tmp_path):
    vit = build_vit("vit_pico4")
    save_vit(tmp_path / "good.pt", vit)
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    for name in ("cut.pt", "junk.pt"):
        with pytest.raises(CheckpointError, match=rf"{name}: not a readable checkpoint"):
            read_checkpoint(tmp_path / name)
    r = egoscale("inspect", tmp_path / "cut.pt")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "cut.pt" in r.stderr and "Traceback" not in r.stderr


def test_shape_mismatch_names_the_tensor(tmp_path):
    small = build_vit("vit_pico4")
    other = build_vit("vit_nano4")
    with pytest.raises(CheckpointError, match=r"does not fit vit_nano4: shape mismatch: .*cls_token"):
        load_into(other, small.state_dict(), "x.pt", None)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"model": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused to load"):
        read_checkpoint(tmp_path / "evil.pt")


def test_cli_models_and_inspect(tmp_path):
    r = egoscale("models", "vit_h14", "--img-size", "476")
    assert r.returncode == 0 and "633,197,800" in r.stdout
    r = egoscale("models", "vit_hh14")
    assert r.returncode == 2 and "did you mean" in r.stderr
    save_mae(tmp_path / "m.pt", build_mae(get_spec("vit_pico4")), step=3)
    r = egoscale("inspect", tmp_path / "m.pt")
    assert r.returncode == 0 and "MAE" in r.stdout and "step 3" in r.stdout


def test_every_command_has_working_help():
    from egoscale.cli import build_parser

    parser = build_parser()
    names = list(parser._subparsers._group_actions[0].choices)
    stages = {"demo", "world", "ingest", "subset", "pretrain", "finetune", "probe", "fit", "report", "sweep"}
    assert stages <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as e:
            parser.parse_args([name, "--help"])
        assert e.value.code == 0, name


_NO_TORCH_CLI = """
import contextlib, io, sys
from egoscale.cli import STAGES, main

def run(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue()

rc, text = run(["--help"])
assert not [c for c in STAGES if c not in text], text
for name in STAGES:
    rc, text = run([name, "--help"])
    assert rc == 0 and "usage:" in text, name
for argv, says in [(["pretrain", "--batch-size", "0", "--steps", "1"], "--batch-size must be at least 1"),
                   (["pretrain", "--model", "vit_x9", "--steps", "1"], "vit_x9"),
                   (["finetune", "--checkpoint", "none"], "--checkpoint none needs --model"),
                   (["probe", "--model", "vit_s14", "--checkpoint", "none", "--knn", "-1"], "--knn"),
                   (["visualize", "x.pt", "-n", "0"], "--n must be at least 1")]:
    rc, text = run(argv)
    assert rc == 2 and says in text and len(text.splitlines()) == 1, (argv, text)
assert "torch" not in sys.modules, "torch imported"
"""


def test_help_and_bad_settings_answer_without_loading_torch():
    """`egoscale --help`, every command's --help and a bad setting of the stages that train are
    answered from the config modules alone: torch (seconds of start-up) is loaded only to run."""
    r = subprocess.run([sys.executable, "-c", _NO_TORCH_CLI], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
