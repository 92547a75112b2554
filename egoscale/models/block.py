"""The transformer block of both the ViT encoder and the MAE decoder.

A pre-norm block (LayerNorm, multi-head self-attention, LayerNorm, GELU MLP, residuals, optional
stochastic depth) with timm's parameter names (norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2), so timm and MAE reference checkpoints load unchanged and timm's `Block` computes the
same function (a test checks it). It is egoscale's own code for two reasons:

- `forward(x, rows)` computes chosen tokens only: queries, the output projection and the MLP run
  on the rows (B, M) alone while every token stays a key and a value. The MAE loss reads only the
  masked patches, so the decoder's last block skips the visible ones.
- q, k and v are split from the packed projection along its own (B, N, 3, H, hd) layout and
  transposed one by one. Backward then gathers their gradients straight into that layout, one
  copy; splitting a (3, B, H, N, hd) permutation, as timm does, costs a second, activation-sized
  copy per block to make the gradient contiguous again (a test counts them).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (B, T, C) at per-sample token indices rows (B, M) -> (B, M, C)."""
    return torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Attention(nn.Module):
    """Multi-head self-attention whose queries can be a subset of the tokens.

    `fused_attn` picks PyTorch's SDPA kernel or plain batched matmuls (`choose_attention` sets it
    for where the model runs).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fused_attn = True

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, C) normed tokens -> (B, M, C): the outputs at `rows` (B, M), or at every token."""
        b, n, c = x.shape
        h, hd = self.heads, self.head_dim
        if rows is None:
            q, k, v = self.qkv(x).view(b, n, 3, h, hd).unbind(2)  # each (B, N, H, hd)
        else:  # queries of the chosen rows only; every token stays a key and a value
            w, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(gather_rows(x, rows), w[:c], bias[:c]).view(b, -1, h, hd)
            k, v = F.linear(x, w[c:], bias[c:]).view(b, n, 2, h, hd).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, N, hd) views
        if self.fused_attn:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(o.transpose(1, 2).reshape(b, -1, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; `forward(x, rows)` equals `forward(x)` gathered at `rows` (B, M).

    Args:
        dim, heads, mlp_ratio: width, attention heads, MLP hidden width over `dim`.
        drop_path: stochastic-depth rate of both residual branches (finetuning).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        y = (x if rows is None else gather_rows(x, rows)) + self.drop_path(self.attn(self.norm1(x), rows))
        return y + self.drop_path(self.mlp(self.norm2(y)))
