"""egoscale's MAE against the reference semantics: transformers' ViTMAEForPreTraining with the same
weights and the same masking noise gives the same loss and the same gradient for every weight."""

import pytest
import torch

from egoscale.models import build_mae, get_spec
from egoscale.models.export import transformers_state as _hf_state  # the names `convert --to transformers` writes


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
    state = _hf_state(ours.state_dict())
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
    ref_grads = _hf_state(grads)
    named = dict(ref.named_parameters())
    for k, g in ref_grads.items():
        torch.testing.assert_close(g, named[k].grad, rtol=1e-4, atol=1e-6, msg=k)
