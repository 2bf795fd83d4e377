"""No secret reaches a log line or a file: `gbcosface -v stage` with credentials in the environment
(a real S3 API server, moto, and the CLI in a subprocess), and the redacting formatter itself."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gbcosface.cli import RedactingFormatter
from gbcosface.errors import REDACTED, redact
from gbcosface.storage.local_server import LocalS3Server

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAGBCOSFACEKEYID01",
    "AWS_SECRET_ACCESS_KEY": "gbcosface/Secret+Access/Key0123456789abcdef",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEBgbcosfaceSessionToken0123456789",
}


@pytest.mark.integration
def test_verbose_stage_with_credentials_logs_no_secret(s3_bucket: str, s3_env: LocalS3Server, tmp_path: Path):
    client = s3_env.client()
    for i in range(3):
        client.put_object(Bucket=s3_bucket, Key=f"ds/f{i}.bin", Body=os.urandom(100))
    env = {**os.environ, **SECRETS}
    log_file = tmp_path / "run.log"
    with open(log_file, "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "gbcosface", "-v", "stage", "--src", f"s3://{s3_bucket}/ds",
             "--dest", str(tmp_path / "dest"), "--manifest", str(tmp_path / "manifest.json"), "--no-progress"],
            stdout=log, stderr=subprocess.STDOUT, env=env, timeout=180,
        )
    text = log_file.read_text()
    assert proc.returncode == 0, text
    assert "staged 3 files" in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for name, value in SECRETS.items():
                assert value.encode() not in content, f"{name} found in {path}"


@pytest.mark.integration
def test_verbose_stage_failure_with_a_traceback_logs_no_secret(s3_env: LocalS3Server, tmp_path: Path):
    env = {**os.environ, **SECRETS}
    proc = subprocess.run(
        [sys.executable, "-m", "gbcosface", "-v", "stage", "--src", "s3://no-such-bucket-gbc/ds",
         "--dest", str(tmp_path / "dest"), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=180,
    )
    assert proc.returncode == 5, proc.stderr
    assert "Traceback" in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    for value in SECRETS.values():
        assert value not in proc.stderr + proc.stdout


def test_the_formatter_redacts_secret_values_headers_and_tracebacks(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    fmt = RedactingFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("botocore.endpoint", logging.DEBUG, __file__, 1,
                               "headers=%s", ({"X-Amz-Security-Token": "opaque-token-from-a-file",
                                               "Authorization": "AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=ab"},),
                               None)
    line = fmt.format(record)
    assert "opaque-token-from-a-file" not in line and "Signature=ab" not in line and REDACTED in line
    try:
        raise RuntimeError(f"failed with key {SECRETS['AWS_SECRET_ACCESS_KEY']}")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    assert SECRETS["AWS_SECRET_ACCESS_KEY"] not in fmt.format(record)
    assert redact("url?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc&x=1") == \
        f"url?X-Amz-Credential={REDACTED}&X-Amz-Signature={REDACTED}&x=1"
