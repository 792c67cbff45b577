"""Concatenate indexed datasets: the library half of tools/merge_datasets.py."""

import logging
import os
from typing import List, Sequence

from megastack.data.indexed_writer import IndexedDatasetWriter, bin_path, idx_path, read_index
from megastack.paths import check_output_dir

logger = logging.getLogger(__name__)


def find_prefixes_in_dir(directory: str) -> List[str]:
    """Every PREFIX (PREFIX.bin and PREFIX.idx) in a directory, sorted by name.

    A .bin without its .idx, or the reverse, is refused rather than left out: merging the rest
    would silently drop that dataset (an interrupted copy, a file deleted by mistake).
    """
    names = os.listdir(directory)
    stems = {ext: {f[:-len(ext)] for f in names if f.endswith(ext)
                   and os.path.isfile(os.path.join(directory, f))} for ext in (".bin", ".idx")}
    orphans = sorted(f"{os.path.join(directory, stem + ext)} without its {other}"
                     for ext, other in ((".bin", ".idx"), (".idx", ".bin"))
                     for stem in stems[ext] - stems[other])
    if orphans:
        raise ValueError(f"--input {directory}: incomplete datasets: {'; '.join(orphans)}. "
                         "Restore the missing files, or move these out of the directory")
    return [os.path.join(directory, n) for n in sorted(stems[".idx"])]


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
    # Before reading anything: a bad output path should cost nothing (as in preprocess_data).
    check_output_dir(f"--output-prefix {output_prefix}",
                     os.path.dirname(os.path.abspath(output_prefix)))
    dtype = read_index(prefixes[0]).dtype.type
    with IndexedDatasetWriter(output_prefix, dtype) as writer:
        for prefix in prefixes:
            logger.info("merging %s", prefix)
            writer.add_index(prefix)
        writer.finalize()
    return output_prefix
