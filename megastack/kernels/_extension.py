"""Finding the compiled extension `megastack._kernels` and deciding which path runs.

The extension is optional: without it (no CUDA, not built, or MEGASTACK_SKIP_KERNELS=1) every
op runs its PyTorch reference. The choice is logged once, as one line.
"""

from __future__ import annotations

import functools
import logging
import os
from types import ModuleType
from typing import Optional

import torch

logger = logging.getLogger("megastack.kernels")

SKIP_ENV = "MEGASTACK_SKIP_KERNELS"


@functools.lru_cache(maxsize=None)
def _resolve() -> tuple[Optional[ModuleType], str]:
    if os.environ.get(SKIP_ENV) == "1":
        return None, f"{SKIP_ENV}=1"
    if not torch.cuda.is_available():
        return None, "no CUDA device"
    try:
        from megastack import _kernels  # type: ignore[attr-defined]
    except ImportError as exc:  # not built, or built against another torch/CUDA
        return None, f"extension megastack._kernels not importable ({exc})"
    return _kernels, "megastack._kernels"


@functools.lru_cache(maxsize=None)
def _announce() -> None:
    ext, why = _resolve()
    if ext is not None:
        logger.info("megastack kernels: using fused CUDA kernels (%s)", why)
    else:
        logger.info("megastack kernels: using PyTorch reference (%s)", why)


def extension() -> Optional[ModuleType]:
    """The compiled extension module, or None when the reference path is in use."""
    _announce()
    return _resolve()[0]


def kernels_available() -> bool:
    """True when the fused CUDA kernels will run for CUDA tensors."""
    return extension() is not None
