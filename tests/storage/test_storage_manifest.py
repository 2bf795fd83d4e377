"""Manifests: stable hashing, strict reading, verification of a local directory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gbcosface.storage.errors import IntegrityError, ManifestError
from gbcosface.storage.manifest import (
    Manifest,
    ManifestEntry,
    read_manifest,
    verify_dir,
    write_manifest,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(root: Path) -> Manifest:
    files = {"train/train.rec": b"r" * 1000, "train/train.idx": b"0\t0\n", "val/lfw.bin": b"bin"}
    entries = []
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
        entries.append(ManifestEntry(key, len(data), _sha(data), etag=f"e-{key}", version_id=None))
    return Manifest(source="s3://bkt/ds", entries=entries)


def test_hash_depends_on_content_only(tmp_path: Path) -> None:
    m = _tree(tmp_path)
    assert [e.key for e in m.entries] == sorted(e.key for e in m.entries)
    other = Manifest(
        source="file:///elsewhere",
        entries=[
            ManifestEntry(e.key, e.size, e.sha256, etag=None, version_id="v1") for e in reversed(m.entries)
        ],
        created="2020-01-01T00:00:00Z",
    )
    assert other.hash == m.hash  # same bytes from another store at another time: same dataset
    changed = Manifest(m.source, [*m.entries[:-1], ManifestEntry(m.entries[-1].key, 3, _sha(b"BIN"))])
    assert changed.hash != m.hash
    renamed = Manifest(m.source, [*m.entries[:-1], ManifestEntry("val/lfw2.bin", 3, m.entries[-1].sha256)])
    assert renamed.hash != m.hash


def test_duplicate_keys_are_refused() -> None:
    e = ManifestEntry("a", 1, _sha(b"a"))
    with pytest.raises(ManifestError, match="duplicate key 'a'"):
        Manifest("s3://bkt/x", [e, e])


def test_write_read_round_trip_is_atomic(tmp_path: Path) -> None:
    m = _tree(tmp_path / "data")
    out = write_manifest(m, tmp_path / "out" / "manifest.json")
    assert sorted(p.name for p in out.parent.iterdir()) == ["manifest.json"]  # no temporary left
    back = read_manifest(out)
    assert back.entries == m.entries and back.hash == m.hash and back.source == m.source
    data = json.loads(out.read_text())
    assert data["manifest_hash"] == m.hash and data["file_count"] == 3 and data["total_size"] == m.total_size


def test_an_edited_manifest_is_refused(tmp_path: Path) -> None:
    path = write_manifest(_tree(tmp_path / "d"), tmp_path / "m.json")
    data = json.loads(path.read_text())
    data["entries"][0]["size"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=rf"{path}: manifest_hash .* does not match its entries"):
        read_manifest(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["entries"][1].update(sha256="XYZ"),
            r"entries\[1\] \(train/train.rec\): 'sha256' must be 64",
        ),
        (lambda d: d["entries"][0].update(size=-1), r"entries\[0\] \(train/train.idx\): 'size' must be"),
        (lambda d: d["entries"][0].update(key="../x"), r"entries\[0\]: object key '\.\./x'"),
        (lambda d: d["entries"][0].update(extra=1), r"unknown field"),
        (lambda d: d.update(format="other"), "not a dataset manifest"),
        (lambda d: d.update(version=99), "unsupported manifest version 99"),
    ],
)
def test_malformed_manifest_names_file_and_entry(tmp_path: Path, mutate, message: str) -> None:
    path = write_manifest(_tree(tmp_path / "d"), tmp_path / "m.json")
    data = json.loads(path.read_text())
    data.pop("manifest_hash")
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_unreadable_manifests(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest file not found"):
        read_manifest(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ManifestError, match=rf"{bad}: invalid JSON"):
        read_manifest(bad)


def test_verify_dir_names_the_bad_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    m = _tree(root)
    verify_dir(root, m)
    (root / "train/train.rec").write_bytes(b"r" * 999 + b"X")  # same size, different bytes
    (root / "val/lfw.bin").unlink()
    with pytest.raises(IntegrityError) as info:
        verify_dir(root, m)
    text = str(info.value)
    assert "2 problem(s)" in text
    assert f"{root / 'train/train.rec'}: sha256" in text
    assert f"{root / 'val/lfw.bin'}: missing" in text
    assert "train.idx" not in text


def test_verify_dir_size_and_extra_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    m = _tree(root)
    (root / "train/train.idx").write_bytes(b"longer than before")
    with pytest.raises(IntegrityError, match="train.idx: size 18 but the manifest says 4"):
        verify_dir(root, m)
    (root / "train/train.idx").write_bytes(b"0\t0\n")
    (root / "stray.txt").write_text("x")
    (root / ".staging").mkdir()
    (root / ".staging" / "journal.jsonl").write_text("")
    verify_dir(root, m)  # extra files allowed by default; the stager's own files always ignored
    with pytest.raises(IntegrityError, match="stray.txt: not in the manifest"):
        verify_dir(root, m, allow_extra=False)
