"""Write (and read the index of) megatron-core's ``.bin``/``.idx`` format with numpy alone.

megatron-core's ``IndexedDatasetBuilder`` imports torch (seconds of start-up) and keeps every
sequence length in a Python list (~36 bytes each). This writer produces byte-identical files
(tests/data/test_indexed_writer.py compares them) while keeping lengths in compact
``array.array`` buffers, and makes the files appear only when complete: it writes
``PREFIX.bin.tmp-PID`` / ``PREFIX.idx.tmp-PID`` and renames them at the end, ``.bin`` first, so a
``.idx`` on disk always describes a complete ``.bin``.
"""

import os
import shutil
import struct
from array import array
from dataclasses import dataclass
from typing import Iterable

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
# megatron.core.datasets.indexed_dataset.DType codes
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6,
               np.float32: 7, np.uint16: 8}
_DTYPE_BY_CODE = {code: dtype for dtype, code in DTYPE_CODES.items()}
# Pointers are written in slices so a huge index never needs one big temporary array.
_POINTER_SLICE = 1 << 20


def optimal_token_dtype(vocab_size: int) -> type:
    """Megatron's rule (DType.optimal_dtype): uint16 below 65500 ids, else int32."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


def bin_path(prefix: str) -> str:
    return prefix + ".bin"


def idx_path(prefix: str) -> str:
    return prefix + ".idx"


def _tmp(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


class IndexedDatasetWriter:
    """Append documents (each a token array split into one or more sequences), then finalize.

    Use as a context manager: leaving the block with an exception removes the partial files.
    """

    def __init__(self, prefix: str, dtype: type) -> None:
        if dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported token dtype {dtype}")
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        self._code = DTYPE_CODES[dtype]
        self._bin_tmp = _tmp(bin_path(prefix))
        self._idx_tmp = _tmp(idx_path(prefix))
        parent = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(parent, exist_ok=True)
        self._bin = open(self._bin_tmp, "wb")
        self._sequence_lengths = array("i")  # int32, as in the .idx
        self._document_indices = array("q", [0])  # int64: sequence count at each document end
        self._finalized = False

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._finalized:
            self.abort()

    @property
    def num_documents(self) -> int:
        return len(self._document_indices) - 1

    def add_documents(self, tokens: np.ndarray, sequence_lengths: np.ndarray,
                      sequences_per_document: np.ndarray) -> None:
        """Append many documents at once: ``tokens`` concatenated, lengths per sequence,
        and the number of sequences in each document."""
        tokens = np.asarray(tokens)
        if tokens.dtype != self.dtype:
            tokens = tokens.astype(self.dtype)
        self._bin.write(tokens.tobytes())
        self._sequence_lengths.frombytes(np.asarray(sequence_lengths, np.int32).tobytes())
        ends = self._document_indices[-1] + np.cumsum(np.asarray(sequences_per_document, np.int64))
        self._document_indices.frombytes(ends.tobytes())

    def add_document(self, tokens: Iterable[int], sequence_lengths: Iterable[int]) -> None:
        lengths = np.asarray(list(sequence_lengths), np.int32)
        self.add_documents(np.asarray(list(tokens)), lengths, np.array([len(lengths)]))

    def add_index(self, prefix: str) -> None:
        """Append a whole existing dataset (same dtype): the merge operation."""
        index = read_index(prefix)
        if index.dtype != self.dtype:
            raise ValueError(f"{idx_path(prefix)} holds {index.dtype} tokens but the merged "
                             f"dataset uses {self.dtype}: datasets from different vocabulary "
                             "sizes cannot be merged")
        # A .bin cut short (full disk, interrupted copy) would shift every later document.
        check_bin_size(prefix, index)
        offset = len(self._sequence_lengths)
        self._sequence_lengths.frombytes(index.sequence_lengths.tobytes())
        self._document_indices.frombytes((index.document_indices[1:] + offset).tobytes())
        with open(bin_path(prefix), "rb") as f:
            shutil.copyfileobj(f, self._bin, 16 << 20)

    def finalize(self) -> None:
        """Write the index and move both files into place."""
        self._bin.close()
        lengths = np.frombuffer(self._sequence_lengths, np.int32)
        documents = np.frombuffer(self._document_indices, np.int64)
        with open(self._idx_tmp, "wb") as f:
            f.write(INDEX_HEADER)
            f.write(struct.pack("<Q", INDEX_VERSION))
            f.write(struct.pack("<B", self._code))
            f.write(struct.pack("<Q", len(lengths)))
            f.write(struct.pack("<Q", len(documents)))
            f.write(lengths.tobytes())
            start = np.int64(0)
            for i in range(0, len(lengths), _POINTER_SLICE):
                sizes = lengths[i:i + _POINTER_SLICE].astype(np.int64) * self.dtype.itemsize
                ends = start + np.cumsum(sizes)
                f.write((ends - sizes).tobytes())
                start = ends[-1]
            f.write(documents.tobytes())
        os.replace(self._bin_tmp, bin_path(self.prefix))
        os.replace(self._idx_tmp, idx_path(self.prefix))
        self._finalized = True

    def abort(self) -> None:
        """Close and delete the partial files (final names are never touched)."""
        self._bin.close()
        for path in (self._bin_tmp, self._idx_tmp):
            if os.path.exists(path):
                os.remove(path)


@dataclass
class IndexArrays:
    dtype: np.dtype
    sequence_lengths: np.ndarray
    sequence_pointers: np.ndarray
    document_indices: np.ndarray


def check_bin_size(prefix: str, index: IndexArrays) -> None:
    """ValueError naming both files unless PREFIX.bin holds exactly the tokens the .idx lists."""
    expected = int(index.sequence_lengths.sum(dtype=np.int64)) * index.dtype.itemsize
    actual = os.path.getsize(bin_path(prefix))
    if actual != expected:
        raise ValueError(f"{bin_path(prefix)} has {actual:,} bytes but {idx_path(prefix)} "
                         f"describes {expected:,}: the pair is truncated or mismatched; "
                         "re-run tools/preprocess_data.py (or copy the pair again)")


def read_index(prefix: str) -> IndexArrays:
    """Read an .idx (memory-mapped) without megatron-core; validates the header."""
    path = idx_path(prefix)
    header_format = f"<{len(INDEX_HEADER)}sQBQQ"  # magic, version, dtype, counts
    with open(path, "rb") as f:
        header = f.read(struct.calcsize(header_format))
    if len(header) < struct.calcsize(header_format) or not header.startswith(INDEX_HEADER):
        raise ValueError(f"{path} is not a Megatron indexed-dataset index (bad header)")
    _, version, code, sequence_count, document_count = struct.unpack(header_format, header)
    if version != INDEX_VERSION:
        raise ValueError(f"{path} is not a Megatron indexed-dataset index (bad header)")
    offset = len(header)
    if code not in _DTYPE_BY_CODE:
        raise ValueError(f"{path}: unknown dtype code {code}")
    # A cut .idx would otherwise fail in numpy ("buffer is smaller than requested size").
    expected = offset + sequence_count * (4 + 8) + document_count * 8
    actual = os.path.getsize(path)
    if actual < expected:
        raise ValueError(f"{path} has {actual:,} bytes but its header describes {expected:,}: "
                         "the index is truncated; re-run tools/preprocess_data.py (or copy it "
                         "again)")
    buffer = np.memmap(path, mode="r", dtype=np.uint8)
    lengths = np.frombuffer(buffer, np.int32, sequence_count, offset)
    offset += lengths.nbytes
    pointers = np.frombuffer(buffer, np.int64, sequence_count, offset)
    offset += pointers.nbytes
    documents = np.frombuffer(buffer, np.int64, document_count, offset)
    return IndexArrays(np.dtype(_DTYPE_BY_CODE[code]), lengths, pointers, documents)
