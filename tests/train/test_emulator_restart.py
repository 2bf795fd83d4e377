"""The PyTorchJob emulator runs the real 2-replica training; a replica killed mid-run is restarted
(the whole replica set, as the operator's OnFailure restart would) and the job resumes from the
last complete checkpoint to the end. Real processes: `gbcosface job local` machinery, torchrun, gloo.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gbcosface.launch.local import run_local_job

from .conftest import tiny_config, write_config

pytestmark = pytest.mark.integration

MAX_STEPS = 30
KILL_AT = 16  # node 1's trainer SIGKILLs itself after step 16 on the first attempt; checkpoint at 14

# Arms the trainer's fault hook on node rank 1's first attempt only (a marker file remembers it),
# then runs the rendered container command (torchrun -m gbcosface train) exactly as the pod would.
WRAPPER = """
import os, sys
marker = sys.argv[1]
if os.environ["PET_NODE_RANK"] == "1" and not os.path.exists(marker):
    open(marker, "w").close()
    os.environ["GBCOSFACE_FAULT_KILL_AT_STEP"] = "{kill}:1"
os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "-m", "gbcosface", "train",
                          "--config", sys.argv[2]])
"""


def test_emulated_job_restarts_after_a_killed_replica_and_finishes(tmp_path: Path, tiny_trainset: Path) -> None:
    out = tmp_path / "out"
    cfg = tiny_config(tiny_trainset, str(out), run={"checkpoint_every": 7, "keep_last": 5},
                      schedule={"epochs": 4, "milestones": [2], "max_steps": MAX_STEPS})
    config = write_config(tmp_path / "job.yaml", cfg)
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER.format(kill=KILL_AT))
    result = run_local_job(
        replicas=2, nproc_per_node=1, command=["python", str(wrapper), str(tmp_path / "armed"), str(config)],
        log_dir=tmp_path / "logs", max_restarts=2, job_name="emu-restart", extra_env={"OMP_NUM_THREADS": "1"},
        timeout_s=600, echo=None,
    )
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted((tmp_path / "logs").glob("*.log")))
    assert result.succeeded, f"{result.reason} {result.exit_codes}\n{logs}"
    assert result.restarts == 1, [a.exit_codes for a in result.attempts]
    assert result.attempts[0].exit_codes != [0, 0]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == MAX_STEPS and summary["world_size"] == 2
    assert summary["resumed_from"] is not None and "step-0000014" in summary["resumed_from"]
    assert (out / "model" / "backbone.pt").is_file()

