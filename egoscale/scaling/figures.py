"""Pictures of a sweep for the report: what the data looks like and what the runs did.

From a sweep folder (its grid.json, pretraining runs and evaluations): a strip of sample frames
per data source, a few labelled images per class, each cell's pretraining loss curve (small
multiples), and MAE reconstructions per model size (original | masked | reconstruction).
Each figure is a PNG; a figure whose inputs are missing is left out with the reason.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from egoscale.scaling.plotting import pyplot, save


def _size_of(model: str) -> float:
    """Encoder parameters of a registered model (for ordering); unknown names last."""
    from egoscale.errors import ModelNotFoundError
    from egoscale.models.registry import get_spec

    try:
        return get_spec(model).encoder_params()
    except ModelNotFoundError:
        return math.inf


def _grid_of(sweep: Path) -> dict:
    return json.loads((sweep / "grid.json").read_text())


def sample_frames(sweep: Path, out: Path, per_source: int = 8) -> Path:
    """`per_source` frames spread over each data source of the ingest, one row per source."""
    from PIL import Image

    from egoscale.data.loader import read_piece, resolve_pieces
    from egoscale.data.subset import load_manifest

    frames = Path(_grid_of(sweep)["data"])
    man = load_manifest(frames)
    pieces, _ = resolve_pieces(frames)
    by_source: dict[str, list[int]] = {}
    for v in man["videos"]:
        if v.get("first") is not None:
            by_source.setdefault(v["source"], []).extend(range(v["first"], v["last"] + 1))
    cache, flat = {}, []
    firsts = {s["name"]: s["first"] for s in man["shards"]}
    rows = []
    for source, idx in by_source.items():
        want = [idx[int(i)] for i in np.linspace(0, len(idx) - 1, min(per_source, len(idx)))]
        imgs = []
        for g in want:
            piece = next(p for p in pieces if firsts[Path(p.shard).name] + p.start <= g < firsts[Path(p.shard).name]
                         + p.end)
            data = read_piece(piece, cache)[g - firsts[Path(piece.shard).name] - piece.start]
            imgs.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        rows.append((source, imgs))
        flat += imgs
    plt = pyplot()
    cols = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.4 * cols, 1.5 * len(rows)), squeeze=False)
    for r, (source, imgs) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(imgs[c], interpolation="nearest")
        axes[r][0].set_title(f"{source} ({len(by_source[source])} frames)", fontsize=8, loc="left")
    return save(fig, out)


def labelled_examples(sweep: Path, out: Path, per_class: int = 4) -> Path:
    """A few training images of every class of the first evaluation's labelled folder."""
    from PIL import Image

    from egoscale.evaluate.labelled import scan

    evals = _grid_of(sweep)["evals"]
    if not evals:
        raise FileNotFoundError("the grid has no evaluation, so no labelled folder")
    lab = scan(evals[0]["train"])
    plt = pyplot()
    n = len(lab.classes)
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for k, name in enumerate(lab.classes):
        ax = axes[k // cols][k % cols]
        files = [f for f, y in zip(lab.files, lab.labels) if y == k][:per_class]
        tiles = [np.asarray(Image.open(lab.root / f).convert("RGB").resize((64, 64))) for f in files]
        side = math.ceil(math.sqrt(len(tiles)))
        canvas = np.full((64 * side, 64 * side, 3), 255, np.uint8)
        for i, t in enumerate(tiles):
            canvas[64 * (i // side):64 * (i // side + 1), 64 * (i % side):64 * (i % side + 1)] = t
        ax.imshow(canvas)
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    return save(fig, out)


def loss_curves(sweep: Path, out: Path) -> Path:
    """Small multiples: one panel per (model, image size), a line per data size and seed."""
    runs = sorted(p for p in (sweep / "pretrain").glob("*") if (p / "metrics.jsonl").is_file())
    if not runs:
        raise FileNotFoundError("no pretraining run with a metrics.jsonl")
    panels: dict[str, list[tuple[str, list, list]]] = {}
    for run in runs:
        model_size, fraction, seed = run.name.rsplit("_", 2)
        recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        recs = [r for r in recs if "loss" in r]
        panels.setdefault(model_size, []).append((f"{fraction} {seed}", [r["step"] for r in recs],
                                                  [r["loss"] for r in recs]))
    plt = pyplot()
    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False, sharey=True)
    fractions = sorted({label.split()[0] for lines in panels.values() for label, _, _ in lines}, key=float)
    colors = {f: plt.cm.viridis(i / max(1, len(fractions) - 1)) for i, f in enumerate(fractions)}
    by_size = lambda kv: (_size_of(kv[0].split("@")[0]), int(kv[0].split("@")[1]))  # noqa: E731
    for k, (name, lines) in enumerate(sorted(panels.items(), key=by_size)):
        ax = axes[k // cols][k % cols]
        for label, steps, loss in lines:
            ax.plot(steps, loss, color=colors[label.split()[0]], lw=1, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_yscale("log")
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if k % cols == 0:
            ax.set_ylabel("MAE loss", fontsize=8)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    handles = [plt.Line2D([], [], color=colors[f], label=f"data fraction {f}") for f in fractions]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    return save(fig, out, rect=(0, 0.06, 1, 1))


def reconstructions(sweep: Path, out: Path, n: int = 4) -> Path:
    """Per model (at its largest image size, most data): original | masked | reconstruction."""
    import torch
    from PIL import Image

    from egoscale.data.loader import read_piece, resolve_pieces
    from egoscale.models.checkpoint import load_mae
    from egoscale.train.visualize import reconstruction_grid

    runs = {}
    for run in sorted((sweep / "pretrain").glob("*")):
        if not (run / "checkpoint.pt").is_file():
            continue
        model_size, fraction, _ = run.name.rsplit("_", 2)
        model, size = model_size.split("@")
        key = (int(size), float(fraction))
        if model not in runs or key > runs[model][0]:
            runs[model] = (key, run)
    if not runs:
        raise FileNotFoundError("no pretraining checkpoint")
    pieces, _ = resolve_pieces(_grid_of(sweep)["data"])
    cache, frames = {}, []
    for piece in pieces[:: max(1, len(pieces) // n)]:  # frames from across the data
        frames.append(Image.open(io.BytesIO(read_piece(piece, cache)[0])).convert("RGB"))
        if len(frames) == n:
            break
    plt = pyplot()
    order = sorted(runs, key=lambda m: (_size_of(m), m))  # smallest model first
    fig, axes = plt.subplots(1, len(order), figsize=(2.6 * len(order), 0.9 * n + 0.8), squeeze=False)
    for k, model in enumerate(order):
        (size, fraction), run = runs[model]
        mae = load_mae(run / "checkpoint.pt")
        x = torch.stack([torch.from_numpy(np.array(f.resize((size, size)))).permute(2, 0, 1) for f in frames])
        ax = axes[0][k]
        ax.imshow(reconstruction_grid(mae, x.float() / 255), interpolation="nearest")
        ax.set_title(f"{model} @{size} px, data {fraction:g}\noriginal | masked | reconstruction", fontsize=8)
        ax.axis("off")
    return save(fig, out)


FIGURES = [("Sample frames per data source", sample_frames, "sample_frames.png"),
           ("Labelled images per class", labelled_examples, "labelled_examples.png"),
           ("Pretraining loss, every cell", loss_curves, "loss_curves.png"),
           ("Reconstructions per model size", reconstructions, "reconstructions.png")]


def sweep_figures(sweep: Path, out: Path) -> list[tuple[str, Path | str]]:
    """(heading, PNG) for each figure, or (heading, why it is missing)."""
    got = []
    for heading, fn, name in FIGURES:
        try:
            got.append((heading, fn(Path(sweep), Path(out) / name)))
        except (FileNotFoundError, KeyError, ValueError, OSError) as e:
            got.append((heading, f"not drawn: {e}"))
    return got
