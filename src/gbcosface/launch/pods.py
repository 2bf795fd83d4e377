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

`StuckWatch` turns a stream of such observations into a failure only after a problem has been
seen without a break for `grace_s`: an image pull or a scale-up of the GPU pool legitimately takes
minutes, and a transient FailedMount while a volume attaches is normal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

WAITING_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                   "CreateContainerError", "CrashLoopBackOff")
EVENT_REASONS = ("FailedScheduling", "FailedMount", "FailedAttachVolume")


@dataclass(frozen=True)
class PodProblem:
    pod: str
    reason: str
    message: str

    def describe(self) -> str:
        return f"pod {self.pod}: {self.reason}: {self.message}".rstrip(": ")


def _statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    st = pod.get("status") or {}
    return [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]


def _pod_problems(pod: Mapping[str, Any]) -> list[PodProblem]:
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
                out.append(PodProblem(name, "Unschedulable", cond.get("message") or ""))
    return out


def _running(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")


def pod_problems(pods: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]] = ()) -> list[PodProblem]:
    """Every problem visible now, one per (pod, reason); events name pods by involvedObject."""
    pods = list(pods)
    found: dict[tuple[str, str], PodProblem] = {}
    for pod in pods:
        for p in _pod_problems(pod):
            found.setdefault((p.pod, p.reason), p)
    not_running = {(p.get("metadata") or {}).get("name") for p in pods if not _running(p)}
    latest: dict[tuple[str, str], tuple[str, str]] = {}
    for ev in events:
        obj = ev.get("involvedObject") or {}
        reason = ev.get("reason")
        if obj.get("kind", "Pod") != "Pod" or reason not in EVENT_REASONS or obj.get("name") not in not_running:
            continue
        reason = "Unschedulable" if reason == "FailedScheduling" else reason
        stamp = ev.get("lastTimestamp") or ev.get("eventTime") or ev.get("firstTimestamp") or ""
        key = (obj["name"], reason)
        if key not in latest or stamp >= latest[key][0]:
            latest[key] = (stamp, ev.get("message") or "")
    for (pod, reason), (_, message) in latest.items():
        found.setdefault((pod, reason), PodProblem(pod, reason, message))
    return list(found.values())


class StuckWatch:
    """Remembers since when each (pod, reason) has been seen; `update` returns the first problem
    seen without a break for at least `grace_s` (a problem not seen in an update is forgotten)."""

    def __init__(self, grace_s: float):
        if grace_s < 0:
            raise ValueError("stuck_pod_grace_s must be >= 0")
        self.grace_s = grace_s
        self._since: dict[tuple[str, str], float] = {}

    def update(self, problems: Iterable[PodProblem], now: float) -> PodProblem | None:
        current = {(p.pod, p.reason): p for p in problems}
        self._since = {k: self._since.get(k, now) for k in current}
        stuck = [p for k, p in current.items() if now - self._since[k] >= self.grace_s]
        return min(stuck, key=lambda p: self._since[(p.pod, p.reason)]) if stuck else None
