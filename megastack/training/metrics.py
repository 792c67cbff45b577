"""Training metrics: throughput, model FLOPs utilisation, and the TensorBoard writer."""

from __future__ import annotations

import logging
from typing import Optional

import torch

logger = logging.getLogger(__name__)

# Dense bf16 peak TFLOP/s per GPU (no sparsity), by device-name substring.
_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops() -> Optional[float]:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, value in _PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


class TensorBoardWriter:
    """Scalars under Megatron-LM's tag names, the iteration as the step; a no-op without a dir."""

    def __init__(self, log_dir: Optional[str]):
        self._writer = None
        if log_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=log_dir, max_queue=100)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
