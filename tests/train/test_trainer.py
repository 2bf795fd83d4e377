"""The trainer in one process (world 1, no process group): exports, resume exactness, refusal of a
checkpoint that holds code, non-finite losses, and checkpoints on a real S3 API server (moto)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from gbcosface.config import from_dict
from gbcosface.train import checkpoint
from gbcosface.train.checkpoint import CheckpointError
from gbcosface.train.trainer import NonFiniteLossError, train

from .conftest import tiny_config

pytestmark = pytest.mark.usefixtures("bare_process")


def _cfg(trainset: Path, output: str, **sections: dict):
    return from_dict(tiny_config(trainset, output, **sections))


def _tensors_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], dict):
            _tensors_equal(a[k], b[k])
        elif isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k


def test_single_process_run_writes_outputs_and_resumes_exactly(tmp_path: Path, tiny_trainset: Path) -> None:
    straight = train(_cfg(tiny_trainset, str(tmp_path / "a"), schedule={"max_steps": 50}))
    assert straight["steps"] == 50 and straight["world_size"] == 1 and straight["resumed_from"] is None
    out = tmp_path / "a"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["config_hash"] == straight["config_hash"] and summary["num_classes"] == 20
    assert json.loads((out / "model" / "backbone.json").read_text())["width"] == 8
    assert [r.step for r in checkpoint.list_complete(str(out))] == [40, 50]  # keep_last 2

    # the same run in two legs: 23 steps (final checkpoint at 23, inside epoch 0), then resumed to 50
    first = train(_cfg(tiny_trainset, str(tmp_path / "b"), schedule={"max_steps": 23}))
    assert first["steps"] == 23
    second = train(_cfg(tiny_trainset, str(tmp_path / "b"), schedule={"max_steps": 50}))
    assert second["resumed_from"].endswith("step-0000023") and second["steps_this_run"] == 27
    a = checkpoint.read_file(checkpoint.latest_complete(str(out)), checkpoint.STATE_FILE)
    b = checkpoint.read_file(checkpoint.latest_complete(str(tmp_path / "b")), checkpoint.STATE_FILE)
    for key in ("backbone", "head", "loss", "optimizer"):
        _tensors_equal(a[key], b[key])
    assert a["progress"] == b["progress"]


def test_resume_refuses_a_checkpoint_holding_code(tmp_path: Path, tiny_trainset: Path) -> None:
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = checkpoint.to_bytes({"format": 1, "backbone": RunsCode()})
    checkpoint.save(str(tmp_path / "run"), 10, {checkpoint.STATE_FILE: evil, checkpoint.RNG_FILE: evil}, {})
    with pytest.raises(CheckpointError, match=r"step-0000010.*refused"):
        train(_cfg(tiny_trainset, str(tmp_path / "run"), schedule={"max_steps": 12}))
    assert not marker.exists()


def test_non_finite_loss_stops_naming_step_and_term(tmp_path: Path, tiny_trainset: Path) -> None:
    out = str(tmp_path / "run")
    train(_cfg(tiny_trainset, out, schedule={"max_steps": 10}))  # a good checkpoint at step 10
    cfg = _cfg(tiny_trainset, out, schedule={"max_steps": 30}, optim={"lr": 1e30})
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg)
    msg = str(err.value)
    assert "at step 12 " in msg and "loss" in msg and "step-0000010" in msg, msg
    assert checkpoint.latest_complete(out).step == 10  # nothing after the last good checkpoint


def test_max_bad_steps_skips_then_stops(tmp_path: Path, tiny_trainset: Path) -> None:
    cfg = _cfg(tiny_trainset, str(tmp_path / "run"), schedule={"max_steps": 30},
               run={"max_bad_steps": 2}, loss={"params": {"s": 1e39}})  # s overflows float32: inf logits
    with pytest.raises(NonFiniteLossError, match=r"at step 3 .*3 non-finite step"):
        train(cfg)


@pytest.mark.integration
def test_checkpoints_and_outputs_on_s3(tmp_path: Path, tiny_trainset: Path, s3_server,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from gbcosface.storage import get_bytes, list_uri
    from gbcosface.storage.client import clear_client_cache

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    clear_client_cache()
    s3_server.create_bucket("runs")
    uri = "s3://runs/exp/run-1"
    train(_cfg(tiny_trainset, uri, schedule={"max_steps": 23}))
    keys = list_uri(uri)
    assert {"config.yaml", "train_summary.json", "model/backbone.pt", "model/backbone.json"} <= set(keys)
    ckpts = sorted({k.split("/")[1] for k in keys if k.startswith("checkpoints/")})
    assert ckpts == ["step-0000020", "step-0000023"]  # step 10 pruned (keep_last 2)
    for name in ("COMPLETE", "state.pt", "rng.pt", "meta.json"):
        assert f"checkpoints/step-0000023/{name}" in keys

    # a torn upload of a later step (no marker) must be ignored
    from gbcosface.storage import put_bytes

    put_bytes(f"{uri}/checkpoints/step-0000030/state.pt", b"torn")
    resumed = train(_cfg(tiny_trainset, uri, schedule={"max_steps": 50}))
    assert resumed["resumed_from"] == f"{uri}/checkpoints/step-0000023"
    local = train(_cfg(tiny_trainset, str(tmp_path / "local"), schedule={"max_steps": 50}))
    assert local["steps"] == resumed["steps"] == 50
    a = checkpoint.read_file(checkpoint.latest_complete(uri), checkpoint.STATE_FILE)
    b = checkpoint.read_file(checkpoint.latest_complete(str(tmp_path / "local")), checkpoint.STATE_FILE)
    for key in ("backbone", "head", "loss", "optimizer"):
        _tensors_equal(a[key], b[key])
    summary = json.loads(get_bytes(f"{uri}/train_summary.json"))
    assert summary["resumed_from"].startswith("s3://runs/")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_with_clipping_and_channels_last(tmp_path: Path, tiny_trainset: Path, amp: str) -> None:
    out = tmp_path / amp
    summary = train(_cfg(tiny_trainset, str(out), schedule={"max_steps": 6},
                         optim={"clip_grad_norm": 5.0},
                         run={"amp": amp, "channels_last": True, "deterministic": False}))
    assert summary["steps"] == 6 and summary["amp"] == amp
    assert all(v == v and abs(v) != float("inf") for v in summary["final_loss_terms"].values())
    state = checkpoint.read_file(checkpoint.latest_complete(str(out)), checkpoint.STATE_FILE)
    if amp == "fp16":
        assert state["scaler"]["scale"] > 0  # the grad scaler's state travels with the checkpoint
    else:
        assert state["scaler"] == {}


def test_metrics_exporter_sees_steps(tmp_path: Path, tiny_trainset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from gbcosface.train.trainer import Trainer

    from .conftest import free_port

    seen = []
    original = Trainer._metrics

    def keep(self):
        metrics = original(self)
        seen.append(metrics)
        return metrics

    monkeypatch.setattr(Trainer, "_metrics", keep)
    train(_cfg(tiny_trainset, str(tmp_path / "run"), schedule={"max_steps": 4}, run={"metrics_port": free_port()}))
    samples = [s for fam in text_string_to_metric_families(generate_latest(seen[0].registry).decode())
               for s in fam.samples]
    step = [s.value for s in samples if s.name == "gbcosface_train_step"]
    assert step == [4.0]
    phases = {s.labels["phase"]: s.value for s in samples if s.name == "gbcosface_train_phase"}
    assert phases["done"] == 1.0 and phases["training"] == 0.0
    assert [s.labels["local_rank"] for s in samples if s.name == "gbcosface_train_step"] == ["0"]


def test_validation_keeps_the_best_backbone(tmp_path: Path, tiny_trainset: Path) -> None:
    import numpy as np

    from gbcosface.data.bin_sets import write_bin
    from gbcosface.models import load_backbone

    from .conftest import _identity_image

    rng = np.random.default_rng(7)
    images, issame = [], []
    for i in range(40):  # 20 genuine and 20 impostor pairs of the training identities
        a = i % 20
        b = a if i % 2 == 0 else (a + 1 + i // 2) % 20
        images += [_identity_image(a, 0, rng), _identity_image(b, 1, rng)]
        issame.append(a == b)
    val_dir = tmp_path / "val"
    val_dir.mkdir()
    write_bin(val_dir / "tiny.bin", images, issame)

    out = tmp_path / "run"
    summary = train(_cfg(tiny_trainset, str(out), schedule={"max_steps": 25},
                         data={"val_dir": str(val_dir), "val_targets": ["tiny"]}, run={"val_every": 10}))
    best = summary["best"]
    assert best is not None and best["step"] in (10, 20, 25)
    last = summary["last_validation"]["tiny"]
    assert 0.0 <= last["accuracy"] <= 1.0 and last["xnorm"] > 0
    assert best["mean_accuracy"] >= last["accuracy"]
    recorded = json.loads((out / "model" / "best" / "val.json").read_text())
    assert recorded["step"] == best["step"] and recorded["mean_accuracy"] == best["mean_accuracy"]
    model = load_backbone(out / "model" / "best" / "backbone.pt")
    assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 32)
    state = checkpoint.read_file(checkpoint.latest_complete(str(out)), checkpoint.STATE_FILE)
    assert state["progress"]["best_step"] == best["step"]  # a resume keeps the best-so-far
