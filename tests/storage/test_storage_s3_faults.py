"""Staging through a misbehaving network: transient faults, interrupted runs, objects that change.

The fault proxy sits between boto3 and the real moto server on 127.0.0.1 and counts every request,
so "not fetched again" is checked by counting GETs, not by trusting the stager's own report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from s3_fault_proxy import FaultProxy

from gbcosface.storage import StorageError, default_transfer_config, stage, upload, verify_dir
from gbcosface.storage.local_server import LocalS3Server
from gbcosface.storage.manifest import STAGING_DIR

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def _files(root: Path, n: int, size: int = 20_000) -> dict[str, bytes]:
    files = {f"part-{i:03d}.bin": os.urandom(size) for i in range(n)}
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return files


def _visible(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file() and STAGING_DIR not in p.parts)


def test_transient_faults_are_retried_and_the_result_verifies(
    s3_bucket: str, tmp_path: Path, fault_proxy: FaultProxy
) -> None:
    files = _files(tmp_path / "src", 6)
    big = os.urandom(3 * MiB + 17)
    (tmp_path / "src" / "big.rec").write_bytes(big)
    up = upload(tmp_path / "src", f"s3://{s3_bucket}/ds")  # directly to moto, not through the proxy
    # One or two faults per object, so that each request needs at most a couple of backoffs.
    fault_proxy.add(503, method="GET", path_contains="list-type")
    fault_proxy.add("reset", method="GET", path_contains="/ds/part-000")
    fault_proxy.add(500, method="GET", path_contains="/ds/part-001")
    fault_proxy.add(503, method="GET", path_contains="/ds/part-002")
    fault_proxy.add("truncate", method="GET", path_contains="/ds/part-003")
    fault_proxy.add("reset", method="GET", path_contains="/ds/part-004")
    fault_proxy.add(503, method="GET", path_contains="/ds/part-004")
    fault_proxy.add(503, method="HEAD", path_contains="/ds/big.rec")
    fault_proxy.add("reset", method="GET", path_contains="/ds/big.rec")
    fault_proxy.add(500, method="GET", path_contains="/ds/big.rec")
    fault_proxy.add("truncate", method="GET", path_contains="/ds/big.rec")
    planned = sum(f.times for f in fault_proxy.faults)
    tc = default_transfer_config(multipart_threshold=2 * MiB, multipart_chunksize=1 * MiB)

    dest = tmp_path / "dest"
    result = stage(
        f"s3://{s3_bucket}/ds", dest, endpoint_url=fault_proxy.url, transfer_config=tc, progress=False
    )

    assert all(f.times == 0 for f in fault_proxy.faults), "every planned fault must actually have happened"
    assert len(fault_proxy.injected) == planned
    assert result.manifest.hash == up.hash
    verify_dir(dest, up, allow_extra=False)
    assert (dest / "big.rec").read_bytes() == big and len(files) == 6


def test_an_interrupted_stage_resumes_without_refetching(
    s3_bucket: str, tmp_path: Path, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(tmp_path / "src", 5)
    up = upload(tmp_path / "src", f"s3://{s3_bucket}/ds")
    # The last file (same sizes: key order) keeps failing until the retries run out.
    fault_proxy.add(503, times=100, method="GET", path_contains="/ds/part-004")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    dest = tmp_path / "dest"
    with pytest.raises(StorageError, match=r"part-004.bin: S3 error (SlowDown|503)"):
        stage(f"s3://{s3_bucket}/ds", dest, endpoint_url=fault_proxy.url, workers=1, progress=False)
    assert _visible(dest) == [f"part-{i:03d}.bin" for i in range(4)]
    assert not (dest / STAGING_DIR / "partial").exists()
    for name in _visible(dest):
        assert (dest / name).read_bytes() == files[name]
    done_mtimes = {name: (dest / name).stat().st_mtime_ns for name in _visible(dest)}

    fault_proxy.clear()
    result = stage(f"s3://{s3_bucket}/ds", dest, endpoint_url=fault_proxy.url, workers=1, progress=False)
    assert fault_proxy.count("GET", "/ds/") == 1 and fault_proxy.count("GET", "/ds/part-004") == 1
    assert (result.fetched, result.reused) == (1, 4)
    assert {n: (dest / n).stat().st_mtime_ns for n in done_mtimes} == done_mtimes
    verify_dir(dest, up, allow_extra=False)


def test_a_killed_stage_leaves_no_visible_partial_file_and_resumes(
    s3_bucket: str, tmp_path: Path, fault_proxy: FaultProxy, s3_env: LocalS3Server
) -> None:
    files = _files(tmp_path / "src", 5, size=200_000)
    up = upload(tmp_path / "src", f"s3://{s3_bucket}/ds")
    fault_proxy.add("stall", method="GET", path_contains="/ds/part-003")
    dest = tmp_path / "dest"
    code = textwrap.dedent(f"""
        from gbcosface.storage.stage import stage
        stage({f"s3://{s3_bucket}/ds"!r}, {str(dest)!r}, workers=1, progress=False, endpoint_url={fault_proxy.url!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
    try:
        assert fault_proxy.stalled.wait(60), "the stage never reached the stalled download"
        proc.kill()
    finally:
        proc.kill()
        proc.wait(30)
    fault_proxy.release()
    # Killed mid-download of part-003: the finished files are complete; part-003 is not visible.
    assert _visible(dest) == ["part-000.bin", "part-001.bin", "part-002.bin"]
    for name in _visible(dest):
        assert (dest / name).read_bytes() == files[name]
    leftovers = list((dest / STAGING_DIR / "partial").rglob("*"))  # the half download, hidden
    assert all(STAGING_DIR in p.parts for p in leftovers)

    fault_proxy.clear()
    result = stage(f"s3://{s3_bucket}/ds", dest, endpoint_url=fault_proxy.url, workers=2, progress=False)
    assert fault_proxy.count("GET", "/ds/") == 2
    assert fault_proxy.count("GET", "/ds/part-003") == 1 and fault_proxy.count("GET", "/ds/part-004") == 1
    assert (result.fetched, result.reused) == (2, 3)
    assert not (dest / STAGING_DIR / "partial").exists()
    verify_dir(dest, up, allow_extra=False)


def test_an_object_replaced_during_staging_is_detected(
    s3_bucket: str, tmp_path: Path, fault_proxy: FaultProxy, s3_env: LocalS3Server
) -> None:
    _files(tmp_path / "src", 3)
    upload(tmp_path / "src", f"s3://{s3_bucket}/ds")

    def overwrite() -> None:  # runs after the listing, just before the GET reaches the server
        s3_env.client().put_object(Bucket=s3_bucket, Key="ds/part-001.bin", Body=b"replaced")

    fault_proxy.add(overwrite, method="GET", path_contains="/ds/part-001")
    dest = tmp_path / "dest"
    with pytest.raises(StorageError, match=r"part-001.bin: the object changed while staging"):
        stage(f"s3://{s3_bucket}/ds", dest, endpoint_url=fault_proxy.url, workers=1, progress=False)
    assert "part-001.bin" not in _visible(dest)
    assert not (dest / STAGING_DIR / "partial").exists()
