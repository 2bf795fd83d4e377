"""Fixtures for the tracking tests: one real MLflow tracking server for the session, a tiny training set,
and `gbcosface train` as a subprocess with the environment a KFP 2.17 task (or a TrainJob pod) would give it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from gbcosface.data.recordio import write_face_rec
from gbcosface.tracking.local_server import LocalMlflowServer

REPO = Path(__file__).resolve().parents[2]


def _image(identity: int, rng: np.random.Generator) -> bytes:
    colour = np.random.default_rng(100 + identity).integers(30, 226, size=3)
    img = np.clip(colour[None, None, :] + rng.normal(0, 20, size=(112, 112, 3)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="session")
def trainset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("tracking-trainset") / "train"
    samples = ((i, _image(i, rng)) for i in range(8) for _ in range(8))
    return write_face_rec(out, samples, num_images=64, num_classes=8)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    with LocalMlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


def tiny_config(path: Path, train_dir: Path, output: str, **run: object) -> Path:
    cfg = {
        "model": {"name": "iresnet18", "embedding_size": 16, "width": 8, "layers": [1, 1, 1, 1], "stem_stride": 2},
        "loss": {"name": "gb_cosface", "params": {}},
        "data": {"train_dir": str(train_dir), "val_dir": "", "val_targets": [], "batch_size": 8, "num_workers": 0},
        "schedule": {"type": "step", "epochs": 100, "milestones": [50], "max_steps": 12},
        "run": {"seed": 1, "output": output, "channels_last": False, "log_every": 3, "checkpoint_every": 1000,
                "val_every": 0, "metrics_port": 0, **run},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train_env(**extra: str) -> dict[str, str]:
    drop = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID",
            "MLFLOW_EXPERIMENT_ID", "KUBEFLOW_TRAINER_SERVER_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def train_cmd(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "gbcosface", "train", "--config", str(config), *overrides]


def run_train(config: Path, *overrides: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(config, *overrides), cwd=REPO, env=train_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def load_fault_proxy():
    """tests/storage/s3_fault_proxy.py (an HTTP proxy that injects faults), loaded by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tracking_fault_proxy", REPO / "tests" / "storage" / "s3_fault_proxy.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module.FaultProxy
