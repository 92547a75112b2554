"""Masked autoencoder (He et al. 2022) around the egoscale ViT.

The encoder sees only the visible patches (plus the class token); a lighter decoder gets the
encoded visible tokens, mask tokens for the rest, fixed sin-cos positions, and predicts the
pixels of every patch. The loss is the mean squared error on the masked patches only.

The encoder is `self.encoder` (an egoscale ViT); checkpoints are written in the MAE reference
layout (encoder weights at the top level, decoder weights prefixed `decoder_`, see
checkpoint.py), the same layout as the paper's released pretraining checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from egoscale.models.pos_embed import sincos_2d
from egoscale.models.registry import ViTSpec
from egoscale.models.vit import VisionTransformer


@dataclass
class MAEOutput:
    loss: torch.Tensor  # scalar
    pred: torch.Tensor  # (B, L, p*p*3) predicted pixels of every patch
    mask: torch.Tensor  # (B, L) 1 = masked (predicted), 0 = visible


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches kept visible: round(L * (1 - ratio)), at least one.

    Rounding (not truncation) so that e.g. L=100, ratio 0.9 keeps 10, not 9 from float error.
    """
    return max(1, int(round(num_patches * (1.0 - mask_ratio))))


def random_masking(batch: int, num_patches: int, mask_ratio: float, device=None,
                   generator: torch.Generator | None = None):
    """Per-sample random masking with an exact count of kept patches.

    Returns (ids_keep (B, K), mask (B, L) with 1 = masked, ids_restore (B, L)).
    """
    keep = num_visible(num_patches, mask_ratio)
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)  # ascending: the first `keep` are kept
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to patch order
    return ids_keep, mask, ids_restore


class MaskedAutoencoder(nn.Module):
    """MAE with a ViT encoder (fixed sin-cos positions) and a transformer decoder.

    Args:
        spec: encoder shape; its decoder_* fields give the decoder (paper: 512 wide, 8 blocks).
        mask_ratio: fraction of patches hidden from the encoder (paper: 0.8).
        norm_pix_loss: regress per-patch normalised pixels (MAE's option; the paper used raw).
    """

    def __init__(self, spec: ViTSpec, mask_ratio: float = 0.8, norm_pix_loss: bool = False):
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.spec = spec
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.encoder = VisionTransformer(spec, num_classes=0, sincos_pos_embed=True)

        dw, p = spec.decoder_width, spec.patch_size
        self.decoder_embed = nn.Linear(spec.width, dw)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dw))
        grid = self.encoder.patch_embed.grid_size
        self.decoder_pos_embed = nn.Parameter(sincos_2d(dw, grid), requires_grad=False)
        self.decoder_blocks = nn.Sequential(*[
            Block(dw, spec.decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(spec.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dw, eps=1e-6)
        self.decoder_pred = nn.Linear(dw, p * p * 3)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    # --- patches <-> images ----------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, L, p*p*3), row-major patches, pixels in (p, q, c) order."""
        p = self.spec.patch_size
        b, c, h, w = imgs.shape
        x = imgs.reshape(b, c, h // p, p, w // p, p)
        x = torch.einsum("bchpwq->bhwpqc", x)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, L, p*p*3) -> (B, 3, H, W)."""
        p = self.spec.patch_size
        gh, gw = grid
        x = x.reshape(x.shape[0], gh, gw, p, p, 3)
        x = torch.einsum("bhwpqc->bchpwq", x)
        return x.reshape(x.shape[0], 3, gh * p, gw * p)

    def _fixed_pos(self, table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        # Sin-cos tables are a function of the grid, so at another size they are recomputed
        # exactly rather than interpolated.
        if tuple(grid) == tuple(self.encoder.patch_embed.grid_size):
            return table
        return sincos_2d(table.shape[-1], grid).to(table)

    # --- the three stages ------------------------------------------------------------------
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float,
                        generator: torch.Generator | None = None):
        """Encode a random visible subset. Returns (latent (B, 1+K, C), mask, ids_restore)."""
        enc = self.encoder
        grid = enc.grid_for(imgs.shape[-2], imgs.shape[-1])
        pos = self._fixed_pos(enc.pos_embed, grid)  # (1, 1+L, C)
        x = enc.patch_embed(imgs) + pos[:, 1:]  # (B, L, C)
        b, n, c = x.shape
        ids_keep, mask, ids_restore = random_masking(b, n, mask_ratio, x.device, generator)
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, c))  # (B, K, C)
        cls = (enc.cls_token + pos[:, :1]).expand(b, -1, -1)
        return enc.run_blocks(torch.cat([cls, x], dim=1)), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor,
                        grid: tuple[int, int]) -> torch.Tensor:
        """(B, 1+K, C) -> predicted pixels of all patches (B, L, p*p*3)."""
        x = self.decoder_embed(latent)  # (B, 1+K, D)
        b, n = ids_restore.shape
        masked = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:], masked], dim=1)  # (B, L, D) in shuffled order
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self._fixed_pos(self.decoder_pos_embed, grid)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])  # no prediction for the class token

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        t = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
            t = (t - mean) / (var + 1e-6) ** 0.5
        return t

    def loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over the masked patches."""
        per_patch = (pred - self.target(imgs)).pow(2).mean(-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None,
                generator: torch.Generator | None = None) -> MAEOutput:
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        grid = self.encoder.grid_for(imgs.shape[-2], imgs.shape[-1])
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, generator)
        pred = self.forward_decoder(latent, ids_restore, grid)
        return MAEOutput(self.loss(imgs, pred, mask), pred, mask)

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, mask_ratio: float | None = None,
                    generator: torch.Generator | None = None):
        """What the model sees and fills in, for pictures.

        Returns (masked input, reconstruction, pasted), each (B, 3, H, W) in the input's
        normalisation: masked patches zeroed; the prediction of every patch; visible patches
        from the input with the predicted ones pasted into the masked places.
        """
        out = self.forward(imgs, mask_ratio, generator)
        grid = self.encoder.grid_for(imgs.shape[-2], imgs.shape[-1])
        pred = out.pred
        if self.norm_pix_loss:  # undo the per-patch normalisation with the true patch stats
            t = self.patchify(imgs)
            pred = pred * (t.var(-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(-1, keepdim=True)
        m = out.mask.unsqueeze(-1)  # (B, L, 1)
        patches = self.patchify(imgs)
        masked = self.unpatchify(patches * (1 - m), grid)
        recon = self.unpatchify(pred, grid)
        pasted = self.unpatchify(patches * (1 - m) + pred * m, grid)
        return masked, recon, pasted


def build_mae(spec: ViTSpec, **kwargs) -> MaskedAutoencoder:
    return MaskedAutoencoder(spec, **kwargs)

