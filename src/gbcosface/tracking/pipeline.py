"""The MLflow run of a pipeline task (train, evaluate), with or without KFP 2.17's MLflow integration.

Why both: with the integration the backend has made the layout already (a parent run per pipeline run, a
nested run per task, MLFLOW_RUN_ID in the task's container) and ends the task's run itself when the task
ends (kubeflow/pipelines@2.17.0: backend/src/v2/common/plugins/mlflow/handler.go, OnTaskEnd). On older
backends, under the local runner or by hand, a tracking URI (the pipeline's `mlflow_tracking_uri`
parameter or MLFLOW_TRACKING_URI) makes the step build the same layout: it finds or creates the pipeline
run's parent (tagged with the pipeline run id, so train and evaluate share it) and its own nested run
named after the task, and ends that run. Every call here catches its errors: a tracking server that is
down costs one warning and a 10 s timeout, never the step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gbcosface.tracking import mlflow_env as E
from gbcosface.tracking.mlflow_run import experiment_id_for, find_or_create_run, make_client

log = logging.getLogger("gbcosface.tracking")

PIPELINE_RUN_TAG = "gbcosface.pipeline_run_id"
DEFAULT_EXPERIMENT = "gbcosface"


@dataclass
class TaskRun:
    client: Any
    tracking_uri: str
    experiment_id: str
    run_id: str
    owned: bool  # created here (ended here); False: KFP's task run, which KFP ends
    parent_id: str | None = None  # the pipeline run's run, when created here: its status follows the last task

    def pod_env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """Plain variables for the training pods: this task's run becomes the trainer's parent."""
        env = dict(os.environ if environ is None else environ)
        env[E.TRACKING_URI] = self.tracking_uri
        env[E.EXPERIMENT_ID] = self.experiment_id
        return E.pod_env(env, self.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        rows = [Metric(k, float(v), 0, step) for k, v in metrics.items() if v is not None]
        self._call("log metrics", lambda: [self.client.log_batch(self.run_id, metrics=rows[i:i + 1000])
                                            for i in range(0, len(rows), 1000)])

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        rows = [Param(k, str(v)[:6000]) for k, v in params.items()]
        self._call("log params", lambda: [self.client.log_batch(self.run_id, params=rows[i:i + 100])
                                           for i in range(0, len(rows), 100)])

    def log_artifacts(self, paths: list, artifact_path: str | None = None) -> None:
        """Files into the run's artifact store (through the tracking server: S3 in the demo)."""
        for path in paths:
            self._call(f"upload {path}", lambda p=path: self.client.log_artifact(self.run_id, str(p), artifact_path))

    def end(self, status: str = "FINISHED") -> None:
        if self.owned:
            self._call("end the run", lambda: self.client.set_terminated(self.run_id, status=status))
        if self.parent_id:
            self._call("end the pipeline's run", lambda: self.client.set_terminated(self.parent_id, status=status))

    def _call(self, what: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a step
            log.warning("MLflow: could not %s of run %s (%s)", what, self.run_id, str(exc).splitlines()[0][:300])


def task_run(*, run_id: str, task: str, tracking_uri: str = "",
             environ: Mapping[str, str] | None = None) -> TaskRun | None:
    """This task's MLflow run, or None when tracking is off or its server cannot be reached."""
    environ = os.environ if environ is None else environ
    uri = environ.get(E.TRACKING_URI) or tracking_uri
    if not uri:
        return None
    try:
        client = make_client(uri)
        kfp_run = environ.get(E.RUN_ID)
        if kfp_run and environ.get(E.TRACKING_URI):  # KFP 2.17 made this task's run
            exp = environ.get(E.EXPERIMENT_ID) or str(client.get_run(kfp_run).info.experiment_id)
            return TaskRun(client, uri, exp, kfp_run, owned=False)
        exp = experiment_id_for(client, environ.get(E.EXPERIMENT_ID), environ.get(E.EXPERIMENT_NAME) or DEFAULT_EXPERIMENT)
        parent = find_or_create_run(client, exp, run_name=run_id, resume_key=f"pipeline:{run_id}",
                                    tags={PIPELINE_RUN_TAG: run_id})
        child = find_or_create_run(client, exp, run_name=task, resume_key=f"task:{run_id}:{task}",
                                   parent_run_id=parent, tags={PIPELINE_RUN_TAG: run_id})
        return TaskRun(client, uri, exp, child, owned=True, parent_id=parent)
    except Exception as exc:  # noqa: BLE001 - tracking must never fail a step
        log.warning("MLflow tracking off for task %s: %s", task, str(exc).splitlines()[0][:300])
        return None


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of a run."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
