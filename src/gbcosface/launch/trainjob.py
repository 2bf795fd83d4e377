"""Render a GB-CosFace training run as a Kubeflow Trainer v2 TrainJob (`trainer.kubeflow.org/v1alpha1`).

Why a TrainJob beside the PyTorchJob: Trainer v2 is what a Kubeflow installation ships today; the
same JobSpec and config give either kind (`launch/kinds.py`). Shape (docs/kubernetes.md):

- `spec.runtimeRef` -> the ClusterTrainingRuntime `gbcosface-torch` we ship (k8s/runtimes/), which
  holds what a TrainJob cannot say itself: the `node` container's ports (torchrun 29500, one
  metrics port per local rank from 9400), /dev/shm, non-root + seccomp, no service-account token,
  istio injection off, restart policy (JobSet failurePolicy.maxRestarts) and the JobSet TTL;
- `spec.trainer`: image, `torchrun -m gbcosface train --config /etc/gbcosface/config.yaml`,
  numNodes, numProcPerNode, resourcesPerNode, env (never the reserved PET_* names);
- `spec.runtimePatches` (manager `gbcosface.io/launcher`): the ConfigMap, /dev/shm size and data
  volumes with the `node` container's mounts, labels and annotations of the JobSet and pods, service
  account, node selector, tolerations, imagePullSecrets, termination grace, pod security context;
- the config-hash annotation and labels as on the PyTorchJob; a Kueue queue as the
  `kueue.x-k8s.io/queue-name` label with `suspend: true`.

Rendered as plain dicts and submitted as such through the Kubernetes API (CustomObjectsApi), so
what `gbcosface job render --kind trainjob` writes is what the pipeline creates. Why not the
Kubeflow SDK's `TrainerClient.train()`: it builds the TrainJob from its own trainer types and has
no way to mount our ConfigMap through runtimePatches; its `get_job` also resolves the runtime and
every step, which the lifecycle does not need.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gbcosface.config import TrainConfig, config_hash, to_yaml

from . import contract
from . import spec as common
from . import trainjob_env as env_contract
from .names import derived_name_problems, is_dns1035_label
from .spec import CONFIG_HASH_ANNOTATION, JobSpec, RenderedJob

NAME = "trainjob"
GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainJob"
PLURAL = "trainjobs"
RUNTIME_NAME = "gbcosface-torch"
RUNTIME_KIND = "ClusterTrainingRuntime"
PATCH_MANAGER = "gbcosface.io/launcher"
KUEUE_QUEUE_LABEL = common.KUEUE_QUEUE_LABEL
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
#: Pod label with numProcPerNode: the TrainJob PodMonitor scrapes only the metrics ports of ranks that
#: exist (the runtime declares eight), so a 1-process node has no "down" targets.
LOCAL_RANKS_LABEL = "gbcosface/local-ranks"

#: What the runtime `gbcosface-torch` (k8s/runtimes/) fixes; a JobSpec asking for something else is
#: refused (tests/launch/test_trainjob_kustomize.py checks these against the built runtime).
RUNTIME_FIXED = {
    "backoff_limit": 3,  # JobSet spec.failurePolicy.maxRestarts: restarts of the whole node set
    "ttl_seconds_after_finished": 86400,  # JobSet spec.ttlSecondsAfterFinished
    "metrics_port": 9400,  # node container ports metrics, metrics-1, ... metrics-7
    "metrics_ports": 8,
    "image_pull_policy": "IfNotPresent",
}


def _refused(spec: JobSpec) -> list[str]:
    out = derived_name_problems(NAME, spec.name, spec.nnodes)
    if spec.gang_scheduler:
        out.append("gang_scheduler: a TrainJob gang-schedules through its runtime's mlPolicy.podGroupPolicy "
                   "or Kueue (set queue)")
    if spec.elastic:
        out.append("elastic_min_nodes/elastic_max_nodes: a TrainJob has no elastic policy (removed in Trainer v2.2)")
    if spec.min_available is not None:
        out.append("min_available: a TrainJob gang-schedules through Kueue (set queue) instead")
    if spec.clean_pod_policy != "Running":
        out.append("clean_pod_policy: a TrainJob has none (the runtime's JobSet TTL removes the pods)")
    if spec.master_port != contract.DEFAULT_MASTER_PORT:
        out.append(f"master_port: the torch plugin fixes PET_MASTER_PORT={env_contract.MASTER_PORT}")
    for key in ("backoff_limit", "ttl_seconds_after_finished", "image_pull_policy"):
        if getattr(spec, key) != RUNTIME_FIXED[key]:
            out.append(f"{key}: {getattr(spec, key)!r} differs from the runtime {RUNTIME_NAME}'s "
                       f"{RUNTIME_FIXED[key]!r} (a TrainJob cannot set it; change the runtime)")
    if spec.priority_class and not spec.queue:
        out.append("priority_class: a TrainJob cannot set priorityClassName in v2.3; with a queue it becomes "
                   f"the Kueue label {KUEUE_PRIORITY_LABEL}")
    if not spec.shm_size:
        out.append("shm_size: the runtime always mounts /dev/shm; give it a size")
    return out


RUNTIME_KINDS = ("ClusterTrainingRuntime", "TrainingRuntime")


def runtime_ref(spec: JobSpec) -> dict[str, str]:
    """`spec.runtimeRef` from JobSpec.trainjob_runtime ("NAME" or "KIND/NAME"; default: our
    ClusterTrainingRuntime). A namespaced TrainingRuntime must live in the TrainJob's namespace."""
    text = spec.trainjob_runtime or RUNTIME_NAME
    kind, _, name = text.rpartition("/")
    kind = kind or RUNTIME_KIND
    if kind not in RUNTIME_KINDS or not name:
        raise ValueError(f"trainjob_runtime {text!r}: expected NAME or KIND/NAME with KIND one of {RUNTIME_KINDS}")
    return {"apiGroup": GROUP, "kind": kind, "name": name}


def _metrics_problem(spec: JobSpec, port: int) -> str | None:
    if port and (port != RUNTIME_FIXED["metrics_port"] or spec.nproc_per_node > RUNTIME_FIXED["metrics_ports"]):
        return (f"metrics_port: the runtime {RUNTIME_NAME} declares ports {RUNTIME_FIXED['metrics_port']}.."
                f"{RUNTIME_FIXED['metrics_port'] + RUNTIME_FIXED['metrics_ports'] - 1}; port {port} with "
                f"{spec.nproc_per_node} process(es) per node does not fit (set run.metrics_port=9400 or 0)")
    return None


def render_trainjob(spec: JobSpec, config: TrainConfig) -> RenderedJob:
    """Build the TrainJob and its ConfigMap for `config` (already resolved: overrides applied)."""
    spec.validate()
    metrics_port = config.run.metrics_port if spec.metrics_port is None else spec.metrics_port
    refused = _refused(spec) + [p for p in [_metrics_problem(spec, metrics_port)] if p]
    try:
        runtime_ref(spec)
    except ValueError as exc:
        refused.append(str(exc))
    if refused:
        raise ValueError(f"job {spec.name!r} cannot be a TrainJob: " + "; ".join(refused))
    chash = config_hash(config)
    labels = common.labels(spec)
    cm = common.configmap(spec, to_yaml(config), chash)
    vols, mounts = common.volumes(spec)
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": contract.container_command(contract.CONFIG_PATH, spec.extra_args),
        "numNodes": spec.nnodes,
        "numProcPerNode": spec.nproc_per_node,
    }
    res = common.resources(spec)
    if res is not None:
        trainer["resourcesPerNode"] = common.to_dict(res)
    trainer["env"] = common.to_dict(common.env_vars(spec))
    pod_spec: dict[str, Any] = {
        "securityContext": common.to_dict(common.pod_security(spec)),
        "volumes": common.to_dict(vols),
        "containers": [{"name": env_contract.CONTAINER_NAME, "volumeMounts": common.to_dict(mounts)}],
    }
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = common.to_dict(common.tolerations(spec))
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in spec.image_pull_secrets]
    if spec.termination_grace_period_seconds is not None:
        pod_spec["terminationGracePeriodSeconds"] = spec.termination_grace_period_seconds
    patch = {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {
            "metadata": {"labels": dict(labels)},
            "spec": {"replicatedJobs": [{
                "name": env_contract.REPLICATED_JOB,
                "template": {"spec": {"template": {
                    "metadata": {"labels": {**labels, LOCAL_RANKS_LABEL: str(spec.nproc_per_node)},
                                 "annotations": common.pod_annotations(spec)},
                    "spec": pod_spec,
                }}},
            }]},
        }},
    }
    job_labels = dict(labels)
    if spec.queue:
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue
        if spec.priority_class:
            job_labels[KUEUE_PRIORITY_LABEL] = spec.priority_class
    job: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": job_labels,
                     "annotations": {CONFIG_HASH_ANNOTATION: chash, **spec.annotations}},
        "spec": {
            "runtimeRef": runtime_ref(spec),
            "trainer": trainer,
            "runtimePatches": [patch],
        },
    }
    if spec.active_deadline_seconds:
        job["spec"]["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.queue:
        job["spec"]["suspend"] = True  # Kueue admits the workload by unsuspending it
    return RenderedJob(kind=NAME, job=job, configmap=common.to_dict(cm), configmap_model=cm,
                       nnodes=spec.nnodes)


# -- offline checks -------------------------------------------------------------------------------
def webhook_errors(job: Mapping[str, Any]) -> list[str]:
    """What Trainer v2.3's admission (CRD CEL rules and the validating webhook) would reject."""
    errors: list[str] = []
    name = (job.get("metadata") or {}).get("name", "")
    if not is_dns1035_label(name, 63):
        errors.append(f"metadata.name: {name!r} is not a DNS-1035 label of at most 63 characters")
    spec = job.get("spec") or {}
    nodes = (spec.get("trainer") or {}).get("numNodes")
    if is_dns1035_label(name, 63) and isinstance(nodes, int) and nodes >= 1:
        # JobSet v0.12.0 rejects the TrainJob's JobSet when its last pod name would exceed 63 characters.
        errors += [f"metadata.name: {p}" for p in derived_name_problems(NAME, name, nodes)]
    ref = spec.get("runtimeRef") or {}
    if not ref.get("name"):
        errors.append("spec.runtimeRef.name: a TrainJob must reference a runtime")
    if ref.get("kind", RUNTIME_KIND) not in ("ClusterTrainingRuntime", "TrainingRuntime"):
        errors.append(f"spec.runtimeRef.kind: {ref.get('kind')!r} is not ClusterTrainingRuntime or TrainingRuntime")
    managed_by = spec.get("managedBy")
    if managed_by is not None and managed_by not in ("trainer.kubeflow.org/trainjob-controller",
                                                     "kueue.x-k8s.io/multikueue"):
        errors.append(f"spec.managedBy: {managed_by!r} is not an allowed controller")
    for i, e in enumerate((spec.get("trainer") or {}).get("env") or []):
        if e.get("name") in env_contract.RESERVED_ENV_NAMES:
            errors.append(f"spec.trainer.env[{i}]: {e['name']} is reserved for the torch plugin")
    managers = [p.get("manager") for p in spec.get("runtimePatches") or []]
    if len(managers) != len(set(managers)):
        errors.append("spec.runtimePatches: managers must be unique")
    for i, p in enumerate(spec.get("runtimePatches") or []):
        rjobs = ((((p.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {})
                 .get("replicatedJobs") or [])
        for j, rj in enumerate(rjobs):
            pod = (((rj.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for k, c in enumerate(pod.get("containers") or []):
                if c.get("name") in ("node", "dataset-initializer", "model-initializer") and c.get("env"):
                    errors.append(f"spec.runtimePatches[{i}]...replicatedJobs[{j}]...containers[{k}].env: "
                                  f"env of container {c['name']!r} must go in spec.trainer.env")
    return errors


def project_errors(job: Mapping[str, Any]) -> list[str]:
    """This project's TrainJob contract: our runtime, the ConfigMap mounted where the command reads it."""
    from .validate import _label_errors

    errors = _label_errors("metadata.labels", (job.get("metadata") or {}).get("labels"))
    spec = job.get("spec") or {}
    trainer = spec.get("trainer") or {}
    if contract.CONFIG_PATH in (trainer.get("command") or []):
        mounted = False
        for p in spec.get("runtimePatches") or []:
            for rj in p["trainingRuntimeSpec"]["template"]["spec"].get("replicatedJobs", []):
                pod = rj["template"]["spec"]["template"]["spec"]
                for c in pod.get("containers", []):
                    mounted |= any(m.get("mountPath") == contract.CONFIG_DIR for m in c.get("volumeMounts", []))
        if not mounted:
            errors.append(f"spec.runtimePatches: nothing mounts the config at {contract.CONFIG_DIR}")
    if not trainer.get("image"):
        errors.append("spec.trainer.image: the trainer image must be set (the runtime's is a placeholder)")
    return errors


def trainjob_errors(job: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> list[str]:
    from .validate import crd_schema_errors

    errors = crd_schema_errors(dict(job), dict(schema)) if schema is not None else []
    return errors + webhook_errors(job) + project_errors(job)


def runtime_errors(runtime: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> list[str]:
    """A (Cluster)TrainingRuntime: its CRD schema and what the torch plugin and our pods need."""
    from .validate import crd_schema_errors

    errors = crd_schema_errors(dict(runtime), dict(schema)) if schema is not None else []
    spec = runtime.get("spec") or {}
    if "torch" not in (spec.get("mlPolicy") or {}):
        errors.append("spec.mlPolicy.torch: the torch plugin must be enabled")
    rjobs = (((spec.get("template") or {}).get("spec") or {}).get("replicatedJobs")) or []
    node = [rj for rj in rjobs if rj.get("name") == env_contract.REPLICATED_JOB]
    if not node:
        errors.append("spec.template.spec.replicatedJobs: needs a replicated job named 'node'")
        return errors
    tmpl = node[0]["template"]
    if (tmpl.get("metadata") or {}).get("labels", {}).get(env_contract.ANCESTOR_LABEL) != "trainer":
        errors.append(f"replicatedJobs[node].template.metadata.labels: {env_contract.ANCESTOR_LABEL}=trainer missing")
    containers = tmpl["spec"]["template"]["spec"].get("containers") or []
    if not any(c.get("name") == env_contract.CONTAINER_NAME for c in containers):
        errors.append("replicatedJobs[node]: needs a container named 'node'")
    return errors


# -- the JobKind -----------------------------------------------------------------------------------
def _completion_index(pod: Mapping[str, Any]) -> str | None:
    meta = pod.get("metadata") or {}
    return (meta.get("labels") or {}).get(env_contract.COMPLETION_INDEX_LABEL) or (
        meta.get("annotations") or {}).get(env_contract.COMPLETION_INDEX_LABEL)


class TrainJobKind:
    """The JobKind of Kubeflow Trainer v2 (see `launch/kinds.py`); API calls through CustomObjectsApi."""

    name = NAME
    kind = KIND
    api_version = API_VERSION
    container_name = env_contract.CONTAINER_NAME
    #: The only trace of a JobSet the controller cannot create: a Warning event, no condition
    #: (kubeflow/trainer@v2.3.0:pkg/controller/trainjob_controller.go Reconcile).
    fatal_event_reasons = ("TrainJobResourcesCreationFailed",)

    def render(self, spec: JobSpec, config: TrainConfig) -> RenderedJob:
        return render_trainjob(spec, config)

    def refused(self, spec: JobSpec) -> list[str]:
        return _refused(spec)

    def problems(self, job: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str]:
        return trainjob_errors(job, schema)

    def crd_version(self) -> str:
        return VERSION

    def plan(self, job: Mapping[str, Any], configmap: Mapping[str, Any], work_dir: str | Path) -> Any:
        """The emulation of a rendered TrainJob: its command (with the ConfigMap's config written to
        `work_dir/config.yaml`), numNodes, numProcPerNode, plain env, the runtime's restart budget and
        activeDeadlineSeconds."""
        from .local import LocalPlan

        trainer = job["spec"]["trainer"]
        config_file = Path(work_dir) / contract.CONFIG_KEY
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(configmap["data"][contract.CONFIG_KEY])
        argv = [*trainer.get("command", []), *trainer.get("args", [])]
        command = [str(config_file.resolve()) if a == contract.CONFIG_PATH else a for a in argv]
        deadline = job["spec"].get("activeDeadlineSeconds")
        return LocalPlan(
            job_name=job["metadata"]["name"], replicas=int(trainer.get("numNodes", 1)),
            nproc_per_node=int(trainer.get("numProcPerNode", 1)), command=command,
            env={e["name"]: e["value"] for e in trainer.get("env", []) if "value" in e},
            max_restarts=RUNTIME_FIXED["backoff_limit"], timeout_s=float(deadline) if deadline else None, kind=NAME,
        )

    def create(self, apis: Any, job: RenderedJob, namespace: str) -> dict[str, Any]:
        return apis.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job.job,
                                                          _request_timeout=apis.request_timeout)

    def get(self, apis: Any, name: str, namespace: str, timeout: float) -> dict[str, Any]:
        return apis.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                       _request_timeout=timeout)

    def delete(self, apis: Any, name: str, namespace: str) -> None:
        apis.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                    propagation_policy="Background",
                                                    _request_timeout=apis.request_timeout)

    def status(self, obj: Mapping[str, Any]) -> Any:
        """Complete/Failed/Suspended from the conditions; Running while a child Job is active (the
        phases the Kubeflow SDK reports), Created before."""
        from .kinds import JobStatus

        st = obj.get("status") or {}
        conditions = [{k: c.get(k) for k in ("type", "status", "reason", "message")} for c in st.get("conditions") or []]
        true = {c["type"] for c in conditions if c.get("status") == "True"}
        jobs = {j.get("name", ""): {k: j.get(k, 0) for k in ("active", "ready", "succeeded", "failed", "suspended")}
                for j in st.get("jobsStatus") or []}
        if "Failed" in true:
            phase = "Failed"
        elif "Complete" in true:
            phase = "Complete"
        elif "Suspended" in true:
            phase = "Suspended"
        elif any(j["active"] or j["ready"] for j in jobs.values()):
            phase = "Running"
        else:
            phase = "Created"
        meta = obj.get("metadata") or {}
        return JobStatus(name=meta.get("name", ""), namespace=meta.get("namespace", ""), kind=KIND, phase=phase,
                         succeeded=phase == "Complete", failed=phase == "Failed", conditions=conditions,
                         replica_statuses=jobs, uid=meta.get("uid"))

    def list_jobs(self, apis: Any, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        resp = apis.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                        label_selector=label_selector,
                                                        _request_timeout=apis.request_timeout)
        return list(resp.get("items") or [])

    def finished_at(self, obj: Mapping[str, Any]) -> str | None:
        """When the TrainJob finished: the lastTransitionTime of its Complete or Failed condition
        (copied from the JobSet's, whose TTL counts from the same time: kubernetes-sigs/jobset@v0.12.0
        pkg/controllers/ttl_after_finished.go jobSetFinishTime); None while it runs."""
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
                return c.get("lastTransitionTime")
        return None

    def pod_selector(self, name: str) -> str:
        return f"{env_contract.JOBSET_NAME_LABEL}={name}"

    def leader_pod(self, obj: Mapping[str, Any], pods: list[dict[str, Any]]) -> str | None:
        """Node 0: the newest pod of replicated job `node`, job index 0, completion index 0 (JobSet
        gives pods random suffixes, and a restart creates new ones)."""
        rank0 = [p for p in pods
                 if (p["metadata"].get("labels") or {}).get(env_contract.REPLICATED_JOB_LABEL, "node") == "node"
                 and (p["metadata"].get("labels") or {}).get(env_contract.JOB_INDEX_LABEL, "0") == "0"
                 and _completion_index(p) == "0" and not p["metadata"].get("deletionTimestamp")]
        if not rank0:
            return None
        return max(rank0, key=lambda p: p["metadata"].get("creationTimestamp") or "")["metadata"]["name"]


TRAINJOB = TrainJobKind()
