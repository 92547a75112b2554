"""matplotlib for the report's plots and figures: headless, one resolution, figures closed."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, out: Path, rect=None) -> Path:
    """Every plot's last step: laid out (within `rect`, leaving room for a figure legend), written at
    one resolution, closed (pyplot keeps figures otherwise)."""
    fig.tight_layout(rect=rect)
    fig.savefig(out, dpi=110)
    pyplot().close(fig)
    return out
