"""k8s/: every kustomization builds with kubectl; PyTorchJobs pass the real CRD schema and the
webhook rules and equal what the renderer produces for the same settings; core kinds pass
kubernetes-validate --strict; RBAC is exactly what the launcher needs."""

from __future__ import annotations

import re
import subprocess

import kubernetes_validate
import pytest
import yaml
from launch_helpers import REPO, find_tool

from gbcosface.config import config_hash, from_dict, load_config, load_yaml
from gbcosface.launch.pytorchjob import JobSpec, render_job
from gbcosface.launch.validate import job_errors

# The oldest Kubernetes the Training Operator v1.9 line is used with, and the newest schema shipped.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
IMAGE = "ghcr.io/gbcosface/gbcosface:0.1.0"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
COMMON = dict(name="gbcosface-train", namespace="kubeflow", image=IMAGE, s3_secret_name="gbcosface-s3",
              service_account="gbcosface-trainer", data_volume_claim="gbcosface-data", memory_request="128Gi",
              memory_limit="192Gi", cpu_request="32")

# Each kustomization, the JobSpec its PyTorchJob must equal, and the config file it carries.
TREES = {
    "k8s/base": (JobSpec(**COMMON, nproc_per_node=8, gpus_per_node=8, shm_size="16Gi"), "k8s/base/config.yaml"),
    "k8s/overlays/gpu-2x8": (
        JobSpec(**COMMON, nnodes=2, nproc_per_node=8, gpus_per_node=8, shm_size="64Gi", tolerations=[GPU_TOLERATION],
                nccl_socket_ifname="eth0"),
        "k8s/base/config.yaml",
    ),
    "k8s/overlays/cpu-smoke": (
        JobSpec(**{**COMMON, "cpu_request": "2", "memory_request": "4Gi", "memory_limit": "8Gi"}, nnodes=2,
                nproc_per_node=1, shm_size="1Gi", nccl_env={}),
        "k8s/overlays/cpu-smoke/config.yaml",
    ),
}
CM_NAME = "gbcosface-train-config"


def build(tree: str) -> list[dict]:
    out = subprocess.run([find_tool("kubectl"), "kustomize", str(REPO / tree)], check=True, capture_output=True,
                         text=True, timeout=120)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=sorted(TREES))
def tree(request):
    return request.param, build(request.param)


def _one(docs, kind):
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def test_pytorchjob_passes_crd_schema_and_webhook_rules(tree, crd_schema):
    _, docs = tree
    job = _one(docs, "PyTorchJob")
    assert job_errors(job, crd_schema) == []


def test_core_kinds_pass_kubernetes_validate_strict(tree):
    _, docs = tree
    core = [d for d in docs if d["kind"] != "PyTorchJob"]
    assert {d["kind"] for d in core} == {"ConfigMap", "ServiceAccount", "Role", "RoleBinding"}
    for doc in core:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_pytorchjob_equals_the_rendered_one(tree):
    name, docs = tree
    spec, config_file = TREES[name]
    built = _one(docs, "PyTorchJob")
    cm = _one(docs, "ConfigMap")
    assert re.fullmatch(rf"{CM_NAME}-[a-z0-9]{{10}}", cm["metadata"]["name"]), cm["metadata"]["name"]
    # kustomize's hash-suffixed ConfigMap name reaches every replica's volume (kustomizeconfig.yaml).
    text = yaml.safe_dump(built)
    assert text.count(cm["metadata"]["name"]) == len(built["spec"]["pytorchReplicaSpecs"])
    normalized = yaml.safe_load(text.replace(cm["metadata"]["name"], CM_NAME))
    expected = render_job(spec, load_config(config_file)).job
    assert normalized == expected


def test_configmap_holds_the_config_the_job_annotation_names(tree):
    name, docs = tree
    _, config_file = TREES[name]
    cm = _one(docs, "ConfigMap")
    job = _one(docs, "PyTorchJob")
    assert cm["data"]["config.yaml"] == (REPO / config_file).read_text()
    assert config_hash(from_dict(yaml.safe_load(cm["data"]["config.yaml"]))) == job["metadata"]["annotations"]["gbcosface/config-hash"]


def test_pods_are_non_root_without_privilege_escalation(tree):
    _, docs = tree
    for rtype, rspec in _one(docs, "PyTorchJob")["spec"]["pytorchReplicaSpecs"].items():
        pod = rspec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0, rtype
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, rtype
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert pod["automountServiceAccountToken"] is False
        assert rspec["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"


def test_rbac_grants_exactly_what_the_launcher_uses(tree):
    _, docs = tree
    role = _one(docs, "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("kubeflow.org",), ("pytorchjobs",)): sorted(["create", "get", "list", "watch", "delete"]),
        (("trainer.kubeflow.org",), ("trainjobs",)): sorted(["create", "get", "list", "watch", "delete"]),
        (("",), ("configmaps",)): sorted(["create", "get", "patch", "delete"]),
        (("",), ("pods",)): ["get", "list"],
        (("",), ("pods/log",)): ["get"],
        (("",), ("events",)): ["list"],
        (("",), ("persistentvolumeclaims",)): ["get"],
    }
    binding = _one(docs, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]
    sa = _one(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


def test_secret_template_is_valid_and_holds_placeholders_only():
    doc = yaml.safe_load((REPO / "k8s/base/s3-secret.template.yaml").read_text())
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)
    # The project's own names (gbcosface.s3_env), never AWS_*, which KFP's launcher would read in a step.
    assert set(doc["stringData"]) == {"GBCOSFACE_S3_ACCESS_KEY_ID", "GBCOSFACE_S3_SECRET_ACCESS_KEY",
                                      "GBCOSFACE_S3_ENDPOINT_URL"}
    data = doc["stringData"]
    assert data["GBCOSFACE_S3_ACCESS_KEY_ID"] == data["GBCOSFACE_S3_SECRET_ACCESS_KEY"] == "REPLACE_ME"
    assert data["GBCOSFACE_S3_ENDPOINT_URL"].endswith(".invalid")
    assert all(d["kind"] != "Secret" for t in TREES for d in build(t))  # never applied with the kustomization


def test_cluster_configs_are_the_recipes_with_cluster_paths():
    path_keys = {("data", "train_dir"), ("data", "val_dir"), ("run", "output")}
    for config_file, recipe in (("k8s/base/config.yaml", "paper"), ("k8s/overlays/cpu-smoke/config.yaml", "demo")):
        ours = load_yaml(REPO / config_file)
        theirs = load_yaml(REPO / "src/gbcosface/recipes" / f"{recipe}.yaml")
        assert set(ours) == set(theirs)
        diff = {(s, k) for s in ours for k in set(ours[s]) | set(theirs[s]) if ours[s].get(k) != theirs[s].get(k)}
        assert diff <= path_keys, diff
        assert load_config(REPO / config_file).data.train_dir.startswith("/data/")

