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
  is a run-time parameter where the target backend can resolve it, with `cluster_profile` (YAML)
  for the job's pod settings.

The DAG is built for one KFP backend version (`CompileOptions.backend`, gbcosface.pipeline_backends):
a feature is emitted only when that backend honours it. Below 2.5 the run id comes from the pod's
`pipeline/runid` label (the driver substitutes no placeholder there), and the steps' S3 Secret,
pull secret and GPU toleration are fixed at compile time; below 2.15 the Secret's keys are required;
below 2.17 the run has no TTL (docs/pipeline.md, "Supported backends").
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
from gbcosface import s3_env
from gbcosface.images import DEFAULT_IMAGE
from gbcosface.pipeline_backends import DEFAULT as DEFAULT_BACKEND
from gbcosface.pipeline_backends import (
    Backend,
    get_backend,
    run_id_argument,
    set_run_id_env,
    without_parameters,
)

DAY = 24 * 3600


@dataclass
class CompileOptions:
    """What is fixed when the pipeline is compiled. Everything else is a run parameter."""

    image: str = DEFAULT_IMAGE  # default of the pipeline_image and trainer_image parameters
    # The KFP backend the IR is for (gbcosface.pipeline_backends.SUPPORTED); the oldest by default.
    backend: str = DEFAULT_BACKEND
    # Tasks take their image from the `pipeline_image` parameter. A real backend resolves it at run
    # time; KFP's local runners cannot (they read the image from the IR as it is), so they compile
    # with False and the static `image`.
    runtime_images: bool = True
    # For the steps' own pods, which must pull the image before any step code runs; for the job's
    # pods use `image_pull_secrets` in the cluster profile (docs/pipeline.md). From backend 2.5 the
    # first is only the default of the run parameter `image_pull_secret`.
    image_pull_secrets: tuple[str, ...] = ()
    # The Secret the steps read S3 credentials from: the default of the run parameter `s3_secret`;
    # below backend 2.5 the steps' own pods always use this name (the job's follows the parameter).
    s3_secret: str = "gbcosface-s3"
    eval_gpu: bool = True  # run the evaluation step on one GPU
    # The taint key the evaluation pods tolerate: the default of the run parameter `eval_tolerations`
    # from backend 2.5, fixed below.
    gpu_toleration_key: str = "nvidia.com/gpu"
    eval_shm: str = "8Gi"  # /dev/shm for the evaluation step's DataLoader workers
    run_ttl_s: int = 7 * DAY  # the finished run's workflow is kept this long (PipelineConfig)
    # Pod deadlines per step (activeDeadlineSeconds), so that a hung step cannot hold a run forever.
    stage_timeout_s: int = DAY
    train_timeout_s: int = 8 * DAY  # above the train step's own default wait (train_timeout_s, 7 days)
    eval_timeout_s: int = DAY
    small_timeout_s: int = 3600  # gate, rejection, cleanup
    publish_timeout_s: int = 6 * 3600


# The S3 Secret's keys as env vars of the same project-owned names, never AWS_*: the step's container
# is shared with KFP's launcher, whose artifact client reads AWS_* (gbcosface.s3_env cites the backend).
S3_ENV = {key: key for key in s3_env.SECRET_KEYS}
# Keys mapped only where the backend can mark the mapping optional (2.15+): below that a missing key
# is a CreateContainerConfigError, so the Secret need not hold them (`endpoint_url` covers it).
S3_OPTIONAL_KEYS = (s3_env.ENDPOINT_URL,)
# Run parameters a backend below 2.5 cannot resolve (secret names and tolerations from parameters):
# the DAG built for it does not offer them, and uses the compile-time values instead.
RUNTIME_K8S_PARAMS = ("image_pull_secret", "eval_tolerations")


def runtime_k8s(backend: Backend) -> bool:
    """Whether `backend` resolves secret names and tolerations from run parameters (2.5+)."""
    return backend.has("param_secret_names") and backend.has("param_tolerations")


def gpu_tolerations(opts: CompileOptions) -> list[dict]:
    return [{"key": opts.gpu_toleration_key, "operator": "Exists", "effect": "NoSchedule"}]


def step_wiring(opts: CompileOptions, backend: Backend, *, pipeline_image: Any, s3_secret: Any,
                image_pull_secret: Any) -> Callable[..., dsl.PipelineTask]:
    """The settings every step of a DAG built for `backend` gets (both pipelines use it): display name,
    no caching, the image, pull secrets, deadline, the run id (below 2.5) and the S3 Secret."""
    by_parameter = runtime_k8s(backend)
    optional = backend.has("optional_secret_env")
    keys = S3_ENV if optional else {k: v for k, v in S3_ENV.items() if k not in S3_OPTIONAL_KEYS}

    def step(task: dsl.PipelineTask, display: str, timeout_s: int, s3: bool = True) -> dsl.PipelineTask:
        task.set_caching_options(False).set_display_name(display)
        if opts.runtime_images:
            task.set_container_image(pipeline_image)
        if by_parameter:
            kubernetes.set_image_pull_secrets(task, [image_pull_secret, *opts.image_pull_secrets[1:]])
        elif opts.image_pull_secrets:
            kubernetes.set_image_pull_secrets(task, list(opts.image_pull_secrets))
        kubernetes.set_timeout(task, timeout_s)
        set_run_id_env(task, backend)
        if s3:
            kubernetes.use_secret_as_env(task, secret_name=s3_secret if by_parameter else opts.s3_secret,
                                         secret_key_to_env=keys, optional=optional)
        return task

    return step


def eval_resources(task: dsl.PipelineTask, opts: CompileOptions, backend: Backend, eval_tolerations: Any) -> None:
    """An evaluation step's GPU, its tolerations (a run parameter from 2.5) and its /dev/shm."""
    if opts.eval_gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        kubernetes.add_toleration_json(task, eval_tolerations if runtime_k8s(backend) else gpu_tolerations(opts))
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=opts.eval_shm)


def pipeline_config(opts: CompileOptions, backend: Backend) -> "dsl.PipelineConfig | None":
    """The run TTL, only where the backend knows resourceTtlOnCompletion (2.17; pipeline_backends)."""
    return dsl.PipelineConfig(ttl_seconds_after_finished=opts.run_ttl_s) if backend.has("pipeline_ttl") else None


def build_pipeline(options: "CompileOptions | None" = None):
    """Return the pipeline function for `options` (the defaults are what `make compile` uses)."""
    opts = options or CompileOptions()
    backend = get_backend(opts.backend)
    run_id = run_id_argument(backend)  # the run's unique id, whole; "" below 2.5 (set_run_id_env)
    pull_secret_default = opts.image_pull_secrets[0] if opts.image_pull_secrets else ""

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
        s3_secret: str = opts.s3_secret,
        work_dir: str = "/tmp/gbcosface",
        train_timeout_s: int = 7 * DAY,
        ijb_target: str = "IJBC",
        flip: bool = False,
        norm_score: bool = True,
        detector_score: bool = True,
        gate_far: float = 1e-4,
        gate_min_tar: float = 0.9,
        export_onnx: bool = True,
        image_pull_secret: str = pull_secret_default,
        eval_tolerations: list = gpu_tolerations(opts),  # noqa: B006, B008 - KFP needs a literal default
        mlflow_tracking_uri: str = "",  # without KFP's MLflow integration: the steps make the runs (docs/tracking.md)
    ):
        step = step_wiring(opts, backend, pipeline_image=pipeline_image, s3_secret=s3_secret,
                           image_pull_secret=image_pull_secret)

        cleanup = step(cleanup_job(run_id=run_id, launcher=launcher, job_kind=job_kind, namespace=namespace),
                       "clean up training job", opts.small_timeout_s, s3=False)
        with dsl.ExitHandler(cleanup, name="run-with-cleanup"):
            staged = step(stage_data(data_uri=data_uri, output_uri=output_uri, run_id=run_id, work_dir=work_dir,
                                     endpoint_url=endpoint_url), "stage dataset", opts.stage_timeout_s)
            staged.set_retry(num_retries=2, backoff_duration="60s")

            trained = step(train_model(
                dataset=staged.outputs["dataset"], recipe=recipe, overrides=overrides, run_id=run_id,
                output_uri=output_uri, work_dir=work_dir, endpoint_url=endpoint_url, launcher=launcher,
                job_kind=job_kind, nnodes=nnodes, nproc_per_node=nproc_per_node, gpus_per_node=gpus_per_node,
                trainer_image=trainer_image, namespace=namespace, cluster_profile=cluster_profile,
                s3_secret=s3_secret, timeout_s=train_timeout_s, mlflow_tracking_uri=mlflow_tracking_uri),
                "train", opts.train_timeout_s)

            evaluated = step(evaluate_model(
                dataset=staged.outputs["dataset"], model=trained.outputs["model"], target=ijb_target,
                work_dir=work_dir, endpoint_url=endpoint_url, flip=flip, norm_score=norm_score,
                detector_score=detector_score, gate_far=gate_far, output_uri=output_uri, run_id=run_id,
                mlflow_tracking_uri=mlflow_tracking_uri), "evaluate on IJB", opts.eval_timeout_s)
            # Every other IJB target the dataset holds, beside the gate's (IJB-B and IJB-C in parallel).
            others = step(evaluate_other_targets(
                dataset=staged.outputs["dataset"], model=trained.outputs["model"], gate_target=ijb_target,
                work_dir=work_dir, endpoint_url=endpoint_url, flip=flip, norm_score=norm_score,
                detector_score=detector_score, gate_far=gate_far), "evaluate other IJB targets", opts.eval_timeout_s)
            for task in (evaluated, others):
                eval_resources(task, opts, backend, eval_tolerations)

            decision = step(gate(tar=evaluated.outputs["Output"], min_tar=gate_min_tar, far=gate_far), "gate",
                            opts.small_timeout_s, s3=False)
            with dsl.If(decision.output == "pass", name="gate-passed"):
                published = step(publish(
                    model=trained.outputs["model"], results=evaluated.outputs["results"],
                    more_results=others.outputs["results"], dataset=staged.outputs["dataset"], output_uri=output_uri, run_id=run_id,
                    endpoint_url=endpoint_url, export_onnx=export_onnx), "publish to S3", opts.publish_timeout_s)
                published.set_retry(num_retries=2, backoff_duration="60s")
            with dsl.Else(name="gate-failed"):
                step(record_rejection(tar=evaluated.outputs["Output"], min_tar=gate_min_tar, far=gate_far,
                                      output_uri=output_uri, run_id=run_id, endpoint_url=endpoint_url),
                     "record rejection", opts.small_timeout_s)

    if not runtime_k8s(backend):
        gbcosface_train_eval = without_parameters(gbcosface_train_eval, RUNTIME_K8S_PARAMS)
    return dsl.pipeline(
        name="gbcosface-train-eval",
        description="Stage a face dataset from S3, train GB-CosFace in a PyTorchJob or TrainJob, evaluate on "
                    "IJB, gate, publish.",
        pipeline_config=pipeline_config(opts, backend),
    )(gbcosface_train_eval)


gbcosface_train_eval = build_pipeline()
