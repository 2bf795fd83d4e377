"""Job watching that kills stuck jobs, not healthy ones (issue 18), against the fake API server.

The fake server (tests/launch/fake_kube_api.py) is the one mocked part: no Kubernetes API server can
run on the build machines. Events carry the timestamps the real writers give them: kube-scheduler and
Trainer v2.3's controller write through events.k8s.io/v1 (eventTime, series), the kubelet through the
legacy recorder (firstTimestamp/lastTimestamp/count).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import pytest
from fake_kube_api import event, pod
from test_job_client_kinds import (
    DONE,
    FAILED,
    KINDS,
    NS,
    RUNNING,
    _client,
    _pod_labels,
    _pod_name,
    _render,
    _store,
)

from gbcosface.launch.client import JobError, JobFailedError, JobStartError, JobStuckError
from gbcosface.launch.kinds import get_job_kind
from gbcosface.launch.profile import ClusterProfile, ProfileError, parse_cluster_profile

GPU_MSG = ("0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: "
           "3 No preemption victims found for incoming pod.")
LOGGER = "gbcosface.launch.client"


def _done_after(api, kind, polls, before=None):
    """A script: the job shows `before` (default: no status) for `polls` GETs, then Complete/Succeeded."""
    count = {"n": 0}

    def script(job, n):
        count["n"] += 1
        job["status"] = DONE[kind] if count["n"] > polls else (before or {})
        return job["status"].get("conditions", [])

    api.cluster.script = script
    return count


def _scale_up_timeline(name):
    """Unschedulable for 6.5 minutes while the GPU pool scaled up, then scheduled and pulling."""
    return [
        event(name, "FailedScheduling", GPU_MSG, "2026-11-28T10:00:00.412345Z", new_api=True, count=7,
              last="2026-11-28T10:06:30.100000Z", component="default-scheduler"),
        event(name, "TriggeredScaleUp", "pod triggered scale-up: [{gpu-pool 0->1 (max: 4)}]", "2026-11-28T10:00:10Z",
              type="Normal", component="cluster-autoscaler"),
        event(name, "Scheduled", f"Successfully assigned {NS}/{name} to gpu-node-1", "2026-11-28T10:07:45.500000Z",
              type="Normal", new_api=True, component="default-scheduler"),
        event(name, "Pulling", 'Pulling image "registry.example/gbcosface-trainer:0.1.0"', "2026-11-28T10:07:47Z",
              type="Normal"),
    ]


# -- stale evidence ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_pod_pulling_its_image_after_a_gpu_scale_up_is_not_stuck(api, kind):
    client = _client(api, kind, stuck_pod_grace_s=0.2)
    client.submit(_render(kind))
    c = api.cluster
    name = _pod_name(kind)
    c.pods[(NS, name)] = pod(name, _pod_labels(kind), waiting=("ContainerCreating", ""), created="2026-11-28T10:00:00Z",
                             scheduled="2026-11-28T10:07:45Z", container=get_job_kind(kind).container_name)
    c.events[NS] = _scale_up_timeline(name)
    polls = _done_after(api, kind, 20)  # 20 polls of 0.05 s: five times the stuck grace
    assert client.wait("gbc-k", timeout_s=30, poll_interval=0.05).succeeded
    assert polls["n"] > 20


@pytest.mark.parametrize("kind", KINDS)
def test_an_image_pull_backoff_after_a_gpu_scale_up_is_still_stuck(api, kind):
    client = _client(api, kind, stuck_pod_grace_s=0.2)
    client.submit(_render(kind))
    c = api.cluster
    name = _pod_name(kind)
    c.pods[(NS, name)] = pod(name, _pod_labels(kind), waiting=("ImagePullBackOff", 'Back-off pulling image "img:1"'),
                             created="2026-11-28T10:00:00Z", scheduled="2026-11-28T10:07:45Z",
                             container=get_job_kind(kind).container_name)
    c.events[NS] = _scale_up_timeline(name) + [
        event(name, "Failed", 'Failed to pull image "img:1": manifest unknown', "2026-11-28T10:08:10Z",
              last="2026-11-28T10:12:10Z", count=5)]
    _done_after(api, kind, 10_000)
    with pytest.raises(JobStuckError) as info:
        client.wait("gbc-k", timeout_s=30, poll_interval=0.05)
    assert (info.value.problem.pod, info.value.problem.reason) == (name, "ImagePullBackOff")


# -- queueing for GPUs ------------------------------------------------------------------------------
class VirtualClock:
    """The wait's clock and sleep, in virtual seconds: hours of queueing run in a moment and the
    report cadence is exact (a test never depends on how fast this machine is)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@pytest.fixture()
def clock(monkeypatch):
    import types

    import gbcosface.launch.client as client_module

    vc = VirtualClock()
    monkeypatch.setattr(client_module, "time", types.SimpleNamespace(monotonic=vc.monotonic, time=vc.monotonic))
    monkeypatch.setattr(client_module._signals, "sleep", vc.sleep)
    return vc


@pytest.mark.parametrize("kind", KINDS)
def test_waiting_for_busy_gpus_gets_the_queue_grace_and_is_reported_every_few_minutes(api, kind, clock, caplog):
    """Defaults: 15 min for a fault, 6 h for queueing, a report every 5 min. The pod waits 100 polls
    of 60 s (1 h 40 min: six stuck graces) for GPUs, then runs, then the job completes."""
    client = _client(api, kind)
    client.submit(_render(kind))
    c = api.cluster
    name = _pod_name(kind)
    c.pods[(NS, name)] = pod(name, _pod_labels(kind), unschedulable=GPU_MSG, created="2026-11-28T10:00:00Z")
    c.events[NS] = _scale_up_timeline(name)[:1]
    count = {"n": 0}

    def script(job, n):
        count["n"] += 1
        if count["n"] == 101:  # GPUs free up: the pod runs; later the job completes
            c.pods[(NS, name)] = pod(name, _pod_labels(kind), phase="Running", scheduled="2026-11-28T11:40:00Z",
                                     container=get_job_kind(kind).container_name)
        job["status"] = DONE[kind] if count["n"] > 105 else {}
        return job["status"].get("conditions", [])

    c.script = script
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert client.wait("gbc-k", timeout_s=86400, poll_interval=60).succeeded
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    label = f"{get_job_kind(kind).kind} {NS}/gbc-k"
    appeared = [m for m in lines if "waiting for GPUs: queueing" in m]
    assert appeared == [f"{label}: pod {name}: Unschedulable: {GPU_MSG} (waiting for GPUs: queueing, allowed for 6h)"]
    reports = [m for m in lines if "waiting for GPUs for" in m]
    # Queued from poll 1 (t=0) to poll 100 (t=99 min): a report at 5, 10, ..., 95 min, none between.
    waited = [m.split(" waiting for GPUs for ")[1].split(" ")[0] for m in reports]
    assert waited == [f"{h}h{m:02d}m" if h and m else f"{h}h" if h else f"{m}m"
                      for h, m in (divmod(5 * i, 60) for i in range(1, 20))]
    assert all(m.startswith(f"{label}: 1 pod(s) waiting for GPUs for ") and "(queue grace 6h)" in m for m in reports)
    assert [m for m in lines if "Unschedulable cleared" in m] == [f"{label}: {name}: Unschedulable cleared"]
    assert not [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("kind", KINDS)
def test_a_pod_that_waits_for_gpus_longer_than_the_queue_grace_fails_the_wait(api, kind, clock):
    client = _client(api, kind, queue_grace_s=2 * 3600)
    client.submit(_render(kind))
    name = _pod_name(kind)
    api.cluster.pods[(NS, name)] = pod(name, _pod_labels(kind), unschedulable=GPU_MSG)
    _done_after(api, kind, 10_000)
    start = clock.now
    with pytest.raises(JobStuckError, match="waited for GPUs") as info:
        client.wait("gbc-k", timeout_s=86400, poll_interval=60)
    assert info.value.problem.queued and "queue grace of 2h" in str(info.value)
    assert 2 * 3600 <= clock.now - start <= 2 * 3600 + 60  # the first poll seeing it at least 2 h on


def test_the_gpu_resource_of_the_cluster_decides_what_queueing_is(api):
    """A cluster whose GPUs are amd.com/gpu: busy NVIDIA-named resources would mean nothing there."""
    client = _client(api, "trainjob", stuck_pod_grace_s=0.1, queue_grace_s=60, gpu_resource="amd.com/gpu")
    client.submit(_render("trainjob"))
    name = _pod_name("trainjob")
    api.cluster.pods[(NS, name)] = pod(name, _pod_labels("trainjob"), unschedulable=GPU_MSG)
    _done_after(api, "trainjob", 10_000)
    with pytest.raises(JobStuckError, match="is stuck"):
        client.wait("gbc-k", timeout_s=30, poll_interval=0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_a_persistent_problem_is_logged_once_not_on_every_poll(api, kind, caplog):
    client = _client(api, kind, stuck_pod_grace_s=0.6)
    client.submit(_render(kind))
    name = _pod_name(kind)
    api.cluster.pods[(NS, name)] = pod(name, _pod_labels(kind), waiting=("ErrImagePull", "manifest unknown"),
                                       container=get_job_kind(kind).container_name)
    _done_after(api, kind, 10_000)
    with caplog.at_level(logging.INFO, logger=LOGGER), pytest.raises(JobStuckError):
        client.wait("gbc-k", timeout_s=30, poll_interval=0.05)
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ErrImagePull" in warnings[0] and "allowed for 0.6s" in warnings[0]


# -- a TrainJob whose JobSet cannot be created ------------------------------------------------------
CREATION_FAILED = ('TrainJob resources reconciliation failed: admission webhook "vjobset.kb.io" denied the request: '
                   'spec.replicatedJobs[0].name: Invalid value: "node": JobSet name is too long')


def _trainjob_event(uid, message=CREATION_FAILED, stamp="2026-11-28T10:00:01.000000Z", **kw):
    return event("gbc-k", "TrainJobResourcesCreationFailed", message, stamp, kind="TrainJob", uid=uid, new_api=True,
                 component="trainer-trainjob-controller", **kw)


def test_a_trainjob_whose_jobset_cannot_be_created_fails_at_once_with_the_event_message(api):
    client = _client(api, "trainjob")  # the default stuck grace (15 min) must not matter
    c = api.cluster
    uid = {}

    def script(job, n):
        uid["job"] = job["metadata"]["uid"]
        c.events[NS] = [_trainjob_event("uid-of-an-older-trainjob", "an older TrainJob's failure",
                                        "2026-11-28T09:00:00.000000Z"),
                        _trainjob_event(job["metadata"]["uid"], count=3, last="2026-11-28T10:00:09.000000Z")]
        return []

    c.script = script
    with pytest.raises(JobStartError) as info:
        client.run(_render("trainjob"), timeout_s=30, poll_interval=0.05, stream_logs=False)
    err = info.value
    assert err.reason == "TrainJobResourcesCreationFailed" and "JobSet name is too long" in str(err)
    assert "older TrainJob" not in str(err) and isinstance(err, JobFailedError)
    assert not c.trainjobs and not c.configmaps  # deleted: a retried step creates it afresh
    assert c.count("GET", "/events$") >= 1


def test_an_older_trainjobs_creation_failure_or_one_the_controller_got_past_does_not_fail_the_job(api):
    client = _client(api, "trainjob")
    client.submit(_render("trainjob"))
    c = api.cluster
    c.events[NS] = [_trainjob_event("uid-of-an-older-trainjob")]  # same name, deleted since
    _done_after(api, "trainjob", 8)
    assert client.wait("gbc-k", timeout_s=30, poll_interval=0.05).succeeded
    # A transient failure (a webhook not yet ready) that a later reconcile got past: the JobSet
    # exists and its status is copied into jobsStatus.
    c.events[NS] = [_trainjob_event(c.trainjobs[(NS, "gbc-k")]["metadata"]["uid"])]
    _done_after(api, "trainjob", 8, before=RUNNING["trainjob"])
    assert client.wait("gbc-k", timeout_s=30, poll_interval=0.05).succeeded


# -- KFP's Retry: the same run id, the same job name --------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_retry_replaces_a_failed_job_once_it_and_its_configmap_are_gone(api, kind, caplog):
    client = _client(api, kind)
    client.replace_poll_s = 0.02
    rendered = _render(kind)
    client.submit(rendered)
    c = api.cluster
    store = _store(api, kind)
    old_uid = store[(NS, "gbc-k")]["metadata"]["uid"]
    store[(NS, "gbc-k")]["status"] = FAILED[kind]
    c.delete_lag = 3  # the job and the ConfigMap linger for 3 GETs after their DELETE (finalizers, GC)
    old_pod = _pod_name(kind)
    c.pods[(NS, old_pod)] = pod(old_pod, _pod_labels(kind), phase="Failed", container=get_job_kind(kind).container_name)
    c.pods[(NS, old_pod)]["metadata"]["deletionTimestamp"] = "2026-11-28T01:00:00Z"
    removed = {}

    def garbage_collector():  # the old pod goes a while after its job (its grace period)
        while (NS, "gbc-k") in store and store[(NS, "gbc-k")]["metadata"]["uid"] == old_uid:
            time.sleep(0.01)
        time.sleep(0.2)
        removed["at"] = len(c.requests)
        del c.pods[(NS, old_pod)]

    gc = threading.Thread(target=garbage_collector, daemon=True)
    gc.start()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        client.submit(rendered)
    gc.join(10)
    job = store[(NS, "gbc-k")]
    assert job["metadata"]["uid"] != old_uid and not job.get("status") and "deletionTimestamp" not in job["metadata"]
    cm = c.configmaps[(NS, "gbc-k-config")]
    assert "deletionTimestamp" not in cm["metadata"] and cm["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    plural = "pytorchjobs" if kind == "pytorchjob" else "trainjobs"
    assert c.count("DELETE", f"/{plural}/gbc-k$") == 1 and c.count("DELETE", "/configmaps/gbc-k-config$") == 1
    # Created again only after all were gone: the creates follow the old pod's removal and succeeded first time.
    after = [(m, p) for m, p, _ in c.requests[removed["at"]:]]
    assert [p.rsplit("/", 1)[-1] for m, p in after if m == "POST"] == ["configmaps", plural]
    assert [p for m, p, _ in c.requests[:removed["at"]] if m == "POST"][-1].endswith(plural)  # the first submit's
    assert any("Failed from an earlier attempt" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", KINDS)
def test_a_retry_reuses_a_succeeded_job(api, kind):
    client = _client(api, kind)
    rendered = _render(kind)
    client.submit(rendered)
    store = _store(api, kind)
    uid = store[(NS, "gbc-k")]["metadata"]["uid"]
    store[(NS, "gbc-k")]["status"] = DONE[kind]
    client.submit(rendered)
    assert store[(NS, "gbc-k")]["metadata"]["uid"] == uid and api.cluster.count("DELETE", ".") == 0
    assert client.wait("gbc-k", timeout_s=30, poll_interval=0.05).succeeded


def test_a_failed_job_that_is_never_gone_fails_the_submit_with_what_is_left(api):
    client = _client(api, "trainjob")
    client.replace_poll_s, client.replace_timeout_s = 0.02, 0.2
    rendered = _render("trainjob")
    client.submit(rendered)
    api.cluster.trainjobs[(NS, "gbc-k")]["status"] = FAILED["trainjob"]
    api.cluster.delete_lag = 10_000  # a finalizer nobody removes
    with pytest.raises(JobError, match="TrainJob ns1/gbc-k and ConfigMap ns1/gbc-k-config still there"):
        client.submit(rendered)


# -- finished TrainJobs pile up without a TTL -----------------------------------------------------------
def _finished_trainjob(name, finished, ctype="Complete", labels=None):
    labels = {"app.kubernetes.io/managed-by": "gbcosface"} if labels is None else labels
    status = {"conditions": [{"type": ctype, "status": "True", "reason": f"Job{ctype}", "message": "",
                              "lastTransitionTime": finished}]} if finished else RUNNING["trainjob"]
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "labels": labels}, "status": status}


def test_finished_trainjobs_are_deleted_after_the_retention_with_their_configmaps(api):
    c = api.cluster
    jobs = {"old-done": _finished_trainjob("old-done", "2026-11-20T10:00:00Z"),
            "old-failed": _finished_trainjob("old-failed", "2026-11-21T09:59:59Z", "Failed"),
            "recent": _finished_trainjob("recent", "2026-11-27T10:00:00Z"),
            "running": _finished_trainjob("running", None),
            "not-ours": _finished_trainjob("not-ours", "2026-11-01T00:00:00Z", labels={}),
            "this-run": _finished_trainjob("this-run", "2026-11-01T00:00:00Z")}
    for name, job in jobs.items():
        c.trainjobs[(NS, name)] = job
        c.configmaps[(NS, f"{name}-config")] = {"metadata": {"name": f"{name}-config"}, "data": {}}
    now = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)
    client = _client(api, "trainjob")
    deleted = client.prune_finished(7 * 86400, keep="this-run", now=now)
    assert sorted(deleted) == ["old-done", "old-failed"]
    assert sorted(n for _, n in c.trainjobs) == ["not-ours", "recent", "running", "this-run"]
    assert sorted(n for _, n in c.configmaps) == [f"{n}-config" for n in ("not-ours", "recent", "running", "this-run")]
    assert client.prune_finished(None, now=now) == []  # None keeps every job
    listed = [q for m, p, q in c.requests if m == "GET" and p.endswith("/trainjobs")]
    assert listed[0]["labelSelector"] == ["app.kubernetes.io/managed-by=gbcosface"]
    # A PyTorchJob has a TTL its operator applies: nothing to prune, nothing listed.
    assert _client(api, "pytorchjob").prune_finished(0, now=now) == []
    assert not [p for m, p, _ in c.requests if p.endswith("/pytorchjobs")]


def test_the_profile_sets_the_queue_grace_and_the_trainjob_retention():
    assert ClusterProfile().queue_grace_s == 6 * 3600 and ClusterProfile().trainjob_retention_s == 7 * 86400
    p = parse_cluster_profile("queue_grace_s: 43200\ntrainjob_retention_s: 3600")
    assert (p.queue_grace_s, p.trainjob_retention_s) == (43200.0, 3600)
    assert parse_cluster_profile("trainjob_retention_s: null").trainjob_retention_s is None
    for bad in ("queue_grace_s: -1", "queue_grace_s: soon", "trainjob_retention_s: -5", "trainjob_retention_s: 1.5"):
        with pytest.raises(ProfileError, match=bad.split(":")[0]):
            parse_cluster_profile(bad)
