"""Which credentials and endpoint the S3 client uses, proved on real S3 servers that check signatures.

Two moto servers on 127.0.0.1 enforce authentication (moto's INITIAL_NO_AUTH_ACTION_COUNT): each
knows only the access key of its own IAM user, refuses any other key (InvalidAccessKeyId) and a
wrong secret (SignatureDoesNotMatch), and holds a bucket with a marker object naming the server.
- "dataset" stands for the dataset's store, reached through the GBCOSFACE_S3_* names;
- "platform" stands for what a KFP step's container also holds in AWS_* (the launcher's pipeline
  root credentials and endpoint, gbcosface.s3_env).
Reading the marker through `gbcosface.storage` shows which endpoint was used; the server accepting
the request shows which key signed it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from gbcosface import s3_env as names
from gbcosface.storage import client as client_mod
from gbcosface.storage.errors import StorageError
from gbcosface.storage.local_server import LocalS3Server
from gbcosface.storage.objects import get_bytes

BUCKET = "creds-bkt"
# create_user, put_user_policy, create_access_key run unauthenticated; every later request is checked.
_UNAUTHENTICATED_SETUP_ACTIONS = 3


@dataclass
class AuthServer:
    server: LocalS3Server
    key_id: str
    secret: str

    @property
    def url(self) -> str:
        return self.server.endpoint_url


def _start(name: str, monkeypatch: pytest.MonkeyPatch) -> AuthServer:
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", str(_UNAUTHENTICATED_SETUP_ACTIONS))
    server = LocalS3Server().start()  # the server process inherits the variable

    def session(key: str, secret: str) -> boto3.session.Session:
        return boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1")

    iam = session("setup", "setup").client("iam", endpoint_url=server.endpoint_url)
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    s3 = session(key["AccessKeyId"], key["SecretAccessKey"]).client("s3", endpoint_url=server.endpoint_url)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="marker", Body=name.encode())
    return AuthServer(server, key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, AuthServer]]:
    started: dict[str, AuthServer] = {}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in ("dataset", "platform"):
                started[name] = _start(name, mp)
        # Each server knows only its own user's key: a request signed with the other's is refused.
        assert started["dataset"].key_id != started["platform"].key_id
        yield started
    finally:
        for s in started.values():
            s.server.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No S3 setting from the machine: only what each test sets."""
    for name in (*names.ALL, *names.LAUNCHER_AWS_ENV, "S3_ENDPOINT_URL", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    client_mod.clear_client_cache()
    yield monkeypatch
    client_mod.clear_client_cache()


def _set(env: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for k, v in values.items():
        env.setenv(k, v)


def _platform_in_aws_names(env: pytest.MonkeyPatch, platform: AuthServer) -> None:
    """What KFP's launcher reads in the step's container (gbcosface.s3_env)."""
    _set(env, {"AWS_ACCESS_KEY_ID": platform.key_id, "AWS_SECRET_ACCESS_KEY": platform.secret,
               "AWS_ENDPOINT_URL": platform.url})


def test_the_servers_check_the_signing_key(servers: dict[str, AuthServer]) -> None:
    """The premise of this file: a key of the other server, or a wrong secret, is refused."""
    d, p = servers["dataset"], servers["platform"]
    for key, secret, code in ((p.key_id, p.secret, "InvalidAccessKeyId"), (d.key_id, "wrong", "SignatureDoesNotMatch")):
        s3 = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret,
                                   region_name="us-east-1").client("s3", endpoint_url=d.url)
        with pytest.raises(Exception, match=code):
            s3.get_object(Bucket=BUCKET, Key="marker")


def test_project_names_win_over_the_aws_names_for_key_and_endpoint(servers: dict[str, AuthServer],
                                                                   env: pytest.MonkeyPatch) -> None:
    d, p = servers["dataset"], servers["platform"]
    _platform_in_aws_names(env, p)
    _set(env, {names.ACCESS_KEY_ID: d.key_id, names.SECRET_ACCESS_KEY: d.secret, names.ENDPOINT_URL: d.url})
    assert get_bytes(f"s3://{BUCKET}/marker") == b"dataset"
    assert client_mod.get_client().meta.endpoint_url == d.url


def test_project_key_wins_over_the_aws_key_on_the_same_endpoint(servers: dict[str, AuthServer],
                                                               env: pytest.MonkeyPatch) -> None:
    """Credentials alone: the endpoint comes from AWS_ENDPOINT_URL (the dataset's server), the AWS_*
    key is the platform's, which the dataset's server refuses; the GBCOSFACE_S3_* key must sign."""
    d, p = servers["dataset"], servers["platform"]
    _set(env, {"AWS_ACCESS_KEY_ID": p.key_id, "AWS_SECRET_ACCESS_KEY": p.secret, "AWS_ENDPOINT_URL": d.url})
    with pytest.raises(StorageError, match="InvalidAccessKeyId"):
        get_bytes(f"s3://{BUCKET}/marker")  # the premise: the AWS_* key alone is refused here
    _set(env, {names.ACCESS_KEY_ID: d.key_id, names.SECRET_ACCESS_KEY: d.secret})
    assert get_bytes(f"s3://{BUCKET}/marker") == b"dataset"


def test_explicit_arguments_win_over_the_project_names(servers: dict[str, AuthServer],
                                                       env: pytest.MonkeyPatch) -> None:
    d, p = servers["dataset"], servers["platform"]
    _set(env, {names.ACCESS_KEY_ID: d.key_id, names.SECRET_ACCESS_KEY: d.secret, names.ENDPOINT_URL: d.url})
    s3 = client_mod.get_client(p.url, credentials=client_mod.S3Credentials(p.key_id, p.secret))
    assert s3.get_object(Bucket=BUCKET, Key="marker")["Body"].read() == b"platform"
    # An explicit endpoint alone keeps the GBCOSFACE_S3_* key, which the platform's server refuses.
    with pytest.raises(StorageError, match="InvalidAccessKeyId"):
        get_bytes(f"s3://{BUCKET}/marker", endpoint_url=p.url)


def test_without_project_names_the_standard_chain_is_used(servers: dict[str, AuthServer],
                                                          env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """IRSA, instance roles, AWS_* and profiles keep working where the Secret's keys are absent."""
    d = servers["dataset"]
    _set(env, {"AWS_ACCESS_KEY_ID": d.key_id, "AWS_SECRET_ACCESS_KEY": d.secret, "AWS_ENDPOINT_URL": d.url})
    assert get_bytes(f"s3://{BUCKET}/marker") == b"dataset"
    # A shared-credentials profile, another link of the same chain.
    env.delenv("AWS_ACCESS_KEY_ID")
    env.delenv("AWS_SECRET_ACCESS_KEY")
    creds = tmp_path / "credentials"
    creds.write_text(f"[data]\naws_access_key_id = {d.key_id}\naws_secret_access_key = {d.secret}\n")
    _set(env, {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_PROFILE": "data"})
    client_mod.clear_client_cache()
    assert get_bytes(f"s3://{BUCKET}/marker") == b"dataset"
    assert client_mod.resolve_credentials() is None


def test_the_local_server_hands_out_project_names_only(servers: dict[str, AuthServer]) -> None:
    env = servers["dataset"].server.env()
    assert set(env) <= set(names.ALL)
    assert env[names.ENDPOINT_URL] == servers["dataset"].url
    assert not [k for k in env if k.startswith("AWS_")]


@pytest.mark.parametrize("present", [names.ACCESS_KEY_ID, names.SECRET_ACCESS_KEY])
def test_half_a_key_pair_is_an_error_naming_the_missing_variable(env: pytest.MonkeyPatch, present: str) -> None:
    env.setenv("AWS_ACCESS_KEY_ID", "other")  # not a silent fallback to another identity
    env.setenv("AWS_SECRET_ACCESS_KEY", "other")
    env.setenv(present, "x")
    missing = ({names.ACCESS_KEY_ID, names.SECRET_ACCESS_KEY} - {present}).pop()
    with pytest.raises(StorageError, match=f"{present} is set but {missing} is not"):
        client_mod.get_client("http://127.0.0.1:9")


def test_session_token_and_region_from_project_names(env: pytest.MonkeyPatch) -> None:
    _set(env, {names.ACCESS_KEY_ID: "AKIDPROJECT", names.SECRET_ACCESS_KEY: "SECRETVALUE", names.SESSION_TOKEN: "tok",
               names.REGION: "eu-central-1", "AWS_SESSION_TOKEN": "aws-tok", "AWS_REGION": "us-west-2",
               "AWS_ACCESS_KEY_ID": "AKIDAWS", "AWS_SECRET_ACCESS_KEY": "s2"})
    s3 = client_mod.get_client("http://127.0.0.1:9")
    frozen = s3._request_signer._credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.token) == ("AKIDPROJECT", "tok")
    assert s3.meta.region_name == "eu-central-1"
    assert "SECRETVALUE" not in repr(client_mod.resolve_credentials())
    env.delenv(names.REGION)
    assert client_mod.get_client("http://127.0.0.1:9").meta.region_name == "us-west-2"
