"""`egoscale inspect`: what a checkpoint holds, in words."""

from __future__ import annotations

from dataclasses import dataclass

from egoscale.config import opt
from egoscale.models.registry import ViTSpec


@dataclass
class InspectConfig:
    """Print what a checkpoint holds: MAE or classifier, model shape, image size, parameters, training
state (step, config) and, for egoscale's pretraining files, the data it was trained on."""

    checkpoint: str = opt("checkpoint.pt", "file, run folder, or released identifier", positional=True, required=True,
                          metavar="CHECKPOINT")
    finetuned: bool = opt(False, "for a released identifier: the finetuned file")


def describe(obj: dict, path) -> list[str]:
    """Lines describing a checkpoint read by `read_checkpoint`."""
    from egoscale.models.checkpoint import infer_spec, split_state

    enc, head, dec = split_state(obj["model"])
    meta = obj.get("egoscale") or {}
    spec = ViTSpec(**meta["spec"]) if "spec" in meta else infer_spec(enc, str(path))
    n_enc = sum(v.numel() for v in enc.values() if v.is_floating_point())
    kind = "MAE (encoder + decoder)" if dec else ("classifier" if head else "encoder")
    lines = [f"file        {path}",
             f"kind        {kind}{'' if meta else ' (released / foreign layout)'}",
             f"model       {spec.name}: width {spec.width}, depth {spec.depth}, heads {spec.heads}, "
             f"mlp {spec.mlp_dim}, patch {spec.patch_size}, image {spec.img_size} px",
             f"encoder     {n_enc:,} parameters"]
    if head:
        lines.append(f"head        {', '.join(f'{k} {tuple(v.shape)}' for k, v in head.items() if v.ndim)}")
    if dec:
        lines.append(f"decoder     {sum(obj['model'][k].numel() for k in dec):,} parameters ({len(dec)} tensors)")
    data, trained = meta.get("data") or {}, meta.get("trained") or {}
    if data.get("frames") is not None:
        hours = f", {data['hours']:.4g} h" if data.get("hours") is not None else ""
        subset = f" (subset {data['subset']})" if data.get("subset") else ""
        lines.append(f"data        fraction {data.get('fraction')}{subset}, {data['frames']:,} frames{hours}")
    if trained:
        lines.append(f"trained     {trained.get('steps')} steps, {trained.get('images'):,} images"
                     + (f", {trained['flops']:.3g} FLOPs" if trained.get("flops") else "")
                     + (f", seed {meta['seed']}" if meta.get("seed") is not None else ""))
    extra = sorted(k for k in obj if k not in ("model", "egoscale"))
    if extra:
        lines.append(f"also holds  {', '.join(extra)}" + (f" (step {obj['step']})" if "step" in obj else ""))
    return lines


def main(cfg: InspectConfig) -> int:
    from egoscale.models.checkpoint import read_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(cfg.checkpoint, finetuned=cfg.finetuned)
    print("\n".join(describe(read_checkpoint(path), path)))
    return 0
