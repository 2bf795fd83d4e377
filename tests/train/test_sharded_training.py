"""head.sharded in the trainer, on real torchrun jobs (gloo on CPU): exactness and the resume matrix.

Exactness: with 2 ranks a sharded run follows the replicated run: the same global loss at every step
and the same final backbone and head, within float32 tolerance (only the order of the reductions
differs), with the global-norm gradient clipping active (this tiny model's gradient norm is ~47, the
clip 0.5). lr 0.01, not the 0.1 of the other trainer tests: at 0.1 this tiny model's first steps amplify
float32 rounding (measured: 1e-6 apart after step 1, 7e-4 after step 3, in one process where the two
paths differ only in how the soft negative's logsumexp is rounded), which would test the chaos of early
training instead of the sharding. For the same reason the head starts from N(0, 0.01) here
(`head.init: normal`): with the official unit-norm init this tiny model amplifies the two paths'
float32 rounding to ~2e-4 relative in 12 steps; that the sharded head starts from the replicated
head's unit-norm matrix, and gives its loss and gradients, is checked in test_classifier.py.
Resume matrix: the checkpoint always holds the whole head and its whole momentum, so a sharded
checkpoint resumes at another world size (2 -> 1, 1 -> 2, 2 -> 3 with shards of 7, 7 and 6 classes).
Each hop resumes the SAME checkpoint twice, sharded and replicated (whose any-world-size resume is
tested bitwise in test_distributed_integration.py), and the two must train alike; a wrong reshard of
the weight or of the momentum would separate them at the first step. The same-world-size resume of a
sharded run is checked bitwise in test_preemption.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gbcosface.train import checkpoint

from .conftest import run_train, tiny_config, write_config

pytestmark = pytest.mark.integration

STEPS = 12
HOP = 4  # steps trained after each resume


def _ok(proc) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _losses(text: str) -> list[float]:
    return [float(line.split(" loss=")[1].split()[0]) for line in text.splitlines() if " | " in line and " loss=" in line]


def _steps(text: str) -> list[int]:
    out = []
    for line in text.splitlines():
        if " | " in line and " loss=" in line:
            out.append(int(line.split("step ")[1].split("/")[0].split()[0]))
    return out


def _config(tmp: Path, trainset: Path, name: str, sharded: bool, max_steps: int) -> Path:
    cfg = tiny_config(trainset, str(tmp / name), head={"type": "linear", "sharded": sharded, "init": "normal"},
                      optim={"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "clip_grad_norm": 0.5},
                      run={"checkpoint_every": 4, "keep_last": 20, "log_every": 1},
                      schedule={"epochs": 4, "milestones": [2], "max_steps": max_steps})
    return write_config(tmp / f"{name}.yaml", cfg)


def _state(out: Path, step: int) -> dict:
    ref = checkpoint.latest_complete(str(out))
    assert ref is not None and ref.step == step, ref
    return checkpoint.read_file(ref, checkpoint.STATE_FILE)


def _close(a: dict, b: dict, rtol: float = 2e-4, atol: float = 2e-5) -> None:
    for part in ("backbone", "head"):
        for k, t in a[part].items():
            if t.is_floating_point():
                torch.testing.assert_close(t, b[part][k], rtol=rtol, atol=atol, msg=lambda m, k=k, p=part: f"{p}.{k}: {m}")
    for idx, entry in a["optimizer"]["state"].items():
        torch.testing.assert_close(entry["momentum_buffer"], b["optimizer"]["state"][idx]["momentum_buffer"],
                                   rtol=rtol, atol=atol)
    assert a["loss"]["initialised"] == b["loss"]["initialised"]
    torch.testing.assert_close(a["loss"]["cos_v"], b["loss"]["cos_v"], rtol=1e-4, atol=1e-6)


def _log(proc) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tiny_trainset: Path) -> dict:
    tmp = tmp_path_factory.mktemp("sharded")
    runs = {}
    for sharded in (False, True):
        name = "sharded" if sharded else "replicated"
        proc = run_train(_config(tmp, tiny_trainset, name, sharded, STEPS), 2)
        _ok(proc)
        runs[name] = proc
    return {"tmp": tmp, "trainset": tiny_trainset, **runs}


def test_a_sharded_run_follows_the_replicated_run_on_two_ranks(base: dict) -> None:
    rep, sh = _losses(_log(base["replicated"])), _losses(_log(base["sharded"]))
    assert len(rep) == len(sh) == STEPS
    torch.testing.assert_close(torch.tensor(sh), torch.tensor(rep), rtol=1e-4, atol=1e-5)
    assert rep[-1] < rep[0]  # it trains
    s_rep, s_sh = _state(base["tmp"] / "replicated", STEPS), _state(base["tmp"] / "sharded", STEPS)
    assert s_sh["head"]["weight"].shape == s_rep["head"]["weight"].shape == (32, 20)  # the whole head is saved
    _close(s_sh, s_rep)
    worst = {part: max((s_sh[part][k] - s_rep[part][k]).abs().max().item() for k, t in s_rep[part].items()
                       if t.is_floating_point()) for part in ("backbone", "head")}
    print("sharded vs replicated over", STEPS, "steps: max |loss diff|",
          max(abs(a - b) for a, b in zip(sh, rep, strict=True)), "(4 printed decimals); max |param diff|", worst)


def _hop(base: dict, src: Path, world: int, start: int, tag: str) -> tuple[Path, dict]:
    """Resume `src`'s newest checkpoint at `world` processes, sharded and replicated; both must agree."""
    tmp, outs = base["tmp"], {}
    for sharded in (True, False):
        name = f"{tag}-{'sharded' if sharded else 'replicated'}"
        shutil.copytree(src / "checkpoints", tmp / name / "checkpoints")
        proc = run_train(_config(tmp, base["trainset"], name, sharded, start + HOP), world)
        _ok(proc)
        text = _log(proc)
        assert f"step-{start:07d}" in text and "resumed from" in text, text[-2000:]
        assert _steps(text) == list(range(start + 1, start + HOP + 1))
        outs[sharded] = (_losses(text), _state(tmp / name, start + HOP))
    torch.testing.assert_close(torch.tensor(outs[True][0]), torch.tensor(outs[False][0]), rtol=1e-4, atol=1e-5)
    _close(outs[True][1], outs[False][1])
    return tmp / f"{tag}-sharded", outs[True][1]


def test_a_sharded_checkpoint_resumes_at_other_world_sizes(base: dict) -> None:
    """2 -> 1 -> 2 -> 3 (shards 7/7/6), each hop sharded and replicated from the same checkpoint."""
    src = base["tmp"] / "sharded"
    step = STEPS
    for world, tag in ((1, "w2to1"), (2, "w1to2"), (3, "w2to3")):
        src, state = _hop(base, src, world, step, tag)
        step += HOP
        assert state["world_size"] == world
        assert state["head"]["weight"].shape == (32, 20)
