"""Per-process Prometheus exporter for a training run.

Why one exporter per process (on ``base_port + LOCAL_RANK``): a pod runs one process per GPU, and
per-rank series are what reveal a straggler, a starved loader or an idle GPU; summing them is easy
in PromQL, splitting a pre-summed value back apart is impossible.

Why its own ``CollectorRegistry``: tests and the demo run several exporters in one interpreter,
and the trainer must not leak library metrics registered on the global default registry.

Why a disabled exporter (port 0/None) is a real object whose methods return at once: the trainer
calls it unconditionally on every step, without ``if metrics:`` branches.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from .gpu import GpuSample, NvmlSampler

log = logging.getLogger(__name__)

#: Training phases exposed by ``gbcosface_train_phase{phase=...}``; exactly one is 1 at a time.
#: "staging": the trainer serves /metrics from process start, while the dataset is being staged
#: (alerts that need "training" stay quiet). "preempted": SIGTERM arrived, the last checkpoint is
#: written and the process is about to exit for the operator to restart it.
PHASES = ("starting", "staging", "training", "validating", "checkpointing", "preempted", "done", "failed")

#: Labels every series carries. ``training_job`` rather than ``job``: Prometheus owns the ``job``
#: label (the scrape job) and would rename a scraped ``job`` label to ``exported_job``.
CONST_LABELS = ("training_job", "rank", "local_rank", "node")

# Step durations from a tiny CPU demo step (~10 ms) to a slow full-size step (minutes).
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# Weight of the newest window in the throughput and data-wait moving averages: a few dozen steps
# of memory smooths per-step jitter while still showing a slowdown within a minute.
EMA_ALPHA = 0.1

_POD_NAME = re.compile(r"^(?P<job>.+)-(?:master|worker)-\d+$")


def metrics_port_for(base_port: int | None, local_rank: int) -> int | None:
    """The port this process serves on: ``base_port + local_rank``, or None when metrics are off.

    Why offset by LOCAL_RANK (not RANK): ports are per host, and processes on one host differ only
    in their local rank; the PodMonitor scrapes the pod's named port range from it.
    """
    if not base_port:
        return None
    if local_rank < 0:
        raise ValueError(f"local_rank must be >= 0, got {local_rank}")
    port = int(base_port) + int(local_rank)
    if not 0 < port <= 65535:
        raise ValueError(f"metrics port {base_port} + local rank {local_rank} = {port} is not a valid port")
    return port


def job_name_from_env(env: Mapping[str, str], hostname: str) -> str:
    """The training job's name: ``GBCOSFACE_JOB_NAME``, else parsed from a PyTorchJob pod name.

    The training operator names pods ``<job>-master-0`` / ``<job>-worker-N`` and the pod's hostname
    is its name, so the fallback works in a PyTorchJob even without the env var.
    """
    if env.get("GBCOSFACE_JOB_NAME"):
        return env["GBCOSFACE_JOB_NAME"]
    match = _POD_NAME.match(hostname)
    return match.group("job") if match else "local"


class _Ema:
    """Ratio of two exponentially averaged sums (e.g. samples / seconds).

    Why a ratio of averages rather than an average of per-step ratios: a slow step then weighs in
    proportion to its duration, which is what throughput over wall time means.
    """

    def __init__(self, alpha: float = EMA_ALPHA) -> None:
        self.alpha = alpha
        self.num = 0.0
        self.den = 0.0
        self.seen = False

    def update(self, num: float, den: float) -> float | None:
        if not self.seen:
            self.num, self.den, self.seen = num, den, True
        else:
            self.num += self.alpha * (num - self.num)
            self.den += self.alpha * (den - self.den)
        return self.num / self.den if self.den > 0 else None


class TrainingMetrics:
    """Metrics of one training process, served over HTTP for Prometheus.

    Create it early, call :meth:`start`, then :meth:`observe_step` after each optimizer step (or
    logging window), :meth:`set_phase` around validation/checkpointing, and :meth:`close` at the end.
    Every metric is documented in ``docs/monitoring.md``.
    """

    def __init__(
        self,
        port: int | None,
        job: str,
        rank: int,
        local_rank: int,
        node: str,
        registry: CollectorRegistry | None = None,
        *,
        bind: str = "0.0.0.0",
        config_hash: str = "",
        version: str | None = None,
        restart_count: int | None = None,
        gpu_index: int | None = None,
        gpu_interval_s: float = 5.0,
    ) -> None:
        self.port = port or None
        self.enabled = self.port is not None
        self.bind = bind
        self.registry = registry if registry is not None else CollectorRegistry()
        self.labels = {"training_job": job, "rank": str(rank), "local_rank": str(local_rank), "node": node}
        self._gpu_index = gpu_index
        self._gpu_interval_s = gpu_interval_s
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sampler: NvmlSampler | None = None
        self._lock = threading.Lock()
        self._throughput = _Ema()
        self._data_wait = _Ema()
        self._seen_terms: set[str] = set()
        self._phase = "starting"
        if not self.enabled:
            return
        if version is None:
            from gbcosface import __version__ as version
        if restart_count is None:
            restart_count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        self._build(version, config_hash, restart_count)

    @classmethod
    def from_env(
        cls,
        base_port: int | None,
        *,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> TrainingMetrics:
        """An exporter labelled from the launcher's environment (torchrun / PyTorchJob / local).

        Reads LOCAL_RANK and RANK (torchrun sets both), ``GBCOSFACE_JOB_NAME`` (or the pod name)
        and the hostname; ``kwargs`` go to the constructor (bind, config_hash, gpu_index, ...).
        ``GBCOSFACE_METRICS_BASE_PORT``, when set, replaces ``base_port``: a local launcher that
        runs several "pods" on one host gives each its own base so their ports do not collide.
        """
        env = os.environ if env is None else env
        if env.get("GBCOSFACE_METRICS_BASE_PORT"):
            base_port = int(env["GBCOSFACE_METRICS_BASE_PORT"])
        local_rank = int(env.get("LOCAL_RANK", "0"))
        hostname = socket.gethostname()
        return cls(
            metrics_port_for(base_port, local_rank),
            job=job_name_from_env(env, hostname),
            rank=int(env.get("RANK", "0")),
            local_rank=local_rank,
            node=hostname,
            **kwargs,
        )

    # -- construction -------------------------------------------------------------------------

    def _build(self, version: str, config_hash: str, restart_count: int) -> None:
        reg, names, lab = self.registry, CONST_LABELS, self.labels

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, names + extra, registry=reg)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, names + extra, registry=reg)

        info = Info(
            "gbcosface", "Code version and resolved-config hash of this process.", names, registry=reg
        )
        info.labels(**lab).info({"version": version, "config_hash": config_hash})
        self._start_time = gauge("gbcosface_train_start_time_seconds", "Unix time this process started.")
        self._start_time.labels(**lab).set(time.time())
        self._restarts = gauge(
            "gbcosface_train_restart_count", "torchrun worker-group restarts (TORCHELASTIC_RESTART_COUNT)."
        )
        self._restarts.labels(**lab).set(restart_count)
        self._phase_g = gauge("gbcosface_train_phase", "1 for the current phase of this process.", ("phase",))
        self._step = gauge("gbcosface_train_step", "Global optimizer step last completed.").labels(**lab)
        self._epoch = gauge("gbcosface_train_epoch", "Epoch of the last completed step.").labels(**lab)
        self._samples = counter("gbcosface_train_samples", "Training samples processed by this process.")
        self._samples = self._samples.labels(**lab)
        self._sps = gauge(
            "gbcosface_train_samples_per_second", "Moving average of this process's training throughput."
        ).labels(**lab)
        self._step_hist = Histogram(
            "gbcosface_train_step_duration_seconds",
            "Wall time of one training step, data wait included.",
            names,
            registry=reg,
            buckets=STEP_BUCKETS,
        ).labels(**lab)
        self._wait_total = counter(
            "gbcosface_train_data_wait_seconds", "Time spent waiting for the next batch."
        ).labels(**lab)
        self._wait_ratio = gauge(
            "gbcosface_train_data_wait_ratio",
            "Moving average of the fraction of step time spent waiting for data.",
        ).labels(**lab)
        self._loss = gauge("gbcosface_train_loss", "Latest value of each loss term.", ("term",))
        self._cos_v = gauge("gbcosface_train_cos_v", "GB-CosFace running cos_v statistic.").labels(**lab)
        self._lr = gauge("gbcosface_train_learning_rate", "Current learning rate.").labels(**lab)
        self._nonfinite = counter(
            "gbcosface_train_nonfinite_steps",
            "Steps with a non-finite loss term (skipped or fatal).",
            ("term",),
        )
        self._nonfinite.labels(**lab, term="loss")  # exists at 0 so that increase() sees the first one
        self._last_step = gauge(
            "gbcosface_train_last_step_timestamp_seconds",
            "Unix time of the last completed step (start until then).",
        ).labels(**lab)
        self._last_step.set(time.time())
        self._val_acc = gauge(
            "gbcosface_val_accuracy", "Verification accuracy on a validation set.", ("target",)
        )
        self._val_xnorm = gauge(
            "gbcosface_val_xnorm", "Mean embedding norm on a validation set.", ("target",)
        )
        self._gpu_util = gauge("gbcosface_gpu_utilization_ratio", "NVML GPU utilisation (0-1).", ("gpu",))
        self._gpu_used = gauge("gbcosface_gpu_memory_used_bytes", "NVML GPU memory in use.", ("gpu",))
        self._gpu_total = gauge("gbcosface_gpu_memory_total_bytes", "NVML GPU memory size.", ("gpu",))
        self.set_phase("starting")

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> bool:
        """Serve ``/metrics`` and start the GPU sampler; False if disabled or the port is taken.

        A busy port is logged, not raised: losing metrics must not kill a multi-day training run.
        """
        if not self.enabled or self._server is not None:
            return self._server is not None
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.bind, registry=self.registry)
        except OSError as exc:
            log.warning("metrics disabled: cannot serve on %s:%s (%s)", self.bind, self.port, exc)
            return False
        log.info("serving Prometheus metrics on %s:%s", self.bind, self.port)
        if self._gpu_index is not None:
            self._sampler = NvmlSampler(self._gpu_index, self._gpu_interval_s, on_sample=self._on_gpu_sample)
            self._sampler.start()
        return True

    def close(self) -> None:
        """Stop the sampler and the HTTP server; safe to call twice."""
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> TrainingMetrics:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- training-loop API --------------------------------------------------------------------

    def observe_step(
        self,
        step: int,
        epoch: int,
        samples: int,
        step_seconds: float,
        data_wait_seconds: float,
        loss_terms: Mapping[str, float],
        cos_v: float | None = None,
        lr: float | None = None,
        *,
        steps: int = 1,
    ) -> None:
        """Record a completed step, or a window of ``steps`` steps.

        ``samples``, ``step_seconds`` (wall time, data wait included) and ``data_wait_seconds``
        cover the same window; this process's samples only (not the global batch).
        """
        if not self.enabled:
            return
        lab = self.labels
        with self._lock:
            self._step.set(step)
            self._epoch.set(epoch)
            if samples > 0:
                self._samples.inc(samples)
            if steps > 0 and step_seconds >= 0:
                per_step = step_seconds / steps
                for _ in range(steps):
                    self._step_hist.observe(per_step)
            if data_wait_seconds > 0:
                self._wait_total.inc(data_wait_seconds)
            sps = self._throughput.update(float(samples), float(step_seconds))
            if sps is not None:
                self._sps.set(sps)
            ratio = self._data_wait.update(float(data_wait_seconds), float(step_seconds))
            if ratio is not None:
                self._wait_ratio.set(min(ratio, 1.0))
            for term, value in loss_terms.items():
                self._loss.labels(**lab, term=term).set(float(value))
                if term not in self._seen_terms:  # create the counter at 0 before any non-finite value
                    self._seen_terms.add(term)
                    self._nonfinite.labels(**lab, term=term)
            if cos_v is not None:
                self._cos_v.set(float(cos_v))
            if lr is not None:
                self._lr.set(float(lr))
            self._last_step.set(time.time())

    def set_phase(self, phase: str) -> None:
        """Mark the current phase (one of :data:`PHASES`); alerts on stalls only apply in "training"."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        if not self.enabled:
            return
        with self._lock:
            self._phase = phase
            for name in PHASES:
                self._phase_g.labels(**self.labels, phase=name).set(1.0 if name == phase else 0.0)
            if phase == "training":  # leaving validation/checkpointing is not a stall
                self._last_step.set(time.time())

    @property
    def phase(self) -> str:
        return self._phase

    def inc_nonfinite(self, term: str = "loss") -> None:
        """Count a step whose loss term ``term`` was NaN/Inf (e.g. skipped by the AMP scaler)."""
        if not self.enabled:
            return
        self._nonfinite.labels(**self.labels, term=term).inc()

    def set_restart_count(self, count: int) -> None:
        """Override the restart count read from TORCHELASTIC_RESTART_COUNT at construction."""
        if self.enabled:
            self._restarts.labels(**self.labels).set(count)

    def set_validation(self, target: str, accuracy: float, xnorm: float | None = None) -> None:
        """Record a validation result (accuracy in 0-1) for a target such as "lfw"."""
        if not self.enabled:
            return
        self._val_acc.labels(**self.labels, target=target).set(float(accuracy))
        if xnorm is not None and math.isfinite(xnorm):
            self._val_xnorm.labels(**self.labels, target=target).set(float(xnorm))

    def _on_gpu_sample(self, sample: GpuSample) -> None:
        gpu = {**self.labels, "gpu": str(sample.index)}
        if sample.utilization_ratio is not None:
            self._gpu_util.labels(**gpu).set(sample.utilization_ratio)
        if sample.memory_used_bytes is not None:
            self._gpu_used.labels(**gpu).set(sample.memory_used_bytes)
        if sample.memory_total_bytes is not None:
            self._gpu_total.labels(**gpu).set(sample.memory_total_bytes)
