"""The training loop's pieces on their own: the metrics window and the checkpointer."""

import random

import numpy as np
import torch

from egoscale.train.training_state import Checkpointer
from egoscale.train.distributed import Dist
from egoscale.train.metrics import MetricsWindow, read_metrics, truncate_metrics


def test_a_window_saved_mid_way_averages_the_same_steps_as_one_never_saved():
    losses = torch.rand(7, generator=torch.Generator().manual_seed(0))
    whole = MetricsWindow(Dist())
    for x in losses:
        whole.add(x, 2)
        whole.add(x * 0.5, 2)
        whole.step_done(16)
    first = MetricsWindow(Dist())
    for x in losses[:3]:
        first.add(x, 2)
        first.add(x * 0.5, 2)
        first.step_done(16)
    second = MetricsWindow(Dist())
    second.load_state_dict(first.state_dict())
    for x in losses[3:]:
        second.add(x, 2)
        second.add(x * 0.5, 2)
        second.step_done(16)
    a, b = whole.record(7), second.record(7)
    assert a["loss"] == b["loss"]  # bit for bit
    assert abs(a["loss"] - float(losses.mean()) * 0.75) < 1e-6
    assert not second.diverged()
    second.add(torch.tensor(float("nan")))
    assert second.diverged()
    assert second.record(8)["step"] == 8 and second.steps == 0 and second.diverged()  # the flag stays


def test_metrics_past_the_resumed_step_and_a_line_cut_by_a_kill_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "loss": 1.2}\n{"step": 4, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    truncate_metrics(path, 2)
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    truncate_metrics(path, 0)  # a run that starts over
    assert read_metrics(path) == []


def test_a_checkpoint_restores_weights_optimizer_and_every_rng_at_its_exact_position(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    ck = Checkpointer(tmp_path, Dist(), model, opt, lambda st: {"model": st}, lambda o: o["model"], config={})
    np.random.rand(3)  # move numpy's generator off a block boundary
    random.gauss(0, 1)  # python's keeps a second normal in hand
    ck.save(step=5, samples=40, elapsed=1.5, rank_state={"data": {"at": 7}, "window": None}, trained={"steps": 5})
    want = (torch.rand(3), np.random.rand(3), random.gauss(0, 1), random.random())
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = opt.state[model.weight]["exp_avg"].clone()
    torch.nn.init.zeros_(model.weight)
    opt.state[model.weight]["exp_avg"].zero_()
    r = ck.load(ck.find("auto"))
    got = (torch.rand(3), np.random.rand(3), random.gauss(0, 1), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2:] == want[2:]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert torch.equal(opt.state[model.weight]["exp_avg"], moments) and (r.step, r.samples, r.elapsed) == (5, 40, 1.5)
    assert r.rank_state["data"] == {"at": 7}
    assert ck.find("none") is None
