"""Position embeddings: fixed 2-D sin-cos tables and the one resampler used everywhere.

`resample_pos_embed` is used when a checkpoint is loaded at another image size and when a
model sees an input of another size at run time, so both paths give identical results.
"""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed


def sincos_2d(width: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, shape (1, [1 +] gh*gw, width).

    Half the channels encode the row, half the column, each as sin/cos at geometrically spaced
    frequencies (MAE's layout: the first half is driven by the column index). The class token's
    row is zeros.
    """
    if width % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {width}")
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64),
                            torch.arange(gw, dtype=torch.float64), indexing="ij")
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (W/4,)

    def _embed(pos: torch.Tensor) -> torch.Tensor:  # (gh*gw,) -> (gh*gw, W/2)
        out = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([out.sin(), out.cos()], dim=1)

    emb = torch.cat([_embed(xs), _embed(ys)], dim=1)  # (gh*gw, W)
    if cls_token:
        emb = torch.cat([torch.zeros(1, width, dtype=emb.dtype), emb], dim=0)
    return emb.float().unsqueeze(0)


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int],
                       old_grid: tuple[int, int] | None = None, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resample a learned (1, prefix + gh*gw, C) table to another grid: bicubic without
    antialiasing, as the paper's (and MAE's, DeiT's) `interpolate_pos_embed` does, so a released
    checkpoint read at another size gives the paper's table to float precision.

    Prefix tokens (the class token) are kept as they are. Pure and dtype-preserving.
    """
    if old_grid is not None and tuple(old_grid) == tuple(new_grid):
        return pos_embed
    return resample_abs_pos_embed(pos_embed, list(new_grid), list(old_grid) if old_grid else None,
                                  num_prefix_tokens=num_prefix_tokens, interpolation="bicubic", antialias=False)
