"""Figures: matplotlib without a display, and PNG files written atomically.

Every figure mpdref draws (training curves, pruning sensitivity, codebooks, MPD masks)
goes through these two functions.
"""
from __future__ import annotations

from pathlib import Path

from mpdref.io.atomic import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, target, dpi: int = 90) -> Path:
    """Write `fig` as a PNG at `target` (its folder made if missing, the file atomically), then close it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
    return target
