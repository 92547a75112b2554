"""egoscale: scale self-supervised learning on human-like video, from raw footage to scaling laws.

    >>> import egoscale
    >>> model = egoscale.load_model("vith14@476_1.0_1", finetuned=True)   # doctest: +SKIP
"""

__version__ = "0.1.0"

from egoscale.models import build_mae, build_vit, get_spec, list_models, load_model  # noqa: E402

__all__ = ["__version__", "build_mae", "build_vit", "get_spec", "list_models", "load_model"]
