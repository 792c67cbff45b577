"""Stream raw lines out of JSON-lines inputs (plain or gzip, paths or globs), with positions.

Lines are yielded as bytes; decoding and JSON parsing happen in the worker processes so the
reading process stays cheap.
"""

import glob
import gzip
import os
import zlib
from dataclasses import dataclass
from typing import Iterator, List, Sequence


class BadInputError(ValueError):
    """An input line the user has to fix (or skip with --skip-bad-lines)."""


@dataclass(frozen=True)
class RawLine:
    path: str
    line_number: int  # 1-based
    data: bytes


@dataclass
class LineBatch:
    """Consecutive lines of one file: what travels to a worker (one path, not one per line)."""

    path: str
    first_line_number: int
    lines: List[bytes]


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Files named by paths or glob patterns, in argument order, each glob sorted."""
    files: List[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            # Directories (and other non-files) a pattern happens to match are not input.
            found = glob.glob(pattern)
            matches = sorted(p for p in found if os.path.isfile(p))
            if not matches:
                raise ValueError(f"--input {pattern!r} matches no file"
                                 + (" (only directories)" if found else ""))
            files.extend(matches)
        elif os.path.isfile(pattern):
            files.append(pattern)
        elif os.path.isdir(pattern):
            inside = os.path.join(pattern, "*.jsonl*")
            raise ValueError(f"--input {pattern!r} is a directory; name its files, e.g. "
                             f"--input '{inside}'")
        else:
            raise ValueError(f"--input {pattern!r}: no such file")
    return files


def total_input_bytes(files: Sequence[str]) -> int:
    """Bytes the reader will count as progress (compressed size for .gz files)."""
    return sum(os.path.getsize(f) for f in files)


class LineReader:
    """Iterate ``RawLine``s over several files; ``bytes_read`` follows the on-disk position so
    progress and ETA work for compressed input too."""

    def __init__(self, files: Sequence[str]) -> None:
        self.files = list(files)
        self.bytes_read = 0

    def __iter__(self) -> Iterator[RawLine]:
        for path in self.files:
            yield from self._read_file(path)

    def _read_file(self, path: str) -> Iterator[RawLine]:
        done_before = self.bytes_read
        raw = open(path, "rb")
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
        line_number = 0
        try:
            while True:
                try:
                    data = stream.readline()
                except (EOFError, OSError, zlib.error) as err:
                    # Truncated or corrupt gzip: nothing after this point can be trusted.
                    raise BadInputError(f"{path}:{line_number + 1}: cannot read compressed "
                                        f"input ({err})") from err
                if not data:
                    break
                line_number += 1
                self.bytes_read = done_before + raw.tell()
                yield RawLine(path, line_number, data)
        finally:
            stream.close()
            raw.close()
        self.bytes_read = done_before + os.path.getsize(path)
