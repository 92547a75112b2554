"""matplotlib for the report's plots and figures: headless, one resolution, figures closed."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, out: Path) -> Path:
    """Every plot's last step: laid out, written at one resolution, closed (pyplot keeps figures otherwise)."""
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    pyplot().close(fig)
    return out
