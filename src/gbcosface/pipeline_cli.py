"""`gbcosface pipeline compile|run-local|submit`: drive the KFP DAG defined in pipelines/.

Why the DAG is found on disk: components/ and pipelines/ are wiring kept beside the package (not
inside it), so these verbs run from a checkout; GBCOSFACE_REPO names it when the working directory
is elsewhere.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

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


def load_pipeline_module():
    root = str(repo_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("pipelines.train_eval")


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`name=value` pairs; values are parsed as YAML so numbers, booleans and lists keep their type."""
    params: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--param {pair!r}: expected name=value")
        name, raw = pair.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        params[name.strip()] = value if value is not None else ""
    return params


def compile_pipeline(out: str | Path) -> Path:
    from kfp import compiler

    module = load_pipeline_module()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.yaml")
    compiler.Compiler().compile(module.gbcosface_train_eval, package_path=str(tmp))
    os.replace(tmp, out)
    return out


def step_images(module: Any) -> set[str]:
    """The images the compiled DAG's steps run in."""
    from google.protobuf import json_format

    executors = json_format.MessageToDict(module.gbcosface_train_eval.pipeline_spec.deployment_spec)["executors"]
    return {e["container"]["image"] for e in executors.values() if "container" in e}


def run_local(params: dict[str, Any], pipeline_root: str | Path, runner: str = "subprocess", *,
              image: str | None = None, docker_args: dict[str, Any] | None = None) -> Path:
    """Run the DAG on this machine; returns the run's folder.

    runner="subprocess": KFP's SubprocessRunner, every step in this environment. runner="docker":
    KFP's DockerRunner, every step in a container of its component's image through the Docker API
    of DOCKER_HOST (Docker, or podman's); `image` checks that this is the image the steps use
    (GBCOSFACE_PIPELINE_IMAGE selects it when the pipeline is loaded), `docker_args` go to
    `containers.run` (mounts, network, environment: see launch.containers.step_container_args).
    """
    from kfp import local

    if runner not in ("subprocess", "docker"):
        raise ValueError(f"runner must be 'subprocess' or 'docker', not {runner!r}")
    if image and runner == "docker":
        os.environ.setdefault("GBCOSFACE_PIPELINE_IMAGE", image)
    module = load_pipeline_module()
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in root.iterdir()}
    if runner == "docker":
        images = step_images(module)
        if image and images != {image}:
            raise RuntimeError(f"the pipeline's steps run {sorted(images)}, not {image}: set "
                               f"GBCOSFACE_PIPELINE_IMAGE={image} before the pipeline is loaded")
        kfp_runner: Any = local.DockerRunner(**(docker_args or {}))
    else:
        kfp_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=kfp_runner, pipeline_root=str(root), raise_on_error=True)
    module.gbcosface_train_eval(**params)
    new = sorted(p for p in root.iterdir() if p.name not in before and p.is_dir())
    if not new:
        raise RuntimeError(f"the local run left no folder in {root}")
    return new[-1]


def submit(host: str, params: dict[str, Any], experiment: str, run_name: str | None,
           namespace: str | None) -> str:
    import kfp

    module = load_pipeline_module()
    client = kfp.Client(host=host, namespace=namespace)
    run = client.create_run_from_pipeline_func(
        module.gbcosface_train_eval, arguments=params, experiment_name=experiment, run_name=run_name,
        enable_caching=False)
    return run.run_id


def _cmd_compile(args: argparse.Namespace) -> int:
    print(compile_pipeline(args.output))
    return 0


def _cmd_run_local(args: argparse.Namespace) -> int:
    params = parse_params(args.param)
    params.setdefault("launcher", "local")
    run_dir = run_local(params, args.pipeline_root)
    print(json.dumps({"run_dir": str(run_dir)}))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    run_id = submit(args.host, parse_params(args.param), args.experiment, args.run_name, args.namespace)
    print(json.dumps({"run_id": run_id, "host": args.host}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="compile, run locally, or submit the Kubeflow pipeline")
    verbs = p.add_subparsers(dest="pipeline_verb", metavar="ACTION", required=True)

    c = verbs.add_parser("compile", help="write the KFP IR YAML")
    c.add_argument("-o", "--output", default="build/gbcosface_train_eval.yaml")
    c.set_defaults(func=_cmd_compile)

    r = verbs.add_parser("run-local", help="run the DAG with KFP's local runner (launcher=local)")
    r.add_argument("--pipeline-root", default="demo-out/kfp", help="where KFP writes local artifacts")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline parameter, e.g. data_uri=s3://bucket/data (repeatable)")
    r.set_defaults(func=_cmd_run_local)

    s = verbs.add_parser("submit", help="submit a run to a Kubeflow Pipelines endpoint with kfp.Client")
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow")
    s.add_argument("--experiment", default="gbcosface")
    s.add_argument("--run-name", default=None)
    s.add_argument("--namespace", default=None)
    s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    s.set_defaults(func=_cmd_submit)
