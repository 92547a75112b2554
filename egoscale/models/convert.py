"""`egoscale convert`: a checkpoint between torch (.pt/.pth) and .safetensors, or out to the
Hugging Face ecosystem (transformers' ViTMAE, timm's ViT)."""

from __future__ import annotations

from dataclasses import dataclass

from egoscale.config import opt
from egoscale.errors import ConfigError

TARGETS = ("auto", "safetensors", "torch", "transformers", "timm")


@dataclass
class ConvertConfig:
    """Convert a checkpoint. Loading never runs code.

  --to auto (default)  torch (.pt/.pth) <-> .safetensors, the direction from DST's suffix; a
                       torch file holds the weights and egoscale's description only (what the
                       paper's code loads), without a training checkpoint's optimizer and RNG
                       state unless --keep-training-state
  --to transformers    an MAE (encoder + decoder) as a folder DST that
                       transformers.ViTMAEForPreTraining.from_pretrained(DST) loads
  --to timm            the encoder as a folder DST that timm.create_model("local-dir:DST",
                       pretrained=True) loads (a finetuned head is left out)

examples:
  egoscale convert runs/vits14_1.0_1 model.safetensors
  egoscale convert runs/vits14_1.0_1 --to transformers hf/vits14_1.0_1
  egoscale convert runs/vits14_1.0_1 --to timm timm/vits14_1.0_1"""

    src: str = opt("checkpoint.pt", "checkpoint file, run folder, or released identifier (e.g. vits14_0.01_1)",
                   positional=True, required=True, metavar="SRC")
    dst: str = opt("model.safetensors", "output file (.safetensors or .pt/.pth), or folder for --to "
                   "transformers / timm", positional=True, required=True, metavar="DST")
    to: str = opt("auto", "what to write: auto (by DST's suffix), safetensors, torch, transformers or timm",
                  choices=list(TARGETS))
    keep_training_state: bool = opt(False, "--to torch: also copy the optimizer, scaler, RNG and data-cursor "
                                    "state of a training checkpoint (only useful to resume it elsewhere)")

    def __post_init__(self):
        if self.to not in TARGETS:
            raise ConfigError(f"--to {self.to!r}: one of {', '.join(TARGETS)}")
        if self.to == "auto" and not self.dst.endswith((".safetensors", ".pt", ".pth")):
            raise ConfigError(f"{self.dst}: say what to write with --to (transformers, timm), or give DST a "
                              ".safetensors, .pt or .pth suffix")


def main(cfg: ConvertConfig) -> int:
    from egoscale.models import export
    from egoscale.models.checkpoint import export_safetensors, load_mae, load_vit, resolve_checkpoint, write_torch

    src = resolve_checkpoint(cfg.src)
    to = cfg.to if cfg.to != "auto" else "safetensors" if cfg.dst.endswith(".safetensors") else "torch"
    if to == "safetensors":
        print(f"wrote {export_safetensors(src, cfg.dst)}")
    elif to == "torch":
        print(f"wrote {write_torch(src, cfg.dst, cfg.keep_training_state)}")
    elif to == "transformers":
        out = export.to_transformers(load_mae(src), cfg.dst)
        print(f"wrote {out}: transformers.ViTMAEForPreTraining.from_pretrained({str(out)!r})")
    else:
        vit, _ = load_vit(src, num_classes=0)
        out = export.to_timm(vit, cfg.dst)
        print(f"wrote {out}: {export.timm_call(out)}")
    return 0
