"""Drawing the world with numpy: object categories, instances, rooms.

A category is a (shape, surface pattern) pair; colours, size, aspect, rotation and pattern scale
vary per instance, so recognising a category needs shape and texture, not colour. Rooms are
long strips (a corridor the camera walks along) with a wall, a floor, lighting, clutter that
belongs to no category, and objects standing on the floor, often overlapping.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("disk", "square", "triangle", "diamond", "ring", "cross", "hexagon", "bar")
PATTERNS = ("stripes", "checker", "dots", "plain", "rings")


def category_spec(c: int) -> tuple[str, str]:
    """Category c -> (shape, pattern); the first len(SHAPES) categories differ in shape."""
    return SHAPES[c % len(SHAPES)], PATTERNS[(c // len(SHAPES) + 2 * c) % len(PATTERNS)]


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
        return (r <= 1) & (r >= 0.55)
    if shape == "cross":
        return ((np.abs(xx) <= 0.3) | (np.abs(yy) <= 0.3)) & (np.abs(xx) <= 1) & (np.abs(yy) <= 1)
    if shape == "hexagon":
        return (np.abs(yy) <= 0.87) & (np.abs(yy) * 0.577 + np.abs(xx) <= 1)
    if shape == "bar":
        return (np.abs(xx) <= 0.35) & (np.abs(yy) <= 1)
    raise ValueError(shape)


def _pattern(pattern: str, yy, xx, freq: float, angle: float) -> np.ndarray:
    """0/1 surface pattern choosing between the instance's two colours."""
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = -np.sin(angle) * xx + np.cos(angle) * yy
    if pattern == "stripes":
        return (np.sin(u * freq * np.pi) > 0).astype(np.float32)
    if pattern == "checker":
        return ((np.floor(u * freq / 1.5) + np.floor(v * freq / 1.5)) % 2).astype(np.float32)
    if pattern == "dots":
        return ((np.sin(u * freq * np.pi) * np.sin(v * freq * np.pi)) > 0.5).astype(np.float32)
    if pattern == "rings":
        return (np.sin(np.hypot(xx, yy) * freq * np.pi) > 0).astype(np.float32)
    return np.zeros_like(xx, dtype=np.float32)


def random_instance(rng: np.random.Generator, c: int) -> dict:
    """An instance of category c: its own colours, proportions, rotation and pattern scale."""
    shape, pattern = category_spec(c)
    c1 = rng.uniform(0.1, 1.0, 3)
    c2 = np.clip(c1 + rng.choice([-1, 1]) * rng.uniform(0.35, 0.6) * rng.dirichlet([1, 1, 1]) * 3, 0, 1)
    return {"category": c, "shape": shape, "pattern": pattern, "c1": c1, "c2": c2,
            # pattern scale: 1.5-2.5 periods across the object, coarse enough to survive 32-px frames
            "aspect": rng.uniform(0.8, 1.25), "rot": rng.uniform(-0.3, 0.3), "freq": rng.uniform(1.5, 2.5),
            "pangle": rng.uniform(0, np.pi) if pattern in ("stripes", "checker", "dots") else 0.0}


def draw_instance(inst: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB (size, size, 3) float image and alpha mask (size, size) of an instance."""
    t = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(t, t, indexing="ij")
    ca, sa = np.cos(inst["rot"]), np.sin(inst["rot"])
    xr = (ca * xx + sa * yy) * inst["aspect"]
    yr = (-sa * xx + ca * yy) / inst["aspect"]
    mask = _shape_mask(inst["shape"], yr, xr)
    p = _pattern(inst["pattern"], yr, xr, inst["freq"], inst["pangle"])[..., None]
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
    panel = rng.integers(60, 160)
    xs = np.arange(w)
    canvas[:horizon, (xs % panel) < 3] *= 0.8  # panel seams
    fy = np.arange(h - horizon)[:, None]
    tiles = ((fy // 12 + xs[None, :] // 24) % 2)[..., None]
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


def make_room(rng: np.random.Generator, categories: int, height: int = 256, length: int = 2400,
              density: float = 1.0) -> np.ndarray:
    """A corridor strip with objects on the floor and clutter, lit unevenly."""
    canvas, horizon = background(rng, height, length)
    n_clutter = int(rng.poisson(6 * density * length / 1000))
    for _ in range(n_clutter):
        s = int(rng.integers(10, 40))
        rgb, a = clutter_sprite(rng, s)
        paste(canvas, rgb, a, int(rng.integers(0, height - s)), int(rng.integers(0, length - s)))
    n_obj = max(2, int(rng.poisson(10 * density * length / 1000)))
    for _ in range(n_obj):
        inst = random_instance(rng, int(rng.integers(categories)))
        s = int(rng.integers(40, 110))
        rgb, a = draw_instance(inst, s)
        base = horizon + int(rng.integers(-10, height - horizon - 5))
        paste(canvas, rgb, a, base - s, int(rng.integers(0, length - s)))
    light = 0.75 + 0.25 * np.sin(np.linspace(0, rng.uniform(2, 8), length) + rng.uniform(0, 6.28))
    return (canvas * light[None, :, None]).clip(0, 1)
