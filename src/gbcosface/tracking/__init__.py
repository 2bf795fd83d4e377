"""Experiment tracking for a training run: MLflow, TensorBoard event files, TrainJob progress.

Why one facade: the trainer calls four methods (`step`, `validation`, `finish`, `close`) on rank 0 and
does not care which sinks are on. Each sink takes its data in memory and sends it from its own thread
(tracking/mlflow_run.py, tensorboard.py, trainjob_progress.py), so a slow or dead tracking server never
slows a step, and no tracking failure ever fails the run.

Which sinks: MLflow when `run.mlflow_tracking_uri` or MLFLOW_TRACKING_URI is set (KFP 2.17's MLflow
integration sets it in the task; the train step forwards it to the pods, see tracking/mlflow_env.py);
TensorBoard when `run.tensorboard` (event files under `<run.output>/tensorboard/`); TrainJob progress
when KUBEFLOW_TRAINER_SERVER_URL is injected (a TrainJob with the TrainJobStatus gate). All scalars are
written at the log interval (`run.log_every`) with the optimizer step as the x axis:

- `train/<term>` (loss and the loss's own terms), `train/cos_v`, `train/lr`, `train/epoch`,
  `train/samples_per_s` (over the interval, all ranks);
- `val/<target>/accuracy`, `val/<target>/xnorm`, `val/mean_accuracy` at each validation;
- `final/<term>` and `final/samples_per_s` once, at the last step.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("gbcosface.tracking")

#: How often the S3 copy of the TensorBoard event files is refreshed during training.
TB_UPLOAD_EVERY_S = 120.0


def _mlflow_settings(cfg: Any, environ: Mapping[str, str]) -> dict[str, Any] | None:
    from gbcosface.tracking import mlflow_env as E

    uri = cfg.run.mlflow_tracking_uri or environ.get(E.TRACKING_URI, "")
    if not uri:
        return None
    return {
        "tracking_uri": uri,
        "experiment_id": environ.get(E.EXPERIMENT_ID) or None,
        "experiment_name": environ.get(E.EXPERIMENT_NAME) or "gbcosface",
        "parent_run_id": environ.get(E.PARENT_RUN_ENV) or environ.get(E.RUN_ID) or None,
    }


def trainer_params(cfg: Any, config_hash: str, environ: Mapping[str, str], **extra: Any) -> dict[str, str]:
    """What a run is: the resolved config (dotted keys), its hash, the dataset manifest hash, the image, the code."""
    from gbcosface import config as config_mod
    from gbcosface.lineage import code_version
    from gbcosface.tracking import mlflow_env as E
    from gbcosface.tracking.mlflow_run import flatten

    params = flatten(config_mod.to_dict(cfg))
    params.update({"config_hash": config_hash, "code_version": code_version(),
                   "dataset_manifest_hash": environ.get(E.MANIFEST_HASH_ENV, "") or "unknown",
                   "image": environ.get(E.IMAGE_ENV, "") or "unknown"})
    params.update({k: str(v) for k, v in extra.items()})
    return params


class Tracker:
    """Rank 0's tracking sinks behind one interface; with no sinks every method returns at once."""

    def __init__(self, *, mlflow: Any = None, tensorboard: Any = None, progress: Any = None, total: int = 0,
                 start_step: int = 0, global_batch: int = 1, log_every: int = 1) -> None:
        self.mlflow = mlflow
        self.tensorboard = tensorboard
        self.progress = progress
        self.total = total
        self.global_batch = global_batch
        self.log_every = max(1, log_every)
        self._start_step = start_step
        self._t_start = self._window_t = time.perf_counter()
        self._window_steps = 0
        self._tb_uploaded = time.monotonic()
        self._finished = False

    @property
    def active(self) -> bool:
        return any(s is not None for s in (self.mlflow, self.tensorboard, self.progress))

    @classmethod
    def for_trainer(cls, cfg: Any, env: Any, config_hash: str, *, start_step: int, total: int, global_batch: int,
                    extra_params: Mapping[str, Any] | None = None,
                    environ: Mapping[str, str] | None = None) -> Tracker:
        environ = os.environ if environ is None else environ
        if not env.is_main:
            return cls()
        sinks: dict[str, Any] = {}
        settings = _mlflow_settings(cfg, environ)
        if settings and importlib.util.find_spec("mlflow") is None:
            log.warning("MLflow tracking at %s is off: its client is not installed (pip install 'gbcosface[tracking]')",
                        settings["tracking_uri"])
            settings = None
        if settings:
            from gbcosface.tracking.mlflow_run import MlflowRun

            job = environ.get("GBCOSFACE_JOB_NAME", "")
            run = MlflowRun(run_name="trainer" if settings["parent_run_id"] else (job or "gbcosface-train"),
                            resume_key=f"trainer:{cfg.run.output}",
                            tags={"gbcosface.output": cfg.run.output, "gbcosface.config_hash": config_hash,
                                  **({"gbcosface.job_name": job} if job else {})}, **settings)
            run.log_params(trainer_params(cfg, config_hash, environ, **(extra_params or {})))
            sinks["mlflow"] = run
        if cfg.run.tensorboard:
            try:
                from gbcosface.tracking.tensorboard import TensorBoardLog

                sinks["tensorboard"] = TensorBoardLog(cfg.run.output)
            except ImportError as exc:
                log.warning("TensorBoard event files off: %s (pip install 'gbcosface[tracking]')", exc)
        from gbcosface.tracking import trainjob_progress

        if trainjob_progress.enabled(environ):
            sinks["progress"] = trainjob_progress.TrainJobProgress()
        return cls(**sinks, total=total, start_step=start_step, global_batch=global_batch,
                   log_every=cfg.run.log_every)

    def _scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.mlflow is not None:
            self.mlflow.log_metrics(values, step)
        if self.tensorboard is not None:
            self.tensorboard.scalars(values, step)

    def step(self, step: int, epoch: int, terms: Mapping[str, float], lr: float) -> None:
        """After each optimizer step (`step` = steps done); writes at the log interval and the last step."""
        if not self.active:
            return
        self._window_steps += 1
        if step % self.log_every != 0 and step != self.total:
            return
        now = time.perf_counter()
        elapsed = now - self._window_t
        sps = self._window_steps * self.global_batch / elapsed if elapsed > 0 else 0.0
        values = {f"train/{k}": float(v) for k, v in terms.items()}
        values.update({"train/lr": float(lr), "train/epoch": float(epoch), "train/samples_per_s": sps})
        self._scalars(values, step)
        self._window_t, self._window_steps = now, 0
        if self.progress is not None:
            done = step - self._start_step
            per_step = (now - self._t_start) / done if done > 0 else None
            eta = (self.total - step) * per_step if per_step is not None else None
            self.progress.update(100.0 * step / max(1, self.total), eta,
                                 {"step": step, "epoch": epoch, "loss": terms.get("loss"), "cos_v": terms.get("cos_v"),
                                  "lr": lr, "samples_per_s": sps})
        if self.tensorboard is not None and time.monotonic() - self._tb_uploaded > TB_UPLOAD_EVERY_S:
            self._tb_uploaded = time.monotonic()
            self.tensorboard.flush()

    def validation(self, step: int, per_target: Mapping[str, Mapping[str, float]]) -> None:
        if not self.active or not per_target:
            return
        values: dict[str, float] = {}
        for target, res in per_target.items():
            values[f"val/{target}/accuracy"] = float(res["accuracy"])
            if res.get("xnorm") is not None:
                values[f"val/{target}/xnorm"] = float(res["xnorm"])
        values["val/mean_accuracy"] = sum(float(r["accuracy"]) for r in per_target.values()) / len(per_target)
        self._scalars(values, step)
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def finish(self, summary: Mapping[str, Any]) -> None:
        """The run's final loss terms and throughput, at its last step."""
        self._finished = True
        if not self.active:
            return
        values = {f"final/{k}": float(v) for k, v in (summary.get("final_loss_terms") or {}).items()}
        if summary.get("samples_per_second"):
            values["final/samples_per_s"] = float(summary["samples_per_second"])
        self._scalars(values, int(summary.get("steps", 0)))
        if self.progress is not None:
            self.progress.update(100, 0, {"step": summary.get("steps", 0), **{k: v for k, v in values.items()}})

    def close(self, preempted: bool = False) -> None:
        """End every sink: the MLflow run FINISHED after `finish()`, KILLED on preemption, else FAILED."""
        status = "FINISHED" if self._finished else ("KILLED" if preempted else "FAILED")
        for name in ("tensorboard", "mlflow", "progress"):
            sink = getattr(self, name)
            if sink is None:
                continue
            try:
                if name == "mlflow":
                    sink.close(status)
                elif name == "progress":
                    sink.close(None)
                else:
                    sink.close()
            except Exception as exc:  # noqa: BLE001 - tracking must never fail training
                log.warning("closing %s tracking failed: %s", name, exc)
