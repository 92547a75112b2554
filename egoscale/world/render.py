"""Drawing the world with numpy: object categories, instances, rooms.

A category is a (shape, surface texture) pair, the texture a kind (stripes, checker, dots, rings)
at a fixed orientation; colours, size, aspect, rotation, texture period and phase vary per
instance, so recognising a category needs texture and shape, not colour. Textures are smooth
and 3-6 periods across an object: seen from afar at 32 px they blur, seen up close they fill
the view, so resolution and looking closely both matter. Rooms are long strips (a corridor the
camera walks along) with a wall, a floor, lighting, clutter that belongs to no category, and
objects of a few categories (the room's theme) standing along it, often overlapping.

Why textures: calibration (benchmarks/world_calibration.py) found that at CPU-minute budgets a
tiny MAE learns local periodic structure long before it learns silhouettes or part layouts.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("disk", "square", "triangle", "diamond", "ring", "cross", "hexagon", "bar")
# Surface textures: (kind, orientation). A texture is a category cue that lives at the scale of a
# few patches and is not a linear function of the pixels (its phase, colours and period vary per
# instance), so a linear probe on random features does poorly and an MAE that has learned local
# structure does well. Orientations (in turns) are 45 degrees apart; instances jitter by at most 10.
TEXTURES = (("stripes", 0.0), ("checker", 0.0), ("stripes", 0.125), ("dots", 0.0), ("stripes", 0.25),
            ("rings", 0.0), ("stripes", 0.375), ("checker", 0.125))


def category_spec(c: int) -> tuple[str, str, float]:
    """Category c -> (shape, texture kind, texture orientation in turns).

    The first 8 categories each have their own shape and texture; later ones reuse them in new pairs.
    """
    t = TEXTURES[(c + 3 * (c // len(SHAPES))) % len(TEXTURES)]
    return SHAPES[c % len(SHAPES)], t[0], t[1]


def max_categories() -> int:
    return len(SHAPES) * len(TEXTURES)


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Mask in normalised coordinates (-1..1)."""
    r = np.hypot(xx, yy)
    if shape == "disk":
        return r <= 1
    if shape == "square":
        return (np.abs(xx) <= 0.85) & (np.abs(yy) <= 0.85)
    if shape == "triangle":
        return (yy <= 0.8) & (yy >= -0.9 + 1.7 * np.abs(xx))
    if shape == "diamond":
        return np.abs(xx) + np.abs(yy) <= 1
    if shape == "ring":
        return (r <= 1) & (r >= 0.45)
    if shape == "cross":
        return ((np.abs(xx) <= 0.35) | (np.abs(yy) <= 0.35)) & (np.abs(xx) <= 1) & (np.abs(yy) <= 1)
    if shape == "hexagon":
        return (np.abs(yy) <= 0.87) & (np.abs(yy) * 0.577 + np.abs(xx) <= 1)
    if shape == "bar":
        return (np.abs(xx) <= 0.45) & (np.abs(yy) <= 1)
    raise ValueError(shape)


def _texture(kind: str, yy, xx, periods: float, angle: float, phase: float) -> np.ndarray:
    """Smooth 0..1 texture mixing the instance's two colours; `periods` periods across the object."""
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = -np.sin(angle) * xx + np.cos(angle) * yy
    f = periods * np.pi  # coordinates span 2, so `periods` periods of sin(f * u) across
    if kind == "stripes":
        t = np.sin(f * u + phase)
    elif kind == "checker":
        t = np.sin(f * u + phase) * np.sin(f * v + phase) * 2
    elif kind == "dots":
        t = (np.cos(f * u + phase) * np.cos(f * v + phase) - 0.3) * 3
    elif kind == "rings":
        t = np.sin(f * np.hypot(xx, yy) + phase)
    else:
        raise ValueError(kind)
    return (0.5 + 0.5 * np.clip(t, -1, 1)).astype(np.float32)


def random_instance(rng: np.random.Generator, c: int) -> dict:
    """An instance of category c: its own colours, proportions, rotation, texture period and phase."""
    shape, kind, turns = category_spec(c)
    c1 = rng.uniform(0.05, 1.0, 3)
    c2 = np.clip(c1 + rng.choice([-1, 1]) * rng.uniform(0.35, 0.6) * rng.dirichlet([1, 1, 1]) * 3, 0, 1)
    return {"category": c, "shape": shape, "pattern": kind, "c1": c1, "c2": c2,
            "aspect": rng.uniform(0.8, 1.25), "rot": rng.uniform(-0.25, 0.25),
            # 2.5-6 periods across the object: the fine ones only survive at the larger image sizes
            "periods": rng.uniform(3.0, 6.0), "phase": rng.uniform(0, 2 * np.pi),
            "angle": (turns + rng.uniform(-1, 1) / 36) * 2 * np.pi}


def draw_instance(inst: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB (size, size, 3) float image and alpha mask (size, size) of an instance."""
    t = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(t, t, indexing="ij")
    ca, sa = np.cos(inst["rot"]), np.sin(inst["rot"])
    xr = (ca * xx + sa * yy) * inst["aspect"]
    yr = (-sa * xx + ca * yy) / inst["aspect"]
    mask = _shape_mask(inst["shape"], yr, xr)
    p = _texture(inst["pattern"], yy, xx, inst["periods"], inst["angle"], inst["phase"])[..., None]
    rgb = inst["c1"] * (1 - p) + inst["c2"] * p
    shade = 0.85 + 0.15 * (1 - (yr[..., None] + 1) / 2)  # light from above
    return (rgb * shade).astype(np.float32), mask.astype(np.float32)


def paste(canvas: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, y: int, x: int) -> None:
    """Alpha-blend a sprite onto the canvas at (y, x) (top-left), clipped to the canvas."""
    h, w = alpha.shape
    H, W = canvas.shape[:2]
    y0, x0, y1, x1 = max(0, y), max(0, x), min(H, y + h), min(W, x + w)
    if y0 >= y1 or x0 >= x1:
        return
    a = alpha[y0 - y:y1 - y, x0 - x:x1 - x, None]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + rgb[y0 - y:y1 - y, x0 - x:x1 - x] * a


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Wall (vertical gradient with panels) above a textured floor, in a random palette."""
    wall = rng.uniform(0.2, 0.85, 3)
    floor = rng.uniform(0.1, 0.6, 3)
    horizon = int(h * rng.uniform(0.55, 0.7))
    canvas = np.empty((h, w, 3), np.float32)
    g = np.linspace(1.0, 0.75, horizon)[:, None, None]
    canvas[:horizon] = wall * g
    panel = rng.integers(h // 4, h * 2 // 3)
    xs = np.arange(w)
    canvas[:horizon, (xs % panel) < 3] *= 0.8  # panel seams
    fy = np.arange(h - horizon)[:, None]
    tiles = ((fy // (h // 20) + xs[None, :] // (h // 10)) % 2)[..., None]
    canvas[horizon:] = floor * (0.85 + 0.15 * tiles)
    canvas += rng.normal(0, 0.02, canvas.shape).astype(np.float32)
    return canvas.clip(0, 1), horizon


def clutter_sprite(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A blob that belongs to no category (smooth random shape, plain colour)."""
    t = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(t, t, indexing="ij")
    ang = np.arctan2(yy, xx)
    k = rng.integers(2, 5)
    radius = 0.7 + 0.25 * np.sin(k * ang + rng.uniform(0, 6.28)) * rng.uniform(0.3, 1)
    mask = (np.hypot(xx, yy) <= radius).astype(np.float32)
    return np.broadcast_to(rng.uniform(0, 1, 3), (size, size, 3)).astype(np.float32), mask


def room_theme(rng: np.random.Generator, categories: int, per_room: int = 3) -> np.ndarray:
    """The categories a room holds: a few of them, so a short stretch of experience sees only
    part of the world (the reason more video helps) while hours of it see everything."""
    return rng.choice(categories, size=min(per_room, categories), replace=False)


def make_room(rng: np.random.Generator, categories: int | np.ndarray, height: int = 128, length: int = 1600,
              density: float = 1.0) -> np.ndarray:
    """A corridor strip with objects standing along it (often overlapping), clutter, uneven light.

    `categories`: how many there are (each object picks any), or the room's theme (an array).
    """
    theme = np.arange(categories) if np.isscalar(categories) else np.asarray(categories)
    canvas, horizon = background(rng, height, length)
    n_clutter = int(rng.poisson(6 * density * length / 1000))
    for _ in range(n_clutter):
        s = int(rng.integers(8, 28))
        rgb, a = clutter_sprite(rng, s)
        paste(canvas, rgb, a, int(rng.integers(0, height - s)), int(rng.integers(0, length - s)))
    n_obj = max(2, int(rng.poisson(22 * density * length / 1000)))
    for _ in range(n_obj):
        inst = random_instance(rng, int(rng.choice(theme)))
        s = int(rng.integers(height * 5 // 16, height * 5 // 8))
        rgb, a = draw_instance(inst, s)
        bottom = int(rng.integers(horizon, height + s // 4))
        paste(canvas, rgb, a, bottom - s, int(rng.integers(0, length - s)))
    light = 0.75 + 0.25 * np.sin(np.linspace(0, rng.uniform(2, 8), length) + rng.uniform(0, 6.28))
    return (canvas * light[None, :, None]).clip(0, 1)
