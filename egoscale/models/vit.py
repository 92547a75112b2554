"""Vision Transformer encoder: timm's patch embedding, egoscale's transformer block (models/block.py).

Parameter names follow timm's `VisionTransformer` (cls_token, pos_embed, patch_embed.proj,
blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}, norm, head), so released MAE
checkpoints load without renaming. The classifier head of the paper's finetuning is
BatchNorm1d(affine=False) + Linear on the final-normed class token (`head.0`, `head.1`).

It answers timm's standard calls (`forward_features`, `forward_head(pre_logits=...)`,
`reset_classifier`, `no_weight_decay`, `group_matcher`, `set_grad_checkpointing`), so that
timm's tools (its optimizer factory's layer-wise decay, for one) work on it; egoscale's own
evaluations call `forward_features`, `forward_head`, `no_weight_decay` and the grad-checkpointing
switch.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
from timm.layers import PatchEmbed, trunc_normal_
from torch.utils.checkpoint import checkpoint

from egoscale.errors import ConfigError
from egoscale.models.block import Block
from egoscale.models.pos_embed import resample_pos_embed, sincos_2d
from egoscale.models.registry import ViTSpec, get_spec


def make_head(width: int, num_classes: int) -> nn.Module:
    """The paper's classifier head, as its finetuning and linear-probe scripts build it: BatchNorm1d
    without affine parameters (eps 1e-6), then a Linear started small (truncated normal, std 0.01,
    zero bias), so the first logits are near zero and the head does not swamp the encoder."""
    if num_classes <= 0:
        return nn.Identity()
    head = nn.Sequential(nn.BatchNorm1d(width, affine=False, eps=1e-6), nn.Linear(width, num_classes))
    _init_head(head)
    return head


def _init_head(head: nn.Module) -> None:
    if isinstance(head, nn.Sequential):
        with torch.no_grad():
            trunc_normal_(head[1].weight, std=0.01)
            nn.init.zeros_(head[1].bias)


class VisionTransformer(nn.Module):
    """ViT encoder with a class token and an optional BN+Linear head.

    Args:
        spec: the family member (width, depth, heads, MLP, patch, image size).
        num_classes: 0 for a bare encoder (features only), else the head's classes.
        sincos_pos_embed: fill the position table with fixed 2-D sin-cos values and freeze it
            (MAE pretraining); otherwise it is learned (finetuning).
        drop_path: stochastic-depth rate of the last block (linear over depth).
        global_pool: what the head sees: "token" (the class token, as in the paper) or "avg"
            (the mean of the normed patch tokens; reads early MAE features much better).
    """

    def __init__(self, spec: ViTSpec, num_classes: int = 0, sincos_pos_embed: bool = False,
                 drop_path: float = 0.0, global_pool: str = "token"):
        super().__init__()
        if spec.img_size % spec.patch_size:
            raise ConfigError(f"{spec.name}: image size {spec.img_size} is not divisible by "
                              f"patch size {spec.patch_size}")
        self.spec = spec
        self.num_classes = num_classes
        self.embed_dim = self.num_features = spec.width
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False
        if global_pool not in ("token", "avg"):
            raise ConfigError(f"global pool {global_pool!r}: token or avg")
        self.global_pool = global_pool

        # strict_img_size=False: other sizes are allowed, the position table is resampled.
        self.patch_embed = PatchEmbed(spec.img_size, spec.patch_size, 3, spec.width, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, spec.width),
                                      requires_grad=not sincos_pos_embed)
        rates = [drop_path * i / max(spec.depth - 1, 1) for i in range(spec.depth)]
        self.blocks = nn.Sequential(*[
            Block(spec.width, spec.heads, mlp_ratio=spec.mlp_ratio, drop_path=r) for r in rates])
        self.norm = nn.LayerNorm(spec.width, eps=1e-6)
        self.head = make_head(spec.width, num_classes)
        self._init_weights(sincos_pos_embed)

    def _init_weights(self, sincos: bool) -> None:
        # MAE's initialisation: xavier for linears and the patch projection, small normal
        # for the class token, fixed sin-cos or truncated normal for positions.
        with torch.no_grad():
            if sincos:
                self.pos_embed.copy_(sincos_2d(self.embed_dim, self.patch_embed.grid_size))
            else:
                trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=0.02)
            w = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        _init_head(self.head)  # the loop above made its Linear xavier: back to the paper's start

    # --- timm's standard calls -------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay: stem, each block, then the final norm."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = make_head(self.embed_dim, num_classes)

    # --- forward ---------------------------------------------------------------------------
    def grid_for(self, h: int, w: int) -> tuple[int, int]:
        p = self.spec.patch_size
        if h % p or w % p:
            raise ConfigError(f"{self.spec.name}: input {h}x{w} is not divisible by patch size {p}")
        return h // p, w // p

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position table for a patch grid; resampled when it differs from the built one."""
        return resample_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens with positions added, and the class token with its position.

        Returns (tokens (B, L, C), cls (B, 1, C)).
        """
        pos = self.pos_embed_for(self.grid_for(x.shape[-2], x.shape[-1]))  # (1, 1+L, C)
        tokens = self.patch_embed(x) + pos[:, 1:]  # (B, L, C)
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, C)
        return tokens, cls

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Transformer blocks then the final norm, (B, T, C) -> (B, T, C)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> normed tokens (B, 1 + L, C), class token first."""
        tokens, cls = self.embed(x)
        return self.run_blocks(torch.cat([cls, tokens], dim=1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, 1 + L, C) -> logits (B, classes), or the pooled features (B, C) if pre_logits."""
        x = x[:, 1:].mean(1) if self.global_pool == "avg" else x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_vit(name: str | ViTSpec, *, img_size: int | None = None, patch_size: int | None = None,
              num_classes: int = 0, **kwargs) -> VisionTransformer:
    """Build a family member by name at any image and patch size."""
    if isinstance(name, ViTSpec):
        spec = replace(name, img_size=img_size or name.img_size, patch_size=patch_size or name.patch_size)
    else:
        spec = get_spec(name, patch_size=patch_size, img_size=img_size)
    return VisionTransformer(spec, num_classes=num_classes, **kwargs)


def choose_attention(model: nn.Module, device: torch.device, bf16: bool) -> str:
    """Pick each attention layer's kernel for where and how the model runs; returns the choice.

    PyTorch's fused SDPA everywhere except under bf16 autocast on a CPU, where its flash kernel
    is slower than the plain path (q @ k^T, softmax, @ v as batched matmuls, which oneDNN runs
    on the bf16 matrix units); in fp32 on the CPU it is the other way round (benchmarks/README.md).
    """
    fused = not (device.type == "cpu" and bf16)
    for m in model.modules():
        if hasattr(m, "fused_attn"):  # read on every call
            m.fused_attn = fused
    return "sdpa" if fused else "matmul"


def count_params(model: nn.Module) -> int:
    """All parameters, trainable or not (the paper's count includes the position table)."""
    return sum(p.numel() for p in model.parameters())
