"""URIs and the client factory: pure functions, no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from gbcosface.storage import client as client_mod
from gbcosface.storage.errors import StorageError, URIError
from gbcosface.storage.uri import check_relative_key, is_s3_uri, join_uri, parse_uri


def test_parse_s3_uri() -> None:
    loc = parse_uri("s3://my-bucket/data/ms1m/")
    assert (loc.scheme, loc.bucket, loc.key) == ("s3", "my-bucket", "data/ms1m/")
    assert loc.prefix == "data/ms1m/"
    assert loc.uri == "s3://my-bucket/data/ms1m/"
    assert parse_uri("s3://my-bucket").prefix == ""
    assert parse_uri("s3://my-bucket/").key == ""
    assert parse_uri("s3://b1x/a/b.bin").name == "b.bin"


def test_parse_file_and_plain_paths(tmp_path: Path) -> None:
    loc = parse_uri(f"file://{tmp_path}/a%20b")
    assert loc.scheme == "file" and loc.path == tmp_path / "a b"
    assert parse_uri("file://localhost/tmp/x").path == Path("/tmp/x")
    rel = parse_uri("data/train")
    assert rel.scheme == "file" and rel.path == Path("data/train")
    assert rel.uri == "file://" + str(Path("data/train").absolute())
    assert parse_uri(tmp_path).path == tmp_path
    assert not is_s3_uri(str(tmp_path)) and is_s3_uri("s3://abc/x")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://", "no bucket"),
        ("s3:///key", "no bucket"),
        ("s3://Bad_Bucket/key", "invalid bucket name"),
        ("s3://ab/key", "invalid bucket name"),
        ("s3://bucket/a//b", "empty path segment"),
        ("gs://bucket/key", "unsupported scheme 'gs'"),
        ("file://host/etc/x", "must not name a host"),
        ("", "empty"),
    ],
)
def test_bad_uris_are_refused_with_a_clear_message(uri: str, message: str) -> None:
    with pytest.raises(URIError, match=message):
        parse_uri(uri)


def test_join_keeps_the_kind(tmp_path: Path) -> None:
    assert join_uri("s3://bkt/run", "model", "backbone.pt") == "s3://bkt/run/model/backbone.pt"
    assert join_uri("s3://bkt/run/", "/checkpoints/") == "s3://bkt/run/checkpoints"
    assert join_uri("s3://bkt", "x") == "s3://bkt/x"
    assert join_uri(str(tmp_path), "a/b") == str(tmp_path / "a" / "b")
    assert parse_uri("s3://bkt/run/ckpt/step-1").parent().uri == "s3://bkt/run/ckpt"
    with pytest.raises(URIError, match=r"'\.\.'"):
        join_uri("s3://bkt/run", "../other")


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/abs", "a//b", "./a", "a\\b", ""])
def test_keys_that_would_escape_the_directory_are_refused(key: str) -> None:
    with pytest.raises(URIError):
        check_relative_key(key)


def test_relative_keys_are_accepted() -> None:
    assert str(check_relative_key("IJBC/meta/ijbc_face_tid_mid.txt")) == "IJBC/meta/ijbc_face_tid_mid.txt"


def test_endpoint_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in client_mod.ENDPOINT_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert client_mod.resolve_endpoint() is None
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9/")
    assert client_mod.resolve_endpoint() == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8")
    assert client_mod.resolve_endpoint() == "http://127.0.0.1:8"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:7")
    assert client_mod.resolve_endpoint() == "http://127.0.0.1:7"
    monkeypatch.setenv("GBCOSFACE_S3_ENDPOINT_URL", "http://127.0.0.1:6")  # the project's own name wins
    assert client_mod.resolve_endpoint() == "http://127.0.0.1:6"
    assert client_mod.resolve_endpoint("https://s3.example.internal") == "https://s3.example.internal"
    with pytest.raises(StorageError, match="must start with http"):
        client_mod.resolve_endpoint("127.0.0.1:9000")


def test_client_config_retries_and_addressing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    cfg = client_mod.client_config("http://127.0.0.1:9")
    assert cfg.retries == {"mode": "standard", "max_attempts": client_mod.DEFAULT_MAX_ATTEMPTS}
    assert cfg.s3 == {"addressing_style": "path"}
    assert client_mod.client_config(None).s3 == {"addressing_style": "auto"}
    cfg = client_mod.client_config(None, max_attempts=3, retry_mode="adaptive")
    assert cfg.retries == {"mode": "adaptive", "max_attempts": 3}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")
    assert client_mod.client_config(None).retries["max_attempts"] == 5
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "many")
    with pytest.raises(StorageError, match="AWS_MAX_ATTEMPTS='many' is not an integer"):
        client_mod.client_config(None)
    with pytest.raises(StorageError, match="retry mode"):
        client_mod.client_config(None, max_attempts=2, retry_mode="eager")


def test_clients_are_cached_per_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    a = client_mod.get_client("http://127.0.0.1:9")
    assert client_mod.get_client("http://127.0.0.1:9") is a
    assert client_mod.get_client("http://127.0.0.1:10") is not a
    assert a.meta.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "other")
    assert client_mod.get_client("http://127.0.0.1:9") is not a
