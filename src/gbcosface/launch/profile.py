"""The cluster profile: one YAML string with everything a GPU cluster needs, given at run time.

Why one string: a compiled pipeline must run on clusters that differ in taints, node labels,
network interfaces, secrets and storage; twenty pipeline parameters read worse than one profile,
and a profile can be kept per cluster next to its kubeconfig. `parse_cluster_profile` is strict
(an unknown key or a wrong type is an error naming the key; "" gives the defaults), and
`apply_profile` turns it into JobSpec fields. docs/kubernetes.md documents every key with an
example for two 8-GPU nodes.

Defaults scale with the GPUs per node (`gpus_per_node`, a step parameter), so an 8-GPU pod gets
CPU and memory requests (Burstable QoS, never BestEffort), a GPU toleration and a /dev/shm that
fits DataLoader workers, and a CPU pod gets small ones; no default asks for terabytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gbcosface.yaml_safe import YAMLInputError, load_yaml

from .spec import GANG_SCHEDULERS, TOLERATION_KEYS, JobSpec, is_quantity

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class ProfileError(ValueError):
    """A cluster profile that cannot be used; the message names the key."""


@dataclass(frozen=True)
class ClusterProfile:
    """Per-cluster job settings. `None` means: the default for the job's GPUs (see `resolved`)."""

    cpu_request: str | None = None  # default 4 per GPU, 2 without GPUs
    cpu_limit: str | None = None  # default none (no CFS throttling of the loader)
    memory_request: str | None = None  # default 16Gi per GPU, 4Gi without
    memory_limit: str | None = None  # default 24Gi per GPU, 8Gi without
    gpu_resource: str = "nvidia.com/gpu"
    tolerations: list[dict[str, Any]] | None = None  # default: tolerate nvidia.com/gpu:NoSchedule on GPU jobs
    node_selector: dict[str, str] = field(default_factory=dict)
    nccl_socket_ifname: str | None = None
    nccl_env: dict[str, str] = field(default_factory=lambda: {"NCCL_DEBUG": "WARN"})
    service_account: str | None = None
    image_pull_secrets: list[str] = field(default_factory=list)
    data_pvc: str | None = None  # an existing claim with the data (ReadOnlyMany/ReadWriteMany for > 1 node)
    data_scratch_size: str | None = None  # default 100Gi: an emptyDir the trainer stages the dataset into
    shm_size: str | None = None  # default 8Gi per GPU, 2Gi without (counts against the memory limit)
    s3_secret: str = "gbcosface-s3"  # "" for none
    priority_class: str | None = None
    queue: str | None = None
    gang_scheduler: str | None = None  # PyTorchJob: "volcano" | "scheduler-plugins" (the operator's gang scheduler)
    trainjob_runtime: str | None = None  # TrainJob only: "[KIND/]NAME" (default ClusterTrainingRuntime/gbcosface-torch)
    backoff_limit: int = 3
    ttl_seconds_after_finished: int = 86400
    stuck_pod_grace_s: float = 900.0
    queue_grace_s: float = 21600.0  # how long pods may wait for busy GPUs ("Insufficient <gpu_resource>")
    trainjob_retention_s: int | None = 604800  # delete finished TrainJobs after this; null keeps them
    termination_grace_period_seconds: int = 300
    # MLflow credentials for the training pods: env name -> key of KFP's Secret kfp-mlflow-credentials
    # (the namespace's credentialSecretRef), e.g. {MLFLOW_TRACKING_TOKEN: token}; docs/tracking.md
    mlflow_secret_keys: dict[str, str] = field(default_factory=dict)

    def resolved(self, gpus_per_node: int) -> ClusterProfile:
        """The profile with every `None` default filled in for `gpus_per_node` GPUs."""
        g = max(0, gpus_per_node)
        fill: dict[str, Any] = {
            "cpu_request": str(4 * g) if g else "2",
            "memory_request": f"{16 * g}Gi" if g else "4Gi",
            "memory_limit": f"{24 * g}Gi" if g else "8Gi",
            "tolerations": [dict(GPU_TOLERATION)] if g else [],
            "shm_size": f"{8 * g}Gi" if g else "2Gi",
            "data_scratch_size": None if self.data_pvc else "100Gi",
        }
        return dataclasses.replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _check(key: str, value: Any) -> Any:
    """The value for `key`, coerced where YAML is loose (a bare number for a quantity), or ProfileError."""
    quantities = {"cpu_request", "cpu_limit", "memory_request", "memory_limit", "data_scratch_size", "shm_size"}
    strings = {"gpu_resource", "nccl_socket_ifname", "service_account", "data_pvc", "s3_secret", "priority_class",
               "queue", "trainjob_runtime"}
    ints = {"backoff_limit", "ttl_seconds_after_finished", "termination_grace_period_seconds", "trainjob_retention_s"}
    if value is None:
        if key in quantities | strings - {"gpu_resource", "s3_secret"} or key in (
                "tolerations", "gang_scheduler", "trainjob_retention_s"):
            return None
        raise ProfileError(f"cluster profile key {key!r}: null is not allowed")
    if key in quantities:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not is_quantity(value):
            raise ProfileError(f"cluster profile key {key!r}: {value!r} is not a Kubernetes quantity (e.g. 16Gi, 32)")
        return str(value)
    if key in strings:
        if not isinstance(value, str):
            raise ProfileError(f"cluster profile key {key!r}: expected a string, got {type(value).__name__}")
        return value
    if key in ints:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ProfileError(f"cluster profile key {key!r}: expected an integer >= 0, got {value!r}")
        return value
    if key == "gang_scheduler":
        if value not in GANG_SCHEDULERS:
            raise ProfileError(f"cluster profile key {key!r}: {value!r} is not one of {', '.join(GANG_SCHEDULERS)}")
        return value
    if key in ("stuck_pod_grace_s", "queue_grace_s"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ProfileError(f"cluster profile key {key!r}: expected seconds >= 0, got {value!r}")
        return float(value)
    if key == "mlflow_secret_keys":
        from gbcosface.tracking.mlflow_env import CREDENTIAL_ENV

        if not _is_str_map(value) or not set(value) <= set(CREDENTIAL_ENV):
            raise ProfileError(f"cluster profile key {key!r}: expected a mapping from {', '.join(CREDENTIAL_ENV)} to "
                               f"keys of the Secret kfp-mlflow-credentials, got {value!r}")
        return dict(value)
    if key in ("node_selector", "nccl_env"):
        if not _is_str_map(value):
            raise ProfileError(f"cluster profile key {key!r}: expected a mapping of strings to strings "
                               f"(quote numbers), got {value!r}")
        return dict(value)
    if key == "image_pull_secrets":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ProfileError(f"cluster profile key {key!r}: expected a list of Secret names, got {value!r}")
        return list(value)
    if key == "tolerations":
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise ProfileError(f"cluster profile key {key!r}: expected a list of tolerations, got {value!r}")
        for i, t in enumerate(value):
            unknown = set(t) - TOLERATION_KEYS
            if unknown:
                raise ProfileError(f"cluster profile key 'tolerations[{i}]': unknown keys {sorted(unknown)} "
                                   f"(allowed: {sorted(TOLERATION_KEYS)})")
        return [dict(t) for t in value]
    raise AssertionError(key)  # every field is handled above


def parse_cluster_profile(text: str) -> ClusterProfile:
    """A ClusterProfile from YAML text; "" (or only comments) gives the defaults."""
    try:
        data = load_yaml(text or "", "cluster profile")  # bounded: size and alias expansion
    except YAMLInputError as exc:
        raise ProfileError(f"cluster profile is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(f"cluster profile must be a mapping of keys to values, got {type(data).__name__}")
    allowed = [f.name for f in dataclasses.fields(ClusterProfile)]
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in allowed:
            raise ProfileError(f"cluster profile: unknown key {key!r} (allowed: {', '.join(allowed)})")
        values[key] = _check(key, value)
    if values.get("data_pvc") and values.get("data_scratch_size"):
        raise ProfileError("cluster profile keys 'data_pvc' and 'data_scratch_size' exclude each other")
    return ClusterProfile(**values)


def apply_profile(spec: JobSpec, profile: ClusterProfile) -> JobSpec:
    """`spec` with the profile's settings (defaults resolved for `spec.gpus_per_node`)."""
    p = profile.resolved(spec.gpus_per_node)
    return dataclasses.replace(
        spec,
        cpu_request=p.cpu_request, cpu_limit=p.cpu_limit, memory_request=p.memory_request,
        memory_limit=p.memory_limit, gpu_resource=p.gpu_resource, tolerations=list(p.tolerations or []),
        node_selector=dict(p.node_selector), nccl_socket_ifname=p.nccl_socket_ifname, nccl_env=dict(p.nccl_env),
        service_account=p.service_account, image_pull_secrets=list(p.image_pull_secrets),
        data_volume_claim=p.data_pvc, data_scratch_size=p.data_scratch_size, shm_size=p.shm_size,
        s3_secret_name=p.s3_secret or None, priority_class=p.priority_class, queue=p.queue,
        gang_scheduler=p.gang_scheduler,
        trainjob_runtime=p.trainjob_runtime,
        backoff_limit=p.backoff_limit, ttl_seconds_after_finished=p.ttl_seconds_after_finished,
        termination_grace_period_seconds=p.termination_grace_period_seconds,
    )
