"""`gbcosface demo`: the embedded default, the whole pipeline on one machine.

Local S3 server (moto) on loopback -> synthetic face world uploaded to a bucket -> the KFP DAG under
KFP's local runner (stage -> 2-replica emulated PyTorchJob on CPU + gloo -> IJB-C-like evaluation ->
gate -> publish) -> the trained model's TAR@FAR beside an untrained model's on the same data.
With MLflow installed (the `tracking` extra; `make demo` has it) a real MLflow tracking server (SQLite
store, artifacts in the local S3 server) starts first, beside the synthetic world's generation, and the
pipeline's steps get MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_ID as KFP 2.17's integration sets them; the
run's page is printed at the end. Servers it starts are stopped on success and on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("gbcosface.demo")

BUCKET = "gbcosface-demo"


def _world_is_current(world_dir: Path, spec: Any) -> bool:
    """Reuse a world written by an earlier demo with the same spec (generation is deterministic)."""
    from dataclasses import asdict

    info = world_dir / "world.json"
    if not info.is_file():
        return False
    try:
        recorded = json.loads(info.read_text()).get("spec", {})
    except ValueError:
        return False
    return recorded == json.loads(json.dumps(asdict(spec)))


def run_demo(out: Path, *, seed: int = 0, steps: int | None = None, replicas: int = 2,
             gate_min_tar: float = 0.3, gate_far: float = 1e-3, keep_world: bool = True,
             world_overrides: dict[str, Any] | None = None,
             recipe_overrides: list[str] | None = None, quiet: bool = True, runner: str = "subprocess",
             image: str | None = None, tracking: bool = True) -> dict[str, Any]:
    from gbcosface.console import step_console
    from gbcosface.data.synthetic.world import WorldSpec, generate_world
    from gbcosface.pipeline_cli import local_run_id, run_local
    from gbcosface.steps.runs import run_uri as run_prefix
    from gbcosface.storage import download_dir, upload
    from gbcosface.storage.local_server import LocalS3Server

    t0 = time.monotonic()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    world_dir = out / "world"
    spec = WorldSpec(seed=seed, **(world_overrides or {}))
    timings: dict[str, float] = {}

    with contextlib.ExitStack() as servers:
        server = servers.enter_context(LocalS3Server(log_path=out / "s3-server.log"))
        os.environ.update(server.env())
        server.create_bucket(BUCKET)
        # MLflow in the steps' containers (runner docker) would need the server's address there: not wired.
        mlflow_server = _start_mlflow(out, server, servers) if tracking and runner != "docker" else None

        if keep_world and _world_is_current(world_dir, spec):
            log.info("reusing the synthetic world in %s", world_dir)
        else:
            log.info("writing the synthetic face world to %s", world_dir)
            generate_world(world_dir, spec, workers=min(2, os.cpu_count() or 1), overwrite=True)
        timings["synth_s"] = time.monotonic() - t0

        for stale in ("work", "kfp", "published", "untrained"):
            shutil.rmtree(out / stale, ignore_errors=True)

        data_uri = f"s3://{BUCKET}/datasets/synthetic-seed{seed}"
        t = time.monotonic()
        upload(world_dir, data_uri, endpoint_url=server.endpoint_url)
        timings["upload_s"] = time.monotonic() - t

        # Metrics on: replica r serves 127.0.0.1:9400 + r (see README, "Watching a demo run").
        overrides = ["run.metrics_port=9400", *(recipe_overrides or [])]
        if steps is not None:
            overrides.append(f"schedule.max_steps={steps}")
        params = {
            "data_uri": data_uri,
            "output_uri": f"s3://{BUCKET}/gbcosface",
            "recipe": "demo",
            "overrides": overrides,
            "endpoint_url": server.endpoint_url,
            "launcher": "local",
            "nnodes": replicas,
            "nproc_per_node": 1,
            "gpus_per_node": 0,
            "work_dir": str(out / "work"),
            "ijb_target": "IJBC",
            "gate_far": gate_far,
            "gate_min_tar": gate_min_tar,
            "export_onnx": True,
        }
        experiment = _tracking_env(mlflow_server, t0, timings) if mlflow_server else None
        t = time.monotonic()
        log_path = out / "pipeline.log"
        log_path.unlink(missing_ok=True)
        print(f"running the pipeline (KFP local runner); executor input and step logs go to {log_path}",
              flush=True)
        with step_console(log_path, quiet=quiet):
            if runner == "docker":
                run_dir = _run_in_containers(params, out, image=image, environment=server.env())
            else:
                run_dir = run_local(params, out / "kfp")
        timings["pipeline_s"] = time.monotonic() - t
        run_id = local_run_id(run_dir)
        run_uri = run_prefix(params["output_uri"], run_id)
        download_dir(run_uri, out / "published", endpoint_url=server.endpoint_url)
        mlflow_info = _mlflow_runs(mlflow_server.url, experiment, run_id, out) if mlflow_server else None

    t = time.monotonic()
    untrained = evaluate_untrained(out, seed=seed, overrides=overrides)
    timings["untrained_eval_s"] = time.monotonic() - t
    timings["total_s"] = time.monotonic() - t0
    trained = json.loads((out / "published" / "eval" / "IJBC" / "metrics.json").read_text())
    summary = {"run_id": run_id, "run_uri": run_uri, "out": str(out), "log": str(log_path), "timings": timings,
               "trained": trained, "untrained": untrained, "mlflow": mlflow_info}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_summary(summary)
    return summary


def _start_mlflow(out: Path, s3: Any, stack: contextlib.ExitStack) -> Any:
    """Start (without waiting) a real MLflow server: SQLite store under `out/mlflow`, artifacts in the local S3."""
    if importlib.util.find_spec("mlflow") is None:
        print("MLflow is not installed (pip install 'gbcosface[tracking]'): the demo runs without tracking", flush=True)
        return None
    from gbcosface.tracking.local_server import LocalMlflowServer

    root = out / "mlflow"
    shutil.rmtree(root, ignore_errors=True)
    # The server's artifact proxy is MLflow's own boto3 client, which knows only the standard AWS names
    # (it is no KFP step, so they steer nothing else); GBCOSFACE_S3_* would leave it without credentials.
    server = LocalMlflowServer(root, artifacts_destination=f"s3://{BUCKET}/mlflow-artifacts",
                               env={**s3.aws_tool_env(), "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url})
    stack.callback(server.stop)
    stack.callback(lambda: [os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")])
    return server.start()  # ~20 s to ready on 2 cores: it overlaps the synthetic world's generation


def _tracking_env(server: Any, t0: float, timings: dict[str, float]) -> str:
    """Wait for the server; then, as KFP 2.17's API server and driver do, make the experiment and give the
    steps MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_ID (the local runner has no driver to make a run per
    task: the steps make the pipeline run's run and their own nested runs, tracking/pipeline.py)."""
    from gbcosface.tracking.mlflow_run import experiment_id_for, make_client

    t = time.monotonic()
    server.wait_ready()
    timings["mlflow_wait_s"] = time.monotonic() - t
    timings["mlflow_ready_after_s"] = time.monotonic() - t0
    experiment = experiment_id_for(make_client(server.url), None, "gbcosface-demo")
    os.environ.update({"MLFLOW_TRACKING_URI": server.url, "MLFLOW_EXPERIMENT_ID": experiment})
    return experiment


def _mlflow_runs(url: str, experiment: str, run_id: str, out: Path) -> dict[str, Any] | None:
    """The pipeline run's MLflow runs (parent, train, evaluate, the trainer's) and their pages."""
    from gbcosface.tracking.mlflow_env import PARENT_TAG
    from gbcosface.tracking.mlflow_run import make_client
    from gbcosface.tracking.pipeline import PIPELINE_RUN_TAG, run_url

    client = make_client(url)
    try:
        (parent,) = client.search_runs([experiment], f"tags.`{PIPELINE_RUN_TAG}` = '{run_id}' and "
                                                     f"attributes.run_name = '{run_id}'")
        runs = {"pipeline": parent.info.run_id}
        for task in client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"):
            runs[task.info.run_name] = task.info.run_id
        trainers = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{runs.get('train', '')}'")
        if trainers:
            runs["trainer"] = trainers[0].info.run_id
        artifacts = [a.path for a in client.list_artifacts(runs["evaluate"], "IJBC")] if "evaluate" in runs else []
    except Exception as exc:  # noqa: BLE001 - the demo's result stands without its tracking summary
        log.warning("could not read the demo's MLflow runs: %s", exc)
        return None
    return {"url": url, "experiment_id": experiment, "runs": runs,
            "pages": {k: run_url(url, experiment, v) for k, v in runs.items()},
            "store": str(out / "mlflow" / "mlflow.db"), "evaluate_artifacts": artifacts}


def _run_in_containers(params: dict[str, Any], out: Path, *, image: str | None,
                       environment: dict[str, str]) -> Path:
    """`--runner docker`: every step in `image` under KFP's DockerRunner, the job's replicas as
    containers of it too (launcher local-containers); see gbcosface.launch.containers."""
    from gbcosface.launch.containers import step_session
    from gbcosface.pipeline_cli import run_local

    if not image:
        raise ValueError("--runner docker needs --image (what `make build-images` built)")
    params = {**params, "launcher": "local-containers", "trainer_image": image}
    with step_session(writable=[out / "work"], pipeline_root=out / "kfp", environment=environment,
                      log_path=out / "podman-service.log") as docker_args:
        return run_local(params, out / "kfp", runner="docker", image=image, docker_args=docker_args)


def evaluate_untrained(out: Path, *, seed: int, overrides: list[str]) -> dict[str, Any]:
    """The same evaluation of a freshly initialised backbone of the same recipe and seed."""
    import torch

    from gbcosface.config import load_config
    from gbcosface.eval.run_ijb import evaluate_ijb
    from gbcosface.models import backbone_from_config, save_backbone

    cfg = load_config("demo", overrides)
    torch.manual_seed(cfg.run.seed)
    model = backbone_from_config(cfg.model)
    path = out / "untrained" / "backbone.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_backbone(model, path)
    return evaluate_ijb(model_path=str(path), image_path=str(out / "work" / "data" / "IJBC"),
                        target="IJBC", result_dir=str(out / "untrained" / "eval"),
                        flip=False, norm_score=True, detector_score=True, protocols="both")


def print_summary(summary: dict[str, Any]) -> None:
    from gbcosface.eval.report import format_comparison, format_identification_table

    print()
    print(format_comparison({"untrained": summary["untrained"], "trained": summary["trained"]}))
    for name in ("untrained", "trained"):
        if "identification" in summary[name]:
            print()
            print(f"{name}: " + format_identification_table(summary[name]))
    out = Path(summary["out"])
    print()
    print(f"run {summary['run_id']} published to {summary['run_uri']} (copied to {out / 'published'})")
    print(f"  model:  {out / 'published' / 'model' / 'backbone.pt'}")
    print(f"  report: {out / 'published' / 'eval' / 'IJBC' / 'report.html'}")
    print(f"  ROC:    {out / 'published' / 'eval' / 'IJBC' / 'roc.png'}")
    print(f"  KFP local artifacts: {out / 'kfp'}")
    print(f"  pipeline log (executor input, every step's output): {summary['log']}")
    t = summary["timings"]
    info = summary.get("mlflow")
    if info:
        print(f"  MLflow: run {info['pages'].get('trainer') or info['pages']['pipeline']}")
        print(f"          (the server stopped with the demo; reopen its store with: mlflow ui --backend-store-uri "
              f"sqlite:///{info['store']})")
        print(f"  TensorBoard: tensorboard --logdir {out / 'published' / 'train' / 'tensorboard'}")
    print(f"wall time {t['total_s']:.0f} s (synth {t['synth_s']:.0f} s, pipeline {t['pipeline_s']:.0f} s)")


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.sweep:  # the method comparison: gbcosface.sweep_demo
        from gbcosface.sweep_demo import run_sweep_demo

        run_sweep_demo(Path(args.out if args.out != "demo-out" else "compare-out"), seed=args.seed,
                       seeds=tuple(int(s) for s in args.seeds.split(",")),
                       variants=args.variants.split(",") if args.variants else None, steps=args.steps,
                       replicas=args.replicas, baseline=args.baseline, quiet=not args.show_logs)
        return 0
    run_demo(Path(args.out), seed=args.seed, steps=args.steps, replicas=args.replicas,
             gate_min_tar=args.gate_min_tar, quiet=not args.show_logs, runner=args.runner, image=args.image,
             tracking=args.tracking)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on this machine (local S3, synthetic data, CPU)")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo recipe's)")
    p.add_argument("--replicas", type=int, default=2, help="emulated PyTorchJob replicas")
    p.add_argument("--gate-min-tar", type=float, default=0.3, help="publish when TAR@FAR=1e-3 reaches this")
    p.add_argument("--show-logs", action="store_true",
                   help="print everything KFP prints (executor input, step output) instead of one line per step")
    p.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                   help="docker: every step and training replica in a container of --image (Docker API of "
                        "DOCKER_HOST, else a podman service started for the run)")
    p.add_argument("--image", default=None, help="with --runner docker: the image (make build-images)")
    p.add_argument("--sweep", action="store_true",
                   help="compare methods instead (`make compare`): gb_cosface, cosface, arcface x --seeds, equal "
                        "steps, one pipeline run, one table (out: compare-out)")
    p.add_argument("--seeds", default="0,1,2", help="with --sweep: training seeds, comma-separated")
    p.add_argument("--variants", default="", help="with --sweep: a subset of gb_cosface,cosface,arcface")
    p.add_argument("--baseline", default="cosface", help="with --sweep: the variant the differences are to")
    p.add_argument("--no-tracking", dest="tracking", action="store_false",
                   help="no MLflow server (TensorBoard event files are still written)")
    p.set_defaults(func=_cmd_demo)
