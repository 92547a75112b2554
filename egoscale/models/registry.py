"""The ViT family, registered by name.

Names encode size and patch: `vit_s14` is ViT-S/14. Sizes from the paper (S, B, L, H), the
bigger members extrapolation needs (g, G, 2.5B), and tiny members for CPU work. Any member can
be built at any image size and, with `patch_size=`, any patch size.

    >>> get_spec("vit_h14").width
    1280
    >>> get_spec("ViT-H/14").name   # the paper's spelling works too
    'vit_h14'
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import asdict, dataclass, replace

from egoscale.errors import ModelNotFoundError


@dataclass(frozen=True)
class ViTSpec:
    """Shape of one family member. `img_size` is the default input side in pixels.

    The decoder fields are the MAE decoder that pretrains this member (the paper: 512 wide,
    8 blocks, 16 heads, for every size); tiny members get a tiny decoder so that CPU runs
    spend their time in the encoder, as the big ones do.
    """

    name: str
    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch_size: int = 14
    img_size: int = 224
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    note: str = ""

    @property
    def mlp_ratio(self) -> float:
        return self.mlp_dim / self.width

    def to_dict(self) -> dict:
        return asdict(self)

    def encoder_params(self, img_size: int | None = None) -> int:
        """Encoder parameters (no head) at `img_size` (default: the member's own), counted from the
        shape: patch projection, class token, position table, blocks, final norm. Only the position
        table depends on the image size."""
        w, m, p = self.width, self.mlp_dim, self.patch_size
        tokens = 1 + ((img_size or self.img_size) // p) ** 2
        block = 4 * w * w + 2 * w * m + 9 * w + m  # qkv, proj, fc1, fc2 (with biases), two norms
        return (3 * p * p * w + w) + w + tokens * w + self.depth * block + 2 * w


_REGISTRY: dict[str, ViTSpec] = {}


def register(spec: ViTSpec) -> ViTSpec:
    if spec.name in _REGISTRY:
        warnings.warn(f"model {spec.name!r} registered twice; the later definition wins", stacklevel=2)
    if spec.width % spec.heads:
        raise ValueError(f"{spec.name}: width {spec.width} is not divisible by {spec.heads} heads")
    _REGISTRY[spec.name] = spec
    return spec


# The paper's models (Orhan 2023): timm's ViT-S/B/L/H shapes with 14-px patches.
register(ViTSpec("vit_s14", 384, 12, 6, 1536, note="ViT-S/14, paper"))
register(ViTSpec("vit_b14", 768, 12, 12, 3072, note="ViT-B/14, paper"))
register(ViTSpec("vit_l14", 1024, 24, 16, 4096, note="ViT-L/14, paper"))
register(ViTSpec("vit_h14", 1280, 32, 16, 5120, note="ViT-H/14, paper (also at 448 and 476 px)"))
# Bigger members for extrapolation. g and G follow Zhai et al. 2022 ("Scaling ViTs").
register(ViTSpec("vit_g14", 1408, 40, 16, 6144, note="ViT-g/14, ~1.0B"))
register(ViTSpec("vit_G14", 1664, 48, 16, 8192, note="ViT-G/14, ~1.8B"))
# ~2.5B: the paper's extrapolated size. Shape chosen here: G's MLP ratio-4 recipe widened to
# 2048 (head dim 128, as in G) and 50 blocks deep -> 2.52B encoder parameters.
register(ViTSpec("vit_2.5b14", 2048, 50, 16, 8192, note="ViT-2.5B/14, ~2.5B (extrapolation target)"))

# Tiny members for CPUs and the built-in world: patch 4 at 32-64 px gives 64-256 tokens.
_TINY_DECODER = dict(decoder_width=64, decoder_depth=2, decoder_heads=4)
register(ViTSpec("vit_pico4", 64, 2, 2, 256, 4, 32, **_TINY_DECODER, note="tiny, CPU"))
register(ViTSpec("vit_nano4", 96, 4, 3, 384, 4, 32, **_TINY_DECODER, note="tiny, CPU"))
register(ViTSpec("vit_micro4", 128, 4, 4, 512, 4, 32, **_TINY_DECODER, note="tiny, CPU"))
register(ViTSpec("vit_mini4", 192, 6, 6, 768, 4, 32, **_TINY_DECODER, note="tiny, CPU"))
register(ViTSpec("vit_small8", 256, 6, 8, 1024, 8, 64,
                 decoder_width=128, decoder_depth=2, decoder_heads=4, note="tiny, CPU"))

# The paper's released checkpoints (and finetuning logs) are named
# `{arch}_{fraction}_{seed}`, e.g. `vith14@476_1.0_1`; the architecture tag gives the model and
# image size. Every reader of those names (checkpoint lookup, log import, evaluation) uses
# `parse_released` below.
RELEASED_ARCHS: dict[str, tuple[str, int]] = {
    "vits14": ("vit_s14", 224),
    "vitb14": ("vit_b14", 224),
    "vitl14": ("vit_l14", 224),
    "vith14": ("vit_h14", 224),
    "vith14@448": ("vit_h14", 448),
    "vith14@476": ("vit_h14", 476),
}
RELEASED_FORMAT = "{" + "|".join(RELEASED_ARCHS) + "}_{fraction}_{seed}"
_RELEASED = re.compile("^(" + "|".join(re.escape(a) for a in sorted(RELEASED_ARCHS, key=len, reverse=True))
                       + r")_(\d+(?:\.\d+)?(?:e-?\d+)?)_(\d+)(_log\.txt)?$")


@dataclass(frozen=True)
class ReleasedId:
    """A parsed released name: `arch` tag, registry `model`, `img_size`, data `fraction`, `seed`."""

    arch: str
    model: str
    img_size: int
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arch}_{self.fraction:g}_{self.seed}"


def parse_released(text: str, log: bool = False) -> ReleasedId | None:
    """`vith14@476_1.0_1` (or, with `log`, `vith14@476_1.0_1_log.txt`) -> ReleasedId; None otherwise."""
    m = _RELEASED.match(str(text))
    if not m or bool(m.group(4)) != log:
        return None
    model, size = RELEASED_ARCHS[m.group(1)]
    return ReleasedId(m.group(1), model, size, float(m.group(2)), int(m.group(3)))


def _normalise(name: str) -> str:
    """Map spellings like 'ViT-H/14', 'vith14', 'vit-h-14' to the registry's 'vit_h14'."""
    m = re.fullmatch(r"vit[-_ ]?([a-z0-9.]+?)[-_/ ]?(\d+)", name.strip(), flags=re.IGNORECASE)
    if not m:
        return name
    size, patch = m.groups()
    size = size if size in ("g", "G") else size.lower()  # g (giant) and G (gigantic) differ by case
    return f"vit_{size}{patch}"


def list_models() -> list[ViTSpec]:
    return list(_REGISTRY.values())


def get_spec(name: str, *, patch_size: int | None = None, img_size: int | None = None) -> ViTSpec:
    """Look up a model by name; optionally override its patch size and default image size.

    Raises ModelNotFoundError listing close matches for an unknown name.
    """
    spec = _REGISTRY.get(name) or _REGISTRY.get(_normalise(name))
    if spec is None and name in RELEASED_ARCHS:
        base, size = RELEASED_ARCHS[name]
        spec = replace(_REGISTRY[base], img_size=size)
    if spec is None:
        close = difflib.get_close_matches(name, list(_REGISTRY) + list(RELEASED_ARCHS), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(
            f"unknown model {name!r}{hint} (`egoscale models` lists them all)")
    if patch_size is not None:
        spec = replace(spec, patch_size=patch_size)
    if img_size is not None:
        spec = replace(spec, img_size=img_size)
    return spec
