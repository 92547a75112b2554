"""Checkpoint I/O: atomic saves, safe loads, safetensors, and the paper's released files.

One on-disk layout for every model file egoscale reads or writes, the MAE reference layout
the paper's checkpoints use:

    {"model": state_dict,            # timm-style ViT keys at the top level
                                      #   + decoder_* / mask_token for an MAE
                                      #   + head.0.* (BatchNorm1d) / head.1.* (Linear) for a classifier
     "egoscale": {...},               # ours only: kind, model shape, MAE settings (plain data)
     ...}                             # ours only: optimizer, step, RNG... (training state)

So a released file and one of ours differ only in the "egoscale" entry, and architecture is
inferred from tensor shapes when it is absent. Loads use `weights_only=True` (no code runs);
`.safetensors` files keep the "egoscale" entry in their metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from egoscale.errors import CheckpointError
from egoscale.fileio import atomic_path
from egoscale.models.mae import MaskedAutoencoder
from egoscale.models.pos_embed import resample_pos_embed
from egoscale.constants import MASK_RATIO
from egoscale.models.registry import RELEASED_FORMAT, ViTSpec, get_spec, list_models, parse_released
from egoscale.models.vit import VisionTransformer

FORMAT_VERSION = 1
HUB_REPO = "eminorhan/humanlike-vits"
_DECODER_KEYS = re.compile(r"^(decoder_|mask_token)")


@dataclass
class LoadReport:
    """What happened while loading: where from, what was ignored or resampled."""

    source: str
    ignored: list[str] = field(default_factory=list)
    resampled: tuple | None = None  # (old grid, new grid) of the position table

    def summary(self) -> str:
        parts = [f"loaded {self.source}"]
        if self.ignored:
            groups = sorted({k.split(".")[0] for k in self.ignored})
            parts.append(f"ignored {len(self.ignored)} keys ({', '.join(groups)})")
        if self.resampled:
            parts.append(f"position table resampled {self.resampled[0]} -> {self.resampled[1]}")
        return "; ".join(parts)


# --- raw files -------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, obj: dict) -> Path:
    """torch.save atomically (temp file, fsync, rename): never a half-written checkpoint."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint file (.pt/.pth or .safetensors) safely into a dict with a "model" key."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        # The original MAE code pickles its argparse namespace beside the weights; allowing
        # that one plain-data class keeps such files loadable without running any code.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/foreign/unsafe files
        msg = str(e)
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
        if unsafe:
            raise CheckpointError(f"{path}: refused to load: it holds pickled objects ({unsafe.group(1)}), "
                                  "which could run code; only tensors and plain data are loaded") from None
        reason = next((ln.strip() for ln in msg.splitlines() if ln.strip()), type(e).__name__)
        if "Weights only load failed" in reason:  # torch's preamble; the cause comes later
            tail = msg.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
            reason = tail[0] if tail else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a torch file: "
                              f"{reason[:160]})") from None
    if isinstance(obj, dict) and "model" not in obj and obj and all(torch.is_tensor(v) for v in obj.values()):
        obj = {"model": obj}  # a bare state dict
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise CheckpointError(f"{path}: not a model checkpoint (expected a dict with a 'model' state dict)")
    obj["model"] = {k.removeprefix("module."): v for k, v in obj["model"].items()}  # DDP-saved files
    return obj


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    obj: dict = {"model": state}
    if "egoscale" in meta:
        obj["egoscale"] = json.loads(meta["egoscale"])
    return obj


def export_safetensors(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the weights (and egoscale's model description) of a checkpoint as safetensors."""
    from safetensors.torch import save_file

    obj = read_checkpoint(src)
    state = {k: v.contiguous() for k, v in obj["model"].items()}
    meta = {"egoscale": json.dumps(obj["egoscale"])} if "egoscale" in obj else {}
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return dst


def write_torch(src: str | os.PathLike, dst: str | os.PathLike, keep_training_state: bool = False) -> Path:
    """A torch checkpoint egoscale and the paper's code read: `{"model": ..., "egoscale": ...}`,
    the weights and egoscale's description only (from a .pt/.pth or a .safetensors). A training
    checkpoint's optimizer, scaler, RNG and data-cursor state stay behind unless
    `keep_training_state`: they are for resuming the run, which its own folder does, and they
    make a file three times the size of its weights."""
    obj = read_checkpoint(src)
    if not keep_training_state:
        obj = {k: obj[k] for k in ("model", "egoscale") if k in obj}
    return save_checkpoint(dst, obj)


# --- layouts ---------------------------------------------------------------------------------
def mae_to_released(state: dict) -> dict:
    """Our MAE module's state dict -> the reference layout (encoder keys at the top level)."""
    return {k.removeprefix("encoder."): v for k, v in state.items()}


def released_to_mae(state: dict) -> dict:
    return {(k if _DECODER_KEYS.match(k) else f"encoder.{k}"): v for k, v in state.items()}


def infer_spec(state: dict, source: str = "checkpoint") -> ViTSpec:
    """Recover the encoder shape from tensor shapes (for files without an 'egoscale' entry)."""
    try:
        width = state["cls_token"].shape[-1]
        proj = state["patch_embed.proj.weight"]  # (C, 3, p, p)
        mlp = state["blocks.0.mlp.fc1.weight"].shape[0]
        n_pos = state["pos_embed"].shape[1] - 1
    except KeyError as e:
        raise CheckpointError(f"{source}: not a ViT checkpoint (missing key {e.args[0]!r})") from None
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    patch = proj.shape[-1]
    grid = int(round(n_pos ** 0.5))
    if grid * grid != n_pos:
        raise CheckpointError(f"{source}: position table of {n_pos} patches is not a square grid")
    for spec in list_models():  # heads are not visible in shapes: take them from the family
        if (spec.width, spec.depth, spec.mlp_dim) == (width, depth, mlp):
            return replace(spec, patch_size=patch, img_size=grid * patch)
    return ViTSpec(f"vit_custom{patch}", width, depth, max(1, width // 64), mlp, patch, grid * patch)


def split_state(state: dict) -> tuple[dict, dict, list[str]]:
    """Split a reference-layout state dict into (encoder, head, ignored decoder keys)."""
    enc, head, ignored = {}, {}, []
    for k, v in state.items():
        if _DECODER_KEYS.match(k):
            ignored.append(k)
        elif k.startswith("head."):
            head[k.removeprefix("head.")] = v
        else:
            enc[k] = v
    return enc, head, ignored


def _head_classes(head: dict, source: str) -> int:
    if not head:
        return 0
    if "1.weight" in head:  # BatchNorm1d(affine=False) + Linear, the paper's head
        return head["1.weight"].shape[0]
    if "weight" in head:  # a plain timm Linear head: becomes BN+Linear with the BN as identity
        return head["weight"].shape[0]
    raise CheckpointError(f"{source}: unrecognised classifier head keys {sorted(head)[:4]}")


def _adapt_head(head: dict, width: int) -> dict:
    if "weight" in head and "1.weight" not in head:
        return {"0.running_mean": torch.zeros(width), "0.running_var": torch.ones(width) - 1e-5,
                "0.num_batches_tracked": torch.tensor(0), "1.weight": head["weight"], "1.bias": head["bias"]}
    return head


def load_into(model: torch.nn.Module, state: dict, source: str, report: LoadReport) -> None:
    """load_state_dict(strict) with shape checks and one clear error naming the mismatch.

    A learned position table of another grid is resampled to the model's grid.
    """
    target = model.state_dict()
    pe, tpe = state.get("pos_embed"), target.get("pos_embed")
    if pe is not None and tpe is not None and pe.shape != tpe.shape and pe.shape[-1] == tpe.shape[-1]:
        old = int(round((pe.shape[1] - 1) ** 0.5))
        if old * old == pe.shape[1] - 1:  # a square grid of another size: resample it
            new = tuple(model.patch_embed.grid_size)
            state = {**state, "pos_embed": resample_pos_embed(pe, new, (old, old))}
            report.resampled = ((old, old), new)
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
             for k in target if k in state and state[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        bits = []
        if wrong:
            bits.append(f"shape mismatch: {'; '.join(wrong[:3])}")
        if missing:
            bits.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            bits.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{source}: does not fit {getattr(model, 'spec', None) and model.spec.name}: "
                              + "; ".join(bits))
    model.load_state_dict(state, strict=True)


# --- models from files -----------------------------------------------------------------------
def load_vit(path: str | os.PathLike, *, img_size: int | None = None, num_classes: int | None = None,
             obj: dict | None = None) -> tuple[VisionTransformer, LoadReport]:
    """Load an encoder (plus head if the file has one) from any egoscale or released checkpoint.

    MAE decoder weights are ignored and reported. `img_size` builds the model at another size
    (position table resampled). `num_classes` overrides the head: 0 drops it, N > 0 makes a
    fresh head when the file's differs.
    """
    source = str(path)
    obj = obj if obj is not None else read_checkpoint(path)
    enc, head, ignored = split_state(obj["model"])
    meta = obj.get("egoscale") or {}
    spec = ViTSpec(**meta["spec"]) if "spec" in meta else infer_spec(enc, source)
    if img_size is not None:
        spec = replace(spec, img_size=img_size)
    file_classes = _head_classes(head, source)
    classes = file_classes if num_classes is None else num_classes
    # An MAE encoder's table is fixed sin-cos; as a classifier it becomes learnable (finetuning).
    model = VisionTransformer(spec, num_classes=classes)
    report = LoadReport(source, ignored=ignored)
    state = dict(enc)
    if classes and classes == file_classes:
        state.update({f"head.{k}": v for k, v in _adapt_head(head, spec.width).items()})
    elif classes:
        state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})  # fresh head
    if file_classes and classes != file_classes:
        report.ignored += [f"head.{k}" for k in head]
    load_into(model, state, source, report)
    return model, report


def mae_meta(mae: MaskedAutoencoder) -> dict:
    return {"format": FORMAT_VERSION, "kind": "mae", "spec": mae.spec.to_dict(),
            "mask_ratio": mae.mask_ratio, "norm_pix_loss": mae.norm_pix_loss}


def vit_meta(vit: VisionTransformer) -> dict:
    return {"format": FORMAT_VERSION, "kind": "vit", "spec": vit.spec.to_dict(), "num_classes": vit.num_classes}


def save_mae(path: str | os.PathLike, mae: MaskedAutoencoder, **extra) -> Path:
    """An MAE checkpoint in the reference layout, plus egoscale's description and `extra`."""
    return save_checkpoint(path, {"model": mae_to_released(mae.state_dict()), "egoscale": mae_meta(mae), **extra})


def save_vit(path: str | os.PathLike, vit: VisionTransformer, **extra) -> Path:
    return save_checkpoint(path, {"model": vit.state_dict(), "egoscale": vit_meta(vit), **extra})


def load_mae(path: str | os.PathLike, *, obj: dict | None = None) -> MaskedAutoencoder:
    """Rebuild an MAE (encoder + decoder) from a pretraining checkpoint, ours or released."""
    source = str(path)
    obj = obj if obj is not None else read_checkpoint(path)
    meta = obj.get("egoscale") or {}
    state = obj["model"]
    if not any(_DECODER_KEYS.match(k) for k in state):
        raise CheckpointError(f"{source}: has no MAE decoder weights (a finetuned or encoder-only file)")
    if "spec" in meta:
        spec = ViTSpec(**meta["spec"])
    else:
        spec = infer_spec(state, source)
        dw = state["decoder_embed.weight"].shape[0]
        ddepth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"decoder_blocks\.(\d+)\.", k)))
        spec = replace(spec, decoder_width=dw, decoder_depth=ddepth, decoder_heads=max(1, dw // 32))
    mae = MaskedAutoencoder(spec, mask_ratio=meta.get("mask_ratio", MASK_RATIO),
                            norm_pix_loss=meta.get("norm_pix_loss", False))
    load_into(mae, released_to_mae({k: v for k, v in state.items() if not k.startswith("head.")}),
              source, LoadReport(source))
    return mae


# --- released checkpoints by identifier ------------------------------------------------------
def hub_location(identifier: str, finetuned: bool) -> tuple[str, str]:
    """(subfolder, filename) of a released file on the Hub, as the paper's helper stores them:
    `ARCH/ID.pth` pretrained, `finetuned_ARCH/ID.pth` finetuned."""
    arch = parse_released(identifier).arch
    return (f"finetuned_{arch}" if finetuned else arch), f"{identifier}.pth"


def _released_candidates(identifier: str, finetuned: bool, roots: list[Path]) -> list[Path]:
    """Where a local folder may hold a released file: laid out as the Hub (and a download of it)
    is, flat, or as the paper's logs folders are."""
    sub, name = hub_location(identifier, finetuned)
    arch = parse_released(identifier).arch
    out = []
    for root in roots:
        if finetuned:  # a flat folder's ID.pth is the pretrained file: finetuned ones carry the prefix
            out += [root / sub / name, root / f"finetuned_{name}", root / arch / f"finetuned_{name}"]
        else:
            out += [root / name, root / arch / name, root / f"{arch}_logs" / name]
    return out


def resolve_checkpoint(identifier: str | os.PathLike, *, finetuned: bool = False,
                       local_dirs: list[str | os.PathLike] | None = None) -> Path:
    """A path for a checkpoint file, folder, or released identifier like 'vith14@476_1.0_1'.

    Released identifiers are looked up in `local_dirs` (and $EGOSCALE_CHECKPOINTS), then in the
    Hugging Face cache, then on the Hub (`eminorhan/humanlike-vits`: `ARCH/ID.pth`, and
    `finetuned_ARCH/ID.pth` for the finetuned files) when online.
    """
    p = Path(identifier)
    if p.is_file():
        return p
    if p.is_dir():
        for name in ("checkpoint.pt", "model.pt", "model.safetensors"):
            if (p / name).is_file():
                return p / name
        files = sorted([*p.glob("*.pt"), *p.glob("*.pth"), *p.glob("*.safetensors")])
        if len(files) == 1:
            return files[0]
        raise CheckpointError(f"{p}: folder holds {len(files)} checkpoint files; name one")
    ident = str(identifier)
    released = parse_released(ident)
    if released is None:
        raise CheckpointError(f"{ident}: no such file, and not a released identifier ({RELEASED_FORMAT})")
    roots = [Path(d) for d in (local_dirs or [])]
    if os.environ.get("EGOSCALE_CHECKPOINTS"):
        roots += [Path(d) for d in os.environ["EGOSCALE_CHECKPOINTS"].split(os.pathsep)]
    candidates = _released_candidates(ident, finetuned, roots)
    for c in candidates:
        if c.is_file():
            return c
    sub, filename = hub_location(ident, finetuned)
    try:
        from huggingface_hub import constants, hf_hub_download
    except ImportError:  # pragma: no cover - it is a dependency
        hf_hub_download = None
    hub_reason = "huggingface_hub not installed"
    if hf_hub_download is not None:
        try:  # the cache first, so that offline machines with a warm cache work
            return Path(hf_hub_download(HUB_REPO, filename, subfolder=sub, local_files_only=True))
        except Exception:
            pass
        if constants.HF_HUB_OFFLINE:
            hub_reason = "offline (HF_HUB_OFFLINE is set)"
        else:
            try:
                return Path(hf_hub_download(HUB_REPO, filename, subfolder=sub))
            except Exception as e:
                hub_reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    looked = ", ".join(str(c) for c in candidates) or "no local folders given"
    raise CheckpointError(f"{ident}: not found; looked in {looked}; the Hugging Face cache; "
                          f"and the Hub {HUB_REPO}/{sub}/{filename} ({hub_reason})")


def load_model(identifier: str | os.PathLike, *, finetuned: bool = False, img_size: int | None = None,
               num_classes: int | None = None, local_dirs: list[str | os.PathLike] | None = None,
               verbose: bool = False) -> VisionTransformer:
    """Load an encoder (or finetuned classifier) by path or released identifier.

        >>> model = load_model("vith14@476_1.0_1", finetuned=True)      # doctest: +SKIP

    The image size defaults to the file's (from the identifier's `@size` for released files);
    another `img_size` resamples the position table.
    """
    path = resolve_checkpoint(identifier, finetuned=finetuned, local_dirs=local_dirs)
    released = parse_released(str(identifier))
    if img_size is None and released:
        img_size = released.img_size
    model, report = load_vit(path, img_size=img_size, num_classes=num_classes)
    model.load_report = report
    if verbose:
        print(report.summary())
    return model


__all__ = ["LoadReport", "save_checkpoint", "read_checkpoint", "export_safetensors", "write_torch",
           "load_vit", "load_mae", "save_mae", "save_vit", "load_model", "resolve_checkpoint",
           "infer_spec", "get_spec"]
