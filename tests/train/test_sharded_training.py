"""head.sharded in the trainer, on real torchrun jobs (gloo on CPU): exactness and the resume matrix.

Exactness: with 2 ranks a sharded run follows the replicated run: the same global loss at every step
and the same final backbone, head and momentum, with the global-norm gradient clipping active (this
tiny model's gradient norm is ~47, the clip 0.5). Only the order of the reductions differs, so the
two paths differ by rounding, and training amplifies rounding from step to step by a factor that
depends on the CPU's kernels. These runs therefore train in float64 (tests/train/float64_train.py:
torch's default dtype float64; every module keeps it). Why not float32: measured on the 2-core build
machine, the float32 runs ended 6e-7 apart after 12 steps and 8.5e-5 apart (momentum) after a 4-step
resume hop, against a 2e-5 tolerance: they pass or fail with the machine. In float64 the same runs end
1.6e-15 and 8.9e-16 apart, so TIGHT (rtol 1e-9, atol 1e-12) holds with a margin of ~1e3 even if another
CPU's kernels amplify rounding a thousand times more, while a wrong shard, scale or sync is off by 1e-3
or more. The cos_v buffer stays float32 (as in production), so it is
compared to one float32 ulp, and the logged losses (printed with 4 decimals) to one unit of the last
printed digit. lr 0.01 and `head.init: normal` keep the amplification small: at lr 0.1 with the
unit-norm init this tiny model's first steps amplify rounding ~700x per 2 steps (measured in float32),
which would test the chaos of early training instead of the sharding; that the sharded head starts
from the replicated head's unit-norm matrix, and gives its loss and gradients, is checked in
test_classifier.py.
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
TIGHT = {"rtol": 1e-9, "atol": 1e-12}  # float64 runs (see the module docstring)
LOGGED = {"rtol": 0.0, "atol": 1.01e-4}  # losses as logged: 4 decimals, a straddled rounding is one unit
F32_ULP = {"rtol": 2.0**-23, "atol": 0.0}  # the float32 cos_v buffer: one ulp of a float64-equal value


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


def _close(a: dict, b: dict) -> float:
    """Assert the two states equal up to float64 rounding; the largest absolute difference (printed)."""
    worst = 0.0
    for part in ("backbone", "head"):
        for k, t in a[part].items():
            if t.is_floating_point():
                assert t.dtype == torch.float64, f"{part}.{k} is {t.dtype}: the run was not float64"
                torch.testing.assert_close(t, b[part][k], **TIGHT, msg=lambda m, k=k, p=part: f"{p}.{k}: {m}")
                worst = max(worst, (t - b[part][k]).abs().max().item())
    for idx, entry in a["optimizer"]["state"].items():
        torch.testing.assert_close(entry["momentum_buffer"], b["optimizer"]["state"][idx]["momentum_buffer"], **TIGHT)
        worst = max(worst, (entry["momentum_buffer"] - b["optimizer"]["state"][idx]["momentum_buffer"]).abs().max().item())
    assert a["loss"]["initialised"] == b["loss"]["initialised"]
    torch.testing.assert_close(a["loss"]["cos_v"], b["loss"]["cos_v"], **F32_ULP)
    return worst


def _log(proc) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tiny_trainset: Path) -> dict:
    tmp = tmp_path_factory.mktemp("sharded")
    runs = {}
    for sharded in (False, True):
        name = "sharded" if sharded else "replicated"
        proc = run_train(_config(tmp, tiny_trainset, name, sharded, STEPS), 2, float64=True)
        _ok(proc)
        runs[name] = proc
    return {"tmp": tmp, "trainset": tiny_trainset, **runs}


def test_a_sharded_run_follows_the_replicated_run_on_two_ranks(base: dict) -> None:
    rep, sh = _losses(_log(base["replicated"])), _losses(_log(base["sharded"]))
    assert len(rep) == len(sh) == STEPS
    torch.testing.assert_close(torch.tensor(sh), torch.tensor(rep), **LOGGED)
    assert rep[-1] < rep[0]  # it trains
    s_rep, s_sh = _state(base["tmp"] / "replicated", STEPS), _state(base["tmp"] / "sharded", STEPS)
    assert s_sh["head"]["weight"].shape == s_rep["head"]["weight"].shape == (32, 20)  # the whole head is saved
    _close(s_sh, s_rep)
    worst = {part: max((s_sh[part][k] - s_rep[part][k]).abs().max().item() for k, t in s_rep[part].items()
                       if t.is_floating_point()) for part in ("backbone", "head")}
    print("float64 sharded vs replicated over", STEPS, "steps: max |loss diff|",
          max(abs(a - b) for a, b in zip(sh, rep, strict=True)), "(4 printed decimals); max |param diff|", worst)


def _hop(base: dict, src: Path, world: int, start: int, tag: str) -> tuple[Path, dict]:
    """Resume `src`'s newest checkpoint at `world` processes, sharded and replicated; both must agree."""
    tmp, outs = base["tmp"], {}
    for sharded in (True, False):
        name = f"{tag}-{'sharded' if sharded else 'replicated'}"
        shutil.copytree(src / "checkpoints", tmp / name / "checkpoints")
        proc = run_train(_config(tmp, base["trainset"], name, sharded, start + HOP), world, float64=True)
        _ok(proc)
        text = _log(proc)
        assert f"step-{start:07d}" in text and "resumed from" in text, text[-2000:]
        assert _steps(text) == list(range(start + 1, start + HOP + 1))
        outs[sharded] = (_losses(text), _state(tmp / name, start + HOP))
    torch.testing.assert_close(torch.tensor(outs[True][0]), torch.tensor(outs[False][0]), **LOGGED)
    print(f"hop {tag}: float64 sharded vs replicated, max |state diff| {_close(outs[True][1], outs[False][1]):.3g}")
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
