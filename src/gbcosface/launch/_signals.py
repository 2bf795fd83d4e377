"""SIGTERM as an exception, so that cleanup in `finally`/`except` blocks runs.

Why: Kubernetes (and KFP when a run is cancelled) stops a step by sending SIGTERM to its pod.
Python's default handling of SIGTERM kills the interpreter without unwinding, which would leave
a PyTorchJob (or local replica processes) running after their owner is gone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives inside `sigterm_raises()`.

    A BaseException (like KeyboardInterrupt) so that `except Exception` blocks do not swallow it.
    """


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (only possible in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
