"""The MAE training step as `egoscale pretrain` runs it, for the benchmarks to time, profile and count.

`build` makes the model, wraps it as `distributed.parallelize` does (per-block compilation, the
bf16 copy for bf16-params), and makes the fused AdamW; the returned `TrainingStep` runs one
optimizer step on a batch: autocast for bf16, CUDA-graph generations and kept gradient buffers
under reduce-overhead, as the Trainer does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block as TimmBlock

from egoscale.models import build_mae
from egoscale.models.vit import choose_attention
from egoscale.train.config import CUDA_GRAPH_MODES
from egoscale.train.distributed import Dist, fully_sharded, keep_grad_buffers, parallelize
from egoscale.train.loop import adamw


def with_timm_blocks(mae: torch.nn.Module) -> torch.nn.Module:
    """Swap the MAE's blocks (but the decoder's rows-only last one) for timm's, same weights."""
    enc, dec = mae.encoder.blocks, mae.decoder_blocks
    for seq, n in ((enc, len(enc)), (dec, len(dec) - 1)):
        for i in range(n):
            ours = seq[i]
            dim = ours.norm1.normalized_shape[0]
            theirs = TimmBlock(dim, ours.attn.heads, mlp_ratio=ours.mlp.fc1.out_features / dim, qkv_bias=True,
                               norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))
            theirs.load_state_dict(ours.state_dict())
            seq[i] = theirs.to(ours.norm1.weight.device)
    return mae


@dataclass
class TrainingStep:
    model: torch.nn.Module  # the fp32 masters the optimizer steps
    module: torch.nn.Module  # what is called: the model, compiled, a bf16 copy or FSDP-wrapped
    opt: torch.optim.Optimizer
    autocast: bool
    cuda_graphs: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.module(x).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=not self.cuda_graphs)
        return loss.detach()


def build(spec, dev: torch.device, precision: str = "bf16", compile_mode: str | None = None,
          blocks: str = "egoscale", attention: str | None = None) -> TrainingStep:
    """precision: bf16 (autocast), bf16-params or fp32; compile_mode: None (eager) or torch.compile's
    mode; blocks: egoscale or timm; attention: sdpa or matmul (None: `choose_attention`'s pick)."""
    torch.manual_seed(0)
    mae = build_mae(spec, mask_ratio=0.8).to(dev)
    if blocks == "timm":
        with_timm_blocks(mae)
    choose_attention(mae, dev, precision != "fp32")
    if attention is not None:
        for m in mae.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = attention == "sdpa"
    params = precision == "bf16-params"
    d = Dist(device=dev)
    module = parallelize(mae, d, bf16_params=params, compile=compile_mode is not None,
                         compile_mode=compile_mode or "default")
    opt = adamw([p for p in mae.parameters() if p.requires_grad], 1e-4, dev, sharded=fully_sharded(d, False, params),
                betas=(0.9, 0.95))
    graphs = compile_mode in CUDA_GRAPH_MODES
    if graphs:
        keep_grad_buffers(mae.parameters())
    return TrainingStep(mae, module, opt, autocast=precision == "bf16", cuda_graphs=graphs)
