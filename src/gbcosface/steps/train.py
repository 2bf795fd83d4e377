"""Train step: resolve the config, run the PyTorchJob (or its local emulation), fetch the backbone.

Why the step owns the job's lifetime: the pipeline must not leave a training job running when the
run is cancelled or times out; the job is named after the pipeline run, so a retry of the step
attaches to the same job instead of starting a second one, and the exit handler can find it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from gbcosface.config import TrainConfig, config_hash, load_config, to_yaml
from gbcosface.lineage import Lineage, code_version
from gbcosface.steps.stage import data_cache_dir
from gbcosface.storage import get_bytes, join_uri, put_bytes, read_manifest

log = logging.getLogger(__name__)

#: Where training pods stage the dataset on a cluster (an emptyDir or a PVC mounted by the job).
POD_DATA_DIR = "/data"
#: kubeflow: a PyTorchJob on the cluster; local: its emulation with one process per replica;
#: local-containers: the emulation with one container of the job's image per replica.
LAUNCHERS = ("kubeflow", "local", "local-containers")


def resolve_config(*, recipe: str, overrides: list[str], data_root: str, data_source: str,
                   manifest_uri: str, run_uri: str) -> TrainConfig:
    """The recipe plus the user's overrides plus what this run decides: where data and outputs live."""
    return load_config(recipe, [
        *overrides,
        f"data.train_dir={data_root}/train",
        f"data.val_dir={data_root}/val",
        f"data.stage_from={data_source}",
        f"data.stage_manifest={manifest_uri}",
        f"data.stage_to={data_root}",
        f"run.output={join_uri(run_uri, 'train')}",
    ])


def train_model(*, dataset_manifest: str, recipe: str, overrides: list[str], run_id: str, run_uri: str,
                work_dir: str, endpoint_url: str = "", launcher: str = "kubeflow", nnodes: int = 1,
                nproc_per_node: int = 1, image: str = "", namespace: str = "kubeflow",
                s3_secret: str = "", gpus_per_node: int = 0, timeout_s: int = 0,
                model_dir: str) -> dict[str, Any]:
    from gbcosface.launch.names import job_name_for_run

    manifest = read_manifest(dataset_manifest)
    manifest_uri = join_uri(run_uri, "dataset", "manifest.json")
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, not {launcher!r}")
    local = launcher != "kubeflow"
    # Replica processes share this step's staged copy; replica containers stage into their own
    # /data, as pods do.
    data_root = str(data_cache_dir(work_dir).resolve()) if launcher == "local" else POD_DATA_DIR
    cfg = resolve_config(recipe=recipe, overrides=overrides, data_root=data_root,
                         data_source=manifest.source, manifest_uri=manifest_uri, run_uri=run_uri)
    endpoint = endpoint_url or None
    put_bytes(join_uri(run_uri, "config.yaml"), to_yaml(cfg).encode(), endpoint_url=endpoint)
    name = job_name_for_run(run_id)
    spec = job_spec(name=name, run_id=run_id, local=local, nnodes=nnodes, nproc_per_node=nproc_per_node,
                    image=image, namespace=namespace, s3_secret=s3_secret, gpus_per_node=gpus_per_node,
                    timeout_s=timeout_s)
    if local:
        _run_local(cfg, spec, work_dir=work_dir, containers=launcher == "local-containers")
        image_ref = f"local-emulation ({image})" if image else "local-emulation"
    else:
        _run_cluster(cfg, spec, timeout_s=timeout_s)
        image_ref = image

    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fname in ("backbone.json", "backbone.pt"):
        data = get_bytes(join_uri(cfg.run.output, "model", fname), endpoint_url=endpoint)
        tmp = out / f".{fname}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out / fname)
    summary = json.loads(get_bytes(join_uri(cfg.run.output, "train_summary.json"), endpoint_url=endpoint))
    lineage = Lineage(run_id=run_id, config_hash=config_hash(cfg), dataset_manifest_hash=manifest.hash,
                      code_version=code_version(), image=image_ref, seed=cfg.run.seed)
    metadata = {**lineage.as_dict(), "job_name": name, "launcher": launcher, "nnodes": nnodes,
                "nproc_per_node": nproc_per_node, "train_summary": summary,
                "config_uri": join_uri(run_uri, "config.yaml"), "train_output": cfg.run.output}
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
    return {"lineage": lineage.as_dict(), "job_name": name, "summary": summary}


def job_spec(*, name: str, run_id: str, local: bool, nnodes: int, nproc_per_node: int, image: str,
             namespace: str, s3_secret: str, gpus_per_node: int, timeout_s: int) -> Any:
    """One JobSpec for both launchers: locally the rendered job itself is what the emulator runs."""
    from gbcosface.launch.pytorchjob import JobSpec

    return JobSpec(
        name=name, image=image or "gbcosface-trainer:local", namespace=namespace, nnodes=nnodes,
        nproc_per_node=nproc_per_node, gpus_per_node=0 if local else gpus_per_node,
        s3_secret_name=s3_secret or None, run_id=run_id, active_deadline_seconds=timeout_s or None,
        data_mount_path=POD_DATA_DIR, data_scratch_size=None if local else "2Ti",
        shm_size=None if local else "64Gi", backoff_limit=2,
    )


def _run_local(cfg: TrainConfig, spec: Any, *, work_dir: str, containers: bool = False) -> None:
    """The PyTorchJob emulation: the rendered job's command, env, pod count, backoff and deadline,
    one process (or, with `containers`, one container of the job's image: gbcosface.launch.containers)
    per replica with the operator's environment (gbcosface.launch.local)."""
    from gbcosface.launch.local import plan_from_job, run_plan
    from gbcosface.launch.pytorchjob import render_job

    job_dir = Path(work_dir).resolve() / "jobs" / spec.name
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)
    rendered = render_job(spec, cfg)
    (job_dir / "job.yaml").write_text(rendered.to_yaml())
    plan = plan_from_job(rendered.job, rendered.configmap, job_dir)
    threads = max(1, (os.cpu_count() or 1) // (spec.nnodes * spec.nproc_per_node))
    plan.env.setdefault("OMP_NUM_THREADS", str(threads))
    extra: dict[str, Any] = {}
    if containers:
        from gbcosface.launch.containers import runtime_for_job, secret_env

        extra = {"runtime": runtime_for_job(rendered.job, job_dir / "config.yaml"), "base_env": secret_env()}
    result = run_plan(plan, log_dir=job_dir / "logs", metrics_base_port=cfg.run.metrics_port or None, **extra)
    if not result.succeeded:
        tail = ""
        log_file = result.log_file(0)
        if log_file.is_file():
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"local PyTorchJob {spec.name} failed ({result.reason}, exit codes "
                           f"{result.exit_codes}, {result.restarts} restart(s)); master log tail:\n{tail}")
    log.info("local PyTorchJob %s succeeded after %d restart(s); logs in %s", spec.name, result.restarts,
             result.log_dir)


def _run_cluster(cfg: TrainConfig, spec: Any, *, timeout_s: int) -> None:
    from gbcosface.launch.client import JobClient, default_sink
    from gbcosface.launch.pytorchjob import render_job

    rendered = render_job(spec, cfg)
    status = JobClient(namespace=spec.namespace).run(rendered, timeout_s=timeout_s or 7 * 24 * 3600,
                                                     log_sink=default_sink(spec.name))
    log.info("PyTorchJob %s/%s: %s", spec.namespace, spec.name, status.describe())


def cleanup_job(*, run_id: str, launcher: str, namespace: str) -> str:
    """Exit handler: delete this run's PyTorchJob if it is still there (cancel, failure, timeout)."""
    from gbcosface.launch.names import job_name_for_run

    name = job_name_for_run(run_id)
    if launcher in ("local", "local-containers"):
        # The emulator stops its processes (containers) itself, on success, failure and cancellation.
        return f"local launcher: nothing left to delete for {name}"
    from gbcosface.launch.client import JobClient

    existed = JobClient(namespace=namespace).delete(name, namespace, missing_ok=True)
    return f"deleted PyTorchJob {namespace}/{name}" if existed else f"no PyTorchJob {namespace}/{name} left"
