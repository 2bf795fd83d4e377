"""The DAG: stage -> train (PyTorchJob or TrainJob) -> evaluate on IJB -> gate -> publish, with cleanup on exit.

The gate's IJB target (`ijb_target`) and every other target the dataset holds are evaluated by two
steps side by side; the gate reads the first, and publish uploads both.

Why this shape: staging pins exactly which objects were trained on; the train step owns the
training job's lifetime; the exit handler deletes a job that a cancelled or failed run left
running; caching is off for steps with side effects.

Rules a real KFP backend imposes that the local runner does not (docs/pipeline.md, checked on the
compiled IR by gbcosface.pipeline_rules):
- the run's unique id (`dsl.PIPELINE_JOB_ID_PLACEHOLDER`) reaches the steps as a WHOLE input: the
  backend's driver substitutes a placeholder only when it is the entire value, so no f-string
  joins it into a path here; the steps build the run prefix and job names from it;
- the run's display name (`{{$.pipeline_job_name}}`) is not unique and names nothing;
- everything a cluster differs in (namespace, resources, tolerations, secrets, volumes, images)
  is a run-time parameter, with `cluster_profile` (YAML) for the job's pod settings.
"""

from dataclasses import dataclass

from kfp import dsl, kubernetes

from components.gbcosface_components import (
    cleanup_job,
    evaluate_model,
    evaluate_other_targets,
    gate,
    publish,
    record_rejection,
    stage_data,
    train_model,
)
from gbcosface.images import DEFAULT_IMAGE

RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER
DAY = 24 * 3600


@dataclass
class CompileOptions:
    """What is fixed when the pipeline is compiled. Everything else is a run parameter."""

    image: str = DEFAULT_IMAGE  # default of the pipeline_image and trainer_image parameters
    # Tasks take their image from the `pipeline_image` parameter. A real backend resolves it at run
    # time; KFP's local runners cannot (they read the image from the IR as it is), so they compile
    # with False and the static `image`.
    runtime_images: bool = True
    # For the steps' own pods, which must pull the image before any step code runs; for the job's
    # pods use `image_pull_secrets` in the cluster profile (docs/pipeline.md).
    image_pull_secrets: tuple[str, ...] = ()
    eval_gpu: bool = True  # run the evaluation step on one GPU
    gpu_toleration_key: str = "nvidia.com/gpu"
    eval_shm: str = "8Gi"  # /dev/shm for the evaluation step's DataLoader workers
    run_ttl_s: int = 7 * DAY  # the finished run's workflow is kept this long (PipelineConfig)
    # Pod deadlines per step (activeDeadlineSeconds), so that a hung step cannot hold a run forever.
    stage_timeout_s: int = DAY
    train_timeout_s: int = 8 * DAY  # above the train step's own default wait (train_timeout_s, 7 days)
    eval_timeout_s: int = DAY
    small_timeout_s: int = 3600  # gate, rejection, cleanup
    publish_timeout_s: int = 6 * 3600


S3_ENV = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
          "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}


def build_pipeline(options: "CompileOptions | None" = None):
    """Return the pipeline function for `options` (the defaults are what `make compile` uses)."""
    opts = options or CompileOptions()

    @dsl.pipeline(
        name="gbcosface-train-eval",
        description="Stage a face dataset from S3, train GB-CosFace in a PyTorchJob or TrainJob, evaluate on "
                    "IJB, gate, publish.",
        pipeline_config=dsl.PipelineConfig(ttl_seconds_after_finished=opts.run_ttl_s),
    )
    def gbcosface_train_eval(
        data_uri: str,
        output_uri: str,
        recipe: str = "paper",
        overrides: list = [],  # noqa: B006 - KFP needs a literal default
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
        s3_secret: str = "gbcosface-s3",
        work_dir: str = "/tmp/gbcosface",
        train_timeout_s: int = 7 * DAY,
        ijb_target: str = "IJBC",
        flip: bool = False,
        norm_score: bool = True,
        detector_score: bool = True,
        gate_far: float = 1e-4,
        gate_min_tar: float = 0.9,
        export_onnx: bool = True,
        mlflow_tracking_uri: str = "",  # without KFP's MLflow integration: the steps make the runs (docs/tracking.md)
    ):
        def step(task: dsl.PipelineTask, display: str, timeout_s: int, s3: bool = True) -> dsl.PipelineTask:
            task.set_caching_options(False).set_display_name(display)
            if opts.runtime_images:
                task.set_container_image(pipeline_image)
            if opts.image_pull_secrets:
                kubernetes.set_image_pull_secrets(task, list(opts.image_pull_secrets))
            kubernetes.set_timeout(task, timeout_s)
            if s3:
                kubernetes.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env=S3_ENV, optional=True)
            return task

        cleanup = step(cleanup_job(run_id=RUN_ID, launcher=launcher, job_kind=job_kind, namespace=namespace),
                       "clean up training job", opts.small_timeout_s, s3=False)
        with dsl.ExitHandler(cleanup, name="run-with-cleanup"):
            staged = step(stage_data(data_uri=data_uri, output_uri=output_uri, run_id=RUN_ID, work_dir=work_dir,
                                     endpoint_url=endpoint_url), "stage dataset", opts.stage_timeout_s)
            staged.set_retry(num_retries=2, backoff_duration="60s")

            trained = step(train_model(
                dataset=staged.outputs["dataset"], recipe=recipe, overrides=overrides, run_id=RUN_ID,
                output_uri=output_uri, work_dir=work_dir, endpoint_url=endpoint_url, launcher=launcher,
                job_kind=job_kind, nnodes=nnodes, nproc_per_node=nproc_per_node, gpus_per_node=gpus_per_node,
                trainer_image=trainer_image, namespace=namespace, cluster_profile=cluster_profile,
                s3_secret=s3_secret, timeout_s=train_timeout_s, mlflow_tracking_uri=mlflow_tracking_uri),
                "train", opts.train_timeout_s)

            evaluated = step(evaluate_model(
                dataset=staged.outputs["dataset"], model=trained.outputs["model"], target=ijb_target,
                work_dir=work_dir, endpoint_url=endpoint_url, flip=flip, norm_score=norm_score,
                detector_score=detector_score, gate_far=gate_far, output_uri=output_uri, run_id=RUN_ID,
                mlflow_tracking_uri=mlflow_tracking_uri), "evaluate on IJB", opts.eval_timeout_s)
            # Every other IJB target the dataset holds, beside the gate's (IJB-B and IJB-C in parallel).
            others = step(evaluate_other_targets(
                dataset=staged.outputs["dataset"], model=trained.outputs["model"], gate_target=ijb_target,
                work_dir=work_dir, endpoint_url=endpoint_url, flip=flip, norm_score=norm_score,
                detector_score=detector_score, gate_far=gate_far), "evaluate other IJB targets", opts.eval_timeout_s)
            for task in (evaluated, others):
                if opts.eval_gpu:
                    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
                    kubernetes.add_toleration(task, key=opts.gpu_toleration_key, operator="Exists",
                                              effect="NoSchedule")
                kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm",
                                           medium="Memory", size_limit=opts.eval_shm)

            decision = step(gate(tar=evaluated.outputs["Output"], min_tar=gate_min_tar, far=gate_far), "gate",
                            opts.small_timeout_s, s3=False)
            with dsl.If(decision.output == "pass", name="gate-passed"):
                published = step(publish(
                    model=trained.outputs["model"], results=evaluated.outputs["results"],
                    more_results=others.outputs["results"], dataset=staged.outputs["dataset"], output_uri=output_uri, run_id=RUN_ID,
                    endpoint_url=endpoint_url, export_onnx=export_onnx), "publish to S3", opts.publish_timeout_s)
                published.set_retry(num_retries=2, backoff_duration="60s")
            with dsl.Else(name="gate-failed"):
                step(record_rejection(tar=evaluated.outputs["Output"], min_tar=gate_min_tar, far=gate_far,
                                      output_uri=output_uri, run_id=RUN_ID, endpoint_url=endpoint_url),
                     "record rejection", opts.small_timeout_s)

    return gbcosface_train_eval


gbcosface_train_eval = build_pipeline()
