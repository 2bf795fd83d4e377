"""Lightweight KFP components. Each body imports gbcosface and calls one step function.

Why lightweight Python components: KFP's local runners can run them (the embedded demo, and the
image test under DockerRunner), and on a cluster they run in the gbcosface image. The image here is
only a default: the DAG sets every task's image (pipelines/train_eval.py), from `make compile
REGISTRY=.. TAG=..` or at run time. Run-scoped inputs arrive whole (`run_id`, never a string with
the id inside): a real KFP backend substitutes a placeholder only when it is an input's entire
value, so the steps build paths and names from it (gbcosface.steps.runs). (No `from __future__
import annotations` here: KFP reads the annotations as real types.)
"""


from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from gbcosface.images import DEFAULT_IMAGE


def _component(func):
    return dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)(func)


@_component
def stage_data(
    data_uri: str,
    output_uri: str,
    run_id: str,
    work_dir: str,
    endpoint_url: str,
    dataset: Output[Dataset],
) -> str:
    """Stage the dataset from object storage, verify it, and pin it in a manifest."""
    from gbcosface.steps.runs import run_uri
    from gbcosface.steps.stage import stage_dataset

    info = stage_dataset(data_uri=data_uri, run_uri=run_uri(output_uri, run_id), work_dir=work_dir,
                         endpoint_url=endpoint_url, manifest_out=dataset.path)
    dataset.metadata.update(info)
    return info["manifest_hash"]


@_component
def train_model(
    dataset: Input[Dataset],
    recipe: str,
    overrides: list,
    run_id: str,
    output_uri: str,
    work_dir: str,
    endpoint_url: str,
    launcher: str,
    job_kind: str,
    nnodes: int,
    nproc_per_node: int,
    gpus_per_node: int,
    trainer_image: str,
    namespace: str,
    cluster_profile: str,
    s3_secret: str,
    timeout_s: int,
    mlflow_tracking_uri: str,
    model: Output[Model],
) -> str:
    """Launch the training job (or its local emulation), wait for it, and fetch the trained backbone."""
    from gbcosface.steps.train import train_model as run

    info = run(dataset_manifest=dataset.path, recipe=recipe, overrides=list(overrides), run_id=run_id,
               output_uri=output_uri, work_dir=work_dir, endpoint_url=endpoint_url, launcher=launcher,
               job_kind=job_kind, nnodes=nnodes, nproc_per_node=nproc_per_node, gpus_per_node=gpus_per_node,
               trainer_image=trainer_image, namespace=namespace, cluster_profile=cluster_profile,
               s3_secret=s3_secret, timeout_s=timeout_s, mlflow_tracking_uri=mlflow_tracking_uri,
               model_dir=model.path)
    model.metadata.update(info["lineage"])
    model.metadata["job_name"] = info["job_name"]
    return info["job_name"]


@_component
def evaluate_model(
    dataset: Input[Dataset],
    model: Input[Model],
    target: str,
    work_dir: str,
    endpoint_url: str,
    flip: bool,
    norm_score: bool,
    detector_score: bool,
    gate_far: float,
    output_uri: str,
    run_id: str,
    mlflow_tracking_uri: str,
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
    report: Output[HTML],
    table: Output[Markdown],
    results: Output[Dataset],
) -> float:
    """IJB evaluation of the trained backbone; returns 1:1 TAR at the gate's FAR."""
    from gbcosface.steps.evaluate import evaluate_model as run
    from gbcosface.steps.runs import run_uri

    out = run(dataset_manifest=dataset.path, model_dir=model.path, model_metadata=dict(model.metadata),
              target=target, work_dir=work_dir, endpoint_url=endpoint_url, flip=flip,
              norm_score=norm_score, detector_score=detector_score, gate_far=gate_far,
              result_dir=results.path, run_uri=run_uri(output_uri, run_id), run_id=run_id,
              mlflow_tracking_uri=mlflow_tracking_uri)
    for name, value in out["kfp_metrics"].items():
        metrics.log_metric(name, value)
    roc.log_roc_curve(out["roc"]["fpr"], out["roc"]["tpr"], out["roc"]["thresholds"])
    with open(report.path, "w") as fh:
        fh.write(out["report_html"])
    with open(table.path, "w") as fh:
        fh.write(out["table_markdown"])
    for artifact in (metrics, roc, report, table, results):
        artifact.metadata.update(out["lineage"])
    return float(out["gate_tar"])


@_component
def evaluate_other_targets(
    dataset: Input[Dataset],
    model: Input[Model],
    gate_target: str,
    work_dir: str,
    endpoint_url: str,
    flip: bool,
    norm_score: bool,
    detector_score: bool,
    gate_far: float,
    metrics: Output[Metrics],
    table: Output[Markdown],
    results: Output[Dataset],
) -> str:
    """Every other IJB target the dataset holds (e.g. IJB-B beside a gate on IJB-C); published past the gate."""
    from gbcosface.steps.evaluate import evaluate_other_targets as run

    out = run(dataset_manifest=dataset.path, model_dir=model.path, model_metadata=dict(model.metadata),
              gate_target=gate_target, result_dir=results.path, work_dir=work_dir, endpoint_url=endpoint_url,
              flip=flip, norm_score=norm_score, detector_score=detector_score, gate_far=gate_far)
    for name, value in out["kfp_metrics"].items():
        metrics.log_metric(name, value)
    with open(table.path, "w") as fh:
        fh.write(out["table_markdown"] or "(no other IJB target in the dataset)\n")
    for artifact in (metrics, table, results):
        artifact.metadata.update(out["lineage"])
    return ",".join(out["targets"])


@_component
def gate(tar: float, min_tar: float, far: float) -> str:
    """Decide whether the model is good enough to publish."""
    from gbcosface.steps.gate import decide

    return decide(tar=tar, min_tar=min_tar, far=far)


@_component
def publish(
    model: Input[Model],
    results: Input[Dataset],
    more_results: Input[Dataset],
    dataset: Input[Dataset],
    output_uri: str,
    run_id: str,
    endpoint_url: str,
    export_onnx: bool,
    summary: Output[Dataset],
) -> str:
    """Publish model, metadata and evaluation artifacts under the run prefix; write the run summary."""
    from gbcosface.steps.publish import publish as run
    from gbcosface.steps.runs import run_uri

    info = run(model_dir=model.path, model_metadata=dict(model.metadata), results_dir=results.path,
               dataset_metadata=dict(dataset.metadata), run_uri=run_uri(output_uri, run_id),
               endpoint_url=endpoint_url, export_onnx=export_onnx, summary_out=summary.path,
               more_results_dir=more_results.path)
    summary.metadata.update(info["lineage"])
    return info["summary_uri"]


@_component
def record_rejection(tar: float, min_tar: float, far: float, output_uri: str, run_id: str,
                     endpoint_url: str) -> str:
    """The gate said no: record why under the run prefix, publish nothing."""
    from gbcosface.steps.gate import record_rejection as run
    from gbcosface.steps.runs import run_uri

    return run(tar=tar, min_tar=min_tar, far=far, run_uri=run_uri(output_uri, run_id), endpoint_url=endpoint_url)


@_component
def cleanup_job(run_id: str, launcher: str, job_kind: str, namespace: str) -> str:
    """Exit handler: delete this run's training job if it is still running (a cancelled or failed
    run leaves one); a finished job stays for its TTL, for inspection."""
    from gbcosface.steps.train import cleanup_job as run

    return run(run_id=run_id, launcher=launcher, job_kind=job_kind, namespace=namespace)


# The sweep (pipelines/sweep.py): one planning step, the train/evaluate/publish steps above per
# (variant, seed), one comparison.


@_component
def plan_sweep(
    dataset: Input[Dataset],
    run_id: str,
    output_uri: str,
    recipe: str,
    overrides: list,
    variants: list,
    seeds: list,
    endpoint_url: str,
) -> list:
    """Plan every (variant, seed) iteration, with its own run id and the dataset pinned under its prefix."""
    from gbcosface.steps.sweep import plan_sweep as run

    return run(dataset_manifest=dataset.path, run_id=run_id, output_uri=output_uri, variants=list(variants),
               seeds=list(seeds), overrides=list(overrides), recipe=recipe, endpoint_url=endpoint_url)


@_component
def compare_sweep(
    plan: list,
    run_id: str,
    output_uri: str,
    target: str,
    baseline: str,
    confidence: float,
    endpoint_url: str,
    mlflow_tracking_uri: str,
    table: Output[Markdown],
    report: Output[HTML],
    results: Output[Dataset],
) -> str:
    """The comparison table (mean and sd over seeds, paired differences to the baseline), published to S3."""
    from gbcosface.steps.sweep import compare_sweep as run

    out = run(plan=list(plan), run_id=run_id, output_uri=output_uri, target=target, baseline=baseline,
              confidence=confidence, endpoint_url=endpoint_url, out_dir=results.path,
              mlflow_tracking_uri=mlflow_tracking_uri)
    with open(table.path, "w") as fh:
        fh.write(out["markdown"])
    with open(report.path, "w") as fh:
        fh.write(out["html"])
    results.metadata["compare_uri"] = out["uri"]
    return out["uri"]


@_component
def cleanup_sweep_jobs(run_id: str, variants: list, seeds: list, launcher: str, job_kind: str,
                       namespace: str) -> str:
    """Exit handler: delete every iteration's training job that a cancelled or failed sweep left running."""
    from gbcosface.steps.sweep import cleanup_sweep_jobs as run

    return run(run_id=run_id, variants=list(variants), seeds=list(seeds), launcher=launcher, job_kind=job_kind,
               namespace=namespace)
