"""The trainer serves /metrics from process start: a real HTTP scrape during a slow data staging.

Why it matters: the "endpoint down" alert would fire during staging if the exporter started after it.
The staging is the real one (a local dataset directory staged into a scratch directory); the test only
holds it back until the scrape has been made, by wrapping it in a wait.
"""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from gbcosface.config import from_dict
from gbcosface.monitoring.prometheus_local import free_port
from gbcosface.train import staging
from gbcosface.train.distributed import DistEnv

from .conftest import tiny_config


def _phases(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {s.labels["phase"]: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == "gbcosface_train_phase"}


def test_metrics_answer_with_phase_staging_while_the_data_is_staged(tmp_path: Path, tiny_trainset: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from gbcosface.train.trainer import Trainer

    port = free_port()
    staged = tmp_path / "staged"
    cfg = tiny_config(tiny_trainset, str(tmp_path / "out"),
                      run={"metrics_port": port, "resume": False},
                      data={"stage_from": str(tiny_trainset.parent), "stage_to": str(staged),
                            "stage_prefixes": [tiny_trainset.name], "train_dir": str(staged / tiny_trainset.name)})
    monkeypatch.setenv("GBCOSFACE_METRICS_BASE_PORT", str(port))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    entered, release = threading.Event(), threading.Event()
    real = staging.stage_training_data

    def slow_stage(data, local_rank):
        entered.set()
        assert release.wait(60), "the test never released the staging"
        real(data, local_rank)

    monkeypatch.setattr(staging, "stage_training_data", slow_stage)
    built: dict = {}

    def build() -> None:
        try:
            built["trainer"] = Trainer(from_dict(cfg), DistEnv(0, 0, 1, 1, torch.device("cpu"), None))
        except BaseException as exc:  # reported by the main thread
            built["error"] = exc

    thread = threading.Thread(target=build)
    thread.start()
    try:
        assert entered.wait(60), built.get("error")
        during = _phases(port)
    finally:
        release.set()
        thread.join(120)
    assert "error" not in built, built.get("error")
    assert during["staging"] == 1.0 and sum(during.values()) == 1.0, during
    assert (staged / tiny_trainset.name / "train.rec").is_file()  # the real staging ran afterwards
    trainer = built["trainer"]
    try:
        after = _phases(port)
        assert after["starting"] == 1.0 and after["staging"] == 0.0, after
    finally:
        trainer.metrics.close()
