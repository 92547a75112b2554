"""CUDA-only behaviour of the pretraining step: dtypes, the attention kernel, no host syncs.

Skipped without a CUDA device; `benchmarks/gpu_check.py` runs them on a GPU machine.
"""

import pytest
import torch

from egoscale.data.loader import normalize_batch
from egoscale.models import build_mae, get_spec
from egoscale.models.vit import choose_attention
from egoscale.train.distributed import Dist, cleanup, fully_sharded, parallelize
from egoscale.train.loop import adamw

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEV = torch.device("cuda", 0)


def _mae(bf16_params: bool, fsdp: bool = False):
    torch.manual_seed(0)
    mae = build_mae(get_spec("vit_s14", img_size=112), mask_ratio=0.8).to(DEV)
    assert choose_attention(mae, DEV, bf16=True) == "sdpa"
    d = Dist(device=DEV)
    module = parallelize(mae, d, bf16_params=bf16_params, fsdp=fsdp)
    opt = adamw([p for p in mae.parameters() if p.requires_grad], 1e-4, DEV,
                sharded=fully_sharded(d, fsdp, bf16_params))
    return mae, module, opt


def _step(module, opt, x, autocast: bool):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = module(x).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


@pytest.fixture(params=["bf16", "bf16-params"])
def mode(request):
    yield request.param
    cleanup()


def test_the_blocks_run_in_bf16_and_the_loss_and_master_weights_stay_fp32(mode):
    mae, module, opt = _mae(mode == "bf16-params")
    seen = []
    running = module.model if mode == "bf16-params" else mae  # one process: a bf16 copy of the model runs
    qkv = running.encoder.blocks[0].attn.qkv
    qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    loss = _step(module, opt, torch.randn(8, 3, 112, 112, device=DEV), autocast=mode == "bf16")
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in mae.parameters())


def test_attention_runs_on_a_fused_kernel(mode):
    # the math fallback is switched off: a layout or dtype that no fused kernel takes would raise
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mae, module, opt = _mae(mode == "bf16-params")
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        loss = _step(module, opt, torch.randn(8, 3, 112, 112, device=DEV), autocast=mode == "bf16")
    assert torch.isfinite(loss)


def test_a_training_step_waits_for_the_gpu_nowhere(mode):
    # the host queues step after step; a sync (.item(), a data-dependent shape, a pageable copy)
    # would stall it every step. The first step is allowed to set up (optimizer state, caches).
    mae, module, opt = _mae(mode == "bf16-params")
    batch = torch.randint(0, 256, (8, 3, 112, 112), dtype=torch.uint8).pin_memory()
    _step(module, opt, normalize_batch(batch, DEV), autocast=mode == "bf16")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            _step(module, opt, normalize_batch(batch, DEV), autocast=mode == "bf16")
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_fsdp_resharding_after_forward_trains_under_autocast(mode):
    # --fsdp frees each block's gathered weights after its forward and gathers them again for the
    # backward pass; the root module keeps its own (resharding it too failed in backward on a GPU)
    mae, module, opt = _mae(mode == "bf16-params", fsdp=True)
    before = mae.decoder_pred.weight.full_tensor().clone()
    x = torch.randn(8, 3, 112, 112, device=DEV)
    losses = torch.stack([_step(module, opt, x, autocast=mode == "bf16").detach() for _ in range(3)])
    assert torch.isfinite(losses).all()
    assert not torch.equal(mae.decoder_pred.weight.full_tensor(), before)  # the optimizer stepped
