"""PyTorchJob and TrainJob rendering, submission and local emulation (see docs/kubernetes.md).

Why lazy exports: the local emulator (used by the demo and by tests) needs neither the
Kubernetes client nor the kubeflow-training SDK, so importing `gbcosface.launch` must not pull
them in; attribute access imports the module that defines the name.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "JobSpec": "spec",
    "RenderedJob": "spec",
    "render_job": "pytorchjob",
    "render_trainjob": "trainjob",
    "configmap_name": "spec",
    "JobKind": "kinds",
    "JOB_KINDS": "kinds",
    "get_job_kind": "kinds",
    "JobStatus": "kinds",
    "ClusterProfile": "profile",
    "parse_cluster_profile": "profile",
    "apply_profile": "profile",
    "default_namespace": "namespace",
    "JobClient": "client",
    "JobError": "client",
    "JobStuckError": "client",
    "JobFailedError": "client",
    "JobTimeoutError": "client",
    "JobCancelledError": "client",
    "JobConflictError": "client",
    "run_local_job": "local",
    "LocalJobResult": "local",
    "replica_env": "local",
    "LocalPlan": "local",
    "plan_from_job": "local",
    "run_plan": "local",
    "operator_env": "contract",
    "container_command": "contract",
    "job_name_for_run": "names",
    "check_job": "validate",
    "JobValidationError": "validate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
