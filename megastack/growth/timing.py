"""The growth-timing guideline of Du et al. (2024): how many tokens the small model trains for.

    log10(d) = 0.88 * log10(N) + 163.27 / log10(C) - 5.74,   C = 6 * N * D

N is the *target* model's parameter count, D the total training tokens and d the tokens spent on
the small model before growing it by g = 4 (G_stack). The constants were fitted on runs of
410M to 7B parameters; outside that range the formula extrapolates, and at tiny scale it can
return d >= D, which means "do not grow". `growth_warnings` says so instead of staying silent.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)

GROWTH_FACTOR = 4
FITTED_MIN_PARAMS = 4e8  # 410M, the smallest model in the fit
FITTED_MAX_PARAMS = 7e9  # 7B, the largest

_SUFFIXES = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


@dataclass(frozen=True)
class GrowthTiming:
    """The guideline's answer for one (N, D)."""

    target_params: float
    total_tokens: float
    growth_tokens: float  # d
    growth_factor: int
    warnings: tuple[str, ...]


def growth_tokens(target_params: float, total_tokens: float) -> float:
    """Tokens d to train the small model before growing (may be inf when C is tiny)."""
    _check_positive(target_params, "target parameter count N")
    _check_positive(total_tokens, "total token count D")
    log_c = math.log10(6.0 * target_params * total_tokens)
    if log_c <= 0:
        raise ValueError(
            f"the guideline needs C = 6*N*D > 1 FLOP, got N={target_params:g}, D={total_tokens:g}"
        )
    log_d = 0.88 * math.log10(target_params) + 163.27 / log_c - 5.74
    try:
        return 10.0 ** log_d
    except OverflowError:
        return math.inf


def growth_warnings(target_params: float, total_tokens: float, tokens: float | None = None) -> list[str]:
    """Plain-language reasons not to trust `growth_tokens` for these inputs (empty if none)."""
    d = growth_tokens(target_params, total_tokens) if tokens is None else tokens
    out = []
    if d >= total_tokens:
        out.append(
            f"d = {format_count(d)} tokens is not smaller than the total budget D = "
            f"{format_count(total_tokens)}: the guideline says growth does not pay off at this "
            f"scale; train the target model from scratch or grow much earlier by choice"
        )
    if target_params < FITTED_MIN_PARAMS:
        out.append(
            f"N = {format_count(target_params)} parameters is below the fitted range "
            f"({format_count(FITTED_MIN_PARAMS)}-{format_count(FITTED_MAX_PARAMS)}): d is an extrapolation"
        )
    elif target_params > FITTED_MAX_PARAMS:
        out.append(
            f"N = {format_count(target_params)} parameters is above the fitted range "
            f"({format_count(FITTED_MIN_PARAMS)}-{format_count(FITTED_MAX_PARAMS)}): d is an extrapolation"
        )
    return out


def growth_timing(target_params: float, total_tokens: float) -> GrowthTiming:
    """d, g = 4 and the warnings in one object. Callers show the warnings (the tool prints
    them, the trainer logs them), so they are not logged twice here."""
    d = growth_tokens(target_params, total_tokens)
    warnings = tuple(growth_warnings(target_params, total_tokens, d))
    logger.debug("growth timing N=%g D=%g -> d=%g (%d warnings)", target_params, total_tokens, d,
                 len(warnings))
    return GrowthTiming(target_params, total_tokens, d, GROWTH_FACTOR, warnings)


def parse_count(text: str) -> float:
    """'7e9', '7000000000', '7B', '2T', '410M', '1.5k' -> float."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", str(text))
    if not m:
        raise ValueError(
            f"cannot read {text!r} as a count: use a number such as 7e9 or 7000000000, or a "
            f"suffix K/M/B/T such as 7B or 2T"
        )
    value = float(m.group(1)) * _SUFFIXES[m.group(2).upper()]
    _check_positive(value, repr(text))
    return value


def format_count(value: float) -> str:
    """11110000000 -> '11.11B' (two decimals, the paper's style)."""
    if math.isinf(value):
        return "inf"
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.2f}"


def _check_positive(value: float, what: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
