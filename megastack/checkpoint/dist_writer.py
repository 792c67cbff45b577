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
never holds the (several times larger) stacked tensor. Items are written in plan order, one at a
time, and the plan lists every key's chunks together.

Verbatim records: when a layer chunk of the target is exactly a layer chunk stored in a source
checkpoint (same whole-layer shape and dtype, e.g. G_stack at an unchanged tensor-parallel size),
its record (the torch.save bytes DCP stores per chunk, which hold no offsets) is copied byte for
byte with ``os.copy_file_range`` instead of being decoded and serialized again. That is what
keeps stacking close to the speed of ``cp``. Records of other layouts go through the producer.
"""

from __future__ import annotations

import errno
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
from torch.distributed.checkpoint.filesystem import DEFAULT_SUFFIX, _StorageInfo
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
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from megastack.checkpoint.dist_reader import (
    COMMON_FILE,
    CONFIG_FILE,
    StoredRecord,
    single_process_dcp,
)

logger = logging.getLogger(__name__)

# What megatron-core's `save_config(CheckpointingConfig("torch_dist"), dir)` writes; spelled out
# so the offline tool does not import megatron-core (tens of seconds on a small machine).
TORCH_DIST_CONFIG = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                     "common_backend": "torch", "common_backend_version": 1}

TensorProducer = Callable[[], torch.Tensor]
LayerProducer = Callable[[int], torch.Tensor]
BytesProducer = Callable[[], bytes]


@dataclass
class _TensorEntry:
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Optional[TensorProducer]
    chunk_offsets: list[tuple[int, ...]]
    chunk_sizes: list[tuple[int, ...]]
    rows: Optional[tuple[int, ...]] = None  # layer chunk i is row rows[i] of the produced tensor
    records: Optional[tuple[StoredRecord, ...]] = None  # layer chunk i is copied from records[i]
    produce_layer: Optional[LayerProducer] = None  # layer chunk i is produce_layer(i)


@dataclass
class _ObjectEntry:
    key: str
    produce: BytesProducer


@dataclass(frozen=True)
class WriteStats:
    tensors: int
    objects: int
    tensor_bytes: int
    produced: int  # producer calls: one per tensor without records when streaming worked
    copied_records: int  # chunks copied verbatim from a source checkpoint


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
        self.copied_records = 0
        # The first error while writing (a producer's or a copy's), re-raised unwrapped by `write`.
        self.error: Optional[BaseException] = None
        self._buffer: Optional[torch.Tensor] = None

    def stored_record(self, write_item: WriteItem) -> Optional[StoredRecord]:
        """The source record this item is a verbatim copy of, if any."""
        if write_item.type == WriteItemType.BYTE_IO:
            return None
        entry = self._tensors[write_item.index.fqn]
        if entry.records is None:
            return None
        self.copied_records += 1
        return entry.records[write_item.tensor_data.chunk.offsets[0]]

    def create_local_plan(self) -> SavePlan:
        self.plan = SavePlan(items=self._items)
        return self.plan

    def resolve_data(self, write_item: WriteItem) -> Union[torch.Tensor, io.BytesIO]:
        key = write_item.index.fqn
        if write_item.type == WriteItemType.BYTE_IO:
            return io.BytesIO(self._objects[key].produce())
        entry = self._tensors[key]
        if entry.produce_layer is not None:
            layer = write_item.tensor_data.chunk.offsets[0]
            self.produced += 1
            return self._owning(_checked_layer(entry, entry.produce_layer(layer)).unsqueeze(0))
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
        next one (`_StreamingFileWriter` writes each item before resolving the next).
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


def _checked_layer(entry: _TensorEntry, tensor: torch.Tensor) -> torch.Tensor:
    if tuple(tensor.shape) != entry.shape[1:] or tensor.dtype != entry.dtype:
        raise ValueError(f"{entry.key}: produced a layer of {tuple(tensor.shape)} {tensor.dtype}, "
                         f"declared {entry.shape[1:]} {entry.dtype}")
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


class _StreamingFileWriter(FileSystemWriter):
    """DCP's FileSystemWriter, writing the plan's items in order into one file, one at a time.

    Items are serialized as DCP does (torch.save per tensor chunk, raw bytes for BYTE_IO), except
    that a chunk with a stored source record gets that record's bytes copied verbatim. DCP's own
    write_data cannot take pre-serialized bytes for a tensor item, hence this override; `finish`
    (the `.metadata` file) is DCP's.
    """

    def write_data(self, plan: SavePlan, planner: _StreamingSavePlanner) -> Future:
        try:
            return self._write_items(plan, planner)
        except BaseException as e:
            planner.error = planner.error or e  # DCP wraps it; `write` re-raises it as it was
            raise

    def _write_items(self, plan: SavePlan, planner: _StreamingSavePlanner) -> Future:
        file_name = f"{plan.storage_data.prefix}0{DEFAULT_SUFFIX}"
        results = []
        with open(os.path.join(self.path, file_name), "wb", buffering=0) as raw:
            stream = _WholeWriteFile(raw.fileno())
            copier = _RecordCopier(raw.fileno())
            for item in plan.items:
                offset = stream.tell()
                record = planner.stored_record(item)
                if record is not None:
                    copier.copy(record)
                elif item.type == WriteItemType.BYTE_IO:
                    stream.write(planner.resolve_data(item).getbuffer())
                else:
                    torch.save(planner.resolve_data(item), stream)
                length = stream.tell() - offset
                results.append(WriteResult(index=item.index, size_in_bytes=length,
                                           storage_data=_StorageInfo(file_name, offset, length)))
            if self.sync_files:
                os.fsync(raw.fileno())
        future: Future = Future()
        future.set_result(results)
        return future


class _WholeWriteFile:
    """The file object torch.save writes to: unbuffered, so that verbatim copies can go through
    the same file descriptor, and looping until every byte is written (one write(2) stops at
    2 GiB, and a layer chunk or an embedding can be larger)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            view = view[os.write(self.fd, view):]
        return total

    def tell(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def flush(self) -> None:
        """Nothing to flush: every write went straight to the descriptor."""


class _RecordCopier:
    """Appends byte ranges of other files to `out_fd`: in the kernel where it can, else by reads."""

    _BLOCK = 16 << 20

    def __init__(self, out_fd: int) -> None:
        self.out_fd = out_fd
        self._in_kernel = hasattr(os, "copy_file_range")

    def copy(self, record: StoredRecord) -> None:
        with open(record.path, "rb", buffering=0) as source:
            offset, remaining = record.offset, record.length
            while remaining:
                n = self._copy_some(source.fileno(), offset, remaining)
                if n == 0:
                    raise ValueError(f"{record.path} ends before byte {record.offset + record.length} "
                                     f"that its checkpoint's .metadata points to: the source is "
                                     f"truncated")
                offset += n
                remaining -= n

    def _copy_some(self, in_fd: int, offset: int, count: int) -> int:
        if self._in_kernel:
            try:
                return os.copy_file_range(in_fd, self.out_fd, count, offset)
            except OSError as e:  # e.g. across file systems on older kernels, or unsupported
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self._in_kernel = False
        data = os.pread(in_fd, min(count, self._BLOCK), offset)
        return _WholeWriteFile(self.out_fd).write(data)


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
        produce: Optional[TensorProducer],
        *,
        layer_stacked: bool = False,
        rows: Optional[Sequence[int]] = None,
        records: Optional[Sequence[StoredRecord]] = None,
        produce_layer: Optional[LayerProducer] = None,
    ) -> None:
        """Register `key` with its global shape; `produce()` returns the full global tensor.

        `layer_stacked` keys (axis 0 = layer) are written one chunk per layer, as megatron does.
        With `rows`, `produce()` instead returns a tensor whose row ``rows[i]`` is layer i (a
        gather on write: G_stack writes source rows without materialising the stacked tensor).
        With `records`, layer i is a verbatim copy of ``records[i]``, a stored record of the same
        whole-layer shape and dtype, and `produce` is not called. With `produce_layer` (and
        `produce` None), layer i is ``produce_layer(i)``: one layer in memory at a time.
        """
        self._claim(key)
        assert (produce is None) == (produce_layer is not None), key
        assert produce_layer is None or (layer_stacked and rows is None and records is None), key
        shape = tuple(int(s) for s in shape)
        if rows is not None:
            rows = tuple(int(r) for r in rows)
            if not layer_stacked or len(rows) != shape[0] or min(rows) < 0:
                raise ValueError(f"{key}: rows must give one non-negative source row per layer "
                                 f"of {shape}, got {list(rows)}")
        if records is not None:
            records = tuple(records)
            if not layer_stacked or len(records) != shape[0]:
                raise ValueError(f"{key}: records must give one stored record per layer of "
                                 f"{shape}, got {len(records)}")
        if layer_stacked and shape and (shape[0] > 1 or rows is not None or records is not None):
            offsets = [(i,) + (0,) * (len(shape) - 1) for i in range(shape[0])]
            sizes = [(1,) + shape[1:]] * shape[0]
        else:
            offsets, sizes = [(0,) * len(shape)], [shape]
        self._tensors.append(_TensorEntry(key, shape, dtype, produce, offsets, sizes, rows, records,
                                          produce_layer))

    def add_object(self, key: str, produce: BytesProducer) -> None:
        """Register a ShardedObject by unique key; `produce()` returns its serialized bytes."""
        self._claim(key)
        self._objects.append(_ObjectEntry(key, produce))

    def write(self, common: dict[str, Any]) -> WriteStats:
        os.makedirs(self.path, exist_ok=True)
        planner = _StreamingSavePlanner(self._tensors, self._objects)
        storage = _StreamingFileWriter(self.path, single_file_per_rank=True, sync_files=self.fsync)
        try:
            with single_process_dcp():
                dcp_save({}, storage_writer=storage, planner=planner, no_dist=True)
        except CheckpointException as e:
            # DCP wraps whatever a producer or the copy raised (e.g. a ValueError naming a file):
            # surface it.
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
            tensor_bytes=sum(torch.Size(t.shape).numel() * t.dtype.itemsize for t in self._tensors),
            produced=planner.produced,
            copied_records=planner.copied_records,
        )
        expected_calls = sum(len(t.chunk_offsets) if t.produce_layer else t.records is None
                             for t in self._tensors)
        if stats.produced != expected_calls:
            logger.warning("%s: %d tensor producer calls for %d produced tensors (items were "
                           "reordered)", self.path, stats.produced, expected_calls)
        logger.info("wrote %s: %d tensors (%.1f MB, %d layer records copied verbatim), %d objects",
                    self.path, stats.tensors, stats.tensor_bytes / 1e6, stats.copied_records,
                    stats.objects)
        return stats

    def _claim(self, key: str) -> None:
        if key in self._keys:
            raise ValueError(f"checkpoint key {key!r} added twice")
        self._keys.add(key)
