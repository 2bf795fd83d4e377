"""Rendered PyTorchJobs: valid against the real CRD schema and the webhook rules, and shaped as the
contract in docs/kubernetes.md says (one Master, container `pytorch`, torchrun, /dev/shm, ...)."""

from __future__ import annotations

import pytest
import yaml

from gbcosface.config import config_hash, from_dict, load_config
from gbcosface.launch import contract
from gbcosface.launch.names import job_name_for_run
from gbcosface.launch.pytorchjob import JobSpec, render_job
from gbcosface.launch.validate import job_errors

IMAGE = "registry.example/gbcosface-trainer@sha256:" + "0" * 64
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

SPECS = {
    "one-node": JobSpec(name="gbc-one", image=IMAGE),
    "gpu-2x8": JobSpec(
        name="gbc-2x8", image=IMAGE, namespace="kubeflow", nnodes=2, nproc_per_node=8, gpus_per_node=8,
        cpu_request="32", memory_request="128Gi", memory_limit="192Gi", shm_size="64Gi",
        tolerations=[GPU_TOLERATION], node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        nccl_socket_ifname="eth0", s3_secret_name="gbcosface-s3", service_account="gbcosface-trainer",
        data_volume_claim="gbcosface-data", run_id="gbcosface-train-eval-20261128", active_deadline_seconds=86400 * 7,
    ),
    "elastic": JobSpec(name="gbc-elastic", image=IMAGE, nnodes=3, nproc_per_node=2, gpus_per_node=2,
                       elastic_min_nodes=2, elastic_max_nodes=4, elastic_max_restarts=5),
    "queue": JobSpec(name="gbc-queue", image=IMAGE, nnodes=4, nproc_per_node=8, gpus_per_node=8,
                     queue="gpu-queue", priority_class="training"),
}


def _render(key: str):
    return render_job(SPECS[key], load_config("paper"))


def _template(job, rtype="Master"):
    return job["spec"]["pytorchReplicaSpecs"][rtype]["template"]


def _container(job, rtype="Master"):
    (c,) = _template(job, rtype)["spec"]["containers"]
    return c


@pytest.mark.parametrize("key", sorted(SPECS))
def test_every_rendered_job_passes_crd_schema_webhook_and_project_rules(key, crd_schema):
    rendered = _render(key)
    assert job_errors(rendered.job, crd_schema) == []
    assert rendered.job["apiVersion"] == "kubeflow.org/v1" and rendered.job["kind"] == "PyTorchJob"


def test_one_node_job_shape():
    job = _render("one-node").job
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master"}
    assert replicas["Master"]["replicas"] == 1 and replicas["Master"]["restartPolicy"] == "OnFailure"
    assert job["spec"]["nprocPerNode"] == "1"  # a string in the CRD
    c = _container(job)
    assert c["name"] == "pytorch"
    assert c["command"] == ["torchrun", "-m", "gbcosface", "train", "--config", "/etc/gbcosface/config.yaml"]
    assert {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"} in c["ports"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    pod = _template(job)
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True and pod["spec"]["securityContext"]["runAsUser"] == 1000
    assert pod["spec"]["automountServiceAccountToken"] is False
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    cfg_vol = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    assert cfg_vol["configMap"]["name"] == "gbc-one-config"
    assert {"name": "config", "mountPath": "/etc/gbcosface", "readOnly": True} in c["volumeMounts"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    # torchrun's shutdown wait: the pod's grace period (300 s) less 15 s, so a preemption checkpoint completes.
    assert env == {"GBCOSFACE_JOB_NAME": "gbc-one", "NCCL_DEBUG": "WARN", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "285"}
    # The operator injects these; the template must not fight it.
    assert not set(env) & set(contract.OPERATOR_ENV_NAMES)
    run = job["spec"]["runPolicy"]
    # 3 whole-job restarts of 1 pod: the operator fails the job when restartCounts reach (3 + 1) x 1.
    assert run == {"backoffLimit": 4, "cleanPodPolicy": "Running", "ttlSecondsAfterFinished": 86400}
    # One metrics port per local rank, from the config's run.metrics_port (9400 in the paper recipe).
    assert [p["name"] for p in c["ports"] if p["name"].startswith("metrics")] == ["metrics"]


def test_configmap_carries_the_resolved_config_and_its_hash():
    cfg = load_config("paper", ["run.seed=3"])
    rendered = render_job(JobSpec(name="gbc-cm", image=IMAGE, namespace="ns"), cfg)
    cm = rendered.configmap
    assert cm["kind"] == "ConfigMap" and cm["metadata"] == {**cm["metadata"], "name": "gbc-cm-config", "namespace": "ns"}
    back = from_dict(yaml.safe_load(cm["data"]["config.yaml"]))
    assert back.run.seed == 3 and config_hash(back) == config_hash(cfg)
    assert rendered.job["metadata"]["annotations"]["gbcosface/config-hash"] == config_hash(cfg)
    docs = list(yaml.safe_load_all(rendered.to_yaml()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "PyTorchJob"] and docs[1] == rendered.job


def test_gpu_2x8_job_shape():
    job = _render("gpu-2x8").job
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    assert job["spec"]["nprocPerNode"] == "8"
    for rtype in ("Master", "Worker"):
        c = _container(job, rtype)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8" and c["resources"]["requests"]["nvidia.com/gpu"] == "8"
        assert c["resources"]["limits"]["memory"] == "192Gi" and "cpu" not in c["resources"]["limits"]
        metrics = [(p["name"], p["containerPort"]) for p in c["ports"] if p["name"].startswith("metrics")]
        assert metrics == [("metrics", 9400)] + [(f"metrics-{i}", 9400 + i) for i in range(1, 8)]
        env = {e["name"]: e for e in c["env"]}
        assert env["NCCL_SOCKET_IFNAME"]["value"] == "eth0" and env["GLOO_SOCKET_IFNAME"]["value"] == "eth0"
        for key in ("GBCOSFACE_S3_ACCESS_KEY_ID", "GBCOSFACE_S3_SECRET_ACCESS_KEY", "GBCOSFACE_S3_ENDPOINT_URL"):
            ref = env[key]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "gbcosface-s3", "key": key, "optional": True}
        pod = _template(job, rtype)["spec"]
        assert pod["tolerations"] == [GPU_TOLERATION]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert pod["serviceAccountName"] == "gbcosface-trainer"
        assert next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"] == "64Gi"
        data = next(v for v in pod["volumes"] if v["name"] == "data")
        assert data["persistentVolumeClaim"] == {"claimName": "gbcosface-data", "readOnly": True}
    assert job["metadata"]["labels"]["gbcosface/run-id"] == "gbcosface-train-eval-20261128"
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 86400 * 7


def test_elastic_job_is_worker_only_with_explicit_nproc():
    job = _render("elastic").job
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Worker"}
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    assert job["spec"]["elasticPolicy"] == {"minReplicas": 2, "maxReplicas": 4, "maxRestarts": 5, "rdzvBackend": "c10d"}
    # The operator sets PET_NPROC_PER_NODE only for jobs with a Master: an elastic job passes it.
    assert _container(job, "Worker")["command"][:2] == ["torchrun", "--nproc-per-node=2"]


def test_queue_and_priority_work_without_a_gang_scheduler():
    """On a default operator (no --gang-scheduler-name) runPolicy.schedulingPolicy is never read
    (kubeflow/trainer@v1.9.4:pkg/controller.v1/common/job.go): the queue is Kueue's label on the job and
    the priority each pod's priorityClassName."""
    job = _render("queue").job
    assert "schedulingPolicy" not in job["spec"]["runPolicy"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    for rtype in ("Master", "Worker"):
        assert _template(job, rtype)["spec"]["priorityClassName"] == "training"
        assert "kueue.x-k8s.io/queue-name" not in _template(job, rtype)["metadata"]["labels"]
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3


@pytest.mark.parametrize(
    ("gang", "policy", "kueue"),
    [
        ("volcano", {"queue": "gpu-queue", "minAvailable": 4, "priorityClass": "training"}, None),
        ("scheduler-plugins", {"minAvailable": 4, "priorityClass": "training"}, "gpu-queue"),
    ],
)
def test_an_explicit_gang_scheduler_gets_the_scheduling_policy(gang, policy, kueue, crd_schema):
    import dataclasses

    spec = dataclasses.replace(SPECS["queue"], gang_scheduler=gang)
    job = render_job(spec, load_config("paper")).job
    assert job_errors(job, crd_schema) == []
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == policy
    assert job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == kueue
    assert _template(job, "Worker")["spec"]["priorityClassName"] == "training"


def test_min_available_without_a_gang_scheduler_is_refused():
    spec = JobSpec(name="gbc-gang", image=IMAGE, nnodes=2, min_available=2)
    with pytest.raises(ValueError, match="min_available: only a gang scheduler"):
        render_job(spec, load_config("paper"))
    with pytest.raises(ValueError, match="gang_scheduler 'kube-batch'"):
        render_job(JobSpec(name="gbc-gang", image=IMAGE, gang_scheduler="kube-batch"), load_config("paper"))


def test_extra_args_and_metrics_off():
    spec = JobSpec(name="gbc-x", image=IMAGE, nproc_per_node=2, metrics_port=0, extra_args=["run.resume=false"], shm_size=None)
    job = render_job(spec, load_config("paper")).job
    c = _container(job)
    assert c["command"][-1] == "run.resume=false"
    assert [p["name"] for p in c["ports"]] == ["pytorchjob-port"]
    assert [v["name"] for v in _template(job)["spec"]["volumes"]] == ["config"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Bad_Name"}, "DNS-1035"),
        ({"name": "9starts-with-digit"}, "DNS-1035"),
        ({"nnodes": 0}, "nnodes must be >= 1"),
        ({"gpus_per_node": 2, "nproc_per_node": 4}, "exceeds gpus_per_node"),
        ({"elastic_min_nodes": 2}, "both elastic_min_nodes and elastic_max_nodes"),
        ({"elastic_min_nodes": 3, "elastic_max_nodes": 4, "nnodes": 2}, "elastic bounds"),
        ({"memory_limit": "lots"}, "not a Kubernetes quantity"),
        ({"clean_pod_policy": "Sometimes"}, "clean_pod_policy"),
        ({"min_available": 5, "nnodes": 2}, "min_available"),
        ({"tolerations": [{"key": "k", "operatr": "Exists"}]}, "unknown keys"),
    ],
)
def test_bad_job_specs_are_refused_before_rendering(changes, message):
    spec = JobSpec(**{"name": "gbc-bad", "image": IMAGE, **changes})
    with pytest.raises(ValueError, match=message):
        render_job(spec, load_config("paper"))


def test_run_scoped_names():
    a = job_name_for_run("gbcosface-train-eval-20261128051200")
    assert a == job_name_for_run("gbcosface-train-eval-20261128051200")  # a pure function of the run
    assert a.startswith("gbcosface-train-eval-20261128051200-")
    ids = ["Run_1", "run-1", "RUN 1", "0f8e4c1e-5b1a-4c39-9d6f-3e8a1c0b2d7e", "x" * 200, "--weird--", "ü"]
    names = [job_name_for_run(i) for i in ids]
    assert len(set(names)) == len(ids)  # lossy slugs stay distinct through the hash suffix
    for name in names:
        assert len(name) <= 46 and name[0].isalpha() and name[-1].isalnum()
        assert all(len(pod) <= 63 for pod in contract.replica_names(name, 1000))
        assert name == name.lower()
    with pytest.raises(ValueError):
        job_name_for_run("  ")


def test_operator_env_contract_values():
    env = contract.operator_env("job", "Worker", 2, nnodes=4, nproc_per_node=8)
    assert env == {
        "PYTHONUNBUFFERED": "1", "MASTER_PORT": "23456", "PET_MASTER_PORT": "23456",
        "MASTER_ADDR": "job-master-0", "PET_MASTER_ADDR": "job-master-0", "WORLD_SIZE": "32", "RANK": "3",
        "PET_NPROC_PER_NODE": "8", "PET_NODE_RANK": "3", "PET_NNODES": "4",
    }
    assert tuple(env) == contract.OPERATOR_ENV_NAMES
    with pytest.raises(ValueError):
        contract.operator_env("job", "Worker", 3, nnodes=4, nproc_per_node=8)  # rank 4 in a 4-pod job


def test_torchrun_shutdown_timeout_follows_the_grace_period():
    from gbcosface.launch import contract

    assert contract.shutdown_timeout_s(300) == 285
    assert contract.shutdown_timeout_s(20) == 30  # never below torchrun's own default
