"""Which Kubeflow Pipelines backend a pipeline is compiled for, and what that backend can honour.

Why a target version: the KFP SDK (2.17 here) emits every feature it knows, but the backend that
runs the pipeline reads the IR with its own, older code. What it does not know it drops without a
word (the driver parses each task's Kubernetes settings leniently) or, for the platform document
as a whole, ignores entirely (the API server parses that strictly and skips it when it fails). So
a pipeline is built for one backend version: a feature is emitted only when that backend has it
(`Backend.has`), and `gbcosface.pipeline_rules` checks the compiled IR against the same version.

The versions are the backend release lines (kubeflow/pipelines tags 2.4.x, 2.5.0, 2.14.x, 2.15.0,
2.16.x, 2.17.0: there is no 2.6-2.13 backend). The oldest is what the Kubeflow platform release
v1.10.0 ships (kubeflow/manifests@v1.10.0: KFP 2.4.1), and it is the default everywhere
(`make compile`, `gbcosface pipeline compile`), so that a default build runs on every supported
backend. docs/pipeline.md has the matrix.

Use from a pipeline module (pipelines/train_eval.py, and any other DAG):

    backend = get_backend(options.backend)
    task = my_step(run_id=run_id_argument(backend), ...)   # the run id, whole, or "" below 2.5
    set_run_id_env(task, backend)                           # below 2.5: from the pod's label
    if backend.has("pipeline_ttl"): ...
    func = without_parameters(func, ("a_param",))          # a run parameter this backend cannot honour
    compile_pipeline(pipeline_func, "out.yaml", backend)    # compiles and checks the rules
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gbcosface.steps.runs import RUN_ID_ENV

# The backend release lines this project compiles for and tests, oldest first.
SUPPORTED = ("2.4", "2.5", "2.14", "2.15", "2.16", "2.17")
OLDEST = SUPPORTED[0]
NEWEST = SUPPORTED[-1]
DEFAULT = OLDEST

# Feature -> (first backend version that honours it, where that is in its source). The citations
# are the upstream file at the tag where the behaviour appeared; pipeline_rules has the checks.
FEATURES: dict[str, tuple[tuple[int, int], str]] = {
    "step_timeout": ((2, 1), "kubeflow/pipelines@2.1.0:backend/src/v2/driver/driver.go "
                             "(GetActiveDeadlineSeconds, #10481)"),
    "field_path_env": ((2, 1), "kubeflow/pipelines@2.1.0:backend/src/v2/driver/driver.go (GetFieldPathAsEnv)"),
    "empty_dir": ((2, 3), "kubeflow/pipelines@2.3.0:backend/src/v2/driver/driver.go (GetEmptyDirMounts, #10913)"),
    "param_image": ((2, 4), "kubeflow/pipelines@2.4.0:backend/src/v2/driver/driver.go "
                            "(resolvePodSpecInputRuntimeParameter(container.Image), #11404)"),
    "run_placeholders": ((2, 5), "kubeflow/pipelines@2.5.0:backend/src/v2/driver/driver.go "
                                 "(the {{$.pipeline_job_uuid}} case, #11599)"),
    "param_secret_names": ((2, 5), "kubeflow/pipelines@2.5.0:backend/src/v2/driver/driver.go "
                                   "(SecretNameParameter for secret env and image pull secrets, #11770)"),
    "param_tolerations": ((2, 5), "kubeflow/pipelines@2.5.0:backend/src/v2/driver/driver.go "
                                  "(Toleration.TolerationJson)"),
    "optional_secret_env": ((2, 15), "kubeflow/pipelines@2.15.0:backend/src/v2/driver/k8s.go "
                                     "(SecretAsEnv.Optional, #12216)"),
    "pipeline_ttl": ((2, 17), "kubeflow/pipelines@2.17.0:backend/src/v2/compiler/argocompiler/argo.go "
                              "(PipelineConfig.resource_ttl_on_completion)"),
}


class BackendError(ValueError):
    """An unknown or unsupported backend version, or a pipeline that breaks its rules."""


def parse_version(text: str) -> tuple[int, int]:
    """`"2.5"`, `"2.5.0"` or `"2.4.1"` -> (2, 5): the release line; the patch level does not matter here."""
    parts = str(text).strip().lstrip("v").split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
        if len(parts) > 3 or any(not p.isdigit() for p in parts[2:]):
            raise ValueError
    except (IndexError, ValueError):
        raise BackendError(f"KFP backend version {text!r}: expected MAJOR.MINOR[.PATCH], e.g. 2.5") from None
    return major, minor


@dataclass(frozen=True)
class Backend:
    """One KFP backend release line, e.g. Backend((2, 5))."""

    version: tuple[int, int]

    @property
    def name(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    def has(self, feature: str) -> bool:
        """Whether this backend honours `feature` (a key of FEATURES)."""
        if feature not in FEATURES:
            raise KeyError(f"unknown backend feature {feature!r} (known: {', '.join(sorted(FEATURES))})")
        return self.version >= FEATURES[feature][0]

    def __str__(self) -> str:
        return self.name


def get_backend(version: str | Backend | None = None, *, supported_only: bool = True) -> Backend:
    """The backend for `version` (default: the oldest supported). `supported_only=False` also
    accepts releases this project does not build for (the rules still apply to them)."""
    if isinstance(version, Backend):
        backend = version
    else:
        backend = Backend(parse_version(DEFAULT if version in (None, "") else str(version)))
    if supported_only and backend.name not in SUPPORTED:
        raise BackendError(f"KFP backend {backend.name} is not supported (supported: {', '.join(SUPPORTED)}; "
                           "docs/pipeline.md, 'Supported backends')")
    return backend


# Every pod of a run carries the label pipeline/runid with the run's id: the API server sets it on
# the workflow's podMetadata (kubeflow/pipelines@2.4.1:backend/src/apiserver/template/v2_template.go,
# SetPodMetadataLabels(util.LabelKeyWorkflowRunId, options.RunId)). It is the id the 2.5+ driver
# gives {{$.pipeline_job_uuid}} (opts.RunID, from --run_id {{workflow.uid}}, which the same
# function's ReplaceUID turns into options.RunId).
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"


def run_id_argument(backend: Backend) -> str:
    """What a step's `run_id` input gets: the run's unique id placeholder, whole, where the backend
    substitutes it (2.5+); else "" (the step reads RUN_ID_ENV, see set_run_id_env)."""
    from kfp import dsl

    return dsl.PIPELINE_JOB_ID_PLACEHOLDER if backend.has("run_placeholders") else ""


def set_run_id_env(task: Any, backend: Backend) -> Any:
    """Below 2.5, give `task`'s pod RUN_ID_ENV from its pipeline/runid label (the downward API);
    gbcosface.steps.runs.check_run_id reads it when the run_id input is empty."""
    if not backend.has("run_placeholders"):
        from kfp import kubernetes

        kubernetes.use_field_path_as_env(task, env_name=RUN_ID_ENV, field_path=RUN_ID_FIELD)
    return task


def without_parameters(func: Any, names: tuple[str, ...]) -> Any:
    """`func` (a pipeline function, before @dsl.pipeline) with the parameters `names` removed from
    the signature KFP reads: a run parameter the target backend cannot honour is not offered. Inside,
    they keep their Python defaults (KFP calls a pipeline function positionally, in signature order)."""
    sig = inspect.signature(func)
    kept = [p for p in sig.parameters.values() if p.name not in names]

    @functools.wraps(func)
    def wrapper(*args: Any) -> Any:
        return func(**dict(zip((p.name for p in kept), args, strict=True)))

    wrapper.__signature__ = sig.replace(parameters=kept)  # type: ignore[attr-defined]
    return wrapper


def compile_pipeline(pipeline_func: Any, path: str | Path, backend: str | Backend | None = None) -> Path:
    """Compile `pipeline_func` (built for `backend`) to IR YAML at `path`, after checking the IR
    against `backend`'s rules; nothing is left at `path` when a rule is broken (BackendError)."""
    import yaml
    from kfp import compiler

    from gbcosface.pipeline_rules import problems

    target = get_backend(backend)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.yaml")
    try:
        compiler.Compiler().compile(pipeline_func, package_path=str(tmp))
        docs = [d for d in yaml.safe_load_all(tmp.read_text()) if d]
        found = problems(docs[0], backend=target, platform=docs[1] if len(docs) > 1 else None)
        if found:
            raise BackendError(f"the compiled pipeline breaks rules of KFP backend {target}:\n  "
                               + "\n  ".join(found))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
