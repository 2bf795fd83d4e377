"""The demo's MLflow runs, seen in the MLflow UI through headless Chromium (Debian's `chromium` package).

The demo runs (a small world, 12 steps) with its real MLflow server; afterwards, as a person would with the
command the demo prints, a server is opened on the demo's SQLite store, and Chromium renders the trainer
run's "Model metrics" page (driven over the DevTools protocol, tests/tracking/headless_chromium.py): the
page must draw the loss chart with every point of the run's `train/loss` history. The screenshot is saved under the test's directory (and the path printed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gbcosface.demo import run_demo
from gbcosface.tracking.local_server import LocalMlflowServer
from gbcosface.tracking.mlflow_env import PARENT_TAG

from .headless_chromium import Chromium

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

WORLD = {"identities": 24, "images_per_identity": 6, "eval_identities": 16, "templates_per_identity": 3,
         "pairs": 40, "bin_identities": 8, "impostor_pairs": 2_000, "crop_min": 120, "crop_max": 140}
TINY = ["model.width=8", "model.embedding_size=32", "data.batch_size=16", "data.num_workers=0", "schedule.epochs=5",
        "schedule.milestones=[]", "run.checkpoint_every=6", "run.log_every=2", "run.metrics_port=0", "run.val_every=6"]


#: The point count of the chart whose card carries the legend "trainer (train/loss)".
LOSS_POINTS_JS = """(() => { for (const plot of document.querySelectorAll('.js-plotly-plot')) {
  let card = plot; while (card && !/\\((train|final|val)\\//.test(card.textContent)) card = card.parentElement;
  if (card && card.textContent.includes('trainer (train/loss)')) return plot.querySelectorAll('path.point').length; }
  return 0; })()"""


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
        browser = Chromium(height=4000)  # tall: the UI draws a chart only once it is in view
        try:
            browser.open(page)
            assert browser.wait_for(LOSS_POINTS_JS) == len(history)  # every logged point is drawn
            shot = tmp_path / "mlflow-ui-trainer-run.png"
            browser.screenshot(shot)
        finally:
            browser.close()
        assert shot.read_bytes().startswith(b"\x89PNG")
        print(f"MLflow UI screenshot: {shot}")
