"""Rendered TrainJobs: valid against the real Trainer v2.3.0 CRD schema and the webhook's rules,
shaped as docs/kubernetes.md says, equal to what the Kubeflow SDK's own models make of them, and a
JobSpec setting a TrainJob cannot express is refused by name. Both kinds render the same specs."""

from __future__ import annotations

import copy

import pytest
from kubeflow.trainer.constants import constants as sdk
from kubeflow_trainer_api.models.trainer_v1alpha1_train_job import TrainerV1alpha1TrainJob
from launch_helpers import REPO

from gbcosface.config import config_hash, load_config
from gbcosface.launch import contract, trainjob_env
from gbcosface.launch.kinds import JOB_KINDS, get_job_kind
from gbcosface.launch.spec import JobSpec
from gbcosface.launch.trainjob import RUNTIME_NAME, trainjob_errors
from gbcosface.launch.validate import load_crd_schema

IMAGE = "registry.example/gbcosface-trainer@sha256:" + "0" * 64
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
CRDS = {"pytorchjob": REPO / "tests/fixtures/crds/kubeflow.org_pytorchjobs.yaml",
        "trainjob": REPO / "tests/fixtures/crds/trainer.kubeflow.org_trainjobs.yaml"}

# Specs both kinds can express (elastic and min_available are PyTorchJob-only).
SPECS = {
    "one-node": JobSpec(name="gbc-one", image=IMAGE),
    "gpu-2x8": JobSpec(
        name="gbc-2x8", image=IMAGE, namespace="team-a", nnodes=2, nproc_per_node=8, gpus_per_node=8,
        cpu_request="32", memory_request="128Gi", memory_limit="192Gi", shm_size="64Gi",
        tolerations=[GPU_TOLERATION], node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        nccl_socket_ifname="eth0", s3_secret_name="gbcosface-s3", service_account="gbcosface-trainer",
        data_volume_claim="gbcosface-data", run_id="0f8e4c1e-5b1a-4c39-9d6f-3e8a1c0b2d7e",
        active_deadline_seconds=86400 * 7, image_pull_secrets=["regcred"], termination_grace_period_seconds=600,
    ),
    "queue": JobSpec(name="gbc-queue", image=IMAGE, nnodes=4, nproc_per_node=8, gpus_per_node=8, queue="gpu-queue",
                     priority_class="training", data_scratch_size="500Gi"),
}


def _schema(kind: str) -> dict:
    return load_crd_schema(CRDS[kind], get_job_kind(kind).crd_version())


@pytest.mark.parametrize("kind", sorted(JOB_KINDS))
@pytest.mark.parametrize("key", sorted(SPECS))
def test_every_spec_renders_a_valid_job_of_each_kind(kind, key):
    k = get_job_kind(kind)
    rendered = k.render(copy.deepcopy(SPECS[key]), load_config("paper"))
    assert rendered.kind == kind and rendered.job["kind"] == k.kind and rendered.job["apiVersion"] == k.api_version
    assert k.problems(rendered.job, _schema(kind)) == []
    assert rendered.configmap["data"] == k.render(SPECS["one-node"], load_config("paper")).configmap["data"]


def _patch_pod(job):
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    return rjob["template"]["spec"]["template"]


def test_gpu_2x8_trainjob_shape():
    cfg = load_config("paper")
    job = get_job_kind("trainjob").render(SPECS["gpu-2x8"], cfg).job
    spec = job["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": RUNTIME_NAME}
    trainer = spec["trainer"]
    assert trainer["command"] == ["torchrun", "-m", "gbcosface", "train", "--config", contract.CONFIG_PATH]
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["image"]) == (2, 8, IMAGE)
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": "8"},
                                           "limits": {"memory": "192Gi", "nvidia.com/gpu": "8"}}
    env = {e["name"]: e for e in trainer["env"]}
    assert not set(env) & set(trainjob_env.RESERVED_ENV_NAMES)
    assert env["NCCL_SOCKET_IFNAME"]["value"] == "eth0" and env["GBCOSFACE_JOB_NAME"]["value"] == "gbc-2x8"
    assert env["GBCOSFACE_S3_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "gbcosface-s3", "key": "GBCOSFACE_S3_SECRET_ACCESS_KEY", "optional": True}
    assert spec["activeDeadlineSeconds"] == 86400 * 7 and "suspend" not in spec
    assert job["metadata"]["annotations"]["gbcosface/config-hash"] == config_hash(cfg)
    assert job["metadata"]["labels"]["gbcosface/run-id"] == "0f8e4c1e-5b1a-4c39-9d6f-3e8a1c0b2d7e"
    tmpl = _patch_pod(job)
    assert tmpl["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert tmpl["metadata"]["labels"]["app.kubernetes.io/name"] == "gbcosface"
    assert tmpl["metadata"]["labels"]["gbcosface/local-ranks"] == "8"
    pod = tmpl["spec"]
    assert pod["serviceAccountName"] == "gbcosface-trainer" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["tolerations"] == [GPU_TOLERATION] and pod["terminationGracePeriodSeconds"] == 600
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["config"]["configMap"]["name"] == "gbc-2x8-config"
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert vols["data"]["persistentVolumeClaim"] == {"claimName": "gbcosface-data", "readOnly": True}
    (node,) = pod["containers"]
    assert node["name"] == "node" and "env" not in node  # the node container's env goes in spec.trainer.env
    assert {"name": "config", "mountPath": "/etc/gbcosface", "readOnly": True} in node["volumeMounts"]


def test_a_queue_becomes_kueue_labels_and_a_suspended_trainjob():
    job = get_job_kind("trainjob").render(SPECS["queue"], load_config("paper")).job
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "training"
    assert job["spec"]["suspend"] is True
    vols = {v["name"]: v for v in _patch_pod(job)["spec"]["volumes"]}
    assert vols["data"]["emptyDir"] == {"sizeLimit": "500Gi"}


def test_the_kubeflow_sdk_models_read_the_trainjob_back_unchanged():
    """The SDK's generated models (kubeflow-trainer-api 2.3.0) know every CRD field: anything we
    misspelt would be dropped by from_dict and the round trip would differ."""
    for key in SPECS:
        job = get_job_kind("trainjob").render(copy.deepcopy(SPECS[key]), load_config("paper")).job
        assert TrainerV1alpha1TrainJob.from_dict(job).to_dict() == job, key


def test_our_trainer_v2_names_are_the_sdks():
    tj = get_job_kind("trainjob")
    assert tj.api_version == f"{sdk.GROUP}/{sdk.VERSION}" and tj.kind == sdk.TRAINJOB_KIND
    assert tj.container_name == sdk.NODE and trainjob_env.REPLICATED_JOB == sdk.NODE
    assert trainjob_env.JOBSET_NAME_LABEL == sdk.JOBSET_NAME_LABEL
    assert trainjob_env.REPLICATED_JOB_LABEL == sdk.JOBSET_RJOB_NAME_LABEL
    assert trainjob_env.COMPLETION_INDEX_LABEL == sdk.JOB_INDEX_LABEL
    assert trainjob_env.ANCESTOR_LABEL == sdk.TRAINJOB_ANCESTOR_LABEL
    assert "PET_NPROC_PER_NODE" in trainjob_env.RESERVED_ENV_NAMES and sdk.TORCH_ENV_NUM_PROC_PER_NODE == "PET_NPROC_PER_NODE"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"elastic_min_nodes": 1, "elastic_max_nodes": 2, "nnodes": 2}, "no elastic policy"),
        ({"min_available": 1, "gang_scheduler": "volcano"}, "through Kueue"),
        ({"gang_scheduler": "scheduler-plugins"}, "gang_scheduler: a TrainJob gang-schedules"),
        ({"clean_pod_policy": "All"}, "clean_pod_policy"),
        ({"master_port": 29400}, "PET_MASTER_PORT=29500"),
        ({"backoff_limit": 5}, "backoff_limit: 5 differs from the runtime"),
        ({"ttl_seconds_after_finished": 60}, "ttl_seconds_after_finished"),
        ({"image_pull_policy": "Always"}, "image_pull_policy"),
        ({"priority_class": "high"}, "priority_class"),
        ({"shm_size": None}, "shm_size"),
        ({"metrics_port": 9500}, "metrics_port"),
        ({"nproc_per_node": 9}, "metrics_port"),
    ],
)
def test_settings_a_trainjob_cannot_express_are_refused_by_name(changes, message):
    spec = JobSpec(**{"name": "gbc-no", "image": IMAGE, **changes})
    with pytest.raises(ValueError, match="cannot be a TrainJob") as info:
        get_job_kind("trainjob").render(spec, load_config("paper"))
    assert message in str(info.value)
    get_job_kind("pytorchjob").render(spec, load_config("paper"))  # a PyTorchJob can say it


def _valid_job():
    return get_job_kind("trainjob").render(copy.deepcopy(SPECS["gpu-2x8"]), load_config("paper")).job


def test_the_checks_catch_what_the_api_server_or_webhook_would_reject():
    schema = _schema("trainjob")
    job = _valid_job()
    job["spec"]["trainer"]["numNode"] = 2  # a typo: strict decoding rejects the unknown field
    assert any("numNode" in e for e in trainjob_errors(job, schema))
    job = _valid_job()
    job["spec"]["trainer"]["numNodes"] = "2"
    assert any("numNodes" in e for e in trainjob_errors(job, schema))
    job = _valid_job()
    job["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "3"})
    assert any("PET_NNODES is reserved" in e for e in trainjob_errors(job, schema))
    job = _valid_job()
    del job["spec"]["runtimeRef"]
    errors = trainjob_errors(job, schema)
    assert any("runtimeRef" in e for e in errors)
    job = _valid_job()
    job["metadata"]["name"] = "Gbc_2x8"
    assert any("DNS-1035" in e for e in trainjob_errors(job, schema))
    job = _valid_job()
    _patch_pod(job)["spec"]["containers"][0]["env"] = [{"name": "X", "value": "1"}]
    assert any("must go in spec.trainer.env" in e for e in trainjob_errors(job, schema))
    job = _valid_job()
    _patch_pod(job)["spec"]["priorityClassName"] = "high"  # not patchable in v2.3
    assert any("priorityClassName" in e for e in trainjob_errors(job, schema))
    job = _valid_job()
    _patch_pod(job)["spec"]["volumes"] = [v for v in _patch_pod(job)["spec"]["volumes"] if v["name"] != "config"]
    _patch_pod(job)["spec"]["containers"][0]["volumeMounts"] = []
    assert any("nothing mounts the config" in e for e in trainjob_errors(job, schema))
    job = _valid_job()
    job["spec"]["runtimePatches"].append(copy.deepcopy(job["spec"]["runtimePatches"][0]))
    assert any("managers must be unique" in e for e in trainjob_errors(job, schema))


def test_kinds_are_looked_up_by_name():
    assert get_job_kind("TrainJob") is get_job_kind("trainjob")
    assert get_job_kind("PyTorchJob").name == "pytorchjob"
    with pytest.raises(ValueError, match="unknown job kind 'mpijob'"):
        get_job_kind("mpijob")


def test_the_emulator_and_the_kind_table_import_without_kubernetes_clients():
    """`gbcosface.launch` stays light: the emulator and the kind registry load neither the Kubernetes
    client nor a Kubeflow SDK (only a kind's implementation does, when asked for)."""
    import subprocess
    import sys

    code = ("import sys, gbcosface.launch, gbcosface.launch.local, gbcosface.launch.kinds, gbcosface.launch.pods, "
            "gbcosface.launch.namespace, gbcosface.launch.trainjob_env; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'kubeflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_the_namespaced_runtime_can_be_referenced_and_only_by_a_trainjob():
    spec = JobSpec(name="gbc-ns", image=IMAGE, namespace="team-a", trainjob_runtime="TrainingRuntime/gbcosface-torch")
    job = get_job_kind("trainjob").render(spec, load_config("paper")).job
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime",
                                         "name": "gbcosface-torch"}
    assert trainjob_errors(job, _schema("trainjob")) == []
    other = JobSpec(name="gbc-ns", image=IMAGE, trainjob_runtime="my-runtime")
    assert get_job_kind("trainjob").render(other, load_config("paper")).job["spec"]["runtimeRef"]["kind"] == \
        "ClusterTrainingRuntime"
    with pytest.raises(ValueError, match="KIND one of"):
        get_job_kind("trainjob").render(JobSpec(name="gbc-ns", image=IMAGE, trainjob_runtime="Runtime/x"),
                                        load_config("paper"))
    with pytest.raises(ValueError, match="cannot be a PyTorchJob: trainjob_runtime"):
        get_job_kind("pytorchjob").render(spec, load_config("paper"))
