"""The train step's cluster side against the fake API server (the one mocked part: no API server
runs here): the exit handler keeps finished jobs and deletes unfinished ones, for both kinds, in
the namespace of the kubeconfig context when none is given; every request the launcher makes is
allowed by the Role in k8s/base/rbac.yaml; the namespace default follows the pod's namespace."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from fake_kube_api import event, pod
from launch_helpers import REPO, find_tool

from gbcosface.config import load_config
from gbcosface.launch.client import JobClient, JobStuckError
from gbcosface.launch.kinds import get_job_kind
from gbcosface.launch.names import job_name_for_run
from gbcosface.launch.namespace import default_namespace
from gbcosface.launch.profile import parse_cluster_profile
from gbcosface.steps.train import cleanup_job, job_spec

RUN_ID = "0f8e4c1e-5b1a-4c39-9d6f-3e8a1c0b2d7e"


@pytest.fixture()
def kubeconfig(api, tmp_path, monkeypatch):
    """A kubeconfig whose current context points at the fake server, namespace team-a."""
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
           "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
           "users": [{"name": "u", "user": {"token": "t"}}],
           "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "team-a"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


def test_namespace_default_is_the_pods_then_the_contexts_then_default(tmp_path, kubeconfig):
    sa = tmp_path / "namespace"
    sa.write_text("profile-ns\n")
    assert default_namespace("explicit", sa_file=sa) == "explicit"
    assert default_namespace("", sa_file=sa) == "profile-ns"
    assert default_namespace("", sa_file=tmp_path / "missing") == "team-a"
    assert default_namespace("", sa_file=tmp_path / "missing", kubeconfig=str(tmp_path / "nokubeconfig")) == "default"


@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
def test_exit_handler_cleanup_keeps_finished_and_deletes_unfinished_jobs(api, kubeconfig, kind, monkeypatch):
    monkeypatch.setattr("gbcosface.launch.namespace.SERVICE_ACCOUNT_NAMESPACE", kubeconfig.parent / "none")
    k = get_job_kind(kind)
    spec = job_spec(name=job_name_for_run(RUN_ID), run_id=RUN_ID, local=False, nnodes=2, nproc_per_node=1,
                    image="img:1", namespace="team-a", gpus_per_node=0, timeout_s=0)
    rendered = k.render(spec, load_config("demo"))
    store = api.cluster.jobs if kind == "pytorchjob" else api.cluster.trainjobs
    client = JobClient(namespace="team-a", client_configuration=api.configuration(), kind=kind)
    assert "local launcher" in cleanup_job(run_id=RUN_ID, launcher="local", job_kind=kind)
    assert "no " in cleanup_job(run_id=RUN_ID, launcher="kubeflow", job_kind=kind)

    client.submit(rendered)
    done = {"conditions": [{"type": "Succeeded" if kind == "pytorchjob" else "Complete", "status": "True",
                            "reason": "Done", "message": "", "lastTransitionTime": "2026-11-28T00:00:00Z"}]}

    def script(job, n):
        job["status"] = done
        return done["conditions"]

    api.cluster.script = script
    assert "kept for inspection" in cleanup_job(run_id=RUN_ID, launcher="kubeflow", job_kind=kind)
    assert ("team-a", spec.name) in store
    api.cluster.script = None
    store[("team-a", spec.name)].pop("status", None)
    assert "deleted unfinished" in cleanup_job(run_id=RUN_ID, launcher="kubeflow", job_kind=kind)
    assert not store and not api.cluster.configmaps


def test_the_cluster_step_takes_queue_grace_and_gpu_resource_from_the_profile_and_prunes_old_trainjobs(
        api, kubeconfig, monkeypatch):
    from gbcosface.steps.train import _run_cluster

    seen = {}
    real_init = JobClient.__init__

    def spy(self, *args, **kw):
        seen.update(kw)
        real_init(self, *args, **kw)

    monkeypatch.setattr(JobClient, "__init__", spy)
    profile = parse_cluster_profile("queue_grace_s: 7200\ngpu_resource: amd.com/gpu\ntrainjob_retention_s: 3600")
    spec = job_spec(name=job_name_for_run(RUN_ID), run_id=RUN_ID, local=False, nnodes=1, nproc_per_node=1,
                    image="img:1", namespace="team-a", gpus_per_node=1, timeout_s=0, profile=profile)
    managed = {"app.kubernetes.io/managed-by": "gbcosface"}
    for name, finished in (("gbc-old", "2020-01-01T00:00:00Z"), ("gbc-future", "2099-01-01T00:00:00Z")):
        api.cluster.trainjobs[("team-a", name)] = {
            "metadata": {"name": name, "namespace": "team-a", "labels": managed},
            "status": {"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": finished}]}}

    def script(job, n):
        job["status"] = {"conditions": [{"type": "Complete", "status": "True", "reason": "Done", "message": "",
                                         "lastTransitionTime": "2020-01-01T00:00:00Z"}]}
        return job["status"]["conditions"]

    api.cluster.script = script
    _run_cluster(load_config("demo"), spec, job_kind="trainjob", timeout_s=0,
                 stuck_pod_grace_s=profile.stuck_pod_grace_s, queue_grace_s=profile.queue_grace_s,
                 gpu_resource=profile.gpu_resource, trainjob_retention_s=profile.trainjob_retention_s)
    assert (seen["queue_grace_s"], seen["gpu_resource"]) == (7200.0, "amd.com/gpu")
    # The old TrainJob is pruned; this run's own (finished "in 2020" too) and the recent one are kept.
    assert sorted(n for _, n in api.cluster.trainjobs) == sorted(["gbc-future", spec.name])


def test_step_job_spec_takes_the_cluster_profile_and_local_runs_drop_cluster_volumes():
    profile = parse_cluster_profile("image_pull_secrets: [regcred]\nnccl_socket_ifname: eth0\nshm_size: 32Gi\n")
    cluster = job_spec(name="gbc-s", run_id=RUN_ID, local=False, nnodes=2, nproc_per_node=8, image="img:1",
                       namespace="ns", gpus_per_node=8, timeout_s=3600, profile=profile)
    assert cluster.image_pull_secrets == ["regcred"] and cluster.shm_size == "32Gi"
    assert cluster.memory_request == "128Gi" and cluster.data_scratch_size == "100Gi"
    assert cluster.s3_secret_name == "gbcosface-s3" and cluster.active_deadline_seconds == 3600
    local = job_spec(name="gbc-s", run_id=RUN_ID, local=True, nnodes=2, nproc_per_node=1, image="",
                     namespace="ns", gpus_per_node=8, timeout_s=0, profile=profile)
    assert local.gpus_per_node == 0 and local.data_scratch_size is None and local.s3_secret_name is None
    for kind in ("pytorchjob", "trainjob"):  # both kinds can express what the step asks for
        get_job_kind(kind).render(cluster, load_config("paper"))
        get_job_kind(kind).render(local, load_config("demo"))


def _rules() -> list[dict]:
    out = subprocess.run([find_tool("kubectl"), "kustomize", str(REPO / "k8s/base")], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    (role,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Role"]
    return role["rules"]


def _allowed(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)


def _rbac_request(method: str, path: str) -> tuple[str, str, str]:
    """(apiGroup, resource[/subresource], verb) of a request, as the API server's authorizer sees it."""
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    assert rest[0] == "namespaces", path
    resource, named = rest[2], len(rest) > 3
    if len(rest) > 4:
        resource = f"{resource}/{rest[4]}"
    verb = {"POST": "create", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}.get(
        method, "get" if named else "list")
    return group, resource, verb


@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
def test_every_request_of_the_launcher_is_allowed_by_the_role(api, kind):
    """Drive submit, stuck-pod detection, a failure report with the log tail, cleanup and delete,
    then check each request the fake server saw against k8s/base's Role."""
    k = get_job_kind(kind)
    client = JobClient(namespace="ns1", client_configuration=api.configuration(), kind=kind, stuck_pod_grace_s=0.2)
    spec = job_spec(name="gbc-r", run_id=RUN_ID, local=False, nnodes=2, nproc_per_node=1, image="img:1",
                    namespace="ns1", gpus_per_node=0, timeout_s=0,
                    profile=parse_cluster_profile("data_pvc: shared-data"))
    api.cluster.pvcs[("ns1", "shared-data")] = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                                "metadata": {"name": "shared-data"},
                                                "spec": {"accessModes": ["ReadOnlyMany"]}}
    labels = ({"training.kubeflow.org/job-name": "gbc-r"} if kind == "pytorchjob" else
              {"jobset.sigs.k8s.io/jobset-name": "gbc-r", "batch.kubernetes.io/job-completion-index": "0"})
    name = "gbc-r-master-0" if kind == "pytorchjob" else "gbc-r-node-0-0-abcde"
    api.cluster.pods[("ns1", name)] = pod(name, labels, phase="Running", container=k.container_name,
                                          waiting=("CrashLoopBackOff", "back-off"), last_terminated=("Error", 1))
    api.cluster.pod_logs[("ns1", name)] = [("2026-11-28T00:00:00Z", "Traceback ...")]
    api.cluster.events["ns1"] = [event(name, "FailedMount", "x")]
    rendered = k.render(spec, load_config("demo"))
    client.submit(rendered)  # then run() submits again, as a retried step does: it attaches
    with pytest.raises(JobStuckError, match="CrashLoopBackOff") as info:
        client.run(rendered, timeout_s=30, poll_interval=0.05)
    assert "Traceback" in info.value.log_tail
    client.cleanup("gbc-r")
    # A retry of a failed job (delete, wait until gone, create again), the TrainJob's own events, pruning.
    client.submit(rendered)
    store = api.cluster.jobs if kind == "pytorchjob" else api.cluster.trainjobs
    store[("ns1", "gbc-r")]["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "x",
                                                          "message": "", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}
    del api.cluster.pods[("ns1", name)]  # the garbage collector removed the failed job's pods
    client.submit(rendered)
    client.start_failure("gbc-r")
    client.prune_finished(0)
    rules = _rules()
    seen = {_rbac_request(m, p) for m, p, _ in api.cluster.requests}
    denied = sorted(r for r in seen if not _allowed(rules, *r))
    assert not denied, json.dumps(denied)
    # And the Role is not wider than what the launcher uses (list/watch of jobs are for people).
    granted = {(g, res, v) for r in rules for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}
    group = "kubeflow.org" if kind == "pytorchjob" else "trainer.kubeflow.org"
    plural = "pytorchjobs" if kind == "pytorchjob" else "trainjobs"
    other = {("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs")} - {(group, plural)}
    unused = {(g, res, v) for g, res, v in granted - seen if (g, res) not in other and v not in ("list", "watch")}
    assert unused == set(), unused
