"""Submit, watch, stream, and clean up a training job (PyTorchJob or TrainJob), one lifecycle for both.

Why a wrapper around the SDKs (kubeflow-training's `TrainingClient` for PyTorchJobs, the Kubernetes
API for TrainJobs; what differs per kind is in `launch/kinds.py`):
- a timeout that is really the one asked for: `wait_for_job_conditions` counts polling rounds
  (`round(wait_timeout / polling_interval)`) and ignores the time each request takes, so it can
  overrun badly on a slow API server; `wait` here polls the job against a monotonic deadline;
- stuck pods (image pull errors, unschedulable, crash loops, failed mounts, OOM kills) fail the
  wait after a grace period with the pod, the reason and the message, instead of waiting for days;
  waiting for busy GPUs is queueing, judged against a longer queue grace and reported every few
  minutes; a TrainJob whose JobSet cannot be created (only a Warning event says so) fails at once;
- the ConfigMap that carries the training config is created before the job, then owned by it
  (ownerReferences), so the garbage collector removes it with the job;
- a failure is reported with the job's conditions and the tail of the leader's log, which is
  what one needs to see in the pipeline step's log, not "job failed";
- cancellation (Ctrl-C, or SIGTERM when KFP cancels the step's pod) deletes the job, so a
  cancelled run does not leave GPUs busy; a finished job (failed or succeeded) is kept for
  inspection until its TTL, and `cleanup` (the exit handler) deletes only an unfinished one;
- a resubmission of the same run (a retried pipeline step, or KFP's "Retry" of a run, which keeps
  the run id) attaches to the existing job instead of failing, provided it carries the same config:
  a Succeeded job is reused, a Failed one (kept for its TTL) is deleted with its ConfigMap and
  created again once both are gone;
- finished TrainJobs are deleted after a retention period (`prune_finished`): Trainer v2.3 has no
  TTL on a TrainJob, and the runtime's JobSet TTL removes only the JobSet and its pods.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from . import _signals
from ._signals import Terminated, sigterm_raises
from .kinds import JobKind, JobStatus, get_job_kind
from .pods import DEFAULT_GPU_RESOURCE, PodProblem, StuckWatch, event_time, parse_time, pod_problems
from .spec import BASE_LABELS, CONFIG_HASH_ANNOTATION, RenderedJob, configmap_name, to_dict

log = logging.getLogger(__name__)

__all__ = ["JobClient", "JobStatus", "JobError", "JobFailedError", "JobStuckError", "JobStartError",
           "JobTimeoutError", "JobCancelledError", "JobConflictError", "default_sink"]

#: How long a stuck pod (see launch/pods.py) may stay stuck before the wait fails.
DEFAULT_STUCK_POD_GRACE_S = 900.0
#: How long a pod may wait for busy GPUs ("Insufficient nvidia.com/gpu") before the wait fails.
DEFAULT_QUEUE_GRACE_S = 6 * 3600.0
#: How often the step log says how long the job has been waiting for GPUs.
DEFAULT_QUEUE_REPORT_S = 300.0
#: How long `submit` waits for a Failed job, its ConfigMap and pods to be gone before creating it again.
DEFAULT_REPLACE_TIMEOUT_S = 900.0  # pods get up to terminationGracePeriodSeconds (300 s) to stop
#: Access modes a PVC shared by the pods of several nodes needs.
SHARED_ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany")


class JobError(RuntimeError):
    """Base of the errors below; `status` is the last JobStatus seen (when there is one)."""

    def __init__(self, message: str, status: JobStatus | None = None):
        super().__init__(message)
        self.status = status


class JobFailedError(JobError):
    def __init__(self, message: str, status: JobStatus | None = None, log_tail: str = ""):
        super().__init__(message, status)
        self.log_tail = log_tail


class JobStuckError(JobFailedError):
    """A pod of the job stayed stuck (e.g. ImagePullBackOff) for longer than the grace period."""

    def __init__(self, message: str, problem: PodProblem, status: JobStatus | None = None, log_tail: str = ""):
        super().__init__(message, status, log_tail)
        self.problem = problem


class JobStartError(JobFailedError):
    """The operator reports (only in a Warning event on the job) that it cannot create the job's
    resources, e.g. a TrainJob whose JobSet the API server refuses; `reason` is the event's."""

    def __init__(self, message: str, reason: str, status: JobStatus | None = None):
        super().__init__(message, status)
        self.reason = reason


class JobTimeoutError(JobError):
    pass


class JobCancelledError(JobError):
    pass


class JobConflictError(JobError):
    """A job or ConfigMap of that name exists with a different config."""


def _api_status(exc: BaseException) -> int | None:
    """The HTTP status behind an SDK error (kubeflow-training wraps ApiException in RuntimeError)."""
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


@dataclass
class KubeApis:
    """The API clients a JobKind calls (one connection configuration)."""

    core: k8s.CoreV1Api
    custom: k8s.CustomObjectsApi
    training: Any  # kubeflow.training.TrainingClient
    request_timeout: float


class JobClient:
    """Job operations for one namespace and one kind. `client_configuration` is for tests and
    explicit clusters; otherwise kubeconfig or the in-cluster service account is used."""

    def __init__(
        self,
        namespace: str = "default",
        client_configuration: k8s.Configuration | None = None,
        config_file: str | None = None,
        context: str | None = None,
        request_timeout: float = 30.0,
        kind: str | JobKind = "pytorchjob",
        stuck_pod_grace_s: float = DEFAULT_STUCK_POD_GRACE_S,
        queue_grace_s: float = DEFAULT_QUEUE_GRACE_S,
        queue_report_s: float = DEFAULT_QUEUE_REPORT_S,
        gpu_resource: str = DEFAULT_GPU_RESOURCE,
    ):
        from kubeflow.training import TrainingClient

        self.namespace = namespace
        self.request_timeout = request_timeout
        self.kind: JobKind = get_job_kind(kind) if isinstance(kind, str) else kind
        self.stuck_pod_grace_s = stuck_pod_grace_s
        self.queue_grace_s = queue_grace_s
        self.queue_report_s = queue_report_s
        self.gpu_resource = gpu_resource
        self.replace_timeout_s = DEFAULT_REPLACE_TIMEOUT_S
        self.replace_poll_s = 1.0
        if client_configuration is None and config_file is None:
            config_file = os.environ.get("KUBECONFIG") or None  # read now: the library read it at import
        self.training = TrainingClient(
            config_file=config_file, context=context, client_configuration=client_configuration,
            namespace=namespace,
        )
        self.core: k8s.CoreV1Api = self.training.core_api
        self.apis = KubeApis(self.core, k8s.CustomObjectsApi(self.core.api_client), self.training, request_timeout)

    def _label(self, name: str, ns: str) -> str:
        return f"{self.kind.kind} {ns}/{name}"

    # -- create -----------------------------------------------------------------------------
    def submit(self, rendered: RenderedJob, exist_ok: bool = True, _replace: bool = True) -> None:
        """Create the ConfigMap, then the job (which mounts it), then make the job the ConfigMap's
        owner. Why this order: the pods find their config at once (no FailedMount while it is
        missing), and the garbage collector still deletes the ConfigMap with the job.

        A job of that name with the same config is attached to (`exist_ok`): reused when it
        succeeded, replaced (deleted, waited for, created again) when it failed."""
        if rendered.kind != self.kind.name:
            raise JobError(f"a rendered {rendered.kind} cannot be submitted by a {self.kind.name} client")
        name = rendered.name
        ns = rendered.job["metadata"].get("namespace") or self.namespace
        self.check_data_claim(rendered, ns)
        cm = rendered.configmap
        cm_name = cm["metadata"]["name"]
        try:
            self.core.create_namespaced_config_map(ns, cm, _request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status != 409 or not exist_ok:
                raise JobError(f"cannot create ConfigMap {ns}/{cm_name}: {exc.status} {exc.reason}") from exc
            existing = self.core.read_namespaced_config_map(cm_name, ns, _request_timeout=self.request_timeout)
            if (existing.data or {}) != (cm.get("data") or {}):
                raise JobConflictError(
                    f"ConfigMap {ns}/{cm_name} exists with a different config; delete the old job first"
                ) from exc
        try:
            created = self.kind.create(self.apis, rendered, ns)
        except Exception as exc:  # noqa: BLE001 - SDK errors wrap ApiException; 409 means attach
            if _api_status(exc) != 409 or not exist_ok:
                raise JobError(f"cannot create {self._label(name, ns)}: {exc}") from exc
            created = self.kind.get(self.apis, name, ns, self.request_timeout)
            want = rendered.job["metadata"].get("annotations", {}).get(CONFIG_HASH_ANNOTATION)
            have = ((created.get("metadata") or {}).get("annotations") or {}).get(CONFIG_HASH_ANNOTATION)
            if want != have:
                raise JobConflictError(f"{self._label(name, ns)} exists with config {have}, not {want}") from exc
            status = self.kind.status(created)
            going = bool((created.get("metadata") or {}).get("deletionTimestamp"))
            if (status.failed or going) and _replace:
                # KFP's Retry keeps the run id, so the retried step finds the job of the failed attempt,
                # which its operator keeps until the TTL (kubeflow/trainer@v1.9.4:pkg/controller.v1/
                # common/job.go CleanupJob; a TrainJob has none). Attaching would fail at once: delete
                # it and its ConfigMap, wait until they (and its pods) are gone, create them again.
                log.warning("%s is %s from an earlier attempt: deleting it and its ConfigMap to run it again",
                            self._label(name, ns), "being deleted" if going else status.phase)
                self.delete(name, ns)
                self._wait_gone(name, cm_name, ns)
                return self.submit(rendered, exist_ok, _replace=False)
            if status.failed or going:
                raise JobError(f"{self._label(name, ns)} is still {status.phase} after it was replaced") from exc
            if status.succeeded:
                log.info("%s already %s with the same config: reusing its result", self._label(name, ns),
                         status.phase)
            else:
                log.info("%s already exists with the same config: attaching to it", self._label(name, ns))
        else:
            log.info("created %s", self._label(name, ns))
        self._own_configmap(cm_name, ns, created)

    def _wait_gone(self, name: str, cm_name: str, ns: str) -> None:
        """Until the job, its ConfigMap and its pods are all gone: a delete returns before finalizers
        and the garbage collector are done (a create meanwhile answers 409 AlreadyExists), and the old
        pods, terminating for up to their grace period, carry the labels (and for a PyTorchJob the
        names) the new job's pods will have."""
        deadline = time.monotonic() + self.replace_timeout_s
        while True:
            left = []
            try:
                self.kind.get(self.apis, name, ns, self.request_timeout)
                left.append(self._label(name, ns))
            except Exception as exc:  # noqa: BLE001 - SDK errors wrap ApiException
                if _api_status(exc) != 404:
                    left.append(f"{self._label(name, ns)} ({exc})")
            try:
                self.core.read_namespaced_config_map(cm_name, ns, _request_timeout=self.request_timeout)
                left.append(f"ConfigMap {ns}/{cm_name}")
            except ApiException as exc:
                if exc.status != 404:
                    left.append(f"ConfigMap {ns}/{cm_name} ({exc.status} {exc.reason})")
            try:
                pods = self.pods(name, ns)
                if pods:
                    left.append(f"{len(pods)} pod(s) of the old job")
            except ApiException as exc:  # no permission to list pods: job and ConfigMap are enough
                log.debug("listing the old pods of %s: %s", name, exc)
            if not left:
                return
            if time.monotonic() >= deadline:
                raise JobError(f"{' and '.join(left)} still there {self.replace_timeout_s:g} s after the delete")
            _signals.sleep(self.replace_poll_s)

    def _own_configmap(self, cm_name: str, ns: str, job: dict[str, Any]) -> None:
        meta = job.get("metadata") or {}
        if not meta.get("uid"):
            log.warning("%s has no uid yet: ConfigMap %s left without an owner", self.kind.kind, cm_name)
            return
        owner = {"apiVersion": self.kind.api_version, "kind": self.kind.kind, "name": meta["name"],
                 "uid": meta["uid"], "controller": False, "blockOwnerDeletion": False}
        body = {"metadata": {"ownerReferences": [owner]}}
        try:
            self.core.patch_namespaced_config_map(cm_name, ns, body, _request_timeout=self.request_timeout)
        except ApiException as exc:
            # The job runs either way; only the garbage collection of its ConfigMap is at stake.
            log.warning("could not make %s the owner of ConfigMap %s/%s: %s %s", self.kind.kind, ns, cm_name,
                        exc.status, exc.reason)

    def check_data_claim(self, rendered: RenderedJob, ns: str) -> None:
        """A data PVC mounted by the pods of several nodes must be ReadOnlyMany or ReadWriteMany
        (a ReadWriteOnce volume attaches to one node: the other pods would hang in FailedMount).
        Checked where the client may read the claim; a 403 only warns."""
        if rendered.nnodes < 2:
            return
        for claim in _claims(rendered.job):
            try:
                pvc = self.core.read_namespaced_persistent_volume_claim(claim, ns, _request_timeout=self.request_timeout)
            except ApiException as exc:
                if exc.status == 404:
                    raise JobError(f"data volume claim {ns}/{claim} does not exist") from exc
                log.warning("cannot read PersistentVolumeClaim %s/%s (%s %s): its access modes are unchecked",
                            ns, claim, exc.status, exc.reason)
                continue
            modes = list(pvc.spec.access_modes or []) if pvc.spec else []
            if not set(modes) & set(SHARED_ACCESS_MODES):
                raise JobError(f"data volume claim {ns}/{claim} has access modes {modes}: pods on "
                               f"{rendered.nnodes} nodes need ReadOnlyMany or ReadWriteMany")

    # -- read -------------------------------------------------------------------------------
    def get(self, name: str, namespace: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        return self.kind.get(self.apis, name, namespace or self.namespace, timeout or self.request_timeout)

    def status(self, name: str, namespace: str | None = None, timeout: float | None = None) -> JobStatus:
        return self.kind.status(self.get(name, namespace, timeout))

    def pods(self, name: str, namespace: str | None = None) -> list[dict[str, Any]]:
        ns = namespace or self.namespace
        resp = self.core.list_namespaced_pod(ns, label_selector=self.kind.pod_selector(name),
                                             _request_timeout=self.request_timeout)
        return [to_dict(p) for p in resp.items]

    def pod_events(self, namespace: str | None = None) -> list[dict[str, Any]]:
        ns = namespace or self.namespace
        resp = self.core.list_namespaced_event(ns, field_selector="involvedObject.kind=Pod",
                                               _request_timeout=self.request_timeout)
        return [to_dict(e) for e in resp.items]

    def stuck_pods(self, name: str, namespace: str | None = None) -> list[PodProblem]:
        """What keeps the job's pods from running now (launch/pods.py)."""
        ns = namespace or self.namespace
        pods = self.pods(name, ns)
        if not pods:
            return []
        # Events only say more about pods that are not running yet (FailedMount, FailedScheduling).
        waiting = any((p.get("status") or {}).get("phase") == "Pending" for p in pods)
        return pod_problems(pods, self.pod_events(ns) if waiting else [], self.gpu_resource)

    def job_events(self, name: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The Events about the job object itself (of any uid: a deleted job's outlive it)."""
        ns = namespace or self.namespace
        resp = self.core.list_namespaced_event(
            ns, field_selector=f"involvedObject.kind={self.kind.kind},involvedObject.name={name}",
            _request_timeout=self.request_timeout)
        return [to_dict(e) for e in resp.items]

    def start_failure(self, name: str, namespace: str | None = None,
                      status: JobStatus | None = None) -> dict[str, Any] | None:
        """The newest Warning event on this very job (same uid) whose reason its kind lists in
        `fatal_event_reasons`, while nothing shows that the job's resources exist (no child-job
        status, no pods); None otherwise.

        Why: Trainer v2.3 reports a JobSet it cannot create (an admission webhook refuses it, a name
        too long) only as a `TrainJobResourcesCreationFailed` Warning event and sets no condition
        (kubeflow/trainer@v2.3.0:pkg/controller/trainjob_controller.go Reconcile), so the TrainJob
        would sit without a phase until the deadline. Once a JobSet exists its status is copied into
        `jobsStatus` (pkg/runtime/framework/plugins/jobset/jobset.go TrainJobStatus), which makes an
        older event stale."""
        reasons = tuple(getattr(self.kind, "fatal_event_reasons", ()))
        ns = namespace or self.namespace
        status = status or self.status(name, ns)
        if not reasons or status.finished or status.replica_statuses or self.pods(name, ns):
            return None
        found = [e for e in self.job_events(name, ns)
                 if e.get("type") == "Warning" and e.get("reason") in reasons
                 and (not status.uid or (e.get("involvedObject") or {}).get("uid") in (None, status.uid))]
        return max(found, key=lambda e: event_time(e) or parse_time("1970-01-01T00:00:00Z")) if found else None

    def leader_pod(self, name: str, namespace: str | None = None) -> str | None:
        """The pod whose log tells the story (node rank 0), or None while there is none."""
        ns = namespace or self.namespace
        try:
            job = self.get(name, ns)
        except Exception:  # noqa: BLE001 - a PyTorchJob's leader has a fixed name even then
            job = {"metadata": {"name": name}, "spec": {}}
        try:
            pods = self.pods(name, ns) if self.kind.name != "pytorchjob" else []
        except Exception:  # noqa: BLE001
            pods = []
        return self.kind.leader_pod(job, pods)

    def logs(self, name: str, namespace: str | None = None, tail_lines: int | None = None, pod: str | None = None) -> str:
        ns = namespace or self.namespace
        pod = pod or self.leader_pod(name, ns)
        if pod is None:
            return "(no pod of node rank 0 yet)"
        # Raw bytes: the generated client would otherwise try to parse a log line as JSON.
        resp = self.core.read_namespaced_pod_log(
            pod, ns, container=self.kind.container_name, tail_lines=tail_lines,
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

        Reconnects when the stream ends (a container restart, an API server hiccup, a TrainJob's
        node 0 recreated under a new name); asks for timestamps and drops lines already seen, so a
        reconnect does not print a line twice.
        """
        ns = namespace or self.namespace
        stop = stop or threading.Event()
        fixed_pod = pod
        last_ts: int | None = None
        last_seen = time.monotonic()
        while not stop.is_set():
            pod = fixed_pod or self.leader_pod(name, ns)
            phase = None
            if pod is not None:
                try:
                    phase = self.core.read_namespaced_pod(pod, ns, _request_timeout=self.request_timeout).status.phase
                except Exception as exc:  # noqa: BLE001 - not there yet (404) or an API hiccup: ask again
                    log.debug("reading pod %s: %s", pod, exc)
            if phase not in ("Running", "Succeeded", "Failed"):
                if self._finished_quietly(name, ns):
                    return
                stop.wait(poll_interval)
                continue
            out = sink or default_sink(pod)
            since = None if last_ts is None else int(time.monotonic() - last_seen) + 5
            try:
                resp = self.core.read_namespaced_pod_log(
                    pod, ns, container=self.kind.container_name, follow=True, timestamps=True,
                    since_seconds=since, _preload_content=False,
                )
                for line in _iter_lines(resp, stop):
                    ts_text, _, text = line.partition(" ")
                    ts = _parse_ts(ts_text)
                    if ts is not None and last_ts is not None and ts <= last_ts:
                        continue
                    last_ts = ts if ts is not None else last_ts
                    last_seen = time.monotonic()
                    out(text if ts is not None else line)
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
        except Exception:  # noqa: BLE001
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
        stuck_pod_grace_s: float | None = None,
        queue_grace_s: float | None = None,
    ) -> JobStatus:
        """Poll until the job succeeds (return its status) or fails (raise JobFailedError with
        the conditions and the leader's log tail), until one of its pods has been stuck for
        `stuck_pod_grace_s` or has waited for busy GPUs for `queue_grace_s` (JobStuckError naming
        the pod, reason and message), until the operator says it cannot create the job's resources
        (JobStartError), or until `timeout_s` passes (JobTimeoutError).

        The log gets one line per change (a phase, a pod problem appearing or clearing) and, while
        a pod waits for GPUs, one line every `queue_report_s`. API errors are retried until the
        deadline; a job that disappears (404) is a failure.
        """
        ns = namespace or self.namespace
        label = self._label(name, ns)
        deadline = time.monotonic() + timeout_s
        watch = StuckWatch(self.stuck_pod_grace_s if stuck_pod_grace_s is None else stuck_pod_grace_s,
                           self.queue_grace_s if queue_grace_s is None else queue_grace_s)
        last: JobStatus | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeoutError(
                    f"{label} did not finish within {timeout_s:g} s" + (f" (last state: {last.phase})" if last else ""),
                    last,
                )
            try:
                current = self.status(name, ns, timeout=max(0.1, min(self.request_timeout, remaining)))
            except Exception as exc:  # noqa: BLE001 - SDK and urllib3 errors alike: retry until the deadline
                if _api_status(exc) == 404:
                    raise JobFailedError(f"{label} no longer exists (deleted?)", last) from exc
                log.warning("reading %s: %s (retrying)", label, exc)
            else:
                if last is None or current.phase != last.phase:
                    log.info("%s: %s", label, current.phase)
                last = current
                if on_status:
                    on_status(current)
                if current.succeeded:
                    return current
                if current.failed:
                    tail = self._log_tail(name, ns, log_tail_lines)
                    raise JobFailedError(f"{current.describe()}\n--- last {log_tail_lines} log lines ---\n{tail}",
                                         current, tail)
                self._check_stuck(name, ns, watch, current, log_tail_lines)
            _signals.sleep(min(poll_interval, deadline - time.monotonic()))

    def _check_stuck(self, name: str, ns: str, watch: StuckWatch, current: JobStatus, tail_lines: int) -> None:
        label = self._label(name, ns)
        try:
            problems = self.stuck_pods(name, ns)
            failure = None if problems else self.start_failure(name, ns, current)
        except Exception as exc:  # noqa: BLE001 - no pods/events permission or a hiccup: keep waiting
            log.debug("reading the pods and events of %s: %s", name, exc)
            return
        if failure is not None:
            raise JobStartError(f"{label} cannot start: {failure.get('reason')}: {failure.get('message') or ''}"
                                .rstrip(": "), failure.get("reason") or "", current)
        now = time.monotonic()
        stuck = watch.update(problems, now)
        changed = {(p.pod, p.reason) for p in watch.appeared}  # e.g. queueing turned into a fault
        for p in watch.cleared:
            if (p.pod, p.reason) not in changed:
                log.info("%s: %s: %s cleared", label, p.pod, p.reason)
        for p in watch.appeared:
            if p.queued:
                log.info("%s: %s (waiting for GPUs: queueing, allowed for %s)", label, p.describe(),
                         _duration(watch.queue_grace_s))
            else:
                log.warning("%s: %s (allowed for %s)", label, p.describe(), _duration(watch.grace_s))
        queued = watch.queued()
        if not queued:
            watch.reported_at = None
        elif watch.reported_at is None:
            watch.reported_at = now
        elif now - watch.reported_at >= self.queue_report_s:
            watch.reported_at = now
            oldest = queued[0]
            log.info("%s: %d pod(s) waiting for GPUs for %s (queue grace %s); %s", label, len(queued),
                     _duration(now - watch.since(oldest)), _duration(watch.queue_grace_s), oldest.describe())
        if stuck is not None:
            tail = self._log_tail(name, ns, tail_lines) if stuck.reason in ("CrashLoopBackOff", "OOMKilled") else ""
            what = "waited for GPUs" if stuck.queued else "is stuck"
            grace = "queue grace" if stuck.queued else "stuck-pod grace"
            raise JobStuckError(
                f"{label} {what}: {stuck.describe()} (for more than the {grace} of {_duration(watch.grace_of(stuck))})"
                + (f"\n--- last {tail_lines} log lines ---\n{tail}" if tail else ""),
                stuck, current, tail,
            )

    def _log_tail(self, name: str, ns: str, lines: int) -> str:
        try:
            return self.logs(name, ns, tail_lines=lines)
        except Exception as exc:  # noqa: BLE001 - the failure report must not fail itself
            return f"(log unavailable: {exc})"

    # -- delete -----------------------------------------------------------------------------
    def delete(self, name: str, namespace: str | None = None, missing_ok: bool = True) -> bool:
        """Delete the job (its pods follow by garbage collection) and its ConfigMap (owned by the
        job, deleted explicitly too in case the owner reference could not be set). Returns whether
        the job existed."""
        ns = namespace or self.namespace
        existed = True
        try:
            self.kind.delete(self.apis, name, ns)
            log.info("deleted %s", self._label(name, ns))
        except Exception as exc:  # noqa: BLE001 - SDK errors wrap ApiException
            if _api_status(exc) != 404 or not missing_ok:
                raise
            existed = False
        try:
            self.core.delete_namespaced_config_map(configmap_name(name), ns, _request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status != 404 or not missing_ok:
                raise
        return existed

    def cleanup(self, name: str, namespace: str | None = None) -> str:
        """The exit handler's cleanup: delete the job only while it is unfinished (a cancelled or
        failed step left it running); a finished job stays for inspection until its TTL."""
        ns = namespace or self.namespace
        try:
            status = self.status(name, ns)
        except Exception as exc:  # noqa: BLE001
            if _api_status(exc) == 404:
                return f"no {self._label(name, ns)} left"
            raise
        if status.finished:
            return f"{self._label(name, ns)} is {status.phase}: kept for inspection until its TTL"
        self.delete(name, ns)
        return f"deleted unfinished {self._label(name, ns)} (was {status.phase})"

    def prune_finished(self, retention_s: float | None, namespace: str | None = None, keep: str | None = None,
                       now: datetime | None = None) -> list[str]:
        """Delete this project's jobs (label app.kubernetes.io/managed-by=gbcosface) that finished more
        than `retention_s` ago, with their ConfigMaps; `keep` names one to spare (the run being
        started, which a retry reuses); None keeps all. Returns the names deleted.

        Why only for kinds that say when they finished (`finished_at`): a TrainJob has no TTL in
        Trainer v2.3 and the runtime's JobSet TTL removes only the JobSet and its pods
        (kubernetes-sigs/jobset@v0.12.0 pkg/controllers/ttl_after_finished.go), so finished TrainJobs
        and their ConfigMaps would pile up; a PyTorchJob's operator deletes it after
        runPolicy.ttlSecondsAfterFinished (kubeflow/trainer@v1.9.4 pkg/controller.v1/common/job.go
        CleanupJob). Failures to list or delete are logged, never raised: pruning must not fail a run."""
        lister = getattr(self.kind, "list_jobs", None)
        finished_at = getattr(self.kind, "finished_at", None)
        if retention_s is None or lister is None or finished_at is None:
            return []
        ns = namespace or self.namespace
        now = now or datetime.now(UTC)
        selector = ",".join(f"{k}={v}" for k, v in BASE_LABELS.items() if k.endswith("managed-by"))
        try:
            jobs = lister(self.apis, ns, selector)
        except Exception as exc:  # noqa: BLE001 - e.g. no list permission
            log.warning("cannot list %ss in %s to prune finished ones: %s", self.kind.kind, ns, exc)
            return []
        deleted = []
        for job in jobs:
            name = (job.get("metadata") or {}).get("name")
            done = parse_time(finished_at(job))
            if not name or name == keep or done is None or (now - done).total_seconds() < retention_s:
                continue
            try:
                self.delete(name, ns)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not delete finished %s: %s", self._label(name, ns), exc)
                continue
            log.info("deleted %s: finished at %s, retention %s", self._label(name, ns),
                     done.strftime("%Y-%m-%dT%H:%M:%SZ"), _duration(retention_s))
            deleted.append(name)
        return deleted

    def _delete_quietly(self, name: str, ns: str) -> None:
        """Cleanup on the way out must not hide why we are leaving (a timeout, a cancel)."""
        try:
            self.delete(name, ns)
        except Exception as exc:  # noqa: BLE001
            log.error("could not delete %s: %s (delete it by hand)", self._label(name, ns), exc)

    # -- all together -----------------------------------------------------------------------
    def run(
        self,
        rendered: RenderedJob,
        timeout_s: float,
        poll_interval: float = 10.0,
        stream_logs: bool = True,
        log_sink: Callable[[str], None] | None = None,
        delete_on_timeout: bool = True,
        stuck_pod_grace_s: float | None = None,
        queue_grace_s: float | None = None,
    ) -> JobStatus:
        """Submit, stream the leader's log, wait; delete the job if cancelled (KeyboardInterrupt,
        SIGTERM), timed out, stuck or unable to start (its pods would otherwise hold GPUs or retry
        forever). A failed job is kept for inspection (its TTL removes it; a retry replaces it)."""
        name = rendered.name
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
                return self.wait(name, timeout_s, ns, poll_interval=poll_interval, stuck_pod_grace_s=stuck_pod_grace_s,
                                 queue_grace_s=queue_grace_s)
            except JobTimeoutError:
                if delete_on_timeout:
                    self._delete_quietly(name, ns)
                raise
            except (JobStuckError, JobStartError):
                # Its pods would retry forever; a retried step must find no stuck job to attach to.
                self._delete_quietly(name, ns)
                raise
            except (KeyboardInterrupt, Terminated) as exc:
                log.warning("cancelled: deleting %s", self._label(name, ns))
                self._delete_quietly(name, ns)
                raise JobCancelledError(f"{self._label(name, ns)} cancelled and deleted") from exc
            finally:
                stop.set()
                if follower is not None:
                    follower.join(timeout=poll_interval)


def _duration(seconds: float) -> str:
    """A duration a person reads at a glance in a step log: 45s, 12m30s, 6h, 2h05m."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h" + (f"{m:02d}m" if m else "")
    return f"{m}m" + (f"{sec:02d}s" if sec else "")


def _claims(obj: Any) -> list[str]:
    """Every persistentVolumeClaim.claimName in a manifest (any kind, any nesting)."""
    found: list[str] = []
    if isinstance(obj, dict):
        pvc = obj.get("persistentVolumeClaim")
        if isinstance(pvc, dict) and pvc.get("claimName"):
            found.append(pvc["claimName"])
        for value in obj.values():
            found += _claims(value)
    elif isinstance(obj, list):
        for value in obj:
            found += _claims(value)
    return sorted(set(found))


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
