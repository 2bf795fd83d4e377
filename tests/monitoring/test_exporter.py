"""TrainingMetrics: what a scrape of /metrics returns after the trainer's calls."""

from __future__ import annotations

import logging
import math
import socket
import time
import types
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gbcosface import __version__
from gbcosface.monitoring import PHASES, TrainingMetrics, job_name_from_env, metrics_port_for
from gbcosface.monitoring import gpu as gpu_module
from gbcosface.monitoring.prometheus_local import free_port

LABELS = {"training_job": "job1", "rank": "3", "local_rank": "1", "node": "node-a"}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and index every sample by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def key(name: str, **extra: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted({**LABELS, **extra}.items()))


@pytest.fixture
def metrics(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    m = TrainingMetrics(free_port(), "job1", 3, 1, "node-a", bind="127.0.0.1", config_hash="abc123")
    assert m.start()
    yield m
    m.close()


def test_metrics_port_for():
    assert metrics_port_for(9400, 0) == 9400
    assert metrics_port_for(9400, 3) == 9403
    assert metrics_port_for(0, 2) is None
    assert metrics_port_for(None, 0) is None
    with pytest.raises(ValueError):
        metrics_port_for(65535, 1)
    with pytest.raises(ValueError):
        metrics_port_for(9400, -1)


def test_job_name_from_env():
    assert job_name_from_env({"GBCOSFACE_JOB_NAME": "exp7"}, "exp7-worker-2") == "exp7"
    assert job_name_from_env({}, "face-run-3-master-0") == "face-run-3"
    assert job_name_from_env({}, "face-run-3-worker-12") == "face-run-3"
    assert job_name_from_env({}, "my-laptop") == "local"


def test_from_env_uses_local_rank_and_base_port_override(monkeypatch):
    env = {"LOCAL_RANK": "2", "RANK": "6", "GBCOSFACE_JOB_NAME": "exp"}
    m = TrainingMetrics.from_env(9400, env=env, bind="127.0.0.1")
    assert (m.port, m.labels["rank"], m.labels["local_rank"], m.labels["training_job"]) == (
        9402,
        "6",
        "2",
        "exp",
    )
    m = TrainingMetrics.from_env(9400, env={**env, "GBCOSFACE_METRICS_BASE_PORT": "9500"})
    assert m.port == 9502
    assert not TrainingMetrics.from_env(0, env=env).enabled


def test_scrape_after_steps(metrics):
    metrics.set_phase("training")
    metrics.observe_step(10, 0, 32, 0.5, 0.1, {"loss": 2.5, "loss_pos": 1.0}, cos_v=0.25, lr=0.1)
    metrics.observe_step(11, 1, 32, 0.25, 0.0, {"loss": 2.0, "loss_pos": 0.75}, cos_v=0.3, lr=0.05)
    got = scrape(metrics.port)

    assert got[key("gbcosface_train_step")] == 11
    assert got[key("gbcosface_train_epoch")] == 1
    assert got[key("gbcosface_train_samples_total")] == 64
    # Moving averages of sums: samples 32 -> 32, seconds 0.5 -> 0.5 + 0.1 * (0.25 - 0.5) = 0.475.
    assert got[key("gbcosface_train_samples_per_second")] == pytest.approx(32 / 0.475)
    # Data wait: 0.1 -> 0.1 + 0.1 * (0 - 0.1) = 0.09 seconds per 0.475 seconds.
    assert got[key("gbcosface_train_data_wait_ratio")] == pytest.approx(0.09 / 0.475)
    assert got[key("gbcosface_train_data_wait_seconds_total")] == pytest.approx(0.1)
    assert got[key("gbcosface_train_step_duration_seconds_count")] == 2
    assert got[key("gbcosface_train_step_duration_seconds_sum")] == pytest.approx(0.75)
    assert got[key("gbcosface_train_step_duration_seconds_bucket", le="0.25")] == 1
    assert got[key("gbcosface_train_step_duration_seconds_bucket", le="0.5")] == 2
    assert got[key("gbcosface_train_loss", term="loss")] == 2.0
    assert got[key("gbcosface_train_loss", term="loss_pos")] == 0.75
    assert got[key("gbcosface_train_cos_v")] == 0.3
    assert got[key("gbcosface_train_learning_rate")] == 0.05
    # Counters of non-finite steps exist at 0 for every term seen, so increase() catches the first.
    assert got[key("gbcosface_train_nonfinite_steps_total", term="loss")] == 0
    assert got[key("gbcosface_train_nonfinite_steps_total", term="loss_pos")] == 0
    assert got[key("gbcosface_info", version=__version__, config_hash="abc123")] == 1
    assert got[key("gbcosface_train_restart_count")] == 0
    assert (
        got[key("gbcosface_train_last_step_timestamp_seconds")]
        >= got[key("gbcosface_train_start_time_seconds")]
    )


def test_every_series_carries_the_constant_labels(metrics):
    metrics.observe_step(1, 0, 8, 0.1, 0.01, {"loss": 1.0})
    for name, labels in scrape(metrics.port):
        if name.startswith("gbcosface_"):
            assert LABELS.items() <= dict(labels).items(), name


def test_phase_is_exclusive_and_validated(metrics):
    assert {"staging", "preempted"} <= set(PHASES)  # served from process start; the SIGTERM stop
    metrics.set_phase("staging")
    assert scrape(metrics.port)[key("gbcosface_train_phase", phase="staging")] == 1.0
    metrics.set_phase("validating")
    got = scrape(metrics.port)
    assert {p: got[key("gbcosface_train_phase", phase=p)] for p in PHASES} == {
        p: (1.0 if p == "validating" else 0.0) for p in PHASES
    }
    assert metrics.phase == "validating"
    with pytest.raises(ValueError, match="unknown phase"):
        metrics.set_phase("sleeping")


def test_nonfinite_validation_and_restart(metrics):
    metrics.observe_step(1, 0, 8, 0.1, 0.0, {"loss": float("nan")})
    metrics.inc_nonfinite("loss")
    metrics.inc_nonfinite("loss")
    metrics.set_validation("lfw", 0.9955, xnorm=22.5)
    metrics.set_validation("cfp_fp", 0.98)
    metrics.set_restart_count(2)
    got = scrape(metrics.port)
    assert math.isnan(got[key("gbcosface_train_loss", term="loss")])
    assert got[key("gbcosface_train_nonfinite_steps_total", term="loss")] == 2
    assert got[key("gbcosface_val_accuracy", target="lfw")] == 0.9955
    assert got[key("gbcosface_val_xnorm", target="lfw")] == 22.5
    assert got[key("gbcosface_val_accuracy", target="cfp_fp")] == 0.98
    assert key("gbcosface_val_xnorm", target="cfp_fp") not in got
    assert got[key("gbcosface_train_restart_count")] == 2


def test_restart_count_comes_from_torchelastic(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "3")
    m = TrainingMetrics(free_port(), "job1", 3, 1, "node-a", bind="127.0.0.1")
    assert m.start()
    try:
        assert scrape(m.port)[key("gbcosface_train_restart_count")] == 3
    finally:
        m.close()


def test_disabled_exporter_is_a_no_op():
    m = TrainingMetrics(0, "job1", 0, 0, "n")
    assert not m.enabled
    assert m.start() is False
    m.set_phase("training")
    m.observe_step(1, 0, 32, 0.1, 0.0, {"loss": 1.0}, cos_v=0.1, lr=0.1)
    m.inc_nonfinite()
    m.set_validation("lfw", 0.5)
    m.set_restart_count(1)
    m.close()
    assert list(m.registry.collect()) == []  # nothing registered, nothing served
    with pytest.raises(ValueError):  # a wrong phase is still a programming error
        m.set_phase("bogus")


def test_close_releases_the_port(metrics):
    port = metrics.port
    metrics.close()
    metrics.close()  # twice is fine
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_busy_port_disables_without_raising(caplog):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        m = TrainingMetrics(port, "job1", 0, 0, "n", bind="127.0.0.1")
        with caplog.at_level(logging.WARNING, logger="gbcosface.monitoring.exporter"):
            assert m.start() is False
        assert f"127.0.0.1:{port}" in caplog.text
        m.close()


class _FakeNvml(types.SimpleNamespace):
    """pynvml's API for one 80 GB GPU at 73% utilisation."""

    class NVMLError(Exception):
        pass

    def __init__(self):
        super().__init__(shutdowns=0)

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=73, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=12 * 2**30, total=80 * 2**30, free=68 * 2**30)


def test_gpu_gauges_from_the_sampler(monkeypatch):
    fake = _FakeNvml()
    monkeypatch.setattr(gpu_module, "_load_pynvml", lambda: fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    m = TrainingMetrics(
        free_port(), "job1", 3, 1, "node-a", bind="127.0.0.1", gpu_index=1, gpu_interval_s=0.05
    )
    assert m.start()
    try:
        got = scrape(m.port)  # the sampler thread's first reading may still be on its way
        deadline = time.monotonic() + 30
        while key("gbcosface_gpu_utilization_ratio", gpu="1") not in got and time.monotonic() < deadline:
            time.sleep(0.05)
            got = scrape(m.port)
        assert got[key("gbcosface_gpu_utilization_ratio", gpu="1")] == pytest.approx(0.73)
        assert got[key("gbcosface_gpu_memory_used_bytes", gpu="1")] == 12 * 2**30
        assert got[key("gbcosface_gpu_memory_total_bytes", gpu="1")] == 80 * 2**30
    finally:
        m.close()
    assert fake.shutdowns == 1


def test_no_gpu_means_no_gpu_series(monkeypatch):
    """On this CPU machine NVML is absent: the exporter serves everything else."""
    monkeypatch.setattr(gpu_module, "_load_pynvml", lambda: None)
    m = TrainingMetrics(free_port(), "job1", 3, 1, "node-a", bind="127.0.0.1", gpu_index=0)
    assert m.start()
    try:
        names = {name for name, _ in scrape(m.port)}
        assert "gbcosface_train_step" in names
        assert not any(n.startswith("gbcosface_gpu_") for n in names)
    finally:
        m.close()
