"""`egoscale subset`: data-size subsets of an ingest, as contiguous stretches of experience.

For each fraction f and seed, a subset is ceil(f * total) consecutive frames of the global
order (source, video, time), starting at a position drawn from the seed; so a small subset is
a short continuous stretch of someone's experience, as in the paper. Fraction 1 is the whole
set (one subset). `mode="random"` draws the same number of scattered frames instead, for
comparison. Subset files list shard/sample ranges; pretraining reads them without copying.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from egoscale.config import opt
from egoscale.errors import ConfigError, DataError
from egoscale.fileio import write_json_atomic

SUBSET_VERSION = 1


@dataclass
class SubsetConfig:
    """For each fraction x seed, pick ceil(fraction x frames) consecutive frames of the ingest's global
order (source, video, time) starting at a seeded position, and write a subset file (shard/sample
ranges, hours, sources) that pretraining reads directly.

example:
  egoscale subset /data/frames --fractions 1,0.1,0.01,0.001,0.0001 --seeds 1,2,3 --out /data/subsets"""

    frames: str = field(default="frames", metadata={"help": "ingest folder (holds manifest.json and shards)",
                                                    "positional": True, "metavar": "FRAMES"})
    fractions: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.01, 0.001, 0.0001], metadata={
        "help": "comma-separated fractions of all frames, each in (0, 1]"})
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3], metadata={
        "help": "comma-separated seeds: one subset per seed for each fraction below 1"})
    out: str | None = opt(None, "output folder (default: FRAMES/subsets)")
    mode: str = field(default="contiguous", metadata={
        "help": "contiguous (the paper's) or random (scattered frames, for comparison)",
        "choices": ["contiguous", "random"]})

    def __post_init__(self):
        bad = [f for f in self.fractions if not 0 < f <= 1]
        if bad:
            raise ConfigError(f"--fractions: {bad} outside (0, 1]")
        if not self.fractions or not self.seeds:
            raise ConfigError("need at least one fraction and one seed")


def load_manifest(frames: str | Path) -> dict:
    """Read an ingest's manifest.json and check that its shards are all there."""
    frames = Path(frames)
    path = frames / "manifest.json" if frames.is_dir() else frames
    if not path.is_file():
        raise DataError(f"{path}: no manifest.json (run `egoscale ingest` first, or `--merge` the parts)")
    try:
        man = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if "shards" not in man or "videos" not in man:
        raise DataError(f"{path}: not an egoscale manifest (no 'shards'/'videos')")
    missing = [s["name"] for s in man["shards"] if not (path.parent / s["name"]).is_file()]
    if missing:
        raise DataError(f"{path}: {len(missing)} shards listed but missing, e.g. {missing[0]}")
    man["_dir"] = str(path.parent.resolve())
    return man


def subset_name(fraction: float, seed: int, mode: str = "contiguous") -> str:
    return f"{fraction:g}_s{seed}" + ("" if mode == "contiguous" else "_random")


def _ranges_from_indices(idx: np.ndarray) -> list[tuple[int, int]]:
    """Sorted global indices -> [start, end) runs."""
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks] + 1, [idx[-1] + 1]])
    return list(zip(starts.tolist(), ends.tolist()))


def _describe(man: dict, runs: list[tuple[int, int]]) -> dict:
    """Shard-local ranges and per-source frame counts for global runs."""
    shard_ranges = []
    for s in man["shards"]:
        a0, a1 = s["first"], s["first"] + s["frames"]
        for r0, r1 in runs:
            lo, hi = max(a0, r0), min(a1, r1)
            if lo < hi:
                shard_ranges.append({"shard": s["name"], "start": lo - a0, "end": hi - a0})
    sources: dict[str, int] = {}
    for v in man["videos"]:
        if v["first"] is None:
            continue
        v0, v1 = v["first"], v["last"] + 1
        n = sum(max(0, min(v1, r1) - max(v0, r0)) for r0, r1 in runs)
        if n:
            sources[v["source"]] = sources.get(v["source"], 0) + n
    return {"shards": shard_ranges, "sources": sources}


def make_subset(man: dict, fraction: float, seed: int, mode: str = "contiguous") -> dict:
    total = sum(s["frames"] for s in man["shards"])
    if total == 0:
        raise DataError("the manifest holds no frames")
    n = min(total, math.ceil(fraction * total - 1e-9))
    rng = np.random.default_rng(seed)
    if mode == "contiguous":
        start = int(rng.integers(0, total - n + 1)) if n < total else 0
        runs = [(start, start + n)]
    else:
        runs = _ranges_from_indices(np.sort(rng.choice(total, size=n, replace=False)))
    d = _describe(man, runs)
    return {"egoscale_subset": SUBSET_VERSION, "name": subset_name(fraction, seed, mode), "fraction": fraction,
            "seed": seed, "mode": mode, "frames": n, "hours": n / man["fps"] / 3600, "total_frames": total,
            "runs": [list(r) for r in runs], "frames_dir": man["_dir"], **d}


def main(cfg: SubsetConfig) -> int:
    make_subsets(cfg)
    return 0


def make_subsets(cfg: SubsetConfig, log=print) -> list[dict]:
    man = load_manifest(cfg.frames)
    out = Path(cfg.out) if cfg.out else Path(man["_dir"]) / "subsets"
    subsets = []
    for f in cfg.fractions:
        for seed in ([cfg.seeds[0]] if f == 1 else cfg.seeds):
            sub = make_subset(man, f, seed, cfg.mode)
            write_json_atomic(out / f"{sub['name']}.json", sub)
            subsets.append(sub)
    log(f"{'fraction':>9} {'seed':>5} {'frames':>10} {'hours':>10}  sources")
    for s in subsets:
        srcs = ", ".join(f"{k} {v}" for k, v in s["sources"].items())
        log(f"{s['fraction']:>9g} {s['seed']:>5} {s['frames']:>10} {s['hours']:>10.4f}  {srcs}")
    log(f"wrote {len(subsets)} subset files to {out}")
    return subsets


def load_subset(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such subset file")
    sub = json.loads(path.read_text())
    if "shards" not in sub or "frames" not in sub:
        raise DataError(f"{path}: not an egoscale subset file")
    if sub["frames"] == 0:
        raise DataError(f"{path}: the subset is empty")
    return sub


def frame_short_side(data: str | Path) -> int | None:
    """The short side, in pixels, of the smallest frame an ingest folder holds: its --short-side, or
    where frames kept their videos' size (--short-side 0) the smallest video's; None for plain shards."""
    if not (Path(data) / "manifest.json").is_file():
        return None
    man = json.loads((Path(data) / "manifest.json").read_text())
    side = (man.get("config") or {}).get("short_side")
    sizes = [min(v["size"]) for v in man.get("videos", []) if v.get("size")]
    if side:
        return min([side, *sizes]) if sizes else side  # a video smaller than --short-side is not upscaled
    return min(sizes) if sizes else None


def describe_data(data: str | Path, subset: str | Path | None = None) -> dict:
    """What a run trains on, to be recorded in its checkpoints: the data fraction, subset seed,
    frames, hours and frames per source (None where the input does not say: plain shards)."""
    if subset is not None:
        s = load_subset(subset)
        return {"fraction": s.get("fraction"), "subset_seed": s.get("seed"), "frames": s.get("frames"),
                "hours": s.get("hours"), "sources": s.get("sources"), "subset": s.get("name")}
    if (Path(data) / "manifest.json").is_file():
        man = load_manifest(data)
        t = man["total"]
        return {"fraction": 1.0, "subset_seed": None, "frames": t["frames"], "hours": t["hours"],
                "sources": {k: v.get("frames") for k, v in man.get("sources", {}).items()} or None, "subset": None}
    return {"fraction": None, "subset_seed": None, "frames": None, "hours": None, "sources": None, "subset": None}
