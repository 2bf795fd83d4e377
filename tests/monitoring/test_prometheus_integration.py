"""A real Prometheus scrapes two training processes and answers queries about them.

Structure: ``start_training`` launches the processes that serve metrics (today two imitation
trainers driving the real exporter; a tiny real 2-process run, e.g. ``gbcosface job local`` or
torchrun, can replace it), ``prometheus_server`` scrapes them, and the assertions only look at
what Prometheus returns through /api/v1/query.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gbcosface.monitoring.prometheus_local import free_port

from .prom import PROMETHEUS_RULE, prometheus_server, require

pytestmark = pytest.mark.integration

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
BATCH = 32
STEP_SECONDS = 0.1


@contextmanager
def start_training(ports: list[int]) -> Iterator[list[subprocess.Popen[str]]]:
    """One process per port, rank = local rank = its index; stopped (SIGTERM, then kill) on exit."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(FAKE_TRAINER),
                f"--port={port}",
                f"--rank={rank}",
                "--local-rank=0",
                "--job=itest",
                f"--batch={BATCH}",
                f"--step-seconds={STEP_SECONDS}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, port in enumerate(ports)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "READY", (
                f"trainer did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
            )
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def by_rank(results: list[dict]) -> dict[str, float]:
    return {r["metric"]["rank"]: r["value"] for r in results}


def test_prometheus_scrapes_two_training_processes(tmp_path):
    ports = [free_port(), free_port()]
    targets = [f"127.0.0.1:{p}" for p in ports]
    with start_training(ports), prometheus_server(targets, tmp_path / "prom") as prom:
        both = lambda rs: len(rs) == 2 and all(r["value"] > 0 for r in rs)  # noqa: E731
        up = prom.wait_for(
            'up{job="gbcosface"}', lambda rs: len(rs) == 2 and all(r["value"] == 1 for r in rs)
        )
        assert {r["metric"]["instance"] for r in up} == set(targets)

        first = by_rank(prom.wait_for('gbcosface_train_step{job="gbcosface", training_job="itest"}', both))
        assert set(first) == {"0", "1"}
        # The step counter keeps moving while the processes train.
        later = by_rank(
            prom.wait_for(
                "gbcosface_train_step",
                lambda rs: len(rs) == 2 and all(r["value"] > first[r["metric"]["rank"]] for r in rs),
            )
        )
        assert all(later[rank] > first[rank] for rank in first)

        sps = by_rank(prom.wait_for("gbcosface_train_samples_per_second", both))
        # Each step sleeps STEP_SECONDS, so no process can exceed BATCH / STEP_SECONDS samples/s.
        assert all(0 < v <= BATCH / STEP_SECONDS * 1.01 for v in sps.values()), sps
        rate = prom.wait_for(
            "sum(rate(gbcosface_train_samples_total[5s]))", lambda rs: rs and rs[0]["value"] > 0
        )
        assert rate[0]["value"] <= 2 * BATCH / STEP_SECONDS * 1.01

        labels = prom.query('gbcosface_info{training_job="itest"}')
        assert {(r["metric"]["rank"], r["metric"]["config_hash"]) for r in labels} == {
            ("0", "cafe"),
            ("1", "cafe"),
        }
        phases = prom.query('gbcosface_train_phase{phase="training"} == 1')
        assert len(phases) == 2

        # The shipped rules load into this Prometheus and evaluate without errors on live data.
        groups = prom.wait_for_rules_evaluated()
        assert {g["name"] for g in groups} == {"gbcosface.recording", "gbcosface.alerts"}
        for group in groups:
            for rule in group["rules"]:
                assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        firing = prom.api("alerts")["alerts"]
        assert [a["labels"]["alertname"] for a in firing if a["state"] == "firing"] == []


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_local_prometheus_command_serves_the_rules_and_stops(tmp_path, stop_signal):
    """`python -m gbcosface.monitoring.prometheus_local` (the demo's way) runs and shuts down cleanly."""
    require("prometheus")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gbcosface.monitoring.prometheus_local",
            f"--port={port}",
            f"--dir={tmp_path}",
            "--targets=127.0.0.1:9",
            f"--rules={PROMETHEUS_RULE}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first_line = proc.stdout.readline()  # printed once Prometheus is ready
        assert first_line.startswith(f"Prometheus at http://127.0.0.1:{port}"), first_line
        url = f"http://127.0.0.1:{port}/api/v1/rules"
        with urllib.request.urlopen(url, timeout=10) as resp:
            groups = json.load(resp)["data"]["groups"]
        assert {g["name"] for g in groups} == {"gbcosface.recording", "gbcosface.alerts"}
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:  # SIGTERM lets the command stop its Prometheus before exiting
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    with pytest.raises(OSError):  # prometheus itself was stopped: nothing listens on its port any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
