"""Pretrained models leave for the ecosystem: `egoscale convert --to transformers / timm` writes
folders that the real libraries load, and they compute what egoscale computes."""

import pytest
import torch

from egoscale.models import load_mae, load_vit
from egoscale.train.config import PretrainConfig
from egoscale.train.pretrain import pretrain
from tests.cli import egoscale
from tests.images import unlabelled_shards


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real pretraining run (norm-pix loss, a non-default mask ratio and decoder)."""
    root = tmp_path_factory.mktemp("export")
    shards = unlabelled_shards(root / "shards", n=32, per_shard=16)
    pretrain(PretrainConfig(data=str(shards), out=str(root / "run"), model="vit_pico4", batch_size=8, steps=3,
                            workers=0, progress=False, shuffle_buffer=16, mask_ratio=0.6, norm_pix_loss=True,
                            decoder_depth=2, tensorboard=False), log=lambda *a: None)
    return root / "run"


def test_transformers_loads_the_mae_and_gives_the_same_loss_on_the_same_images_and_noise(run, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    r = egoscale("convert", run, "--to", "transformers", out)
    assert r.returncode == 0, r.stderr
    assert "ViTMAEForPreTraining.from_pretrained" in r.stdout
    ref = transformers.ViTMAEForPreTraining.from_pretrained(out, attn_implementation="eager").eval()
    mae = load_mae(run / "checkpoint.pt").eval()
    assert ref.config.mask_ratio == 0.6 and ref.config.norm_pix_loss and ref.config.decoder_num_hidden_layers == 2
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    patches = (32 // mae.spec.patch_size) ** 2
    noise = torch.rand(4, patches, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        mine = mae(x, generator=torch.Generator().manual_seed(7))  # draws the same noise
        theirs = ref(pixel_values=x, noise=noise)
    torch.testing.assert_close(mine.mask, theirs.mask)
    torch.testing.assert_close(mine.loss, theirs.loss, rtol=1e-5, atol=1e-6)


def test_timm_loads_the_encoder_and_gives_the_same_features(run, tmp_path):
    timm = pytest.importorskip("timm")
    out = tmp_path / "timm"
    r = egoscale("convert", run, "--to", "timm", out)
    assert r.returncode == 0, r.stderr
    vit, _ = load_vit(run / "checkpoint.pt", num_classes=0)
    vit.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = vit.forward_features(x)
        for model in (timm.create_model(f"local-dir:{out}", pretrained=True),
                      # the other spelling the command prints: an architecture, its arguments and the file
                      timm.create_model("vit_base_patch16_224", pretrained=True, img_size=32, patch_size=4,
                                        embed_dim=vit.spec.width, depth=vit.spec.depth, num_heads=vit.spec.heads,
                                        mlp_ratio=vit.spec.mlp_ratio, num_classes=0,
                                        pretrained_cfg_overlay={"file": str(out / "model.safetensors")})):
            got = model.eval().forward_features(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model(x), want[:, 0], rtol=1e-5, atol=1e-5)  # the class token, normed


def test_convert_to_a_folder_needs_a_target_and_transformers_needs_a_decoder(run, tmp_path):
    r = egoscale("convert", run, tmp_path / "somewhere")
    assert r.returncode == 2 and "--to" in r.stderr
    assert egoscale("convert", run, "--to", "timm", tmp_path / "t").returncode == 0
    # an encoder-only file (what timm's folder holds) is no MAE
    r = egoscale("convert", tmp_path / "t" / "model.safetensors", "--to", "transformers", tmp_path / "hf")
    assert r.returncode == 2 and "no MAE decoder" in r.stderr


def test_a_torch_file_for_the_papers_code_holds_the_weights_only(run, tmp_path):
    # a training checkpoint carries optimizer, scaler and RNG state; the converted file does not,
    # unless asked, and both load to the same weights
    src = run / "checkpoint.pt"
    full = torch.load(src, map_location="cpu", weights_only=False)
    assert {"model", "egoscale"} < set(full)
    assert egoscale("convert", run, tmp_path / "slim.pth").returncode == 0
    slim = torch.load(tmp_path / "slim.pth", map_location="cpu", weights_only=True)
    assert set(slim) == {"model", "egoscale"}
    assert (tmp_path / "slim.pth").stat().st_size < src.stat().st_size / 2
    assert all(torch.equal(slim["model"][k], full["model"][k]) for k in full["model"])
    assert egoscale("convert", run, tmp_path / "all.pth", "--keep-training-state").returncode == 0
    assert set(torch.load(tmp_path / "all.pth", map_location="cpu", weights_only=False)) == set(full)
    a, b = load_mae(tmp_path / "slim.pth").state_dict(), load_mae(src).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
