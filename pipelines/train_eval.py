"""The DAG: stage -> train (PyTorchJob) -> evaluate on IJB -> gate -> publish, with cleanup on exit.

Why this shape: staging pins exactly which objects were trained on; the train step owns the
PyTorchJob's lifetime; the exit handler deletes a job that a cancelled or failed run left behind;
run-scoped names come from the run (never compile time); caching is off for steps with side effects.
"""


from dataclasses import dataclass

from kfp import dsl, kubernetes

from components.gbcosface_components import (
    cleanup_job,
    evaluate_model,
    gate,
    publish,
    record_rejection,
    stage_data,
    train_model,
)

RUN_ID = dsl.PIPELINE_JOB_NAME_PLACEHOLDER


@dataclass
class ClusterOptions:
    """Compile-time settings that only matter on a cluster (the local runner ignores them)."""

    s3_secret: str = "gbcosface-s3"  # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL
    eval_gpu: bool = True  # run the evaluation step on one GPU
    gpu_toleration_key: str = "nvidia.com/gpu"
    eval_shm: str = "8Gi"  # /dev/shm for the evaluation step's DataLoader workers


S3_ENV = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
          "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}


def build_pipeline(options: "ClusterOptions | None" = None):
    """Return the pipeline function; `options` fix the cluster-only settings at compile time."""
    opts = options or ClusterOptions()

    def with_s3(task: dsl.PipelineTask) -> dsl.PipelineTask:
        return kubernetes.use_secret_as_env(task, secret_name=opts.s3_secret, secret_key_to_env=S3_ENV,
                                            optional=True)

    @dsl.pipeline(
        name="gbcosface-train-eval",
        description="Stage a face dataset from S3, train GB-CosFace in a PyTorchJob, evaluate on IJB, gate, publish.",
    )
    def gbcosface_train_eval(
        data_uri: str,
        output_uri: str,
        recipe: str = "paper",
        overrides: list = [],  # noqa: B006 - KFP needs a literal default
        endpoint_url: str = "",
        launcher: str = "kubeflow",
        nnodes: int = 2,
        nproc_per_node: int = 8,
        gpus_per_node: int = 8,
        trainer_image: str = "ghcr.io/gbcosface/gbcosface-trainer:0.1.0",
        namespace: str = "kubeflow",
        work_dir: str = "/tmp/gbcosface",
        train_timeout_s: int = 7 * 24 * 3600,
        ijb_target: str = "IJBC",
        flip: bool = False,
        norm_score: bool = True,
        detector_score: bool = True,
        gate_far: float = 1e-4,
        gate_min_tar: float = 0.9,
        export_onnx: bool = True,
    ):
        run_uri = f"{output_uri}/runs/{RUN_ID}"
        cleanup = cleanup_job(run_id=RUN_ID, launcher=launcher, namespace=namespace)
        cleanup.set_caching_options(False)
        with dsl.ExitHandler(cleanup, name="run-with-cleanup"):
            staged = with_s3(stage_data(data_uri=data_uri, run_uri=run_uri, work_dir=work_dir,
                                        endpoint_url=endpoint_url))
            staged.set_caching_options(False).set_display_name("stage dataset")

            trained = with_s3(train_model(
                dataset=staged.outputs["dataset"], recipe=recipe, overrides=overrides, run_id=RUN_ID,
                run_uri=run_uri, work_dir=work_dir, endpoint_url=endpoint_url, launcher=launcher,
                nnodes=nnodes, nproc_per_node=nproc_per_node, trainer_image=trainer_image,
                namespace=namespace, s3_secret=opts.s3_secret, gpus_per_node=gpus_per_node,
                timeout_s=train_timeout_s))
            trained.set_caching_options(False).set_display_name("train (PyTorchJob)")

            evaluated = with_s3(evaluate_model(
                dataset=staged.outputs["dataset"], model=trained.outputs["model"], target=ijb_target,
                work_dir=work_dir, endpoint_url=endpoint_url, flip=flip, norm_score=norm_score,
                detector_score=detector_score, gate_far=gate_far, run_uri=run_uri))
            evaluated.set_caching_options(False).set_display_name("evaluate on IJB")
            if opts.eval_gpu:
                evaluated.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
                kubernetes.add_toleration(evaluated, key=opts.gpu_toleration_key, operator="Exists",
                                          effect="NoSchedule")
            kubernetes.empty_dir_mount(evaluated, volume_name="dshm", mount_path="/dev/shm",
                                       medium="Memory", size_limit=opts.eval_shm)

            decision = gate(tar=evaluated.outputs["Output"], min_tar=gate_min_tar, far=gate_far)
            decision.set_caching_options(False).set_display_name("gate")
            with dsl.If(decision.output == "pass", name="gate-passed"):
                published = with_s3(publish(
                    model=trained.outputs["model"], results=evaluated.outputs["results"],
                    dataset=staged.outputs["dataset"], run_uri=run_uri, endpoint_url=endpoint_url,
                    export_onnx=export_onnx))
                published.set_caching_options(False).set_display_name("publish to S3")
            with dsl.Else(name="gate-failed"):
                rejected = with_s3(record_rejection(tar=evaluated.outputs["Output"], min_tar=gate_min_tar, far=gate_far,
                                                    run_uri=run_uri, endpoint_url=endpoint_url))
                rejected.set_caching_options(False).set_display_name("record rejection")

    return gbcosface_train_eval


gbcosface_train_eval = build_pipeline()
