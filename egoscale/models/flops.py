"""Analytic FLOP counts (2 FLOPs per multiply-add) for the ViT family and the MAE step.

Counted: every matmul/conv (patch projection, qkv, attention scores, attention-weighted sum,
output projection, MLP, head). Not counted: norms, softmax, GELU, adds (a few percent).
These numbers feed the compute model of the scaling analysis and MFU in training logs.
"""

from __future__ import annotations

from egoscale.models.registry import ViTSpec


def _blocks_flops(tokens: int, width: int, mlp_dim: int, depth: int) -> float:
    per_block = (2 * tokens * width * 3 * width      # qkv
                 + 2 * 2 * tokens * tokens * width   # q @ k^T and attn @ v
                 + 2 * tokens * width * width        # output projection
                 + 2 * 2 * tokens * width * mlp_dim)  # fc1 and fc2
    return depth * per_block


def encoder_flops(spec: ViTSpec, img_size: int | None = None, tokens: int | None = None) -> float:
    """Forward FLOPs of the encoder for one image; `tokens` = visible patches (MAE), else all."""
    size = img_size or spec.img_size
    n_patches = (size // spec.patch_size) ** 2
    n = n_patches if tokens is None else tokens
    patch = 2 * n * 3 * spec.patch_size ** 2 * spec.width
    return patch + _blocks_flops(n + 1, spec.width, spec.mlp_dim, spec.depth)


def vit_gflops(spec: ViTSpec, img_size: int | None = None) -> float:
    """Forward GFLOPs per image of the full encoder (all patches + class token)."""
    return encoder_flops(spec, img_size) / 1e9


def mae_train_flops(spec: ViTSpec, img_size: int | None = None, mask_ratio: float = 0.8) -> float:
    """FLOPs of one MAE training step per image: forward + backward (= 3 x forward)."""
    from egoscale.models.mae import num_visible

    size = img_size or spec.img_size
    n = (size // spec.patch_size) ** 2
    enc = encoder_flops(spec, size, tokens=num_visible(n, mask_ratio))
    dw = spec.decoder_width
    dec = (2 * (num_visible(n, mask_ratio) + 1) * spec.width * dw       # decoder_embed
           + _blocks_flops(n + 1, dw, 4 * dw, spec.decoder_depth)
           + 2 * n * dw * spec.patch_size ** 2 * 3)                   # pixel prediction
    return 3.0 * (enc + dec)
