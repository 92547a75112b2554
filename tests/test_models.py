"""The ViT family and the MAE: exact sizes, shapes, masking, and that an MAE learns."""

import functools

import pytest
import torch

from egoscale.errors import ConfigError, ModelNotFoundError
from egoscale.models import build_mae, build_vit, count_params, get_spec
from egoscale.models.block import Block, gather_rows
from egoscale.models.flops import mae_train_flops, vit_gflops
from egoscale.models.mae import masked_patches, num_visible, random_masking

# The paper's parameter counts (classifier form: encoder + BN(affine=False)+Linear 1000-way head).
PAPER_PARAMS = [
    ("vit_s14", 224, 22_004_584),
    ("vit_b14", 224, 86_475_496),
    ("vit_l14", 224, 304_203_752),
    ("vit_h14", 224, 632_045_800),
    ("vit_h14", 448, 633_028_840),
    ("vit_h14", 476, 633_197_800),
]


@pytest.mark.parametrize("name,size,expected", PAPER_PARAMS)
def test_parameter_counts_match_the_paper(name, size, expected):
    with torch.device("meta"):
        model = build_vit(name, img_size=size, num_classes=1000)
    assert count_params(model) == expected


@pytest.mark.parametrize("name,approx", [("vit_g14", 1.0e9), ("vit_G14", 1.8e9), ("vit_2.5b14", 2.5e9)])
def test_extrapolation_members_have_their_advertised_size(name, approx):
    with torch.device("meta"):
        model = build_vit(name, num_classes=0)
    assert abs(count_params(model) - approx) / approx < 0.05


@pytest.mark.parametrize("size", [224, 448, 476])
def test_output_shapes_at_the_papers_sizes(size):
    model = build_vit("vit_s14", img_size=size, num_classes=1000).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 1 + (size // 14) ** 2, 384)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 384)
        assert model(x).shape == (2, 1000)


def test_huge_model_shapes_on_meta_device():
    with torch.device("meta"):
        model = build_vit("vit_h14", img_size=476, num_classes=1000)
        out = model.forward_features(torch.empty(1, 3, 476, 476))
    assert out.shape == (1, 1 + 34 * 34, 1280)


def test_attention_uses_the_fused_sdpa_path():
    model = build_vit("vit_pico4")
    assert all(blk.attn.fused_attn for blk in model.blocks)


def test_model_runs_at_another_input_size_by_resampling_positions():
    model = build_vit("vit_pico4", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 48, 48)).shape == (2, 5)


def test_timm_standard_calls():
    model = build_vit("vit_pico4", num_classes=10)
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    assert "blocks" in model.group_matcher()
    model.reset_classifier(3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    model.set_grad_checkpointing(True)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_bad_sizes_and_names_give_clear_errors():
    with pytest.raises(ConfigError, match="not divisible by patch size 14"):
        build_vit("vit_s14", img_size=100)
    with pytest.raises(ModelNotFoundError, match="did you mean .*vit_h14"):
        get_spec("vit_h15")
    assert get_spec("ViT-H/14").name == "vit_h14"
    assert get_spec("vith14@476").img_size == 476
    assert get_spec("vit_s14", patch_size=16).patch_size == 16


@pytest.mark.parametrize("ratio,kept", [(0.75, 64), (0.8, 51)])
def test_masking_keeps_an_exact_number_of_patches(ratio, kept):
    ids_keep, mask, ids_restore = random_masking(8, 256, ratio)
    assert ids_keep.shape == (8, kept)
    assert (mask.sum(1) == 256 - kept).all()
    # kept patches are exactly the unmasked ones, and differ between samples
    for b in range(8):
        assert set(ids_keep[b].tolist()) == set((mask[b] == 0).nonzero().flatten().tolist())
    assert not torch.equal(ids_keep[0].sort().values, ids_keep[1].sort().values)


@pytest.mark.parametrize("patches,ratio,kept", [(64, 0.8, 12), (1024, 0.8, 204), (196, 0.9, 19), (256, 0.9, 25),
                                                (256, 0.75, 64), (25, 0.8, 4), (100, 0.8, 19), (100, 0.9, 9),
                                                (4, 0.9, 1)])
def test_kept_patch_count_is_the_reference_truncation(patches, ratio, kept):
    # facebookresearch/mae and transformers keep int(L * (1 - ratio)) as the float product gives
    # it (25 x 0.2 is 4.999... in floating point: 4 kept, at 70 and 140 px with patch 14); at least one
    assert num_visible(patches, ratio) == kept
    from transformers import ViTMAEConfig
    from transformers.models.vit_mae.modeling_vit_mae import ViTMAEEmbeddings

    side = int(patches ** 0.5)
    if side * side == patches and int(patches * (1 - ratio)) > 0:  # transformers' masking keeps as many
        # (where the product is below one it would keep none: egoscale keeps one)
        emb = ViTMAEEmbeddings(ViTMAEConfig(image_size=side * 2, patch_size=2, hidden_size=8, mask_ratio=ratio))
        _, mask, _ = emb.random_masking(torch.zeros(1, patches, 8))
        assert int((mask == 0).sum()) == kept


def _timm_block(dim, heads):
    from timm.models.vision_transformer import Block as TimmBlock

    norm = functools.partial(torch.nn.LayerNorm, eps=1e-6)
    return TimmBlock(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm)


@pytest.mark.parametrize("fused", [True, False])
def test_block_computes_what_timms_block_computes(fused):
    # the encoder's and decoder's block is egoscale's own code with timm's parameter names: the
    # same weights give timm's pre-norm Block function and gradients, so released weights mean
    # the same thing
    torch.manual_seed(0)
    ours = Block(64, 4)
    ours.attn.fused_attn = fused
    ref = _timm_block(64, 4)
    ref.attn.fused_attn = fused
    assert set(ours.state_dict()) == set(ref.state_dict())
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.3)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 17, 64)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    y_ours, y_ref = ours(xs[0]), ref(xs[1])
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-5)
    (y_ours * y_ref.detach()).sum().backward()
    (y_ref * y_ref.detach()).sum().backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-4, atol=1e-4)
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, rtol=1e-4, atol=1e-4, msg=name)
    rows = torch.tensor([[1, 5, 16], [0, 2, 3], [7, 8, 9]])
    torch.testing.assert_close(ours(x, rows), gather_rows(ref(x), rows), rtol=1e-5, atol=1e-5)


def test_block_backward_copies_the_qkv_gradients_once():
    # timm splits q/k/v from a (3, B, H, N, hd) permutation, so its backward stacks their
    # gradients and then copies them again into the projection's layout; egoscale's block
    # splits the projection's own layout and gathers the gradients into it once
    from torch.utils._python_dispatch import TorchDispatchMode

    class CopiedBytes(TorchDispatchMode):
        copies = ("cat", "stack", "clone", "copy_", "_to_copy", "contiguous")

        def __init__(self):
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket.__name__ in self.copies:
                outs = out if isinstance(out, (list, tuple)) else [out]
                self.bytes += sum(o.numel() * o.element_size() for o in outs)
            return out

    b, n, c = 4, 33, 64
    copied = {}
    for name, block in (("ours", Block(c, 4)), ("timm", _timm_block(c, 4))):
        y = block(torch.randn(b, n, c, requires_grad=True))
        with CopiedBytes() as counter:
            y.pow(2).sum().backward()
        copied[name] = counter.bytes
    qkv_grad = b * n * 3 * c * 4  # fp32
    assert copied["ours"] == qkv_grad <= copied["timm"]  # timm 1.0: 2 x qkv_grad


def test_mae_encoder_sees_only_visible_patches():
    mae = build_mae(get_spec("vit_s14"), mask_ratio=0.8)
    latent, mask, _ = mae.forward_encoder(torch.randn(2, 3, 224, 224), 0.8)
    assert latent.shape == (2, 1 + 51, 384)
    assert mae.encoder.pos_embed.requires_grad is False  # fixed sin-cos


def _smooth_images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def test_tiny_mae_overfits_one_batch():
    torch.manual_seed(0)
    mae = build_mae(get_spec("vit_pico4"), mask_ratio=0.75)
    imgs = _smooth_images(8, 32)
    opt = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr=2e-3, betas=(0.9, 0.95))
    first = None
    for _ in range(150):
        loss = mae(imgs).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = sum(mae(imgs).loss.item() for _ in range(5)) / 5
    assert last < first / 2, (first, last)


@pytest.mark.parametrize("bf16", [False, True])  # SDPA and the plain matmul attention
def test_training_forward_equals_the_full_decoder_read_at_the_masked_patches(bf16):
    from egoscale.models import choose_attention

    torch.manual_seed(0)
    mae = build_mae(get_spec("vit_pico4"), mask_ratio=0.75)
    choose_attention(mae, torch.device("cpu"), bf16)  # picks the kernel only; runs in fp32 here
    imgs = _smooth_images(4, 32)
    outs, grads = [], []
    for predict_all in (False, True):
        out = mae(imgs, generator=torch.Generator().manual_seed(3), predict_all=predict_all)
        mae.zero_grad()
        out.loss.backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in mae.named_parameters() if p.grad is not None})
    fast, full = outs
    assert torch.equal(fast.mask, full.mask)
    assert fast.pred.shape == (4, 48, 48) and full.pred.shape == (4, 64, 48)  # 48 of 64 patches masked
    rows = masked_patches(full.mask, 48)
    assert (full.mask.gather(1, rows) == 1).all() and (rows.diff(dim=1) > 0).all()
    torch.testing.assert_close(fast.pred, gather_rows(full.pred, rows))
    torch.testing.assert_close(fast.loss, full.loss)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_reconstruct_pastes_predictions_only_into_masked_patches():
    mae = build_mae(get_spec("vit_pico4"), norm_pix_loss=True).eval()
    imgs = _smooth_images(2, 32)
    masked, recon, pasted = mae.reconstruct(imgs, generator=torch.Generator().manual_seed(1))
    assert masked.shape == recon.shape == pasted.shape == imgs.shape
    visible = (masked.abs().sum(1, keepdim=True) > 0).expand_as(imgs)
    assert torch.allclose(pasted[visible], imgs[visible])
    assert not torch.allclose(pasted, imgs)


def test_patchify_round_trip():
    mae = build_mae(get_spec("vit_pico4"))
    imgs = torch.randn(2, 3, 32, 32)
    assert torch.equal(mae.unpatchify(mae.patchify(imgs), (8, 8)), imgs)


def test_flop_model_is_sane():
    s = get_spec("vit_b14")
    assert 40 < vit_gflops(s) < 50  # ViT-B/14 at 224: ~46 GFLOPs (256 patches)
    assert vit_gflops(s, 448) > 4 * vit_gflops(s)  # attention grows faster than linear
    assert mae_train_flops(s, mask_ratio=0.8) < 3 * vit_gflops(s) * 1e9  # MAE encodes 20% of patches


def test_mae_step_flop_count_matches_what_the_step_computes():
    from torch.utils.flop_counter import FlopCounterMode

    from egoscale.models import choose_attention

    spec = get_spec("vit_pico4")
    mae = build_mae(spec, mask_ratio=0.75)
    choose_attention(mae, torch.device("cpu"), bf16=True)  # attention as matmuls, which the counter sees
    counted = {}
    for predict_all in (False, True):
        with FlopCounterMode(display=False) as fc:
            mae(torch.randn(2, 3, 32, 32), predict_all=predict_all).loss.backward()
        counted[predict_all] = fc.get_total_flops() / 2
        assert counted[predict_all] == pytest.approx(mae_train_flops(spec, 32, 0.75, predict_all), rel=0.02)
    # what predicting the masked patches only saves, to the FLOP
    assert counted[True] - counted[False] == mae_train_flops(spec, 32, 0.75, True) - mae_train_flops(spec, 32, 0.75)


def test_attention_kernel_choice_does_not_change_the_function():
    from egoscale.models import build_vit, choose_attention

    torch.manual_seed(0)
    model = build_vit("vit_pico4", img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    assert choose_attention(model, torch.device("cpu"), bf16=False) == "sdpa"
    with torch.no_grad():
        fused = model.forward_features(x)
    assert choose_attention(model, torch.device("cpu"), bf16=True) == "matmul"
    assert not any(getattr(m, "fused_attn", False) for m in model.modules())
    with torch.no_grad():
        plain = model.forward_features(x)
    torch.testing.assert_close(plain, fused, rtol=1e-4, atol=1e-5)
    assert choose_attention(model, torch.device("cuda"), bf16=True) == "sdpa"  # GPUs keep the fused kernel


@pytest.mark.parametrize("name,size", [("vit_s14", 224), ("vit_h14", 476), ("vit_pico4", 32), ("vit_small8", 48)])
def test_encoder_parameter_count_from_the_shape_matches_the_built_model(name, size):
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_vit(spec, img_size=size, num_classes=0)
    assert spec.encoder_params(size) == count_params(model)


def test_position_tables_resample_as_the_papers_loader_does():
    # the paper's interpolate_pos_embed: the class token kept, the grid bicubic
    # (align_corners=False, no antialiasing): a 56 px table read at 112 px and at 28 px
    from egoscale.models.pos_embed import resample_pos_embed

    table = torch.randn(1, 1 + 16, 32)
    for new in (8, 2):
        grid = table[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
        want = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        want = torch.cat([table[:, :1], want.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
        assert torch.allclose(resample_pos_embed(table, (new, new), (4, 4)), want, atol=1e-6)
