"""The sweep DAG: stage once -> plan -> per (variant, seed): train -> evaluate -> publish -> compare.

Why: a method comparison (GB-CosFace vs CosFace vs ArcFace) is only worth something at equal budget and
with its seed noise; one pipeline run trains every variant with every seed from the same pinned data,
and one step writes the table (gbcosface.eval.compare). The per-iteration steps are train_eval's own
components; the sweep adds only planning, comparison and cleanup (components/gbcosface_components.py).

Backend rules (gbcosface.pipeline_rules, as for train_eval): the run's unique id reaches the steps as a
whole input; the planning step derives each iteration's run id from it (`<run id>-<variant>-s<seed>`),
and the loop passes that whole to the train, evaluate and publish steps, which name the iteration's S3
prefix and training job from it. The comparison depends on the loop by `.after` and reads the published
metrics from S3, not through `dsl.Collected` (backend >= 2.14 only), so the sweep needs nothing the main
pipeline does not. `parallelism` (compile time, as KFP's iteratorPolicy is) bounds how many iterations
run at once: 0 runs them all side by side on a cluster; the local runner runs at most 2 and the demo 1.
"""

from dataclasses import dataclass

from kfp import dsl

from components.gbcosface_components import (
    cleanup_sweep_jobs,
    compare_sweep,
    evaluate_model,
    evaluate_other_targets,
    plan_sweep,
    publish,
    stage_data,
    train_model,
)
from gbcosface.pipeline_backends import get_backend, run_id_argument, without_parameters
from gbcosface.steps.sweep import default_variants
from pipelines.train_eval import (
    DAY,
    RUNTIME_K8S_PARAMS,
    eval_resources,
    gpu_tolerations,
    pipeline_config,
    runtime_k8s,
    step_wiring,
)
from pipelines.train_eval import CompileOptions as TrainEvalOptions


@dataclass
class CompileOptions(TrainEvalOptions):
    """train_eval's compile options plus how many iterations may run at once (0: all)."""

    parallelism: int = 0


def build_pipeline(options: "CompileOptions | None" = None):
    """Return the sweep pipeline function for `options`."""
    opts = options or CompileOptions()
    if opts.parallelism < 0:
        raise ValueError(f"parallelism must be >= 0 (0: unbounded), got {opts.parallelism}")
    # Built for one KFP backend, as train_eval is (gbcosface.pipeline_backends): the same step wiring.
    backend = get_backend(opts.backend)
    run_id = run_id_argument(backend)  # the run's unique id, whole; "" below 2.5
    pull_secret_default = opts.image_pull_secrets[0] if opts.image_pull_secrets else ""

    def gbcosface_sweep(
        data_uri: str,
        output_uri: str,
        recipe: str = "paper",
        overrides: list = [],  # noqa: B006 - KFP needs a literal default
        variants: list = default_variants(),  # noqa: B006, B008
        seeds: list = [0, 1, 2],  # noqa: B006
        baseline: str = "cosface",
        confidence: float = 0.95,
        endpoint_url: str = "",
        launcher: str = "kubeflow",
        job_kind: str = "pytorchjob",
        nnodes: int = 2,
        nproc_per_node: int = 8,
        gpus_per_node: int = 8,
        pipeline_image: str = opts.image,
        trainer_image: str = opts.image,
        namespace: str = "",
        cluster_profile: str = "",
        s3_secret: str = opts.s3_secret,
        work_dir: str = "/tmp/gbcosface",
        train_timeout_s: int = 7 * DAY,
        ijb_target: str = "IJBC",
        flip: bool = False,
        norm_score: bool = True,
        detector_score: bool = True,
        export_onnx: bool = True,
        mlflow_tracking_uri: str = "",  # without KFP's MLflow integration: the steps make the runs (docs/tracking.md)
        image_pull_secret: str = pull_secret_default,
        eval_tolerations: list = gpu_tolerations(opts),  # noqa: B006, B008 - KFP needs a literal default
    ):
        step = step_wiring(opts, backend, pipeline_image=pipeline_image, s3_secret=s3_secret,
                           image_pull_secret=image_pull_secret)

        cleanup = step(cleanup_sweep_jobs(run_id=run_id, variants=variants, seeds=seeds, launcher=launcher,
                                          job_kind=job_kind, namespace=namespace),
                       "clean up training jobs", opts.small_timeout_s, s3=False)
        with dsl.ExitHandler(cleanup, name="sweep-with-cleanup"):
            staged = step(stage_data(data_uri=data_uri, output_uri=output_uri, run_id=run_id, work_dir=work_dir,
                                     endpoint_url=endpoint_url), "stage dataset", opts.stage_timeout_s)
            staged.set_retry(num_retries=2, backoff_duration="60s")
            plan = step(plan_sweep(dataset=staged.outputs["dataset"], run_id=run_id, output_uri=output_uri,
                                   recipe=recipe, overrides=overrides, variants=variants, seeds=seeds,
                                   endpoint_url=endpoint_url), "plan the sweep", opts.small_timeout_s)

            with dsl.ParallelFor(plan.output, parallelism=opts.parallelism, name="iterations") as it:
                trained = step(train_model(
                    dataset=staged.outputs["dataset"], recipe=recipe, overrides=it.overrides, run_id=it.run_id,
                    output_uri=output_uri, work_dir=work_dir, endpoint_url=endpoint_url, launcher=launcher,
                    job_kind=job_kind, nnodes=nnodes, nproc_per_node=nproc_per_node, gpus_per_node=gpus_per_node,
                    trainer_image=trainer_image, namespace=namespace, cluster_profile=cluster_profile,
                    s3_secret=s3_secret, timeout_s=train_timeout_s, mlflow_tracking_uri=mlflow_tracking_uri),
                    "train", opts.train_timeout_s)
                evaluated = step(evaluate_model(
                    dataset=staged.outputs["dataset"], model=trained.outputs["model"], target=ijb_target,
                    work_dir=work_dir, endpoint_url=endpoint_url, flip=flip, norm_score=norm_score,
                    detector_score=detector_score, gate_far=1e-4, output_uri=output_uri, run_id=it.run_id,
                    mlflow_tracking_uri=mlflow_tracking_uri), "evaluate on IJB", opts.eval_timeout_s)
                others = step(evaluate_other_targets(
                    dataset=staged.outputs["dataset"], model=trained.outputs["model"], gate_target=ijb_target,
                    work_dir=work_dir, endpoint_url=endpoint_url, flip=flip, norm_score=norm_score,
                    detector_score=detector_score, gate_far=1e-4), "evaluate other IJB targets", opts.eval_timeout_s)
                for task in (evaluated, others):
                    eval_resources(task, opts, backend, eval_tolerations)
                # Every iteration is published (no gate: a comparison reports every result).
                published = step(publish(
                    model=trained.outputs["model"], results=evaluated.outputs["results"],
                    more_results=others.outputs["results"], dataset=staged.outputs["dataset"],
                    output_uri=output_uri, run_id=it.run_id, endpoint_url=endpoint_url, export_onnx=export_onnx),
                    "publish to S3", opts.publish_timeout_s)
                published.set_retry(num_retries=2, backoff_duration="60s")

            step(compare_sweep(plan=plan.output, run_id=run_id, output_uri=output_uri, target=ijb_target,
                               baseline=baseline, confidence=confidence, endpoint_url=endpoint_url,
                               mlflow_tracking_uri=mlflow_tracking_uri),
                 "compare", opts.small_timeout_s).after(published)

    if not runtime_k8s(backend):
        gbcosface_sweep = without_parameters(gbcosface_sweep, RUNTIME_K8S_PARAMS)
    return dsl.pipeline(
        name="gbcosface-sweep",
        description="Train and evaluate several methods (variants) with several seeds on one staged dataset, "
                    "then compare them: mean and sd over seeds, paired differences to a baseline.",
        pipeline_config=pipeline_config(opts, backend),
    )(gbcosface_sweep)


gbcosface_sweep = build_pipeline()
