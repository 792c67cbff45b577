"""Megatron-LM's --record-memory-history: the CUDA caching allocator's history of allocations
(with their Python stacks), dumped as a snapshot for PyTorch's memory visualizer
(https://pytorch.org/memory_viz) to find what fills the memory, or what did when it ran out.
"""

from __future__ import annotations

import logging
import os
import pickle

import torch

logger = logging.getLogger(__name__)

# Allocation events kept (as Megatron-LM): enough for several iterations of a large model.
MAX_ENTRIES = 100_000


class MemoryHistory:
    """Records from construction to `close()`. `dump()` writes the snapshot to `path`; on an
    out-of-memory error every recording rank writes ``oom_rank-R_<name>`` beside it."""

    def __init__(self, path: str, rank: int) -> None:
        self.path, self.rank = path, rank
        torch.cuda.memory._record_memory_history(max_entries=MAX_ENTRIES)
        torch._C._cuda_attach_out_of_memory_observer(self._on_out_of_memory)
        logger.info("recording CUDA memory history (--memory-snapshot-path %s)", path)

    def dump(self, path: str | None = None) -> None:
        path = path or self.path
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            pickle.dump(torch.cuda.memory._snapshot(), f)
        os.replace(tmp, path)  # a reader never sees half a snapshot

    def _on_out_of_memory(self, device, alloc, device_alloc, device_free) -> None:
        directory, name = os.path.split(self.path)
        path = os.path.join(directory, f"oom_rank-{self.rank}_{name}")
        logger.error("CUDA out of memory on rank %d: writing the allocator history to %s",
                     self.rank, path)
        self.dump(path)

    def close(self) -> None:
        torch.cuda.memory._record_memory_history(enabled=None)
