"""The training pods get the dataset's S3 Secret under the project's own names, never AWS_*.

Why (gbcosface.s3_env): AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL are what KFP's
launcher reads for a step's artifacts; the pods follow the steps' rule so that one Secret, with the
keys of k8s/base/s3-secret.template.yaml, serves both. Checked on the rendered jobs of both kinds, on
every kustomization under k8s/, and on what the local emulators hand a replica.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from launch_helpers import REPO, find_tool

from gbcosface import s3_env
from gbcosface.config import load_config
from gbcosface.launch.containers import secret_env
from gbcosface.launch.kinds import JOB_KINDS, get_job_kind
from gbcosface.launch.local import replica_env
from gbcosface.launch.spec import JobSpec
from gbcosface.storage.local_server import DUMMY_CREDENTIALS

SECRET = "gbcosface-s3"
KUSTOMIZATIONS = sorted(str(p.parent.relative_to(REPO)) for p in (REPO / "k8s").rglob("kustomization.yaml"))


def _envs(node: Any) -> Iterator[list[dict]]:
    """Every container `env` list anywhere in a manifest."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield value
            else:
                yield from _envs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _envs(item)


def _check(doc: dict, where: str) -> set[str]:
    """No AWS_* variable the launcher reads; every S3-Secret reference maps a key to its own name.
    Returns the env names set from the S3 Secret."""
    from_secret: set[str] = set()
    for env in _envs(doc):
        for var in env:
            assert var["name"] not in s3_env.LAUNCHER_AWS_ENV, f"{where}: {var['name']}"
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref["name"] == SECRET:
                assert ref["key"] == var["name"] and ref.get("optional") is True, f"{where}: {var}"
                from_secret.add(var["name"])
    return from_secret


@pytest.mark.parametrize("kind", sorted(JOB_KINDS))
def test_rendered_jobs_take_the_secret_under_project_names(kind: str) -> None:
    spec = JobSpec(name="gbc-creds", image="registry.example/gbcosface:1", nnodes=2, nproc_per_node=2,
                   s3_secret_name=SECRET)
    rendered = get_job_kind(kind).render(spec, load_config("demo"))
    assert _check(rendered.job, kind) == set(s3_env.SECRET_KEYS)


@pytest.mark.parametrize("tree", KUSTOMIZATIONS)
def test_kustomizations_take_the_secret_under_project_names(tree: str) -> None:
    out = subprocess.run([find_tool("kubectl"), "kustomize", str(REPO / tree)], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    names: set[str] = set()
    for doc in yaml.safe_load_all(out):
        if doc:
            names |= _check(doc, f"{tree} {doc['kind']}/{doc['metadata']['name']}")
    if any(d and d["kind"] in ("PyTorchJob", "TrainJob") for d in yaml.safe_load_all(out)):
        assert names == set(s3_env.SECRET_KEYS), tree


def test_the_secret_template_keys_are_what_pods_and_steps_read() -> None:
    doc = yaml.safe_load((REPO / "k8s/base/s3-secret.template.yaml").read_text())
    assert tuple(doc["stringData"]) == s3_env.SECRET_KEYS


def test_local_containers_pass_project_names_only() -> None:
    """launcher local-containers hands each replica container what the Secret would give the pod."""
    environ = {"AWS_ACCESS_KEY_ID": "platform", "AWS_SECRET_ACCESS_KEY": "p", "AWS_ENDPOINT_URL": "http://platform",
               "AWS_DEFAULT_REGION": "us-east-1", s3_env.ACCESS_KEY_ID: "data", s3_env.SECRET_ACCESS_KEY: "d",
               s3_env.ENDPOINT_URL: "http://data", s3_env.REGION: "eu-west-1", "HOME": "/home/x"}
    assert secret_env(environ) == {s3_env.ACCESS_KEY_ID: "data", s3_env.SECRET_ACCESS_KEY: "d",
                                   s3_env.ENDPOINT_URL: "http://data", s3_env.REGION: "eu-west-1"}


def test_the_process_emulator_gets_the_local_servers_project_names(tmp_path: Path) -> None:
    """The demo puts LocalS3Server.env() into its environment; a replica inherits exactly those names."""
    base = {**DUMMY_CREDENTIALS, s3_env.ENDPOINT_URL: "http://127.0.0.1:9", "PATH": "/usr/bin"}
    env = replica_env("gbc-creds", 2, 1, 0, 29500, base_env=base)
    assert {k: env[k] for k in base} == base
    assert not [k for k in env if k.startswith("AWS_")]
