"""Read a megatron-core torch_dist checkpoint without building a model.

A torch_dist checkpoint directory (``iter_XXXXXXX/``) holds ``metadata.json`` (megatron's backend
record), ``common.pt`` (the non-sharded state), ``.metadata`` (PyTorch DCP: every key's global
shape, dtype and the chunks it was saved in) and the ``__R_N.distcp`` shard files. The global
shape of a key does not depend on the TP/PP layout it was saved at, so this reader gives the same
answer for any layout: `tensor_keys()` and `shape(key)` from the metadata, `load_tensor(key)` for
one key's full global tensor (assembled by DCP from whatever chunks the ranks wrote),
`load_layer(key, layer)` for one layer of a layer-stacked key (reading only what it needs), and
`load_object_bytes(key)` for a ShardedObject's serialized bytes, kept as bytes so they can be
re-written verbatim. `layer_records(key)` says where each layer's stored record of a layer-stacked
key lies, so that a growth which only reorders layers can copy records without decoding them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

logger = logging.getLogger(__name__)

CONFIG_FILE = "metadata.json"
DCP_METADATA_FILE = ".metadata"
COMMON_FILE = "common.pt"


@contextmanager
def single_process_dcp() -> Iterator[None]:
    """DCP warns on every no_dist call that it assumes one process: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
        yield


@dataclass(frozen=True)
class StoredRecord:
    """Where one chunk's record (DCP's torch.save bytes of that chunk) lies in a shard file."""

    path: str
    offset: int
    length: int


class _CachedMetadataReader(FileSystemReader):
    """DCP reads `.metadata` on every load; one key per load would re-read it each time."""

    def __init__(self, path: str, metadata: Metadata) -> None:
        super().__init__(path)
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self._metadata


class _RawBytesLoadPlanner(DefaultLoadPlanner):
    """Keeps a BYTE_IO item's bytes as they are instead of unpickling them."""

    def __init__(self) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.raw: dict[str, bytes] = {}

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        self.raw[read_item.dest_index.fqn] = value.read()


class _ChunkLoadPlanner(DefaultLoadPlanner):
    """Reads one box (`chunk`) of `key` into the state dict's tensor of the box's shape: DCP
    computes the reads from the stored chunks that overlap it."""

    def __init__(self, key: str, chunk: ChunkStorageMetadata) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.key, self.chunk = key, chunk

    def create_local_plan(self) -> LoadPlan:
        md = self.metadata.state_dict_metadata[self.key]
        return LoadPlan(create_read_items_for_chunk_list(self.key, md, [self.chunk]))

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        return self.state_dict[index.fqn]  # the box itself; reads carry offsets into it


class DistCheckpointReader:
    """Model-free view of one torch_dist checkpoint directory (``iter_XXXXXXX``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.metadata: Metadata = check_complete(path)
        self._reader = _CachedMetadataReader(path, self.metadata)

    # ---- what is in it -------------------------------------------------------------------------
    def tensor_keys(self) -> list[str]:
        return [k for k, v in self.metadata.state_dict_metadata.items()
                if isinstance(v, TensorStorageMetadata)]

    def object_keys(self) -> list[str]:
        return [k for k, v in self.metadata.state_dict_metadata.items()
                if isinstance(v, BytesStorageMetadata)]

    def tensor_metadata(self, key: str) -> TensorStorageMetadata:
        md = self.metadata.state_dict_metadata.get(key)
        if not isinstance(md, TensorStorageMetadata):
            raise KeyError(f"{self.path}: no tensor {key!r} in the checkpoint")
        return md

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensor_metadata(key).size)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensor_metadata(key).properties.dtype

    def nbytes(self, key: str) -> int:
        md = self.tensor_metadata(key)
        return md.size.numel() * md.properties.dtype.itemsize

    def layer_records(self, key: str) -> Optional[list[StoredRecord]]:
        """For a layer-stacked key, the record of each layer (index = layer), or None.

        None unless every layer was stored as one untransformed chunk spanning the layer's whole
        slice: a key split by tensor parallelism, say, has no record that a target layer could
        reuse as it is.
        """
        md = self.tensor_metadata(key)
        size = tuple(md.size)
        if not size:
            return None
        whole_layer = (1,) + size[1:]
        by_layer: dict[int, torch.Size] = {}
        for chunk in md.chunks:
            if tuple(chunk.sizes) != whole_layer or any(chunk.offsets[1:]):
                return None
            by_layer[chunk.offsets[0]] = chunk.offsets
        if sorted(by_layer) != list(range(size[0])):
            return None
        records = []
        for layer in range(size[0]):
            info = (self.metadata.storage_data or {}).get(MetadataIndex(key, by_layer[layer]))
            if info is None or getattr(info, "transform_descriptors", None):
                return None
            records.append(StoredRecord(os.path.join(self.path, info.relative_path), info.offset,
                                        info.length))
        return records

    # ---- contents ------------------------------------------------------------------------------
    def load_tensor(self, key: str, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The full global tensor of `key`, read into `out` (allocated when not given)."""
        md = self.tensor_metadata(key)
        if out is None:
            out = torch.empty(tuple(md.size), dtype=md.properties.dtype)
        elif tuple(out.shape) != tuple(md.size) or out.dtype != md.properties.dtype:
            raise ValueError(f"{key}: out has {tuple(out.shape)} {out.dtype}, the checkpoint "
                             f"holds {tuple(md.size)} {md.properties.dtype}")
        planner = DefaultLoadPlanner(flatten_state_dict=False, flatten_sharded_tensors=False)
        with single_process_dcp():
            dcp_load({key: out}, storage_reader=self._reader, planner=planner, no_dist=True)
        return out

    def load_layer(self, key: str, layer: int) -> torch.Tensor:
        """Layer `layer` of the layer-stacked `key` (its global tensor's row on axis 0), reading
        only the stored chunks that hold it: memory for one layer, not the whole stack."""
        md = self.tensor_metadata(key)
        size = tuple(md.size)
        if not size or not 0 <= layer < size[0]:
            raise IndexError(f"{key}: layer {layer} of a tensor of shape {size}")
        out = torch.empty((1, *size[1:]), dtype=md.properties.dtype)
        chunk = ChunkStorageMetadata(offsets=torch.Size([layer] + [0] * (len(size) - 1)),
                                     sizes=torch.Size(out.shape))
        with single_process_dcp():
            dcp_load({key: out}, storage_reader=self._reader,
                     planner=_ChunkLoadPlanner(key, chunk), no_dist=True)
        return out[0]

    def load_object_bytes(self, key: str) -> bytes:
        """The bytes megatron-core wrote for the ShardedObject `key` (a torch.save'd list)."""
        if not isinstance(self.metadata.state_dict_metadata.get(key), BytesStorageMetadata):
            raise KeyError(f"{self.path}: no object {key!r} in the checkpoint")
        planner = _RawBytesLoadPlanner()
        with single_process_dcp():
            dcp_load({key: io.BytesIO()}, storage_reader=self._reader, planner=planner,
                     no_dist=True)
        return planner.raw[key]

    def load_common(self) -> dict[str, Any]:
        """common.pt: iteration, args, megastack configs, optimizer param groups, ..."""
        # It holds an argparse Namespace and plain Python objects that the checkpoint's own code
        # wrote, which is what megatron-core's load_common_state_dict trusts as well.
        common_path = os.path.join(self.path, COMMON_FILE)
        try:
            return torch.load(common_path, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise ValueError(f"{self.path} is incomplete: {COMMON_FILE} is missing") from None
        except Exception as e:  # torch.load raises RuntimeError, UnpicklingError, EOFError, ...
            raise _unreadable(common_path, e) from e


def _unreadable(path: str, e: BaseException) -> ValueError:
    """The error for a checkpoint file that exists but cannot be parsed (truncated, corrupt)."""
    return ValueError(f"{path}: unreadable or truncated ({type(e).__name__}: {e}); the "
                      f"checkpoint is damaged, point --load at an intact checkpoint")


def check_complete(path: str) -> Metadata:
    """Raise ValueError naming the path unless `path` is a whole torch_dist checkpoint.

    Returns its DCP metadata (read here to check the shard files against it)."""
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint {path} does not exist or is not a directory")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise ValueError(f"{path} is not a megatron-core distributed checkpoint: {CONFIG_FILE} "
                         f"is missing (an interrupted save leaves this state)")
    try:
        with open(config_path) as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise TypeError(f"expected a JSON object, found {type(config).__name__}")
    except Exception as e:  # empty, truncated, not JSON, not an object, a directory, ...
        raise _unreadable(config_path, e) from e
    backend = config.get("sharded_backend")
    if backend != "torch_dist":
        raise ValueError(f"{config_path}: sharded_backend is {backend!r}; only torch_dist "
                         f"checkpoints can be read without a model")
    for name in (DCP_METADATA_FILE, COMMON_FILE):
        if not os.path.exists(os.path.join(path, name)):
            raise ValueError(f"{path} is incomplete: {name} is missing")
    dcp_metadata_path = os.path.join(path, DCP_METADATA_FILE)
    try:
        metadata = FileSystemReader(path).read_metadata()
        if not isinstance(metadata, Metadata):
            raise TypeError(f"expected DCP Metadata, found {type(metadata).__name__}")
    except Exception as e:  # UnpicklingError, EOFError, IsADirectoryError, ...
        raise _unreadable(dcp_metadata_path, e) from e
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for rel, end in sorted(needed.items()):
        shard = os.path.join(path, rel)
        if not os.path.exists(shard):
            raise ValueError(f"{path} is incomplete: shard file {rel} is missing")
        size = os.path.getsize(shard)
        if size < end:
            raise ValueError(f"{path} is incomplete: shard file {rel} has {size} bytes, "
                             f"the metadata needs {end}")
    return metadata
