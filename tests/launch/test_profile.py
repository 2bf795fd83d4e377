"""The cluster profile: strict parsing that names the key, defaults sane for 8-GPU nodes (never
BestEffort, no terabyte emptyDir), and the same profile renders valid jobs of both kinds."""

from __future__ import annotations

import pytest

from gbcosface.config import load_config
from gbcosface.launch.kinds import get_job_kind
from gbcosface.launch.profile import ClusterProfile, ProfileError, apply_profile, parse_cluster_profile
from gbcosface.launch.spec import JobSpec
from gbcosface.launch.validate import load_crd_schema

from launch_helpers import REPO  # isort: skip

CRDS = {"pytorchjob": REPO / "tests/fixtures/crds/kubeflow.org_pytorchjobs.yaml",
        "trainjob": REPO / "tests/fixtures/crds/trainer.kubeflow.org_trainjobs.yaml"}

GPU_2X8 = """
# two 8-GPU nodes (docs/kubernetes.md)
cpu_request: 32
memory_request: 128Gi
memory_limit: 192Gi
node_selector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}
tolerations:
  - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
nccl_socket_ifname: eth0
nccl_env: {NCCL_DEBUG: WARN, NCCL_IB_HCA: mlx5}
service_account: gbcosface-trainer
image_pull_secrets: [regcred]
data_pvc: gbcosface-data
shm_size: 64Gi
s3_secret: gbcosface-s3
queue: gpu-queue
stuck_pod_grace_s: 1200
termination_grace_period_seconds: 600
"""


def test_empty_profile_is_the_defaults():
    assert parse_cluster_profile("") == ClusterProfile() == parse_cluster_profile("# nothing\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cpu_requests: 4", "unknown key 'cpu_requests'"),
        ("memory_limit: lots", "'memory_limit': 'lots' is not a Kubernetes quantity"),
        ("backoff_limit: three", "'backoff_limit': expected an integer"),
        ("backoff_limit: true", "'backoff_limit': expected an integer"),
        ("node_selector: {gpu: 1}", "'node_selector': expected a mapping of strings"),
        ("tolerations: [{key: a, operatr: Exists}]", "'tolerations[0]': unknown keys ['operatr']"),
        ("image_pull_secrets: regcred", "'image_pull_secrets': expected a list"),
        ("stuck_pod_grace_s: -1", "'stuck_pod_grace_s': expected seconds"),
        ("service_account: [a]", "'service_account': expected a string"),
        ("data_pvc: d\ndata_scratch_size: 10Gi", "exclude each other"),
        ("- a\n- b", "must be a mapping"),
        ("cpu_request: [", "not valid YAML"),
        ("s3_secret: null", "'s3_secret': null"),
        ("gang_scheduler: kube-batch", "'gang_scheduler': 'kube-batch' is not one of volcano, scheduler-plugins"),
    ],
)
def test_bad_profiles_are_refused_naming_the_key(text, message):
    with pytest.raises(ProfileError) as info:
        parse_cluster_profile(text)
    assert message in str(info.value)


def test_defaults_for_an_8_gpu_node_are_burstable_with_a_gpu_toleration_and_no_huge_disk():
    spec = apply_profile(JobSpec(name="gbc-d", image="i", gpus_per_node=8, nproc_per_node=8), ClusterProfile())
    assert (spec.cpu_request, spec.memory_request, spec.memory_limit, spec.cpu_limit) == ("32", "128Gi", "192Gi", None)
    assert spec.tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec.shm_size == "64Gi" and spec.data_scratch_size == "100Gi" and spec.data_volume_claim is None
    assert spec.s3_secret_name == "gbcosface-s3" and spec.termination_grace_period_seconds == 300
    cpu = apply_profile(JobSpec(name="gbc-c", image="i"), ClusterProfile())
    assert (cpu.cpu_request, cpu.memory_request, cpu.tolerations, cpu.shm_size) == ("2", "4Gi", [], "2Gi")
    assert apply_profile(JobSpec(name="x", image="i"), parse_cluster_profile("s3_secret: ''")).s3_secret_name is None


@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
def test_the_gpu_2x8_profile_renders_a_valid_job_of_either_kind(kind):
    profile = parse_cluster_profile(GPU_2X8)
    spec = apply_profile(JobSpec(name="gbc-p", image="img:1", nnodes=2, nproc_per_node=8, gpus_per_node=8), profile)
    assert spec.data_scratch_size is None and spec.data_volume_claim == "gbcosface-data"
    k = get_job_kind(kind)
    rendered = k.render(spec, load_config("paper"))
    assert k.problems(rendered.job, load_crd_schema(CRDS[kind], k.crd_version())) == []
    text = rendered.to_yaml()
    for needle in ("regcred", "NCCL_IB_HCA", "eth0", "gbcosface-trainer", "NVIDIA-H100-80GB-HBM3", "64Gi",
                   "gbcosface-data", "gbcosface-s3", "gpu-queue", "terminationGracePeriodSeconds: 600", "128Gi"):
        assert needle in text, needle


def test_a_gang_scheduler_profile_gives_the_pytorchjob_its_scheduling_policy():
    """Without the key a queue is Kueue's label; with `gang_scheduler: volcano` it is Volcano's queue in
    runPolicy.schedulingPolicy, the only place an operator started with --gang-scheduler-name reads it."""
    base = JobSpec(name="gbc-g", image="img:1", nnodes=2, gpus_per_node=8, nproc_per_node=8)
    k = get_job_kind("pytorchjob")
    plain = k.render(apply_profile(base, parse_cluster_profile("queue: q\npriority_class: high")), load_config("paper"))
    assert plain.job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"
    assert "schedulingPolicy" not in plain.job["spec"]["runPolicy"]
    volcano = apply_profile(base, parse_cluster_profile("queue: q\npriority_class: high\ngang_scheduler: volcano"))
    job = k.render(volcano, load_config("paper")).job
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"queue": "q", "minAvailable": 2, "priorityClass": "high"}
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["priorityClassName"] == "high"
