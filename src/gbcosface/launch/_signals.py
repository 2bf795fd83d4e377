"""SIGTERM (and Ctrl-C) as an exception, raised only at safe points, so that cleanup runs.

Why: Kubernetes (and KFP when a run is cancelled) stops a step by sending SIGTERM to its pod.
Python's default handling of SIGTERM kills the interpreter without unwinding, which would leave
a training job (or local replica processes) running after their owner is gone.

Why only at safe points: an exception raised from a signal handler lands wherever the main thread
happens to be, e.g. between `logging`'s acquire and release of its module lock; that lock then
stays held for good and every other thread that logs blocks forever (seen in the test suite). So
inside `sigterm_raises()` the handlers only record the signal; `sleep()` (the waiting loops'
sleep) raises it, immediately when it arrives during the sleep, which is where a waiting loop
spends its time, and `check()` raises one that arrived meanwhile.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives inside `sigterm_raises()`.

    A BaseException (like KeyboardInterrupt) so that `except Exception` blocks do not swallow it.
    """


class _State:
    pending: int | None = None  # the signal received and not yet raised
    in_sleep: bool = False


_state = _State()


def _exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def check() -> None:
    """Raise the pending SIGTERM (Terminated) or SIGINT (KeyboardInterrupt), if there is one."""
    signum, _state.pending = _state.pending, None
    if signum is not None:
        raise _exception(signum)


def sleep(seconds: float) -> None:
    """`time.sleep` that a pending or arriving signal interrupts with its exception."""
    check()
    if threading.current_thread() is not threading.main_thread():
        time.sleep(max(0.0, seconds))
        return
    _state.in_sleep = True
    try:
        time.sleep(max(0.0, seconds))
    finally:
        _state.in_sleep = False
    check()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` and SIGINT `KeyboardInterrupt`, at `sleep()`
    or `check()` (only possible in the main thread; elsewhere the block changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if _state.in_sleep:
            _state.in_sleep = False
            raise _exception(signum)  # inside time.sleep: no lock is held here
        _state.pending = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
        check()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
