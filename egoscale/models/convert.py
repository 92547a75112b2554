"""`egoscale convert`: a checkpoint between torch (.pt/.pth) and .safetensors."""

from __future__ import annotations

from dataclasses import dataclass

from egoscale.config import opt


@dataclass
class ConvertConfig:
    """Convert a checkpoint between torch (.pt/.pth) and .safetensors; the direction follows DST's
suffix. Loading never runs code."""

    src: str = opt("checkpoint.pt", "checkpoint file, run folder, or released identifier (e.g. vits14_0.01_1)",
                   positional=True, required=True, metavar="SRC")
    dst: str = opt("model.safetensors", "output file (.safetensors or .pt/.pth)", positional=True, required=True,
                   metavar="DST")


def main(cfg: ConvertConfig) -> int:
    from egoscale.models.checkpoint import export_safetensors, import_safetensors, resolve_checkpoint

    src = resolve_checkpoint(cfg.src)
    out = export_safetensors(src, cfg.dst) if cfg.dst.endswith(".safetensors") else import_safetensors(src, cfg.dst)
    print(f"wrote {out}")
    return 0
