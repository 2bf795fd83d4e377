"""The trainer's MLflow run and TensorBoard event files, against a real MLflow tracking server.

The environment is what KFP 2.17 gives a task (kubeflow/pipelines@2.17.0: backend/src/v2/common/plugins/mlflow/
handler.go) as the train step forwards it to the job's pods: MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_ID and the
task's run as the trainer's parent.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gbcosface.tracking.local_server import LocalMlflowServer
from gbcosface.tracking.mlflow_env import PARENT_TAG
from gbcosface.tracking.mlflow_run import MlflowRun

from .conftest import REPO, load_fault_proxy, run_train, tiny_config, train_cmd, train_env

pytestmark = pytest.mark.integration


def _kfp_like_runs(client: MlflowClient) -> tuple[str, str, str]:
    """What KFP's API server and driver create: an experiment, the pipeline run's parent run, the task's nested run."""
    exp = client.create_experiment(f"kfp-{uuid.uuid4().hex[:8]}")
    parent = client.create_run(exp, run_name="pipeline-run").info.run_id
    task = client.create_run(exp, run_name="train-model", tags={PARENT_TAG: parent}).info.run_id
    return exp, parent, task


def _children(client: MlflowClient, exp: str, parent: str) -> list:
    return client.search_runs([exp], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")


def test_trainer_run_nests_under_the_task_run_with_curves_params_and_final_terms(
        tmp_path: Path, trainset: Path, mlflow_server: LocalMlflowServer) -> None:
    client = MlflowClient(mlflow_server.url)
    exp, _, task = _kfp_like_runs(client)
    out = tmp_path / "run"
    cfg = tiny_config(tmp_path / "c.yaml", trainset, str(out))
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_ID": exp,
           "GBCOSFACE_MLFLOW_PARENT_RUN_ID": task, "GBCOSFACE_DATASET_MANIFEST_HASH": "ab" * 32,
           "GBCOSFACE_IMAGE": "ghcr.io/x/gbcosface@sha256:" + "0" * 64}
    res = run_train(cfg, **env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())

    runs = _children(client, exp, task)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "trainer" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["config_hash"] == summary["config_hash"]
    assert params["dataset_manifest_hash"] == "ab" * 32
    assert params["image"] == env["GBCOSFACE_IMAGE"]
    assert params["model.name"] == "iresnet18" and params["schedule.max_steps"] == "12"

    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in loss] == [3, 6, 9, 12]  # every run.log_every steps, the step as MLflow's step
    for key in ("train/cos_v", "train/lr", "train/samples_per_s", "train/epoch"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [3, 6, 9, 12], key
    final = run.data.metrics
    assert final["final/loss"] == summary["final_loss_terms"]["loss"]
    assert final["final/cos_v"] == summary["final_loss_terms"]["cos_v"]
    assert final["train/loss"] == summary["final_loss_terms"]["loss"]  # the last step's global mean

    # TensorBoard: the same scalars, read back with TensorBoard's own reader.
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "train/cos_v", "train/lr", "final/loss"} <= set(acc.Tags()["scalars"])
    tb = acc.Scalars("train/loss")
    assert [e.step for e in tb] == [3, 6, 9, 12]
    assert [np.float32(e.value) for e in tb] == [np.float32(m.value) for m in loss]


def test_a_resumed_trainer_continues_its_run(tmp_path: Path, trainset: Path, mlflow_server: LocalMlflowServer) -> None:
    client = MlflowClient(mlflow_server.url)
    exp, _, task = _kfp_like_runs(client)
    out = tmp_path / "run"
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_ID": exp, "GBCOSFACE_MLFLOW_PARENT_RUN_ID": task}
    cfg = tiny_config(tmp_path / "c.yaml", trainset, str(out))
    assert run_train(cfg, **env).returncode == 0
    res = run_train(cfg, "schedule.max_steps=18", **env)  # resumes from the step-12 checkpoint
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr
    runs = _children(client, exp, task)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert steps == [3, 6, 9, 12, 15, 18]


def test_without_kfp_the_trainer_creates_its_own_run_from_the_config_key(
        tmp_path: Path, trainset: Path, mlflow_server: LocalMlflowServer) -> None:
    name = f"by-hand-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "run"
    cfg = tiny_config(tmp_path / "c.yaml", trainset, str(out), mlflow_tracking_uri=mlflow_server.url)
    res = run_train(cfg, MLFLOW_EXPERIMENT_NAME=name)
    assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and PARENT_TAG not in runs[0].data.tags
    assert runs[0].data.tags["gbcosface.output"] == str(out)
    assert len(client.get_metric_history(runs[0].info.run_id, "train/loss")) == 4


def test_a_tracking_server_killed_mid_run_neither_fails_nor_stalls_training(tmp_path: Path, trainset: Path) -> None:
    """The server dies after the run was created: the trainer warns once, finishes, and what it sent is kept."""
    server = LocalMlflowServer(tmp_path / "mlflow").start()
    try:
        server.wait_ready()
        out = tmp_path / "run"
        cfg = tiny_config(tmp_path / "c.yaml", trainset, str(out), log_every=1)
        proc = subprocess.Popen(train_cmd(cfg, "schedule.max_steps=800"), cwd=REPO, stderr=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, text=True,
                                env=train_env(MLFLOW_TRACKING_URI=server.url, MLFLOW_EXPERIMENT_NAME="killed"))
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "MLflow run " in line:
                break
        client = MlflowClient(server.url)
        sent_before = client.search_runs([client.get_experiment_by_name("killed").experiment_id])[0].info.run_id
        deadline = time.monotonic() + 120
        while not client.get_metric_history(sent_before, "train/loss") and time.monotonic() < deadline:
            time.sleep(0.2)  # until some points went through
        assert proc.poll() is None, "training ended before the server was killed: the test proves nothing"
        server.kill()
        lines.extend(proc.stderr)
        assert proc.wait(300) == 0, "".join(lines[-40:])
    finally:
        server.stop()
    log = "".join(lines)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 800
    assert log.count("unreachable or refusing") == 1  # one warning for the whole outage
    assert "were not sent within" in log
    # What reached the server before it died is in its store.
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    history = store.get_metric_history(sent_before, "train/loss")
    assert history and [m.step for m in history] == list(range(1, len(history) + 1))
    assert len(history) < 800
    assert store.get_run(sent_before).info.status == "RUNNING"  # its end never arrived


def test_failed_sends_are_retried_until_every_point_arrives(mlflow_server: LocalMlflowServer,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A real server behind a proxy answering 503 to the first log-batch calls: no point is lost or doubled."""
    proxy = load_fault_proxy()(upstream=mlflow_server.url).start()
    try:
        proxy.add(503, times=3, method="POST", path_contains="runs/log-batch")
        caplog.set_level(logging.WARNING, "gbcosface.tracking")
        run = MlflowRun(tracking_uri=proxy.url, run_name="flaky", experiment_name=f"flaky-{uuid.uuid4().hex[:8]}",
                        flush_interval_s=0.05, max_backoff_s=0.2)
        for step in range(1, 301):
            run.log_metrics({"train/loss": 1.0 / step}, step)
        assert run.close("FINISHED", timeout_s=120)
    finally:
        proxy.stop()
    assert len(proxy.injected) == 3 and run.failures == 3
    assert sum("unreachable or refusing" in r.getMessage() for r in caplog.records) == 1
    client = MlflowClient(mlflow_server.url)
    history = client.get_metric_history(run.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 301))
    assert {m.step: m.value for m in history} == {s: 1.0 / s for s in range(1, 301)}
    assert client.get_run(run.run_id).info.status == "FINISHED"
