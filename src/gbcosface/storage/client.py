"""The S3 client factory: endpoint, credentials, retries and addressing in one place.

Why one factory: every caller (stage, upload, the trainer's checkpoints, the pipeline steps) must
reach the same store the same way. What each setting comes from, first match wins:
- endpoint: `--endpoint-url` (the argument), else GBCOSFACE_S3_ENDPOINT_URL, else
  `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (boto3's own variables) or `S3_ENDPOINT_URL` (common in
  MinIO/SeaweedFS deployments), else AWS;
- credentials: the `credentials` argument, else GBCOSFACE_S3_ACCESS_KEY_ID +
  GBCOSFACE_S3_SECRET_ACCESS_KEY (+ GBCOSFACE_S3_SESSION_TOKEN), else boto3's standard chain
  (AWS_* variables, profile, IRSA web identity, instance role);
- region: GBCOSFACE_S3_REGION, else AWS_REGION / AWS_DEFAULT_REGION, else us-east-1.
Why project-owned names first: in a KFP step they must not be AWS_*, which KFP's own launcher reads
for the run's artifacts in the same container (`gbcosface.s3_env` cites the backend source). Half a
pair (an access key without its secret) is an error, not a silent fall back to another identity.
Custom endpoints get path-style addressing, because self-hosted stores rarely have wildcard DNS for
virtual-hosted buckets. Retries use botocore's "standard" mode (exponential backoff with jitter on
throttling, 5xx and connection errors) with more attempts than boto3's default, because a
multi-hour pipeline should ride out a store restart. Clients are cached: creating one costs tens of
milliseconds and they are thread-safe.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from gbcosface import s3_env
from gbcosface.storage.errors import NotFoundError, StorageError

ENDPOINT_ENV_VARS = (s3_env.ENDPOINT_URL, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_RETRY_MODE = "standard"
DEFAULT_REGION = "us-east-1"
# Environment variables that change what a client does; part of the cache key.
_ENV_KEYS = (
    *s3_env.ALL,
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
)

_cache: dict[tuple[Any, ...], Any] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class S3Credentials:
    """Static S3 credentials given to boto3 explicitly (instead of its standard chain)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print a secret
        return f"S3Credentials(access_key_id={self.access_key_id!r}, secret_access_key=***)"


def resolve_credentials(credentials: S3Credentials | None = None) -> S3Credentials | None:
    """The argument, else the GBCOSFACE_S3_* pair from the environment, else None (boto3's chain)."""
    if credentials is not None:
        return credentials
    key, secret = os.environ.get(s3_env.ACCESS_KEY_ID), os.environ.get(s3_env.SECRET_ACCESS_KEY)
    if not key and not secret:
        return None
    if not key or not secret:
        have, missing = ((s3_env.ACCESS_KEY_ID, s3_env.SECRET_ACCESS_KEY) if key
                         else (s3_env.SECRET_ACCESS_KEY, s3_env.ACCESS_KEY_ID))
        raise StorageError(f"{have} is set but {missing} is not: set both (or neither, for the standard "
                           "AWS credential chain)")
    return S3Credentials(key, secret, os.environ.get(s3_env.SESSION_TOKEN) or None)


def resolve_region() -> str:
    """GBCOSFACE_S3_REGION, else AWS_REGION / AWS_DEFAULT_REGION, else us-east-1."""
    return next((os.environ[v] for v in (s3_env.REGION, "AWS_REGION", "AWS_DEFAULT_REGION") if os.environ.get(v)),
                DEFAULT_REGION)


def _session(credentials: S3Credentials | None) -> Any:
    # A session per client: boto3's default session is not thread-safe to create clients from.
    creds = resolve_credentials(credentials)
    if creds is None:
        return boto3.session.Session()
    return boto3.session.Session(aws_access_key_id=creds.access_key_id,
                                 aws_secret_access_key=creds.secret_access_key,
                                 aws_session_token=creds.session_token)


def resolve_endpoint(endpoint_url: str | None = None) -> str | None:
    """The S3 endpoint to use: the argument, else the first endpoint variable set, else None (AWS)."""
    url = endpoint_url or next((os.environ[v] for v in ENDPOINT_ENV_VARS if os.environ.get(v)), None)
    if url is None:
        return None
    if not url.startswith(("http://", "https://")):
        raise StorageError(f"S3 endpoint {url!r} must start with http:// or https://")
    return url.rstrip("/")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise StorageError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < 1:
        raise StorageError(f"environment variable {name}={raw!r} must be at least 1")
    return value


def client_config(
    endpoint_url: str | None,
    *,
    max_attempts: int | None = None,
    retry_mode: str | None = None,
    max_pool_connections: int = 16,
) -> Config:
    """The botocore Config for a client (exposed so tests and benchmarks can see what is used)."""
    mode = retry_mode or os.environ.get("AWS_RETRY_MODE") or DEFAULT_RETRY_MODE
    if mode not in ("standard", "adaptive", "legacy"):
        raise StorageError(f"retry mode {mode!r} must be standard, adaptive or legacy")
    attempts = (
        max_attempts if max_attempts is not None else _env_int("AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)
    )
    if attempts < 1:
        raise StorageError(f"max_attempts must be at least 1, not {attempts}")
    return Config(
        region_name=resolve_region(),
        retries={"mode": mode, "max_attempts": attempts},
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        max_pool_connections=max_pool_connections,
        connect_timeout=10,
        read_timeout=60,
        tcp_keepalive=True,
    )


def get_client(
    endpoint_url: str | None = None,
    *,
    max_attempts: int | None = None,
    retry_mode: str | None = None,
    max_pool_connections: int = 16,
    credentials: S3Credentials | None = None,
) -> Any:
    """A (cached, thread-safe) boto3 S3 client for the resolved endpoint and current environment."""
    endpoint = resolve_endpoint(endpoint_url)
    key = (
        endpoint,
        credentials,
        max_attempts,
        retry_mode,
        max_pool_connections,
        tuple(os.environ.get(k) for k in _ENV_KEYS),
    )
    with _cache_lock:
        client = _cache.get(key)
        if client is None:
            config = client_config(
                endpoint,
                max_attempts=max_attempts,
                retry_mode=retry_mode,
                max_pool_connections=max_pool_connections,
            )
            client = _session(credentials).client("s3", endpoint_url=endpoint, config=config)
            _cache[key] = client
    return client


def get_resource(endpoint_url: str | None = None, *, credentials: S3Credentials | None = None,
                 **kwargs: Any) -> Any:
    """A boto3 S3 resource with the same endpoint, credentials and config (for the resource API)."""
    endpoint = resolve_endpoint(endpoint_url)
    config = client_config(endpoint, **kwargs)
    return _session(credentials).resource("s3", endpoint_url=endpoint, config=config)


def clear_client_cache() -> None:
    with _cache_lock:
        _cache.clear()


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_not_found(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 404 or error_code(exc) in ("404", "NoSuchKey", "NoSuchBucket", "NotFound")


@contextlib.contextmanager
def s3_errors(uri: str) -> Iterator[None]:
    """Turn botocore failures into StorageError subclasses whose message names `uri`."""
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        if is_not_found(exc):
            what = "bucket" if code == "NoSuchBucket" else "object"
            raise NotFoundError(f"{uri}: no such {what} ({code or 404})") from exc
        message = exc.response.get("Error", {}).get("Message", "")
        raise StorageError(f"{uri}: S3 error {code}: {message}".rstrip(": ")) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise StorageError(
            f"{uri}: no usable S3 credentials ({exc}); set {s3_env.ACCESS_KEY_ID} and "
            f"{s3_env.SECRET_ACCESS_KEY} (in a cluster: the S3 Secret's keys), or give the pod an IAM role"
        ) from exc
    except EndpointConnectionError as exc:
        raise StorageError(
            f"{uri}: cannot reach the S3 endpoint ({exc}); check --endpoint-url / {s3_env.ENDPOINT_URL}"
        ) from exc
    except BotoCoreError as exc:
        raise StorageError(f"{uri}: {exc}") from exc
