"""Capturing a step (e.g. a forward + backward of the fused ops) in a CUDA graph."""

from __future__ import annotations

from typing import Any, Callable

import torch


def capture(step: Callable[[], Any], warmup: int = 3) -> tuple[torch.cuda.CUDAGraph, Any]:
    """(graph, what the captured call of `step` returned). The step is first run `warmup`
    times on a side stream, as torch.cuda.graph's documentation requires (allocator pools,
    lazy initialisation and torch.compile must not happen during capture). Replaying the
    graph reruns the captured kernels on the same tensors."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out
