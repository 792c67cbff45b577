"""Concatenate indexed datasets: the library half of tools/merge_datasets.py."""

import logging
import os
from typing import List, Sequence

from megastack.data.indexed_writer import IndexedDatasetWriter, bin_path, idx_path, read_index

logger = logging.getLogger(__name__)


def find_prefixes_in_dir(directory: str) -> List[str]:
    """Every complete PREFIX (.bin and .idx both present) in a directory, sorted by name."""
    names = sorted(f[:-4] for f in os.listdir(directory) if f.endswith(".idx"))
    return [os.path.join(directory, n) for n in names
            if os.path.isfile(os.path.join(directory, n + ".bin"))]


def merge_datasets(prefixes: Sequence[str], output_prefix: str) -> str:
    """Write ``output_prefix.bin/.idx`` holding the documents of ``prefixes`` in order."""
    if not prefixes:
        raise ValueError("nothing to merge: no input prefixes")
    for prefix in prefixes:
        for path in (bin_path(prefix), idx_path(prefix)):
            if not os.path.isfile(path):
                raise ValueError(f"cannot merge {prefix!r}: {path} does not exist")
    if os.path.abspath(output_prefix) in {os.path.abspath(p) for p in prefixes}:
        raise ValueError(f"--output-prefix {output_prefix!r} is also an input")
    dtype = read_index(prefixes[0]).dtype.type
    with IndexedDatasetWriter(output_prefix, dtype) as writer:
        for prefix in prefixes:
            logger.info("merging %s", prefix)
            writer.add_index(prefix)
        writer.finalize()
    return output_prefix
