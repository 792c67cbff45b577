"""SIGTERM as an interrupt, so that a cancelled job cleans up like Ctrl-C does.

Slurm (scancel, time limit) and most schedulers stop a job with SIGTERM, whose default action
kills Python without unwinding: the writers' ``.tmp-PID`` files would stay behind. Inside
``sigterm_raises()``, SIGTERM raises ``Terminated`` (a KeyboardInterrupt, so every path that
already cleans up after Ctrl-C handles it too).
"""

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Type, TypeVar

T = TypeVar("T")

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


def os_error_line(err: OSError) -> str:
    """'PATH: reason' for a failed file operation; a failed rename names its destination."""
    path = err.filename2 or err.filename
    return f"{path}: {err.strerror}" if path and err.strerror else str(err)


def run_tool(work: Callable[[], T], *, cleaned_up: str,
             error_statuses: Sequence[Tuple[Type[Exception], int]] = ((ValueError, 2),),
             ) -> Tuple[int, Optional[T]]:
    """A command-line tool's main work, with SIGTERM as an interrupt: ``(0, work())``, or
    ``(status, None)`` after printing ``error: ...`` to stderr.

    An interrupt gives 128 + the signal number and a message ending in ``cleaned_up`` (what the
    work removed on its way out, e.g. "the partial export was removed"). The first class of
    ``error_statuses`` that matches an exception gives its status (user errors; an OSError is
    shown as 'PATH: reason'); any other exception propagates with its traceback.
    """
    try:
        with sigterm_raises():
            return 0, work()
    except KeyboardInterrupt as err:
        what, status = interruption_report(err)
        print(f"error: {what}; {cleaned_up}", file=sys.stderr)
        return status, None
    except tuple(cls for cls, _ in error_statuses) as err:
        status = next(code for cls, code in error_statuses if isinstance(err, cls))
        message = os_error_line(err) if isinstance(err, OSError) else str(err)
        print(f"error: {message}", file=sys.stderr)
        return status, None
