"""Untrusted paths stay inside their roots, and every staging failure a person sees is one line.

Real parts: real files and symlinks in tmp_path, the moto S3 server of conftest.py, and the CLI run as
`python -m gbcosface` in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gbcosface.storage import StorageError, URIError, default_transfer_config, stage
from gbcosface.storage.local_server import LocalS3Server
from gbcosface.storage.manifest import STAGING_DIR
from gbcosface.storage.uri import parse_uri

MiB = 1024 * 1024


def _src(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.bin").write_bytes(b"a" * 100)
    (root / "top.bin").write_bytes(b"t" * 10)
    return root


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gbcosface", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=180)


# -- local destination and source ------------------------------------------------------------------------

def test_a_symlinked_directory_in_the_destination_is_refused_and_nothing_is_written_outside(tmp_path):
    src, dest, outside = _src(tmp_path / "src"), tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "sub").symlink_to(outside)
    with pytest.raises(StorageError, match=r"dest/sub: is a symbolic link inside the staging directory"):
        stage(src, dest, progress=False)
    assert list(outside.iterdir()) == []


def test_a_symlinked_file_in_the_destination_is_refused(tmp_path):
    src, dest, outside = _src(tmp_path / "src"), tmp_path / "dest", tmp_path / "secret.txt"
    dest.mkdir()
    outside.write_text("keep me")
    (dest / "top.bin").symlink_to(outside)
    with pytest.raises(StorageError, match=r"dest/top\.bin: is a symbolic link"):
        stage(src, dest, progress=False)
    assert outside.read_text() == "keep me"


def test_a_symlinked_staging_area_is_refused(tmp_path):
    src, dest, outside = _src(tmp_path / "src"), tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / STAGING_DIR).symlink_to(outside)
    with pytest.raises(StorageError, match=r"\.staging: is a symbolic link"):
        stage(src, dest, progress=False)
    assert list(outside.iterdir()) == []


def test_a_symlink_in_a_file_source_that_leads_outside_is_refused(tmp_path):
    src, dest = _src(tmp_path / "src"), tmp_path / "dest"
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (src / "sub" / "leak.txt").symlink_to(secret)
    with pytest.raises(URIError, match=r"leak\.txt: is a symbolic link to .*secret\.txt, outside the source"):
        stage(f"file://{src}", dest, progress=False)
    assert not (dest / "sub" / "leak.txt").exists()


def test_a_symlinked_directory_in_a_file_source_that_leads_outside_is_refused(tmp_path):
    src, dest, outside = _src(tmp_path / "src"), tmp_path / "dest", tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("x")
    (src / "escape").symlink_to(outside)
    with pytest.raises(URIError, match=r"escape: is a symbolic link to .*outside, outside the source"):
        stage(src, dest, progress=False)


def test_a_symlink_that_stays_inside_the_source_is_staged_as_its_target(tmp_path):
    src, dest = _src(tmp_path / "src"), tmp_path / "dest"
    (src / "alias.bin").symlink_to(src / "sub" / "a.bin")
    result = stage(src, dest, progress=False)
    assert (dest / "alias.bin").read_bytes() == b"a" * 100 and not (dest / "alias.bin").is_symlink()
    assert {e.key for e in result.manifest.entries} == {"alias.bin", "sub/a.bin", "top.bin"}


def test_a_destination_that_is_a_file_is_one_line_from_the_cli(tmp_path):
    src = _src(tmp_path / "src")
    (tmp_path / "dest").write_text("a file")
    proc = _cli("stage", "--src", str(src), "--dest", str(tmp_path / "dest"), "--no-progress")
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'dest'}: exists and is not a directory; "
                                                "cannot stage into it"]
    below = _cli("stage", "--src", str(src), "--dest", str(tmp_path / "dest" / "below"), "--no-progress")
    assert below.returncode == 5 and len(below.stderr.strip().splitlines()) == 1, below.stderr
    assert "cannot create the staging directory: Not a directory" in below.stderr


# -- S3 ------------------------------------------------------------------------------------------------

def test_an_empty_segment_after_the_bucket_is_refused_with_the_normal_form():
    with pytest.raises(URIError, match=r"s3://bkt//prefix: empty path segment .*write s3://bkt/prefix"):
        parse_uri("s3://bkt//prefix")
    assert parse_uri("s3://bkt/prefix/").uri == "s3://bkt/prefix/"


@pytest.mark.integration
def test_a_key_longer_than_the_filesystem_allows_is_refused_before_anything_is_staged(
    s3_bucket: str, s3_env: LocalS3Server, tmp_path: Path
) -> None:
    client = s3_env.client()
    client.put_object(Bucket=s3_bucket, Key="ds/a-small-file.bin", Body=b"x")
    long_key = "ds/" + "k" * 300
    client.put_object(Bucket=s3_bucket, Key=long_key, Body=b"y")
    dest = tmp_path / "dest"
    with pytest.raises(URIError, match=r"has a path segment of 300 bytes; the filesystem of .* allows 255"):
        stage(f"s3://{s3_bucket}/ds", dest, progress=False)
    assert not (dest / "a-small-file.bin").exists()
    proc = _cli("stage", "--src", f"s3://{s3_bucket}/ds", "--dest", str(dest), "--no-progress",
                env={**os.environ})
    assert proc.returncode == 5 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "(300 characters)" in proc.stderr  # the key is clipped, not echoed in full


@pytest.mark.integration
def test_a_large_object_changed_between_head_and_ranged_get_is_a_storage_error(
    s3_bucket: str, s3_env: LocalS3Server, tmp_path: Path
) -> None:
    writer = s3_env.client()
    writer.put_object(Bucket=s3_bucket, Key="ds/big.rec", Body=os.urandom(6 * MiB))
    client = s3_env.client()  # its own credentials: the suite runs with no AWS_* variables

    def overwrite(**kwargs):  # right after the stager's HEAD: someone rewrites the object
        writer.put_object(Bucket=s3_bucket, Key="ds/big.rec", Body=os.urandom(6 * MiB))

    client.meta.events.register("after-call.s3.HeadObject", overwrite)
    tc = default_transfer_config(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    with pytest.raises(StorageError, match=r"big\.rec: the object changed while staging"):
        stage(f"s3://{s3_bucket}/ds", tmp_path / "dest", progress=False, client=client, transfer_config=tc)
    assert not (tmp_path / "dest" / "big.rec").exists()
