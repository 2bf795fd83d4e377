"""`gbcosface pipeline compile|run-local|submit`: drive the KFP DAG defined in pipelines/.

Why the DAG is found on disk: components/ and pipelines/ are wiring kept beside the package (not
inside it), so these verbs run from a checkout; GBCOSFACE_REPO names it when the working directory
is elsewhere.
"""

from __future__ import annotations

import argparse
import builtins
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from gbcosface.yaml_safe import load_yaml, read_yaml_file

log = logging.getLogger(__name__)


def repo_root() -> Path:
    candidates = []
    if os.environ.get("GBCOSFACE_REPO"):
        candidates.append(Path(os.environ["GBCOSFACE_REPO"]))
    cwd = Path.cwd().resolve()
    candidates += [cwd, *cwd.parents]
    here = Path(__file__).resolve()
    candidates += list(here.parents)
    for path in candidates:
        if (path / "pipelines" / "train_eval.py").is_file() and (path / "components").is_dir():
            return path
    raise SystemExit("cannot find the pipelines/ folder: run from a gbcosface checkout or set GBCOSFACE_REPO")


#: The DAGs in pipelines/: the main one and the method comparison (pipelines/sweep.py).
PIPELINES = ("train_eval", "sweep")


def load_pipeline_module(pipeline: str = "train_eval"):
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, not {pipeline!r}")
    root = str(repo_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"pipelines.{pipeline}")


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`name=value` pairs; values are parsed as YAML so numbers, booleans and lists keep their type."""
    params: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--param {pair!r}: expected name=value")
        name, raw = pair.split("=", 1)
        value = load_yaml(raw, f"--param {pair!r}") if raw else ""
        params[name.strip()] = value if value is not None else ""
    return params


def compile_pipeline(out: str | Path, image: str | None = None, image_pull_secrets: tuple[str, ...] = (),
                     backend: str | None = None, pipeline: str = "train_eval",
                     parallelism: int | None = None) -> Path:
    """Compile DAG `pipeline` (train_eval or sweep) for KFP backend `backend` (default: the oldest
    supported) to IR YAML, checked against that backend's rules; `image` is the default of the image parameters (`make compile
    REGISTRY=.. TAG=..` passes what `make build-images` builds)."""
    from gbcosface import pipeline_backends

    module = load_pipeline_module(pipeline)
    target = pipeline_backends.get_backend(backend)
    options = module.CompileOptions(image_pull_secrets=tuple(image_pull_secrets), backend=target.name)
    if image:
        options.image = image
    if parallelism is not None:
        options.parallelism = parallelism  # the sweep's: iterations at once (0: all)
    try:
        return pipeline_backends.compile_pipeline(module.build_pipeline(options), out, target)
    except pipeline_backends.BackendError as exc:
        raise SystemExit(str(exc)) from exc


def step_images(pipeline: Any) -> set[str]:
    """The images the pipeline's steps run in (as the local runners read them from the IR)."""
    from google.protobuf import json_format

    executors = json_format.MessageToDict(pipeline.pipeline_spec.deployment_spec)["executors"]
    return {e["container"]["image"] for e in executors.values() if "container" in e}


def run_local(params: dict[str, Any], pipeline_root: str | Path, runner: str = "subprocess", *,
              image: str | None = None, docker_args: dict[str, Any] | None = None, pipeline: str = "train_eval",
              parallelism: int | None = None) -> Path:
    """Run the DAG on this machine; returns the run's folder.

    runner="subprocess": KFP's SubprocessRunner, every step in this environment. runner="docker":
    KFP's DockerRunner, every step in a container of `image` through the Docker API of DOCKER_HOST
    (Docker, or podman's); `docker_args` go to `containers.run` (mounts, network, environment: see
    launch.containers.step_container_args). The local runners read each task's image from the IR as
    it is, so the DAG is built with the static `image` instead of the run-time `pipeline_image`.
    """
    from kfp import local

    if runner not in ("subprocess", "docker"):
        raise ValueError(f"runner must be 'subprocess' or 'docker', not {runner!r}")
    from gbcosface.pipeline_backends import NEWEST

    module = load_pipeline_module(pipeline)
    # The local runner substitutes run placeholders anywhere and drops Kubernetes settings, so it
    # runs the DAG as built for the newest backend.
    options = module.CompileOptions(runtime_images=False, backend=NEWEST)
    if image:
        options.image = image
    if parallelism is not None:
        options.parallelism = parallelism
    dag = module.build_pipeline(options)
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in root.iterdir()}
    if runner == "docker":
        images = step_images(dag)
        if image and images != {image}:
            raise RuntimeError(f"the pipeline's steps run {sorted(images)}, not {image}")
        kfp_runner: Any = local.DockerRunner(**(docker_args or {}))
    else:
        kfp_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=kfp_runner, pipeline_root=str(root), raise_on_error=True)
    # KFP's local runner indents step output by swapping builtins.print for the duration of a
    # task (kfp 2.17.3 kfp/local/logging_utils.py: indented_print). Iterations of a ParallelFor
    # run in threads (kfp/local/orchestrator/enhanced_dag_orchestrator.py), so the swaps nest out
    # of order and one can outlive the run; put the real print back whatever happened.
    real_print = builtins.print
    try:
        dag(**params)
    finally:
        builtins.print = real_print
    new = sorted(p for p in root.iterdir() if p.name not in before and p.is_dir())
    if not new:
        raise RuntimeError(f"the local run left no folder in {root}")
    return new[-1]


def local_run_id(run_dir: str | Path) -> str:
    """The unique run id a local run's steps received (what names its run prefix in S3)."""
    out = Path(run_dir) / "train-model" / "executor_output.json"
    try:
        meta = json.loads(out.read_text())["artifacts"]["model"]["artifacts"][0]["metadata"]
        return str(meta["run_id"])
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise RuntimeError(f"{out}: no run id in the train step's model metadata ({exc})") from exc


def submit(host: str, params: dict[str, Any], experiment: str, run_name: str | None,
           namespace: str | None, image: str | None = None, image_pull_secrets: tuple[str, ...] = (),
           backend: str | None = None, pipeline: str = "train_eval", parallelism: int | None = None) -> str:
    """Compile DAG `pipeline` for KFP backend `backend` (checked against its rules) and submit one run;
    `namespace` is the user's profile namespace in multi-user Kubeflow. A run parameter the DAG built
    for that backend does not offer (e.g. `image_pull_secret` below 2.5) is refused before anything is sent."""
    import tempfile

    import kfp

    with tempfile.TemporaryDirectory(prefix="gbcosface-submit-") as tmp:
        package = compile_pipeline(Path(tmp) / "pipeline.yaml", image=image, image_pull_secrets=image_pull_secrets,
                                   backend=backend, pipeline=pipeline, parallelism=parallelism)
        check_params(package, params)
        client = kfp.Client(host=host, namespace=namespace)
        run = client.create_run_from_pipeline_package(
            str(package), arguments=params, experiment_name=experiment, run_name=run_name,
            namespace=namespace, enable_caching=False)
    return run.run_id


def check_params(package: str | Path, params: dict[str, Any]) -> None:
    """Refuse run parameters the compiled pipeline does not have (KFP would reject them after upload,
    or, for a parameter offered only from some backend on, the user would expect it to take effect)."""
    ir = read_yaml_file(package, all_documents=True)[0]
    known = set(ir.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))
    unknown = sorted(set(params) - known)
    if unknown:
        raise SystemExit(f"{package}: no run parameter {', '.join(unknown)} in the pipeline compiled for this "
                         f"KFP backend (parameters: {', '.join(sorted(known))}; docs/pipeline.md, "
                         "'Supported backends')")


def _cmd_compile(args: argparse.Namespace) -> int:
    out = args.output or f"build/gbcosface_{args.pipeline}.yaml"
    print(compile_pipeline(out, image=args.image, image_pull_secrets=tuple(args.image_pull_secret),
                           backend=args.kfp_backend, pipeline=args.pipeline, parallelism=args.parallelism))
    return 0


def _cmd_run_local(args: argparse.Namespace) -> int:
    params = parse_params(args.param)
    params.setdefault("launcher", "local")
    run_dir = run_local(params, args.pipeline_root, pipeline=args.pipeline, parallelism=args.parallelism)
    print(json.dumps({"run_dir": str(run_dir)}))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    run_id = submit(args.host, parse_params(args.param), args.experiment, args.run_name, args.namespace,
                    image=args.image, image_pull_secrets=tuple(args.image_pull_secret), backend=args.kfp_backend,
                    pipeline=args.pipeline, parallelism=args.parallelism)
    print(json.dumps({"run_id": run_id, "host": args.host}))
    return 0


def _add_backend_flag(parser: argparse.ArgumentParser) -> None:
    from gbcosface.pipeline_backends import DEFAULT, SUPPORTED, BackendError, get_backend

    def version(text: str) -> str:
        try:
            return get_backend(text).name
        except BackendError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parser.add_argument("--kfp-backend", default=DEFAULT, type=version, metavar="X.Y",
                        help=f"the KFP backend version the IR is for ({', '.join(SUPPORTED)}; default {DEFAULT}, "
                             "the oldest: features a newer backend needs are left out; docs/pipeline.md)")


def _add_pipeline_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", choices=PIPELINES, default="train_eval",
                   help="train_eval (the default) or sweep (several methods x seeds, then a comparison table)")
    p.add_argument("--parallelism", type=int, default=None,
                   help="sweep: iterations that may run at once (0: all; default 0; the local runner caps it at 2)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="compile, run locally, or submit the Kubeflow pipeline")
    verbs = p.add_subparsers(dest="pipeline_verb", metavar="ACTION", required=True)

    c = verbs.add_parser("compile", help="write the KFP IR YAML")
    c.add_argument("-o", "--output", default=None, help="default: build/gbcosface_<pipeline>.yaml")
    c.add_argument("--image", default=None,
                   help="the image the steps and training pods run (default: gbcosface.images.DEFAULT_IMAGE; "
                        "`make compile REGISTRY=.. TAG=..` passes what `make build-images` builds)")
    c.add_argument("--image-pull-secret", action="append", default=[], metavar="NAME",
                   help="a Secret the steps' pods pull the image with (repeatable; from backend 2.5 the "
                        "first is the default of the run parameter image_pull_secret)")
    _add_backend_flag(c)
    _add_pipeline_choice(c)
    c.set_defaults(func=_cmd_compile)

    r = verbs.add_parser("run-local", help="run the DAG with KFP's local runner (launcher=local)")
    r.add_argument("--pipeline-root", default="demo-out/kfp", help="where KFP writes local artifacts")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline parameter, e.g. data_uri=s3://bucket/data (repeatable)")
    _add_pipeline_choice(r)
    r.set_defaults(func=_cmd_run_local)

    s = verbs.add_parser("submit", help="submit a run to a Kubeflow Pipelines endpoint with kfp.Client")
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow")
    s.add_argument("--experiment", default="gbcosface")
    s.add_argument("--run-name", default=None)
    s.add_argument("--namespace", default=None, help="your profile namespace (multi-user Kubeflow)")
    s.add_argument("--image", default=None, help="as for `compile`")
    s.add_argument("--image-pull-secret", action="append", default=[], metavar="NAME")
    _add_backend_flag(s)
    s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    _add_pipeline_choice(s)
    s.set_defaults(func=_cmd_submit)
