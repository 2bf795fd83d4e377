"""Multi-process training under torchrun (gloo on CPU): learning, SIGKILL + resume, world-size change.

These start real `torch.distributed.run` jobs of two processes. The key check: a job whose rank 1 is
SIGKILLed mid-run and then restarted (a new torchrun, resuming from the last complete checkpoint)
ends with weights, head, loss buffers and optimizer state BITWISE equal to an uninterrupted job.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gbcosface.train import checkpoint

from .conftest import run_train, tiny_config, write_config

pytestmark = pytest.mark.integration

MAX_STEPS = 60  # 3 epochs of 20 steps at 2 x 8 images
CKPT_EVERY = 7  # checkpoints at 7, 14, 21, ... so the resumed one lies inside an epoch
KILL_AT = 26  # rank 1 SIGKILLs itself after step 26: the newest complete checkpoint is step 21


def _config(tmp: Path, trainset: Path, name: str) -> Path:
    cfg = tiny_config(trainset, str(tmp / name), run={"checkpoint_every": CKPT_EVERY, "keep_last": 20},
                      schedule={"epochs": 4, "milestones": [2], "max_steps": MAX_STEPS})
    cfg["model"]["dropout"] = 0.05  # exercises the torch RNG state (dropout masks) across the resume
    cfg["data"]["num_workers"] = 1  # a prefetching loader: the sampler position must count consumed batches only
    return write_config(tmp / f"{name}.yaml", cfg)


def _ok(proc) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _losses(log_text: str) -> list[float]:
    out = []
    for line in log_text.splitlines():
        if " | " in line and " loss=" in line:
            out.append(float(line.split(" loss=")[1].split()[0]))
    return out


def _final_state(out: Path) -> dict:
    ref = checkpoint.latest_complete(str(out))
    assert ref is not None and ref.step == MAX_STEPS
    return checkpoint.read_file(ref, checkpoint.STATE_FILE)


def _assert_bitwise_equal(a, b, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: differs (max abs diff {(a.double() - b.double()).abs().max().item()})"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _assert_bitwise_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory, tiny_trainset: Path) -> dict:
    """Run the reference job, the killed job, a copy of its state, and the restarted job once."""
    tmp = tmp_path_factory.mktemp("dist")
    ref_cfg = _config(tmp, tiny_trainset, "reference")
    ref = run_train(ref_cfg, 2)
    _ok(ref)

    killed_cfg = _config(tmp, tiny_trainset, "killed")
    killed = run_train(killed_cfg, 2, GBCOSFACE_FAULT_KILL_AT_STEP=f"{KILL_AT}:1")
    after_kill = [r.step for r in checkpoint.list_complete(str(tmp / "killed"))]
    shutil.copytree(tmp / "killed", tmp / "reshaped")  # for the 2 -> 1 process resume

    # A checkpoint write torn by the kill: a step directory without its marker and a temp directory.
    torn = tmp / "killed" / "checkpoints" / "step-0000028"
    torn.mkdir()
    (torn / "state.pt").write_bytes(b"\x80\x02 truncated")
    (tmp / "killed" / "checkpoints" / ".tmp-step-0000035-4242").mkdir()
    resumed = run_train(killed_cfg, 2)
    return {"tmp": tmp, "ref": ref, "killed": killed, "after_kill": after_kill, "resumed": resumed}


def test_two_process_training_learns(jobs: dict) -> None:
    ref = jobs["ref"]
    summary = json.loads((jobs["tmp"] / "reference" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == MAX_STEPS and summary["global_batch"] == 16
    losses = _losses(ref.stderr + ref.stdout)
    assert len(losses) == MAX_STEPS // 5
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.8 * first, f"loss did not fall: {losses}"
    out = jobs["tmp"] / "reference"
    assert (out / "model" / "backbone.pt").is_file() and (out / "model" / "backbone.json").is_file()
    assert (out / "config.yaml").is_file()
    assert 0.5 <= summary["cos_v"] <= 0.7


def test_sigkill_then_restart_is_bitwise_identical(jobs: dict) -> None:
    killed = jobs["killed"]
    assert killed.returncode != 0, "the job with a SIGKILLed rank must fail"
    assert "fault injection" in killed.stderr
    assert max(jobs["after_kill"]) == 21, jobs["after_kill"]
    resumed = jobs["resumed"]
    _ok(resumed)
    summary = json.loads((jobs["tmp"] / "killed" / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("step-0000021")  # the torn step-0000028 was ignored
    assert summary["steps"] == MAX_STEPS and summary["steps_this_run"] == MAX_STEPS - 21
    assert not (jobs["tmp"] / "killed" / "checkpoints" / ".tmp-step-0000035-4242").exists()

    a = _final_state(jobs["tmp"] / "reference")
    b = _final_state(jobs["tmp"] / "killed")
    for key in ("backbone", "head", "loss", "optimizer", "progress", "scheduler"):
        _assert_bitwise_equal(a[key], b[key], key)
    exported_a = torch.load(jobs["tmp"] / "reference" / "model" / "backbone.pt", weights_only=True)
    exported_b = torch.load(jobs["tmp"] / "killed" / "model" / "backbone.pt", weights_only=True)
    _assert_bitwise_equal(exported_a, exported_b, "backbone.pt")


def test_resume_with_another_world_size(jobs: dict, tiny_trainset: Path) -> None:
    tmp = jobs["tmp"]
    cfg = _config(tmp, tiny_trainset, "reshaped")  # same settings, output = the copy of the killed job
    one = run_train(cfg, 0)
    _ok(one)
    summary = json.loads((tmp / "reshaped" / "train_summary.json").read_text())
    assert summary["world_size"] == 1 and summary["resumed_from"].endswith("step-0000021")
    assert summary["steps"] == MAX_STEPS and summary["steps_this_run"] == MAX_STEPS - 21
    # 21 steps of 16 images at world 2, then 39 steps of 8 at world 1
    assert summary["samples_seen"] == 21 * 16 + 39 * 8
    assert "world size 1 from a checkpoint taken at world size 2" in one.stderr
    state = _final_state(tmp / "reshaped")
    assert state["world_size"] == 1
    assert bool(state["loss"]["initialised"])
