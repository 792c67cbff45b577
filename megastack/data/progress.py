"""Progress and summary lines for preprocessing."""

import time
from dataclasses import dataclass
from typing import Optional


@dataclass
class Progress:
    documents: int = 0
    tokens: int = 0
    text_bytes: int = 0  # uncompressed bytes of the lines processed
    input_bytes_read: int = 0  # on-disk bytes consumed (compressed for .gz)
    input_bytes_total: Optional[int] = None
    bad_lines: int = 0
    blank_lines: int = 0
    empty_documents: int = 0
    started: float = 0.0

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.started, 1e-9)

    def tokens_per_second(self) -> float:
        return self.tokens / self.elapsed()

    def eta_seconds(self) -> Optional[float]:
        if not self.input_bytes_total or not self.input_bytes_read:
            return None
        done = min(self.input_bytes_read / self.input_bytes_total, 1.0)
        return self.elapsed() * (1.0 - done) / done


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_progress(p: Progress) -> str:
    elapsed = p.elapsed()
    line = (f"{p.documents:,} docs | {p.tokens:,} tokens | "
            f"{p.text_bytes / elapsed / 2**20:.2f} MB/s | {p.tokens / elapsed:,.0f} tokens/s | "
            f"elapsed {_duration(elapsed)}")
    eta = p.eta_seconds()
    if eta is not None:
        line += f" | ETA {_duration(eta)}"
    return line


def format_summary(p: Progress) -> str:
    elapsed = p.elapsed()
    line = (f"done: {p.documents:,} docs, {p.tokens:,} tokens, "
            f"{p.text_bytes / 2**20:.1f} MB of text in {elapsed:.1f} s "
            f"({p.tokens / elapsed:,.0f} tokens/s, {p.text_bytes / elapsed / 2**20:.2f} MB/s)")
    if p.bad_lines:
        line += f"; skipped {p.bad_lines:,} bad lines"
    if p.empty_documents:
        line += f"; {p.empty_documents:,} empty documents (no tokens)"
    if p.blank_lines:
        line += f"; ignored {p.blank_lines:,} blank lines"
    return line
