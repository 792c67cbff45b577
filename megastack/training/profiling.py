"""Megatron-LM's --profile: a window of training iterations under a profiler.

Iterations [--profile-step-start, --profile-step-end) are profiled (counted as the logs count
them, so also after a resume). With --use-pytorch-profiler the PyTorch profiler writes a trace
for TensorBoard's profiler plugin (or Perfetto) into --tensorboard-dir; otherwise the window is
marked for Nsight Systems (`nsys profile --capture-range=cudaProfilerApi`), with NVTX ranges for
every autograd op. Only the ranks in --profile-ranks profile.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

logger = logging.getLogger(__name__)


class StepProfiler:
    """`begin(iteration)` before each training iteration, `end(iteration)` after it (both with
    the number the iteration will be logged under), `close()` when training stops."""

    def __init__(self, start: int, end: int, use_pytorch_profiler: bool, trace_dir: Optional[str]):
        assert 1 <= start < end, (start, end)
        assert trace_dir or not use_pytorch_profiler, "argument validation requires a trace dir"
        self.first, self.last = start, end - 1
        self.use_pytorch_profiler, self.trace_dir = use_pytorch_profiler, trace_dir
        self._torch_profiler = None
        self._nvtx = None
        self._done = False

    def begin(self, iteration: int) -> None:
        if self._done or self._torch_profiler is not None or self._nvtx is not None:
            return
        if self.use_pytorch_profiler and iteration in (self.first - 1, self.first):
            # One warm-up iteration when there is one before the window (the first profiled
            # steps carry the profiler's own start-up cost).
            warmup = 1 if iteration == self.first - 1 else 0
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._torch_profiler = torch.profiler.profile(
                activities=activities,
                schedule=torch.profiler.schedule(wait=0, warmup=warmup,
                                                 active=self.last - self.first + 1, repeat=1),
                on_trace_ready=torch.profiler.tensorboard_trace_handler(self.trace_dir),
                record_shapes=True, with_stack=True)
            self._torch_profiler.start()
        elif not self.use_pytorch_profiler and iteration == self.first:
            torch.cuda.cudart().cudaProfilerStart()
            self._nvtx = torch.autograd.profiler.emit_nvtx(record_shapes=True)
            self._nvtx.__enter__()
        else:
            return
        logger.info("profiling iterations %d-%d", self.first, self.last)

    def end(self, iteration: int) -> None:
        if self._torch_profiler is not None:
            self._torch_profiler.step()
        if iteration >= self.last:
            self.close()

    def close(self) -> None:
        if self._torch_profiler is not None:
            self._torch_profiler.stop()
            self._torch_profiler = None
            self._done = True
            logger.info("profiled iterations %d-%d: trace in %s", self.first, self.last,
                        self.trace_dir)
        if self._nvtx is not None:
            self._nvtx.__exit__(None, None, None)
            self._nvtx = None
            self._done = True
            torch.cuda.cudart().cudaProfilerStop()
