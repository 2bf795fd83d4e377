"""Checkpoint storage: atomic local layout, selection of the newest complete one, pruning, and
`weights_only` loading that refuses pickled code; RNG and full-state round trips."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gbcosface.train import checkpoint, rng
from gbcosface.train import state as train_state
from gbcosface.train.checkpoint import CheckpointError
from gbcosface.train.schedule import EpochLR


def _save(out: Path, step: int) -> checkpoint.CheckpointRef:
    files = {checkpoint.STATE_FILE: checkpoint.to_bytes({"step": step, "w": torch.full((3,), float(step))})}
    return checkpoint.save(str(out), step, files, {"epoch": 0})


def test_step_names_round_trip() -> None:
    assert checkpoint.step_name(42) == "step-0000042"
    assert checkpoint.parse_step("step-0000042") == 42
    assert checkpoint.parse_step("step-12345678") == 12345678
    for bad in ("step-42", ".tmp-step-0000042-1", "step-0000042.old", "model"):
        assert checkpoint.parse_step(bad) is None


def test_save_is_complete_and_leaves_no_temporaries(tmp_path: Path) -> None:
    ref = _save(tmp_path, 7)
    d = tmp_path / "checkpoints" / "step-0000007"
    assert Path(ref.uri) == d
    assert sorted(p.name for p in d.iterdir()) == ["COMPLETE", "meta.json", "state.pt"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000007"]
    assert checkpoint.read_file(ref, checkpoint.STATE_FILE)["step"] == 7


def test_latest_complete_ignores_torn_and_temporary_dirs(tmp_path: Path) -> None:
    assert checkpoint.latest_complete(str(tmp_path)) is None  # no checkpoints directory at all
    _save(tmp_path, 10)
    _save(tmp_path, 20)
    root = tmp_path / "checkpoints"
    torn = root / "step-0000030"  # killed after writing state.pt, before the marker
    torn.mkdir()
    (torn / "state.pt").write_bytes(b"partial")
    (root / ".tmp-step-0000040-123").mkdir()  # killed before the rename
    (root / ".tmp-step-0000040-123" / "COMPLETE").write_bytes(b"")
    (root / "notes.txt").write_text("stray file")
    refs = checkpoint.list_complete(str(tmp_path))
    assert [r.step for r in refs] == [10, 20]
    assert checkpoint.latest_complete(str(tmp_path)).step == 20


def test_prune_keeps_last_k_and_cleans_leftovers(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for s in (5, 10, 15):
        _save(tmp_path, s)
    (root / "step-0000007").mkdir()  # torn, older than the newest complete: garbage
    (root / "step-0000099").mkdir()  # torn, newer: left alone (its step will be rewritten)
    (root / ".tmp-step-0000020-9").mkdir()
    deleted = checkpoint.prune(str(tmp_path), keep_last=2)
    assert deleted == [5, 7]
    assert sorted(p.name for p in root.iterdir()) == ["step-0000010", "step-0000015", "step-0000099"]
    ref = _save(tmp_path, 99)  # rewriting a torn step replaces it
    assert (Path(ref.uri) / "COMPLETE").is_file()


class _RunsCode:
    """Pickles into a call of os.system: what a malicious checkpoint would contain."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_code_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = pickle.dumps({"backbone": {}, "payload": _RunsCode(marker)})
    pickle.loads(evil)  # sanity: a plain unpickler *would* run it
    assert marker.exists()
    marker.unlink()

    buf_path = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": _RunsCode(marker)}, buf_path)
    ref = checkpoint.save(str(tmp_path / "run"), 3, {checkpoint.STATE_FILE: buf_path.read_bytes()}, {})
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.read_file(ref, checkpoint.STATE_FILE)
    assert not marker.exists()


def test_missing_file_in_complete_checkpoint_is_an_error(tmp_path: Path) -> None:
    ref = _save(tmp_path, 1)
    with pytest.raises(CheckpointError, match="rng.pt"):
        checkpoint.read_file(ref, checkpoint.RNG_FILE)


def test_rng_state_round_trips_through_weights_only(tmp_path: Path) -> None:
    rng.seed_everything(123)
    torch.rand(3), np.random.rand(2), random.random()
    saved = checkpoint.from_bytes(checkpoint.to_bytes(rng.capture(torch.device("cpu"))), "rng")
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn(3))
    rng.seed_everything(999)
    rng.restore(saved, torch.device("cpu"))
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn(3))
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2] and np.array_equal(expected[3], got[3])


def test_full_state_round_trips_through_weights_only() -> None:
    from gbcosface.config import OptimConfig, ScheduleConfig
    from gbcosface.losses import get_loss
    from gbcosface.train.classifier import ReplicatedClassifier
    from gbcosface.train.distributed import DistEnv
    from gbcosface.train.optim import build_optimizer

    def build():
        torch.manual_seed(0)
        backbone, head = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)), torch.nn.Linear(4, 3)
        loss = get_loss("gb_cosface")
        opt = build_optimizer(backbone, head, OptimConfig(), 0.1, 0.1)
        sched = EpochLR(opt, ScheduleConfig(), 10)
        scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
        return backbone, head, loss, opt, sched, scaler

    b1, h1, l1, o1, s1, sc1 = build()
    x = torch.randn(8, 4)
    cos = torch.nn.functional.normalize(h1(b1(x)), dim=1)
    out = l1(cos, torch.randint(0, 3, (8,)))
    sc1.scale(out["loss"]).backward()
    sc1.step(o1)
    sc1.update(512.0)
    progress = train_state.Progress(step=5, epoch=1, samples_in_epoch=16, samples_seen=96, best_score=0.9, best_step=4)
    env = DistEnv(0, 0, 1, 1, torch.device("cpu"), None)
    full = train_state.collect(model_state=ReplicatedClassifier(b1, h1, l1, "none", env).full_state(o1),
                               scheduler=s1, scaler=sc1, progress=progress, world_size=2, global_batch=16,
                               config_hash="abc")
    loaded = checkpoint.from_bytes(checkpoint.to_bytes(full), "state")

    b2, h2, l2, o2, s2, sc2 = build()
    got = train_state.restore(loaded, classifier=ReplicatedClassifier(b2, h2, l2, "none", env), optimizer=o2,
                              scheduler=s2, scaler=sc2, where="test")
    assert got == progress
    assert bool(l2.initialised) and torch.equal(l2.cos_v, l1.cos_v)
    assert sc2.get_scale() == 512.0
    for p1, p2 in zip(o1.param_groups[0]["params"], o2.param_groups[0]["params"], strict=True):
        assert torch.equal(o1.state[p1]["momentum_buffer"], o2.state[p2]["momentum_buffer"])
    for a, b in zip(b1.state_dict().values(), b2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
