"""Train step: resolve the config, run the training job (or its local emulation), fetch the backbone.

Why the step owns the job's lifetime: the pipeline must not leave a training job running when the
run is cancelled or times out; the job is named after the pipeline run's unique id (built here, not
in the DAG: a real KFP backend substitutes a placeholder only as a whole task input), so a retry of
the step attaches to the same job instead of starting a second one, and the exit handler can find
it. Either kind (`job_kind`: pytorchjob | trainjob) runs under either launcher: "kubeflow" (a
cluster) or "local" (the emulator, one process per node with the operator's environment). The
cluster-specific settings come from one YAML cluster profile (gbcosface.launch.profile).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gbcosface.launch.profile import ClusterProfile
    from gbcosface.launch.spec import JobSpec


from gbcosface.config import TrainConfig, config_hash, load_config, to_yaml
from gbcosface.lineage import Lineage, code_version
from gbcosface.steps.runs import check_run_id
from gbcosface.steps.runs import run_uri as make_run_uri
from gbcosface.steps.stage import data_cache_dir
from gbcosface.storage import get_bytes, join_uri, put_bytes, read_manifest
from gbcosface.yaml_safe import load_yaml

log = logging.getLogger(__name__)

#: Where training pods stage the dataset on a cluster (an emptyDir or a PVC mounted by the job).
POD_DATA_DIR = "/data"


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


LAUNCHERS = ("kubeflow", "local", "local-containers")
JOB_KINDS = ("pytorchjob", "trainjob")
#: The step's own default deadline when timeout_s is 0 (a week: big runs take days).
DEFAULT_TIMEOUT_S = 7 * 24 * 3600


def _is_local(launcher: str) -> bool:
    return launcher.startswith("local")


def train_model(*, dataset_manifest: str, recipe: str, overrides: list[str], run_id: str, output_uri: str,
                work_dir: str, endpoint_url: str = "", launcher: str = "kubeflow", job_kind: str = "pytorchjob",
                nnodes: int = 1, nproc_per_node: int = 1, gpus_per_node: int = 0, trainer_image: str = "",
                namespace: str = "", cluster_profile: str = "", s3_secret: str = "", timeout_s: int = 0,
                mlflow_tracking_uri: str = "", model_dir: str) -> dict[str, Any]:
    from gbcosface.launch.names import job_name_for_run
    from gbcosface.launch.namespace import default_namespace
    from gbcosface.launch.profile import parse_cluster_profile

    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, not {launcher!r}")
    run_id = check_run_id(run_id)  # on KFP 2.4 it arrives empty and comes from the pod's label
    if job_kind not in JOB_KINDS:
        raise ValueError(f"job_kind must be one of {JOB_KINDS}, not {job_kind!r}")
    profile = parse_cluster_profile(cluster_profile)  # before any work: a typo fails the step at once
    if s3_secret and "s3_secret" not in (load_yaml(cluster_profile or "{}", "cluster profile") or {}):
        # The pipeline's `s3_secret` (what the steps use) is the job's too unless the profile names another.
        profile = dataclasses.replace(profile, s3_secret=s3_secret)
    run_uri = make_run_uri(output_uri, run_id)
    manifest = read_manifest(dataset_manifest)
    manifest_uri = join_uri(run_uri, "dataset", "manifest.json")
    local = _is_local(launcher)
    ns = default_namespace(namespace)
    # Replica processes share this step's staged copy; replica containers stage into their own
    # /data, as pods do.
    data_root = str(data_cache_dir(work_dir).resolve()) if launcher == "local" else POD_DATA_DIR
    cfg = resolve_config(recipe=recipe, overrides=overrides, data_root=data_root,
                         data_source=manifest.source, manifest_uri=manifest_uri, run_uri=run_uri)
    endpoint = endpoint_url or None
    put_bytes(join_uri(run_uri, "config.yaml"), to_yaml(cfg).encode(), endpoint_url=endpoint)
    name = job_name_for_run(run_id)
    spec = job_spec(name=name, run_id=run_id, local=local, nnodes=nnodes, nproc_per_node=nproc_per_node,
                    image=trainer_image, namespace=ns, gpus_per_node=gpus_per_node, timeout_s=timeout_s,
                    profile=profile)
    tracking = _track(spec, profile, run_id=run_id, local=local, tracking_uri=mlflow_tracking_uri,
                      manifest_hash=manifest.hash, image=trainer_image)
    try:
        if local:
            _run_local(cfg, spec, job_kind=job_kind, launcher=launcher, work_dir=work_dir)
            image_ref = f"local-emulation ({trainer_image})" if trainer_image else "local-emulation"
        else:
            _run_cluster(cfg, spec, job_kind=job_kind, timeout_s=timeout_s,
                         stuck_pod_grace_s=profile.stuck_pod_grace_s, queue_grace_s=profile.queue_grace_s,
                         gpu_resource=profile.gpu_resource, trainjob_retention_s=profile.trainjob_retention_s)
            image_ref = trainer_image
    except BaseException:
        if tracking is not None:
            tracking.end("FAILED")
        raise
    if tracking is not None:
        tracking.end("FINISHED")

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
    metadata = {**lineage.as_dict(), "job_name": name, "job_kind": job_kind, "namespace": ns, "launcher": launcher,
                "nnodes": nnodes, "nproc_per_node": nproc_per_node, "train_summary": summary,
                "config_uri": join_uri(run_uri, "config.yaml"), "train_output": cfg.run.output}
    tmp = out / ".metadata.json.tmp"
    tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
    os.replace(tmp, out / "metadata.json")
    return {"lineage": lineage.as_dict(), "job_name": name, "job_kind": job_kind, "namespace": ns,
            "run_uri": run_uri, "summary": summary}


def _track(spec: JobSpec, profile: ClusterProfile, *, run_id: str, local: bool, tracking_uri: str,
           manifest_hash: str, image: str) -> Any:
    """This task's MLflow run (KFP's, or made here from `tracking_uri`), and the job's pods told to nest the
    trainer's run under it: plain variables as values, credentials as references to KFP's Secret."""
    from gbcosface.tracking import mlflow_env
    from gbcosface.tracking.pipeline import task_run

    spec.env.update({mlflow_env.MANIFEST_HASH_ENV: manifest_hash, **({mlflow_env.IMAGE_ENV: image} if image else {})})
    tracking = task_run(run_id=run_id, task="train", tracking_uri=tracking_uri)
    if tracking is None:
        return None
    spec.env.update(tracking.pod_env())
    if not local:  # locally the replicas inherit this process's credentials
        refs, missing = mlflow_env.credential_refs(os.environ, profile.mlflow_secret_keys)
        spec.secret_env.update(refs)
        if missing:
            log.warning("MLflow credentials %s are not passed to the training pods: name their keys in %s with "
                        "the cluster profile's mlflow_secret_keys", ", ".join(missing), mlflow_env.KFP_CREDENTIAL_SECRET)
    return tracking


def job_spec(*, name: str, run_id: str, local: bool, nnodes: int, nproc_per_node: int, image: str,
             namespace: str, gpus_per_node: int, timeout_s: int, profile: ClusterProfile | None = None) -> JobSpec:
    """One JobSpec for both launchers: locally the rendered job itself is what the emulator runs.
    The cluster profile supplies what the cluster needs; locally GPUs, volumes and secrets are moot."""
    from gbcosface.launch.profile import ClusterProfile, apply_profile
    from gbcosface.launch.spec import JobSpec

    spec = JobSpec(name=name, image=image or "gbcosface:local", namespace=namespace, nnodes=nnodes,
                   nproc_per_node=nproc_per_node, gpus_per_node=0 if local else gpus_per_node, run_id=run_id,
                   active_deadline_seconds=timeout_s or None, data_mount_path=POD_DATA_DIR)
    spec = apply_profile(spec, profile or ClusterProfile())
    if local:
        # The emulator stages into work_dir and reads S3 credentials from its own environment.
        spec.data_scratch_size = None
        spec.data_volume_claim = None
        spec.s3_secret_name = None
    return spec


def _run_local(cfg: TrainConfig, spec: JobSpec, *, job_kind: str, launcher: str, work_dir: str) -> None:
    """The job's emulation: the rendered job's command, env, node count, restarts and deadline, one
    process (or, with launcher local-containers, one container of the job's image) per node with its
    operator's environment (gbcosface.launch.local)."""
    from gbcosface.launch.kinds import get_job_kind
    from gbcosface.launch.local import run_plan

    kind = get_job_kind(job_kind)
    job_dir = Path(work_dir).resolve() / "jobs" / spec.name
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)
    rendered = kind.render(spec, cfg)
    (job_dir / "job.yaml").write_text(rendered.to_yaml())
    plan = kind.plan(rendered.job, rendered.configmap, job_dir)
    threads = max(1, (os.cpu_count() or 1) // (spec.nnodes * spec.nproc_per_node))
    plan.env.setdefault("OMP_NUM_THREADS", str(threads))
    extra: dict[str, Any] = {}
    if launcher == "local-containers":
        # Each node a container of the job's image (gbcosface.launch.containers), as its Master pod runs.
        from gbcosface.launch.containers import runtime_for_job, secret_env

        if job_kind != "pytorchjob":
            raise ValueError("launcher local-containers emulates PyTorchJobs only; use launcher local for a TrainJob")
        extra = {"runtime": runtime_for_job(rendered.job, job_dir / "config.yaml"), "base_env": secret_env()}
    result = run_plan(plan, log_dir=job_dir / "logs", metrics_base_port=cfg.run.metrics_port or None, **extra)
    if not result.succeeded:
        tail = ""
        log_file = result.log_file(0)
        if log_file.is_file():
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"local {kind.kind} {spec.name} failed ({result.reason}, exit codes "
                           f"{result.exit_codes}, {result.restarts} restart(s)); node 0 log tail:\n{tail}")
    log.info("local %s %s succeeded after %d restart(s); logs in %s", kind.kind, spec.name, result.restarts,
             result.log_dir)


def _run_cluster(cfg: TrainConfig, spec: JobSpec, *, job_kind: str, timeout_s: int, stuck_pod_grace_s: float,
                 queue_grace_s: float | None = None, gpu_resource: str = "nvidia.com/gpu",
                 trainjob_retention_s: int | None = None) -> None:
    from gbcosface.launch.client import DEFAULT_QUEUE_GRACE_S, JobClient, default_sink
    from gbcosface.launch.kinds import get_job_kind

    kind = get_job_kind(job_kind)
    rendered = kind.render(spec, cfg)
    client = JobClient(namespace=spec.namespace, kind=kind, stuck_pod_grace_s=stuck_pod_grace_s,
                       queue_grace_s=DEFAULT_QUEUE_GRACE_S if queue_grace_s is None else queue_grace_s,
                       gpu_resource=gpu_resource)
    # Finished TrainJobs of earlier runs have no TTL (Trainer v2.3): prune them, never this run's own.
    client.prune_finished(trainjob_retention_s, spec.namespace, keep=spec.name)
    status = client.run(rendered, timeout_s=timeout_s or DEFAULT_TIMEOUT_S, log_sink=default_sink(spec.name))
    log.info("%s", status.describe())


def cleanup_job(*, run_id: str, launcher: str, job_kind: str = "pytorchjob", namespace: str = "") -> str:
    """Exit handler: delete this run's job only if it is still unfinished (the train step was
    cancelled or failed and left it running); a finished job stays for inspection until its TTL."""
    from gbcosface.launch.names import job_name_for_run

    name = job_name_for_run(check_run_id(run_id))
    if _is_local(launcher):
        # The emulator stops its processes itself, on success, failure and cancellation.
        return f"{launcher} launcher: nothing left to delete for {name}"
    from gbcosface.launch.client import JobClient
    from gbcosface.launch.namespace import default_namespace

    ns = default_namespace(namespace)
    return JobClient(namespace=ns, kind=job_kind).cleanup(name, ns)
