"""Test-wide setup: no network, few threads, deterministic seeds."""

import os

# Before anything imports huggingface_hub: the suite must never reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    # fast tests first, so that a plain break shows in a minute or two; then the slow end-to-end
    # group, then the SLURM cluster (each group keeps its files' order)
    def group(item):
        return 2 if item.get_closest_marker("slurm") else 1 if item.get_closest_marker("slow") else 0
    items.sort(key=group)


def metrics(run, having: str | None = None) -> list[dict]:
    """The lines of a run folder's metrics.jsonl (none if it has none yet; a line cut short by a kill
    is left out), or only those with the field `having` (e.g. top1: a finetuning run's evaluations)."""
    import json
    from pathlib import Path

    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.endswith("}")]
    return [m for m in lines if having is None or having in m]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A world, its frames and subsets: the inputs of a sweep (tests/study.py)."""
    from tests.study import make_study

    return make_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="session")
def clip_frames(tmp_path_factory):
    """300 frames of a real H.264 clip (30 s at 10 fps, 96x64), ingested into shards of 64: the
    pretraining tests' input."""
    from egoscale.data.ingest import IngestConfig, ingest
    from tests.videos import write_video

    root = tmp_path_factory.mktemp("clip")
    (root / "v").mkdir()
    write_video(root / "v" / "a.mp4", n=300, fps=10, w=96, h=64)
    out = root / "frames"
    ingest(IngestConfig(source=[f"x={root / 'v'}"], out=str(out), fps=10, shard_frames=64, progress=False),
           log=lambda *a: None)
    return out
