"""k8s/ for Trainer v2: every kustomization under k8s/ builds and every object it builds passes its
real schema (the v1.9.4/v2.3.0 CRDs, the prometheus-operator CRDs, kubernetes-validate --strict
for core kinds); the TrainJob overlay equals the rendered TrainJob; the runtime holds what
`RUNTIME_FIXED` says; the cluster and namespaced runtimes are the same runtime; the profile RBAC
binds the profile's default-editor."""

from __future__ import annotations

import re
import subprocess

import kubernetes_validate
import pytest
import yaml
from launch_helpers import REPO, find_tool

from gbcosface.config import load_config
from gbcosface.launch import contract
from gbcosface.launch.kinds import get_job_kind
from gbcosface.launch.spec import JobSpec
from gbcosface.launch.trainjob import LOCAL_RANKS_LABEL, RUNTIME_FIXED, RUNTIME_NAME, runtime_errors
from gbcosface.launch.validate import crd_schema_errors, load_crd_schema

CRDS = REPO / "tests" / "fixtures" / "crds"
SCHEMAS = {  # kind -> (CRD file, version)
    "PyTorchJob": ("kubeflow.org_pytorchjobs.yaml", "v1"),
    "TrainJob": ("trainer.kubeflow.org_trainjobs.yaml", "v1alpha1"),
    "TrainingRuntime": ("trainer.kubeflow.org_trainingruntimes.yaml", "v1alpha1"),
    "ClusterTrainingRuntime": ("trainer.kubeflow.org_clustertrainingruntimes.yaml", "v1alpha1"),
    "PodMonitor": ("monitoring.coreos.com_podmonitors.yaml", "v1"),
    "PrometheusRule": ("monitoring.coreos.com_prometheusrules.yaml", "v1"),
}
KUSTOMIZATIONS = sorted(str(p.parent.relative_to(REPO)) for p in (REPO / "k8s").rglob("kustomization.yaml"))
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
TRAINJOB_2X8 = JobSpec(
    name="gbcosface-train", namespace="kubeflow", image="ghcr.io/gbcosface/gbcosface:0.1.0",
    s3_secret_name="gbcosface-s3", service_account="gbcosface-trainer", data_volume_claim="gbcosface-data",
    memory_request="128Gi", memory_limit="192Gi", cpu_request="32", nnodes=2, nproc_per_node=8, gpus_per_node=8,
    shm_size="64Gi", tolerations=[GPU_TOLERATION], nccl_socket_ifname="eth0",
)


def build(tree: str) -> list[dict]:
    out = subprocess.run([find_tool("kubectl"), "kustomize", str(REPO / tree)], check=True, capture_output=True,
                         text=True, timeout=120)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


_schemas: dict[str, dict] = {}


def schema_of(kind: str) -> dict:
    if kind not in _schemas:
        _schemas[kind] = load_crd_schema(CRDS / SCHEMAS[kind][0], SCHEMAS[kind][1])
    return _schemas[kind]


def test_all_the_trees_are_covered():
    assert {"k8s/overlays/trainjob-gpu-2x8", "k8s/runtimes/cluster", "k8s/runtimes/namespaced",
            "k8s/rbac/profile", "k8s/base", "k8s/overlays/gpu-2x8"} <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("tree", KUSTOMIZATIONS)
def test_every_object_every_kustomization_builds_passes_its_schema(tree):
    docs = build(tree)
    assert docs, tree
    for doc in docs:
        kind = doc["kind"]
        where = f"{tree}: {kind} {doc['metadata'].get('name')}"
        if kind in SCHEMAS:
            # Monitoring CRDs list no additionalProperties and carry open maps: check them non-strict here
            # (tests/monitoring/test_manifests.py walks them strictly with their own unknown-field check).
            strict = kind not in ("PodMonitor", "PrometheusRule")
            assert crd_schema_errors(doc, schema_of(kind), strict=strict) == [], where
            if kind == "TrainJob":
                assert get_job_kind("trainjob").problems(doc) == [], where
            if kind == "PyTorchJob":
                assert get_job_kind("pytorchjob").problems(doc) == [], where
            if kind.endswith("TrainingRuntime"):
                assert runtime_errors(doc) == [], where
        else:
            for version in ("1.29.0", kubernetes_validate.latest_version()):
                kubernetes_validate.validate(doc, version, strict=True)


def test_the_trainjob_overlay_equals_the_rendered_trainjob():
    docs = build("k8s/overlays/trainjob-gpu-2x8")
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Role", "RoleBinding", "ServiceAccount", "TrainJob"]
    (job,) = [d for d in docs if d["kind"] == "TrainJob"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert re.fullmatch(r"gbcosface-train-config-[a-z0-9]{10}", cm["metadata"]["name"])
    text = yaml.safe_dump(job)
    assert text.count(cm["metadata"]["name"]) == 1  # kustomizeconfig.yaml carried the generated name
    normalized = yaml.safe_load(text.replace(cm["metadata"]["name"], "gbcosface-train-config"))
    assert normalized == get_job_kind("trainjob").render(TRAINJOB_2X8, load_config(REPO / "k8s/base/config.yaml")).job
    assert cm["data"]["config.yaml"] == (REPO / "k8s/base/config.yaml").read_text()


def _runtime(tree: str) -> dict:
    (doc,) = build(tree)
    return doc


def test_cluster_and_namespaced_runtimes_are_one_runtime():
    cluster, namespaced = _runtime("k8s/runtimes/cluster"), _runtime("k8s/runtimes/namespaced")
    assert (cluster["kind"], namespaced["kind"]) == ("ClusterTrainingRuntime", "TrainingRuntime")
    assert cluster["metadata"]["name"] == namespaced["metadata"]["name"] == RUNTIME_NAME
    assert cluster["spec"] == namespaced["spec"]
    assert cluster["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"


def test_the_runtime_holds_what_trainjobs_rely_on():
    rt = _runtime("k8s/runtimes/cluster")
    jobset = rt["spec"]["template"]["spec"]
    assert jobset["failurePolicy"]["maxRestarts"] == RUNTIME_FIXED["backoff_limit"]
    assert jobset["ttlSecondsAfterFinished"] == RUNTIME_FIXED["ttl_seconds_after_finished"]
    (node,) = jobset["replicatedJobs"]
    assert node["template"]["spec"]["backoffLimit"] == 0  # a failed node fails the Job: the JobSet restarts all
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    ps = pod["spec"]
    assert ps["automountServiceAccountToken"] is False and ps["securityContext"]["runAsNonRoot"] is True
    assert ps["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ps["terminationGracePeriodSeconds"] == 300
    (c,) = ps["containers"]
    assert c["name"] == "node" and c["imagePullPolicy"] == RUNTIME_FIXED["image_pull_policy"]
    assert c["command"] == contract.container_command()
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and c["securityContext"]["capabilities"] == {
        "drop": ["ALL"]}
    port0 = RUNTIME_FIXED["metrics_port"]
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [
        ("metrics" if i == 0 else f"metrics-{i}", port0 + i) for i in range(RUNTIME_FIXED["metrics_ports"])]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    (shm,) = ps["volumes"]
    assert shm["name"] == "dshm" and shm["emptyDir"]["medium"] == "Memory"
    # What the TrainJob patches in uses the same names: its dshm replaces this one.
    job = get_job_kind("trainjob").render(TRAINJOB_2X8, load_config("paper")).job
    tmpl = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert "dshm" in {v["name"] for v in tmpl["template"]["spec"]["template"]["spec"]["volumes"]}
    assert tmpl["template"]["spec"]["template"]["metadata"]["labels"][LOCAL_RANKS_LABEL] == "8"


def test_profile_rbac_binds_the_profiles_default_editor_with_the_launchers_rules():
    docs = build("k8s/rbac/profile")
    (role,) = [d for d in docs if d["kind"] == "Role"]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    base_role = [d for d in build("k8s/base") if d["kind"] == "Role"][0]
    assert role["rules"] == base_role["rules"]
    ns = role["metadata"]["namespace"]
    assert binding["metadata"]["namespace"] == ns
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default-editor", "namespace": ns}]
