"""The shared job lifecycle for both kinds (PyTorchJob, TrainJob) against the fake API server.

The fake server (tests/launch/fake_kube_api.py) is the one mocked part: no Kubernetes API server
can run on the build machines. The SDK/Kubernetes clients are real and talk real HTTP, pods and
events carry the labels and status fields the real operators and kubelet write.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from fake_kube_api import event, pod

from gbcosface.config import load_config
from gbcosface.launch.client import JobCancelledError, JobClient, JobError, JobFailedError, JobStuckError
from gbcosface.launch.kinds import get_job_kind
from gbcosface.launch.spec import JobSpec

NS = "ns1"
KINDS = ("pytorchjob", "trainjob")


def _client(api, kind, **kw) -> JobClient:
    return JobClient(namespace=NS, client_configuration=api.configuration(), request_timeout=5, kind=kind, **kw)


def _render(kind, **changes):
    spec = JobSpec(**{"name": "gbc-k", "image": "img:1", "namespace": NS, **changes})
    return get_job_kind(kind).render(spec, load_config("demo"))


def _store(api, kind):
    return api.cluster.jobs if kind == "pytorchjob" else api.cluster.trainjobs


def _true(ctype):
    return {"type": ctype, "status": "True", "reason": f"Job{ctype}", "message": f"{ctype} now",
            "lastTransitionTime": "2026-11-28T00:00:00Z"}


RUNNING = {"pytorchjob": {"conditions": [_true("Created"), _true("Running")]},
           "trainjob": {"jobsStatus": [{"name": "node", "active": 2, "ready": 2, "succeeded": 0, "failed": 0}]}}
DONE = {"pytorchjob": {"conditions": [_true("Created"), _true("Succeeded")]},
        "trainjob": {"conditions": [_true("Complete")]}}
FAILED = {"pytorchjob": {"conditions": [_true("Created"), _true("Failed")]},
          "trainjob": {"conditions": [_true("Failed")]}}


def _set_status(api, kind, status):
    def script(job, n):
        job["status"] = status
        return status.get("conditions", [])
    api.cluster.script = script


def _pod_labels(kind, rank=0):
    if kind == "pytorchjob":
        rtype = "master" if rank == 0 else "worker"
        return {"training.kubeflow.org/job-name": "gbc-k", "training.kubeflow.org/replica-type": rtype,
                "training.kubeflow.org/replica-index": str(0 if rank == 0 else rank - 1)}
    return {"jobset.sigs.k8s.io/jobset-name": "gbc-k", "jobset.sigs.k8s.io/replicatedjob-name": "node",
            "jobset.sigs.k8s.io/job-index": "0", "batch.kubernetes.io/job-completion-index": str(rank)}


def _pod_name(kind, rank=0):
    if kind == "pytorchjob":
        return "gbc-k-master-0" if rank == 0 else f"gbc-k-worker-{rank - 1}"
    return f"gbc-k-node-0-{rank}-x7k2p"


@pytest.mark.parametrize("kind", KINDS)
def test_submit_creates_configmap_then_job_then_owns_the_configmap(api, kind):
    client = _client(api, kind)
    rendered = _render(kind)
    client.submit(rendered)
    c = api.cluster
    job = _store(api, kind)[(NS, "gbc-k")]
    posts = [p for m, p, _ in c.requests if m == "POST"]
    assert posts[0].endswith("/configmaps") and posts[1].endswith("/pytorchjobs" if kind == "pytorchjob" else "/trainjobs")
    cm = c.configmaps[(NS, "gbc-k-config")]
    assert cm["metadata"]["ownerReferences"] == [{
        "apiVersion": get_job_kind(kind).api_version, "kind": get_job_kind(kind).kind, "name": "gbc-k",
        "uid": job["metadata"]["uid"], "controller": False, "blockOwnerDeletion": False}]
    assert c.count("PATCH", "/configmaps/gbc-k-config$") == 1

    client.submit(rendered)  # a retried step: same config -> attach (and own again), no second job
    assert len(_store(api, kind)) == 1 and c.count("PATCH", "/configmaps/gbc-k-config$") == 2
    other = get_job_kind(kind).render(JobSpec(name="gbc-k", image="img:1", namespace=NS),
                                      load_config("demo", ["run.seed=9"]))
    with pytest.raises(JobError, match="different config"):
        client.submit(other)


def test_a_client_refuses_the_other_kinds_manifest(api):
    with pytest.raises(JobError, match="cannot be submitted"):
        _client(api, "pytorchjob").submit(_render("trainjob"))


@pytest.mark.parametrize("kind", KINDS)
def test_wait_reads_each_kinds_status_and_reports_a_failure_with_the_leaders_log(api, kind):
    client = _client(api, kind)
    client.submit(_render(kind))
    c = api.cluster
    _set_status(api, kind, DONE[kind])
    status = client.wait("gbc-k", timeout_s=30, poll_interval=0.05)
    assert status.succeeded and status.phase == ("Succeeded" if kind == "pytorchjob" else "Complete")

    leader = _pod_name(kind)
    c.pods[(NS, leader)] = pod(leader, _pod_labels(kind), phase="Failed", container=get_job_kind(kind).container_name)
    # An older pod of node 0 from before a restart: the newest one is the leader.
    if kind == "trainjob":
        c.pods[(NS, "gbc-k-node-0-0-old00")] = pod("gbc-k-node-0-0-old00", _pod_labels(kind), phase="Failed",
                                                  container="node", created="2026-11-27T00:00:00Z")
    c.pod_logs[(NS, leader)] = [("2026-11-28T00:00:01Z", "RuntimeError: NCCL error")]
    _set_status(api, kind, FAILED[kind])
    with pytest.raises(JobFailedError) as info:
        client.wait("gbc-k", timeout_s=30, poll_interval=0.05)
    assert "NCCL error" in info.value.log_tail and info.value.status.failed
    logs = [q for m, p, q in c.requests if p.endswith("/log")]
    assert logs[-1]["container"] == [get_job_kind(kind).container_name]


@pytest.mark.parametrize("kind", KINDS)
def test_trainjob_running_phase_comes_from_its_child_jobs(api, kind):
    client = _client(api, kind)
    client.submit(_render(kind))
    _set_status(api, kind, RUNNING[kind])
    assert client.status("gbc-k").phase == "Running"
    assert not client.status("gbc-k").finished


STUCK = {
    "ImagePullBackOff": dict(phase="Pending", waiting=("ImagePullBackOff", 'Back-off pulling image "img:1"')),
    "ErrImagePull": dict(phase="Pending", waiting=("ErrImagePull", "manifest unknown")),
    "CrashLoopBackOff": dict(phase="Running", waiting=("CrashLoopBackOff", "back-off 5m0s restarting failed container"),
                             last_terminated=("Error", 1), restarts=6),
    "OOMKilled": dict(phase="Running", waiting=("CrashLoopBackOff", "back-off 5m0s"),
                      last_terminated=("OOMKilled", 137), restarts=3),
    # Not waiting for GPUs (that is queueing, tests/launch/test_job_watch.py): no node can ever fit.
    "Unschedulable": dict(phase="Pending", unschedulable="0/4 nodes are available: 4 node(s) didn't match "
                                                          "Pod's node affinity/selector."),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reason", [*sorted(STUCK), "FailedMount", "FailedScheduling"])
def test_a_stuck_pod_fails_the_wait_after_the_grace_with_pod_reason_and_message(api, kind, reason):
    client = _client(api, kind, stuck_pod_grace_s=0.3)
    client.submit(_render(kind))
    _set_status(api, kind, RUNNING[kind] if reason in ("CrashLoopBackOff", "OOMKilled") else {})
    c = api.cluster
    name = _pod_name(kind, 1)
    container = get_job_kind(kind).container_name
    c.pods[(NS, _pod_name(kind))] = pod(_pod_name(kind), _pod_labels(kind), phase="Running", container=container)
    if reason == "FailedMount":
        c.pods[(NS, name)] = pod(name, _pod_labels(kind, 1), phase="Pending", container=container,
                                 waiting=("ContainerCreating", ""))
        c.events[NS] = [event(name, "FailedMount", 'MountVolume.SetUp failed for volume "data": claim not bound')]
        expected, message = "FailedMount", "claim not bound"
    elif reason == "FailedScheduling":
        c.pods[(NS, name)] = pod(name, _pod_labels(kind, 1), phase="Pending", container=container)
        c.events[NS] = [event(name, "FailedScheduling", "0/3 nodes are available: 3 node(s) had untolerated taint")]
        expected, message = "Unschedulable", "untolerated taint"
    else:
        c.pods[(NS, name)] = pod(name, _pod_labels(kind, 1), container=container, **STUCK[reason])
        expected = reason
        message = {"ImagePullBackOff": "Back-off pulling", "ErrImagePull": "manifest unknown",
                   "CrashLoopBackOff": "keeps exiting", "OOMKilled": "OOMKilled (exit 137)",
                   "Unschedulable": "node affinity/selector"}[reason]
    start = time.monotonic()
    with pytest.raises(JobStuckError) as info:
        client.wait("gbc-k", timeout_s=30, poll_interval=0.05)
    assert time.monotonic() - start >= 0.3  # not before the grace
    err = info.value
    assert (err.problem.pod, err.problem.reason) == (name, expected)
    assert message in err.problem.message and name in str(err) and expected in str(err)


@pytest.mark.parametrize("kind", KINDS)
def test_a_problem_that_clears_within_the_grace_does_not_fail_the_job(api, kind):
    client = _client(api, kind, stuck_pod_grace_s=2.0)
    client.submit(_render(kind))
    c = api.cluster
    name = _pod_name(kind)
    c.pods[(NS, name)] = pod(name, _pod_labels(kind), waiting=("ImagePullBackOff", "slow registry"),
                             container=get_job_kind(kind).container_name)
    polls = {"n": 0}

    def script(job, n):
        polls["n"] += 1
        if polls["n"] == 8:  # the image arrives: the pod runs, then the job completes
            c.pods[(NS, name)] = pod(name, _pod_labels(kind), phase="Running", container=get_job_kind(kind).container_name)
        job["status"] = DONE[kind] if polls["n"] >= 12 else {}
        return job["status"].get("conditions", [])

    c.script = script
    assert client.wait("gbc-k", timeout_s=30, poll_interval=0.05).succeeded


@pytest.mark.parametrize("kind", KINDS)
def test_run_deletes_a_stuck_job(api, kind):
    client = _client(api, kind, stuck_pod_grace_s=0.1)
    name = _pod_name(kind)
    api.cluster.pods[(NS, name)] = pod(name, _pod_labels(kind), waiting=("ErrImagePull", "not found"),
                                       container=get_job_kind(kind).container_name)
    with pytest.raises(JobStuckError):
        client.run(_render(kind), timeout_s=30, poll_interval=0.05, stream_logs=False)
    assert not _store(api, kind) and not api.cluster.configmaps


@pytest.mark.parametrize("kind", KINDS)
def test_cleanup_deletes_only_an_unfinished_job(api, kind):
    client = _client(api, kind)
    assert "no " in client.cleanup("gbc-k")
    for status, kept in ((FAILED[kind], True), (DONE[kind], True), (RUNNING[kind], False)):
        client.submit(_render(kind))
        _set_status(api, kind, status)
        message = client.cleanup("gbc-k")
        assert ((NS, "gbc-k") in _store(api, kind)) is kept, message
        assert ("kept for inspection" in message) is kept
        if kept:
            client.delete("gbc-k")
    assert not _store(api, kind) and not api.cluster.configmaps


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_deletes_the_job(api, kind):
    client = _client(api, kind)
    _set_status(api, kind, RUNNING[kind])

    def cancel_when_created():
        deadline = time.monotonic() + 30
        while (NS, "gbc-k") not in _store(api, kind) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=cancel_when_created, daemon=True)
    killer.start()
    with pytest.raises(JobCancelledError, match=get_job_kind(kind).kind):
        client.run(_render(kind), timeout_s=60, poll_interval=0.05, stream_logs=False)
    killer.join(5)
    assert not _store(api, kind) and not api.cluster.configmaps


@pytest.mark.parametrize("kind", KINDS)
def test_a_multi_node_job_refuses_a_read_write_once_data_claim(api, kind):
    client = _client(api, kind)
    rendered = _render(kind, nnodes=2, data_volume_claim="data")
    api.cluster.pvcs[(NS, "data")] = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                      "metadata": {"name": "data", "namespace": NS},
                                      "spec": {"accessModes": ["ReadWriteOnce"]}}
    with pytest.raises(JobError, match="ReadOnlyMany or ReadWriteMany"):
        client.submit(rendered)
    assert not _store(api, kind)
    api.cluster.pvcs[(NS, "data")]["spec"]["accessModes"] = ["ReadOnlyMany"]
    client.submit(rendered)
    assert (NS, "gbc-k") in _store(api, kind)
    client.delete("gbc-k")
    api.cluster.forbidden.add("/persistentvolumeclaims/")  # a client that may not read claims only warns
    api.cluster.pvcs[(NS, "data")]["spec"]["accessModes"] = ["ReadWriteOnce"]
    client.submit(rendered)
    assert (NS, "gbc-k") in _store(api, kind)
    del api.cluster.pvcs[(NS, "data")]
    client.delete("gbc-k")
    api.cluster.forbidden.clear()
    with pytest.raises(JobError, match="does not exist"):
        client.submit(rendered)


@pytest.mark.parametrize("kind", KINDS)
def test_run_streams_the_leaders_log(api, kind):
    client = _client(api, kind)
    c = api.cluster
    leader = _pod_name(kind)
    c.pods[(NS, leader)] = pod(leader, _pod_labels(kind), phase="Running", container=get_job_kind(kind).container_name)
    c.pod_logs[(NS, leader)] = [(f"2026-11-28T00:00:00.{i:09d}Z", f"step {i}") for i in range(1, 6)]
    lines: list[str] = []

    def script(job, n):
        job["status"] = DONE[kind] if len(lines) >= 5 else RUNNING[kind]
        return job["status"].get("conditions", [])

    c.script = script
    assert client.run(_render(kind), timeout_s=60, poll_interval=0.05, log_sink=lines.append).succeeded
    assert lines == [f"step {i}" for i in range(1, 6)]
