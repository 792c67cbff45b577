"""Write a megatron-core torch_dist checkpoint tensor by tensor, without a model.

The output is what `megatron.core.dist_checkpointing.save` produces with the torch_dist backend,
so `dist_checkpointing.load(model.sharded_state_dict(), dir)` at any TP/PP layout reads it:

- ``.metadata`` + ``__0_0.distcp``: one PyTorch DCP save. Every key is stored under its plain
  ShardedTensor key (megatron-core's torch_dist strategy adds no prefix or flattening for regular
  tensors) with its global shape; layer-stacked keys are split into one chunk per layer as
  megatron-core saves them. DCP's reader assembles any slice a loading rank asks for from these
  chunks, which is what makes the checkpoint layout-free.
- ShardedObjects (e.g. per-layer ``_extra_state``) are BYTE_IO entries under their unique key
  (``<key>/shard_<offset>_<shape>``) holding ``torch.save([obj])`` bytes.
- ``common.pt``: ``torch.save`` of the common (non-sharded) state dict.
- ``metadata.json``: megatron's backend record (`TORCH_DIST_CONFIG`), written last.

Streaming: the whole checkpoint is one DCP save whose planner produces each tensor only when the
storage writer asks for its first chunk, and forgets it after the last one, so peak memory stays
near the largest single tensor rather than the checkpoint size. A layer-stacked key may be
produced as its *source* tensor plus the row each target layer copies (`rows`), so pure stacking
never holds the (several times larger) stacked tensor. DCP's FileSystemWriter with one
thread writes items in plan order (it sorts by size only when it splits work over threads), and
the plan lists every key's chunks together.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch.distributed.checkpoint import CheckpointException, FileSystemWriter
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import (
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)

from megastack.checkpoint.dist_reader import CONFIG_FILE, COMMON_FILE, single_process_dcp

logger = logging.getLogger(__name__)

# What megatron-core's `save_config(CheckpointingConfig("torch_dist"), dir)` writes; spelled out
# so the offline tool does not import megatron-core (tens of seconds on a small machine).
TORCH_DIST_CONFIG = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                     "common_backend": "torch", "common_backend_version": 1}

TensorProducer = Callable[[], torch.Tensor]
BytesProducer = Callable[[], bytes]


@dataclass
class _TensorEntry:
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: TensorProducer
    chunk_offsets: list[tuple[int, ...]]
    chunk_sizes: list[tuple[int, ...]]
    rows: Optional[tuple[int, ...]] = None  # layer chunk i is row rows[i] of the produced tensor


@dataclass
class _ObjectEntry:
    key: str
    produce: BytesProducer


@dataclass(frozen=True)
class WriteStats:
    tensors: int
    objects: int
    tensor_bytes: int
    produced: int  # producer calls; equals `tensors` when streaming worked as planned


class _StreamingSavePlanner(DefaultSavePlanner):
    """A DCP save planner whose items come from producers instead of an in-memory state dict."""

    def __init__(self, tensors: list[_TensorEntry], objects: list[_ObjectEntry]) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._tensors = {t.key: t for t in tensors}
        self._objects = {o.key: o for o in objects}
        self._items = _write_items(tensors, objects)
        self._current_key: Optional[str] = None
        self._current: Optional[torch.Tensor] = None
        self._served = 0
        self.produced = 0
        self.error: Optional[BaseException] = None  # first producer error, re-raised unwrapped
        self._buffer: Optional[torch.Tensor] = None

    def resolve_data(self, write_item: WriteItem) -> Union[torch.Tensor, io.BytesIO]:
        try:
            return self._resolve(write_item)
        except BaseException as e:
            self.error = self.error or e
            raise

    def create_local_plan(self) -> SavePlan:
        self.plan = SavePlan(items=self._items)
        return self.plan

    def _resolve(self, write_item: WriteItem) -> Union[torch.Tensor, io.BytesIO]:
        key = write_item.index.fqn
        if write_item.type == WriteItemType.BYTE_IO:
            return io.BytesIO(self._objects[key].produce())
        entry = self._tensors[key]
        if self._current_key != key:
            self._current, self._current_key, self._served = None, None, 0  # free before producing
            self._current = _checked(entry, entry.produce())
            self._current_key = key
            self.produced += 1
        chunk = self._owning(_chunk_view(self._current, write_item.tensor_data.chunk, entry.rows))
        self._served += 1
        if self._served == len(entry.chunk_offsets):
            self._current, self._current_key, self._served = None, None, 0
        return chunk


    def _owning(self, view: torch.Tensor) -> torch.Tensor:
        """A chunk that owns its whole storage, as torch.save needs (it saves whole storages).

        DCP would clone each view into fresh memory; reusing one buffer saves the allocation and
        page faults per chunk. Safe because the serial loader writes a chunk before resolving the
        next one (`write` disables DCP's copy-ahead loader).
        """
        if view.is_contiguous() and view.untyped_storage().nbytes() == view.nbytes:
            return view
        buf = self._buffer
        if buf is None or buf.shape != view.shape or buf.dtype != view.dtype:
            buf = self._buffer = torch.empty(view.shape, dtype=view.dtype)
        return buf.copy_(view)


def _write_items(tensors: list[_TensorEntry], objects: list[_ObjectEntry]) -> list[WriteItem]:
    items = [WriteItem(index=MetadataIndex(o.key), type=WriteItemType.BYTE_IO) for o in objects]
    for t in tensors:
        properties = TensorProperties(dtype=t.dtype)
        for offsets, sizes in zip(t.chunk_offsets, t.chunk_sizes):
            items.append(WriteItem(
                index=MetadataIndex(t.key, torch.Size(offsets)),
                # SHARD (as for megatron's torch ShardedTensors) lets one key have many chunks.
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(
                    chunk=ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes)),
                    properties=properties,
                    size=torch.Size(t.shape),
                ),
            ))
    return items


def _checked(entry: _TensorEntry, tensor: torch.Tensor) -> torch.Tensor:
    shape = tuple(tensor.shape)
    if entry.rows is None:
        ok = shape == entry.shape
    else:
        ok = shape[1:] == entry.shape[1:] and len(shape) > 0 and max(entry.rows) < shape[0]
    if not ok or tensor.dtype != entry.dtype:
        declared = entry.shape if entry.rows is None else f"rows {max(entry.rows)} of {entry.shape}"
        raise ValueError(f"{entry.key}: produced {shape} {tensor.dtype}, declared {declared} "
                         f"{entry.dtype}")
    return tensor.detach().cpu()


def _chunk_view(tensor: torch.Tensor, chunk: ChunkStorageMetadata,
                rows: Optional[tuple[int, ...]] = None) -> torch.Tensor:
    view = tensor
    for dim, (off, size) in enumerate(zip(chunk.offsets, chunk.sizes)):
        if dim == 0 and rows is not None:  # one-layer chunk gathered from its source row
            view = view.narrow(0, rows[off], 1)
        elif off != 0 or size != tensor.shape[dim]:
            view = view.narrow(dim, off, size)
    return view


class DistCheckpointWriter:
    """Collects keys with producers, then writes one torch_dist checkpoint directory.

    `path` must not exist yet or be empty; callers publish it (rename) once `write` returns.
    """

    def __init__(self, path: str, *, fsync: bool = True) -> None:
        if os.path.exists(path) and os.listdir(path):
            raise ValueError(f"{path} already holds files; the writer only fills empty directories")
        self.path = path
        self.fsync = fsync
        self._tensors: list[_TensorEntry] = []
        self._objects: list[_ObjectEntry] = []
        self._keys: set[str] = set()

    def add_tensor(
        self,
        key: str,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        produce: TensorProducer,
        *,
        layer_stacked: bool = False,
        rows: Optional[Sequence[int]] = None,
    ) -> None:
        """Register `key` with its global shape; `produce()` returns the full global tensor.

        `layer_stacked` keys (axis 0 = layer) are written one chunk per layer, as megatron does.
        With `rows`, `produce()` instead returns a tensor whose row ``rows[i]`` is layer i (a
        gather on write: G_stack writes source rows without materialising the stacked tensor).
        """
        self._claim(key)
        shape = tuple(int(s) for s in shape)
        if rows is not None:
            rows = tuple(int(r) for r in rows)
            if not layer_stacked or len(rows) != shape[0] or min(rows) < 0:
                raise ValueError(f"{key}: rows must give one non-negative source row per layer "
                                 f"of {shape}, got {list(rows)}")
        if layer_stacked and shape and (shape[0] > 1 or rows is not None):
            offsets = [(i,) + (0,) * (len(shape) - 1) for i in range(shape[0])]
            sizes = [(1,) + shape[1:]] * shape[0]
        else:
            offsets, sizes = [(0,) * len(shape)], [shape]
        self._tensors.append(_TensorEntry(key, shape, dtype, produce, offsets, sizes, rows))

    def add_object(self, key: str, produce: BytesProducer) -> None:
        """Register a ShardedObject by unique key; `produce()` returns its serialized bytes."""
        self._claim(key)
        self._objects.append(_ObjectEntry(key, produce))

    def write(self, common: dict[str, Any]) -> WriteStats:
        os.makedirs(self.path, exist_ok=True)
        planner = _StreamingSavePlanner(self._tensors, self._objects)
        # One thread and no copy-ahead: items are resolved one at a time, in plan order, each
        # written before the next is resolved (what streaming and the chunk buffer rely on).
        storage = FileSystemWriter(self.path, single_file_per_rank=True, sync_files=self.fsync,
                                   thread_count=1, per_thread_copy_ahead=0)
        try:
            with single_process_dcp():
                dcp_save({}, storage_writer=storage, planner=planner, no_dist=True)
        except CheckpointException as e:
            # DCP wraps whatever a producer raised (e.g. a ValueError about the plan): surface it.
            if planner.error is not None:
                raise planner.error from e
            raise
        torch.save(common, os.path.join(self.path, COMMON_FILE))
        # metadata.json marks a directory as a distributed checkpoint: it goes in last.
        with open(os.path.join(self.path, CONFIG_FILE), "w") as f:
            json.dump(TORCH_DIST_CONFIG, f)
        stats = WriteStats(
            tensors=len(self._tensors),
            objects=len(self._objects),
            tensor_bytes=sum(torch.Size(t.shape).numel() * _itemsize(t.dtype) for t in self._tensors),
            produced=planner.produced,
        )
        if stats.produced != stats.tensors:
            logger.warning("%s: %d tensor producer calls for %d tensors (items were reordered)",
                           self.path, stats.produced, stats.tensors)
        logger.info("wrote %s: %d tensors (%.1f MB), %d objects", self.path, stats.tensors,
                    stats.tensor_bytes / 1e6, stats.objects)
        return stats

    def _claim(self, key: str) -> None:
        if key in self._keys:
            raise ValueError(f"checkpoint key {key!r} added twice")
        self._keys.add(key)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
