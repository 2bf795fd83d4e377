"""Preemption in the PyTorchJob emulator: SIGTERM mid-run -> every rank finishes the step, a complete
checkpoint of that step is written, the replicas exit non-zero, the emulator restarts them (as the
operator's OnFailure restart would) and the job resumes and ends BITWISE where an uninterrupted job ends.

The SIGTERM goes to node 1's torchrun (the pod's PID 1, which is what the kubelet signals) and torchrun
forwards it to its worker; node 0 is not signalled, so the ranks must agree through the step's all-reduce.
The head is sharded, so this is also the bitwise same-world-size resume of a sharded run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gbcosface.launch.local import run_local_job
from gbcosface.train import checkpoint

from .conftest import run_train, tiny_config, write_config

pytestmark = pytest.mark.integration

MAX_STEPS = 24
CKPT_EVERY = 10
SIGTERM_AT = 13  # node 1's trainer SIGTERMs its torchrun after step 13 on the first attempt

WRAPPER = """
import os, sys
marker = sys.argv[1]
if os.environ["PET_NODE_RANK"] == "1" and not os.path.exists(marker):
    open(marker, "w").close()
    os.environ["GBCOSFACE_FAULT_SIGTERM_AT_STEP"] = "{at}:1"
os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "-m", "gbcosface", "train",
                          "--config", sys.argv[2]])
"""


def _cfg(tmp: Path, trainset: Path, name: str) -> Path:
    cfg = tiny_config(trainset, str(tmp / name), head={"type": "linear", "sharded": True},
                      run={"checkpoint_every": CKPT_EVERY, "keep_last": 20},
                      schedule={"epochs": 4, "milestones": [2], "max_steps": MAX_STEPS})
    return write_config(tmp / f"{name}.yaml", cfg)


def _equal(a, b, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_sigterm_checkpoints_the_step_exits_and_the_restarted_job_ends_bitwise_equal(
        tmp_path: Path, tiny_trainset: Path) -> None:
    ref = run_train(_cfg(tmp_path, tiny_trainset, "reference"), 2)
    assert ref.returncode == 0, ref.stderr[-4000:]

    config = _cfg(tmp_path, tiny_trainset, "preempted")
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER.format(at=SIGTERM_AT))
    result = run_local_job(
        replicas=2, nproc_per_node=1, command=["python", str(wrapper), str(tmp_path / "armed"), str(config)],
        log_dir=tmp_path / "logs", max_restarts=1, job_name="emu-sigterm", extra_env={"OMP_NUM_THREADS": "1"},
        timeout_s=600, echo=None,
    )
    logs = "\n".join(p.read_text(errors="replace") for p in sorted((tmp_path / "logs").glob("*.log")))
    assert result.succeeded, f"{result.reason} {result.exit_codes}\n{logs[-6000:]}"
    assert result.restarts == 1 and all(code != 0 for code in result.attempts[0].exit_codes), \
        [a.exit_codes for a in result.attempts]
    # both ranks stopped after the same step, and that step's checkpoint was written (not a periodic one)
    stops = [line for line in logs.splitlines() if "preempted by SIGTERM after step" in line]
    assert len(stops) == 2, logs[-6000:]
    stopped = {int(line.split("after step ")[1].split()[0]) for line in stops}
    assert len(stopped) == 1, stops
    step = stopped.pop()
    assert SIGTERM_AT < step <= SIGTERM_AT + 3 and step % CKPT_EVERY != 0, step
    print(f"SIGTERM after step {SIGTERM_AT}; both ranks stopped after step {step}:", stops[0].split("rank")[-1])
    out = tmp_path / "preempted"
    assert step in [r.step for r in checkpoint.list_complete(str(out))]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith(checkpoint.step_name(step))
    assert summary["steps"] == MAX_STEPS and summary["head_sharded"] is True
    final = [checkpoint.read_file(checkpoint.latest_complete(str(d)), checkpoint.STATE_FILE)
             for d in (tmp_path / "reference", out)]
    for part in ("backbone", "head", "loss", "optimizer", "sampler", "progress"):
        _equal(final[0][part], final[1][part], part)
