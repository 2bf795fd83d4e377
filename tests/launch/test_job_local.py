"""The local PyTorchJob emulator: each replica's environment is the operator's contract, a failed
attempt restarts the whole set, and restarts stop at max_restarts (tests/launch/test_job_restarts.py:
at a PyTorchJob's backoffLimit, counted as the operator does). Real processes, tiny scripts."""

from __future__ import annotations

import io
import json
import sys
import textwrap
from pathlib import Path

import pytest

import gbcosface
from gbcosface.launch import contract
from gbcosface.launch.local import default_command, replica_env, run_local_job

pytestmark = pytest.mark.integration  # starts real processes

DUMP_ENV = """
import json, os, sys
out = sys.argv[1]
with open(os.path.join(out, "env-%s.json" % os.environ["PET_NODE_RANK"]), "w") as fh:
    json.dump(dict(os.environ), fh)
print("dumped rank", os.environ["RANK"])
"""

# Exits 1 on its first run on node rank 1 (and leaves a marker), succeeds after that.
FAIL_ONCE = """
import os, sys, time
marker = sys.argv[1]
if os.environ["PET_NODE_RANK"] == "1" and not os.path.exists(marker):
    open(marker, "w").close()
    print("worker failing on purpose", flush=True)
    sys.exit(1)
time.sleep(0.2)
print("ok", flush=True)
"""


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_each_replica_gets_exactly_the_operator_environment(tmp_path):
    script = _script(tmp_path, "dump_env.py", DUMP_ENV)
    out = tmp_path / "env"
    out.mkdir()
    inherited = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LOCAL_RANK": "7", "PET_RDZV_ENDPOINT": "x:1",
                 "TORCHELASTIC_RUN_ID": "stale", "KEEP_ME": "yes"}
    echo = io.StringIO()
    result = run_local_job(replicas=2, nproc_per_node=3, command=["python", script, str(out)], job_name="gbc-env",
                           log_dir=tmp_path / "logs", base_env=inherited, extra_env={"NCCL_DEBUG": "WARN"}, echo=echo)
    assert result.succeeded and result.exit_codes == [0, 0] and result.restarts == 0
    envs = [json.loads((out / f"env-{r}.json").read_text()) for r in (0, 1)]
    port = envs[0]["MASTER_PORT"]
    assert port.isdigit() and int(port) > 0
    for rank, env in enumerate(envs):
        operator = {k: env[k] for k in contract.OPERATOR_ENV_NAMES}
        assert operator == {
            "PYTHONUNBUFFERED": "1",
            "MASTER_ADDR": "127.0.0.1", "PET_MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port, "PET_MASTER_PORT": port,
            "WORLD_SIZE": "6", "RANK": str(rank), "PET_NODE_RANK": str(rank),
            "PET_NNODES": "2", "PET_NPROC_PER_NODE": "3",
        }
        assert env["GBCOSFACE_JOB_NAME"] == "gbc-env" and env["NCCL_DEBUG"] == "WARN" and env["KEEP_ME"] == "yes"
        # Left-overs of an outer launcher are not what a fresh pod has.
        assert "LOCAL_RANK" not in env and "PET_RDZV_ENDPOINT" not in env and "TORCHELASTIC_RUN_ID" not in env
    # The same function gives the emulator's and the test's view.
    assert {k: envs[1][k] for k in contract.OPERATOR_ENV_NAMES} == {
        k: v for k, v in replica_env("gbc-env", 2, 3, 1, int(port), base_env={}).items() if k in contract.OPERATOR_ENV_NAMES}
    logs = {p.name for p in (tmp_path / "logs").iterdir()}
    assert logs == {"gbc-env-master-0.log", "gbc-env-worker-0.log"}
    assert "dumped rank 1" in (tmp_path / "logs" / "gbc-env-worker-0.log").read_text()
    assert "[master-0] dumped rank 0" in echo.getvalue() and "[worker-0] dumped rank 1" in echo.getvalue()


def test_a_failed_replica_restarts_the_whole_set_and_the_job_succeeds(tmp_path):
    script = _script(tmp_path, "fail_once.py", FAIL_ONCE)
    marker = tmp_path / "marker"
    result = run_local_job(replicas=2, command=["python", script, str(marker)], log_dir=tmp_path / "logs",
                           max_restarts=2, echo=False, job_name="gbc-restart")
    assert result.succeeded
    assert len(result.attempts) == 2
    assert result.attempts[0].exit_codes[1] == 1 and "worker-0 exited with 1" in result.attempts[0].reason
    assert result.exit_codes == [0, 0]
    worker_log = result.log_file(1).read_text()
    assert worker_log.count("===== attempt") == 2 and "failing on purpose" in worker_log


def test_a_job_that_always_fails_stops_after_max_restarts(tmp_path):
    script = _script(tmp_path, "always_fail.py", """
        import os, sys, time
        if os.environ["PET_NODE_RANK"] == "0":
            sys.exit(3)
        time.sleep(60)  # the worker would hang in rendezvous: the emulator must kill it
    """)
    result = run_local_job(replicas=2, command=["python", script], log_dir=tmp_path, max_restarts=2, echo=False,
                           grace_s=5)
    assert not result.succeeded
    assert len(result.attempts) == 3
    for attempt in result.attempts:
        assert attempt.exit_codes[0] == 3
        assert attempt.exit_codes[1] < 0  # killed by a signal, not left running
        assert attempt.reason == "master-0 exited with 3"


def test_deadline_kills_the_replicas_and_is_not_retried(tmp_path):
    script = _script(tmp_path, "sleep.py", "import time; time.sleep(60)\n")
    result = run_local_job(replicas=2, command=["python", script], log_dir=tmp_path, max_restarts=3, timeout_s=1.0,
                           echo=False, grace_s=5)
    assert not result.succeeded and len(result.attempts) == 1
    assert result.reason == "DeadlineExceeded" and all(code < 0 for code in result.exit_codes)


def test_default_command_is_the_rendered_container_command(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    cmd = default_command(cfg, ["run.seed=1"])
    assert cmd == ["torchrun", "-m", "gbcosface", "train", "--config", str(cfg.resolve()), "run.seed=1"]
    assert cmd[cmd.index("--config") + 2:] == ["run.seed=1"]
    assert contract.local_argv(cmd)[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert contract.local_argv(cmd)[3:] == cmd[1:]
    with pytest.raises(FileNotFoundError):
        run_local_job(replicas=1, config=tmp_path / "missing.yaml")


def test_torchrun_turns_the_operator_env_into_per_process_ranks(tmp_path):
    """Two emulated pods x two processes through the real torchrun (static rendezvous on loopback):
    the PET_* variables alone must give each process its global rank."""
    script = _script(tmp_path, "ranks.py", """
        import json, os, sys
        keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
        with open(os.path.join(sys.argv[1], "rank-%s.json" % os.environ["RANK"]), "w") as fh:
            json.dump({k: os.environ.get(k) for k in keys}, fh)
    """)
    out = tmp_path / "ranks"
    out.mkdir()
    result = run_local_job(replicas=2, nproc_per_node=2, command=["torchrun", script, str(out)],
                           log_dir=tmp_path / "logs", echo=False, timeout_s=240)
    assert result.succeeded, [p.read_text() for p in (tmp_path / "logs").iterdir()]
    seen = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in out.iterdir()}
    assert sorted(seen) == [0, 1, 2, 3]
    for rank, env in seen.items():
        assert env["WORLD_SIZE"] == "4" and env["LOCAL_WORLD_SIZE"] == "2"
        assert env["LOCAL_RANK"] == str(rank % 2) and env["GROUP_RANK"] == str(rank // 2)
        assert env["MASTER_ADDR"] == "127.0.0.1"


def test_plan_from_a_rendered_job_runs_what_would_be_submitted(tmp_path):
    from gbcosface.config import load_config
    from gbcosface.launch.local import plan_from_job, run_plan
    from gbcosface.launch.pytorchjob import JobSpec, render_job

    cfg = load_config("demo", ["run.seed=11"])
    spec = JobSpec(name="gbc-plan", image="img:1", nnodes=3, nproc_per_node=2, backoff_limit=1,
                   active_deadline_seconds=600, s3_secret_name="s3", nccl_socket_ifname="lo")
    rendered = render_job(spec, cfg)
    plan = plan_from_job(rendered.job, rendered.configmap, tmp_path / "work")
    local_config = (tmp_path / "work" / "config.yaml").resolve()
    assert plan.command == ["torchrun", "-m", "gbcosface", "train", "--config", str(local_config)]
    assert load_config(local_config).run.seed == 11
    assert (plan.replicas, plan.nproc_per_node, plan.timeout_s) == (3, 2, 600.0)
    # 1 whole-job restart of 3 pods: the rendered backoffLimit (1 + 1) x 3, counted as the operator does.
    assert (plan.backoff_limit, plan.max_restarts) == (6, 0)
    assert plan.env == {"GBCOSFACE_JOB_NAME": "gbc-plan", "NCCL_DEBUG": "WARN", "NCCL_SOCKET_IFNAME": "lo",
                        "GLOO_SOCKET_IFNAME": "lo",
                        # torchrun lets the workers finish a preemption checkpoint within the pod's grace
                        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "285"}  # Secret references stay with the caller's env

    # Run the plan with a stand-in command: the pods' env is the pod template's plus the operator's.
    script = _script(tmp_path, "dump_env.py", DUMP_ENV)
    out = tmp_path / "env"
    out.mkdir()
    plan.command = ["python", script, str(out)]
    result = run_plan(plan, log_dir=tmp_path / "logs", echo=False)
    assert result.succeeded and result.replica_names == ["gbc-plan-master-0", "gbc-plan-worker-0", "gbc-plan-worker-1"]
    env = json.loads((out / "env-2.json").read_text())
    assert env["GLOO_SOCKET_IFNAME"] == "lo" and env["WORLD_SIZE"] == "6" and env["RANK"] == "2"

    elastic = render_job(JobSpec(name="gbc-el", image="i", nnodes=2, elastic_min_nodes=1, elastic_max_nodes=2), cfg)
    with pytest.raises(ValueError, match="non-elastic"):
        plan_from_job(elastic.job, elastic.configmap, tmp_path / "w2")


def test_torchrun_dash_m_runs_the_installed_package(tmp_path):
    """The container's `torchrun -m gbcosface ...` form, through the emulator: torchrun's -m runs
    the package's __main__ in each worker like `python -m` (here with --version, not training)."""
    result = run_local_job(replicas=2, nproc_per_node=1, command=["torchrun", "-m", "gbcosface", "--version"],
                           log_dir=tmp_path, echo=False, timeout_s=240)
    assert result.succeeded, [p.read_text() for p in tmp_path.iterdir()]
    for i in range(2):
        assert f"gbcosface {gbcosface.__version__}" in result.log_file(i).read_text()
