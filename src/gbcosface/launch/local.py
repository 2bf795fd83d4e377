"""A PyTorchJob or TrainJob on one machine: one process per replica on loopback, with the operator's env.

Why emulate rather than call torchrun once with --nnodes: the point is to run, without a cluster,
exactly what each pod runs, so the demo and the tests exercise the same path as a cluster job:
the same container command (`torchrun -m gbcosface train --config ...`), the same injected
variables (`contract.operator_env`, with MASTER_ADDR=127.0.0.1 and a free port instead of the
master's Service), one torchrun agent per "pod" doing the static rendezvous over TCP, and the
job-level restart behaviour: under restartPolicy OnFailure a failed pod is restarted and the
others, whose rendezvous or collectives break, fail and restart too, so the emulator kills every
replica and restarts the whole set.

When the job fails for good is counted as its controller counts (`RestartCounter`): for a PyTorchJob
plan, the Training Operator's rule on the rendered `backoffLimit` (each replica that did not exit 0
adds one container restart; the sum over replicas still running reaches the limit:
kubeflow/trainer@v1.9.4:pkg/core/job.go PastBackoffLimit), so a 2-node set spends 2 per failure;
for a TrainJob, and for `max_restarts`, JobSet's rule (one restart per failure of the set, fail when
`restarts >= failurePolicy.maxRestarts`: kubernetes-sigs/jobset@v0.12.0:pkg/controllers/failure_policy.go).

A TrainJob (`kind="trainjob"`) is emulated the same way with the torch plugin's environment
(`launch/trainjob_env.py`: PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR,
PET_MASTER_PORT) and the JobSet's whole-set restart (failurePolicy.maxRestarts); its nodes are named
`<job>-node-0-<i>`.

Logs: each replica's stdout+stderr goes to `<log_dir>/<replica name>.log` (every attempt appended
under a header) and, prefixed with `[master-0]`, `[node-0-1]` etc., to this process's stdout.

Variables that a parent torchrun or an outer job may have set (PET_*, TORCHELASTIC_*, LOCAL_RANK,
GROUP_RANK, ...) are removed from the inherited environment, since a pod would not have them.
"""

from __future__ import annotations

import itertools
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
from typing import IO, TYPE_CHECKING, Any

from . import _signals, contract, trainjob_env
from ._signals import sigterm_raises

if TYPE_CHECKING:
    from .containers import ReplicaRuntime

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: Read by the metrics exporter (gbcosface.monitoring) in place of run.metrics_port.
METRICS_BASE_PORT_ENV = "GBCOSFACE_METRICS_BASE_PORT"
_SCRUB_PREFIXES = ("PET_", "TORCHELASTIC_")
_SCRUB_NAMES = {
    "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_NAME",
    "ROLE_WORLD_SIZE", "TORCH_NCCL_ASYNC_ERROR_HANDLING_SET_BY_AGENT",
    *contract.OPERATOR_ENV_NAMES, *trainjob_env.INJECTED_ENV_NAMES,
}
#: The job kinds the emulator knows (their names as in `launch/kinds.py`).
LOCAL_KINDS = ("pytorchjob", "trainjob")


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
    #: Per replica, in node-rank order, how often it was restarted (a PyTorchJob pod's restartCount).
    restart_counts: list[int] = field(default_factory=list)
    #: Why the job failed for good: "BackoffLimitExceeded", "ReachedMaxRestarts" or "DeadlineExceeded".
    failure: str | None = None

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


def operator_past_backoff_limit(restart_counts: Sequence[int], running: Sequence[bool], backoff_limit: int) -> bool:
    """The Training Operator's backoff rule (kubeflow/trainer@v1.9.4:pkg/core/job.go PastBackoffLimit):
    the container restartCounts of the pods that are Running, summed, reach `backoff_limit` (or,
    for a limit of 0, any restart at all)."""
    total = sum(count for count, up in zip(restart_counts, running, strict=True) if up)
    return total > 0 if backoff_limit == 0 else total >= backoff_limit


def jobset_past_max_restarts(restarts: int, max_restarts: int) -> bool:
    """JobSet's rule for a failed child Job under its default action RestartJobSet
    (kubernetes-sigs/jobset@v0.12.0:pkg/controllers/failure_policy.go restartJobSetActionApplier):
    fail when the restarts so far (status.restartsCountTowardsMax) reach failurePolicy.maxRestarts
    (likewise v0.11.1, Trainer v2.2.x's; neither Trainer version sets failurePolicy or backoffLimit itself)."""
    return restarts >= max_restarts


class RestartCounter:
    """Counts one job's restarts as its controller does and says when a failure is final.

    `backoff_limit` set: the Training Operator's count (a PyTorchJob's rendered runPolicy.backoffLimit);
    else JobSet's, with `max_restarts` as failurePolicy.maxRestarts (a TrainJob, or a plain emulation).
    """

    def __init__(self, replicas: int, max_restarts: int = 0, backoff_limit: int | None = None):
        if max_restarts < 0 or (backoff_limit is not None and backoff_limit < 0):
            raise ValueError("max_restarts and backoff_limit must be >= 0")
        self.max_restarts, self.backoff_limit = max_restarts, backoff_limit
        self.counts = [0] * replicas
        self.set_restarts = 0

    def failed(self, exit_codes: Sequence[int]) -> str | None:
        """Record a failed attempt; the reason the job now fails for good, or None to restart it."""
        if self.backoff_limit is not None:
            # OnFailure: a container that did not exit 0 is restarted in place (its pod stays Running);
            # one that exited 0 leaves its pod Succeeded, which the operator no longer counts.
            running = [code != 0 for code in exit_codes]
            self.counts = [c + 1 if up else c for c, up in zip(self.counts, running, strict=True)]
            if operator_past_backoff_limit(self.counts, running, self.backoff_limit):
                return "BackoffLimitExceeded"
        elif jobset_past_max_restarts(self.set_restarts, self.max_restarts):
            return "ReachedMaxRestarts"
        else:
            self.counts = [c + 1 for c in self.counts]  # JobSet recreates every pod
        self.set_restarts += 1
        return None


def _check_kind(kind: str) -> str:
    if kind not in LOCAL_KINDS:
        raise ValueError(f"the emulator runs job kinds {LOCAL_KINDS}, not {kind!r}")
    return kind


def injected_env(kind: str, job_name: str, replicas: int, nproc_per_node: int, node_rank: int,
                 master_port: int) -> dict[str, str]:
    """What the kind's operator injects into node `node_rank`, with the master on loopback."""
    if _check_kind(kind) == "trainjob":
        return trainjob_env.injected_env(job_name, node_rank, replicas, nproc_per_node, master=LOOPBACK,
                                         master_port=master_port)
    rtype, index = replica_type_index(node_rank)
    return contract.operator_env(job_name, rtype, index, replicas, nproc_per_node, master_addr=LOOPBACK,
                                 master_port=master_port)


def local_replica_names(kind: str, job_name: str, replicas: int) -> list[str]:
    if _check_kind(kind) == "trainjob":
        return trainjob_env.replica_names(job_name, replicas)
    return contract.replica_names(job_name, replicas)


def replica_env(
    job_name: str,
    replicas: int,
    nproc_per_node: int,
    node_rank: int,
    master_port: int,
    base_env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    kind: str = "pytorchjob",
) -> dict[str, str]:
    """The environment of one emulated pod: inherited (scrubbed) + pod env + operator env."""
    base = os.environ if base_env is None else base_env
    env = {k: v for k, v in base.items() if k not in _SCRUB_NAMES and not k.startswith(_SCRUB_PREFIXES)}
    env.update(contract.pod_env(job_name, extra_env))
    env.update(injected_env(kind, job_name, replicas, nproc_per_node, node_rank, master_port))
    return env


def default_command(config: str | Path, overrides: Sequence[str] = ()) -> list[str]:
    """The rendered container's command with the config file of this machine."""
    return contract.container_command(str(Path(config).resolve()), overrides)


class _Replica:
    def __init__(self, name: str, short: str, argv: list[str], env: dict[str, str], cwd: str | None,
                 log_path: Path, attempt: int, echo: IO[str] | None):
        self.name, self.short = name, short
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "a", encoding="utf-8")  # closed in finish()
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

    def exit_code(self) -> int | None:
        """The leader's exit status (negative: killed by that signal), or None while it runs.

        Read with WNOWAIT, i.e. without reaping: until `finish()` the exited leader stays a zombie,
        so its pid, which is the process-group id we signal, cannot be reused by another process.
        """
        if self.proc.returncode is not None:
            return self.proc.returncode
        info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None or info.si_pid == 0:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def signal_group(self, sig: int) -> None:
        if self.proc.returncode is not None:
            return  # reaped: the group id may belong to someone else now
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def finish(self) -> int:
        # Members of the group that outlived the leader (a stray worker) go too, then reap.
        self.signal_group(signal.SIGKILL)
        code = self.proc.wait()
        self._pump.join(timeout=10)
        self._log.write(f"===== exit code {code}\n")
        self._log.close()
        return code


def _stop_all(reps: list[_Replica], grace_s: float) -> None:
    """SIGTERM every replica group, then SIGKILL whatever is left after `grace_s` (a pod delete)."""
    for rep in reps:
        if rep.exit_code() is None:
            rep.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(rep.exit_code() is None for rep in reps) and time.monotonic() < deadline:
        time.sleep(0.05)
    for rep in reps:
        if rep.exit_code() is None:
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
    echo: IO[str] | bool = True,
    poll_interval: float = 0.1,
    grace_s: float = 10.0,
    metrics_base_port: int | None = None,
    kind: str = "pytorchjob",
    runtime: ReplicaRuntime | None = None,
    backoff_limit: int | None = None,
) -> LocalJobResult:
    """Run `replicas` pods' worth of processes; return when all exit 0 (success), or when an
    attempt fails and the restarts are used up, or when `timeout_s` (the job's
    activeDeadlineSeconds) passes. Restarts: `max_restarts` whole-set restarts (JobSet's count), or
    with `backoff_limit` a PyTorchJob's runPolicy.backoffLimit counted as the operator does
    (`RestartCounter`; `max_restarts` is then ignored).
    `command` replaces the trainer command (a leading `torchrun` or `python` maps to this interpreter); without it `config` is required. `echo`: True copies the
    replicas' output to `sys.stdout` (as it is at call time), a stream copies it there, False not.
    `kind`: whose environment and replica names ("pytorchjob" or "trainjob").
    `runtime` starts each replica (default: a process of this venv; `containers.ContainerRuntime`:
    a container of the job's image, and `command` is then not mapped to this interpreter).
    """
    _check_kind(kind)
    if replicas < 1 or nproc_per_node < 1:
        raise ValueError(f"replicas and nproc_per_node must be >= 1, got {replicas} and {nproc_per_node}")
    counter = RestartCounter(replicas, max_restarts, backoff_limit)
    if command is None:
        if config is None:
            raise ValueError("either a config file or a command is required")
        if not Path(config).is_file():
            from gbcosface.config import recipe_names, recipe_path

            if str(config) not in recipe_names():
                raise FileNotFoundError(f"config file {config} does not exist (nor is it a recipe: {recipe_names()})")
            config = recipe_path(str(config))  # a shipped recipe name, as `load_config` accepts
        command = default_command(config, overrides)
    argv = contract.local_argv(command) if runtime is None else runtime.argv(command)
    start_replica = _Replica if runtime is None else runtime.start
    stream: IO[str] | None = sys.stdout if echo is True else (echo or None)
    out_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix=f"{job_name}-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    names = local_replica_names(kind, job_name, replicas)
    result = LocalJobResult(job_name=job_name, succeeded=False, log_dir=out_dir, replica_names=names)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    with sigterm_raises():
        for attempt in itertools.count():
            port = free_port()
            log.info("local job %s: attempt %d, %d replica(s) x %d, master 127.0.0.1:%d, logs in %s",
                     job_name, attempt, replicas, nproc_per_node, port, out_dir)
            reps: list[_Replica] = []
            try:
                for rank, name in enumerate(names):
                    env = replica_env(job_name, replicas, nproc_per_node, rank, port, base_env, extra_env, kind)
                    if metrics_base_port:
                        env[METRICS_BASE_PORT_ENV] = str(metrics_base_port + rank * nproc_per_node)
                    short = name[len(job_name) + 1:]
                    reps.append(start_replica(name, short, argv, env, None if cwd is None else str(cwd),
                                              out_dir / f"{name}.log", attempt, stream))
                reason = _watch(reps, deadline, poll_interval)
                if reason != "Succeeded":
                    _stop_all(reps, grace_s)
            except BaseException:  # Ctrl-C, SIGTERM, or a replica that could not start: stop the others
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
            result.failure = "DeadlineExceeded" if reason == "DeadlineExceeded" else counter.failed(codes)
            if result.failure:
                log.info("local job %s failed: %s (restart counts %s)", job_name, result.failure, counter.counts)
                break
    result.restart_counts = list(counter.counts)
    return result


def _watch(reps: list[_Replica], deadline: float | None, poll_interval: float) -> str:
    """Wait until every replica exits 0, one fails, or the deadline passes; return the reason."""
    while True:
        codes = [rep.exit_code() for rep in reps]
        for rep, code in zip(reps, codes, strict=True):
            if code not in (None, 0):
                return f"{rep.short} exited with {code}"
        if all(code == 0 for code in codes):
            return "Succeeded"
        if deadline is not None and time.monotonic() >= deadline:
            return "DeadlineExceeded"
        _signals.sleep(poll_interval)


@dataclass
class LocalPlan:
    """What the emulator needs, read off a rendered job (`JobKind.plan`; `plan_from_job` for PyTorchJobs)."""

    job_name: str
    replicas: int
    nproc_per_node: int
    command: list[str]
    env: dict[str, str]
    max_restarts: int  # whole-set restarts (JobSet failurePolicy.maxRestarts); unused with backoff_limit
    timeout_s: float | None
    kind: str = "pytorchjob"
    backoff_limit: int | None = None  # a PyTorchJob's runPolicy.backoffLimit, counted as the operator does


def plan_from_job(job: Mapping, configmap: Mapping, work_dir: str | Path) -> LocalPlan:
    """Emulate exactly a rendered job: its container command (with the ConfigMap's config written
    to `work_dir/config.yaml` in place of the mounted file), its pod count and nprocPerNode, its
    plain env values (Secret references are left to the caller's environment), its backoffLimit
    (counted as the operator counts it; a job without one is not restarted here, where the operator
    would restart it without bound) and activeDeadlineSeconds. Why: the pipeline's local launcher
    then runs what it would submit."""
    replicas_spec = job["spec"]["pytorchReplicaSpecs"]
    if "elasticPolicy" in job["spec"] or contract.MASTER not in replicas_spec:
        raise ValueError("the emulator runs non-elastic jobs with a Master only")
    replicas = sum(int(r.get("replicas", 1)) for r in replicas_spec.values())
    (container,) = [c for c in replicas_spec[contract.MASTER]["template"]["spec"]["containers"]
                    if c["name"] == contract.CONTAINER_NAME]
    config_file = Path(work_dir) / contract.CONFIG_KEY
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(configmap["data"][contract.CONFIG_KEY])
    command = [str(config_file.resolve()) if arg == contract.CONFIG_PATH else arg for arg in container["command"]]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    run_policy = job["spec"].get("runPolicy", {})
    deadline = run_policy.get("activeDeadlineSeconds")
    backoff = run_policy.get("backoffLimit")
    return LocalPlan(
        job_name=job["metadata"]["name"], replicas=replicas, nproc_per_node=int(job["spec"].get("nprocPerNode", "1")),
        command=command, env=env, max_restarts=0, timeout_s=float(deadline) if deadline else None,
        backoff_limit=None if backoff is None else int(backoff),
    )


def run_plan(plan: LocalPlan, **kwargs: Any) -> LocalJobResult:
    """`run_local_job` with everything a LocalPlan fixes; `kwargs` for log_dir, echo, cwd, ..."""
    return run_local_job(
        replicas=plan.replicas, nproc_per_node=plan.nproc_per_node, command=plan.command, job_name=plan.job_name,
        extra_env=plan.env, max_restarts=plan.max_restarts, timeout_s=plan.timeout_s, kind=plan.kind,
        backoff_limit=plan.backoff_limit, **kwargs,
    )
