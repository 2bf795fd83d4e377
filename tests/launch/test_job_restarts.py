"""A JobSpec's `backoff_limit` is a number of whole-job restarts for both kinds, and the emulator
counts restarts exactly as each kind's controller does.

The controllers' rules, re-encoded here from their sources (not from our code):
- Training Operator v1.9.4 (kubeflow/trainer@v1.9.4:pkg/core/job.go PastBackoffLimit): under
  restartPolicy OnFailure, sum the container restartCount of every Running pod; the job fails once
  the sum is >= backoffLimit (> 0 for a limit of 0). A collective failure restarts every pod once.
- JobSet v0.12.0 (kubernetes-sigs/jobset@v0.12.0:pkg/controllers/failure_policy.go
  restartJobSetActionApplier): a failed child Job fails the JobSet once restarts >= maxRestarts,
  else every pod is recreated and restarts += 1. Our runtime has one child Job with backoffLimit 0,
  so any failed node is one failed Job, whatever the node count.

Real processes with tiny scripts: node rank 0 fails while every rank waits in a file barrier, so
each failed attempt is one failure of the whole set, as a broken collective is.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from launch_helpers import REPO

from gbcosface.config import load_config
from gbcosface.launch.kinds import get_job_kind
from gbcosface.launch.local import RestartCounter, run_local_job, run_plan
from gbcosface.launch.spec import JobSpec

# Every rank counts its starts in its own file; rank 0 waits until all ranks have started this attempt,
# then fails (exit 1) while fewer than FAILS attempts have failed, the others waiting to be stopped as a
# broken collective would stop them; from attempt FAILS on every rank exits 0.
FAIL_N_TIMES = """
import os, sys, time
state, fails = sys.argv[1], int(sys.argv[2])
rank, nodes = int(os.environ["PET_NODE_RANK"]), int(os.environ["PET_NNODES"])
mine = os.path.join(state, "starts-%d" % rank)
starts = (int(open(mine).read()) if os.path.exists(mine) else 0) + 1
with open(mine + ".tmp", "w") as fh:
    fh.write(str(starts))
os.replace(mine + ".tmp", mine)
if starts > fails:
    sys.exit(0)
if rank != 0:
    time.sleep(120)  # the emulator stops it
    sys.exit(0)
def seen(r):
    try:
        return int(open(os.path.join(state, "starts-%d" % r)).read())
    except (OSError, ValueError):
        return 0
deadline = time.monotonic() + 60
while any(seen(r) < starts for r in range(nodes)) and time.monotonic() < deadline:
    time.sleep(0.02)
print("rank 0 fails attempt", starts, flush=True)
sys.exit(1)
"""


def operator_fails(restart_counts: list[int], backoff_limit: int) -> bool:
    """PastBackoffLimit of v1.9.4, with every pod Running (OnFailure restarts in place)."""
    total = sum(restart_counts)
    return total > 0 if backoff_limit == 0 else total >= backoff_limit


def _plan(kind: str, nnodes: int, restarts: int, tmp_path: Path, fails: int):
    spec = JobSpec(name=f"gbc-r{nnodes}", image="img:1", nnodes=nnodes, backoff_limit=restarts, shm_size="1Gi",
                   metrics_port=0)
    k = get_job_kind(kind)
    rendered = k.render(spec, load_config("demo"))
    plan = k.plan(rendered.job, rendered.configmap, tmp_path / "work")
    script = tmp_path / "fail_n.py"
    script.write_text(textwrap.dedent(FAIL_N_TIMES))
    state = tmp_path / "state"
    state.mkdir()
    plan.command = ["python", str(script), str(state), str(fails)]
    return rendered.job, plan


def _runtime_max_restarts() -> int:
    runtime = yaml.safe_load((REPO / "k8s/runtimes/cluster/clustertrainingruntime.yaml").read_text())
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["template"]["spec"]["backoffLimit"] == 0  # one failed pod fails the one child Job
    return runtime["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"]


@pytest.mark.parametrize("nnodes", [2, 4])
@pytest.mark.parametrize("restarts", [0, 1, 3])
def test_the_rendered_backoff_limit_lets_exactly_the_requested_whole_job_restarts_pass(nnodes, restarts):
    """Under the operator's rule, k whole-job failures of n pods sum to k x n restarts: the rendered
    backoffLimit must let k = restarts pass and stop k = restarts + 1."""
    spec = JobSpec(name="gbc-bl", image="img:1", nnodes=nnodes, backoff_limit=restarts)
    job = get_job_kind("pytorchjob").render(spec, load_config("demo")).job
    limit = job["spec"]["runPolicy"]["backoffLimit"]
    assert all(rs["restartPolicy"] == "OnFailure" for rs in job["spec"]["pytorchReplicaSpecs"].values())
    for k in range(restarts + 2):
        assert operator_fails([k] * nnodes, limit) == (k > restarts), (k, limit)


@pytest.mark.integration  # starts real processes
@pytest.mark.parametrize("nnodes", [2, 4])
def test_the_emulator_counts_a_pytorchjob_backoff_limit_as_the_operator(nnodes, tmp_path):
    """A raw backoffLimit of 3: at 2 pods the second failure (4 restarts) ends the job, at 4 pods the first."""
    script = tmp_path / "fail_n.py"
    script.write_text(textwrap.dedent(FAIL_N_TIMES))
    (tmp_path / "state").mkdir()
    result = run_local_job(replicas=nnodes, command=["python", str(script), str(tmp_path / "state"), "9"],
                           backoff_limit=3, log_dir=tmp_path / "logs", echo=False, grace_s=5)
    expected_attempts = next(k for k in range(1, 10) if operator_fails([k] * nnodes, 3))
    assert not result.succeeded and result.failure == "BackoffLimitExceeded"
    assert len(result.attempts) == expected_attempts == {2: 2, 4: 1}[nnodes]
    assert result.restart_counts == [expected_attempts] * nnodes


@pytest.mark.integration  # starts real processes
@pytest.mark.parametrize("nnodes", [2, 4])
@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
def test_requested_restarts_survive_that_many_failures_and_not_one_more(kind, nnodes, tmp_path):
    restarts = 2 if kind == "pytorchjob" else _runtime_max_restarts()  # a TrainJob's is the runtime's
    job, plan = _plan(kind, nnodes, restarts, tmp_path / "ok", fails=restarts)
    result = run_plan(plan, log_dir=tmp_path / "ok" / "logs", echo=False, grace_s=5)
    assert result.succeeded, [a.reason for a in result.attempts]
    assert result.restarts == restarts and len(result.attempts) == restarts + 1
    assert all(a.exit_codes[0] == 1 for a in result.attempts[:-1]) and result.exit_codes == [0] * nnodes
    if kind == "pytorchjob":
        # Each whole-job restart restarted every pod once, and the operator would not have failed the job.
        assert result.restart_counts == [restarts] * nnodes
        assert not operator_fails(result.restart_counts, job["spec"]["runPolicy"]["backoffLimit"])

    _, plan = _plan(kind, nnodes, restarts, tmp_path / "bad", fails=restarts + 1)
    result = run_plan(plan, log_dir=tmp_path / "bad" / "logs", echo=False, grace_s=5)
    assert not result.succeeded and len(result.attempts) == restarts + 1
    assert result.failure == {"pytorchjob": "BackoffLimitExceeded", "trainjob": "ReachedMaxRestarts"}[kind]


def test_restart_counter_rules_without_processes():
    # JobSet: maxRestarts 2 lets two failures restart the set, the third fails it (any node count).
    c = RestartCounter(4, max_restarts=2)
    assert [c.failed([1, -15, -15, -15]) for _ in range(3)] == [None, None, "ReachedMaxRestarts"]
    # Operator: a pod that exited 0 is Succeeded, not Running, and drops out of the sum.
    c = RestartCounter(2, backoff_limit=3)
    assert c.failed([1, 0]) is None and c.counts == [1, 0]
    assert c.failed([1, 0]) is None and c.counts == [2, 0]
    assert c.failed([1, -15]) == "BackoffLimitExceeded" and c.counts == [3, 1]
    assert RestartCounter(2, backoff_limit=0).failed([1, 0]) == "BackoffLimitExceeded"
