"""Fixtures for the storage tests: a real S3 API server (moto) on loopback, buckets, a fault proxy.

Reusable elsewhere: copy `s3_server`/`s3_env`/`s3_bucket` (they only wrap
`gbcosface.storage.local_server.LocalS3Server`). Why session scope for the server: it starts in
~0.5 s but the suite runs on shared 2-core machines; each test gets its own bucket instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_fault_proxy import FaultProxy

from gbcosface import s3_env as s3_names
from gbcosface.storage.client import clear_client_cache
from gbcosface.storage.local_server import LocalS3Server

# Variables that could point boto3 elsewhere; every S3 test runs with these removed, so the local
# server is reached through its GBCOSFACE_S3_* names alone (what a cluster's S3 Secret gives a step).
_FOREIGN_ENV = (
    *s3_names.ALL,
    *s3_names.LAUNCHER_AWS_ENV,
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "S3_ENDPOINT_URL",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3Server]:
    server = LocalS3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: LocalS3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LocalS3Server:
    """The environment of a pod talking to the local server: endpoint and credentials from env vars."""
    for name in _FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookups from a test machine
    clear_client_cache()
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: LocalS3Server) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_env.create_bucket(name)
    return name


@pytest.fixture
def fault_proxy(s3_server: LocalS3Server) -> Iterator[FaultProxy]:
    proxy = FaultProxy(s3_server.endpoint_url).start()
    try:
        yield proxy
    finally:
        proxy.stop()
