"""The compiled pipeline gives its steps the dataset's S3 Secret under project-owned names only.

Why (gbcosface.s3_env cites the backend): a KFP step's container also runs KFP's launcher, which
builds its artifact client from the default AWS chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, ...) for an s3:// pipeline root configured fromEnv or without provider config.
Mapped to those names, the dataset's Secret would take over the upload of the run's own artifacts.
"""

from __future__ import annotations

import pytest
import yaml

from gbcosface import s3_env
from gbcosface.pipeline_backends import SUPPORTED, get_backend
from gbcosface.pipeline_cli import compile_pipeline

PROJECT_KEYS = {"GBCOSFACE_S3_ACCESS_KEY_ID", "GBCOSFACE_S3_SECRET_ACCESS_KEY", "GBCOSFACE_S3_ENDPOINT_URL"}


@pytest.mark.parametrize("backend", SUPPORTED)
def test_steps_get_the_s3_secret_under_project_names_and_no_aws_names(tmp_path, backend):
    ir, platform = yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", backend=backend).read_text())
    # Below 2.15 `optional` does not exist (pipeline_backends): only the key pair, required.
    optional = get_backend(backend).has("optional_secret_env")
    expected = PROJECT_KEYS if optional else PROJECT_KEYS - {s3_env.ENDPOINT_URL}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    with_secret = set()
    for name, executor in executors.items():
        for secret in executor.get("secretAsEnv", []):
            pairs = {(k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]}
            assert {env for _, env in pairs} == expected <= set(s3_env.SECRET_KEYS), name
            assert all(key == env for key, env in pairs), name  # the Secret's keys are the env names
            assert bool(secret.get("optional")) is optional, name  # IRSA clusters leave the keys out (2.15+)
            with_secret.add(name)
    # The S3-using steps have the Secret; cleanup (Kubernetes API only) does not.
    assert {"exec-stage-data", "exec-train-model", "exec-evaluate-model", "exec-publish"} <= with_secret
    assert "exec-cleanup-job" not in with_secret
    # No step sets an AWS_* variable the launcher reads, by any route (plain env included).
    for name, executor in ir["deploymentSpec"]["executors"].items():
        for var in executor["container"].get("env", []):
            assert var["name"] not in s3_env.LAUNCHER_AWS_ENV, (name, var)
    for name, executor in executors.items():
        for route in ("secretAsEnv", "configMapAsEnv", "fieldPathAsEnv"):
            for item in executor.get(route, []):
                for var in item.get("keyToEnv", []) + ([item] if "name" in item else []):
                    assert var.get("envVar", var.get("name")) not in s3_env.LAUNCHER_AWS_ENV, (name, route)
