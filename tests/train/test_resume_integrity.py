"""A restart never destroys what it may need (issue 21, point 1).

- Every object of a checkpoint is checked against the manifest its COMPLETE marker holds (size and
  sha256), locally and on a real S3 API server (moto): a truncated `state.pt`, a byte flipped under
  the object's own sha256 metadata, and a `state.pt` swapped in from another checkpoint are refused.
- A restart reads and verifies before it deletes anything, falls back to the newest checkpoint that
  verifies (naming the one it skipped and why), and prunes only after a newer checkpoint was written
  and verified; the run that fell back ends bitwise where an undisturbed run ends.
- A checkpoint of another model (another backbone width) is refused in one line naming the
  checkpoint, the tensors and both config hashes; `run.checkpoint_every=0` is a config error.

Before this change (main 6def101) a restart pruned first: with keep_last=1 it deleted the good
checkpoints and then failed on the damaged newest one; swapped files resumed silently; the width
change was a 120-line size-mismatch traceback; checkpoint_every=0 divided by zero at step 1.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import pytest
import torch

from gbcosface.config import ConfigError, from_dict
from gbcosface.train import checkpoint
from gbcosface.train.checkpoint import CheckpointConfigError, Checkpointer, CheckpointError
from gbcosface.train.trainer import train

from .conftest import run_train, tiny_config, write_config

pytestmark = pytest.mark.usefixtures("bare_process")


@pytest.fixture
def s3_run(s3_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A run prefix in a fresh bucket of the local S3 server, with the pod's env variables set."""
    from gbcosface.storage.client import clear_client_cache

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    clear_client_cache()
    bucket = f"ck-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    return f"s3://{bucket}/runs/r1"


def _cfg(trainset: Path, output: str, **sections: dict):
    return from_dict(tiny_config(trainset, output, **sections))


def _save(out: str, step: int) -> checkpoint.CheckpointRef:
    files = {checkpoint.STATE_FILE: checkpoint.to_bytes({"step": step, "w": torch.full((64,), float(step))}),
             checkpoint.RNG_FILE: checkpoint.to_bytes({"ranks": []})}
    return checkpoint.save(out, step, files, {"epoch": 0})


def _steps_present(out: str) -> list[int]:
    return [r.step for r in checkpoint.list_complete(out)]


def _s3_object(uri: str) -> tuple[str, str]:
    from gbcosface.storage import parse_uri

    loc = parse_uri(uri)
    return loc.bucket, loc.key


# ------------------------------------------------------------------------------- verify on read
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_swapped_state_file_is_refused_against_the_manifest(where: str, tmp_path: Path, request) -> None:
    """state.pt of step 10 put into step 20: sound bytes (on S3 with matching sha256 metadata), wrong file."""
    from gbcosface.storage import get_bytes, put_bytes

    out = request.getfixturevalue("s3_run") if where == "s3" else str(tmp_path / "run")
    old, new = _save(out, 10), _save(out, 20)
    put_bytes(new.file(checkpoint.STATE_FILE), get_bytes(old.file(checkpoint.STATE_FILE)))  # sha256 metadata fits
    with pytest.raises(CheckpointError, match=r"step-0000020/state\.pt: sha256 .* manifest"):
        checkpoint.read_file(new, checkpoint.STATE_FILE)
    with pytest.raises(CheckpointError, match=r"step-0000020/state\.pt"):
        checkpoint.load(new)
    assert checkpoint.load(old).state["step"] == 10


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_truncated_state_file_is_refused_by_size(where: str, tmp_path: Path, request) -> None:
    from gbcosface.storage import get_bytes, put_bytes

    out = request.getfixturevalue("s3_run") if where == "s3" else str(tmp_path / "run")
    ref = _save(out, 10)
    data = get_bytes(ref.file(checkpoint.STATE_FILE))
    put_bytes(ref.file(checkpoint.STATE_FILE), data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"state\.pt: {len(data) // 2} bytes but the manifest .* {len(data)}"):
        checkpoint.load(ref)


def test_a_byte_flipped_under_the_same_s3_metadata_is_refused(s3_run: str) -> None:
    from gbcosface.storage import get_client

    ref = _save(s3_run, 10)
    bucket, key = _s3_object(ref.file(checkpoint.STATE_FILE))
    client = get_client()
    obj = client.get_object(Bucket=bucket, Key=key)
    data, meta = bytearray(obj["Body"].read()), obj["Metadata"]
    assert meta.get("sha256")  # our uploads record it
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=meta)
    with pytest.raises(CheckpointError, match=r"step-0000010/state\.pt: .*sha256"):
        checkpoint.load(ref)


def test_the_local_marker_holds_the_manifest_of_every_file(tmp_path: Path) -> None:
    from gbcosface.storage import parse_manifest, sha256_file

    ref = _save(str(tmp_path), 3)
    manifest = parse_manifest((Path(ref.uri) / "COMPLETE").read_bytes())
    assert [e.key for e in manifest.entries] == ["meta.json", "rng.pt", "state.pt"]
    for e in manifest.entries:
        assert e.size == (Path(ref.uri) / e.key).stat().st_size and e.sha256 == sha256_file(Path(ref.uri) / e.key)


def test_a_checkpoint_with_an_empty_marker_still_loads(tmp_path: Path) -> None:
    """Markers written before manifests existed were empty: such checkpoints stay resumable."""
    ref = _save(str(tmp_path), 3)
    (Path(ref.uri) / "COMPLETE").write_bytes(b"")
    assert checkpoint.load(ref).state["step"] == 3


# ---------------------------------------------------------------------- the Checkpointer lifecycle
def test_load_latest_falls_back_and_deletes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = str(tmp_path)
    for s in (10, 20, 30):
        _save(out, s)
    state30 = Path(out) / "checkpoints" / "step-0000030" / "state.pt"
    state30.write_bytes(state30.read_bytes()[:100])
    ckpt = Checkpointer(out, keep_last=1)
    with caplog.at_level(logging.WARNING, logger="gbcosface.train"):
        loaded = ckpt.load_latest()
    assert loaded is not None and loaded.ref.step == 20 and loaded.state["step"] == 20
    assert [(r.step, "truncated" in why) for r, why in ckpt.skipped] == [(30, True)]
    assert "skipping checkpoint" in caplog.text and "step-0000030" in caplog.text
    assert _steps_present(out) == [10, 20, 30]  # reading never deletes


def test_when_no_checkpoint_verifies_the_error_lists_each_and_all_are_kept(tmp_path: Path) -> None:
    out = str(tmp_path)
    for s in (10, 20):
        ref = _save(out, s)
        (Path(ref.uri) / "rng.pt").unlink()
    with pytest.raises(CheckpointError, match=r"no usable checkpoint.*step-0000020: .*rng\.pt.*step-0000010: .*rng\.pt"):
        Checkpointer(out, keep_last=1).load_latest()
    assert _steps_present(out) == [10, 20]


def test_a_save_is_verified_before_anything_is_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = str(tmp_path)
    ckpt = Checkpointer(out, keep_last=1)
    ckpt.save(10, {checkpoint.STATE_FILE: b"a" * 10}, {})
    real_save = checkpoint.save

    def torn_write(output, step, files, meta):  # the bytes on storage are not the bytes written
        ref = real_save(output, step, files, meta)
        (Path(ref.uri) / checkpoint.STATE_FILE).write_bytes(b"b" * 10)
        return ref

    monkeypatch.setattr(checkpoint, "save", torn_write)
    with pytest.raises(CheckpointError, match=r"step-0000020/state\.pt: sha256"):
        ckpt.save(20, {checkpoint.STATE_FILE: b"a" * 10}, {})
    assert 10 in _steps_present(out)  # the older good checkpoint survives a bad write


def test_prune_after_a_fallback_keeps_the_new_checkpoint_and_the_skipped_newer_one(tmp_path: Path) -> None:
    out = str(tmp_path)
    for s in (10, 20, 30):
        _save(out, s)
    _save(out, 25)  # written after falling back from a damaged 30 to 20
    deleted = checkpoint.prune(out, keep_last=1, newest=25)
    assert deleted == [10, 20] and _steps_present(out) == [25, 30]


# ------------------------------------------------------------------------------ in the trainer
def test_a_restart_with_a_truncated_newest_checkpoint_falls_back_and_loses_nothing(
        tmp_path: Path, tiny_trainset: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = str(tmp_path / "run")
    train(_cfg(tiny_trainset, out, schedule={"max_steps": 30}, run={"keep_last": 3}))
    assert _steps_present(out) == [10, 20, 30]
    state30 = tmp_path / "run" / "checkpoints" / "step-0000030" / "state.pt"
    state30.write_bytes(state30.read_bytes()[: state30.stat().st_size // 3])

    # keep_last 1 and nothing to train: main pruned 10 and 20 here, then failed reading 30
    with caplog.at_level(logging.WARNING, logger="gbcosface.train"):
        summary = train(_cfg(tiny_trainset, out, schedule={"max_steps": 20}, run={"keep_last": 1}))
    assert summary["resumed_from"].endswith("step-0000020")
    assert "skipping checkpoint" in caplog.text and "step-0000030/state.pt" in caplog.text and "truncated" in caplog.text
    assert _steps_present(out) == [10, 20, 30]  # nothing was deleted: no newer checkpoint was written

    # training on past the damaged step rewrites it; pruning follows the verified saves
    resumed = train(_cfg(tiny_trainset, out, schedule={"max_steps": 40}, run={"keep_last": 1}))
    assert resumed["resumed_from"].endswith("step-0000020") and resumed["steps"] == 40
    assert _steps_present(out) == [40]
    straight = str(tmp_path / "straight")
    train(_cfg(tiny_trainset, straight, schedule={"max_steps": 40}, run={"keep_last": 1}))
    a = checkpoint.read_file(checkpoint.latest_complete(out), checkpoint.STATE_FILE)
    b = checkpoint.read_file(checkpoint.latest_complete(straight), checkpoint.STATE_FILE)
    for part in ("backbone", "head", "loss"):
        for k, t in a[part].items():
            assert torch.equal(t, b[part][k]), f"{part}.{k}"  # the fallback resume is exact
    assert a["progress"] == b["progress"]


@pytest.mark.integration
def test_on_s3_a_flipped_byte_in_the_newest_checkpoint_falls_back(tmp_path: Path, tiny_trainset: Path,
                                                                  s3_run: str) -> None:
    from gbcosface.storage import get_client

    train(_cfg(tiny_trainset, s3_run, schedule={"max_steps": 30}, run={"keep_last": 3}))
    assert _steps_present(s3_run) == [10, 20, 30]
    bucket, key = _s3_object(f"{s3_run}/checkpoints/step-0000030/state.pt")
    client = get_client()
    obj = client.get_object(Bucket=bucket, Key=key)
    data = bytearray(obj["Body"].read())
    data[-100] ^= 0x40
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=obj["Metadata"])
    summary = train(_cfg(tiny_trainset, s3_run, schedule={"max_steps": 20}, run={"keep_last": 1}))
    assert summary["resumed_from"] == f"{s3_run}/checkpoints/step-0000020"
    assert _steps_present(s3_run) == [10, 20, 30]


def test_a_config_with_another_backbone_width_is_refused_in_one_line(tmp_path: Path, tiny_trainset: Path) -> None:
    out = str(tmp_path / "run")
    first = train(_cfg(tiny_trainset, out, schedule={"max_steps": 10}))
    wider = tiny_config(tiny_trainset, out, schedule={"max_steps": 20})
    wider["model"]["width"] = 16
    cfg = from_dict(wider)
    with pytest.raises(CheckpointConfigError) as err:
        train(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "step-0000010" in msg, msg
    assert "backbone.conv1.weight saved [8, 3, 3, 3] vs model [16, 3, 3, 3]" in msg, msg
    assert first["config_hash"] in msg and "the config changed" in msg, msg
    from gbcosface.config import config_hash

    assert config_hash(cfg) in msg
    assert _steps_present(out) == [10]  # the checkpoint is kept


def test_the_cli_reports_the_config_mismatch_without_a_traceback(tmp_path: Path, tiny_trainset: Path) -> None:
    out = tmp_path / "run"
    train(_cfg(tiny_trainset, str(out), schedule={"max_steps": 10}))
    wider = tiny_config(tiny_trainset, str(out), schedule={"max_steps": 20})
    wider["model"]["width"] = 16
    proc = run_train(write_config(tmp_path / "wider.yaml", wider), 0)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "does not fit the current model" in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "does not fit" in line]
    assert len(errors) == 1 and "step-0000010" in errors[0]


@pytest.mark.integration
def test_under_torchrun_every_rank_stops_with_the_same_line(tmp_path: Path, tiny_trainset: Path) -> None:
    """Rank 0 decides and the error travels through the broadcast: rank 1 does not wait for rank 0 forever."""
    out = tmp_path / "run"
    train(_cfg(tiny_trainset, str(out), schedule={"max_steps": 10}))
    wider = tiny_config(tiny_trainset, str(out), schedule={"max_steps": 20})
    wider["model"]["width"] = 16
    proc = run_train(write_config(tmp_path / "wider.yaml", wider), 2, timeout=300)
    assert proc.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: {out}/checkpoints/step-0000010: does not fit the current model" in proc.stderr, \
            proc.stderr[-3000:]


@pytest.mark.parametrize("value", [0, -5])
def test_checkpoint_every_must_be_positive(tmp_path: Path, tiny_trainset: Path, value: int) -> None:
    with pytest.raises(ConfigError, match=rf"run\.checkpoint_every must be >= 1, not {value}"):
        _cfg(tiny_trainset, str(tmp_path / "run"), run={"checkpoint_every": value})


def test_other_counts_are_validated_beside_checkpoint_every(tmp_path: Path, tiny_trainset: Path) -> None:
    with pytest.raises(ConfigError, match=r"run\.keep_last must be >= 1, not 0; run\.val_every must be >= 0, not -1"):
        _cfg(tiny_trainset, str(tmp_path / "run"), run={"keep_last": 0, "val_every": -1})


def test_a_copied_run_directory_resumes_after_verification(tmp_path: Path) -> None:
    """Manifests name keys relative to the checkpoint, so a moved or copied run still verifies."""
    out = tmp_path / "a"
    _save(str(out), 10)
    shutil.copytree(out, tmp_path / "b")
    assert Checkpointer(str(tmp_path / "b"), keep_last=1).load_latest().ref.step == 10
