"""Stuck pods: read a job's pods and their events and name what keeps them from running.

Why: a job whose pods cannot start never reaches Failed; the operator keeps it Created/Running
while its image does not pull, its volume does not mount or no node fits it, and a pipeline step
that only watches the job's phase would wait until its deadline (days). The same detection serves
both kinds: it only looks at pods (selected by the kind's labels) and their events.

Detected (`pod_problems`), from the pod's status and, for what only events say, its events:
- ErrImagePull, ImagePullBackOff, InvalidImageName, CreateContainerConfigError,
  CreateContainerError (a container waiting with that reason);
- CrashLoopBackOff, reported as OOMKilled when the container's last termination was OOMKilled;
- OOMKilled: a container terminated by the OOM killer and not running again;
- Unschedulable: PodScheduled=False with reason Unschedulable, or a FailedScheduling event;
- FailedMount / FailedAttachVolume: events of a pod that is not running.

Only evidence newer than the pod's current state counts. Events outlive what they reported (the
API server keeps them about an hour, `--event-ttl`), so a pod that was unschedulable while the GPU
pool scaled up and now pulls a multi-GB image still has its FailedScheduling events. Hence:
- an event counts only for the pod it names (`involvedObject.uid`, where both carry one: a
  PyTorchJob's pods keep their names across restarts) and only if it is not older than the pod;
- FailedScheduling counts only while the pod is not scheduled (no PodScheduled=True, no nodeName);
- FailedMount / FailedAttachVolume count only if newer than every sign that the kubelet got past
  the volumes: a Pulling/Pulled/Created/Started event (the kubelet waits for the pod's volumes
  before it pulls or starts any container) or a container that has started. An image pull in
  progress is progress.
An event's time is when it last happened (`event_time`): the two event APIs fill different fields.

Waiting for busy GPUs is queueing, not a fault: an Unschedulable problem whose scheduler message
says some node has "Insufficient <gpu resource>" is `queued` (those nodes pass every other filter:
the scheduler reports a node's first failing filter, and the resource fit runs after taints and
affinity). Anything else unschedulable (an untolerated taint, no node matching the selector) is a
fault.

`StuckWatch` turns a stream of such observations into a failure only after a problem has been
seen without a break for its grace: `grace_s` for faults (an image pull or a transient FailedMount
while a volume attaches legitimately takes minutes) and the longer `queue_grace_s` for queueing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

WAITING_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                   "CreateContainerError", "CrashLoopBackOff")
EVENT_REASONS = ("FailedScheduling", "FailedMount", "FailedAttachVolume")
#: Normal events of the kubelet after it has mounted the pod's volumes (it pulls and starts
#: containers only then), and of the attach/detach controller after an attach.
PAST_MOUNT_REASONS = ("Pulling", "Pulled", "Created", "Started")
PAST_ATTACH_REASONS = ("SuccessfulAttachVolume", *PAST_MOUNT_REASONS)
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class PodProblem:
    pod: str
    reason: str
    message: str
    queued: bool = False  # waiting for busy GPUs: judged against the queue grace, not the stuck grace

    def describe(self) -> str:
        return f"pod {self.pod}: {self.reason}: {self.message}".rstrip(": ")

    @property
    def key(self) -> tuple[str, str, bool]:
        return (self.pod, self.reason, self.queued)


def parse_time(value: Any) -> datetime | None:
    """An API timestamp (RFC 3339, 'Z' or an offset, up to 9 fractional digits; or a datetime the
    client already parsed) as an aware datetime; None when absent or unreadable."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    head, dot, rest = text.partition(".")
    if dot:  # Python 3.11 reads at most 6 fractional digits: cut nanoseconds to microseconds
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(digits, 6)]}{rest[digits:]}"
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def event_time(ev: Mapping[str, Any]) -> datetime | None:
    """When an event last happened. Two writers fill different fields of a core/v1 Event:
    - the legacy recorder (the kubelet: Pulling, FailedMount, ...): `firstTimestamp`,
      `lastTimestamp` and `count`, no `eventTime`;
    - the events.k8s.io/v1 recorder (kube-scheduler's FailedScheduling; Trainer v2.3's controller,
      kubeflow/trainer@v2.3.0:pkg/controller/trainjob_controller.go `recorder events.EventRecorder`):
      `eventTime` (the first occurrence) and, once it repeats, `series.lastObservedTime` and
      `series.count`; `lastTimestamp` stays null.
    So: series.lastObservedTime, else lastTimestamp, else eventTime, else firstTimestamp, else the
    object's creationTimestamp. Compared as times, never as strings ("...05.5Z" sorts before "...05Z")."""
    series = ev.get("series") or {}
    for value in (series.get("lastObservedTime"), ev.get("lastTimestamp"), ev.get("eventTime"),
                  ev.get("firstTimestamp"), (ev.get("metadata") or {}).get("creationTimestamp")):
        stamp = parse_time(value)
        if stamp is not None:
            return stamp
    return None


def gpu_queueing(message: str, gpu_resource: str = DEFAULT_GPU_RESOURCE) -> bool:
    """Whether a scheduler message ("0/5 nodes are available: 2 Insufficient nvidia.com/gpu, 3
    node(s) didn't match Pod's node affinity/selector. preemption: ...") says that some node would
    fit but for its GPUs being in use. Only the part before "preemption:" is read."""
    return f"Insufficient {gpu_resource}" in message.split("preemption:", 1)[0]


def _statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    st = pod.get("status") or {}
    return [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]


def _pod_problems(pod: Mapping[str, Any], gpu_resource: str) -> list[PodProblem]:
    name = (pod.get("metadata") or {}).get("name", "?")
    st = pod.get("status") or {}
    out: list[PodProblem] = []
    for cs in _statuses(pod):
        state = cs.get("state") or {}
        last = (cs.get("lastState") or {}).get("terminated") or {}
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        cname = cs.get("name", "?")
        if waiting.get("reason") in WAITING_REASONS:
            reason = waiting["reason"]
            message = waiting.get("message") or ""
            if reason == "CrashLoopBackOff" and last.get("reason") == "OOMKilled":
                reason = "OOMKilled"
                message = (f"container {cname} was OOMKilled (exit {last.get('exitCode')}) and is in "
                           f"CrashLoopBackOff after {cs.get('restartCount', 0)} restart(s)")
            elif reason == "CrashLoopBackOff":
                message = (f"container {cname} keeps exiting (last exit {last.get('exitCode')}, "
                           f"{last.get('reason') or 'Error'}), {cs.get('restartCount', 0)} restart(s): {message}")
            else:
                message = f"container {cname}: {message}"
            out.append(PodProblem(name, reason, message.rstrip(": ")))
        elif terminated.get("reason") == "OOMKilled":
            out.append(PodProblem(name, "OOMKilled", f"container {cname} was OOMKilled (exit "
                                                     f"{terminated.get('exitCode')}); raise its memory limit"))
    if st.get("phase") == "Pending":
        for cond in st.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and \
                    cond.get("reason") == "Unschedulable":
                message = cond.get("message") or ""
                out.append(PodProblem(name, "Unschedulable", message, gpu_queueing(message, gpu_resource)))
    return out


def _running(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")


def _scheduled(pod: Mapping[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return bool((pod.get("spec") or {}).get("nodeName")) or any(
        c.get("type") == "PodScheduled" and c.get("status") == "True" for c in conds)


def _container_started(pod: Mapping[str, Any]) -> bool:
    """A container (init or main) ran or runs: the kubelet is past the volumes."""
    return any((cs.get("state") or {}).get("running") or (cs.get("state") or {}).get("terminated")
               or (cs.get("lastState") or {}).get("terminated") for cs in _statuses(pod))


def pod_problems(pods: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]] = (),
                 gpu_resource: str = DEFAULT_GPU_RESOURCE) -> list[PodProblem]:
    """Every problem visible now, one per (pod, reason); events name pods by involvedObject and
    count only while they are newer than the pod's current state (see the module docstring)."""
    # A pod being deleted (a replaced job's, a restarted JobSet's) is on its way out, not stuck.
    pods = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    found: dict[tuple[str, str], PodProblem] = {}
    for pod in pods:
        for p in _pod_problems(pod, gpu_resource):
            found.setdefault((p.pod, p.reason), p)
    by_name = {(p.get("metadata") or {}).get("name"): p for p in pods}
    events = [ev for ev in events if (ev.get("involvedObject") or {}).get("kind", "Pod") == "Pod"]

    def of_pod(ev: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The pod this event is about (same name, same uid where both say, not older than it)."""
        obj = ev.get("involvedObject") or {}
        pod = by_name.get(obj.get("name"))
        if pod is None:
            return None
        meta = pod.get("metadata") or {}
        if obj.get("uid") and meta.get("uid") and obj["uid"] != meta["uid"]:
            return None
        created, stamp = parse_time(meta.get("creationTimestamp")), event_time(ev)
        if created is not None and stamp is not None and stamp < created:
            return None
        return pod

    progress: dict[tuple[str, str], datetime] = {}  # (pod, reason) -> latest Normal event of that reason
    for ev in events:
        stamp = event_time(ev)
        if ev.get("reason") in PAST_ATTACH_REASONS and stamp is not None and of_pod(ev) is not None:
            key = (ev["involvedObject"]["name"], ev["reason"])
            progress[key] = max(stamp, progress.get(key, stamp))

    def superseded(pod_name: str, stamp: datetime | None, reasons: tuple[str, ...]) -> bool:
        return any(stamp is None or t >= stamp for (p, r), t in progress.items() if p == pod_name and r in reasons)

    latest: dict[tuple[str, str], tuple[datetime | None, str]] = {}
    for ev in events:
        reason = ev.get("reason")
        pod = of_pod(ev) if reason in EVENT_REASONS else None
        if pod is None or _running(pod):
            continue
        pod_name = pod["metadata"]["name"]
        stamp = event_time(ev)
        if reason == "FailedScheduling":
            if _scheduled(pod):
                continue  # evidence about a state the pod has left
        elif _container_started(pod) or superseded(
                pod_name, stamp, PAST_MOUNT_REASONS if reason == "FailedMount" else PAST_ATTACH_REASONS):
            continue
        reason = "Unschedulable" if reason == "FailedScheduling" else reason
        key = (pod_name, reason)
        seen = latest.get(key)
        if seen is None or (stamp is not None and (seen[0] is None or stamp >= seen[0])):
            latest[key] = (stamp, ev.get("message") or "")
    for (pod_name, reason), (_, message) in latest.items():
        queued = reason == "Unschedulable" and gpu_queueing(message, gpu_resource)
        found.setdefault((pod_name, reason), PodProblem(pod_name, reason, message, queued))
    return list(found.values())


class StuckWatch:
    """Remembers since when each problem has been seen; `update` returns the first problem seen
    without a break for at least its grace (`queue_grace_s` for a queued one, `grace_s` for the
    rest; a problem not seen in an update is forgotten). After each update, `appeared` and
    `cleared` hold what changed, so a caller logs one line per change, not one per poll."""

    def __init__(self, grace_s: float, queue_grace_s: float | None = None):
        if grace_s < 0:
            raise ValueError("stuck_pod_grace_s must be >= 0")
        if queue_grace_s is not None and queue_grace_s < 0:
            raise ValueError("queue_grace_s must be >= 0")
        self.grace_s = grace_s
        self.queue_grace_s = grace_s if queue_grace_s is None else queue_grace_s
        self._since: dict[tuple[str, str, bool], float] = {}
        self._current: dict[tuple[str, str, bool], PodProblem] = {}
        self.appeared: list[PodProblem] = []
        self.cleared: list[PodProblem] = []
        self.reported_at: float | None = None  # when the caller last reported the wait for GPUs

    def grace_of(self, problem: PodProblem) -> float:
        return self.queue_grace_s if problem.queued else self.grace_s

    def update(self, problems: Iterable[PodProblem], now: float) -> PodProblem | None:
        current = {p.key: p for p in problems}
        self.appeared = [p for k, p in current.items() if k not in self._since]
        self.cleared = [p for k, p in self._current.items() if k not in current]
        self._since = {k: self._since.get(k, now) for k in current}
        self._current = current
        stuck = [p for k, p in current.items() if now - self._since[k] >= self.grace_of(p)]
        return min(stuck, key=lambda p: self._since[p.key]) if stuck else None

    def since(self, problem: PodProblem) -> float:
        return self._since[problem.key]

    def queued(self) -> list[PodProblem]:
        """The problems now seen that are queueing, oldest first."""
        return sorted((p for p in self._current.values() if p.queued), key=lambda p: self._since[p.key])
