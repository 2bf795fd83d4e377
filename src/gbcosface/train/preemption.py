"""SIGTERM as "finish this step, checkpoint, exit for a restart": pod evictions and spot preemptions.

Why a flag, not an exception: Kubernetes sends SIGTERM to the pod (torchrun, PID 1, forwards it to its
workers), possibly to only some pods of the job (one node preempted). Raising inside a collective
would leave the other ranks hanging until the NCCL/gloo timeout. So the handler only records the
signal; the trainer adds the flag to the loss all-reduce it does every step, and when any rank was
signalled, every rank stops after that same step, the checkpoint is written (a collective when the
head is sharded) and `Preempted` ends the process with EXIT_CODE (128 + SIGTERM, what a shell
reports for a process killed by SIGTERM). Under `restartPolicy: OnFailure` a non-zero exit restarts
the pod; under the training operator's `ExitCode` policy 143 counts as retryable. The restarted job
resumes from that checkpoint. The whole stop must fit in the pod's terminationGracePeriodSeconds (and
in torchrun's own wait before it SIGKILLs its workers): docs/training.md, "Preemption".
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger("gbcosface.train")

EXIT_CODE = 128 + int(signal.SIGTERM)  # 143


class Preempted(BaseException):
    """Raised by the trainer after the SIGTERM checkpoint; a BaseException so `except Exception` lets it pass."""


class PreemptionFlag:
    """SIGTERM handler that records the request; `agree()` takes the ranks' combined answer."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested = False  # this process received SIGTERM
        self.agreed = False  # some rank of the job received it (set from the all-reduce)
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if not self.requested:
            log.warning("SIGTERM received: finishing the current step, then checkpointing and exiting")
        self.requested = True

    def install(self) -> None:
        """Catch SIGTERM from now on (main thread only; elsewhere the default action stays)."""
        if not self.enabled or self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(signal.SIGTERM, self._handler)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def agree(self, any_rank_signalled: bool) -> None:
        self.agreed = self.agreed or bool(any_rank_signalled)
