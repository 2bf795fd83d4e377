"""`gbcosface demo --sweep` (`make compare`): the method comparison on one machine.

The sweep DAG (pipelines/sweep.py) under KFP's local runner, on the demo's synthetic world behind a
local S3 server: GB-CosFace vs CosFace vs ArcFace (their papers' defaults), 3 seeds each, every run
with the demo recipe's budget (equal steps, batch and replicas), one iteration at a time; then the
comparison table (mean ± sd over seeds, paired differences to CosFace with their t interval).
Servers it starts are stopped on success and on failure.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("gbcosface.sweep_demo")

BUCKET = "gbcosface-demo"
#: The rows the terminal gets (the full table is in comparison.md and report.html).
SHOWN = ("tar@1e-3/nearest", "tar@1e-4/nearest", "tar@1e-5/nearest", "tar@1e-4/strict", "auc",
         "rank1/open_set/mean", "tpir@1e-2/open_set/mean", "tpir@1e-1/open_set/mean")


def machine() -> str:
    """What the figures were measured on: CPU model, cores, OS, Python and torch."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def run_sweep_demo(out: Path, *, seed: int = 0, seeds: tuple[int, ...] = (0, 1, 2), variants: list[str] | None = None,
                   steps: int | None = None, replicas: int = 2, baseline: str = "cosface", parallelism: int = 1,
                   world_overrides: dict[str, Any] | None = None, recipe_overrides: list[str] | None = None,
                   quiet: bool = True) -> dict[str, Any]:
    """Run the sweep locally and return {"table", "text", "timings", "compare_dir", "machine", ...}.

    `seed`: the synthetic world's; `seeds`: the training seeds; `variants`: names among the default
    variants (gbcosface.steps.sweep.default_variants), all by default.
    """
    from gbcosface.console import step_console
    from gbcosface.data.synthetic.world import WorldSpec, generate_world
    from gbcosface.demo import _world_is_current
    from gbcosface.eval.compare import format_text
    from gbcosface.pipeline_cli import run_local
    from gbcosface.steps.sweep import default_variants
    from gbcosface.storage import download_dir, get_bytes, upload
    from gbcosface.storage.local_server import LocalS3Server

    t0 = time.monotonic()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    known = {v["name"]: v for v in default_variants()}
    names = list(variants or known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown variants {unknown} (known: {', '.join(known)})")
    world_dir = out / "world"
    spec = WorldSpec(seed=seed, **(world_overrides or {}))
    timings: dict[str, float] = {}
    if _world_is_current(world_dir, spec):
        log.info("reusing the synthetic world in %s", world_dir)
    else:
        generate_world(world_dir, spec, workers=min(2, os.cpu_count() or 1), overwrite=True)
    timings["synth_s"] = time.monotonic() - t0
    for stale in ("work", "kfp", "compare", "published"):
        shutil.rmtree(out / stale, ignore_errors=True)

    overrides = ["run.metrics_port=0", *(recipe_overrides or [])]  # iterations may overlap: no fixed ports
    if steps is not None:
        overrides.append(f"schedule.max_steps={steps}")
    output_uri = f"s3://{BUCKET}/sweep"
    saved_env = dict(os.environ)
    try:
        with LocalS3Server(log_path=out / "s3-server.log") as server:
            os.environ.update(server.env())
            server.create_bucket(BUCKET)
            data_uri = f"s3://{BUCKET}/datasets/synthetic-seed{seed}"
            upload(world_dir, data_uri, endpoint_url=server.endpoint_url)
            params = {
                "data_uri": data_uri, "output_uri": output_uri, "recipe": "demo", "overrides": overrides,
                "variants": [known[n] for n in names], "seeds": list(seeds), "baseline": baseline,
                "endpoint_url": server.endpoint_url, "launcher": "local", "nnodes": replicas, "nproc_per_node": 1,
                "gpus_per_node": 0, "work_dir": str(out / "work"), "ijb_target": "IJBC", "export_onnx": False,
            }
            log_path = out / "pipeline.log"
            log_path.unlink(missing_ok=True)
            print(f"running the sweep ({len(names)} variants x {len(seeds)} seeds, KFP local runner); "
                  f"step logs go to {log_path}", flush=True)
            t = time.monotonic()
            with step_console(log_path, quiet=quiet):
                run_dir = run_local(params, out / "kfp", pipeline="sweep", parallelism=parallelism)
            timings["pipeline_s"] = time.monotonic() - t
            compare_uri = _compare_uri(run_dir)
            table = json.loads(get_bytes(f"{compare_uri}/comparison.json", endpoint_url=server.endpoint_url))
            download_dir(compare_uri, out / "compare", endpoint_url=server.endpoint_url)
            # Every iteration's run (model, evaluation, report, summary) and the sweep's own prefix.
            download_dir(f"{output_uri}/runs", out / "published", endpoint_url=server.endpoint_url)
    finally:  # the steps ran with the local server's variables; the caller's environment comes back
        os.environ.clear()
        os.environ.update(saved_env)
    timings["total_s"] = time.monotonic() - t0
    text = format_text(table, SHOWN)
    summary = {"table": table, "text": text, "timings": timings, "compare_uri": compare_uri,
               "compare_dir": str(out / "compare"), "machine": machine(), "run_dir": str(run_dir),
               "settings": {"variants": names, "seeds": list(seeds), "world_seed": seed, "replicas": replicas,
                            "overrides": overrides, "baseline": baseline}}
    (out / "sweep_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print()
    print(text)
    print()
    print(f"full table: {out / 'compare' / 'comparison.md'}; report with ROC curves: {out / 'compare' / 'report.html'}")
    print(f"published to {compare_uri} (copied to {out / 'compare'}); every iteration's run in {out / 'published'}")
    print(f"wall time {timings['total_s']:.0f} s (pipeline {timings['pipeline_s']:.0f} s) on {summary['machine']}")
    return summary


def _compare_uri(run_dir: Path) -> str:
    """Where the compare step published the table (its returned URI, from the local run's outputs)."""
    path = Path(run_dir) / "compare-sweep" / "executor_output.json"
    try:
        return str(json.loads(path.read_text())["parameterValues"]["Output"])
    except (OSError, KeyError, ValueError) as exc:
        raise RuntimeError(f"{path}: the compare step left no output ({exc})") from exc
