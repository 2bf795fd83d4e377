"""A real Prometheus scrapes a real 2-process training run (torchrun, gloo on CPU) while it trains.

The trainer's exporters serve on run.metrics_port + LOCAL_RANK; Prometheus scrapes both and the
step counter and samples/s are read back through the HTTP query API while training runs.
"""

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
from gbcosface.monitoring.prometheus_local import free_port

from .prom import prometheus_server

pytestmark = pytest.mark.integration


def _trainset(out: Path, ids: int = 8, per_id: int = 8) -> Path:
    rng = np.random.default_rng(0)

    def samples():
        for i in range(ids):
            for _ in range(per_id):
                img = rng.integers(0, 255, size=(112, 112, 3), dtype=np.uint8)
                ok, buf = cv2.imencode(".jpg", img)
                assert ok
                yield i, buf.tobytes()

    return write_face_rec(out, samples(), num_images=ids * per_id, num_classes=ids)


def _config(tmp: Path, train_dir: Path, port: int) -> Path:
    cfg = {
        "model": {"name": "iresnet18", "embedding_size": 16, "width": 4, "layers": [1, 1, 1, 1], "stem_stride": 2},
        "data": {"train_dir": str(train_dir), "val_targets": [], "batch_size": 4, "num_workers": 0},
        "schedule": {"epochs": 100000, "milestones": [], "max_steps": 1_000_000},
        "run": {"output": str(tmp / "out"), "amp": "none", "channels_last": False, "log_every": 1000,
                "checkpoint_every": 1_000_000, "val_every": 0, "metrics_port": port},
    }
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_prometheus_scrapes_a_real_two_process_training(tmp_path):
    base = free_port()  # rank 1 serves on base + 1
    config = _config(tmp_path, _trainset(tmp_path / "train"), base)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", GBCOSFACE_JOB_NAME="realtrain")
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), "-m", "gbcosface", "train", "--config", str(config)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    targets = [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]
    try:
        with prometheus_server(targets, tmp_path / "prom") as prom:
            both = lambda rs: len(rs) == 2 and all(r["value"] > 0 for r in rs)  # noqa: E731
            first = {r["metric"]["rank"]: r["value"]
                     for r in prom.wait_for('gbcosface_train_step{training_job="realtrain"}', both)}
            assert set(first) == {"0", "1"}
            later = prom.wait_for(
                'gbcosface_train_step{training_job="realtrain"}',
                lambda rs: len(rs) == 2 and all(r["value"] > first[r["metric"]["rank"]] for r in rs))
            assert len(later) == 2
            sps = prom.wait_for('gbcosface_train_samples_per_second{training_job="realtrain"}', both)
            assert all(r["value"] > 0 for r in sps)
            assert proc.poll() is None, f"training stopped early: {proc.stderr.read()[-3000:] if proc.stderr else ''}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
