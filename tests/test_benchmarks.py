"""The accounting the benchmark scripts rest on (benchmarks/step_roofline.py), and a small run of
benchmarks/shard_index.py."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_roofline  # noqa: E402


def test_the_tally_counts_each_kernel_s_flops_and_bytes_and_views_as_free():
    x, w, y = torch.randn(8, 64), torch.randn(32, 64), torch.randn(8, 32)
    dst = torch.empty(8, 32, dtype=torch.bfloat16)
    with step_roofline.Tally() as t:
        out = torch.nn.functional.linear(x, w)  # mm(x, w.t()): the transpose is a view
        out.view(4, 64)
        out.add_(y)  # reads out and y, writes out
        dst.copy_(out)  # reads out (fp32), writes dst (bf16)
    assert t.flops["matmul"] == 2 * 8 * 64 * 32 and t.calls["matmul"] == 1
    assert t.bytes["matmul"] == (8 * 64 + 32 * 64 + 8 * 32) * 4
    assert t.bytes["elementwise"] == 3 * 8 * 32 * 4 and t.calls["elementwise"] == 1
    assert t.bytes["copies, casts"] == 8 * 32 * (4 + 2)
    assert sum(t.calls.values()) == 3


def test_the_step_s_counted_flops_are_egoscale_s_flop_formula():
    # torch's own FLOP formulas over every matmul and attention kernel of a real training step
    r = step_roofline.roofline("vit_pico4", 32, 8, 989.0, 774.0, 4.8, compiled=False)
    counted = sum(x["gflop"] for x in r["rows"] if x["kind"] in ("matmul", "attention")) * 1e9
    assert counted == pytest.approx(r["model_tflop"] * 1e12, rel=0.03)
    assert 0 < r["ceiling_mfu"] < 774 / 989


def test_gpu_kernel_names_are_read_as_the_roofline_s_kinds():
    # names as cuBLAS, cuDNN, PyTorch and inductor give their kernels in an H200 profile
    names = {"nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTN": "matmul",
             "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "matmul",
             "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_3_64x128x128": "attention",
             "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda": "copies, casts",
             "void at::native::(anonymous namespace)::CatArrayBatchedCopy<float>": "copies, casts",
             "void at::native::_scatter_gather_elementwise_kernel<128, 4>": "elementwise",
             "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>": "reductions",
             "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>": "layer norm",
             "void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>": "optimizer",
             "triton_per_fused_add_native_layer_norm_0": "fused (compiled)",
             "aten::addmm": "matmul", "aten::native_layer_norm_backward": "layer norm"}
    assert {n: step_roofline.kernel_kind(n) for n in names} == names


@pytest.mark.slow
def test_the_shard_index_benchmark_runs_and_prints_its_table():
    import subprocess

    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "shard_index.py"),
                        "--frames", "600", "--units", "1", "8", "--rounds", "1", "--img-size", "64"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("one shard: 600 frames") and "less); decode + augment at 64 px" in lines[0]
    rows = [ln.split() for ln in lines[2:]]
    assert [row[0] for row in rows] == ["1", "8"] and all(row[-1].endswith("x") for row in rows)
