"""The train step hands KFP 2.17's MLflow settings to the job's pods: values as values, the task's run as the
trainer's parent, credentials only as references to KFP's Secret (never literal in the manifest)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from gbcosface.config import load_config
from gbcosface.launch.kinds import get_job_kind
from gbcosface.launch.profile import ProfileError, parse_cluster_profile
from gbcosface.steps.train import _track, job_spec

TOKEN = "s3cr3t-token-value"
KFP_TASK_ENV = {  # what kubeflow/pipelines@2.17.0 handler.go RetrieveUserContainerEnvVars gives the task
    "MLFLOW_RUN_ID": "task0123", "MLFLOW_TRACKING_URI": "https://mlflow.kubeflow.svc:8443",
    "MLFLOW_EXPERIMENT_ID": "7", "MLFLOW_WORKSPACE": "team-a", "MLFLOW_TRACKING_TOKEN": TOKEN,
}


def _envs(obj: Any) -> list[list[dict]]:
    if isinstance(obj, dict):
        found = [obj["env"]] if isinstance(obj.get("env"), list) else []
        return found + [e for v in obj.values() for e in _envs(v)]
    if isinstance(obj, list):
        return [e for v in obj for e in _envs(v)]
    return []


@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
def test_pods_get_the_tasks_mlflow_settings_and_a_secret_reference(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in KFP_TASK_ENV.items():
        monkeypatch.setenv(k, v)
    profile = parse_cluster_profile("mlflow_secret_keys: {MLFLOW_TRACKING_TOKEN: token}")
    spec = job_spec(name="gbc-run1", run_id="run1", local=False, nnodes=2, nproc_per_node=1, image="img:1",
                    namespace="team-a", gpus_per_node=0, timeout_s=0, profile=profile)
    tracking = _track(spec, profile, run_id="run1", local=False, tracking_uri="", manifest_hash="m" * 64, image="img:1")
    assert tracking is not None and tracking.run_id == "task0123" and not tracking.owned  # KFP owns it
    rendered = get_job_kind(kind).render(spec, load_config("demo"))
    text = rendered.to_yaml()
    assert TOKEN not in text
    envs = _envs(rendered.job)  # Master and Worker alike
    assert envs and all(e == envs[0] for e in envs)
    env = envs[0]
    by_name = {e["name"]: e for e in env}
    assert by_name["MLFLOW_TRACKING_URI"]["value"] == "https://mlflow.kubeflow.svc:8443"
    assert by_name["MLFLOW_EXPERIMENT_ID"]["value"] == "7"
    assert by_name["MLFLOW_WORKSPACE"]["value"] == "team-a"
    assert by_name["GBCOSFACE_MLFLOW_PARENT_RUN_ID"]["value"] == "task0123"
    assert by_name["GBCOSFACE_DATASET_MANIFEST_HASH"]["value"] == "m" * 64
    assert by_name["MLFLOW_TRACKING_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "kfp-mlflow-credentials", "key": "token", "optional": True}}
    assert "MLFLOW_RUN_ID" not in by_name  # KFP ends the task's run: the trainer nests its own under it
    assert yaml.safe_load_all(text)


def test_without_a_key_for_a_credential_it_is_not_forwarded(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    for k, v in KFP_TASK_ENV.items():
        monkeypatch.setenv(k, v)
    profile = parse_cluster_profile("")
    spec = job_spec(name="gbc-run2", run_id="run2", local=False, nnodes=1, nproc_per_node=1, image="img:1",
                    namespace="team-a", gpus_per_node=0, timeout_s=0, profile=profile)
    _track(spec, profile, run_id="run2", local=False, tracking_uri="", manifest_hash="m" * 64, image="")
    assert "MLFLOW_TRACKING_TOKEN" not in spec.secret_env and TOKEN not in str(spec.env)
    assert "mlflow_secret_keys" in caplog.text


def test_mlflow_off_adds_no_mlflow_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in KFP_TASK_ENV:
        monkeypatch.delenv(k, raising=False)
    spec = job_spec(name="gbc-run3", run_id="run3", local=True, nnodes=1, nproc_per_node=1, image="",
                    namespace="default", gpus_per_node=0, timeout_s=0)
    assert _track(spec, parse_cluster_profile(""), run_id="run3", local=True, tracking_uri="",
                  manifest_hash="m" * 64, image="") is None
    assert not [k for k in spec.env if k.startswith("MLFLOW")] and not spec.secret_env


def test_profile_refuses_unknown_mlflow_credential_names() -> None:
    with pytest.raises(ProfileError, match="mlflow_secret_keys"):
        parse_cluster_profile("mlflow_secret_keys: {AWS_SECRET_ACCESS_KEY: x}")
