"""The ViT encoder family, the masked autoencoder, and checkpoint I/O.

Names are imported from their modules on first use: the registry and the FLOP counts need
neither torch nor timm, so every command's --help and settings check, `egoscale fit`,
`extrapolate`, `sweep status` and `sweep --dry-run` start without loading them (timm's import
alone brings in torchvision and torch's compiler).
"""

from importlib import import_module

_WHERE = {
    "egoscale.models.checkpoint": ["LoadReport", "export_safetensors", "write_torch", "load_mae",
                                   "load_model", "load_vit", "read_checkpoint", "save_checkpoint", "save_mae",
                                   "save_vit"],
    "egoscale.models.flops": ["mae_train_flops", "vit_gflops"],
    "egoscale.models.mae": ["MaskedAutoencoder", "build_mae"],
    "egoscale.models.registry": ["ViTSpec", "get_spec", "list_models", "register"],
    "egoscale.models.vit": ["VisionTransformer", "build_vit", "choose_attention", "count_params"],
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name):
    if name in _MODULE_OF:
        return getattr(import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'egoscale.models' has no attribute {name!r}")


__all__ = sorted(_MODULE_OF)


def __dir__():
    return __all__
