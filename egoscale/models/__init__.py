"""The ViT encoder family, the masked autoencoder, and checkpoint I/O."""

from egoscale.models.checkpoint import (LoadReport, export_safetensors, import_safetensors, load_mae,
                                        load_model, load_vit, read_checkpoint, save_checkpoint, save_mae,
                                        save_vit)
from egoscale.models.flops import mae_train_flops, vit_gflops
from egoscale.models.mae import MaskedAutoencoder, build_mae
from egoscale.models.registry import ViTSpec, get_spec, list_models, register
from egoscale.models.vit import VisionTransformer, build_vit, choose_attention, count_params

__all__ = ["LoadReport", "MaskedAutoencoder", "ViTSpec", "VisionTransformer", "build_mae", "build_vit",
           "choose_attention", "count_params", "export_safetensors", "get_spec", "import_safetensors",
           "list_models", "load_mae", "load_model", "load_vit", "mae_train_flops", "read_checkpoint", "register",
           "save_checkpoint", "save_mae", "save_vit", "vit_gflops"]
