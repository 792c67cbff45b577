"""Training metrics: throughput, MFU, weight norm, step timers, and the scalar writers
(TensorBoard, and Weights & Biases when asked for)."""

from __future__ import annotations

import logging
import time
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


def params_l2_norm(chunks) -> float:
    """The L2 norm of the whole model's weights, the same at every TP/PP layout: each weight
    counted once (not the tensor-parallel copies of norms and row-parallel biases, not the output
    layer's copy of a tied embedding), summed over the model-parallel ranks. Collective over
    them; data-parallel ranks hold the same weights."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared

    device = next(chunks[0].parameters()).device
    squares = torch.zeros(1, dtype=torch.float64, device=device)
    for chunk in chunks:
        for p in chunk.parameters():
            if param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p):
                squares += p.detach().double().square().sum()
    torch.distributed.all_reduce(squares, group=parallel_state.get_model_parallel_group())
    return squares.sqrt().item()


def cuda_memory_scalars() -> dict[str, float]:
    """Megatron-LM's --log-memory-to-tensorboard counters; empty without CUDA."""
    if not torch.cuda.is_available():
        return {}
    stats = torch.cuda.memory_stats()
    return {"mem-reserved-bytes": stats["reserved_bytes.all.current"],
            "mem-allocated-bytes": stats["allocated_bytes.all.current"],
            "mem-max-allocated-bytes": stats["allocated_bytes.all.peak"],
            "mem-allocated-count": stats["allocation.all.current"]}


class StepTimer:
    """--log-timers-to-tensorboard: seconds between laps (the device synchronised first)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.times: dict[str, float] = {}
        self._last = self._now() if enabled else 0.0

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, name: str) -> None:
        if self.enabled:
            now = self._now()
            self.times[name], self._last = now - self._last, now


class TensorBoardWriter:
    """Scalars under Megatron-LM's tag names, the iteration as the step; a no-op without a dir."""

    def __init__(self, log_dir: Optional[str], queue_size: int = 1000):
        self._writer = None
        if log_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=log_dir, max_queue=queue_size)

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


class ScalarWriters:
    """The same scalars to several writers (TensorBoard, W&B), each with that interface."""

    def __init__(self, writers: list) -> None:
        self.writers = writers

    def scalars(self, values: dict[str, float], step: int) -> None:
        for w in self.writers:
            w.scalars(values, step)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()
