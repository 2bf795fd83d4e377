"""Shared fixtures for the trainer tests: a tiny synthetic face-like training set and a tiny config.

The dataset is written with the project's own RecordIO writer (insightface layout): each identity is
a distinct colour and stripe pattern, and each image adds position jitter and noise, so a tiny
network can learn to tell identities apart within a few dozen steps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from gbcosface.data.recordio import write_face_rec

REPO = Path(__file__).resolve().parents[2]
NUM_IDS = 20
PER_ID = 16


def _identity_image(identity: int, sample: int, rng: np.random.Generator) -> bytes:
    base = np.random.default_rng(1000 + identity)
    colour = base.integers(30, 226, size=3)
    angle = base.uniform(0, np.pi)
    freq = base.uniform(0.05, 0.25)
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float32)
    dx, dy = rng.integers(-4, 5, size=2)
    wave = np.sin(((xx + dx) * np.cos(angle) + (yy + dy) * np.sin(angle)) * freq)
    img = colour[None, None, :] * (0.6 + 0.4 * wave[..., None])
    img = img + rng.normal(0, 12, size=img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def write_tiny_trainset(out: Path, num_ids: int = NUM_IDS, per_id: int = PER_ID, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    samples = ((i, _identity_image(i, j, rng)) for i in range(num_ids) for j in range(per_id))
    return write_face_rec(out, samples, num_images=num_ids * per_id, num_classes=num_ids)


@pytest.fixture(scope="session")
def s3_server() -> Iterator:
    """moto's S3 server on loopback, one for the training tests that stage or checkpoint through S3."""
    from gbcosface.storage.local_server import LocalS3Server

    server = LocalS3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bare_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A bare process (no torchrun variables), and torch's global determinism switch and threads restored after."""
    import torch

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_trainset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_trainset(tmp_path_factory.mktemp("trainset") / "train")


def tiny_config(train_dir: Path, output: str, **sections: dict) -> dict:
    """A config for a width-8, one-block-per-stage iresnet on 56 px features (seconds on a CPU)."""
    cfg = {
        "model": {"name": "iresnet18", "embedding_size": 32, "width": 8, "layers": [1, 1, 1, 1],
                  "stem_stride": 2, "dropout": 0.2},
        "head": {"type": "linear"},
        "loss": {"name": "gb_cosface", "params": {}},
        "data": {"train_dir": str(train_dir), "val_dir": "", "val_targets": [], "batch_size": 8,
                 "num_workers": 0},
        "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"type": "step", "epochs": 4, "milestones": [2, 3], "max_steps": None},
        "run": {"seed": 3, "output": output, "amp": "none", "channels_last": False, "deterministic": True,
                "log_every": 5, "checkpoint_every": 10, "keep_last": 2, "val_every": 0, "metrics_port": 0},
    }
    for name, values in sections.items():
        cfg[name].update(values)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def run_train(config: Path, nproc: int, *overrides: str, timeout: float = 600, float64: bool = False,
              **env: str) -> subprocess.CompletedProcess:
    """`gbcosface train` as one bare process (nproc=0) or under torchrun with `nproc` processes.

    `float64=True` runs it through float64_train.py (torch's default dtype float64), for exactness tests.
    """
    entry = [str(Path(__file__).with_name("float64_train.py"))] if float64 else ["-m", "gbcosface"]
    if nproc == 0:
        cmd = [sys.executable, *entry, "train", "--config", str(config), *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               *entry, "train", "--config", str(config), *overrides]
    return subprocess.run(cmd, cwd=REPO, env=child_env(**env), capture_output=True, text=True, timeout=timeout)
