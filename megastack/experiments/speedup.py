"""The paper's speedup: how much more a scratch run needs to reach a loss than a grown run.

    speedup = x_scratch(L) / x_grown(L) - 1

x is tokens or FLOPs, x_run(L) the first point where the run's validation loss reaches L,
interpolated linearly between evaluations. Du et al. report it at L = the scratch run's final
loss (7B: 300B / 194B - 1 = 54.6%). A run that never reaches L gives a bound, not a number:
if scratch never gets there the speedup is at least x_scratch(end) / x_grown(L) - 1; if the
grown run never gets there it is at most x_scratch(L) / x_grown(end) - 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from megastack.experiments.curves import Curve


def first_crossing(xs: Sequence[float], losses: Sequence[float], target: float) -> Optional[float]:
    """The smallest x at which the piecewise-linear curve through (xs, losses) reaches `target`
    (loss <= target), or None when it never does. xs must increase."""
    if len(xs) != len(losses):
        raise ValueError(f"{len(xs)} x values but {len(losses)} losses")
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError("x values of a curve must strictly increase")
    for i, (x, loss) in enumerate(zip(xs, losses)):
        if loss <= target:
            if i == 0:
                return float(x)
            x0, l0 = xs[i - 1], losses[i - 1]
            # l0 > target >= loss: the segment crosses the target once.
            return float(x0 + (x - x0) * (l0 - target) / (l0 - loss))
    return None


@dataclass(frozen=True)
class Speedup:
    """`value` is exact when kind == "exact"; a bound for "lower_bound"/"upper_bound"; None
    (with `reason`) when neither run reaches the loss."""

    axis: str
    target_loss: float
    value: Optional[float]
    kind: Optional[str]
    scratch_x: Optional[float]  # x at which scratch reaches the loss (None: never)
    grown_x: Optional[float]
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.value is None:
            return f"n/a ({self.reason})"
        sign = {"exact": "", "lower_bound": ">= ", "upper_bound": "<= "}[self.kind]
        return f"{sign}{self.value:+.1%}"


def speedup_at_loss(scratch: Curve, grown: Curve, target_loss: float, axis: str) -> Speedup:
    xs_s, xs_g = scratch.xs(axis), grown.xs(axis)
    s = first_crossing(xs_s, scratch.losses(), target_loss)
    g = first_crossing(xs_g, grown.losses(), target_loss)
    if s is not None and g is not None:
        return Speedup(axis, target_loss, s / g - 1.0, "exact", s, g)
    if s is None and g is not None:
        return Speedup(axis, target_loss, xs_s[-1] / g - 1.0, "lower_bound", None, g,
                       f"scratch never reaches loss {target_loss:.4f} within its "
                       f"{xs_s[-1]:.4g} {axis}: it would need more")
    if s is not None and g is None:
        return Speedup(axis, target_loss, s / xs_g[-1] - 1.0, "upper_bound", s, None,
                       f"the grown run never reaches loss {target_loss:.4f} within its "
                       f"{xs_g[-1]:.4g} {axis}")
    return Speedup(axis, target_loss, None, None, None, None,
                   f"neither run reaches loss {target_loss:.4f}")


def paper_speedup(scratch: Curve, grown: Curve, axis: str) -> Speedup:
    """The speedup at the scratch run's final validation loss, as the paper reports it."""
    return speedup_at_loss(scratch, grown, scratch.final.loss, axis)
