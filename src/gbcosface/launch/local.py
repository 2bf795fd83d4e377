"""A PyTorchJob on one machine: one process per replica on loopback, with the operator's environment.

Why emulate rather than call torchrun once with --nnodes: the point is to run, without a cluster,
exactly what each pod runs, so the demo and the tests exercise the same path as a cluster job:
the same container command (`torchrun -m gbcosface train --config ...`), the same injected
variables (`contract.operator_env`, with MASTER_ADDR=127.0.0.1 and a free port instead of the
master's Service), one torchrun agent per "pod" doing the static rendezvous over TCP, and the
job-level restart behaviour: under restartPolicy OnFailure a failed pod is restarted and the
others, whose rendezvous or collectives break, fail and restart too, so the emulator kills every
replica and restarts the whole set, at most `max_restarts` times (the job's backoffLimit).

Logs: each replica's stdout+stderr goes to `<log_dir>/<job>-<master|worker>-<i>.log` (every
attempt appended under a header) and, prefixed with `[master-0]` etc., to this process's stdout.

Variables that a parent torchrun or an outer job may have set (PET_*, TORCHELASTIC_*, LOCAL_RANK,
GROUP_RANK, ...) are removed from the inherited environment, since a pod would not have them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from . import contract
from ._signals import Terminated, sigterm_raises

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_SCRUB_PREFIXES = ("PET_", "TORCHELASTIC_")
_SCRUB_NAMES = {
    "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_NAME",
    "ROLE_WORLD_SIZE", "TORCH_NCCL_ASYNC_ERROR_HANDLING_SET_BY_AGENT",
    *contract.OPERATOR_ENV_NAMES,
}


@dataclass
class Attempt:
    """One start of the whole replica set; exit codes in node-rank order (negative: killed by signal)."""

    exit_codes: list[int]
    reason: str


@dataclass
class LocalJobResult:
    job_name: str
    succeeded: bool
    attempts: list[Attempt] = field(default_factory=list)
    log_dir: Path = Path()
    replica_names: list[str] = field(default_factory=list)

    @property
    def exit_codes(self) -> list[int]:
        return self.attempts[-1].exit_codes if self.attempts else []

    @property
    def restarts(self) -> int:
        return max(0, len(self.attempts) - 1)

    @property
    def reason(self) -> str:
        return self.attempts[-1].reason if self.attempts else "not started"

    def log_file(self, replica: int) -> Path:
        return self.log_dir / f"{self.replica_names[replica]}.log"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def replica_type_index(node_rank: int) -> tuple[str, int]:
    """Node rank -> (replica type, index): 0 is Master 0, r > 0 is Worker r-1."""
    return (contract.MASTER, 0) if node_rank == 0 else (contract.WORKER, node_rank - 1)


def replica_env(
    job_name: str,
    replicas: int,
    nproc_per_node: int,
    node_rank: int,
    master_port: int,
    base_env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of one emulated pod: inherited (scrubbed) + pod env + operator env."""
    base = os.environ if base_env is None else base_env
    env = {k: v for k, v in base.items() if k not in _SCRUB_NAMES and not k.startswith(_SCRUB_PREFIXES)}
    env.update(contract.pod_env(job_name, extra_env))
    rtype, index = replica_type_index(node_rank)
    env.update(
        contract.operator_env(job_name, rtype, index, replicas, nproc_per_node, master_addr=LOOPBACK, master_port=master_port)
    )
    return env


def default_command(config: str | Path, overrides: Sequence[str] = ()) -> list[str]:
    """The rendered container's command with the config file of this machine."""
    return contract.container_command(str(Path(config).resolve()), overrides)


class _Replica:
    def __init__(self, name: str, short: str, argv: list[str], env: dict[str, str], cwd: str | None,
                 log_path: Path, attempt: int, echo: IO[str] | None):
        self.name, self.short = name, short
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finish()
        self._log.write(f"===== attempt {attempt}: {' '.join(argv)}\n")
        self._log.flush()
        self._echo = echo
        # A session of its own: the replica's process group holds torchrun and its workers, so
        # killing the group leaves nothing behind (like deleting a pod).
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._copy, name=f"log-{short}", daemon=True)
        self._pump.start()

    def _copy(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            self._log.write(line)
            self._log.flush()
            if self._echo is not None:
                self._echo.write(f"[{self.short}] {line if line.endswith(chr(10)) else line + chr(10)}")
                self._echo.flush()

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def finish(self) -> int:
        code = self.proc.wait()
        # Members of the group that outlived the leader (a stray worker) go too.
        self.signal_group(signal.SIGKILL)
        self._pump.join(timeout=10)
        self._log.write(f"===== exit code {code}\n")
        self._log.close()
        return code


def _stop_all(reps: list[_Replica], grace_s: float) -> None:
    """SIGTERM every replica group, then SIGKILL whatever is left after `grace_s` (a pod delete)."""
    for rep in reps:
        if rep.proc.poll() is None:
            rep.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for rep in reps:
        remaining = deadline - time.monotonic()
        try:
            rep.proc.wait(timeout=max(0.0, remaining))
        except subprocess.TimeoutExpired:
            rep.signal_group(signal.SIGKILL)


def run_local_job(
    replicas: int,
    nproc_per_node: int = 1,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    command: Sequence[str] | None = None,
    log_dir: str | Path | None = None,
    max_restarts: int = 0,
    job_name: str = "gbcosface-local",
    extra_env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout_s: float | None = None,
    echo: IO[str] | None = sys.stdout,
    poll_interval: float = 0.1,
    grace_s: float = 10.0,
) -> LocalJobResult:
    """Run `replicas` pods' worth of processes; return when all exit 0 (success), or when an
    attempt fails and `max_restarts` are used up, or when `timeout_s` (the job's
    activeDeadlineSeconds) passes. `command` replaces the trainer command (a leading `torchrun` or
    `python` maps to this interpreter); without it `config` is required.
    """
    if replicas < 1 or nproc_per_node < 1:
        raise ValueError(f"replicas and nproc_per_node must be >= 1, got {replicas} and {nproc_per_node}")
    if max_restarts < 0:
        raise ValueError("max_restarts must be >= 0")
    if command is None:
        if config is None:
            raise ValueError("either a config file or a command is required")
        if not Path(config).is_file():
            raise FileNotFoundError(f"config file {config} does not exist")
        command = default_command(config, overrides)
    argv = contract.local_argv(command)
    out_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix=f"{job_name}-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    names = contract.replica_names(job_name, replicas)
    result = LocalJobResult(job_name=job_name, succeeded=False, log_dir=out_dir, replica_names=names)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    with sigterm_raises():
        for attempt in range(max_restarts + 1):
            port = free_port()
            log.info("local job %s: attempt %d, %d replica(s) x %d, master 127.0.0.1:%d, logs in %s",
                     job_name, attempt, replicas, nproc_per_node, port, out_dir)
            reps: list[_Replica] = []
            try:
                for rank, name in enumerate(names):
                    env = replica_env(job_name, replicas, nproc_per_node, rank, port, base_env, extra_env)
                    short = name[len(job_name) + 1:]
                    reps.append(_Replica(name, short, argv, env, None if cwd is None else str(cwd),
                                         out_dir / f"{name}.log", attempt, echo))
                reason = _watch(reps, deadline, poll_interval)
                if reason != "Succeeded":
                    _stop_all(reps, grace_s)
            except (KeyboardInterrupt, Terminated):
                _stop_all(reps, grace_s)
                for rep in reps:
                    rep.finish()
                raise
            codes = [rep.finish() for rep in reps]
            result.attempts.append(Attempt(codes, reason))
            log.info("local job %s: attempt %d: %s, exit codes %s", job_name, attempt, reason, codes)
            if reason == "Succeeded":
                result.succeeded = True
                break
            if reason == "DeadlineExceeded":
                break
    return result


def _watch(reps: list[_Replica], deadline: float | None, poll_interval: float) -> str:
    """Wait until every replica exits 0, one fails, or the deadline passes; return the reason."""
    while True:
        codes = [rep.proc.poll() for rep in reps]
        for rep, code in zip(reps, codes, strict=True):
            if code not in (None, 0):
                return f"{rep.short} exited with {code}"
        if all(code == 0 for code in codes):
            return "Succeeded"
        if deadline is not None and time.monotonic() >= deadline:
            return "DeadlineExceeded"
        time.sleep(poll_interval)
