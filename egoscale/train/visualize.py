"""`egoscale visualize`: original | masked input | reconstruction, a row per image, as a PNG.

The standard check of an MAE run: with a trained model the reconstruction shows the scene's
layout and colours; with a broken one it is grey mush.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from egoscale.constants import IMAGENET_MEAN, IMAGENET_STD
from egoscale.data.loader import read_piece, resolve_pieces
from egoscale.data.shards import IMAGE_EXTS
from egoscale.errors import DataError
from egoscale.models.checkpoint import load_mae, resolve_checkpoint
from egoscale.train.config import VisualizeConfig


def main(cfg: VisualizeConfig) -> int:
    print(f"wrote {visualize(cfg.checkpoint, cfg.images, cfg.out, cfg.n, cfg.seed, cfg.mask_ratio)}")
    return 0


def _load_images(source: str | Path, n: int) -> list[Image.Image]:
    source = Path(source)
    files = []
    if source.is_dir() and not list(source.glob("*.tar")) and not (source / "manifest.json").exists():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTS)[:n]
        imgs = [Image.open(p).convert("RGB") for p in files]
    else:
        pieces, _ = resolve_pieces(source)
        imgs, cache = [], {}
        for piece in pieces:
            imgs += [Image.open(io.BytesIO(b)).convert("RGB") for b in read_piece(piece, cache)]
            if len(imgs) >= n:
                break
        if len(imgs) > n:  # spread over what was read rather than n consecutive frames
            imgs = [imgs[i] for i in np.linspace(0, len(imgs) - 1, n).astype(int)]
    if not imgs:
        raise DataError(f"{source}: no images found")
    return imgs[:n]


def _center(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    return img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size),
                                                                                            Image.BICUBIC)


def reconstruction_grid(mae, x: torch.Tensor, mask_ratio: float | None = None, seed: int = 0) -> np.ndarray:
    """Rows of original | masked input | reconstruction for images x (B, 3, H, W) in [0, 1], as an
    (B*H, 3*W, 3) uint8 picture. Runs the MAE in eval mode on x's device without gradients."""
    was_training = mae.training
    mae.eval()
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    try:
        masked, _, pasted = mae.reconstruct((x - mean) / std, mask_ratio, gen)
    finally:
        mae.train(was_training)
    vis = (masked != 0).any(1, keepdim=True)  # masked patches are exactly zero after normalising
    to_img = lambda t: (t * std + mean).clamp(0, 1)  # noqa: E731
    masked_img = torch.where(vis, to_img(masked), torch.full_like(x, 0.5))
    rows = torch.cat([x, masked_img, to_img(pasted)], dim=3)  # (B, 3, H, 3W)
    return (rows.permute(0, 2, 3, 1).reshape(-1, 3 * x.shape[-1], 3).float().cpu().numpy() * 255).astype(np.uint8)


def visualize(checkpoint: str, images: str, out: str = "reconstructions.png", n: int = 8, seed: int = 0,
              mask_ratio: float | None = None, scale: int = 0) -> Path:
    mae = load_mae(resolve_checkpoint(checkpoint)).eval()
    size = mae.spec.img_size
    imgs = [_center(im, size) for im in _load_images(images, n)]
    x = torch.from_numpy(np.stack([np.asarray(i) for i in imgs])).permute(0, 3, 1, 2).float() / 255
    img = Image.fromarray(reconstruction_grid(mae, x, mask_ratio, seed))
    scale = scale or max(1, 256 // size)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
