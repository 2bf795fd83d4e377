"""Render a GB-CosFace training run as a Kubeflow PyTorchJob (training operator v1) + its ConfigMap.

Why the kubeflow-training SDK models rather than hand-written dicts: the objects the pipeline
submits through `TrainingClient.create_job` are exactly the ones rendered here, so what
`gbcosface job render` writes for `kubectl apply` and what the pipeline creates cannot drift.

Shape of the job (see docs/kubernetes.md):
- one Master (+ nnodes-1 Workers), container `pytorch` running `torchrun -m gbcosface train
  --config /etc/gbcosface/config.yaml`; the operator's PET_* variables give torchrun the topology;
- the resolved training config in a ConfigMap `<job>-config`, mounted read-only;
- /dev/shm as a memory emptyDir (DataLoader workers pass batches through shared memory, and a
  container's default 64 MiB /dev/shm crashes them);
- NCCL settings and S3 credentials (from a Secret) as env; one named metrics port per local rank;
- non-root, no privilege escalation, no service-account token (the trainer never calls the API);
- restartPolicy OnFailure with a backoff limit, cleanPodPolicy and TTL so nothing lingers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubeflow.training import (
    KubeflowOrgV1ElasticPolicy,
    KubeflowOrgV1PyTorchJob,
    KubeflowOrgV1PyTorchJobSpec,
    KubeflowOrgV1ReplicaSpec,
    KubeflowOrgV1RunPolicy,
    KubeflowOrgV1SchedulingPolicy,
)
from kubernetes import client as k8s

from gbcosface.config import TrainConfig, config_hash, to_yaml

from . import contract
from .names import check_job_name, label_value

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"

ISTIO_INJECT = "sidecar.istio.io/inject"
RUN_ID_LABEL = "gbcosface/run-id"
CONFIG_HASH_ANNOTATION = "gbcosface/config-hash"
BASE_LABELS = {
    "app.kubernetes.io/name": "gbcosface",
    "app.kubernetes.io/component": "training",
    "app.kubernetes.io/managed-by": "gbcosface",
}
S3_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
CLEAN_POD_POLICIES = ("None", "Running", "All")
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


@dataclass
class JobSpec:
    """Everything about the job that is not the training config. Defaults suit one GPU node."""

    name: str
    image: str
    namespace: str = "default"
    nnodes: int = 1
    nproc_per_node: int = 1
    image_pull_policy: str = "IfNotPresent"
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
    s3_secret_name: str | None = None  # Secret with AWS_ACCESS_KEY_ID / _SECRET_ACCESS_KEY / _ENDPOINT_URL
    service_account: str | None = None
    data_volume_claim: str | None = None  # a PVC with the training data, mounted read-only
    data_mount_path: str = "/data"
    data_scratch_size: str | None = None  # without a PVC: a disk emptyDir at data_mount_path for staging
    metrics_port: int | None = None  # None: the config's run.metrics_port; 0: no metrics ports
    master_port: int = contract.DEFAULT_MASTER_PORT
    clean_pod_policy: str = "Running"
    ttl_seconds_after_finished: int | None = 86400
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    elastic_min_nodes: int | None = None  # set both min and max for an elastic (Worker-only) job
    elastic_max_nodes: int | None = None
    elastic_max_restarts: int | None = None
    queue: str | None = None  # runPolicy.schedulingPolicy.queue (Volcano / scheduler-plugins)
    min_available: int | None = None  # gang size; defaults to all pods when a queue is set
    priority_class: str | None = None
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
        for key in ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "shm_size"):
            value = getattr(self, key)
            if value is not None and not _QUANTITY.match(str(value)):
                problems.append(f"{key} {value!r} is not a Kubernetes quantity")
        if self.backoff_limit < 0:
            problems.append("backoff_limit must be >= 0")
        if self.active_deadline_seconds is not None and self.active_deadline_seconds <= 0:
            problems.append("active_deadline_seconds must be positive")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535 - self.nproc_per_node:
            problems.append(f"metrics_port {self.metrics_port} leaves no room for {self.nproc_per_node} ports")
        if self.elastic:
            lo, hi = self.elastic_min_nodes, self.elastic_max_nodes
            if lo is None or hi is None:
                problems.append("an elastic job needs both elastic_min_nodes and elastic_max_nodes")
            elif not 1 <= lo <= self.nnodes <= hi:
                problems.append(f"elastic bounds need 1 <= min ({lo}) <= nnodes ({self.nnodes}) <= max ({hi})")
        if self.min_available is not None and not 1 <= self.min_available <= self.nnodes:
            problems.append(f"min_available must be within 1..{self.nnodes}, got {self.min_available}")
        if problems:
            raise ValueError(f"job {self.name!r}: " + "; ".join(problems))


@dataclass
class RenderedJob:
    """The PyTorchJob and its ConfigMap, both as SDK objects (to submit) and as plain dicts."""

    job_model: KubeflowOrgV1PyTorchJob
    configmap_model: k8s.V1ConfigMap
    job: dict[str, Any]
    configmap: dict[str, Any]

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


def configmap_name(job_name: str) -> str:
    return f"{job_name}-config"


def _labels(spec: JobSpec) -> dict[str, str]:
    labels = dict(BASE_LABELS)
    if spec.run_id:
        labels[RUN_ID_LABEL] = label_value(spec.run_id)
    labels.update(spec.labels)
    return labels


def _env(spec: JobSpec) -> list[k8s.V1EnvVar]:
    plain = dict(spec.nccl_env)
    if spec.nccl_socket_ifname:
        plain["NCCL_SOCKET_IFNAME"] = spec.nccl_socket_ifname
        plain["GLOO_SOCKET_IFNAME"] = spec.nccl_socket_ifname
    plain.update(spec.env)
    env = [k8s.V1EnvVar(name=k, value=v) for k, v in contract.pod_env(spec.name, plain).items()]
    if spec.s3_secret_name:
        for key in S3_ENV_KEYS:
            ref = k8s.V1SecretKeySelector(name=spec.s3_secret_name, key=key, optional=True)
            env.append(k8s.V1EnvVar(name=key, value_from=k8s.V1EnvVarSource(secret_key_ref=ref)))
    return env


def _ports(spec: JobSpec, metrics_port: int) -> list[k8s.V1ContainerPort]:
    ports = [k8s.V1ContainerPort(name=contract.MASTER_PORT_NAME, container_port=spec.master_port, protocol="TCP")]
    if metrics_port:
        # One port per local rank (base + LOCAL_RANK): "metrics", "metrics-1", ... as the PodMonitor expects.
        for local_rank in range(spec.nproc_per_node):
            name = "metrics" if local_rank == 0 else f"metrics-{local_rank}"
            ports.append(k8s.V1ContainerPort(name=name, container_port=metrics_port + local_rank, protocol="TCP"))
    return ports


def _resources(spec: JobSpec) -> k8s.V1ResourceRequirements | None:
    requests = {k: v for k, v in (("cpu", spec.cpu_request), ("memory", spec.memory_request)) if v}
    limits = {k: v for k, v in (("cpu", spec.cpu_limit), ("memory", spec.memory_limit)) if v}
    if spec.gpus_per_node:
        # Extended resources cannot be overcommitted: request and limit must be equal.
        requests[spec.gpu_resource] = str(spec.gpus_per_node)
        limits[spec.gpu_resource] = str(spec.gpus_per_node)
    if not requests and not limits:
        return None
    return k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None)


def _volumes(spec: JobSpec) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    cm = k8s.V1ConfigMapVolumeSource(
        name=configmap_name(spec.name),
        items=[k8s.V1KeyToPath(key=contract.CONFIG_KEY, path=contract.CONFIG_KEY)],
    )
    volumes = [k8s.V1Volume(name="config", config_map=cm)]
    mounts = [k8s.V1VolumeMount(name="config", mount_path=contract.CONFIG_DIR, read_only=True)]
    if spec.shm_size:
        shm = k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=spec.shm_size)
        volumes.append(k8s.V1Volume(name="dshm", empty_dir=shm))
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    if spec.data_volume_claim:
        pvc = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=spec.data_volume_claim, read_only=True)
        volumes.append(k8s.V1Volume(name="data", persistent_volume_claim=pvc))
        mounts.append(k8s.V1VolumeMount(name="data", mount_path=spec.data_mount_path, read_only=True))
    elif spec.data_scratch_size:
        # The trainer stages the pinned dataset here (data.stage_from) before it trains.
        scratch = k8s.V1EmptyDirVolumeSource(size_limit=spec.data_scratch_size)
        volumes.append(k8s.V1Volume(name="data", empty_dir=scratch))
        mounts.append(k8s.V1VolumeMount(name="data", mount_path=spec.data_mount_path))
    return volumes, mounts


def _pod_template(spec: JobSpec, metrics_port: int) -> k8s.V1PodTemplateSpec:
    volumes, mounts = _volumes(spec)
    flags = [f"--nproc-per-node={spec.nproc_per_node}"] if spec.elastic else []
    container = k8s.V1Container(
        name=contract.CONTAINER_NAME,
        image=spec.image,
        image_pull_policy=spec.image_pull_policy,
        command=contract.container_command(contract.CONFIG_PATH, spec.extra_args, flags),
        env=_env(spec),
        ports=_ports(spec, metrics_port),
        resources=_resources(spec),
        volume_mounts=mounts,
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
    )
    tolerations = [k8s.V1Toleration(**_snake(t)) for t in spec.tolerations] or None
    pod = k8s.V1PodSpec(
        containers=[container],
        volumes=volumes,
        service_account_name=spec.service_account,
        automount_service_account_token=False,
        node_selector=dict(spec.node_selector) or None,
        tolerations=tolerations,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=spec.run_as_user,
            run_as_group=spec.run_as_group,
            fs_group=spec.fs_group,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
    )
    annotations = {ISTIO_INJECT: "false", **spec.pod_annotations}
    return k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=_labels(spec), annotations=annotations), spec=pod)


def _snake(toleration: dict[str, Any]) -> dict[str, Any]:
    """Kubernetes JSON keys (tolerationSeconds) to the Python client's (toleration_seconds)."""
    allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
    unknown = set(toleration) - allowed
    if unknown:
        raise ValueError(f"toleration {toleration}: unknown keys {sorted(unknown)}")
    return {re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k): v for k, v in toleration.items()}


def _run_policy(spec: JobSpec) -> KubeflowOrgV1RunPolicy:
    scheduling = None
    if spec.queue or spec.min_available or spec.priority_class:
        min_available = spec.min_available or (spec.nnodes if spec.queue else None)
        scheduling = KubeflowOrgV1SchedulingPolicy(
            queue=spec.queue, min_available=min_available, priority_class=spec.priority_class
        )
    return KubeflowOrgV1RunPolicy(
        clean_pod_policy=spec.clean_pod_policy,
        ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
        backoff_limit=spec.backoff_limit,
        active_deadline_seconds=spec.active_deadline_seconds,
        scheduling_policy=scheduling,
    )


def _replica_specs(spec: JobSpec, template: k8s.V1PodTemplateSpec) -> dict[str, KubeflowOrgV1ReplicaSpec]:
    def replica(n: int) -> KubeflowOrgV1ReplicaSpec:
        return KubeflowOrgV1ReplicaSpec(replicas=n, restart_policy="OnFailure", template=template)

    if spec.elastic:
        # Elastic jobs are Worker-only: torchrun's c10d rendezvous (at <job>-worker-0) assigns node
        # ranks, so the Master's static RANK/PET_NODE_RANK would be wrong there.
        return {contract.WORKER: replica(spec.nnodes)}
    specs = {contract.MASTER: replica(1)}
    if spec.nnodes > 1:
        specs[contract.WORKER] = replica(spec.nnodes - 1)
    return specs


def render_job(spec: JobSpec, config: TrainConfig) -> RenderedJob:
    """Build the PyTorchJob and ConfigMap for `config` (already resolved: overrides applied)."""
    spec.validate()
    metrics_port = config.run.metrics_port if spec.metrics_port is None else spec.metrics_port
    labels = _labels(spec)
    chash = config_hash(config)
    annotations = {CONFIG_HASH_ANNOTATION: chash, **spec.annotations}
    cm = k8s.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=k8s.V1ObjectMeta(
            name=configmap_name(spec.name), namespace=spec.namespace, labels=labels,
            annotations={CONFIG_HASH_ANNOTATION: chash},
        ),
        data={contract.CONFIG_KEY: to_yaml(config)},
    )
    elastic = None
    if spec.elastic:
        elastic = KubeflowOrgV1ElasticPolicy(
            min_replicas=spec.elastic_min_nodes, max_replicas=spec.elastic_max_nodes,
            max_restarts=spec.elastic_max_restarts, rdzv_backend="c10d",
        )
    job = KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata=k8s.V1ObjectMeta(name=spec.name, namespace=spec.namespace, labels=labels, annotations=annotations),
        spec=KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(spec.nproc_per_node),  # a string in the CRD ("auto", "gpu" or a number)
            pytorch_replica_specs=_replica_specs(spec, _pod_template(spec, metrics_port)),
            run_policy=_run_policy(spec),
            elastic_policy=elastic,
        ),
    )
    api = k8s.ApiClient()
    return RenderedJob(
        job_model=job,
        configmap_model=cm,
        job=api.sanitize_for_serialization(job),
        configmap=api.sanitize_for_serialization(cm),
    )
