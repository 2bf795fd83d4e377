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
- restartPolicy OnFailure with a backoff limit sized so that the JobSpec's `backoff_limit` counts
  whole-job restarts (`operator_backoff_limit`), cleanPodPolicy and TTL so nothing lingers;
- `priorityClassName` on every pod and a queue as Kueue's `kueue.x-k8s.io/queue-name` label: on an
  operator without gang scheduling (the default install) `runPolicy.schedulingPolicy` is never read,
  so it is rendered only for an explicit `gang_scheduler` (Volcano or scheduler-plugins).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from . import spec as common
from .names import derived_name_problems
from .spec import (  # noqa: F401 - re-exported: the names this module has always had
    BASE_LABELS,
    CLEAN_POD_POLICIES,
    CONFIG_HASH_ANNOTATION,
    ISTIO_INJECT,
    KUEUE_QUEUE_LABEL,
    RUN_ID_LABEL,
    S3_ENV_KEYS,
    JobSpec,
    RenderedJob,
    configmap_name,
)

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
#: The JobKind name (`get_job_kind("pytorchjob")`, `--kind pytorchjob`).
NAME = "pytorchjob"

def _ports(spec: JobSpec, metrics_port: int) -> list[k8s.V1ContainerPort]:
    ports = [k8s.V1ContainerPort(name=contract.MASTER_PORT_NAME, container_port=spec.master_port, protocol="TCP")]
    if metrics_port:
        # One port per local rank (base + LOCAL_RANK): "metrics", "metrics-1", ... as the PodMonitor expects.
        for local_rank in range(spec.nproc_per_node):
            name = "metrics" if local_rank == 0 else f"metrics-{local_rank}"
            ports.append(k8s.V1ContainerPort(name=name, container_port=metrics_port + local_rank, protocol="TCP"))
    return ports


def _pod_template(spec: JobSpec, metrics_port: int) -> k8s.V1PodTemplateSpec:
    vols, mounts = common.volumes(spec)
    flags = [f"--nproc-per-node={spec.nproc_per_node}"] if spec.elastic else []
    container = k8s.V1Container(
        name=contract.CONTAINER_NAME,
        image=spec.image,
        image_pull_policy=spec.image_pull_policy,
        command=contract.container_command(contract.CONFIG_PATH, spec.extra_args, flags),
        env=common.env_vars(spec),
        ports=_ports(spec, metrics_port),
        resources=common.resources(spec),
        volume_mounts=mounts,
        security_context=common.container_security(),
    )
    pod = k8s.V1PodSpec(
        containers=[container],
        volumes=vols,
        service_account_name=spec.service_account,
        automount_service_account_token=False,
        node_selector=dict(spec.node_selector) or None,
        tolerations=common.tolerations(spec),
        image_pull_secrets=common.pull_secrets(spec),
        termination_grace_period_seconds=spec.termination_grace_period_seconds,
        security_context=common.pod_security(spec),
        priority_class_name=spec.priority_class,
    )
    return k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=common.labels(spec), annotations=common.pod_annotations(spec)), spec=pod,
    )


def operator_backoff_limit(restarts: int, pods: int) -> int:
    """The `runPolicy.backoffLimit` under which a job of `pods` pods survives `restarts` whole-job
    restarts and fails on the next failure.

    Why not `restarts` itself: the operator's backoffLimit is not a count of job restarts. Under
    restartPolicy OnFailure it sums the container restartCount of every Running pod and fails the
    job once the sum reaches the limit (kubeflow/trainer@v1.9.4:pkg/core/job.go PastBackoffLimit:
    `result >= BackoffLimit`, or `result > 0` for 0). A collective failure restarts every pod of the
    static rendezvous once, so each whole-job restart adds `pods`: after k of them the sum is
    k x pods, and (restarts + 1) x pods lets k = restarts pass and fails k = restarts + 1. (The other
    counter, `previousRetry + 1 > BackoffLimit`, reads the PyTorchJob controller's FakeWorkQueue,
    whose NumRequeues is always 0: pkg/controller.v1/pytorch/pytorchjob_controller.go,
    pkg/common/util/fake_workqueue.go; it only fires for a backoffLimit of 0.)

    Why not restartPolicy ExitCode: its pods are recreated with restartCount 0, so PastBackoffLimit
    never fires and, with that FakeWorkQueue, a retryable failure (exit code >= 128:
    pkg/util/train/train_util.go) restarts without bound, while any ordinary error (torchrun exits 1)
    fails the job at once (pkg/controller.v1/common/pod.go ReconcilePods).
    """
    if restarts < 0 or pods < 1:
        raise ValueError(f"restarts must be >= 0 and pods >= 1, got {restarts} and {pods}")
    return (restarts + 1) * pods


def _run_policy(spec: JobSpec) -> KubeflowOrgV1RunPolicy:
    scheduling = None
    if spec.gang_scheduler:
        # Read only by an operator started with --gang-scheduler-name (kubeflow/trainer@v1.9.4:
        # pkg/controller.v1/common/job.go ReconcileJobs): Volcano's PodGroup takes queue, minMember and
        # priorityClassName; scheduler-plugins' takes minMember only.
        scheduling = KubeflowOrgV1SchedulingPolicy(
            queue=spec.queue if spec.gang_scheduler == "volcano" else None,
            min_available=spec.min_available or spec.nnodes, priority_class=spec.priority_class,
        )
    return KubeflowOrgV1RunPolicy(
        clean_pod_policy=spec.clean_pod_policy,
        ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
        backoff_limit=operator_backoff_limit(spec.backoff_limit, spec.nnodes),
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


def _refused(spec: JobSpec) -> list[str]:
    out = derived_name_problems(NAME, spec.name, spec.nnodes, spec.elastic)
    if spec.trainjob_runtime:
        out.append("trainjob_runtime: a PyTorchJob has no training runtime (it is a TrainJob setting)")
    if spec.min_available is not None and not spec.gang_scheduler:
        out.append("min_available: only a gang scheduler reads runPolicy.schedulingPolicy (set gang_scheduler)")
    return out


def job_labels(spec: JobSpec) -> dict[str, str]:
    """The job's labels: ours, and Kueue's queue label unless the queue is Volcano's. Kueue's webhook
    suspends a job that carries the label until the queue admits it (kubernetes-sigs/kueue:
    pkg/controller/jobframework/defaults.go ApplyDefaultForSuspend), so the job needs no runPolicy.suspend."""
    labels = common.labels(spec)
    if spec.queue and spec.gang_scheduler != "volcano":
        labels[KUEUE_QUEUE_LABEL] = spec.queue
    return labels


def render_job(spec: JobSpec, config: TrainConfig) -> RenderedJob:
    """Build the PyTorchJob and ConfigMap for `config` (already resolved: overrides applied)."""
    spec.validate()
    refused = _refused(spec)
    if refused:
        raise ValueError(f"job {spec.name!r} cannot be a PyTorchJob: " + "; ".join(refused))
    metrics_port = config.run.metrics_port if spec.metrics_port is None else spec.metrics_port
    labels = job_labels(spec)
    chash = config_hash(config)
    annotations = {CONFIG_HASH_ANNOTATION: chash, **spec.annotations}
    cm = common.configmap(spec, to_yaml(config), chash)
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
    return RenderedJob(kind=NAME, job=common.to_dict(job), configmap=common.to_dict(cm), job_model=job,
                       configmap_model=cm, nnodes=spec.nnodes)


#: Labels the Training Operator v1.9 puts on every pod of a PyTorchJob.
JOB_NAME_LABEL = "training.kubeflow.org/job-name"


class PyTorchJobKind:
    """The JobKind of the Training Operator v1 (see `launch/kinds.py`); SDK calls through
    kubeflow-training's `TrainingClient`."""

    name = NAME
    kind = KIND
    api_version = API_VERSION
    container_name = contract.CONTAINER_NAME

    def render(self, spec: JobSpec, config: TrainConfig) -> RenderedJob:
        return render_job(spec, config)

    def refused(self, spec: JobSpec) -> list[str]:
        return _refused(spec)

    def problems(self, job: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str]:
        from .validate import job_errors

        return job_errors(job, schema)

    def crd_version(self) -> str:
        return "v1"

    def plan(self, job: Any, configmap: Any, work_dir: str | Path) -> Any:
        from .local import plan_from_job

        return plan_from_job(job, configmap, work_dir)

    def create(self, apis: Any, job: RenderedJob, namespace: str) -> dict[str, Any]:
        apis.training.create_job(job=job.job_model, namespace=namespace)
        return self.get(apis, job.name, namespace, apis.request_timeout)

    def get(self, apis: Any, name: str, namespace: str, timeout: float) -> dict[str, Any]:
        return common.to_dict(apis.training.get_job(name, namespace, timeout=timeout))

    def delete(self, apis: Any, name: str, namespace: str) -> None:
        apis.training.delete_job(name, namespace, delete_options=k8s.V1DeleteOptions(propagation_policy="Background"))

    def status(self, obj: Any) -> Any:
        from .kinds import JobStatus

        st = obj.get("status") or {}
        conditions = [{k: c.get(k) for k in ("type", "status", "reason", "message")} for c in st.get("conditions") or []]
        true = [c for c in conditions if c.get("status") == "True"]
        meta = obj.get("metadata") or {}
        return JobStatus(
            name=meta.get("name", ""), namespace=meta.get("namespace", ""), kind=KIND,
            phase=true[-1]["type"] if true else "Pending",
            succeeded=any(c["type"] == "Succeeded" for c in true), failed=any(c["type"] == "Failed" for c in true),
            conditions=conditions, replica_statuses=dict(st.get("replicaStatuses") or {}), uid=meta.get("uid"),
        )

    def pod_selector(self, name: str) -> str:
        return f"{JOB_NAME_LABEL}={name}"

    def leader_pod(self, obj: Any, pods: list[dict[str, Any]]) -> str | None:
        """The Master, or Worker 0 in an elastic (Worker-only) job: names the operator fixes."""
        name = obj["metadata"]["name"]
        specs = (obj.get("spec") or {}).get("pytorchReplicaSpecs") or {}
        if contract.MASTER not in specs and contract.WORKER in specs:
            return f"{name}-worker-0"
        return f"{name}-master-0"


PYTORCHJOB = PyTorchJobKind()
