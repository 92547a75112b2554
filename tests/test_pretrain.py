"""MAE pretraining: loss falls, torchrun (gloo) matches one process, SIGKILL + resume, FSDP, NaN."""

import json
import os
import subprocess
import sys

import pytest
import torch

from egoscale.errors import ConfigError, DataError
from egoscale.models import load_mae
from egoscale.train.distributed import Dist
from egoscale.train.loop import LoopSettings, Trainer, TrainingDiverged
from egoscale.train.pretrain import PretrainConfig, pretrain
from tests.cli import egoscale
from tests.conftest import metrics

TINY = ["--model", "vit_pico4", "--batch-size", "16", "--workers", "0", "--no-progress", "--log-every", "5",
        "--shuffle-buffer", "100"]


@pytest.fixture(scope="module")
def frames(clip_frames):
    return clip_frames




def _cli(*args, torchrun=0, env=None):
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(torchrun), "-m", "egoscale"]
           if torchrun else [sys.executable, "-m", "egoscale"])
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=300)


def test_loss_falls_and_files_are_written(frames, tmp_path):
    run = tmp_path / "run"
    cfg = PretrainConfig(data=str(frames), out=str(run), model="vit_pico4", batch_size=16, steps=60, workers=0,
                         log_every=10, progress=False, lr=1e-3)
    summary = pretrain(cfg, log=lambda *a: None)
    m = metrics(run)
    assert [r["step"] for r in m] == [10, 20, 30, 40, 50, 60]
    assert m[-1]["loss"] < 0.7 * m[0]["loss"], (m[0]["loss"], m[-1]["loss"])
    assert summary["steps"] == 60 and summary["samples"] == 960 and summary["estimated_flops"] > 0
    assert {"images_per_s", "tokens_per_s", "lr", "seconds"} <= set(m[0])
    mae = load_mae(run / "checkpoint.pt")  # a checkpoint that rebuilds its own architecture
    assert mae.spec.name == "vit_pico4" and mae.mask_ratio == 0.8


def test_bf16_autocast_on_cpu_trains_close_to_fp32(frames, tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = PretrainConfig(data=str(frames), out=str(tmp_path / precision), model="vit_pico4", batch_size=16,
                             steps=30, workers=0, log_every=10, progress=False, lr=1e-3, precision=precision)
        pretrain(cfg, log=lambda *a: None)
        losses[precision] = [r["loss"] for r in metrics(tmp_path / precision)]
    assert losses["bf16"][-1] < 0.8 * losses["bf16"][0]
    # same seed and data: bf16 rounding moves the curve a little, not a lot, and not zero
    assert losses["bf16"] != losses["fp32"]
    for a, b in zip(losses["bf16"], losses["fp32"]):
        assert abs(a - b) < 0.1 * b
    with pytest.raises(ConfigError):
        PretrainConfig(data=str(frames), steps=1, precision="fp16")


@pytest.mark.slow
def test_two_processes_under_torchrun_match_one_process_with_the_same_global_batch(frames, tmp_path):
    # two processes of batch 8 and one process accumulating two micro-batches of 8 draw the same
    # frames and masks (each micro-batch is its own virtual rank): the same losses up to fp32 rounding
    common = ["pretrain", "--data", str(frames), *TINY, "--steps", "40", "--lr", "1e-3", "--batch-size", "8",
              "--log-every", "1"]
    r1 = egoscale(*common, "--accum-steps", "2", "--out", str(tmp_path / "one"))
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = _cli(*common, "--out", str(tmp_path / "two"), torchrun=2)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert "global batch 16 = 8 x 1 accum x 2 devices" in r2.stdout
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["samples"] for r in one] == [r["samples"] for r in two] and len(one) == 40
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a["step"], a["loss"], b["loss"])


def test_a_temporary_file_left_by_a_kill_during_a_save_is_removed(frames, tmp_path):
    from egoscale.train.pretrain import PretrainConfig, pretrain

    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".checkpoint.pt.x1y2.tmp", run / ".metrics.jsonl.a1b2.tmp"]
    for f in stale:
        f.write_bytes(b"half a file")
    pretrain(PretrainConfig(data=str(frames), out=str(run), model="vit_pico4", batch_size=8, steps=2, workers=0,
                            progress=False, shuffle_buffer=20), log=lambda *a: None)
    assert (run / "checkpoint.pt").is_file() and not any(f.exists() for f in stale)


@pytest.mark.parametrize("precision", ["auto", "bf16-params"])
@pytest.mark.slow
def test_fsdp_steps_on_cpu(frames, tmp_path, precision):
    # two processes, sharded; bf16-params adds FSDP2's mixed-precision policy (bf16 weights and
    # compute, fp32 master weights): the checkpoint holds the full fp32 weights either way
    r = _cli("pretrain", "--data", str(frames), *TINY, "--batch-size", "8", "--steps", "6", "--fsdp",
             "--precision", precision, "--out", str(tmp_path / "fsdp"), torchrun=2)
    assert r.returncode == 0, r.stderr[-2000:]
    mae = load_mae(tmp_path / "fsdp" / "checkpoint.pt")
    w = mae.encoder.blocks[0].attn.qkv.weight
    assert torch.isfinite(w).all() and w.dtype == torch.float32


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = {"n": 0}

    def loss_fn(module, batch):
        calls["n"] += 1
        out = module(batch).mean()
        return out * float("nan") if calls["n"] == 5 else out

    settings = LoopSettings(out=tmp_path, max_steps=20, log_every=1, save_every=2, progress=False)
    tr = Trainer(settings, Dist(), model, model, opt, lambda s: 0.1, loss_fn, to_file=lambda st: {"model": st},
                 from_file=lambda o: o["model"], config={})
    batches = iter(lambda: torch.randn(4, 2), None)
    with pytest.raises(TrainingDiverged, match="non-finite loss by step 5"):
        tr.fit(batches)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 4


def test_bad_input_is_one_clear_line(frames, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = egoscale("pretrain", "--data", str(empty), "--out", str(tmp_path / "x"), "--steps", "1")
    assert r.returncode == 2 and "no shards found" in r.stderr and r.stderr.count("\n") == 1
    with pytest.raises(ConfigError, match="not divisible by the patch size"):
        PretrainConfig(model="vit_s14", img_size=230, steps=1).spec()
    with pytest.raises(ConfigError, match="say how long"):
        PretrainConfig()
    sub = tmp_path / "empty_subset.json"
    sub.write_text(json.dumps({"frames": 0, "shards": []}))
    with pytest.raises(DataError, match="empty"):
        pretrain(PretrainConfig(data=str(frames), subset=str(sub), steps=1, out=str(tmp_path / "y")))


FAULTS = """
import resource, sys, torch
from egoscale.train.distributed import init_distributed
if sys.argv[1] == "egoscale":
    init_distributed("cpu")
def faults_per_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):  # an activation-sized block (64 MiB), written, freed: a training step's pattern
        torch.ones(16 << 20)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
faults_per_step()
print(faults_per_step())
"""


@pytest.mark.slow
def test_cpu_training_reuses_freed_memory_instead_of_faulting_it_in_again():
    # glibc unmaps large freed blocks, so each step's activations cost fresh page faults;
    # init_distributed on the CPU keeps them (a 4 % faster ViT-S/14 MAE step on 2 cores)
    runs = {who: float(subprocess.run([sys.executable, "-c", FAULTS, who], capture_output=True, text=True,
                                      check=True).stdout) for who in ("plain", "egoscale")}
    # plain: 16 k faults per block (64 MiB of 4 KiB pages; fewer with transparent huge pages)
    assert runs["plain"] >= 16 and runs["egoscale"] < runs["plain"] / 10, runs


def test_visualize_writes_a_grid(frames, tmp_path):
    pretrain(PretrainConfig(data=str(frames), out=str(tmp_path / "run"), model="vit_pico4", batch_size=8, steps=2,
                            workers=0, progress=False), log=lambda *a: None)
    r = egoscale("visualize", tmp_path / "run", "--images", frames, "--out", tmp_path / "v.png", "-n", "3")
    assert r.returncode == 0, r.stderr
    from PIL import Image
    img = Image.open(tmp_path / "v.png")
    assert img.size == (3 * 32 * 8, 3 * 32 * 8)  # 3 columns x 3 rows of 32 px, scaled x8


def test_compiled_blocks_match_eager_and_compile_once():
    # --compile compiles each transformer block in place: identical blocks share a graph (3 in all:
    # encoder block, decoder block, the last decoder block that computes the masked rows only),
    # no step after the first compiles anything, the loss is eager's, and parameter names stay
    from torch._dynamo.utils import counters

    from egoscale.models import build_mae, get_spec
    from egoscale.train.distributed import compile_blocks

    torch._dynamo.reset()
    counters.clear()
    ref = build_mae(get_spec("vit_nano4"), mask_ratio=0.75)
    mae = build_mae(get_spec("vit_nano4"), mask_ratio=0.75)
    mae.load_state_dict(ref.state_dict())
    assert compile_blocks(mae, backend="aot_eager") == 4 + 2
    x = torch.randn(4, 3, 32, 32)
    want = ref(x, generator=torch.Generator().manual_seed(1)).loss
    got = mae(x, generator=torch.Generator().manual_seed(1)).loss
    torch.testing.assert_close(got, want)
    got.backward()
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 3
    for _ in range(3):
        mae(torch.randn(4, 3, 32, 32)).loss.backward()
    assert counters["stats"]["unique_graphs"] == graphs and not counters["recompiles"]
    assert list(mae.state_dict()) == list(ref.state_dict())


def test_a_compiled_bf16_copy_compiles_once_and_trains_as_the_eager_one():
    # bf16-params with --compile compiles the bf16 copy's blocks: 3 graphs at the first step, none
    # after, although the optimizer changes the masters and they are cast into the copy every step
    import copy

    from torch._dynamo.utils import counters

    from egoscale.models import build_mae, get_spec
    from egoscale.train.distributed import compile_blocks
    from egoscale.train.loop import adamw
    from egoscale.train.mixed_precision import Bf16Model

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    masters = [build_mae(get_spec("vit_nano4"), mask_ratio=0.75)]
    masters.append(copy.deepcopy(masters[0]))
    start = masters[0].decoder_pred.weight.detach().clone()
    runs = [Bf16Model(m) for m in masters]
    compile_blocks(runs[1].model, backend="aot_eager")
    opts = [adamw(m.parameters(), 1e-3, torch.device("cpu")) for m in masters]
    for step in range(3):
        x = torch.randn(4, 3, 32, 32)
        losses = []
        for run, opt in zip(runs, opts):
            loss = run(x, generator=torch.Generator().manual_seed(step)).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=2e-2, atol=0)
        if step == 0:
            graphs = counters["stats"]["unique_graphs"]
    assert graphs == 3 and counters["stats"]["unique_graphs"] == graphs and not counters["recompiles"]
    moved = [(m.decoder_pred.weight.detach() - start).flatten() for m in masters]  # trained alike
    assert moved[0].abs().max() > 1e-3 and torch.nn.functional.cosine_similarity(*moved, dim=0) > 0.9


def test_bf16_params_matches_autocast_within_bf16_rounding():
    # --precision bf16-params in one process: a bf16 copy of the model runs, from fp32 master weights
    # cast once per step; same loss and gradients as bf16 autocast within bf16 rounding, gradients
    # and master weights fp32, names and values load back unchanged
    import copy

    from egoscale.models import build_mae, get_spec
    from egoscale.train.distributed import parallelize
    from egoscale.train.loop import adamw

    torch.manual_seed(0)
    ref = build_mae(get_spec("vit_pico4"), mask_ratio=0.75)
    mae = copy.deepcopy(ref)
    module = parallelize(mae, Dist(), bf16_params=True)
    seen = []
    hook = module.model.encoder.blocks[0].attn.qkv.register_forward_hook(
        lambda m, i, o: seen.append((m.weight.dtype, o.dtype)))
    x = torch.randn(8, 3, 32, 32)
    got = module(x, generator=torch.Generator().manual_seed(1)).loss
    hook.remove()
    got.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = ref(x, generator=torch.Generator().manual_seed(1)).loss
    want.backward()
    assert seen == [(torch.bfloat16, torch.bfloat16)] and got.dtype == torch.float32
    got, want = float(got.detach()), float(want.detach())
    assert abs(got - want) < 0.01 * want and got != want
    for (name, p), q in zip(mae.named_parameters(), ref.parameters()):
        if not p.requires_grad:  # the fixed sin-cos tables
            continue
        assert p.dtype == p.grad.dtype == torch.float32, name
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cos > 0.99, (name, float(cos))
    assert all(p.grad is None for p in module.model.parameters())  # moved to the masters, not kept twice
    opt = adamw([p for p in mae.parameters() if p.requires_grad], 1e-3, torch.device("cpu"))
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert not torch.equal(mae.mask_token, ref.mask_token)
    assert list(mae.state_dict()) == list(ref.state_dict())
    # the next forward runs the stepped weights
    module(x)
    assert torch.equal(module.model.mask_token, mae.mask_token.to(torch.bfloat16))


def test_bf16_params_accumulates_micro_steps_in_fp32_and_follows_loaded_weights():
    from egoscale.models import build_mae, get_spec
    from egoscale.train.mixed_precision import Bf16Model

    torch.manual_seed(0)
    mae = build_mae(get_spec("vit_pico4"), mask_ratio=0.75)
    module = Bf16Model(mae)
    xs = torch.randn(2, 4, 3, 32, 32)
    grads = []
    for x in xs:  # each micro-step's gradient alone, as fp32
        module(x, generator=torch.Generator().manual_seed(2)).loss.backward()
        grads.append(mae.decoder_pred.weight.grad.clone())
        mae.zero_grad(set_to_none=True)
    for x in xs:  # both, accumulated
        module(x, generator=torch.Generator().manual_seed(2)).loss.backward()
    assert torch.equal(mae.decoder_pred.weight.grad, grads[0] + grads[1])
    # weights loaded into the masters (a resumed run) reach the bf16 copy before its next forward
    other = build_mae(get_spec("vit_pico4"), mask_ratio=0.75)
    mae.load_state_dict(other.state_dict())
    module(xs[0])
    assert torch.equal(module.model.decoder_pred.weight, other.decoder_pred.weight.to(torch.bfloat16))
    # a compiled master would be copied with compiled code that still runs the master itself
    from egoscale.train.distributed import compile_blocks
    compile_blocks(other)
    with pytest.raises(ValueError, match="compile the copy"):
        Bf16Model(other)


@pytest.mark.slow
def test_bf16_params_pretraining_runs_resumes_and_draws_pictures(frames, tmp_path):
    run = tmp_path / "p"
    args = ["pretrain", "--data", str(frames), *TINY, "--steps", "10", "--precision", "bf16-params",
            "--save-every", "5", "--image-every", "5", "--out", str(run)]
    r = egoscale(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bf16-params" in r.stdout
    r = egoscale(*args[:args.index("--steps") + 1], "20", *args[args.index("--steps") + 2:])
    assert r.returncode == 0 and "resumed from step 10" in r.stdout, r.stderr[-2000:]
    assert [m["step"] for m in metrics(run)] == [5, 10, 15, 20]
    assert json.loads((run / "summary.json").read_text())["steps"] == 20
    mae = load_mae(run / "checkpoint.pt")  # a plain (unsharded, fp32) checkpoint
    assert mae.encoder.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))


def test_compile_and_loader_workers_default_to_what_pays(monkeypatch):
    from egoscale.train.pretrain import COMPILE_PAYS_STEPS, resolve_compile, resolve_workers

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    long = COMPILE_PAYS_STEPS
    # on by default only where it was measured to pay: one CUDA process, autocast, no FSDP, a long run
    assert resolve_compile(None, cuda, "bf16", 1, False, long)
    assert not resolve_compile(None, cuda, "bf16", 1, False, long - 1)
    assert not resolve_compile(None, cpu, "fp32", 1, False, long)
    assert not resolve_compile(None, cuda, "bf16-params", 1, False, long)
    assert not resolve_compile(None, cuda, "bf16", 8, False, long)
    assert not resolve_compile(None, cuda, "bf16", 1, True, long)
    assert not resolve_compile(None, cuda, "bf16", 1, False, long, grad_checkpointing=True)
    # what the user says wins; a compile mode other than default asks for compilation
    assert resolve_compile(True, cpu, "fp32", 1, False, 10) and not resolve_compile(False, cuda, "bf16", 1, False, long)
    assert resolve_compile(None, cpu, "fp32", 1, False, 10, mode="max-autotune-no-cudagraphs")
    assert resolve_workers(3, cuda) == 3 and resolve_workers(None, cpu) == 4
    assert 1 <= resolve_workers(None, cuda) <= 8
    # processes sharing a node (torchrun, a GPU sweep's cells) share its cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(os.cpu_count()))
    assert resolve_workers(None, cuda) == 1
    r = egoscale("pretrain", "--help")
    assert "--no-compile" in r.stdout and "(default: None)" not in r.stdout


def test_cuda_graphs_are_refused_in_one_line_where_they_cannot_run(frames, tmp_path):
    base = dict(data=str(frames), steps=1, compile_mode="reduce-overhead")
    for extra, what in ((dict(fsdp=True), "--fsdp"), (dict(grad_checkpointing=True), "--grad-checkpointing"),
                        (dict(precision="bf16-params"), "bf16-params"), (dict(compile=False), "drop --no-compile")):
        with pytest.raises(ConfigError, match=what):
            PretrainConfig(**base, **extra)
    with pytest.raises(ConfigError, match="one of default"):
        PretrainConfig(data=str(frames), steps=1, compile_mode="fast")
    # the graphs are recorded on a GPU: refused on the CPU before anything is built or written
    r = egoscale("pretrain", "--data", str(frames), "--out", str(tmp_path / "run"), *TINY, "--steps", "2",
                 "--device", "cpu", "--compile-mode", "reduce-overhead")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs one CUDA process (here: cpu x1)" in r.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_gradients_kept_in_buffers_for_cuda_graphs_train_as_set_to_none_does(tmp_path):
    # CUDA graphs overwrite their outputs at the next replay, so under --compile-mode reduce-overhead
    # the Trainer accumulates gradients into buffers that live for the run and zeroes them after each
    # optimizer step. Same weights as the usual set-to-None path, over steps of two micro-steps.
    from egoscale.models import build_mae, get_spec
    from egoscale.train.loop import adamw

    data = torch.rand(16, 3, 32, 32)
    weights, buffers = {}, {}
    for graphs in (False, True):
        torch.manual_seed(0)
        mae = build_mae(get_spec("vit_pico4"), mask_ratio=0.75)
        opt = adamw(mae.parameters(), 1e-3, torch.device("cpu"), betas=(0.9, 0.95))
        (tmp_path / str(graphs)).mkdir()
        settings = LoopSettings(out=tmp_path / str(graphs), max_steps=3, accum_steps=2, log_every=1,
                                progress=False, cuda_graphs=graphs)
        seen = []

        def loss_fn(module, batch, _m=mae, _seen=seen):
            _seen.append({n: p.grad for n, p in _m.named_parameters() if p.grad is not None})
            return module(batch).loss

        tr = Trainer(settings, Dist(), mae, mae, opt, lambda s: 1e-3, loss_fn, to_file=lambda st: {"model": st},
                     from_file=lambda o: o["model"], config={})
        tr.fit(iter(data.split(4) * 3))
        weights[graphs] = {n: p.detach().clone() for n, p in mae.named_parameters()}
        buffers[graphs] = seen
    assert all(torch.equal(weights[False][n], weights[True][n]) for n in weights[False])
    # set to None: no gradient before each step's first micro-step; kept: the same zeroed tensors throughout
    assert [len(g) for g in buffers[False]][::2] == [0, 0, 0]
    first = buffers[True][0]
    assert first and all(not g.any() for g in first.values())
    for later in buffers[True][1:]:
        assert all(later[n] is first[n] for n in first)


@pytest.mark.slow
def test_a_run_resumes_sharded_from_an_unsharded_checkpoint_and_back(frames, tmp_path):
    # the optimizer state is saved keyed by parameter name whatever wraps the model, so a run can
    # switch between plain, --fsdp and bf16-params on resume and keep its Adam moments; a checkpoint
    # keyed by position (torch's own optimizer layout) still loads
    from egoscale.models.checkpoint import read_checkpoint, save_checkpoint

    run = tmp_path / "run"
    base = ["pretrain", "--data", str(frames), *TINY, "--save-every", "2", "--out", str(run)]
    assert egoscale(*base, "--steps", "4").returncode == 0
    ck = read_checkpoint(run / "checkpoint.pt")
    names = list(ck["optimizer"]["state"])
    assert all(isinstance(n, str) for n in names) and "mask_token" in names
    # the same state keyed by position
    order = ck["optimizer"]["param_groups"][0]["params"]
    ck["optimizer"] = {"state": {order.index(n): v for n, v in ck["optimizer"]["state"].items()},
                       "param_groups": [{**g, "params": [order.index(n) for n in g["params"]]}
                                        for g in ck["optimizer"]["param_groups"]]}
    save_checkpoint(run / "checkpoint.pt", ck)
    for steps, extra in (("8", ["--precision", "bf16-params"]), ("12", [])):
        r = egoscale(*base, "--steps", steps, *extra)
        assert r.returncode == 0 and f"resumed from step {int(steps) - 4}" in r.stdout, r.stderr[-2000:]
    # Adam's step counters went on from the first run's: the moments were restored, not restarted
    state = read_checkpoint(run / "checkpoint.pt")["optimizer"]["state"]
    assert {float(s["step"]) for s in state.values()} == {12.0}


def test_a_torch_older_than_the_code_needs_is_named_in_one_line():
    from egoscale.errors import EgoscaleError
    from egoscale.train.distributed import check_torch

    check_torch("2.6.0")
    check_torch("2.14.1+cu130")  # numbers, not strings: 14 > 6
    with pytest.raises(EgoscaleError, match=r"needs torch >= 2.6 \(this is 2.4.1\+cu121\)"):
        check_torch("2.4.1+cu121")


@pytest.mark.parametrize("side", [256, 48])  # the reduced-DCT route (crop >= 2x the output) and the full decode
def test_training_crops_are_resized_with_the_interpolation_asked_for(side):
    # each route follows torchvision's RandomResizedCrop on the PIL image with the same box and
    # mode (the paper's pipeline, bicubic by default) closer than it follows the other mode
    import io
    import random

    import numpy as np
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import pil_to_tensor, resized_crop

    from egoscale.data.loader import augment, random_resized_crop_box

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    img = np.stack([(np.sin(xx / 3.0) + np.cos(yy / 5.0)) * 60 + 128 + rng.normal(0, 20, (side, side))] * 3, -1)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
    pil = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    for seed in range(4):
        x, y, w, h = random_resized_crop_box(side, side, random.Random(seed), (0.2, 1.0))
        ref = {m: pil_to_tensor(resized_crop(pil, y, x, h, w, [24, 24], InterpolationMode(m))).float()
               for m in ("bicubic", "bilinear")}
        for mode, other in (("bicubic", "bilinear"), ("bilinear", "bicubic")):
            got = augment(buf.getvalue(), 24, random.Random(seed), (0.2, 1.0), flip=False, interpolation=mode).float()
            assert (got - ref[mode]).abs().mean() < (got - ref[other]).abs().mean(), (side, seed, mode)


def test_the_loader_reads_a_frames_size_from_its_jpeg_header_as_pil_does():
    import io
    import random

    import numpy as np
    from PIL import Image

    from egoscale.data.loader import augment, jpeg_size

    rng = np.random.default_rng(0)
    for (w, h), mode, kw in [((64, 48), "RGB", {}), ((33, 70), "RGB", {"progressive": True}),
                             ((40, 40), "L", {}), ((300, 200), "RGB", {"quality": 50, "subsampling": 2})]:
        buf = io.BytesIO()
        pixels = rng.integers(0, 255, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
        Image.fromarray(pixels, mode).save(buf, format="JPEG", **kw)
        data = buf.getvalue()
        assert jpeg_size(data) == Image.open(io.BytesIO(data)).size == (w, h)
        assert augment(data, 24, random.Random(1)).shape == (3, 24, 24)
        assert jpeg_size(data[:20]) is None  # a header cut before its frame segment
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(png, format="PNG")
    assert jpeg_size(png.getvalue()) is None
    assert augment(png.getvalue(), 24, random.Random(1)).shape == (3, 24, 24)  # PIL reads what is not a JPEG


def test_crops_larger_than_the_frames_are_said_before_training(frames, tmp_path):
    # the clip's frames are 64 px on their short side (ingested at the default --short-side 256,
    # which never upscales): 96-px crops are upsampled, and the run says so; 32-px ones are not
    from egoscale.data.subset import frame_short_side

    assert frame_short_side(frames) == 64
    said = []
    for size in (96, 32):
        pretrain(PretrainConfig(data=str(frames), out=str(tmp_path / f"r{size}"), model="vit_pico4", img_size=size,
                                batch_size=2, steps=1, workers=0, progress=False), log=said.append)
    notes = [s for s in said if "upsampled" in s]
    assert len(notes) == 1 and "64 px on their short side, so every 96-px crop" in notes[0]
