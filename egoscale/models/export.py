"""Pretrained models for the Hugging Face ecosystem, written without importing it.

- `to_transformers`: an MAE (encoder + decoder) as a folder that
  `transformers.ViTMAEForPreTraining.from_pretrained(OUT)` loads: config.json + model.safetensors,
  the weights renamed (q, k and v split out of egoscale's fused projection).
- `to_timm`: the encoder as a folder that `timm.create_model("local-dir:OUT", pretrained=True)`
  loads (timm's config.json: an architecture and the arguments that shape it) + model.safetensors.
  egoscale's encoder keys are timm's ViT keys already; a classification head is left out.
"""

from __future__ import annotations

import json
from pathlib import Path

from egoscale.constants import IMAGENET_MEAN, IMAGENET_STD
from egoscale.fileio import atomic_path, write_json_atomic
from egoscale.models.mae import MaskedAutoencoder
from egoscale.models.registry import ViTSpec
from egoscale.models.vit import VisionTransformer

_HF_TOP = {"encoder.cls_token": "vit.embeddings.cls_token",
           "encoder.pos_embed": "vit.embeddings.position_embeddings",
           "encoder.patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
           "encoder.patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
           "encoder.norm.weight": "vit.layernorm.weight", "encoder.norm.bias": "vit.layernorm.bias"}
_HF_BLOCK = (("attn.proj.", "attention.o_proj."), ("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."))


def transformers_state(state: dict) -> dict:
    """egoscale's MAE state dict (`MaskedAutoencoder.state_dict()`) in transformers' ViTMAE names."""
    out = {}
    for k, v in state.items():
        enc = k.startswith("encoder.blocks.")
        if enc or k.startswith("decoder_blocks."):
            parts = k.split(".")
            i, rest = (parts[2], ".".join(parts[3:])) if enc else (parts[1], ".".join(parts[2:]))
            pre = f"vit.layers.{i}." if enc else f"decoder.decoder_layers.{i}."
            if rest.startswith("attn.qkv."):
                for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3)):
                    out[f"{pre}attention.{name}.{rest.rsplit('.', 1)[-1]}"] = part
                continue
            for a, b in _HF_BLOCK:
                rest = rest.replace(a, b)
            out[pre + rest] = v
        else:
            out[_HF_TOP.get(k, "decoder." + k)] = v
    return out


def transformers_config(mae: MaskedAutoencoder) -> dict:
    s = mae.spec
    return {"model_type": "vit_mae", "architectures": ["ViTMAEForPreTraining"],
            "hidden_size": s.width, "num_hidden_layers": s.depth, "num_attention_heads": s.heads,
            "intermediate_size": s.mlp_dim, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_eps": 1e-6,
            "image_size": s.img_size, "patch_size": s.patch_size, "num_channels": 3, "qkv_bias": True,
            "decoder_hidden_size": s.decoder_width, "decoder_num_hidden_layers": s.decoder_depth,
            "decoder_num_attention_heads": s.decoder_heads, "decoder_intermediate_size": 4 * s.decoder_width,
            "mask_ratio": mae.mask_ratio, "norm_pix_loss": mae.norm_pix_loss}


def timm_config(spec: ViTSpec) -> dict:
    """timm's description of the encoder: a ViT architecture and the arguments that reshape it."""
    args = {"img_size": spec.img_size, "patch_size": spec.patch_size, "embed_dim": spec.width, "depth": spec.depth,
            "num_heads": spec.heads, "mlp_ratio": spec.mlp_ratio, "num_classes": 0, "global_pool": "token"}
    return {"architecture": "vit_base_patch16_224", "num_classes": 0, "num_features": spec.width,
            "global_pool": "token", "model_args": args,
            "pretrained_cfg": {"input_size": [3, spec.img_size, spec.img_size], "interpolation": "bicubic",
                               "crop_pct": 0.875, "crop_mode": "center", "mean": list(IMAGENET_MEAN),
                               "std": list(IMAGENET_STD), "num_classes": 0, "first_conv": "patch_embed.proj",
                               "classifier": "head", "fixed_input_size": True}}


def _save_folder(out: Path, state: dict, config: dict) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share memory (q, k and v are views of one projection)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json_atomic(out / "config.json", config)
    return out


def to_transformers(mae: MaskedAutoencoder, out: str | Path) -> Path:
    return _save_folder(Path(out), transformers_state(mae.state_dict()), transformers_config(mae))


def to_timm(vit: VisionTransformer, out: str | Path) -> Path:
    state = {k: v for k, v in vit.state_dict().items() if not k.startswith("head.")}
    return _save_folder(Path(out), state, timm_config(vit.spec))


def timm_call(out: str | Path) -> str:
    """The line that loads the folder with timm (also without the local-dir source: the
    architecture, its arguments and the weights file as an overlay)."""
    cfg = json.loads((Path(out) / "config.json").read_text())
    args = ", ".join(f"{k}={v!r}" for k, v in cfg["model_args"].items())
    return (f'timm.create_model("local-dir:{out}", pretrained=True), or timm.create_model("{cfg["architecture"]}", '
            f'pretrained=True, pretrained_cfg_overlay={{"file": "{Path(out) / "model.safetensors"}"}}, {args})')

