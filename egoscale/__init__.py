"""egoscale: scale self-supervised learning on human-like video, from raw footage to scaling laws.

    >>> import egoscale
    >>> model = egoscale.load_model("vith14@476_1.0_1", finetuned=True)   # doctest: +SKIP

Attributes are imported lazily, so `egoscale ingest` starts without loading torch.
"""

__version__ = "0.1.0"

_LAZY = {"load_model", "build_vit", "build_mae", "get_spec", "list_models"}


def __getattr__(name):
    if name in _LAZY:
        from egoscale import models

        return getattr(models, name)
    raise AttributeError(f"module 'egoscale' has no attribute {name!r}")


__all__ = ["__version__", *sorted(_LAZY)]
