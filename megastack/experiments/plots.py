"""Validation loss vs training FLOPs / tokens, one line per run (matplotlib, PNG)."""

from __future__ import annotations

import logging
from typing import Sequence

from megastack.experiments.curves import Curve

logger = logging.getLogger(__name__)

AXIS_LABELS = {"flops": "training FLOPs (small model included)", "tokens": "training tokens"}


def plot_curves(curves: Sequence[Curve], axis: str, path: str, title: str = "",
                growth_x: dict[str, float] | None = None) -> str:
    """Write a PNG of validation loss against `axis` ("flops" or "tokens"); growth points
    (x where a run switched to the grown model) are marked on their curves."""
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and the quickstart have no display
    import matplotlib.pyplot as plt

    if axis not in AXIS_LABELS:
        raise ValueError(f"axis must be one of {sorted(AXIS_LABELS)}, got {axis!r}")
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for curve in curves:
        if not curve.points:
            continue
        (line,) = ax.plot(curve.xs(axis), curve.losses(), marker=".", markersize=4, linewidth=1.4,
                          label=curve.name)
        grown_at = (growth_x or {}).get(curve.name)
        if grown_at is not None:
            ax.axvline(grown_at, color=line.get_color(), linestyle=":", linewidth=0.8)
    ax.set_xlabel(AXIS_LABELS[axis])
    ax.set_ylabel("validation loss (held-out documents)")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    logger.info("wrote %s", path)
    return path
