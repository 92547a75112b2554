"""A tiny study's inputs for sweep tests: a world, its frames and subsets, and grids over them."""

from __future__ import annotations

from pathlib import Path

quiet = lambda *a, **k: None  # noqa: E731


def make_study(root: Path) -> Path:
    from egoscale.data.ingest import IngestConfig, ingest
    from egoscale.data.subset import SubsetConfig, make_subsets
    from egoscale.world.world import WorldConfig, make_world

    make_world(WorldConfig(out=str(root / "world"), hours=0.05, categories=3, train_per_class=4, val_per_class=4,
                           progress=False), log=quiet)
    ingest(IngestConfig(source=[f"w={root / 'world' / 'videos'}"], out=str(root / "frames"), short_side=0,
                        progress=False), log=quiet)
    make_subsets(SubsetConfig(frames=str(root / "frames"), fractions=[1.0, 0.5], seeds=[1, 2]), log=quiet)
    return root


def grid_dict(root: Path, **over) -> dict:
    """A grid over the study (grid-file format): vit_pico4 at 32 px, 3 pretraining steps, a probe."""
    lab = root / "world" / "labelled"
    g = {"data": str(root / "frames"), "subsets": str(root / "frames" / "subsets"), "models": ["vit_pico4"],
         "img_sizes": [32], "fractions": [1.0, 0.5], "seeds": [1, 2],
         "pretrain": {"steps": 3, "batch_size": 8, "workers": 0, "log_every": 1},
         "evals": [{"name": "probe", "kind": "probe", "train": str(lab / "train"), "val": str(lab / "val"),
                    "condition": "full", "workers": 0, "min_steps": 10, "epochs": 1}]}
    g.update(over)
    return g
