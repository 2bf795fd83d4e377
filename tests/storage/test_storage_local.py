"""Staging and object helpers over local paths (file:// and plain): the pipeline without S3."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from gbcosface.storage import (
    IntegrityError,
    Manifest,
    ManifestEntry,
    NotFoundError,
    URIError,
    delete_prefix,
    download_dir,
    exists,
    get_bytes,
    list_uri,
    put_bytes,
    stage,
    upload,
    upload_dir,
    verify_dir,
)
from gbcosface.storage.manifest import STAGING_DIR


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)


FILES = {
    "train/train.rec": os.urandom(300_000),
    "train/train.idx": b"0\t0\n1\t100\n",
    "train/property": b"10,112,112",
    "val/lfw.bin": os.urandom(5000),
}


def _visible(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != STAGING_DIR
    )


def test_stage_from_a_local_directory(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _write_tree(src, FILES)
    result = stage(f"file://{src}", dest, manifest_out=tmp_path / "m.json", progress=False)
    m = result.manifest
    assert [e.key for e in m.entries] == sorted(FILES)
    assert all(e.sha256 == hashlib.sha256(FILES[e.key]).hexdigest() for e in m.entries)
    assert all(e.etag is None and e.version_id is None for e in m.entries)
    assert m.source == f"file://{src}"
    assert (result.fetched, result.reused) == (4, 0)
    assert _visible(dest) == sorted(FILES)
    assert not (dest / STAGING_DIR / "partial").exists()
    verify_dir(dest, m)

    again = stage(str(src), dest, progress=False)  # a plain path works too
    assert (again.fetched, again.reused) == (0, 4)
    assert again.manifest.hash == m.hash


def test_a_changed_source_file_is_fetched_again(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _write_tree(src, FILES)
    first = stage(src, dest, progress=False).manifest
    (src / "val/lfw.bin").write_bytes(b"new contents")
    result = stage(src, dest, progress=False)
    assert (result.fetched, result.reused) == (1, 3)
    assert (dest / "val/lfw.bin").read_bytes() == b"new contents"
    assert result.manifest.hash != first.hash


def test_a_locally_damaged_file_is_fetched_again(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _write_tree(src, FILES)
    stage(src, dest, progress=False)
    (dest / "train/train.idx").write_bytes(b"garbage")  # mtime and size change: the journal no longer vouches
    result = stage(src, dest, progress=False)
    assert result.fetched == 1
    assert (dest / "train/train.idx").read_bytes() == FILES["train/train.idx"]


def test_expected_manifest_mismatch_is_refused_and_leaves_nothing_partial(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _write_tree(src, FILES)
    good = stage(src, tmp_path / "first", progress=False).manifest
    entries = [ManifestEntry(e.key, e.size, "0" * 64) if e.key == "val/lfw.bin" else e for e in good.entries]
    with pytest.raises(
        IntegrityError, match=r"val/lfw.bin: the bytes have sha256 .* expected manifest says 0{64}"
    ):
        stage(src, dest, expected_manifest=Manifest(good.source, entries), workers=1, progress=False)
    assert "val/lfw.bin" not in _visible(dest)
    assert not (dest / STAGING_DIR / "partial").exists()
    for key in _visible(dest):  # whatever did land is complete and verified
        assert (dest / key).read_bytes() == FILES[key]


def test_expected_manifest_missing_or_resized_objects_fail_before_any_download(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _write_tree(src, FILES)
    good = stage(src, tmp_path / "first", progress=False).manifest
    (src / "val/lfw.bin").unlink()
    (src / "train/property").write_bytes(b"1000,112,112")
    with pytest.raises(IntegrityError) as info:
        stage(src, dest, expected_manifest=good, progress=False)
    assert "val/lfw.bin: in the expected manifest but not under" in str(info.value)
    assert "train/property: 12 bytes under" in str(info.value)
    assert _visible(dest) == []


def test_expected_manifest_reuses_matching_files_without_a_journal(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _write_tree(src, FILES)
    m = stage(src, dest, progress=False).manifest
    (dest / STAGING_DIR / "journal.jsonl").unlink()
    (src / "extra.txt").write_bytes(b"not part of the pinned dataset")
    result = stage(src, dest, expected_manifest=m, progress=False)
    assert (result.fetched, result.reused) == (0, 4)
    assert not (dest / "extra.txt").exists()


def test_overlapping_source_and_destination_are_refused(tmp_path: Path) -> None:
    _write_tree(tmp_path / "src", FILES)
    with pytest.raises(URIError, match="overlap"):
        stage(tmp_path / "src", tmp_path / "src" / "copy", progress=False)
    with pytest.raises(NotFoundError, match="no such directory"):
        stage(tmp_path / "missing", tmp_path / "d", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="no objects to stage"):
        stage(tmp_path / "empty", tmp_path / "d", progress=False)


def test_local_object_helpers(tmp_path: Path) -> None:
    run = tmp_path / "run"
    put_bytes(run / "config.yaml", b"a: 1\n")
    put_bytes(f"file://{run}/eval/ijbc/metrics.json", b"{}")
    assert get_bytes(run / "config.yaml") == b"a: 1\n"
    assert exists(run / "config.yaml") and not exists(run / "nope")
    assert list_uri(run) == ["config.yaml", "eval/ijbc/metrics.json"]
    with pytest.raises(NotFoundError, match="no such file"):
        get_bytes(run / "nope")
    assert delete_prefix(run / "eval") == 1
    assert list_uri(run) == ["config.yaml"]
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]  # no temporary files left


def test_upload_dir_with_marker_to_a_local_directory(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "step-0000100", tmp_path / "out" / "checkpoints" / "step-0000100"
    _write_tree(ckpt, {"state.pt": os.urandom(1000), "rng.pt": b"rng"})
    m = upload_dir(ckpt, out, marker="COMPLETE")
    assert sorted(p.name for p in out.iterdir()) == ["COMPLETE", "rng.pt", "state.pt"]
    back = download_dir(out, tmp_path / "restored", marker="COMPLETE")
    assert back.hash == m.hash
    assert (tmp_path / "restored" / "COMPLETE").exists()
    (out / "COMPLETE").unlink()
    with pytest.raises(NotFoundError, match="incomplete directory"):
        download_dir(out, tmp_path / "restored2", marker="COMPLETE")


def test_upload_a_single_file_locally(tmp_path: Path) -> None:
    f = tmp_path / "backbone.pt"
    f.write_bytes(b"weights")
    m = upload(f, tmp_path / "model" / "renamed.pt")
    assert (tmp_path / "model" / "renamed.pt").read_bytes() == b"weights"
    assert [e.key for e in m.entries] == ["renamed.pt"]
    upload(f, str(tmp_path / "model2") + "/")
    assert (tmp_path / "model2" / "backbone.pt").read_bytes() == b"weights"
