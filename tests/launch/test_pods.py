"""Stuck-pod detection as a pure function of pod statuses and events, and its grace period."""

from __future__ import annotations

import pytest
from fake_kube_api import event, pod

from gbcosface.launch.pods import StuckWatch, pod_problems

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
