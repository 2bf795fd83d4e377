"""Submit, watch, stream, and clean up a PyTorchJob through the kubeflow-training SDK.

Why a wrapper around `TrainingClient`:
- a timeout that is really the one asked for: `wait_for_job_conditions` counts polling rounds
  (`round(wait_timeout / polling_interval)`) and ignores the time each request takes, so it can
  overrun badly on a slow API server; `wait` here polls `get_job` against a monotonic deadline;
- the ConfigMap that carries the training config is created before the job and deleted with it;
- a failure is reported with the job's conditions and the tail of the leader's log, which is
  what one needs to see in the pipeline step's log, not "job failed";
- cancellation (Ctrl-C, or SIGTERM when KFP cancels the step's pod) deletes the job, so a
  cancelled run does not leave GPUs busy;
- a resubmission of the same run (a retried pipeline step) attaches to the existing job instead
  of failing, provided it carries the same config.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubeflow.training import TrainingClient
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from . import contract
from ._signals import Terminated, sigterm_raises
from .pytorchjob import CONFIG_HASH_ANNOTATION, RenderedJob, configmap_name

log = logging.getLogger(__name__)

TERMINAL = ("Succeeded", "Failed")


class JobError(RuntimeError):
    """Base of the errors below; `status` is the last JobStatus seen (when there is one)."""

    def __init__(self, message: str, status: JobStatus | None = None):
        super().__init__(message)
        self.status = status


class JobFailedError(JobError):
    def __init__(self, message: str, status: JobStatus | None = None, log_tail: str = ""):
        super().__init__(message, status)
        self.log_tail = log_tail


class JobTimeoutError(JobError):
    pass


class JobCancelledError(JobError):
    pass


class JobConflictError(JobError):
    """A job or ConfigMap of that name exists with a different config."""


@dataclass
class JobStatus:
    name: str
    namespace: str
    conditions: list[dict[str, Any]] = field(default_factory=list)
    replica_statuses: dict[str, Any] = field(default_factory=dict)

    @property
    def phase(self) -> str:
        """The type of the latest true condition (Created, Running, Restarting, Succeeded,
        Failed), or Pending before the operator has reconciled the job."""
        true = [c for c in self.conditions if c.get("status") == "True"]
        return true[-1]["type"] if true else "Pending"

    @property
    def succeeded(self) -> bool:
        return any(c.get("type") == "Succeeded" and c.get("status") == "True" for c in self.conditions)

    @property
    def failed(self) -> bool:
        return any(c.get("type") == "Failed" and c.get("status") == "True" for c in self.conditions)

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failed

    def describe(self) -> str:
        lines = [f"PyTorchJob {self.namespace}/{self.name}: {self.phase}"]
        for c in self.conditions:
            lines.append(f"  {c.get('type')}={c.get('status')} reason={c.get('reason')} {c.get('message') or ''}".rstrip())
        return "\n".join(lines)

    @classmethod
    def from_model(cls, job: Any) -> JobStatus:
        conditions = []
        replica_statuses: dict[str, Any] = {}
        status = getattr(job, "status", None)
        if status is not None:
            for c in status.conditions or []:
                conditions.append(
                    {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
                )
            for rtype, rs in (status.replica_statuses or {}).items():
                replica_statuses[rtype] = {"active": rs.active, "succeeded": rs.succeeded, "failed": rs.failed}
        return cls(job.metadata.name, job.metadata.namespace, conditions, replica_statuses)


def _api_status(exc: BaseException) -> int | None:
    """The HTTP status behind an SDK error (the SDK wraps ApiException in RuntimeError)."""
    for err in (exc, exc.__cause__):
        if isinstance(err, ApiException):
            return err.status
    return None


def _parse_ts(text: str) -> int | None:
    """RFC 3339 timestamp with up to 9 fractional digits -> integer nanoseconds since the epoch."""
    try:
        main, _, frac = text.rstrip("Z").partition(".")
        seconds = datetime.fromisoformat(main + "+00:00").timestamp()
        return int(seconds) * 1_000_000_000 + int((frac + "000000000")[:9])
    except ValueError:
        return None


class JobClient:
    """PyTorchJob operations for one namespace. `client_configuration` is for tests and
    explicit clusters; otherwise kubeconfig or the in-cluster service account is used."""

    def __init__(
        self,
        namespace: str = "default",
        client_configuration: k8s.Configuration | None = None,
        config_file: str | None = None,
        context: str | None = None,
        request_timeout: float = 30.0,
    ):
        self.namespace = namespace
        self.request_timeout = request_timeout
        self.training = TrainingClient(
            config_file=config_file, context=context, client_configuration=client_configuration,
            namespace=namespace,
        )
        self.core: k8s.CoreV1Api = self.training.core_api

    # -- create -----------------------------------------------------------------------------
    def submit(self, rendered: RenderedJob, exist_ok: bool = True) -> None:
        """Create the ConfigMap, then the PyTorchJob (which mounts it)."""
        name = rendered.job["metadata"]["name"]
        ns = rendered.job["metadata"].get("namespace") or self.namespace
        cm = rendered.configmap_model
        try:
            self.core.create_namespaced_config_map(ns, cm, _request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status != 409 or not exist_ok:
                raise JobError(f"cannot create ConfigMap {ns}/{cm.metadata.name}: {exc.status} {exc.reason}") from exc
            existing = self.core.read_namespaced_config_map(cm.metadata.name, ns, _request_timeout=self.request_timeout)
            if (existing.data or {}) != (cm.data or {}):
                raise JobConflictError(
                    f"ConfigMap {ns}/{cm.metadata.name} exists with a different config; delete the old job first"
                ) from exc
        try:
            self.training.create_job(job=rendered.job_model, namespace=ns)
        except RuntimeError as exc:
            if _api_status(exc) != 409 or not exist_ok:
                raise JobError(f"cannot create PyTorchJob {ns}/{name}: {exc}") from exc
            existing = self.training.get_job(name, ns, timeout=self.request_timeout)
            want = rendered.job["metadata"].get("annotations", {}).get(CONFIG_HASH_ANNOTATION)
            have = (existing.metadata.annotations or {}).get(CONFIG_HASH_ANNOTATION)
            if want != have:
                raise JobConflictError(f"PyTorchJob {ns}/{name} exists with config {have}, not {want}") from exc
            log.info("PyTorchJob %s/%s already exists with the same config: attaching to it", ns, name)
            return
        log.info("created PyTorchJob %s/%s", ns, name)

    # -- read -------------------------------------------------------------------------------
    def status(self, name: str, namespace: str | None = None, timeout: float | None = None) -> JobStatus:
        job = self.training.get_job(name, namespace or self.namespace, timeout=timeout or self.request_timeout)
        return JobStatus.from_model(job)

    def leader_pod(self, name: str, namespace: str | None = None) -> str:
        """The pod whose log tells the story: the Master, or Worker 0 in an elastic job."""
        try:
            job = self.training.get_job(name, namespace or self.namespace, timeout=self.request_timeout)
            specs = job.spec.pytorch_replica_specs or {}
            if contract.MASTER not in specs and contract.WORKER in specs:
                return f"{name}-worker-0"
        except (RuntimeError, TimeoutError):
            pass
        return f"{name}-master-0"

    def logs(self, name: str, namespace: str | None = None, tail_lines: int | None = None, pod: str | None = None) -> str:
        ns = namespace or self.namespace
        pod = pod or self.leader_pod(name, ns)
        # Raw bytes: the generated client would otherwise try to parse a log line as JSON.
        resp = self.core.read_namespaced_pod_log(
            pod, ns, container=contract.CONTAINER_NAME, tail_lines=tail_lines,
            _request_timeout=self.request_timeout, _preload_content=False,
        )
        return resp.data.decode("utf-8", errors="replace")

    def follow_logs(
        self,
        name: str,
        namespace: str | None = None,
        sink: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
        poll_interval: float = 2.0,
        pod: str | None = None,
    ) -> None:
        """Stream the leader pod's log to `sink` until `stop` is set or the job finishes.

        Reconnects when the stream ends (a container restart under restartPolicy OnFailure, an
        API server hiccup); asks for timestamps and drops lines already seen, so a reconnect does
        not print a line twice.
        """
        ns = namespace or self.namespace
        stop = stop or threading.Event()
        pod = pod or self.leader_pod(name, ns)
        sink = sink or default_sink(pod)
        last_ts: int | None = None
        last_seen = time.monotonic()
        while not stop.is_set():
            try:
                phase = self.core.read_namespaced_pod(pod, ns, _request_timeout=self.request_timeout).status.phase
            except Exception as exc:  # noqa: BLE001 - not there yet (404) or an API hiccup: ask again
                log.debug("reading pod %s: %s", pod, exc)
                phase = None
            if phase not in ("Running", "Succeeded", "Failed"):
                if self._finished_quietly(name, ns):
                    return
                stop.wait(poll_interval)
                continue
            since = None if last_ts is None else int(time.monotonic() - last_seen) + 5
            try:
                resp = self.core.read_namespaced_pod_log(
                    pod, ns, container=contract.CONTAINER_NAME, follow=True, timestamps=True,
                    since_seconds=since, _preload_content=False,
                )
                for line in _iter_lines(resp, stop):
                    ts_text, _, text = line.partition(" ")
                    ts = _parse_ts(ts_text)
                    if ts is not None and last_ts is not None and ts <= last_ts:
                        continue
                    last_ts = ts if ts is not None else last_ts
                    last_seen = time.monotonic()
                    sink(text if ts is not None else line)
                resp.release_conn()
            except ApiException as exc:
                log.debug("log stream of %s: %s", pod, exc)
            except Exception as exc:  # noqa: BLE001 - a broken stream is retried, never fatal
                log.debug("log stream of %s broke: %s", pod, exc)
            if phase in ("Succeeded", "Failed") or self._finished_quietly(name, ns):
                return
            stop.wait(poll_interval)

    def _finished_quietly(self, name: str, ns: str) -> bool:
        try:
            return self.status(name, ns).finished
        except (RuntimeError, TimeoutError):
            return False

    # -- wait -------------------------------------------------------------------------------
    def wait(
        self,
        name: str,
        timeout_s: float,
        namespace: str | None = None,
        poll_interval: float = 10.0,
        on_status: Callable[[JobStatus], None] | None = None,
        log_tail_lines: int = 50,
    ) -> JobStatus:
        """Poll until the job succeeds (return its status) or fails (raise JobFailedError with
        the conditions and the leader's log tail), or until `timeout_s` passes (JobTimeoutError).

        API errors are retried until the deadline; a job that disappears (404) is a failure.
        """
        ns = namespace or self.namespace
        deadline = time.monotonic() + timeout_s
        last: JobStatus | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeoutError(
                    f"PyTorchJob {ns}/{name} did not finish within {timeout_s:g} s"
                    + (f" (last state: {last.phase})" if last else ""), last,
                )
            try:
                current = self.status(name, ns, timeout=max(0.1, min(self.request_timeout, remaining)))
            except (RuntimeError, TimeoutError) as exc:
                if _api_status(exc) == 404:
                    raise JobFailedError(f"PyTorchJob {ns}/{name} no longer exists (deleted?)", last) from exc
                log.warning("reading PyTorchJob %s/%s: %s (retrying)", ns, name, exc)
            else:
                if last is None or current.phase != last.phase:
                    log.info("PyTorchJob %s/%s: %s", ns, name, current.phase)
                last = current
                if on_status:
                    on_status(current)
                if current.succeeded:
                    return current
                if current.failed:
                    tail = self._log_tail(name, ns, log_tail_lines)
                    raise JobFailedError(f"{current.describe()}\n--- last {log_tail_lines} log lines ---\n{tail}",
                                         current, tail)
            time.sleep(max(0.0, min(poll_interval, deadline - time.monotonic())))

    def _log_tail(self, name: str, ns: str, lines: int) -> str:
        try:
            return self.logs(name, ns, tail_lines=lines)
        except Exception as exc:  # noqa: BLE001 - the failure report must not fail itself
            return f"(log unavailable: {exc})"

    # -- delete -----------------------------------------------------------------------------
    def delete(self, name: str, namespace: str | None = None, missing_ok: bool = True) -> bool:
        """Delete the PyTorchJob (its pods and services follow by garbage collection) and its
        ConfigMap. Returns whether the job existed."""
        ns = namespace or self.namespace
        existed = True
        try:
            self.training.delete_job(name, ns, delete_options=k8s.V1DeleteOptions(propagation_policy="Background"))
            log.info("deleted PyTorchJob %s/%s", ns, name)
        except RuntimeError as exc:
            if _api_status(exc) != 404 or not missing_ok:
                raise
            existed = False
        try:
            self.core.delete_namespaced_config_map(configmap_name(name), ns, _request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status != 404 or not missing_ok:
                raise
        return existed

    def _delete_quietly(self, name: str, ns: str) -> None:
        """Cleanup on the way out must not hide why we are leaving (a timeout, a cancel)."""
        try:
            self.delete(name, ns)
        except Exception as exc:  # noqa: BLE001
            log.error("could not delete PyTorchJob %s/%s: %s (delete it by hand)", ns, name, exc)

    # -- all together -----------------------------------------------------------------------
    def run(
        self,
        rendered: RenderedJob,
        timeout_s: float,
        poll_interval: float = 10.0,
        stream_logs: bool = True,
        log_sink: Callable[[str], None] | None = None,
        delete_on_timeout: bool = True,
    ) -> JobStatus:
        """Submit, stream the leader's log, wait; delete the job if cancelled (KeyboardInterrupt,
        SIGTERM) or timed out. A failed job is kept for inspection (its TTL removes it)."""
        name = rendered.job["metadata"]["name"]
        ns = rendered.job["metadata"].get("namespace") or self.namespace
        stop = threading.Event()
        follower = None
        with sigterm_raises():
            try:
                self.submit(rendered)
                if stream_logs:
                    follower = threading.Thread(
                        target=self.follow_logs, kwargs={"name": name, "namespace": ns, "sink": log_sink, "stop": stop},
                        name=f"logs-{name}", daemon=True,
                    )
                    follower.start()
                return self.wait(name, timeout_s, ns, poll_interval=poll_interval)
            except JobTimeoutError:
                if delete_on_timeout:
                    self._delete_quietly(name, ns)
                raise
            except (KeyboardInterrupt, Terminated) as exc:
                log.warning("cancelled: deleting PyTorchJob %s/%s", ns, name)
                self._delete_quietly(name, ns)
                raise JobCancelledError(f"PyTorchJob {ns}/{name} cancelled and deleted") from exc
            finally:
                stop.set()
                if follower is not None:
                    follower.join(timeout=poll_interval)


def _iter_lines(resp: Any, stop: threading.Event) -> Iterator[str]:
    """Lines of a streaming urllib3 response, decoded; stops early when `stop` is set."""
    buf = b""
    for chunk in resp.stream(4096, decode_content=True):
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            yield raw.decode("utf-8", errors="replace").rstrip("\r")
        if stop.is_set():
            return
    if buf:
        yield buf.decode("utf-8", errors="replace")


def default_sink(prefix: str) -> Callable[[str], None]:
    def sink(line: str) -> None:
        sys.stdout.write(f"[{prefix}] {line}\n")
        sys.stdout.flush()

    return sink
