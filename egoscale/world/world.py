"""`egoscale world`: write the built-in world to disk.

- videos/: long continuous first-person video (mp4, H.264 via PyAV) of a camera wandering
  through a sequence of rooms: it walks, pauses, turns back, and often leans in so that one
  object fills the view (as a child looks at what it holds), bobs its head; lighting drifts.
  Each room holds objects of a few of the K categories (texture kind and orientation + shape;
  colour, size, proportions, texture period and phase vary per instance), overlapping each
  other and clutter that belongs to no category. A short stretch of video therefore shows only
  part of the world; hours of it show all of it.
- labelled/train, labelled/val: close views of single objects of the same categories (new
  instances, class-per-folder), for the evaluations.

Deterministic by seed. Hours of video and the number of categories are parameters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from egoscale.config import opt
from egoscale.errors import ConfigError
from egoscale.fileio import atomic_path, write_json_atomic
from egoscale.world.render import (category_spec, clutter_sprite, draw_instance, make_room, max_categories, paste,
                                   random_instance, room_theme)

ROOM_H, ROOM_LEN = 128, 1600  # room strip in px; the camera sees a 20-110 px window of it


@dataclass
class WorldConfig:
    """Render a procedural first-person world: a camera wandering through rooms of objects of K
categories, written as mp4 files, plus a labelled train/val set of the same categories (new
instances). Deterministic by --seed."""

    out: str = opt("world", "output folder (videos/, labelled/train, labelled/val, world.json)")
    hours: float = opt(1.0, "hours of video")
    categories: int = opt(8, "object categories (the first 8 differ in shape, later ones in pattern only)")
    frame_size: int = opt(64, "video frame side in px")
    video_fps: float = opt(2.0, "video frame rate (ingest samples it at its own --fps)")
    minutes_per_video: float = opt(15.0, "length of each video file (consecutive files continue the walk)")
    train_per_class: int = opt(20, "labelled training images per category")
    val_per_class: int = opt(20, "labelled validation images per category")
    label_size: int = opt(64, "labelled image side in px")
    seed: int = opt(0, "world seed (same seed, same world)")
    progress: bool = opt(True, "show a progress bar")

    def __post_init__(self):
        if self.hours <= 0 or self.categories < 2:
            raise ConfigError("--hours must be positive and --categories at least 2")
        if self.categories > max_categories():
            raise ConfigError(f"--categories at most {max_categories()}")
        if self.frame_size % 2 or not 16 <= self.frame_size <= 1024:
            raise ConfigError(f"--frame-size must be even and in 16..1024 (H.264 with 4:2:0 colour), "
                              f"got {self.frame_size}")
        if not 16 <= self.label_size <= 1024:
            raise ConfigError(f"--label-size must be in 16..1024, got {self.label_size}")
        if self.video_fps <= 0 or self.minutes_per_video <= 0:
            raise ConfigError("--video-fps and --minutes-per-video must be positive")
        if self.train_per_class < 1 or self.val_per_class < 1:
            raise ConfigError("--train-per-class and --val-per-class must be at least 1")


class Camera:
    """A wandering first-person camera over a room strip: smooth speed changes, pauses,
    turning back, leaning in (zoom), head bob."""

    def __init__(self, rng: np.random.Generator, room_len: int, room_h: int):
        self.rng, self.room_len, self.room_h = rng, room_len, room_h
        self.x, self.v, self.view, self.t = 0.0, 0.0, 80.0, 0.0
        self.dir = 1
        self._new_mode()

    def _new_mode(self):
        r = self.rng.random()
        if r < 0.3:
            self.mode, self.target_v, self.target_view = "walk", self.rng.uniform(25, 60), self.rng.uniform(70, 110)
        elif r < 0.4:
            self.mode, self.target_v, self.target_view = "pause", 0.0, self.rng.uniform(60, 100)
        elif r < 0.92:  # lean in: an object fills the view
            self.mode, self.target_v, self.target_view = "look", self.rng.uniform(0, 4), self.rng.uniform(24, 40)
        else:
            self.mode, self.target_v, self.target_view = "turn", 0.0, self.view
            self.dir = -self.dir
        self.mode_left = self.rng.exponential(4.0) + 1.0

    def step(self, dt: float) -> tuple[int, int, int]:
        """Advance by dt seconds; return the view window (y, x, size) in room pixels."""
        self.t += dt
        self.mode_left -= dt
        if self.mode_left <= 0:
            self._new_mode()
        a = 1 - np.exp(-dt / 0.8)  # smooth approach to the mode's speed and zoom
        self.v += (self.target_v - self.v) * a
        self.view += (self.target_view - self.view) * a
        self.x += self.dir * self.v * dt
        size = int(np.clip(self.view, 20, self.room_h - 4))
        if self.x < 0:
            self.x, self.dir = 0.0, 1
        bob = 3 * np.sin(2 * np.pi * 1.8 * self.t) * min(1.0, self.v / 30)
        y = int(np.clip(self.room_h * 0.6 - size / 2 + bob, 0, self.room_h - size))
        return y, int(self.x), size

    def done(self) -> bool:
        return self.x > self.room_len - self.view - 2


def _write_videos(cfg: WorldConfig, out: Path, bar) -> list[str]:
    import av

    rng = np.random.default_rng([cfg.seed, 1])
    total = int(round(cfg.hours * 3600 * cfg.video_fps))
    per_file = max(1, int(round(cfg.minutes_per_video * 60 * cfg.video_fps)))
    dt = 1.0 / cfg.video_fps
    room_h, room_len = ROOM_H, ROOM_LEN
    room = make_room(rng, room_theme(rng, cfg.categories), room_h, room_len)
    cam = Camera(rng, room_len, room_h)
    files, written = [], 0
    while written < total:
        name = f"walk-{len(files):04d}.mp4"
        n = min(per_file, total - written)
        with atomic_path(out / name) as tmp:
            c = av.open(str(tmp), "w", format="mp4")
            s = c.add_stream("libx264", rate=Fraction(cfg.video_fps).limit_denominator(1000))
            s.width = s.height = cfg.frame_size
            s.pix_fmt = "yuv420p"
            # no-mbtree: with x264's macroblock-tree rate control the same frames encoded several
            # times in one process gave different bytes (measured); without it they are identical
            s.options = {"preset": "veryfast", "crf": "20", "x264-params": "no-mbtree=1"}
            for _ in range(n):
                if cam.done():
                    room = make_room(rng, room_theme(rng, cfg.categories), room_h, room_len)
                    cam = Camera(rng, room_len, room_h)
                y, x, size = cam.step(dt)
                crop = room[y:y + size, x:x + size]
                light = 0.9 + 0.1 * np.sin(cam.t / 37.0)
                img = Image.fromarray((crop * light * 255).astype(np.uint8)).resize(
                    (cfg.frame_size, cfg.frame_size), Image.BILINEAR)
                for p in s.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                    c.mux(p)
                if bar is not None:
                    bar.update(min(dt / 3600, bar.total - bar.n))  # float sums overshoot the total otherwise
            for p in s.encode():
                c.mux(p)
            c.close()
        files.append(name)
        written += n
    return files


def _labelled_image(rng: np.random.Generator, c: int, categories: int, size: int) -> np.ndarray:
    """A close view of one object of category c (as when one picks a thing up to look at it): the
    object fills most of the image, its edge and the room behind may show; random light, occluder."""
    h, w = max(ROOM_H, size + 1), max(400, size + 1)  # a stretch of room larger than the view
    room = make_room(rng, categories, h, w, density=0.3)
    y, x = int(rng.integers(0, h - size)), int(rng.integers(0, w - size))
    canvas = room[y:y + size, x:x + size].copy()
    s = int(rng.integers(int(size * 1.1), int(size * 1.6)))
    rgb, a = draw_instance(random_instance(rng, c), s)
    paste(canvas, rgb, a, -int(rng.integers(0, s - size + 1)), -int(rng.integers(0, s - size + 1)))
    if rng.random() < 0.3:  # partial occlusion by clutter
        cs = int(rng.integers(size // 5, size // 3))
        crgb, ca = clutter_sprite(rng, cs)
        paste(canvas, crgb, ca, int(rng.integers(0, size - cs)), int(rng.integers(0, size - cs)))
    canvas *= rng.uniform(0.7, 1.15)
    return (canvas.clip(0, 1) * 255).astype(np.uint8)


def _write_labelled(cfg: WorldConfig, out: Path) -> dict:
    counts = {}
    for split, n, stream in (("train", cfg.train_per_class, 2), ("val", cfg.val_per_class, 3)):
        rng = np.random.default_rng([cfg.seed, stream])  # separate streams: new instances per split
        for c in range(cfg.categories):
            shape, pattern, turns = category_spec(c)
            d = out / split / f"{c:02d}_{shape}_{pattern}{round(turns * 360)}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(_labelled_image(rng, c, cfg.categories, cfg.label_size)).save(
                    d / f"{i:04d}.png")
        counts[split] = n * cfg.categories
    return counts


def main(cfg: WorldConfig) -> int:
    make_world(cfg)
    return 0


def make_world(cfg: WorldConfig, log=print) -> dict:
    """Write videos and the labelled set; a finished world with the same settings is reused."""
    out = Path(cfg.out)
    info_path = out / "world.json"
    settings = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k not in ("out", "progress")}
    if info_path.is_file():
        import json

        info = json.loads(info_path.read_text())
        if info.get("settings") == settings:
            log(f"{out}: world already generated ({info['hours']} h, {info['categories']} categories); reusing")
            return info
        raise ConfigError(f"{out} holds a world made with other settings; use another --out")
    t0 = time.time()
    (out / "videos").mkdir(parents=True, exist_ok=True)
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.hours, unit="h", desc="world video", bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                   "{n:.2f}/{total:.2f} h [{elapsed}<{remaining}]")
    files = _write_videos(cfg, out / "videos", bar)
    if bar is not None:
        bar.close()
    t_video = time.time() - t0
    counts = _write_labelled(cfg, out / "labelled")
    info = {"settings": settings, "hours": cfg.hours, "categories": cfg.categories,
            "category_specs": [list(category_spec(c)) for c in range(cfg.categories)], "videos": files,
            "labelled": counts, "seconds_video": round(t_video, 2), "seconds_total": round(time.time() - t0, 2),
            "realtime_factor": round(cfg.hours * 3600 / max(t_video, 1e-9), 1)}
    write_json_atomic(info_path, info)
    log(f"world: {cfg.hours} h of video in {len(files)} files ({info['realtime_factor']:.0f}x realtime), "
        f"{counts['train']} + {counts['val']} labelled images, {cfg.categories} categories -> {out}")
    return info
