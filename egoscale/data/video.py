"""Video decoding with PyAV: probe a file, and sample frames at exact times k / fps.

Sampling rule (documented, tested): sample k shows the video as it is on screen at time
t_k = k / fps after the stream's start, i.e. the last frame whose presentation time is <= t_k.
Samples are taken for every t_k before the end of the last frame (its pts + duration). This
follows the stream's own timestamps, so variable frame rate needs no special handling, and a
time range can be decoded alone (after a seek to the keyframe before it) with exactly the
frames a whole-video pass would give.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts",
                    ".wmv", ".flv", ".3gp", ".ogv")
_EPS = 1e-6  # seconds; absorbs float error between pts * time_base and k / fps


@dataclass
class VideoInfo:
    """What a probe learns without decoding."""

    duration: float | None  # seconds, from container/stream metadata; None if unknown
    width: int
    height: int
    codec: str
    fps: float | None  # average frame rate, for information only


@dataclass
class Sample:
    k: int  # sample index within the video: t = k / fps
    t: float  # target time (s)
    pts_time: float  # presentation time of the frame shown (s)
    jpeg: bytes
    orig_size: tuple[int, int]  # (w, h) as displayed (after rotation)
    size: tuple[int, int]  # (w, h) written


@dataclass
class ChunkResult:
    """Samples k0..k1-1 of one video, or fewer and a reason when the video ends or breaks early."""

    samples: list[Sample] = field(default_factory=list)
    error: str | None = None  # set when not all requested samples could be produced
    decoded_frames: int = 0


def probe(path: str | Path) -> VideoInfo:
    """Open a file and read its first video stream's metadata. Raises av.FFmpegError/ValueError."""
    with av.open(str(path)) as c:
        if not c.streams.video:
            raise ValueError("no video stream")
        s = c.streams.video[0]
        duration = None
        if s.duration is not None and s.time_base:
            duration = float(s.duration * s.time_base)
        elif c.duration is not None:
            duration = c.duration / 1e6 - (float(s.start_time * s.time_base) if s.start_time else 0.0)
        cc = s.codec_context
        if not cc.width or not cc.height:
            raise ValueError("video stream has no frame size")
        rate = float(s.average_rate) if s.average_rate else None
        return VideoInfo(duration, cc.width, cc.height, cc.name, rate)


def planned_samples(duration: float | None, fps: float) -> int | None:
    """Number of samples t_k = k/fps with t_k < duration."""
    if duration is None:
        return None
    return max(0, math.ceil(duration * fps - _EPS))


def output_size(w: int, h: int, short_side: int) -> tuple[int, int]:
    """Scale so the short side is `short_side` (aspect kept); never upscale; 0 = keep."""
    short = min(w, h)
    if short_side <= 0 or short <= short_side:
        return w, h
    s = short_side / short
    return (short_side, max(1, round(h * s))) if w <= h else (max(1, round(w * s)), short_side)


def _encode(frame: av.VideoFrame, short_side: int, quality: int) -> tuple[bytes, tuple, tuple]:
    rot = int(getattr(frame, "rotation", 0) or 0) % 360
    w, h = (frame.height, frame.width) if rot in (90, 270) else (frame.width, frame.height)
    ow, oh = output_size(w, h, short_side)
    rw, rh = (oh, ow) if rot in (90, 270) else (ow, oh)  # resize before rotating: fewer pixels
    img = frame.to_image(width=rw, height=rh, interpolation="AREA")
    if rot:  # display matrix rotation is counter-clockwise, as PIL's rotate
        img = img.rotate(rot, expand=True)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), (w, h), img.size


def sample_chunk(path: str | Path, fps: float, k0: int, k1: int | None, short_side: int = 256,
                 quality: int = 90, threads: int = 0) -> ChunkResult:
    """Decode samples k0 <= k < k1 (k1=None: to the end) of a video.

    Never raises for a broken file: the result holds what could be decoded and an `error`.
    """
    res = ChunkResult()
    try:
        _sample_into(res, path, fps, k0, k1, short_side, quality, threads, seek=k0 > 0)
    except _SeekOvershoot:
        res = ChunkResult()
        try:
            _sample_into(res, path, fps, k0, k1, short_side, quality, threads, seek=False)
        except Exception as e:  # noqa: BLE001 - any decoder failure is reported, not raised
            res.error = _failure(res, e, k0, fps)
    except Exception as e:  # noqa: BLE001
        res.error = _failure(res, e, k0, fps)
    if res.error is None and k1 is not None and k0 + len(res.samples) < k1:
        last = res.samples[-1].pts_time if res.samples else None
        res.error = (f"stream ended early (truncated?): {len(res.samples)} of {k1 - k0} samples from "
                     f"t={k0 / fps:g} s" + (f", last frame at {last:.2f} s" if last is not None else ""))
    return res


def _failure(res: ChunkResult, e: Exception, k0: int, fps: float) -> str:
    """Why decoding stopped. A decoder error after some samples is a stream that ended early: FFmpeg
    meets a cut file's missing bytes as an error with one decoding thread and as an early end with
    several, and both are the same damage to the person reading the list of failed files."""
    if not res.samples:
        return describe_error(e)
    return (f"stream ended early (damaged or truncated?): {len(res.samples)} samples from t={k0 / fps:g} s, then "
            f"{describe_error(e)}")


class _SeekOvershoot(Exception):
    pass


def describe_error(e: Exception) -> str:
    """One short line for a decoding error: FFmpeg's message without errno and file name."""
    import re

    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    text = re.sub(r":\s*'[^']*'$", "", text)
    return f"{type(e).__name__}: {text}"[:300]


def _sample_into(res: ChunkResult, path, fps, k0, k1, short_side, quality, threads, seek: bool) -> None:
    with av.open(str(path)) as c:
        if not c.streams.video:
            raise ValueError("no video stream")
        s = c.streams.video[0]
        s.thread_type = "AUTO"  # frame + slice threads inside FFmpeg
        s.thread_count = threads
        tb = s.time_base
        start = Fraction(s.start_time) * tb if s.start_time is not None else Fraction(0)
        default_dur = float(1 / s.average_rate) if s.average_rate else 1.0 / max(fps, 1.0)
        t_first = k0 / fps
        if seek:
            c.seek(int((start + Fraction(k0) / Fraction(fps)) / tb), stream=s, backward=True, any_frame=False)
        k = k0
        prev = None  # (frame, t)
        for frame in c.decode(s):
            if frame.pts is None:
                continue
            res.decoded_frames += 1
            t = float(Fraction(frame.pts) * tb - start)
            if prev is None and seek and t > t_first + _EPS:
                raise _SeekOvershoot
            # every target strictly before this frame's time is shown by the previous frame
            while (k1 is None or k < k1) and t > k / fps + _EPS:
                src = prev if prev is not None else (frame, t)  # targets before the first frame
                _emit(res, src, k, fps, short_side, quality)
                k += 1
            prev = (frame, t)
            if k1 is not None and k >= k1:
                return
        if prev is None:
            if k1 is None or k < k1:
                raise ValueError("no decodable video frames")
            return
        frame, t = prev
        dur = float(frame.duration * tb) if frame.duration else default_dur
        while (k1 is None or k < k1) and k / fps < t + dur - _EPS:
            _emit(res, prev, k, fps, short_side, quality)
            k += 1


def _emit(res: ChunkResult, src, k: int, fps: float, short_side: int, quality: int) -> None:
    frame, t = src
    jpeg, orig, size = _encode(frame, short_side, quality)
    res.samples.append(Sample(k, k / fps, t, jpeg, orig, size))


def find_videos(root: str | Path, pattern: str | None = None) -> tuple[list[Path], list[Path]]:
    """Files under `root` (recursively, sorted): (videos by extension or glob, other files skipped).

    With a glob pattern, every matching file is attempted (so a mislabelled file is reported as
    failed rather than skipped); without one, files are picked by video extension.
    """
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if pattern:
        chosen = [p for p in files if p.relative_to(root).match(pattern) or p.match(pattern)]
    else:
        chosen = [p for p in files if p.suffix.lower() in VIDEO_EXTENSIONS]
    return chosen, [p for p in files if p not in set(chosen)]
