"""The kind-neutral description of a training job, and the pod pieces every kind renders alike.

Why one JobSpec for PyTorchJob and TrainJob: the pipeline, the CLI and the cluster profile
(`launch/profile.py`) fill in the same settings whichever operator runs the job; each kind
(`launch/kinds.py`) turns them into its own manifest and refuses, by name, a setting it cannot
express (e.g. an elastic policy on a TrainJob) instead of dropping it silently.

The shared pieces (labels, env, resources, volumes, security contexts) are built here as
Kubernetes client models, so both renderers put exactly the same container env, the same
ConfigMap mount, the same /dev/shm and the same non-root settings on their pods.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes import client as k8s

from gbcosface import s3_env

from . import contract
from .names import check_job_name, label_value

ISTIO_INJECT = "sidecar.istio.io/inject"
RUN_ID_LABEL = "gbcosface/run-id"
CONFIG_HASH_ANNOTATION = "gbcosface/config-hash"
BASE_LABELS = {
    "app.kubernetes.io/name": "gbcosface",
    "app.kubernetes.io/component": "training",
    "app.kubernetes.io/managed-by": "gbcosface",
}
#: The S3 Secret's keys, each set as the env var of the same name (GBCOSFACE_S3_*, never AWS_*: gbcosface.s3_env).
S3_ENV_KEYS = s3_env.SECRET_KEYS
CLEAN_POD_POLICIES = ("None", "Running", "All")
#: Gang schedulers the Training Operator v1.9.4 drives (kubeflow/trainer@v1.9.4:cmd/training-operator.v1/main.go
#: --gang-scheduler-name: "volcano", anything else is a scheduler-plugins scheduler).
GANG_SCHEDULERS = ("volcano", "scheduler-plugins")
#: Kueue's queue label, read on PyTorchJobs and TrainJobs alike.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: Long enough for the trainer's SIGTERM -> checkpoint -> exit on a big model over S3.
DEFAULT_TERMINATION_GRACE_S = 300
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


class JobSpecError(ValueError):
    """A JobSpec that cannot be rendered; the message names every problem."""


def is_quantity(value: object) -> bool:
    return _QUANTITY.fullmatch(str(value)) is not None


@dataclass
class JobSpec:
    """Everything about the job that is not the training config. Defaults suit one GPU node."""

    name: str
    image: str
    namespace: str = "default"
    nnodes: int = 1
    nproc_per_node: int = 1
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list[str] = field(default_factory=list)  # Secret names for the job's pods
    gpus_per_node: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)  # Kubernetes JSON shape
    shm_size: str | None = "16Gi"  # None: no /dev/shm volume
    nccl_env: dict[str, str] = field(default_factory=lambda: {"NCCL_DEBUG": "WARN"})
    nccl_socket_ifname: str | None = None  # e.g. "eth0"; also sets GLOO_SOCKET_IFNAME
    env: dict[str, str] = field(default_factory=dict)
    s3_secret_name: str | None = None  # Secret with GBCOSFACE_S3_ACCESS_KEY_ID / _SECRET_ACCESS_KEY / _ENDPOINT_URL
    secret_env: dict[str, tuple[str, str]] = field(default_factory=dict)  # env name -> (Secret, key), optional refs
    service_account: str | None = None
    data_volume_claim: str | None = None  # a PVC with the training data, mounted read-only
    data_mount_path: str = "/data"
    data_scratch_size: str | None = None  # without a PVC: a disk emptyDir at data_mount_path for staging
    metrics_port: int | None = None  # None: the config's run.metrics_port; 0: no metrics ports
    master_port: int = contract.DEFAULT_MASTER_PORT  # PyTorchJob only (a TrainJob's is the runtime's 29500)
    clean_pod_policy: str = "Running"  # PyTorchJob only
    ttl_seconds_after_finished: int | None = 86400
    # Whole-job restarts (every pod restarted together) after which a failure fails the job. Each kind
    # renders it as its controller counts: PyTorchJob `runPolicy.backoffLimit` = (restarts + 1) x pods
    # (`pytorchjob.operator_backoff_limit`), TrainJob the runtime's JobSet `failurePolicy.maxRestarts`.
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    termination_grace_period_seconds: int | None = DEFAULT_TERMINATION_GRACE_S
    elastic_min_nodes: int | None = None  # PyTorchJob only: set both min and max for a Worker-only job
    elastic_max_nodes: int | None = None
    elastic_max_restarts: int | None = None
    # The Kueue LocalQueue (label kueue.x-k8s.io/queue-name on the job), or with gang_scheduler
    # "volcano" the Volcano queue (PyTorchJob runPolicy.schedulingPolicy.queue).
    queue: str | None = None
    trainjob_runtime: str | None = None  # TrainJob only: "[ClusterTrainingRuntime|TrainingRuntime/]NAME"
    # PyTorchJob only: the gang scheduler the operator was started with (--gang-scheduler-name); only then
    # does it read runPolicy.schedulingPolicy (kubeflow/trainer@v1.9.4:pkg/controller.v1/common/job.go).
    gang_scheduler: str | None = None  # None | "volcano" | "scheduler-plugins"
    min_available: int | None = None  # PyTorchJob with gang_scheduler only: gang size (default all pods)
    priority_class: str | None = None  # PyTorchJob: priorityClassName of every pod
    run_id: str | None = None  # recorded as a label
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    pod_annotations: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)  # appended to `gbcosface train`
    run_as_user: int = 1000
    run_as_group: int = 1000
    fs_group: int = 1000

    @property
    def elastic(self) -> bool:
        return self.elastic_min_nodes is not None or self.elastic_max_nodes is not None

    def validate(self) -> None:
        """Raise ValueError naming every problem (before anything is sent to a cluster)."""
        problems: list[str] = []
        try:
            check_job_name(self.name)
        except ValueError as exc:
            problems.append(str(exc))
        if not self.image:
            problems.append("image is required")
        if self.nnodes < 1:
            problems.append(f"nnodes must be >= 1, got {self.nnodes}")
        if self.nproc_per_node < 1:
            problems.append(f"nproc_per_node must be >= 1, got {self.nproc_per_node}")
        if self.gpus_per_node < 0:
            problems.append(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if 0 < self.gpus_per_node < self.nproc_per_node:
            problems.append(f"nproc_per_node {self.nproc_per_node} exceeds gpus_per_node {self.gpus_per_node}")
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            problems.append(f"image_pull_policy {self.image_pull_policy!r} is not Always, IfNotPresent or Never")
        if self.clean_pod_policy not in CLEAN_POD_POLICIES:
            problems.append(f"clean_pod_policy {self.clean_pod_policy!r} is not one of {CLEAN_POD_POLICIES}")
        for key in ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "shm_size", "data_scratch_size"):
            value = getattr(self, key)
            if value is not None and not is_quantity(value):
                problems.append(f"{key} {value!r} is not a Kubernetes quantity")
        if self.backoff_limit < 0:
            problems.append("backoff_limit must be >= 0")
        if self.active_deadline_seconds is not None and self.active_deadline_seconds <= 0:
            problems.append("active_deadline_seconds must be positive")
        if self.termination_grace_period_seconds is not None and self.termination_grace_period_seconds < 0:
            problems.append("termination_grace_period_seconds must be >= 0")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535 - self.nproc_per_node:
            problems.append(f"metrics_port {self.metrics_port} leaves no room for {self.nproc_per_node} ports")
        for secret in self.image_pull_secrets:
            if not secret or not isinstance(secret, str):
                problems.append(f"image_pull_secrets: {secret!r} is not a Secret name")
        if self.elastic:
            lo, hi = self.elastic_min_nodes, self.elastic_max_nodes
            if lo is None or hi is None:
                problems.append("an elastic job needs both elastic_min_nodes and elastic_max_nodes")
            elif not 1 <= lo <= self.nnodes <= hi:
                problems.append(f"elastic bounds need 1 <= min ({lo}) <= nnodes ({self.nnodes}) <= max ({hi})")
        if self.gang_scheduler is not None and self.gang_scheduler not in GANG_SCHEDULERS:
            problems.append(f"gang_scheduler {self.gang_scheduler!r} is not one of {GANG_SCHEDULERS}")
        if self.min_available is not None and not 1 <= self.min_available <= self.nnodes:
            problems.append(f"min_available must be within 1..{self.nnodes}, got {self.min_available}")
        for t in self.tolerations:
            unknown = set(t) - TOLERATION_KEYS
            if unknown:
                problems.append(f"toleration {t}: unknown keys {sorted(unknown)}")
        from .validate import spec_value_errors  # values Kubernetes would refuse, caught at render

        problems += spec_value_errors(self)
        if problems:
            raise JobSpecError(f"job {self.name!r}: " + "; ".join(problems))


@dataclass
class RenderedJob:
    """A job of some kind and its ConfigMap, as plain dicts (what is submitted and written) and,
    for kinds submitted through an SDK, as the SDK's objects."""

    kind: str  # the JobKind's name: "pytorchjob" | "trainjob"
    job: dict[str, Any]
    configmap: dict[str, Any]
    job_model: Any = None
    configmap_model: k8s.V1ConfigMap | None = None
    nnodes: int = 1  # pods (nodes) of the job: a shared data PVC needs a many-node access mode

    @property
    def name(self) -> str:
        return self.job["metadata"]["name"]

    def to_yaml(self) -> str:
        """Multi-document YAML, ConfigMap first so that `kubectl apply -f` creates it before the pods."""
        return yaml.dump_all([self.configmap, self.job], Dumper=_ManifestDumper, sort_keys=False)


class _ManifestDumper(yaml.SafeDumper):
    """Readable manifests: multi-line strings (the config) as literal blocks, no YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ManifestDumper.add_representer(str, _str)


def dump_yaml(docs: list[Any]) -> str:
    return yaml.dump_all(docs, Dumper=_ManifestDumper, sort_keys=False)


def configmap_name(job_name: str) -> str:
    return f"{job_name}-config"


def labels(spec: JobSpec) -> dict[str, str]:
    out = dict(BASE_LABELS)
    if spec.run_id:
        out[RUN_ID_LABEL] = label_value(spec.run_id)
    out.update(spec.labels)
    return out


def configmap(spec: JobSpec, config_yaml: str, chash: str) -> k8s.V1ConfigMap:
    return k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=k8s.V1ObjectMeta(
            name=configmap_name(spec.name), namespace=spec.namespace, labels=labels(spec),
            annotations={CONFIG_HASH_ANNOTATION: chash},
        ),
        data={contract.CONFIG_KEY: config_yaml},
    )


def env_vars(spec: JobSpec) -> list[k8s.V1EnvVar]:
    """The container env both kinds set: job name, NCCL/gloo settings, the user's, S3 from a Secret."""
    plain = dict(spec.nccl_env)
    if spec.nccl_socket_ifname:
        plain["NCCL_SOCKET_IFNAME"] = spec.nccl_socket_ifname
        plain["GLOO_SOCKET_IFNAME"] = spec.nccl_socket_ifname
    if spec.termination_grace_period_seconds:
        plain[contract.SHUTDOWN_TIMEOUT_ENV] = str(contract.shutdown_timeout_s(spec.termination_grace_period_seconds))
    plain.update(spec.env)
    env = [k8s.V1EnvVar(name=k, value=v) for k, v in contract.pod_env(spec.name, plain).items()]
    if spec.s3_secret_name:
        for key in S3_ENV_KEYS:
            ref = k8s.V1SecretKeySelector(name=spec.s3_secret_name, key=key, optional=True)
            env.append(k8s.V1EnvVar(name=key, value_from=k8s.V1EnvVarSource(secret_key_ref=ref)))
    for name, (secret, key) in sorted(spec.secret_env.items()):  # e.g. MLflow credentials (tracking/mlflow_env.py)
        ref = k8s.V1SecretKeySelector(name=secret, key=key, optional=True)
        env.append(k8s.V1EnvVar(name=name, value_from=k8s.V1EnvVarSource(secret_key_ref=ref)))
    return env


def resources(spec: JobSpec) -> k8s.V1ResourceRequirements | None:
    requests = {k: v for k, v in (("cpu", spec.cpu_request), ("memory", spec.memory_request)) if v}
    limits = {k: v for k, v in (("cpu", spec.cpu_limit), ("memory", spec.memory_limit)) if v}
    if spec.gpus_per_node:
        # Extended resources cannot be overcommitted: request and limit must be equal.
        requests[spec.gpu_resource] = str(spec.gpus_per_node)
        limits[spec.gpu_resource] = str(spec.gpus_per_node)
    if not requests and not limits:
        return None
    return k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None)


def volumes(spec: JobSpec) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """The ConfigMap (read-only at /etc/gbcosface), /dev/shm, and the data volume (a read-only PVC
    or a disk emptyDir where the trainer stages the pinned dataset)."""
    cm = k8s.V1ConfigMapVolumeSource(
        name=configmap_name(spec.name),
        items=[k8s.V1KeyToPath(key=contract.CONFIG_KEY, path=contract.CONFIG_KEY)],
    )
    vols = [k8s.V1Volume(name="config", config_map=cm)]
    mounts = [k8s.V1VolumeMount(name="config", mount_path=contract.CONFIG_DIR, read_only=True)]
    if spec.shm_size:
        shm = k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=spec.shm_size)
        vols.append(k8s.V1Volume(name="dshm", empty_dir=shm))
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    if spec.data_volume_claim:
        pvc = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=spec.data_volume_claim, read_only=True)
        vols.append(k8s.V1Volume(name="data", persistent_volume_claim=pvc))
        mounts.append(k8s.V1VolumeMount(name="data", mount_path=spec.data_mount_path, read_only=True))
    elif spec.data_scratch_size:
        # The trainer stages the pinned dataset here (data.stage_from) before it trains.
        scratch = k8s.V1EmptyDirVolumeSource(size_limit=spec.data_scratch_size)
        vols.append(k8s.V1Volume(name="data", empty_dir=scratch))
        mounts.append(k8s.V1VolumeMount(name="data", mount_path=spec.data_mount_path))
    return vols, mounts


TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def tolerations(spec: JobSpec) -> list[k8s.V1Toleration] | None:
    def snake(t: dict[str, Any]) -> dict[str, Any]:
        unknown = set(t) - TOLERATION_KEYS
        if unknown:
            raise ValueError(f"toleration {t}: unknown keys {sorted(unknown)}")
        return {re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k): v for k, v in t.items()}

    return [k8s.V1Toleration(**snake(t)) for t in spec.tolerations] or None


def pull_secrets(spec: JobSpec) -> list[k8s.V1LocalObjectReference] | None:
    return [k8s.V1LocalObjectReference(name=s) for s in spec.image_pull_secrets] or None


def container_security() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        allow_privilege_escalation=False, run_as_non_root=True, capabilities=k8s.V1Capabilities(drop=["ALL"]),
    )


def pod_security(spec: JobSpec) -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(
        run_as_non_root=True, run_as_user=spec.run_as_user, run_as_group=spec.run_as_group, fs_group=spec.fs_group,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def pod_annotations(spec: JobSpec) -> dict[str, str]:
    return {ISTIO_INJECT: "false", **spec.pod_annotations}


def to_dict(model: Any) -> Any:
    """A Kubernetes client model as the API's JSON shape (camelCase, no None fields)."""
    return k8s.ApiClient().sanitize_for_serialization(model)
