"""Test-wide setup: no network, few threads, deterministic seeds."""

import os

# Before anything imports huggingface_hub: the suite must never reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A world, its frames and subsets: the inputs of a sweep (tests/study.py)."""
    from tests.study import make_study

    return make_study(tmp_path_factory.mktemp("study"))
