"""Validation loss vs training FLOPs / tokens, one line per run (matplotlib, PNG)."""

from __future__ import annotations

import logging
from typing import Sequence

from megastack.experiments.curves import Curve

logger = logging.getLogger(__name__)

ZOOM_FROM = 0.6
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
    # Left: whole curves; right: the last part, where runs are compared (losses differ by
    # hundredths of a nat there, invisible at the full scale).
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=120)
    x_max = max((max(c.xs(axis)) for c in curves if c.points), default=1.0)
    x_from = ZOOM_FROM * x_max
    zoom_losses = []
    for curve in curves:
        if not curve.points:
            continue
        xs, ys = curve.xs(axis), curve.losses()
        (line,) = ax.plot(xs, ys, marker=".", markersize=4, linewidth=1.4, label=curve.name)
        tail = [(x, y) for x, y in zip(xs, ys) if x >= x_from]
        if tail:
            zoom.plot(*zip(*tail), marker=".", markersize=4, linewidth=1.4, color=line.get_color())
            zoom_losses.extend(y for _, y in tail)
        grown_at = (growth_x or {}).get(curve.name)
        if grown_at is not None:
            ax.axvline(grown_at, color=line.get_color(), linestyle=":", linewidth=0.8)
    for a in (ax, zoom):
        a.set_xlabel(AXIS_LABELS[axis])
        a.grid(True, alpha=0.3)
    ax.set_ylabel("validation loss (held-out documents)")
    zoom.set_title(f"last {1 - ZOOM_FROM:.0%} of the x range", fontsize=9)
    if zoom_losses:
        pad = 0.05 * (max(zoom_losses) - min(zoom_losses) or 1.0)
        zoom.set_ylim(min(zoom_losses) - pad, max(zoom_losses) + pad)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    logger.info("wrote %s", path)
    return path
