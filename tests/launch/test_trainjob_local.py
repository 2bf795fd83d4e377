"""The TrainJob emulator: each node gets exactly the torch plugin's environment, a rendered TrainJob
runs as planned, a killed node restarts the whole set (the JobSet's failurePolicy) and training
resumes to the end (the same final loss under both kinds: tests/launch/test_train_step_local.py).
Real processes: the emulator, torchrun, gloo, the real trainer on a tiny data set."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from launch_helpers import train_fixtures

from gbcosface.config import from_dict
from gbcosface.launch import trainjob_env
from gbcosface.launch.kinds import get_job_kind
from gbcosface.launch.local import replica_env, run_local_job, run_plan
from gbcosface.launch.spec import JobSpec

pytestmark = pytest.mark.integration  # starts real processes

DUMP_ENV = """
import json, os, sys
with open(os.path.join(sys.argv[1], "env-%s.json" % os.environ["PET_NODE_RANK"]), "w") as fh:
    json.dump(dict(os.environ), fh)
"""


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_each_node_gets_exactly_the_torch_plugin_environment(tmp_path):
    script = _script(tmp_path, "dump_env.py", DUMP_ENV)
    out = tmp_path / "env"
    out.mkdir()
    inherited = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PET_NNODES": "9", "MASTER_ADDR": "stale",
                 "RANK": "5", "JOB_COMPLETION_INDEX": "7", "KEEP_ME": "yes"}
    result = run_local_job(replicas=3, nproc_per_node=2, command=["python", script, str(out)], job_name="gbc-tj",
                           log_dir=tmp_path / "logs", base_env=inherited, echo=False, kind="trainjob")
    assert result.succeeded and result.replica_names == ["gbc-tj-node-0-0", "gbc-tj-node-0-1", "gbc-tj-node-0-2"]
    envs = [json.loads((out / f"env-{r}.json").read_text()) for r in range(3)]
    port = envs[0]["PET_MASTER_PORT"]
    for rank, env in enumerate(envs):
        assert {k: env[k] for k in trainjob_env.INJECTED_ENV_NAMES} == {
            "PET_NNODES": "3", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": port, "JOB_COMPLETION_INDEX": str(rank),
        }
        # The Training Operator v1's variables are not part of a TrainJob pod (nor stale ones).
        assert "MASTER_ADDR" not in env and "RANK" not in env and "WORLD_SIZE" not in env
        assert env["GBCOSFACE_JOB_NAME"] == "gbc-tj" and env["KEEP_ME"] == "yes"
    assert {p.name for p in (tmp_path / "logs").iterdir()} == {f"{n}.log" for n in result.replica_names}
    # In a cluster the master is pod 0's DNS name and the port the plugin's fixed 29500.
    cluster = trainjob_env.injected_env("gbc-tj", 1, 3, 2)
    assert cluster["PET_MASTER_ADDR"] == "gbc-tj-node-0-0.gbc-tj" and cluster["PET_MASTER_PORT"] == "29500"
    assert replica_env("j", 2, 1, 1, 1234, base_env={}, kind="trainjob")["PET_NODE_RANK"] == "1"
    with pytest.raises(ValueError, match="job kinds"):
        run_local_job(replicas=1, command=["python", script, str(out)], kind="mpijob")


def test_plan_of_a_rendered_trainjob_runs_what_would_be_submitted(tmp_path):
    fx = train_fixtures()
    cfg = from_dict(fx.tiny_config(tmp_path / "train", str(tmp_path / "out"), run={"seed": 11}))
    spec = JobSpec(name="gbc-plan", image="img:1", nnodes=3, nproc_per_node=2, active_deadline_seconds=600,
                   s3_secret_name="s3", nccl_socket_ifname="lo", extra_args=["run.log_every=1"])
    kind = get_job_kind("trainjob")
    rendered = kind.render(spec, cfg)
    plan = kind.plan(rendered.job, rendered.configmap, tmp_path / "work")
    local_config = (tmp_path / "work" / "config.yaml").resolve()
    assert plan.kind == "trainjob"
    assert plan.command == ["torchrun", "-m", "gbcosface", "train", "--config", str(local_config), "run.log_every=1"]
    assert from_dict(yaml.safe_load(local_config.read_text())).run.seed == 11
    assert (plan.replicas, plan.nproc_per_node, plan.max_restarts, plan.timeout_s) == (3, 2, 3, 600.0)
    assert plan.env == {"GBCOSFACE_JOB_NAME": "gbc-plan", "NCCL_DEBUG": "WARN", "NCCL_SOCKET_IFNAME": "lo",
                        "GLOO_SOCKET_IFNAME": "lo",
                        # torchrun lets the workers finish a preemption checkpoint within the pod's grace
                        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "285"}  # Secret references stay with the caller's env
    script = _script(tmp_path, "dump_env.py", DUMP_ENV)
    out = tmp_path / "env"
    out.mkdir()
    plan.command = ["python", script, str(out)]
    result = run_plan(plan, log_dir=tmp_path / "logs", echo=False)
    assert result.succeeded
    env = json.loads((out / "env-2.json").read_text())
    assert env["GLOO_SOCKET_IFNAME"] == "lo" and env["PET_NNODES"] == "3" and env["PET_NPROC_PER_NODE"] == "2"


MAX_STEPS = 16
KILL_AT = 9  # node 1 SIGKILLs itself after step 9 on its first attempt; checkpoint at 8

WRAPPER = """
import os, sys
marker = sys.argv[1]
if os.environ["PET_NODE_RANK"] == "1" and not os.path.exists(marker):
    open(marker, "w").close()
    os.environ["GBCOSFACE_FAULT_KILL_AT_STEP"] = "{kill}:1"
os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "-m", "gbcosface", "train",
                          "--config", sys.argv[2]])
"""


@pytest.fixture(scope="module")
def trainset(tmp_path_factory) -> Path:
    return train_fixtures().write_tiny_trainset(tmp_path_factory.mktemp("trainset") / "train")


def test_a_killed_node_restarts_the_set_and_the_trainjob_resumes_to_the_end(tmp_path, trainset):
    fx = train_fixtures()
    out = tmp_path / "out"
    cfg = fx.tiny_config(trainset, str(out), run={"checkpoint_every": 4, "keep_last": 5},
                         schedule={"epochs": 4, "milestones": [2], "max_steps": MAX_STEPS})
    config = fx.write_config(tmp_path / "job.yaml", cfg)
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER.format(kill=KILL_AT))
    result = run_local_job(
        replicas=2, nproc_per_node=1, command=["python", str(wrapper), str(tmp_path / "armed"), str(config)],
        log_dir=tmp_path / "logs", max_restarts=3, job_name="tj-restart", extra_env={"OMP_NUM_THREADS": "1"},
        timeout_s=600, echo=None, kind="trainjob",
    )
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted((tmp_path / "logs").glob("*.log")))
    assert result.succeeded, f"{result.reason} {result.exit_codes}\n{logs}"
    assert result.restarts == 1 and result.attempts[0].exit_codes != [0, 0], [a.exit_codes for a in result.attempts]
    assert "node-0-1 exited" in result.attempts[0].reason
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == MAX_STEPS and summary["world_size"] == 2
    assert summary["resumed_from"] is not None and "step-0000008" in summary["resumed_from"]
