"""Masked autoencoder (He et al. 2022) around the egoscale ViT.

The encoder sees only the visible patches (plus the class token); a lighter decoder gets the
encoded visible tokens, mask tokens for the rest, fixed sin-cos positions, and predicts the
pixels of the masked patches (of every patch when asked, for pictures). The loss is the mean
squared error on the masked patches only.

The encoder is `self.encoder` (an egoscale ViT); checkpoints are written in the MAE reference
layout (encoder weights at the top level, decoder weights prefixed `decoder_`, see
checkpoint.py), the same layout as the paper's released pretraining checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from egoscale.constants import MASK_RATIO
from egoscale.models.block import Block, gather_rows
from egoscale.models.flops import num_visible
from egoscale.models.pos_embed import sincos_2d
from egoscale.models.registry import ViTSpec
from egoscale.models.vit import VisionTransformer


@dataclass
class MAEOutput:
    loss: torch.Tensor  # scalar
    # predicted pixels: of every patch (B, L, p*p*3) with `predict_all`, else of the masked
    # patches only, in patch order (B, M, p*p*3)
    pred: torch.Tensor
    mask: torch.Tensor  # (B, L) 1 = masked (predicted), 0 = visible


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


def masked_patches(mask: torch.Tensor, num_masked: int) -> torch.Tensor:
    """(B, L) mask with `num_masked` ones per row -> their indices (B, M), ascending."""
    # a stable descending sort puts the ones first, each row's in index order; no host sync
    return mask.argsort(dim=1, descending=True, stable=True)[:, :num_masked]


class MaskedAutoencoder(nn.Module):
    """MAE with a ViT encoder (fixed sin-cos positions) and a transformer decoder.

    Args:
        spec: encoder shape; its decoder_* fields give the decoder (paper: 512 wide, 8 blocks).
        mask_ratio: fraction of patches hidden from the encoder (paper: 0.8).
        norm_pix_loss: regress per-patch normalised pixels (MAE's option; the paper used raw).
    """

    def __init__(self, spec: ViTSpec, mask_ratio: float = MASK_RATIO, norm_pix_loss: bool = False):
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
            Block(dw, spec.decoder_heads, mlp_ratio=4.0) for _ in range(spec.decoder_depth)])
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
        b, n, _ = x.shape
        ids_keep, mask, ids_restore = random_masking(b, n, mask_ratio, x.device, generator)
        x = gather_rows(x, ids_keep)  # (B, K, C)
        cls = (enc.cls_token + pos[:, :1]).expand(b, -1, -1)
        return enc.run_blocks(torch.cat([cls, x], dim=1)), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor,
                        grid: tuple[int, int], patches: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1+K, C) -> predicted pixels (B, L, p*p*3) of every patch, or (B, M, p*p*3) of
        `patches` (B, M) indices only (the last block then computes just those)."""
        x = self.decoder_embed(latent)  # (B, 1+K, D)
        b, n = ids_restore.shape
        masked = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:], masked], dim=1)  # (B, L, D) in shuffled order
        tokens = gather_rows(tokens, ids_restore)
        x = torch.cat([x[:, :1], tokens], dim=1) + self._fixed_pos(self.decoder_pos_embed, grid)
        if patches is None:
            x = self.decoder_blocks(x)[:, 1:]  # no prediction for the class token
        else:
            x = self.decoder_blocks[-1](self.decoder_blocks[:-1](x), rows=patches + 1)
        return self.decoder_pred(self.decoder_norm(x))

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        t = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
            t = (t - mean) / (var + 1e-6) ** 0.5
        return t

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None,
                generator: torch.Generator | None = None, predict_all: bool = False) -> MAEOutput:
        """Mask, encode, decode; the loss is the mean squared error on the masked patches.

        Training needs predictions of the masked patches only, so by default only those are
        computed; `predict_all` predicts every patch (for pictures), with the same loss.
        """
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        grid = self.encoder.grid_for(imgs.shape[-2], imgs.shape[-1])
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, generator)
        n = mask.shape[1]
        patches = masked_patches(mask, n - num_visible(n, ratio))
        if predict_all:
            pred = self.forward_decoder(latent, ids_restore, grid)
            masked_pred = gather_rows(pred, patches)
        else:
            pred = masked_pred = self.forward_decoder(latent, ids_restore, grid, patches)
        # every sample has the same number of masked patches, so the plain mean over them is the
        # mean over all masked patches of each patch's squared error; in fp32 also when the
        # model runs in bf16
        loss = (masked_pred.float() - gather_rows(self.target(imgs), patches).float()).pow(2).mean()
        return MAEOutput(loss, pred, mask)

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, mask_ratio: float | None = None,
                    generator: torch.Generator | None = None):
        """What the model sees and fills in, for pictures.

        Returns (masked input, reconstruction, pasted), each (B, 3, H, W) in the input's
        normalisation: masked patches zeroed; the prediction of every patch; visible patches
        from the input with the predicted ones pasted into the masked places.
        """
        # through __call__, so that FSDP's hooks gather sharded weights first
        out = self(imgs, mask_ratio, generator, predict_all=True)
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

