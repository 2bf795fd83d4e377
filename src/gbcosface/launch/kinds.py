"""Job kinds: what differs between a Kubeflow PyTorchJob and a Kubeflow Trainer v2 TrainJob.

Why an interface with two implementations (like `get_loss`): the job's lifecycle (submit with
attach-on-same-hash, a real deadline, stuck-pod detection, log streaming, delete on cancel, keep
on failure) is the same for both and lives once in `launch/client.py`; per kind only the rendered
manifest, its offline checks, the environment its operator injects (for the local emulator), three
API calls, how its status reads, and how its pods are found differ. Those are the methods below.

Implementations: `launch/pytorchjob.py` (`kubeflow.org/v1`, Training Operator v1.9) and
`launch/trainjob.py` (`trainer.kubeflow.org/v1alpha1`, Trainer v2.3). Each module is imported only
when its kind is asked for, so `gbcosface.launch` stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gbcosface.config import TrainConfig

    from .local import LocalPlan
    from .spec import JobSpec, RenderedJob


@dataclass
class JobStatus:
    """A job's state as the lifecycle needs it, whichever kind: read by `JobKind.status`."""

    name: str
    namespace: str
    kind: str = "PyTorchJob"
    phase: str = "Pending"
    succeeded: bool = False
    failed: bool = False
    conditions: list[dict[str, Any]] = field(default_factory=list)
    replica_statuses: dict[str, Any] = field(default_factory=dict)
    uid: str | None = None

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failed

    def describe(self) -> str:
        lines = [f"{self.kind} {self.namespace}/{self.name}: {self.phase}"]
        for c in self.conditions:
            lines.append(f"  {c.get('type')}={c.get('status')} reason={c.get('reason')} {c.get('message') or ''}".rstrip())
        return "\n".join(lines)


class JobKind(Protocol):
    """One operator's job type. `apis` is the client's `KubeApis` (core, custom objects, SDKs)."""

    name: str  # "pytorchjob" | "trainjob"
    kind: str  # "PyTorchJob" | "TrainJob"
    api_version: str
    container_name: str  # the trainer container, whose log is streamed
    # Optional (read with getattr, default none): reasons of Warning events on the job itself that
    # mean its operator cannot create its resources (JobClient.start_failure), and `list_jobs(apis,
    # namespace, label_selector)` + `finished_at(obj)` for kinds without a TTL (JobClient.prune_finished).

    def render(self, spec: JobSpec, config: TrainConfig) -> RenderedJob: ...

    def refused(self, spec: JobSpec) -> list[str]:
        """JobSpec settings this kind cannot express (each names the field): render raises on them."""
        ...

    def problems(self, job: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str]:
        """CRD schema (when given), admission-webhook and project rules, as `path: message`."""
        ...

    def crd_version(self) -> str: ...

    def plan(self, job: Mapping[str, Any], configmap: Mapping[str, Any], work_dir: str | Path) -> LocalPlan: ...

    def create(self, apis: Any, job: RenderedJob, namespace: str) -> dict[str, Any]: ...

    def get(self, apis: Any, name: str, namespace: str, timeout: float) -> dict[str, Any]: ...

    def delete(self, apis: Any, name: str, namespace: str) -> None: ...

    def status(self, obj: Mapping[str, Any]) -> JobStatus: ...

    def pod_selector(self, name: str) -> str:
        """Label selector of every pod the operator creates for job `name`."""
        ...

    def leader_pod(self, obj: Mapping[str, Any], pods: list[dict[str, Any]]) -> str | None:
        """The pod whose log tells the story (node rank 0), or None while it does not exist."""
        ...


#: name -> "module:attribute" of the implementation (imported on first use).
JOB_KINDS: dict[str, str] = {
    "pytorchjob": "gbcosface.launch.pytorchjob:PYTORCHJOB",
    "trainjob": "gbcosface.launch.trainjob:TRAINJOB",
}


def get_job_kind(name: str) -> JobKind:
    """The JobKind called `name` (case-insensitive; "PyTorchJob" and "TrainJob" work too)."""
    key = (name or "").lower()
    if key not in JOB_KINDS:
        raise ValueError(f"unknown job kind {name!r} (choose from {sorted(JOB_KINDS)})")
    module, attr = JOB_KINDS[key].split(":")
    return getattr(importlib.import_module(module), attr)
