"""--exit-signal-handler: a signal (SIGTERM by default) asks training to save and stop.

Schedulers announce the end of a job with a signal ahead of the kill (Slurm's `--signal`, a
preemption's SIGTERM). Inside `exit_signal_handler(...)` the signal is recorded instead of
killing the process; the trainer checks `received()` at the end of every iteration (all ranks
agree through an all-reduce), saves and stops, as Megatron-LM does.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

logger = logging.getLogger(__name__)

SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")

_received: Optional[str] = None
# (signal, the handler it replaced) while a block is open: forked children (data-loader
# workers) get the old handler back, so that the signal still stops them.
_installed: Optional[tuple] = None
_fork_hook_registered = False


def _restore_in_child() -> None:
    global _installed
    if _installed is not None:
        signal.signal(*_installed)
        _installed = None


def received() -> Optional[str]:
    """The name of the signal that arrived inside the handler's block, or None."""
    return _received


def _record(signum, frame) -> None:
    global _received
    name = signal.Signals(signum).name
    if _received is None:
        logger.warning("%s received: saving and stopping at the end of this iteration", name)
    _received = name


@contextmanager
def exit_signal_handler(name: Optional[str]) -> Iterator[None]:
    """Record `name` (one of SIGNALS) instead of dying of it for the block; None: no handler."""
    global _received, _installed, _fork_hook_registered
    if name is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    assert name in SIGNALS and _installed is None, name
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_restore_in_child)
        _fork_hook_registered = True
    sig = getattr(signal, name)
    _installed = (sig, signal.signal(sig, _record))
    _received = None
    try:
        yield
    finally:
        signal.signal(*_installed)
        _installed, _received = None, None
