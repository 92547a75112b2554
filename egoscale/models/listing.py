"""`egoscale models`: the ViT family as a table (shapes, parameters, forward GFLOPs).

Its settings load without torch (a misspelt name answers at once); counting parameters builds
each model on the meta device."""

from __future__ import annotations

import json
from dataclasses import dataclass

from egoscale.config import opt
from egoscale.errors import ConfigError
from egoscale.models.registry import get_spec, list_models


@dataclass
class ModelsConfig:
    """List every registered ViT: width, depth, heads, MLP, patch, parameters (classifier form: encoder +
BN/Linear head) and forward GFLOPs per image (2 FLOPs per multiply-add)."""

    names: list[str] = opt([], "models to show (registry names like vit_h14, or ViT-H/14); default: all",
                           positional=True, metavar="NAME")
    img_size: int | None = opt(None, "image side in px for params/GFLOPs (default: each model's own)")
    num_classes: int = opt(1000, "classes of the head counted in the parameters; 0 = encoder only")
    json: bool = opt(False, "print JSON instead of a table")

    def __post_init__(self):
        if self.img_size is not None and self.img_size < 1:
            raise ConfigError(f"--img-size must be positive, got {self.img_size}")
        if self.num_classes < 0:
            raise ConfigError(f"--num-classes must be at least 0, got {self.num_classes}")


def main(cfg: ModelsConfig) -> int:
    specs = [get_spec(n) for n in cfg.names] if cfg.names else list_models()  # a misspelt name: no torch
    import torch

    from egoscale.models.flops import vit_gflops
    from egoscale.models.vit import build_vit, count_params

    rows = []
    for spec in specs:
        size = cfg.img_size or spec.img_size
        if size % spec.patch_size:
            if cfg.names:
                raise ConfigError(f"{spec.name}: image size {size} is not divisible by patch size {spec.patch_size}")
            continue  # listing all: skip members that cannot take this size
        with torch.device("meta"):  # counts without allocating billions of parameters
            model = build_vit(spec, img_size=size, num_classes=cfg.num_classes)
        rows.append(dict(name=spec.name, width=spec.width, depth=spec.depth, heads=spec.heads,
                         mlp=spec.mlp_dim, patch=spec.patch_size, img_size=size,
                         params=count_params(model), gflops=round(vit_gflops(spec, size), 3), note=spec.note))
    if cfg.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = (f"{'name':<12}{'width':>6}{'depth':>6}{'heads':>6}{'mlp':>6}{'patch':>6}{'img':>5}"
            f"{'params':>15}{'GFLOPs':>10}  note")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<12}{r['width']:>6}{r['depth']:>6}{r['heads']:>6}{r['mlp']:>6}{r['patch']:>6}"
              f"{r['img_size']:>5}{r['params']:>15,}{r['gflops']:>10.2f}  {r['note']}")
    return 0
