"""Stuck-pod detection as a pure function of pod statuses and events, and its grace period."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fake_kube_api import event, pod

from gbcosface.launch.pods import StuckWatch, event_time, gpu_queueing, parse_time, pod_problems

L = {"x": "y"}


def _reasons(pods, events=()):
    return sorted((p.pod, p.reason) for p in pod_problems(pods, events))


def test_healthy_and_creating_pods_have_no_problem():
    assert _reasons([pod("a", L, phase="Running"), pod("b", L, waiting=("ContainerCreating", ""))]) == []


def test_a_past_oom_kill_of_a_running_container_is_no_problem():
    assert _reasons([pod("a", L, phase="Running", last_terminated=("OOMKilled", 137), restarts=1)]) == []


def test_each_reason_is_recognised():
    pods = [pod("pull", L, waiting=("ImagePullBackOff", "x")), pod("err", L, waiting=("ErrImagePull", "x")),
            pod("crash", L, phase="Running", waiting=("CrashLoopBackOff", "x"), last_terminated=("Error", 2)),
            pod("oom", L, phase="Running", waiting=("CrashLoopBackOff", "x"), last_terminated=("OOMKilled", 137)),
            pod("oom2", L, phase="Failed", terminated=("OOMKilled", 137)),
            pod("sched", L, unschedulable="0/2 nodes"), pod("mount", L), pod("evsched", L)]
    events = [event("mount", "FailedMount", "timed out"), event("evsched", "FailedScheduling", "no nodes"),
              event("crash", "FailedMount", "old event of a pod that runs now")]
    pods[2]["status"]["phase"] = "Running"
    assert _reasons(pods, events) == sorted([
        ("pull", "ImagePullBackOff"), ("err", "ErrImagePull"), ("crash", "CrashLoopBackOff"), ("oom", "OOMKilled"),
        ("oom2", "OOMKilled"), ("sched", "Unschedulable"), ("mount", "FailedMount"), ("evsched", "Unschedulable")])


def test_the_latest_event_message_is_reported():
    events = [event("m", "FailedMount", "newer", stamp="2026-11-28T00:05:00Z"),
              event("m", "FailedMount", "older", stamp="2026-11-28T00:01:00Z")]
    (problem,) = pod_problems([pod("m", L)], events)
    assert problem.message == "newer"


def test_stuck_watch_needs_the_problem_without_a_break_for_the_grace():
    w = StuckWatch(10)
    p = pod_problems([pod("a", L, waiting=("ImagePullBackOff", "x"))])
    assert w.update(p, 0) is None and w.update(p, 9.9) is None
    assert w.update([], 10) is None  # it cleared: the clock starts again
    assert w.update(p, 11) is None and w.update(p, 20.9) is None
    assert w.update(p, 21).reason == "ImagePullBackOff"
    with pytest.raises(ValueError):
        StuckWatch(-1)


# -- evidence newer than the pod's state (issue 18) ----------------------------------------------
# A realistic timeline, as `kubectl get events` shows it for a pod of a job on a cluster whose GPU pool
# scales from 0: kube-scheduler writes through events.k8s.io/v1 (eventTime + series, lastTimestamp
# null), the kubelet and the cluster autoscaler through the legacy core/v1 recorder (first/last
# Timestamp + count). The API server keeps events about an hour, so all of them are still listed.
GPU_MSG = ("0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: "
           "3 No preemption victims found for incoming pod.")
CREATED = "2026-11-28T10:00:00Z"
SCALE_UP = [
    event("p", "FailedScheduling", GPU_MSG, "2026-11-28T10:00:00.412345Z", new_api=True, count=7,
          last="2026-11-28T10:06:30.100000Z", component="default-scheduler"),
    event("p", "TriggeredScaleUp", "pod triggered scale-up: [{gpu-pool 0->1 (max: 4)}]", "2026-11-28T10:00:10Z",
          type="Normal", component="cluster-autoscaler"),
    event("p", "Scheduled", "Successfully assigned ns1/p to gpu-node-1", "2026-11-28T10:07:45.500000Z",
          type="Normal", new_api=True, component="default-scheduler"),
    event("p", "Pulling", 'Pulling image "registry.example/gbcosface-trainer:0.1.0"', "2026-11-28T10:07:47Z",
          type="Normal"),
]


def _pulling_pod(**kw):
    return pod("p", L, waiting=("ContainerCreating", ""), created=CREATED, scheduled="2026-11-28T10:07:45Z", **kw)


def test_a_pod_scheduled_after_a_gpu_scale_up_and_pulling_its_image_is_not_stuck():
    assert _reasons([_pulling_pod()], SCALE_UP) == []


def test_an_image_pull_backoff_after_a_scale_up_is_still_stuck():
    failed = [event("p", "Failed", 'Failed to pull image "img": manifest unknown', "2026-11-28T10:08:10Z",
                    last="2026-11-28T10:12:10Z", count=5),
              event("p", "BackOff", 'Back-off pulling image "img"', "2026-11-28T10:08:20Z", type="Normal",
                    last="2026-11-28T10:12:30Z", count=12)]
    p = pod("p", L, waiting=("ImagePullBackOff", 'Back-off pulling image "img"'), created=CREATED,
            scheduled="2026-11-28T10:07:45Z")
    assert _reasons([p], SCALE_UP + failed) == [("p", "ImagePullBackOff")]


def test_a_pod_still_waiting_for_a_node_is_unschedulable_from_its_newest_event():
    p = pod("p", L, created=CREATED)
    (problem,) = pod_problems([p], SCALE_UP[:2])
    assert (problem.reason, problem.queued) == ("Unschedulable", True) and "Insufficient nvidia.com/gpu" in problem.message


def test_a_failed_mount_before_the_image_pull_is_stale_and_a_repeating_one_is_not():
    mount = event("p", "FailedMount", 'MountVolume.SetUp failed for volume "data": claim not bound',
                  "2026-11-28T10:00:05Z", last="2026-11-28T10:04:10Z", count=3)
    scheduled = pod("p", L, waiting=("ContainerCreating", ""), created=CREATED, scheduled="2026-11-28T10:00:02Z")
    pulling = event("p", "Pulling", 'Pulling image "img"', "2026-11-28T10:04:40Z", type="Normal")
    assert _reasons([scheduled], [mount, pulling]) == []
    assert _reasons([scheduled], [mount]) == [("p", "FailedMount")]
    attach = event("p", "FailedAttachVolume", "Multi-Attach error", "2026-11-28T10:00:03Z", component="attachdetach")
    attached = event("p", "SuccessfulAttachVolume", 'AttachVolume.Attach succeeded', "2026-11-28T10:02:00Z",
                     type="Normal", component="attachdetach")
    assert _reasons([scheduled], [attach, attached]) == []
    assert _reasons([scheduled], [attach]) == [("p", "FailedAttachVolume")]


def test_events_of_an_earlier_pod_of_the_same_name_do_not_count():
    """A PyTorchJob's pods keep their names across restarts (gbc-master-0): its events name the old uid."""
    p = pod("gbc-master-0", L, created=CREATED, uid="new-uid")
    old = event("gbc-master-0", "FailedMount", "old pod's volume", "2026-11-28T10:00:30Z", uid="old-uid")
    before = event("gbc-master-0", "FailedScheduling", "before this pod existed", "2026-11-28T09:59:00.000001Z",
                   new_api=True)
    assert _reasons([p], [old, {**before, "involvedObject": {"kind": "Pod", "name": "gbc-master-0"}}]) == []
    assert _reasons([p], [event("gbc-master-0", "FailedMount", "this pod's", "2026-11-28T10:00:30Z",
                                uid="new-uid")]) == [("gbc-master-0", "FailedMount")]


def test_event_time_reads_both_event_apis_and_compares_times_not_strings():
    legacy = event("m", "FailedMount", "legacy", "2026-11-28T10:05:00Z", last="2026-11-28T10:05:00Z")
    repeated = event("m", "FailedMount", "series", "2026-11-28T10:00:00.500000Z", new_api=True, count=4,
                     last="2026-11-28T10:05:00.250000Z")
    once = event("m", "FailedMount", "once", "2026-11-28T10:04:59.999999Z", new_api=True)
    assert event_time(repeated) == datetime(2026, 11, 28, 10, 5, 0, 250000, tzinfo=UTC)
    assert event_time(once) == datetime(2026, 11, 28, 10, 4, 59, 999999, tzinfo=UTC)
    assert event_time(legacy) == datetime(2026, 11, 28, 10, 5, tzinfo=UTC)
    assert parse_time("2026-11-28T10:05:00.123456789Z") == datetime(2026, 11, 28, 10, 5, 0, 123456, tzinfo=UTC)
    assert parse_time("2026-11-28T10:05:00.25+00:00") == datetime(2026, 11, 28, 10, 5, 0, 250000, tzinfo=UTC)
    # The series' last observation (10:05:00.25) is newer than the legacy event's (10:05:00), though
    # "…00.250000Z" sorts before "…00Z" as a string and its eventTime is the older first occurrence.
    (problem,) = pod_problems([pod("m", L, created=CREATED)], [legacy, repeated, once])
    assert problem.message == "series"


@pytest.mark.parametrize(("message", "queued"), [
    (GPU_MSG, True),
    ("0/5 nodes are available: 2 Insufficient nvidia.com/gpu, 3 node(s) didn't match Pod's node affinity/selector.",
     True),
    ("0/4 nodes are available: 1 Insufficient cpu, 1 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint "
     "{nvidia.com/gpu: present}. preemption: 0/4 nodes are available: 4 Preemption is not helpful.", True),
    ("0/4 nodes are available: 4 node(s) had untolerated taint {nvidia.com/gpu: present}.", False),
    ("0/4 nodes are available: 4 Insufficient memory.", False),
    ("0/4 nodes are available: pod has unbound immediate PersistentVolumeClaims.", False),
    ("0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/2 nodes are "
     "available: 2 Insufficient nvidia.com/gpu.", False),
])
def test_waiting_for_busy_gpus_is_queueing_and_other_reasons_are_faults(message, queued):
    assert gpu_queueing(message) is queued
    (problem,) = pod_problems([pod("q", L, unschedulable=message)])
    assert problem.queued is queued
    assert gpu_queueing(message.replace("nvidia.com/gpu", "amd.com/gpu"), "amd.com/gpu") is queued


def test_stuck_watch_gives_queued_problems_the_queue_grace_and_reports_changes():
    w = StuckWatch(10, queue_grace_s=100)
    queued = pod_problems([pod("q", L, unschedulable=GPU_MSG)])
    fault = pod_problems([pod("f", L, waiting=("ImagePullBackOff", "x"))])
    assert w.update(queued, 0) is None and [p.pod for p in w.appeared] == ["q"]
    assert w.update(queued + fault, 50) is None and [p.pod for p in w.appeared] == ["f"] and w.cleared == []
    assert w.update(queued + fault, 60).pod == "f"  # the fault's 10 s
    assert w.update(queued, 99) is None and [p.pod for p in w.cleared] == ["f"] and w.appeared == []
    assert w.update(queued, 100).pod == "q" and [p.pod for p in w.queued()] == ["q"]
    # The same pod turning from queueing into a fault starts the fault's clock afresh.
    tainted = pod_problems([pod("q", L, unschedulable="0/4 nodes are available: 4 node(s) had untolerated taint.")])
    assert w.update(tainted, 101) is None and w.update(tainted, 111).queued is False
    with pytest.raises(ValueError):
        StuckWatch(1, queue_grace_s=-1)


def test_a_pod_being_deleted_is_not_stuck():
    """A replaced job's or a restarted JobSet's old pod, terminating, carries the job's labels."""
    going = pod("old", L, waiting=("ImagePullBackOff", "x"))
    going["metadata"]["deletionTimestamp"] = "2026-11-28T10:00:00Z"
    assert _reasons([going, pod("new", L, waiting=("ErrImagePull", "y"))]) == [("new", "ErrImagePull")]
