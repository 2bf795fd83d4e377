"""The demo's MLflow runs, seen in the MLflow UI through headless Chromium (Debian's `chromium` package).

The demo runs (a small world, 12 steps) with its real MLflow server; afterwards, as a person would with the
command the demo prints, a server is opened on the demo's SQLite store, and Chromium renders the trainer
run's "Model metrics" page: the page must draw the loss chart with every point of the run's `train/loss`
history. The screenshot is saved under the test's directory (and the path printed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gbcosface.demo import run_demo
from gbcosface.tracking.local_server import LocalMlflowServer
from gbcosface.tracking.mlflow_env import PARENT_TAG

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

WORLD = {"identities": 24, "images_per_identity": 6, "eval_identities": 16, "templates_per_identity": 3,
         "pairs": 40, "bin_identities": 8, "impostor_pairs": 2_000, "crop_min": 120, "crop_max": 140}
TINY = ["model.width=8", "model.embedding_size=32", "data.batch_size=16", "data.num_workers=0", "schedule.epochs=5",
        "schedule.milestones=[]", "run.checkpoint_every=6", "run.log_every=2", "run.metrics_port=0", "run.val_every=6"]


def chromium(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "headless Chromium is needed: make chromium (apt-get install chromium)"
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--window-size=1400,1000", "--virtual-time-budget=40000", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_demo_run_and_its_loss_curve_in_the_mlflow_ui(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    summary = run_demo(out, steps=12, replicas=2, gate_min_tar=0.0, world_overrides=WORLD, recipe_overrides=TINY)
    info = summary["mlflow"]
    assert info is not None and {"pipeline", "train", "evaluate", "trainer"} <= set(info["runs"])
    assert json.loads((out / "demo_summary.json").read_text())["mlflow"]["runs"] == info["runs"]
    runs = info["runs"]
    assert "IJBC/report.html" in info["evaluate_artifacts"]  # through the server into the local S3

    with LocalMlflowServer(out / "mlflow") as server:  # the demo's store, reopened as the demo says
        client = MlflowClient(server.url)
        # The layout KFP 2.17 makes: pipeline run -> task runs -> the trainer's run under `train`.
        assert client.get_run(runs["train"]).data.tags[PARENT_TAG] == runs["pipeline"]
        assert client.get_run(runs["evaluate"]).data.tags[PARENT_TAG] == runs["pipeline"]
        trainer = client.get_run(runs["trainer"])
        assert trainer.data.tags[PARENT_TAG] == runs["train"] and trainer.info.status == "FINISHED"
        history = client.get_metric_history(runs["trainer"], "train/loss")
        assert [m.step for m in history] == [2, 4, 6, 8, 10, 12]
        assert [m.step for m in client.get_metric_history(runs["trainer"], "val/lfw/accuracy")] == [6, 12]
        lineage = summary["trained"]["lineage"]
        assert trainer.data.params["dataset_manifest_hash"] == lineage["dataset_manifest_hash"]
        assert trainer.data.params["config_hash"] == lineage["config_hash"]
        evaluate = client.get_run(runs["evaluate"])
        assert "IJBC/tar_at_far_1e-03_nearest" in evaluate.data.metrics

        page = f"{server.url}/#/experiments/{info['experiment_id']}/runs/{runs['trainer']}/model-metrics"
        dom = chromium("--dump-dom", page)
        assert dom.returncode == 0, dom.stderr[-2000:]
        charts = dom.stdout.split("js-plotly-plot")[1:]
        loss = [c for c in charts if "trainer (train/loss)" in c]
        assert len(loss) == 1, f"no loss chart on {page}"
        assert loss[0].count('class="point"') == len(history)  # every logged point is drawn
        shot = tmp_path / "mlflow-ui-trainer-run.png"
        res = chromium(f"--screenshot={shot}", page)
        assert res.returncode == 0 and shot.read_bytes().startswith(b"\x89PNG"), res.stderr[-2000:]
        print(f"MLflow UI screenshot: {shot}")
