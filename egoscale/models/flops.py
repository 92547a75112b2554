"""Analytic FLOP counts (2 FLOPs per multiply-add) for the ViT family and the MAE step.

Counted: every matmul/conv (patch projection, qkv, attention scores, attention-weighted sum,
output projection, MLP, head). Not counted: norms, softmax, GELU, adds (a few percent).
These numbers feed the compute model of the scaling analysis and MFU in training logs.
"""

from __future__ import annotations

from egoscale.constants import MASK_RATIO
from egoscale.models.registry import ViTSpec


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches kept visible: int(L * (1 - ratio)) exactly as the float product gives it, as the MAE
    reference code, the paper's fork and transformers' ViTMAE count them (64 patches at 0.8 keep
    12; 25 at 0.8 keep 4, the product being 4.999...), so masks and losses match theirs at every
    size. At least one patch stays visible.
    """
    return max(1, int(num_patches * (1 - mask_ratio)))


def _blocks_flops(tokens: int, width: int, mlp_dim: int, depth: int, queries: int | None = None) -> float:
    """`depth` blocks over `tokens` tokens; `queries` < tokens: the outputs of that many only."""
    q = tokens if queries is None else queries
    per_block = (2 * (q + 2 * tokens) * width * width  # q, k, v projections
                 + 2 * 2 * q * tokens * width         # q @ k^T and attn @ v
                 + 2 * q * width * width              # output projection
                 + 2 * 2 * q * width * mlp_dim)       # fc1 and fc2
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


def decoder_params(width: int = ViTSpec.decoder_width, depth: int = ViTSpec.decoder_depth) -> float:
    """Weights of an MAE decoder's blocks (q/k/v, projection, a 4x MLP): what each token's pass
    through it costs per FLOP model (the paper's 512 x 8 by default)."""
    return depth * 12.0 * width * width


def mae_train_flops(spec: ViTSpec, img_size: int | None = None, mask_ratio: float = MASK_RATIO,
                    predict_all: bool = False) -> float:
    """FLOPs of one MAE training step per image: forward + backward (= 3 x forward).

    As egoscale computes it: the last decoder block and the pixel prediction run on the masked
    patches only; `predict_all` counts them on every patch (MAE's reference code and other
    implementations do that).
    """
    size = img_size or spec.img_size
    n = (size // spec.patch_size) ** 2
    keep = num_visible(n, mask_ratio)
    out = n if predict_all else n - keep  # patches whose pixels are predicted
    last_rows = n + 1 if predict_all else out  # rows the last decoder block computes (+ class token)
    enc = encoder_flops(spec, size, tokens=keep)
    dw = spec.decoder_width
    dec = (2 * (keep + 1) * spec.width * dw                              # decoder_embed
           + _blocks_flops(n + 1, dw, 4 * dw, spec.decoder_depth - 1)
           + _blocks_flops(n + 1, dw, 4 * dw, 1, queries=last_rows)
           + 2 * out * dw * spec.patch_size ** 2 * 3)                   # pixel prediction
    return 3.0 * (enc + dec)
