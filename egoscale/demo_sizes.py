"""The demo's sizes: each one's world, grid, length and time budget."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoSize:
    """One size of the demo: its world, its grid, its length and its budget."""

    hours: float  # of world video
    categories: int
    train_per_class: int  # labelled images per category for the evaluations' training...
    val_per_class: int  # ...and their val set
    models: tuple[str, ...]
    img_sizes: tuple[int, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]  # pretraining seeds of the subsets
    steps: int  # the design length; a time budget may choose fewer...
    # ...never fewer than this: the fewest at which the study was measured to show its gains and trends
    # (benchmarks/README.md, "The floor"); None where no budget applies
    floor_steps: int | None
    epochs: int  # of finetuning...
    batch: int
    minutes: float | None  # the time budget (None: the design length, however long it takes)
    beyond: tuple[str, int]  # the run beyond the grid that checks the extrapolation (whole data, first seed)
    full_seeds: tuple[int, ...] | None = None  # pretraining seeds of the whole-data runs (default: seeds)
    # ...but this many for these models: vit_pico4's finetuning has not converged after 6 epochs of the
    # demo's lr, and 4 more cost it about a second (benchmarks/README.md, "The floor")
    model_epochs: tuple[tuple[str, int], ...] = ()

    def epochs_for(self, model: str) -> int:
        return dict(self.model_epochs).get(model, self.epochs)


_TINY = ("vit_pico4", "vit_nano4", "vit_micro4")
SIZES = {
    # quick has no budget and claims nothing: its 20 steps are a smoke test of every stage, already the
    # fewest that run them all
    "quick": DemoSize(hours=0.2, categories=6, train_per_class=8, val_per_class=8, models=_TINY, img_sizes=(24, 32),
                      fractions=(1.0, 0.1, 0.01), seeds=(1, 2), steps=20, floor_steps=None, epochs=1, batch=32,
                      minutes=None, beyond=("vit_pico4", 40)),
    "default": DemoSize(hours=1.0, categories=8, train_per_class=50, val_per_class=100, models=_TINY,
                        img_sizes=(24, 32), fractions=(1.0, 0.1, 0.01), seeds=(1,), full_seeds=(1, 2), steps=600,
                        floor_steps=500, epochs=6, model_epochs=(("vit_pico4", 10),), batch=32, minutes=10,
                        beyond=("vit_pico4", 40)),
    # no budget by default; under --minutes its floor is the default size's, not measured at 32/48 px
    "large": DemoSize(hours=2.0, categories=8, train_per_class=20, val_per_class=50, models=_TINY, img_sizes=(32, 48),
                      fractions=(1.0, 0.1, 0.01), seeds=(1, 2), full_seeds=(1, 2), steps=2000, floor_steps=500,
                      epochs=10, batch=32, minutes=None, beyond=("vit_nano4", 64)),
}
