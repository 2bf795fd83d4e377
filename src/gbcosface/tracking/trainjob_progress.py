"""TrainJob progress: progress percentage, ETA and a few metrics into `TrainJob.status.trainerStatus`.

Why this shape: Kubeflow Trainer >= 2.2 (alpha gate TrainJobStatus) injects into a TrainJob's trainer
containers KUBEFLOW_TRAINER_SERVER_URL (https://<webhook service>.<ns>.svc:<port>/apis/trainer.kubeflow.org/
v1alpha1/namespaces/<ns>/trainjobs/<name>/status), KUBEFLOW_TRAINER_SERVER_CA_CERT and
KUBEFLOW_TRAINER_SERVER_TOKEN (files of a projected volume: the CA, and a service-account token with the
audience trainer.kubeflow.org/v1alpha1/namespaces/<ns>/trainjobs/<name>/status that rotates hourly)
(kubeflow/trainer@v2.3.0: pkg/runtime/framework/plugins/trainjobstatus/trainjobstatus.go). The controller
serves POST at that path, checks `Authorization: Bearer <token>`, decodes
`{"trainerStatus": {"progressPercentage", "estimatedRemainingSeconds", "metrics": [{"name", "value"}],
"lastUpdatedTime"}}` and applies it to the status, where the CRD bounds them: percentage 0..100,
seconds >= 0 (both int32), at most 256 metrics, names and string values of 1..64 characters
(pkg/statusserver/server.go, pkg/apis/trainer/v1alpha1/trainjob_types.go).

The Kubeflow SDK's `update_trainjob_status` (kubeflow 0.5.0) speaks exactly that, re-reads the token, and
trusts the injected CA; but it is synchronous (up to a 5 s timeout per call) and throttles only after a
success, so it is called here from a daemon thread, at most once per `interval_s` (>= 5 s, the SDK's and
the docs' rate) with the newest values: the training step only stores a dict, and a failure is logged once.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("gbcosface.tracking")

URL_ENV = "KUBEFLOW_TRAINER_SERVER_URL"
CA_ENV = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
TOKEN_ENV = "KUBEFLOW_TRAINER_SERVER_TOKEN"
MIN_INTERVAL_S = 5.0
MAX_METRICS = 256
MAX_VALUE_CHARS = 64


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    return bool((environ if environ is not None else os.environ).get(URL_ENV))


def metric_value(value: float) -> str:
    """A metric as the CRD's string (<= 64 characters)."""
    return f"{value:.6g}"[:MAX_VALUE_CHARS]


def _sdk_update(**kwargs: Any) -> bool:
    from kubeflow.trainer import update_trainjob_status

    return bool(update_trainjob_status(**kwargs))


class TrainJobProgress:
    def __init__(self, interval_s: float = MIN_INTERVAL_S, send: Callable[..., bool] = _sdk_update) -> None:
        self.interval_s = max(MIN_INTERVAL_S, interval_s)
        self._send = send
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._latest: dict[str, Any] | None = None
        self._final = False
        self._last_sent = -math.inf
        self._warned = False
        self.sent = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._loop, name="gbcosface-trainjob-progress", daemon=True)
        self._thread.start()

    def update(self, percent: float, remaining_s: float | None, metrics: Mapping[str, float]) -> None:
        """Store the newest values (the thread sends them when the interval allows); never blocks."""
        payload = {
            "progress_percent": max(0, min(100, int(percent))),
            "estimated_remaining_seconds": None if remaining_s is None or not math.isfinite(remaining_s)
            else max(0, min(2**31 - 1, int(remaining_s))),
            "metrics": {k[:MAX_VALUE_CHARS]: metric_value(v) for k, v in list(metrics.items())[:MAX_METRICS]
                        if v is not None and math.isfinite(float(v))},
        }
        with self._lock:
            self._latest = payload

    def close(self, final_metrics: Mapping[str, float] | None = None, timeout_s: float = 12.0) -> None:
        """Report 100% (with `final_metrics`) once the interval allows, waiting at most `timeout_s`."""
        if final_metrics is not None:
            self.update(100, 0, final_metrics)
        with self._lock:
            self._final = True
        self._wake.set()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            wait = self._last_sent + self.interval_s - time.monotonic()
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
                continue
            with self._lock:
                payload, self._latest = self._latest, None
                final = self._final
            if payload is not None:
                try:
                    ok = self._send(**payload)
                except Exception as exc:  # noqa: BLE001 - progress must never fail training
                    ok = False
                    log.debug("TrainJob progress: %s", exc)
                self._last_sent = time.monotonic()  # after the call: the SDK's own throttle starts at its end
                if ok:
                    self.sent += 1
                else:
                    self.failed += 1
                    if not self._warned:
                        self._warned = True
                        log.warning("TrainJob progress update to %s failed; training goes on (later failures "
                                    "are not logged)", os.environ.get(URL_ENV, "?"))
            if final:
                with self._lock:
                    if self._latest is None:
                        return
                continue
            self._wake.wait(self.interval_s)
            self._wake.clear()
