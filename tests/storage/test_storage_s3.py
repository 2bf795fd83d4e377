"""Staging, uploads and object helpers against a real S3 API server (moto) on 127.0.0.1."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import pytest
from s3_fault_proxy import FaultProxy

from gbcosface.cli import report_error
from gbcosface.storage import (
    IntegrityError,
    NotFoundError,
    StorageError,
    URIError,
    default_transfer_config,
    delete_prefix,
    download_dir,
    exists,
    get_bytes,
    list_uri,
    put_bytes,
    read_manifest,
    stage,
    upload,
    upload_dir,
    verify_dir,
)
from gbcosface.storage import cli as storage_cli
from gbcosface.storage import objects as objects_mod
from gbcosface.storage.local_server import LocalS3Server, free_port
from gbcosface.storage.manifest import STAGING_DIR

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
# Small thresholds so that a 9 MiB file goes through multipart upload (5 MiB parts, S3's minimum)
# and ranged, parallel download.
SMALL_PARTS = default_transfer_config(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)


def _dataset(root: Path, n_small: int = 5, big: int = 9 * MiB + 123) -> dict[str, bytes]:
    files = {f"small/s{i:03d}.bin": os.urandom(1000 + 37 * i) for i in range(n_small)}
    files["empty.txt"] = b""
    if big:
        files["shards/big.rec"] = os.urandom(big)
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return files


def _visible(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != STAGING_DIR
    )


def _no_partials(dest: Path) -> bool:
    return not (dest / STAGING_DIR / "partial").exists()


def test_round_trip_upload_then_stage_with_multipart(
    s3_bucket: str, tmp_path: Path, s3_env: LocalS3Server
) -> None:
    files = _dataset(tmp_path / "src")
    src_uri = f"s3://{s3_bucket}/datasets/synth"
    up = upload(tmp_path / "src", src_uri, transfer_config=SMALL_PARTS)
    assert [e.key for e in up.entries] == sorted(files)
    big = up.get("shards/big.rec")
    assert big is not None and big.etag is not None and big.etag.endswith("-2")  # a real multipart object
    head = s3_env.client().head_object(Bucket=s3_bucket, Key="datasets/synth/shards/big.rec")
    assert head["Metadata"]["sha256"] == hashlib.sha256(files["shards/big.rec"]).hexdigest()

    dest = tmp_path / "dest"
    result = stage(
        src_uri, dest, manifest_out=tmp_path / "manifest.json", transfer_config=SMALL_PARTS, progress=False
    )
    m = read_manifest(tmp_path / "manifest.json")
    assert m.hash == up.hash == result.manifest.hash
    assert m.source == src_uri
    assert [(e.key, e.size, e.etag) for e in m.entries] == [(e.key, e.size, e.etag) for e in up.entries]
    assert all(e.version_id is None for e in m.entries)  # unversioned bucket
    verify_dir(dest, m, allow_extra=False)
    assert _visible(dest) == sorted(files) and _no_partials(dest)
    assert (result.fetched, result.reused) == (len(files), 0)

    again = stage(src_uri, dest, expected_manifest=tmp_path / "manifest.json", progress=False)
    assert (again.fetched, again.reused) == (0, len(files))


def test_prefix_means_a_directory(s3_bucket: str, tmp_path: Path) -> None:
    put_bytes(f"s3://{s3_bucket}/data/a.txt", b"a")
    put_bytes(f"s3://{s3_bucket}/database/b.txt", b"b")
    result = stage(f"s3://{s3_bucket}/data", tmp_path / "d", progress=False)
    assert [e.key for e in result.manifest.entries] == ["a.txt"]


def test_a_corrupted_small_object_is_refused(s3_bucket: str, tmp_path: Path, s3_env: LocalS3Server) -> None:
    files = _dataset(tmp_path / "src", big=0)
    upload(tmp_path / "src", f"s3://{s3_bucket}/ds")
    key = "ds/small/s002.bin"
    sha = s3_env.client().head_object(Bucket=s3_bucket, Key=key)["Metadata"]["sha256"]
    bad = bytearray(files["small/s002.bin"])
    bad[10] ^= 0xFF  # same size, one flipped byte, our sha256 metadata kept
    s3_env.client().put_object(Bucket=s3_bucket, Key=key, Body=bytes(bad), Metadata={"sha256": sha})

    dest = tmp_path / "dest"
    with pytest.raises(
        IntegrityError, match=rf"s3://{s3_bucket}/{key}: .* stored object is corrupted; refusing it"
    ):
        stage(f"s3://{s3_bucket}/ds", dest, workers=1, progress=False)
    assert "small/s002.bin" not in _visible(dest) and _no_partials(dest)
    for rel in _visible(dest):
        assert (dest / rel).read_bytes() == files[rel]
    with pytest.raises(IntegrityError, match="does not match its sha256 metadata"):
        get_bytes(f"s3://{s3_bucket}/{key}")


def test_a_corrupted_large_object_is_refused(s3_bucket: str, tmp_path: Path, s3_env: LocalS3Server) -> None:
    data = os.urandom(6 * MiB)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.rec").write_bytes(data)
    upload(tmp_path / "src", f"s3://{s3_bucket}/ds", transfer_config=SMALL_PARTS)
    sha = hashlib.sha256(data).hexdigest()
    bad = data[:-1] + bytes([data[-1] ^ 1])
    s3_env.client().put_object(Bucket=s3_bucket, Key="ds/big.rec", Body=bad, Metadata={"sha256": sha})
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError, match=r"ds/big.rec: .* corrupted"):
        stage(f"s3://{s3_bucket}/ds", dest, transfer_config=SMALL_PARTS, progress=False)
    assert _visible(dest) == [] and _no_partials(dest)


def test_an_expected_manifest_that_differs_is_refused(s3_bucket: str, tmp_path: Path) -> None:
    _dataset(tmp_path / "src", big=0)
    good = upload(tmp_path / "src", f"s3://{s3_bucket}/ds")
    data = json.loads(good.to_json())
    data["entries"][2]["sha256"] = hashlib.sha256(b"something else").hexdigest()
    data.pop("manifest_hash")
    (tmp_path / "pinned.json").write_text(json.dumps(data))
    dest = tmp_path / "dest"
    key = data["entries"][2]["key"]
    with pytest.raises(IntegrityError, match=rf"{key}: the bytes have sha256 .* the expected manifest says"):
        stage(f"s3://{s3_bucket}/ds", dest, expected_manifest=tmp_path / "pinned.json", progress=False)
    assert key not in _visible(dest) and _no_partials(dest)


def test_versioned_bucket_restages_the_pinned_versions(tmp_path: Path, s3_env: LocalS3Server) -> None:
    bucket = "versioned-" + os.urandom(4).hex()
    s3_env.create_bucket(bucket, versioned=True)
    files = _dataset(tmp_path / "src", n_small=2, big=0)
    uploaded = upload(tmp_path / "src", f"s3://{bucket}/ds")
    pinned = stage(f"s3://{bucket}/ds", tmp_path / "a", progress=False).manifest
    assert all(e.version_id for e in pinned.entries)
    assert [e.version_id for e in uploaded.entries] == [e.version_id for e in pinned.entries]
    put_bytes(f"s3://{bucket}/ds/small/s000.bin", b"overwritten later")
    latest = stage(f"s3://{bucket}/ds", tmp_path / "b", progress=False).manifest
    assert (tmp_path / "b/small/s000.bin").read_bytes() == b"overwritten later"
    assert latest.hash != pinned.hash
    again = stage(f"s3://{bucket}/ds", tmp_path / "c", expected_manifest=pinned, progress=False)
    assert (tmp_path / "c/small/s000.bin").read_bytes() == files["small/s000.bin"]
    assert again.manifest.hash == pinned.hash
    assert [e.version_id for e in again.manifest.entries] == [e.version_id for e in pinned.entries]


def test_missing_bucket_prefix_and_unreachable_endpoint(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(NotFoundError, match="s3://no-such-bucket-x/ds: no such bucket"):
        stage("s3://no-such-bucket-x/ds", tmp_path / "d", progress=False)
    with pytest.raises(NotFoundError, match=f"s3://{s3_bucket}/nothing: no objects to stage"):
        stage(f"s3://{s3_bucket}/nothing", tmp_path / "d", progress=False)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint"):
        stage(f"s3://{s3_bucket}/ds", tmp_path / "d", endpoint_url=dead, progress=False)


def test_object_helpers(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run = f"s3://{s3_bucket}/runs/r1"
    monkeypatch.setattr(objects_mod, "LIST_PAGE_SIZE", 3)  # force several ListObjectsV2 pages
    for i in range(8):
        put_bytes(f"{run}/checkpoints/step-{i:07d}/state.pt", bytes([i]) * 10)
    put_bytes(f"{run}/config.yaml", b"seed: 0\n", metadata={"config-hash": "abc"})
    put_bytes(f"s3://{s3_bucket}/runs/r10/other", b"x")
    assert get_bytes(f"{run}/config.yaml") == b"seed: 0\n"
    assert exists(f"{run}/config.yaml") and not exists(f"{run}/missing")
    keys = list_uri(run)
    assert keys == [
        "checkpoints/step-0000000/state.pt",
        *[f"checkpoints/step-{i:07d}/state.pt" for i in range(1, 8)],
        "config.yaml",
    ]
    assert delete_prefix(f"{run}/checkpoints") == 8
    assert list_uri(run) == ["config.yaml"]
    assert list_uri(f"s3://{s3_bucket}/runs/r10") == ["other"]  # not touched by deleting r1
    with pytest.raises(URIError, match="refusing to delete a whole bucket"):
        delete_prefix(f"s3://{s3_bucket}")
    with pytest.raises(NotFoundError, match="no such object"):
        get_bytes(f"{run}/missing")


def test_upload_resumes_without_re_putting_unchanged_files(
    s3_bucket: str, tmp_path: Path, fault_proxy: FaultProxy
) -> None:
    _dataset(tmp_path / "src", big=0)
    dest = f"s3://{s3_bucket}/ds"
    first = upload(tmp_path / "src", dest, endpoint_url=fault_proxy.url)
    assert fault_proxy.count("PUT") == len(first.entries)
    fault_proxy.clear()
    (tmp_path / "src" / "small" / "s001.bin").write_bytes(b"changed")
    second = upload(tmp_path / "src", dest, endpoint_url=fault_proxy.url)
    assert fault_proxy.count("PUT") == 1 and fault_proxy.count("PUT", "small/s001.bin") == 1
    assert second.get("small/s001.bin").sha256 == hashlib.sha256(b"changed").hexdigest()
    assert get_bytes(f"{dest}/small/s001.bin") == b"changed"


def test_checkpoint_dir_marker_is_written_last_and_guards_readers(
    s3_bucket: str, tmp_path: Path, fault_proxy: FaultProxy
) -> None:
    ckpt = tmp_path / "step-0000200"
    _dataset(ckpt, n_small=3, big=0)
    uri = f"s3://{s3_bucket}/runs/r1/checkpoints/step-0000200"
    put_bytes(f"{uri}/COMPLETE", b"stale marker from an earlier attempt")
    fault_proxy.clear()
    m = upload_dir(ckpt, uri, marker="COMPLETE", endpoint_url=fault_proxy.url)
    writes = [(meth, p) for meth, p in fault_proxy.requests if meth in ("PUT", "DELETE")]
    assert writes[0] == ("DELETE", f"/{s3_bucket}/runs/r1/checkpoints/step-0000200/COMPLETE")
    assert writes[-1] == ("PUT", f"/{s3_bucket}/runs/r1/checkpoints/step-0000200/COMPLETE")
    assert len(writes) == len(m.entries) + 2

    restored = download_dir(uri, tmp_path / "restored", marker="COMPLETE")
    assert restored.hash == m.hash
    assert json.loads((tmp_path / "restored" / "COMPLETE").read_text())["manifest_hash"] == m.hash
    verify_dir(tmp_path / "restored", m)

    put_bytes(f"{uri}/small/s000.bin", b"tampered after completion")
    with pytest.raises(IntegrityError, match="small/s000.bin"):
        download_dir(uri, tmp_path / "restored2", marker="COMPLETE")
    delete_prefix(f"{uri}/COMPLETE")
    with pytest.raises(NotFoundError, match="incomplete directory \\(no COMPLETE marker\\)"):
        download_dir(uri, tmp_path / "restored3", marker="COMPLETE")


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gbcosface")
    storage_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # what gbcosface.cli.main does: one line, the class's exit code
        return report_error(exc)


def test_cli_upload_and_stage(
    s3_bucket: str, tmp_path: Path, s3_env: LocalS3Server, capsys: pytest.CaptureFixture[str]
) -> None:
    _dataset(tmp_path / "src", big=0)
    uri = f"s3://{s3_bucket}/cli"
    assert (
        _run_cli(
            [
                "upload",
                "--src",
                str(tmp_path / "src"),
                "--dest",
                uri,
                "--endpoint-url",
                s3_env.endpoint_url,
                "--manifest",
                str(tmp_path / "up.json"),
            ]
        )
        == 0
    )
    assert "uploaded 6 files" in capsys.readouterr().out
    rc = _run_cli(
        [
            "stage",
            "--src",
            uri,
            "--dest",
            str(tmp_path / "d"),
            "--manifest",
            str(tmp_path / "m.json"),
            "--expect-manifest",
            str(tmp_path / "up.json"),
            "--workers",
            "3",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "staged 6 files" in out and read_manifest(tmp_path / "m.json").hash in out
    verify_dir(tmp_path / "d", read_manifest(tmp_path / "up.json"))

    put_bytes(f"{uri}/small/s000.bin", b"x" * 1000)  # new bytes (and new sha256 metadata), same size
    rc = _run_cli(
        [
            "stage",
            "--src",
            uri,
            "--dest",
            str(tmp_path / "d2"),
            "--expect-manifest",
            str(tmp_path / "up.json"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 5 and err.startswith("error: ") and "small/s000.bin" in err and "expected manifest" in err
    with pytest.raises(SystemExit):
        _run_cli(["stage", "--src", uri, "--dest", "x", "--workers", "0"])


def test_local_server_stops_cleanly() -> None:
    server = LocalS3Server().start()
    proc = server._proc
    assert proc is not None and proc.poll() is None
    server.create_bucket("probe")
    assert server.client().list_buckets()["Buckets"][0]["Name"] == "probe"
    server.stop()
    assert proc.poll() is not None
