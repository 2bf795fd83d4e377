"""JobClient against a fake API server on loopback (tests/launch/fake_kube_api.py).

No Kubernetes API server can run on the build machines, so this is the one mocked part: the
server. The kubeflow-training SDK and the kubernetes client are real, talk real HTTP, and the
timeouts are real clocks.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from fake_kube_api import condition

from gbcosface.config import load_config
from gbcosface.launch.client import (
    JobCancelledError,
    JobClient,
    JobConflictError,
    JobFailedError,
    JobTimeoutError,
)
from gbcosface.launch.pytorchjob import JobSpec, render_job

NS = "ns1"


def _client(api) -> JobClient:
    return JobClient(namespace=NS, client_configuration=api.configuration(), request_timeout=5)


def _progress(*steps):
    """A script: the n-th GET of the job sees the conditions of the last step whose n is <= n."""
    def script(job, n):
        current = None
        for after, conds in steps:
            if n >= after:
                current = conds
        return current
    return script


def test_submit_creates_configmap_then_job_and_is_idempotent(api, demo_job):
    client = _client(api)
    client.submit(demo_job)
    c = api.cluster
    assert (NS, "gbc-test-config") in c.configmaps and (NS, "gbc-test") in c.jobs
    posts = [p for m, p, _ in c.requests if m == "POST"]
    assert posts[0].endswith("/configmaps") and posts[1].endswith("/pytorchjobs")
    stored = c.jobs[(NS, "gbc-test")]
    assert stored["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] == "pytorch"
    assert c.configmaps[(NS, "gbc-test-config")]["data"] == demo_job.configmap["data"]

    client.submit(demo_job)  # a retried step: same config -> attach, no error
    assert c.count("POST", "/pytorchjobs$") == 2 and len(c.jobs) == 1


def test_submit_refuses_a_different_config_under_the_same_name(api, demo_job):
    client = _client(api)
    client.submit(demo_job)
    other = render_job(JobSpec(name="gbc-test", image="img:1", namespace=NS), load_config("demo", ["run.seed=7"]))
    with pytest.raises(JobConflictError, match="different config"):
        client.submit(other)


def test_wait_returns_on_success(api, demo_job):
    client = _client(api)
    client.submit(demo_job)
    # GET 1 is submit's own read of the created job (for its uid); the wait's polls come after.
    api.cluster.script = _progress((2, [condition("Created")]),
                                   (3, [condition("Created"), condition("Running")]),
                                   (5, [condition("Created"), condition("Running"), condition("Succeeded")]))
    seen = []
    status = client.wait("gbc-test", timeout_s=60, poll_interval=0.05, on_status=lambda s: seen.append(s.phase))
    assert status.succeeded and status.phase == "Succeeded"
    assert seen[0] == "Created" and "Running" in seen and seen[-1] == "Succeeded"


def test_wait_reports_conditions_and_master_log_tail_on_failure(api, demo_job):
    client = _client(api)
    client.submit(demo_job)
    c = api.cluster
    c.pod_phase[(NS, "gbc-test-master-0")] = "Failed"
    c.pod_logs[(NS, "gbc-test-master-0")] = [(f"2026-11-28T00:00:{i:02d}Z", f"line {i}") for i in range(80)] + [
        ("2026-11-28T00:01:30Z", "RuntimeError: NCCL error: unhandled system error")]
    c.script = _progress((1, [condition("Created"), condition("Running"),
                              condition("Failed", "PyTorchJobFailed", "PyTorchJob gbc-test is failed because 1 Master replica(s) failed.")]))
    with pytest.raises(JobFailedError) as info:
        client.wait("gbc-test", timeout_s=60, poll_interval=0.05, log_tail_lines=20)
    err = info.value
    assert err.status is not None and err.status.failed
    text = str(err)
    assert "PyTorchJobFailed" in text and "1 Master replica(s) failed" in text
    assert "NCCL error" in err.log_tail and "line 79" in err.log_tail and "line 59" not in err.log_tail
    log_requests = [q for m, p, q in c.requests if p.endswith("/gbc-test-master-0/log")]
    assert log_requests[-1]["tailLines"] == ["20"] and log_requests[-1]["container"] == ["pytorch"]


def test_wait_times_out_on_a_job_that_never_finishes(api, demo_job):
    client = _client(api)
    client.submit(demo_job)
    api.cluster.script = _progress((1, [condition("Created"), condition("Running")]))
    with pytest.raises(JobTimeoutError, match="did not finish within 0.5 s"):
        client.wait("gbc-test", timeout_s=0.5, poll_interval=0.05)
    assert api.cluster.get_job_count >= 2  # it kept polling until the deadline
    assert (NS, "gbc-test") in api.cluster.jobs  # wait alone never deletes


@pytest.mark.timeout(60)
def test_timeout_holds_even_when_the_api_server_stalls(api, demo_job):
    """Each GET stalls for up to 120 s: the wait must still end at its own deadline, not after the
    stalled request (the SDK's wait_for_job_conditions would count rounds and overrun)."""
    client = _client(api)
    client.submit(demo_job)
    api.cluster.get_delay = 120
    with pytest.raises(JobTimeoutError):
        client.wait("gbc-test", timeout_s=1.0, poll_interval=0.1)


def test_wait_fails_when_the_job_disappears(api, demo_job):
    client = _client(api)
    client.submit(demo_job)
    client.delete("gbc-test")
    with pytest.raises(JobFailedError, match="no longer exists"):
        client.wait("gbc-test", timeout_s=30, poll_interval=0.05)


def test_delete_removes_job_and_configmap_and_tolerates_missing(api, demo_job):
    client = _client(api)
    client.submit(demo_job)
    assert client.delete("gbc-test") is True
    assert not api.cluster.jobs and not api.cluster.configmaps
    assert client.delete("gbc-test") is False


def test_run_streams_the_master_log_without_duplicates_across_a_reconnect(api, demo_job):
    client = _client(api)
    c = api.cluster
    pod = (NS, "gbc-test-master-0")
    c.pod_phase[pod] = "Running"
    c.pod_logs[pod] = [(f"2026-11-28T00:00:00.{i:09d}Z", f"step {i}") for i in range(1, 9)]
    c.follow_cut_after[pod] = 3  # the first followed stream ends after 3 lines (container restart)
    lines: list[str] = []

    def script(job, n):
        done = len(lines) >= 8
        return [condition("Created"), condition("Running")] + ([condition("Succeeded")] if done else [])

    c.script = script
    status = client.run(demo_job, timeout_s=60, poll_interval=0.05, log_sink=lines.append)
    assert status.succeeded
    assert lines == [f"step {i}" for i in range(1, 9)]
    follows = [q for m, p, q in c.requests if p.endswith("/log") and q.get("follow") == ["True"]]
    assert len(follows) >= 2 and follows[0]["timestamps"] == ["True"]


def test_run_deletes_the_job_on_timeout(api, demo_job):
    client = _client(api)
    api.cluster.script = _progress((1, [condition("Created"), condition("Running")]))
    with pytest.raises(JobTimeoutError):
        client.run(demo_job, timeout_s=0.5, poll_interval=0.05, stream_logs=False)
    assert not api.cluster.jobs and not api.cluster.configmaps


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_deletes_the_job_when_cancelled(api, demo_job, sig):
    """KFP cancels a step by SIGTERM to its pod; Ctrl-C is SIGINT. Either must delete the job."""
    client = _client(api)
    api.cluster.script = _progress((1, [condition("Created"), condition("Running")]))

    def cancel_when_created():
        deadline = time.monotonic() + 30
        while (NS, "gbc-test") not in api.cluster.jobs and time.monotonic() < deadline:
            time.sleep(0.02)
        if (NS, "gbc-test") in api.cluster.jobs:  # the handler is installed before submit
            os.kill(os.getpid(), sig)

    before = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=cancel_when_created, daemon=True)
    killer.start()
    with pytest.raises(JobCancelledError):
        client.run(demo_job, timeout_s=60, poll_interval=0.05, stream_logs=False)
    killer.join(5)
    assert not api.cluster.jobs and not api.cluster.configmaps
    assert api.cluster.count("DELETE", "/pytorchjobs/gbc-test$") == 1
    assert signal.getsignal(signal.SIGTERM) is before  # the temporary SIGTERM handler is gone again
