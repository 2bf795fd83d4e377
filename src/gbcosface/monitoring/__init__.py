"""Training observability: a per-process Prometheus exporter and an NVML GPU sampler.

The trainer uses :class:`TrainingMetrics` (one per process, on ``base_port + LOCAL_RANK``);
the cluster side (PodMonitor, PrometheusRule, Grafana dashboard) lives in ``k8s/monitoring/``
and every metric is described in ``docs/monitoring.md``.
"""

from .exporter import CONST_LABELS, PHASES, TrainingMetrics, job_name_from_env, metrics_port_for
from .gpu import GpuSample, NvmlSampler

__all__ = [
    "CONST_LABELS",
    "PHASES",
    "GpuSample",
    "NvmlSampler",
    "TrainingMetrics",
    "job_name_from_env",
    "metrics_port_for",
]
