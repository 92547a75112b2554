"""egoscale's MAE against the reference semantics: transformers' ViTMAEForPreTraining with the same
weights and the same masking noise gives the same loss and the same gradient for every weight."""

import pytest
import torch

from egoscale.models import build_mae, get_spec


def _hf_state(ours: dict, spec) -> dict:
    """egoscale's MAE state dict in transformers' ViTMAE names (q/k/v split out of qkv)."""
    out = {}
    for k, v in ours.items():
        if k.startswith("encoder.blocks.") or k.startswith("decoder_blocks."):
            enc = k.startswith("encoder.")
            i = int(k.split(".")[2 if enc else 1])
            rest = k.split(".", 3 if enc else 2)[-1]
            pre = f"vit.layers.{i}." if enc else f"decoder.decoder_layers.{i}."
            if rest.startswith("attn.qkv."):
                for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3)):
                    out[pre + f"attention.{name}.{rest.split('.')[-1]}"] = part
                continue
            rest = (rest.replace("attn.proj.", "attention.o_proj.").replace("norm1.", "layernorm_before.")
                    .replace("norm2.", "layernorm_after."))
            out[pre + rest] = v
            continue
        out[{"encoder.cls_token": "vit.embeddings.cls_token", "encoder.pos_embed": "vit.embeddings.position_embeddings",
             "encoder.patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
             "encoder.patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
             "encoder.norm.weight": "vit.layernorm.weight", "encoder.norm.bias": "vit.layernorm.bias"}.get(
            k, "decoder." + k)] = v
    return out


@pytest.mark.parametrize("ratio", [0.8, 0.75])
def test_loss_and_every_gradient_match_transformers_vitmae(ratio):
    transformers = pytest.importorskip("transformers")
    spec = get_spec("vit_pico4")  # 64 patches: at 0.8 the reference keeps int(12.8) = 12
    torch.manual_seed(0)
    ours = build_mae(spec, mask_ratio=ratio)
    cfg = transformers.ViTMAEConfig(
        image_size=spec.img_size, patch_size=spec.patch_size, hidden_size=spec.width, num_hidden_layers=spec.depth,
        num_attention_heads=spec.heads, intermediate_size=spec.mlp_dim, decoder_hidden_size=spec.decoder_width,
        decoder_num_hidden_layers=spec.decoder_depth, decoder_num_attention_heads=spec.decoder_heads,
        decoder_intermediate_size=4 * spec.decoder_width, mask_ratio=ratio, norm_pix_loss=False, qkv_bias=True,
        layer_norm_eps=1e-6, attn_implementation="eager")
    ref = transformers.ViTMAEForPreTraining(cfg)
    state = _hf_state(ours.state_dict(), spec)
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and not missing, (missing, unexpected)

    x = torch.randn(3, 3, spec.img_size, spec.img_size)
    noise = torch.rand(3, 64, generator=torch.Generator().manual_seed(7))
    mine = ours(x, generator=torch.Generator().manual_seed(7))  # draws the same noise
    theirs = ref(pixel_values=x, noise=noise)
    assert int((1 - mine.mask).sum(1)[0]) == int(64 * (1 - ratio))  # the reference's kept-patch count
    torch.testing.assert_close(mine.mask, theirs.mask)
    torch.testing.assert_close(mine.loss, theirs.loss, rtol=1e-5, atol=1e-6)
    mine.loss.backward()
    theirs.loss.backward()
    grads = {k: p.grad for k, p in ours.named_parameters() if p.requires_grad}
    ref_grads = _hf_state(grads, spec)
    named = dict(ref.named_parameters())
    for k, g in ref_grads.items():
        torch.testing.assert_close(g, named[k].grad, rtol=1e-4, atol=1e-6, msg=k)
