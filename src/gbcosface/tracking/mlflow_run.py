"""An MLflow run fed from the training loop that never waits on the tracking server.

Why a thread of its own: one synchronous `log_metric` to a tracking server took ~100 ms here
(ENVIRONMENT.md), longer than a GPU step, and a server that is down would stall training for its HTTP
retries. So the loop only appends to an in-memory buffer; a daemon thread creates (or finds) the run and
sends the buffer with `log_batch` (MLflow's limits: 1,000 metrics, 100 params per call) every
`flush_interval_s`. A failed send keeps the data, logs one warning for the whole outage, and retries with
a backoff; `close()` waits a bounded time for the last batch and the run's terminal status, then gives up,
so training finishes whether or not the server answers.

Runs are found again by a `gbcosface.resume_key` tag: a trainer restarted after a preemption (same output
URI) continues its run, and a pipeline step retried by KFP reuses its task's run, so curves stay whole.
Uses MLflow's own client (`mlflow-skinny`, the `tracking` extra), which reads the auth variables KFP sets
(MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD, MLFLOW_TRACKING_AUTH, MLFLOW_WORKSPACE) itself.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from gbcosface.tracking.mlflow_env import PARENT_TAG

log = logging.getLogger("gbcosface.tracking")

RESUME_TAG = "gbcosface.resume_key"
MAX_METRICS_PER_CALL = 1000
MAX_PARAMS_PER_CALL = 100
MAX_PARAM_LENGTH = 6000
#: Without these MLflow's client retries a dead server for minutes inside one call.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class TrackingUnavailable(RuntimeError):
    """MLflow's client is not installed (`pip install gbcosface[tracking]`)."""


def make_client(tracking_uri: str) -> Any:
    """MLflow's client for `tracking_uri`, with short HTTP timeouts unless the user set their own."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TrackingUnavailable(f"MLflow tracking needs the mlflow client: pip install 'gbcosface[tracking]' ({exc})") from None
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id_for(client: Any, experiment_id: str | None, experiment_name: str) -> str:
    """The given experiment id, else the id of `experiment_name` (created when missing)."""
    if experiment_id:
        return str(experiment_id)
    found = client.get_experiment_by_name(experiment_name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(experiment_name))
    except Exception:  # created meanwhile by another process
        found = client.get_experiment_by_name(experiment_name)
        if found is None:
            raise
        return str(found.experiment_id)


def find_or_create_run(client: Any, experiment_id: str, *, run_name: str, resume_key: str | None = None,
                       parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
    """The id of the run tagged `resume_key` in the experiment (set RUNNING again), else of a new run."""
    if resume_key:
        quoted = resume_key.replace("\\", "\\\\").replace("'", "\\'")
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RESUME_TAG}` = '{quoted}'",
                                   max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
            return str(run_id)
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    if resume_key:
        all_tags[RESUME_TAG] = resume_key
    return str(client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id)


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """A nested mapping as dotted MLflow params (`model.name` -> `iresnet100`), values cut to MLflow's limit."""
    out: dict[str, str] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    out[prefix.rstrip(".")] = str(obj)[:MAX_PARAM_LENGTH]
    return out


def _permanent(exc: BaseException) -> bool:
    """A request the server rejected as invalid (a changed param value, an unknown run): retrying cannot help."""
    code = getattr(exc, "get_http_status_code", None)
    try:
        status = int(code()) if callable(code) else 0
    except Exception:
        status = 0
    return status in (400, 404)


class MlflowRun:
    """Buffer metrics/params/tags from any thread; a daemon thread sends them. Nothing here blocks or raises."""

    def __init__(self, *, tracking_uri: str, run_name: str, experiment_id: str | None = None,
                 experiment_name: str = "gbcosface", parent_run_id: str | None = None, resume_key: str | None = None,
                 tags: Mapping[str, str] | None = None, flush_interval_s: float = 2.0, max_backoff_s: float = 30.0,
                 max_pending: int = 200_000, client_factory: Callable[[str], Any] = make_client) -> None:
        self.tracking_uri = tracking_uri
        self.run_name = run_name
        self.experiment_id = experiment_id
        self.experiment_name = experiment_name
        self.parent_run_id = parent_run_id
        self.resume_key = resume_key
        self.tags = dict(tags or {})
        self.flush_interval_s = flush_interval_s
        self.max_backoff_s = max_backoff_s
        self.max_pending = max_pending
        self._client_factory = client_factory
        self.run_id: str | None = None
        self.sent_metrics = 0
        self.dropped = 0
        self.failures = 0  # sends that failed (all of them, not only the logged first)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._metrics: list[tuple[str, float, int, int]] = []
        self._params: dict[str, str] = {}
        self._new_tags: dict[str, str] = {}
        self._status: str | None = None
        self._abandon = False
        self._warned = False
        self._client: Any = None
        self._thread = threading.Thread(target=self._loop, name="gbcosface-mlflow", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------ the loop's side
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self._abandon:
            return
        ts = int(time.time() * 1000)
        rows = [(str(k), float(v), int(step), ts) for k, v in metrics.items()
                if v is not None and math.isfinite(float(v))]
        with self._lock:
            self._metrics.extend(rows)
            over = len(self._metrics) - self.max_pending
            if over > 0:  # a long outage: keep the newest points, count what was dropped
                del self._metrics[:over]
                self.dropped += over

    def log_params(self, params: Mapping[str, Any]) -> None:
        with self._lock:
            self._params.update({str(k): str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()})
        self._wake.set()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        with self._lock:
            self._new_tags.update({str(k): str(v) for k, v in tags.items()})

    def close(self, status: str = "FINISHED", timeout_s: float = 15.0) -> bool:
        """Send what is left and end the run with `status`; False when the server did not take it in time."""
        with self._lock:
            self._status = status
        if self._abandon:
            return False
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abandon = True
            self._wake.set()
            with self._lock:
                left = len(self._metrics)
            log.warning("MLflow %s: %d metric point(s) and the run's end were not sent within %.0f s; "
                        "training's results are unaffected", self.tracking_uri, left, timeout_s)
            return False
        return True

    # ---------------------------------------------------------------------------- the thread's side
    def _loop(self) -> None:
        backoff = 1.0
        while not self._abandon:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if self._abandon:
                return
            try:
                done = self._send()
            except TrackingUnavailable as exc:
                log.warning("%s; this run is not tracked in MLflow", exc)
                self._abandon = True
                return
            except Exception as exc:  # noqa: BLE001 - tracking must never fail training
                self.failures += 1
                if not self._warned:
                    self._warned = True
                    log.warning("MLflow %s unreachable or refusing (%s: %s); training goes on, retrying in the "
                                "background", self.tracking_uri, type(exc).__name__, str(exc).splitlines()[0][:300])
                self._wait(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            if self._warned:
                log.info("MLflow %s reachable again", self.tracking_uri)
                self._warned = False
            backoff = 1.0
            if done:
                return

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._abandon and time.monotonic() < deadline:
            time.sleep(min(0.1, seconds))

    def _ensure_run(self) -> Any:
        if self._client is None:
            self._client = self._client_factory(self.tracking_uri)
        if self.run_id is None:
            exp = experiment_id_for(self._client, self.experiment_id, self.experiment_name)
            self.experiment_id = exp
            self.run_id = find_or_create_run(self._client, exp, run_name=self.run_name, resume_key=self.resume_key,
                                             parent_run_id=self.parent_run_id, tags=self.tags)
            log.info("MLflow run %s (experiment %s) at %s", self.run_id, exp, self.tracking_uri)
        return self._client

    def _send(self) -> bool:
        """Send everything buffered; True when the run has been ended (the thread may stop)."""
        from mlflow.entities import Metric, Param, RunTag

        client = self._ensure_run()
        with self._lock:
            params, self._params = self._params, {}
            tags, self._new_tags = self._new_tags, {}
            status = self._status
        items = list(params.items())
        sent = 0
        try:
            while sent < len(items):
                chunk = items[sent:sent + MAX_PARAMS_PER_CALL]
                try:
                    client.log_batch(self.run_id, params=[Param(k, v) for k, v in chunk])
                except Exception as exc:
                    if not _permanent(exc):
                        raise
                    # e.g. a resumed run under a changed config: an MLflow param cannot change its value
                    log.warning("MLflow refused %d param(s) (%s); logging them as tags instead",
                                len(chunk), str(exc).splitlines()[0][:200])
                    tags.update({f"param.{k}": v for k, v in chunk})
                sent += len(chunk)
            if tags:
                client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
                tags = {}
        except Exception:
            with self._lock:  # keep what was not sent
                self._params = {**dict(items[sent:]), **self._params}
                self._new_tags = {**tags, **self._new_tags}
            raise
        while True:
            with self._lock:
                batch = self._metrics[:MAX_METRICS_PER_CALL]
            if not batch:
                break
            client.log_batch(self.run_id, metrics=[Metric(k, v, ts, s) for k, v, s, ts in batch])
            with self._lock:
                del self._metrics[:len(batch)]
            self.sent_metrics += len(batch)
        if status is not None:
            client.set_terminated(self.run_id, status=status)
            return True
        return False
