"""SIGTERM as an interrupt, so that a cancelled job cleans up like Ctrl-C does.

Slurm (scancel, time limit) and most schedulers stop a job with SIGTERM, whose default action
kills Python without unwinding: the writers' ``.tmp-PID`` files would stay behind. Inside
``sigterm_raises()``, SIGTERM raises ``Terminated`` (a KeyboardInterrupt, so every path that
already cleans up after Ctrl-C handles it too).
"""

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator, List, Tuple

# Handlers that open sigterm_raises() blocks replaced, outermost first.
_replaced: List[object] = []
_fork_hook_registered = False


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived."""


def _restore_in_child() -> None:
    # A Python-level handler only runs between bytecodes: a pool worker that gets SIGTERM just
    # before it blocks on a lock would never run it and never exit (Pool.terminate then waits
    # for it forever). Forked children get the handler that was there before, as if the block
    # had not been entered.
    if _replaced:
        signal.signal(signal.SIGTERM, _replaced[0])
        _replaced.clear()


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into ``Terminated`` in this process for the duration of the block; the
    previous handler comes back afterwards, and processes forked inside the block keep it."""
    global _fork_hook_registered
    if threading.current_thread() is not threading.main_thread():
        # Only the main thread may set handlers (tests call the tools' main() from threads).
        yield
        return
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_restore_in_child)
        _fork_hook_registered = True
    _replaced.append(signal.signal(signal.SIGTERM, _raise_terminated))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, _replaced.pop())


def interruption_report(err: KeyboardInterrupt) -> Tuple[str, int]:
    """The tools' message for an interrupted run and their exit status: 128 + the signal
    number, what a shell reports for a process the signal killed."""
    if isinstance(err, Terminated):
        return "terminated (SIGTERM)", 128 + signal.SIGTERM
    return "interrupted", 128 + signal.SIGINT
