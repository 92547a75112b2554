"""`egoscale ingest`: folders of videos -> WebDataset shards of JPEG frames + manifest.json.

Global order: sources in the order given, then video paths (sorted, relative to the source),
then time. Shards listed in the manifest, in order, hold the frames in exactly that order;
subsets (contiguous stretches of experience) rely on it.

Work is cut into chunks (a stretch of one video, `chunk_seconds` long), decoded in parallel
processes and written in order by this process. After each completed shard the state file
records how far the shards reach; a killed run restarts from there (the partly written shard
is thrown away and rebuilt identically), so nothing is duplicated or lost.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from egoscale.config import opt, to_dict
from egoscale.data.shards import ShardWriter, ensure_indexes, parse_size
from egoscale.data.video import describe_error, find_videos, planned_samples, probe, sample_chunk
from egoscale.errors import ConfigError, DataError
from egoscale.fileio import write_json_atomic
from egoscale.machine import usable_cores

STATE = ".ingest-state.json"
MANIFEST_VERSION = 1


def slurm_part() -> str:
    """`--part slurm`: "I/N" for this task of a SLURM job array (its place among the array's task
    ids) or, outside an array, of the job step's tasks (srun -n N)."""
    env = os.environ
    if env.get("SLURM_ARRAY_TASK_ID") and env.get("SLURM_ARRAY_TASK_COUNT"):
        first, step = int(env.get("SLURM_ARRAY_TASK_MIN", "0")), int(env.get("SLURM_ARRAY_TASK_STEP", "1"))
        return f"{(int(env['SLURM_ARRAY_TASK_ID']) - first) // step}/{env['SLURM_ARRAY_TASK_COUNT']}"
    if env.get("SLURM_PROCID") and env.get("SLURM_NTASKS"):
        return f"{env['SLURM_PROCID']}/{env['SLURM_NTASKS']}"
    raise ConfigError("--part slurm: not inside a SLURM job array or job step (no SLURM_ARRAY_TASK_ID or "
                      "SLURM_PROCID); give the part as I/N")


@dataclass
class IngestConfig:
    """Decode every video under each --source folder, sample frames at exact times k/fps, resize, encode
JPEG, and write WebDataset shards (frames-000000.tar, ...) with a manifest.json (per video: duration,
frames, shards, status; per source: hours; failures with reasons). The settings are stored in the
manifest.

Resumable: re-run the same command after a crash or kill. Unreadable files are listed, not fatal
(exit 1 only if nothing could be ingested, or with --strict).

example:
  egoscale ingest --source saycam=/data/saycam --source ego4d=/data/ego4d \\
      --out /data/frames --fps 1 --short-side 256 --workers 16
cluster: run with --part I/N for I = 0..N-1 (e.g. a SLURM array), then
  egoscale ingest --merge --out /data/frames"""

    source: list[str] = field(default_factory=list, metadata={
        "help": "NAME=FOLDER of videos (repeatable; order sets the global order)", "action": "append",
        "metavar": "NAME=DIR"})
    out: str = opt("frames", "output folder for shards and manifest.json")
    fps: float = opt(1.0, "frames sampled per second of video (paper: 1)")
    short_side: int = field(default=256, metadata={
        "help": "resize so the short side is this many px (aspect kept, never upscaled); 0 keeps the size"})
    quality: int = opt(90, "JPEG quality (1-100)")
    glob: str | None = field(default=None, metadata={
        "help": "only files matching this pattern (e.g. '*.mp4'); default: files with a video extension"})
    shard_size: str = opt("1GB", "target shard size (e.g. 512MB, 1GB)")
    shard_frames: int = opt(0, "also cap frames per shard (0: no cap)")
    workers: int = opt(1, "decoding processes")
    threads: int = opt(0, "FFmpeg threads per process (0: automatic)")
    chunk_seconds: float = field(default=300.0, metadata={
        "help": "seconds of video per work item (long videos are split across processes)"})
    part: str | None = field(default=None, metadata={
        "help": "I/N: ingest only part I of N (0-based) of the videos, for clusters; combine with --merge. "
                "'slurm': this task's part of a SLURM job array (sbatch --array=0-3: task I of 4), or of the "
                "job's tasks (srun -n N)", "metavar": "I/N"})
    strict: bool = opt(False, "exit non-zero if any video failed")
    merge: bool = opt(False, "combine the part manifests in --out into manifest.json (after --part runs)")
    progress: bool = opt(True, "show a progress bar")

    def __post_init__(self):
        if self.fps <= 0:
            raise ConfigError(f"--fps must be positive, got {self.fps}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"--quality must be in 1..100, got {self.quality}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.short_side < 0 or self.threads < 0 or self.shard_frames < 0:
            raise ConfigError("--short-side, --threads and --shard-frames must be at least 0")
        if self.chunk_seconds <= 0:
            raise ConfigError(f"--chunk-seconds must be positive, got {self.chunk_seconds}")
        try:
            parse_size(self.shard_size)
        except ValueError as e:
            raise ConfigError(f"--shard-size: {e}") from None
        self.parsed_sources()
        if self.part == "slurm":
            self.part = slurm_part()
        self.part_index()

    def parsed_sources(self) -> list[tuple[str, Path]]:
        out = []
        for s in self.source:
            name, sep, folder = s.partition("=")
            if not sep or not name or not folder:
                raise ConfigError(f"--source {s!r}: expected NAME=FOLDER")
            if any(n == name for n, _ in out):
                raise ConfigError(f"--source: name {name!r} given twice")
            out.append((name, Path(folder)))
        return out

    def part_index(self) -> tuple[int, int]:
        if self.part is None:
            return 0, 1
        try:
            i, n = (int(x) for x in self.part.split("/"))
        except ValueError:
            raise ConfigError(f"--part {self.part!r}: expected I/N, e.g. 0/4") from None
        if not (n >= 1 and 0 <= i < n):
            raise ConfigError(f"--part {self.part!r}: need 0 <= I < N")
        return i, n

    def identity(self) -> dict:
        """The settings that must match for a resume to continue the same ingest."""
        d = to_dict(self)
        return {k: d[k] for k in ("source", "fps", "short_side", "quality", "glob", "shard_size",
                                  "shard_frames", "chunk_seconds", "part")}


def main(cfg: IngestConfig) -> int:
    if cfg.merge:
        merge(cfg.out)
        return 0
    man = ingest(cfg)
    t = man["total"]
    print(f"{t['videos']} videos, {t['frames']} frames, {t['hours']:.3f} h in {len(man['shards'])} shards "
          f"-> {cfg.out}; {t['failed']} failed, {t['skipped']} non-video files skipped")
    for f in man["failed"][:10]:
        print(f"  failed: {f['source']}/{f['path']}: {f['reason']} ({f['frames']} frames kept)")
    if len(man["failed"]) > 10:
        print(f"  ... and {len(man['failed']) - 10} more (see manifest.json)")
    if t["frames"] == 0:
        return 1
    return 1 if (cfg.strict and t["failed"]) else 0


def manifest_name(cfg: IngestConfig) -> str:
    i, n = cfg.part_index()
    return "manifest.json" if n == 1 else f"manifest-part{i:03d}of{n:03d}.json"


def _shard_fmt(cfg: IngestConfig) -> str:
    i, n = cfg.part_index()
    return "frames-{:06d}.tar" if n == 1 else f"frames-p{i:03d}-" + "{:06d}.tar"


# --- planning --------------------------------------------------------------------------------
def _discover(cfg: IngestConfig, log) -> tuple[list[dict], list[dict], list[dict]]:
    """Probe every file: (videos to ingest, failed at probe, skipped non-video files)."""
    videos, failed, skipped = [], [], []
    for name, root in cfg.parsed_sources():
        if not root.is_dir():
            raise DataError(f"--source {name}={root}: no such folder")
        chosen, others = find_videos(root, cfg.glob)
        skipped += [{"source": name, "path": str(p.relative_to(root)),
                     "reason": "not matched by --glob" if cfg.glob else "not a video file extension"}
                    for p in others]
        for p in chosen:
            rel = str(p.relative_to(root))
            if p.stat().st_size == 0:
                failed.append({"source": name, "path": rel, "reason": "empty file (0 bytes)", "frames": 0})
                continue
            try:
                info = probe(p)
            except Exception as e:  # noqa: BLE001 - every unreadable file is reported
                failed.append({"source": name, "path": rel, "reason": f"cannot open: {describe_error(e)}",
                               "frames": 0})
                continue
            videos.append({"source": name, "path": rel, "file": str(p.resolve()), "duration": info.duration,
                           "planned": planned_samples(info.duration, cfg.fps), "size": [info.width, info.height],
                           "codec": info.codec})
    log(f"found {len(videos)} videos ({len(failed)} unreadable, {len(skipped)} other files skipped)")
    return videos, failed, skipped


def _split_part(videos: list[dict], i: int, n: int) -> list[dict]:
    """Contiguous block i of n of the globally ordered videos, balanced by duration."""
    if n == 1:
        return videos
    weights = [v["duration"] or 1.0 for v in videos]
    total = sum(weights)
    out, acc = [], 0.0
    for v, w in zip(videos, weights):
        mid = acc + w / 2  # a video belongs to the block its midpoint falls in
        if int(mid / total * n) == i or (i == n - 1 and mid >= total):
            out.append(v)
        acc += w
    return out


def _tasks(videos: list[dict], fps: float, chunk_seconds: float) -> list[tuple[int, int, int | None]]:
    per = max(1, round(chunk_seconds * fps))
    tasks = []
    for vi, v in enumerate(videos):
        if v["planned"] is None:
            tasks.append((vi, 0, None))
        else:
            tasks += [(vi, k, min(k + per, v["planned"])) for k in range(0, v["planned"], per)]
    return tasks


# --- running ---------------------------------------------------------------------------------
def ingest(cfg: IngestConfig, log=print) -> dict:
    """Run (or resume, or confirm) an ingest; returns the manifest."""
    if not cfg.source:
        raise ConfigError("no --source given (NAME=FOLDER of videos)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / (STATE if cfg.part is None else f".ingest-state-{cfg.part.replace('/', 'of')}.json")
    man_path = out / manifest_name(cfg)
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    if state is not None and state["config"] != cfg.identity():
        diff = [k for k in state["config"] if state["config"][k] != cfg.identity().get(k)]
        raise ConfigError(f"{out} holds an ingest made with other settings ({', '.join(diff)}); "
                          "use another --out, or the same settings to resume")
    if state is not None and state.get("finished") and man_path.exists():
        manifest = json.loads(man_path.read_text())
        log(f"{man_path}: ingest already complete ({manifest['total']['frames']} frames from "
            f"{manifest['total']['videos']} videos); nothing to do")
        ensure_indexes(out, [sh["name"] for sh in manifest["shards"]], log)
        return manifest
    if state is None:
        videos, failed, skipped = _discover(cfg, log)
        i, n = cfg.part_index()
        videos = _split_part(videos, i, n)
        if i > 0:  # every part sees every file; part 0 alone reports unreadable and skipped ones
            failed, skipped = [], []
        state = {"config": cfg.identity(), "videos": videos, "probe_failed": failed, "skipped": skipped,
                 "cursor": [0, 0], "shards": [], "stats": {}, "finished": False}
        write_json_atomic(state_path, state)
    else:
        log(f"resuming: {len(state['shards'])} shards already complete")
    for f in out.glob(".frames-*.tmp"):  # a shard (or its index) being written when the run was killed
        f.unlink()
    ensure_indexes(out, [sh["name"] for sh in state["shards"]], log)
    _run(cfg, out, state, state_path, log)
    manifest = _manifest(cfg, state)
    write_json_atomic(man_path, manifest)
    state["finished"] = True
    write_json_atomic(state_path, state)
    return manifest


def _run(cfg: IngestConfig, out: Path, state: dict, state_path: Path, log) -> None:
    videos = state["videos"]
    tasks = _tasks(videos, cfg.fps, cfg.chunk_seconds)
    t_start, o_start = state["cursor"]
    stats: dict[str, dict] = state["stats"]  # per video index: frames, first, last, shards, error
    written = sum(s["frames"] for s in state["shards"])  # samples in completed shards
    cursor = [t_start, o_start]
    pending_index = written  # index of the next sample to write

    def on_close(name, frames, nbytes):
        first = pending_index - frames
        state["shards"].append({"name": name, "frames": frames, "bytes": nbytes, "first": first})
        state["cursor"] = list(cursor)
        state["stats"] = stats
        write_json_atomic(state_path, state)

    writer = ShardWriter(out, _shard_fmt(cfg), len(state["shards"]), parse_size(cfg.shard_size),
                         cfg.shard_frames or None, on_close)
    total_s = sum((v["duration"] or 0.0) for v in videos)
    done_s = _seconds_before(tasks, t_start, cfg.fps, videos)
    bar = _progress(cfg, total_s, done_s)
    wall0 = time.time()
    threads = cfg.threads or (0 if cfg.workers == 1 else max(1, usable_cores() // cfg.workers))
    args = dict(fps=cfg.fps, short_side=cfg.short_side, quality=cfg.quality, threads=threads)
    key_prefix = "" if cfg.part is None else f"p{cfg.part_index()[0]:03d}_"
    try:
        for ti, (vi, k0, k1), res in _results(cfg, videos, tasks, t_start, args):
            v = videos[vi]
            st = stats.setdefault(str(vi), {"frames": 0, "first": None, "last": None, "shards": [], "error": None})
            skip = o_start if ti == t_start else 0
            for j, smp in enumerate(res.samples):
                if j < skip:
                    continue
                meta = {"source": v["source"], "video": v["path"], "t": round(smp.t, 6),
                        "pts_time": round(smp.pts_time, 6), "k": smp.k, "orig_size": list(smp.orig_size),
                        "size": list(smp.size), "index": pending_index}
                cursor[0], cursor[1] = ti, j  # position of this sample, if a shard closes before it
                writer.write(f"{key_prefix}{pending_index:010d}",
                             {"jpg": smp.jpeg, "json": json.dumps(meta).encode()})
                # (on_close, if it fired inside write, recorded the cursor at this sample)
                st["frames"] += 1
                st["first"] = pending_index if st["first"] is None else st["first"]
                st["last"] = pending_index
                if writer.current_name not in st["shards"]:
                    st["shards"].append(writer.current_name)
                pending_index += 1
            cursor[0], cursor[1] = ti + 1, 0
            if res.error and not st["error"]:
                st["error"] = res.error
            span = ((k1 if k1 is not None else k0 + len(res.samples)) - k0) / cfg.fps
            if bar is not None:
                bar.update(min(span, max(0.0, (v["duration"] or span) - k0 / cfg.fps)) / 3600)
                rt = bar.n * 3600 / max(time.time() - wall0, 1e-9)
                bar.set_postfix(frames=pending_index, realtime=f"{rt:.0f}x")
        writer.close()
    finally:
        if bar is not None:
            bar.close()
    wall = time.time() - wall0
    log(f"wrote {pending_index - written} frames in {wall:.1f} s")


def _seconds_before(tasks, t_start, fps, videos) -> float:
    s = 0.0
    for vi, k0, k1 in tasks[:t_start]:
        d = videos[vi]["duration"] or 0.0
        s += max(0.0, min((k1 or k0) / fps, d) - k0 / fps)
    return s


def _progress(cfg, total_s, done_s):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=round(total_s / 3600, 4), initial=round(done_s / 3600, 4), unit="h", desc="ingest",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.3f}/{total:.3f} h [{elapsed}<{remaining}{postfix}]")


def _results(cfg, videos, tasks, t_start, args):
    """Chunk results in task order, decoded in `workers` processes with a bounded window."""
    todo = list(enumerate(tasks))[t_start:]
    if cfg.workers == 1:
        for ti, (vi, k0, k1) in todo:
            yield ti, (vi, k0, k1), sample_chunk(videos[vi]["file"], k0=k0, k1=k1, **args)
        return
    import multiprocessing as mp

    window = cfg.workers * 3
    with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn")) as pool:
        futures = []
        it = iter(todo)
        for ti, t in it:
            futures.append((ti, t, pool.submit(sample_chunk, videos[t[0]]["file"], k0=t[1], k1=t[2], **args)))
            if len(futures) >= window:
                break
        while futures:
            ti, t, fut = futures.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                futures.append((nxt[0], nxt[1], pool.submit(sample_chunk, videos[nxt[1][0]]["file"],
                                                            k0=nxt[1][1], k1=nxt[1][2], **args)))
            yield ti, t, fut.result()


# --- manifest --------------------------------------------------------------------------------
def _manifest(cfg: IngestConfig, state: dict) -> dict:
    videos_out, failed = [], list(state["probe_failed"])
    per_source: dict[str, dict] = {}
    for name, root in cfg.parsed_sources():
        per_source[name] = {"root": str(root.resolve()), "videos": 0, "frames": 0, "hours": 0.0, "failed": 0}
    for vi, v in enumerate(state["videos"]):
        st = state["stats"].get(str(vi), {"frames": 0, "first": None, "last": None, "shards": [], "error": None})
        status = "ok" if not st["error"] else ("partial" if st["frames"] else "failed")
        seconds = (v["duration"] or st["frames"] / cfg.fps) if status == "ok" else st["frames"] / cfg.fps
        rec = {"source": v["source"], "path": v["path"], "duration": v["duration"], "frames": st["frames"],
               "first": st["first"], "last": st["last"], "shards": st["shards"], "status": status,
               "size": v["size"], "codec": v["codec"]}
        if st["error"]:
            rec["error"] = st["error"]
            failed.append({"source": v["source"], "path": v["path"], "reason": st["error"], "frames": st["frames"]})
        videos_out.append(rec)
        ps = per_source[v["source"]]
        if st["frames"]:
            ps["videos"] += 1
            ps["frames"] += st["frames"]
            ps["hours"] += seconds / 3600
    for f in state["probe_failed"]:
        per_source[f["source"]]["failed"] += 1
    for f in failed[len(state["probe_failed"]):]:
        per_source[f["source"]]["failed"] += 1
    i, n = cfg.part_index()
    return {
        "egoscale_manifest": MANIFEST_VERSION,
        "config": to_dict(cfg),
        "fps": cfg.fps,
        "part": [i, n],
        "order": "source (as given), video path (sorted), time",
        "total": {"videos": sum(s["videos"] for s in per_source.values()),
                  "frames": sum(s["frames"] for s in per_source.values()),
                  "hours": sum(s["hours"] for s in per_source.values()),
                  "failed": len(failed), "skipped": len(state["skipped"])},
        "sources": per_source,
        "shards": state["shards"],
        "videos": videos_out,
        "failed": failed,
        "skipped": state["skipped"],
    }


def merge(out: str | Path, log=print) -> dict:
    """Combine the part manifests in `out` into one manifest.json (global order kept)."""
    out = Path(out)
    parts = sorted(out.glob("manifest-part*of*.json"))
    if not parts:
        raise DataError(f"{out}: no part manifests (manifest-partIIIofNNN.json) to merge")
    mans = [json.loads(p.read_text()) for p in parts]
    n = mans[0]["part"][1]
    have = sorted(m["part"][0] for m in mans)
    if have != list(range(n)) or any(m["part"][1] != n for m in mans):
        missing = sorted(set(range(n)) - set(have))
        raise DataError(f"{out}: cannot merge: parts {missing} of {n} are missing or unfinished")
    merged = {k: mans[0][k] for k in ("egoscale_manifest", "fps", "order")}
    merged["config"] = {**mans[0]["config"], "part": None}
    merged["part"] = [0, 1]
    merged["merged_from"] = [p.name for p in parts]
    shards, videos, offset = [], [], 0
    for m in mans:
        for s in m["shards"]:
            shards.append({**s, "first": s["first"] + offset})
        for v in m["videos"]:
            videos.append({**v, "first": None if v["first"] is None else v["first"] + offset,
                           "last": None if v["last"] is None else v["last"] + offset})
        offset += sum(s["frames"] for s in m["shards"])
    merged["shards"], merged["videos"] = shards, videos
    merged["failed"] = [f for m in mans for f in m["failed"]]
    merged["skipped"] = [f for m in mans for f in m["skipped"]]
    sources = {}
    for m in mans:
        for name, s in m["sources"].items():
            acc = sources.setdefault(name, {"root": s["root"], "videos": 0, "frames": 0, "hours": 0.0, "failed": 0})
            for k in ("videos", "frames", "hours"):
                acc[k] += s[k]
    for f in merged["failed"]:
        sources[f["source"]]["failed"] += 1
    merged["sources"] = sources
    merged["total"] = {"videos": sum(s["videos"] for s in sources.values()),
                       "frames": sum(s["frames"] for s in sources.values()),
                       "hours": sum(s["hours"] for s in sources.values()),
                       "failed": len(merged["failed"]), "skipped": len(merged["skipped"])}
    ensure_indexes(out, [s["name"] for s in shards], log)
    write_json_atomic(out / "manifest.json", merged)
    log(f"merged {len(mans)} parts: {merged['total']['frames']} frames, {len(shards)} shards")
    return merged
