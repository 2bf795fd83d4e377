"""Sweep steps: plan the (variant, seed) iterations, clean their jobs up, and compare their results.

Why iterations are runs of their own: each (variant, seed) goes through the very train, evaluate and
publish steps of `train_eval`, which name everything from a run id. The sweep gives each iteration
the run id `<run id>-<variant>-s<seed>`, built here from the pipeline run's unique id (a real KFP
backend substitutes that placeholder only as a whole task input, so the DAG cannot join it): its
artifacts land under `<output_uri>/runs/<run id>-<variant>-s<seed>/` beside the sweep's own
`<output_uri>/runs/<run id>/` (dataset manifest, plan.json, compare/), and its training job is named
from it, unique per iteration and per run. The comparison reads each iteration's published
metrics.json from object storage (no fan-in of task outputs: `dsl.Collected` reaches the KFP
backend only in 2.14, kubeflow/pipelines#11725), so the sweep runs on the same backends as the main
pipeline.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from gbcosface.steps.runs import check_run_id
from gbcosface.steps.runs import run_uri as make_run_uri
from gbcosface.storage import get_bytes, join_uri, put_bytes, read_manifest

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def default_variants() -> list[dict[str, Any]]:
    """GB-CosFace, CosFace and ArcFace with their papers' defaults.

    GB-CosFace takes the paper recipe's loss (recipes/paper.yaml: s 32, margin 0.16, alpha 0.15, ...);
    CosFace s 64, m 0.35 (Wang et al. 2018; insightface's cosface config); ArcFace s 64, m 0.5 (Deng
    et al. 2019). Each variant is a name plus config overrides applied after the sweep's own.
    """
    from gbcosface.config import load_config

    gb = load_config("paper").loss
    return [
        {"name": "gb_cosface", "overrides": [f"loss.name={gb.name}", f"loss.params={json.dumps(gb.params)}"]},
        {"name": "cosface", "overrides": ["loss.name=cosface", 'loss.params={"s": 64.0, "m": 0.35}']},
        {"name": "arcface", "overrides": ["loss.name=arcface", 'loss.params={"s": 64.0, "m": 0.5}']},
    ]


def check_variants(variants: Any) -> list[dict[str, Any]]:
    """Validated `[{"name", "overrides"}]`: names are unique lower-case identifiers (they name runs and
    jobs), overrides a list of `key=value` strings. All problems in one error."""
    problems: list[str] = []
    if not isinstance(variants, list) or not variants:
        raise ValueError(f"variants must be a non-empty list of {{name, overrides}}, got {variants!r}")
    out = []
    for i, v in enumerate(variants):
        where = f"variants[{i}]"
        if not isinstance(v, dict) or set(v) - {"name", "overrides"} or "name" not in v:
            problems.append(f"{where}: expected {{name, overrides}}, got {v!r}")
            continue
        name, overrides = v["name"], v.get("overrides", [])
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"{where}: name {name!r} must match {_NAME.pattern} (it names runs and jobs)")
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            problems.append(f"{where} ({name}): overrides must be a list of key=value strings, got {overrides!r}")
            continue
        out.append({"name": name, "overrides": list(overrides)})
    names = [v["name"] for v in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"variant names must be unique, repeated: {dupes}")
    if problems:
        raise ValueError("bad sweep variants:\n  " + "\n  ".join(problems))
    return out


def check_seeds(seeds: Any) -> list[int]:
    """Distinct non-negative integer seeds. KFP passes list items as JSON numbers (1 arrives as 1.0),
    so an integral float is accepted; 1.5 or "1" are not."""
    if not isinstance(seeds, list) or not seeds:
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    out = []
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or s != int(s) or s < 0:
            raise ValueError(f"seeds[{i}]: {s!r} is not a non-negative integer")
        out.append(int(s))
    if len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct, got {out}")
    return out


def iteration_run_id(run_id: str, variant: str, seed: int) -> str:
    """`<run id>-<variant>-s<seed>`: the run id of one iteration (its S3 prefix and job name)."""
    return check_run_id(f"{check_run_id(run_id)}-{variant}-s{seed}")


def plan_iterations(*, run_id: str, variants: Any, seeds: Any, overrides: list[str] | None = None
                    ) -> list[dict[str, Any]]:
    """Every (variant, seed), seed-major: {"name", "variant", "seed", "run_id", "overrides"}.

    An iteration's overrides are the sweep's, then the variant's, then `run.seed=<seed>`: equal budget
    and data for every variant, only the method and the seed differ. Seed-major order (every variant of
    seed 0, then of seed 1, ...) means that a sweep run with bounded parallelism and stopped early has
    compared every variant on the same first seeds.
    """
    checked = check_variants(variants)
    seed_list = check_seeds(seeds)
    return [{"name": f"{v['name']}-s{s}", "variant": v["name"], "seed": s,
             "run_id": iteration_run_id(run_id, v["name"], s),
             "overrides": [*(overrides or []), *v["overrides"], f"run.seed={s}"]}
            for s in seed_list for v in checked]


def check_configs(plan: list[dict[str, Any]], recipe: str) -> None:
    """Resolve every iteration's config (the recipe plus its overrides) before any job starts, so that a
    typo in one variant fails the sweep at once, naming the variant, instead of hours later."""
    from gbcosface.config import ConfigError, load_config

    problems = []
    for it in plan:
        try:
            load_config(recipe, it["overrides"])
        except ConfigError as exc:
            problems.append(f"{it['name']}: {exc}")
    if problems:
        raise ValueError("sweep iterations with a bad config:\n  " + "\n  ".join(problems))


def plan_sweep(*, dataset_manifest: str, run_id: str, output_uri: str, variants: Any, seeds: Any,
               overrides: list[str] | None = None, recipe: str = "", endpoint_url: str = "") -> list[dict[str, Any]]:
    """Plan the iterations, pin the staged dataset under every iteration's prefix (its training job
    verifies what it stages against `<iteration>/dataset/manifest.json`, as in a single run), and record
    the plan at `<output_uri>/runs/<run id>/plan.json`. Returns the iterations for the DAG's ParallelFor."""
    plan = plan_iterations(run_id=run_id, variants=variants, seeds=seeds, overrides=overrides)
    if recipe:
        check_configs(plan, recipe)
    endpoint = endpoint_url or None
    manifest = read_manifest(dataset_manifest)
    text = manifest.to_json().encode()
    for it in plan:
        put_bytes(join_uri(make_run_uri(output_uri, it["run_id"]), "dataset", "manifest.json"), text,
                  endpoint_url=endpoint)
    record = {"run_id": run_id, "recipe": recipe, "overrides": list(overrides or []), "dataset_manifest_hash": manifest.hash,
              "iterations": plan}
    put_bytes(join_uri(make_run_uri(output_uri, run_id), "plan.json"), json.dumps(record, indent=2).encode(),
              endpoint_url=endpoint)
    log.info("sweep %s: %d iterations (%s)", run_id, len(plan), ", ".join(it["name"] for it in plan))
    return plan


def cleanup_sweep_jobs(*, run_id: str, variants: Any, seeds: Any, launcher: str, job_kind: str = "pytorchjob",
                       namespace: str = "") -> str:
    """Exit handler: the train step's cleanup for every iteration's job (the plan is a pure function of
    the run id, variants and seeds, so it is rebuilt here without the planning step's output)."""
    from gbcosface.steps.train import cleanup_job

    plan = plan_iterations(run_id=run_id, variants=variants, seeds=seeds)
    return "\n".join(cleanup_job(run_id=it["run_id"], launcher=launcher, job_kind=job_kind, namespace=namespace)
                     for it in plan)


def compare_sweep(*, plan: list[dict[str, Any]], run_id: str, output_uri: str, target: str, baseline: str,
                  out_dir: str, endpoint_url: str = "", confidence: float = 0.95,
                  mlflow_tracking_uri: str = "") -> dict[str, Any]:
    """Read every iteration's published `eval/<target>/metrics.json`, write the comparison
    (comparison.json, comparison.md, report.html, roc.png) to `out_dir` and to
    `<output_uri>/runs/<run id>/compare/<target>/`, and log it to MLflow when tracking is on
    (MLFLOW_TRACKING_URI, set by KFP 2.17's integration, or `mlflow_tracking_uri` without it)."""
    from gbcosface.eval import compare as cmp
    from gbcosface.storage import NotFoundError, upload

    endpoint = endpoint_url or None
    folder = target.upper()
    sweep_id = check_run_id(run_id)
    runs = []
    for it in plan:
        uri = make_run_uri(output_uri, it["run_id"])
        where = join_uri(uri, "eval", folder, "metrics.json")
        try:
            metrics = json.loads(get_bytes(where, endpoint_url=endpoint))
        except NotFoundError:
            raise NotFoundError(f"iteration {it['name']} published no {folder} evaluation: {where} is missing") from None
        runs.append(cmp.RunResult(variant=it["variant"], seed=int(it["seed"]), metrics=metrics,
                                  run_id=it["run_id"], uri=uri))
    variants = list(dict.fromkeys(it["variant"] for it in plan))
    table = cmp.compare_runs(runs, baseline=baseline, confidence=confidence, variants=variants)
    flags = {json.dumps(r.metrics.get("flags"), sort_keys=True) for r in runs}
    title = f"{folder}: {' vs '.join(variants)} over {len(table['seeds'][variants[0]])} seed(s)"
    context = {"sweep run id": sweep_id, "target": folder, "baseline": baseline, "flags": " | ".join(sorted(flags)),
               "compare uri": join_uri(make_run_uri(output_uri, sweep_id), "compare", folder)}
    table["target"] = folder
    table["context"] = context
    curves = cmp.curves_of(runs)
    png = cmp.roc_overlay_png(curves, f"ROC on {folder}") if curves else None
    markdown = cmp.format_markdown(table, title)
    page = cmp.render_html(table, png, title, context)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from gbcosface.eval._io import atomic_write_bytes

    if png:
        atomic_write_bytes(out / "roc.png", png)
    atomic_write_bytes(out / "comparison.md", markdown.encode())
    atomic_write_bytes(out / "report.html", page.encode())
    atomic_write_bytes(out / "comparison.json", (json.dumps(table, indent=2) + "\n").encode())
    compare_uri = context["compare uri"]
    upload(out, compare_uri, endpoint_url=endpoint)
    if mlflow_tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri  # this step's own process only
    tracked = log_to_mlflow(table, runs, out)
    return {"table": table, "markdown": markdown, "html": page, "uri": compare_uri, "mlflow_run_id": tracked}


def log_to_mlflow(table: dict[str, Any], runs: list[Any], files: str | os.PathLike) -> str | None:
    """Log the comparison to MLflow: a parent run (the means, the paired differences, the files) with one
    nested run per iteration (its variant, seed, run id and metrics). Returns the parent run's id.

    Optional by design: skipped (None) when MLFLOW_TRACKING_URI is unset or mlflow is not installed, and
    a tracking failure is a warning (the table is already published to S3). Inside a KFP 2.17 task whose
    backend set MLFLOW_RUN_ID (kubeflow/pipelines proposals/12862), that run is the parent; otherwise a
    run is created in MLFLOW_EXPERIMENT_ID, or the experiment MLFLOW_EXPERIMENT_NAME (default gbcosface).
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        log.info("MLFLOW_TRACKING_URI is not set: the comparison is not logged to MLflow")
        return None
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
    except ImportError:
        log.warning("MLFLOW_TRACKING_URI is set but mlflow is not installed: the comparison is not logged")
        return None
    from gbcosface.eval.compare import metric_values

    def safe(key: str) -> str:  # MLflow names: alphanumerics, _ - . / and spaces (`tar@1e-4` -> `tar_at_1e-4`)
        return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", key.replace("@", "_at_"))

    def batch(client: Any, run_id: str, metrics: dict[str, float], params: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        items = [Metric(safe(k), float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, max(len(items), 1), 1000):  # MLflow's limit per call
            client.log_batch(run_id, metrics=items[i:i + 1000],
                             params=[Param(safe(k), str(v)) for k, v in params.items()] if i == 0 else [])

    try:
        client = MlflowClient(tracking_uri=uri)
        parent = os.environ.get("MLFLOW_RUN_ID") or ""
        own = not parent
        if parent:
            experiment = client.get_run(parent).info.experiment_id
        else:
            experiment = os.environ.get("MLFLOW_EXPERIMENT_ID") or ""
            if not experiment:
                name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "gbcosface"
                found = client.get_experiment_by_name(name)
                experiment = found.experiment_id if found else client.create_experiment(name)
            parent = client.create_run(experiment, run_name=f"sweep-{table['context']['sweep run id']}").info.run_id
        summary = {}
        for v in table["variants"]:
            summary.update({f"{v}/{k}/mean": s["mean"] for k, s in table["stats"][v].items() if s["mean"] is not None})
            summary.update({f"delta/{v}/{k}": d["mean"] for k, d in table["diffs"].get(v, {}).items()
                            if d["mean"] is not None})
        batch(client, parent, summary, {"baseline": table["baseline"], "target": table["target"],
                                        "variants": ",".join(table["variants"]), "confidence": table["confidence"]})
        client.log_artifacts(parent, str(files), artifact_path="compare")
        for r in runs:
            child = client.create_run(experiment, run_name=f"{r.variant}-s{r.seed}",
                                      tags={"mlflow.parentRunId": parent}).info.run_id
            batch(client, child, {k: v for k, v in metric_values(r.metrics).items() if v is not None},
                  {"variant": r.variant, "seed": r.seed, "run_id": r.run_id, "uri": r.uri,
                   "config_hash": (r.metrics.get("lineage") or {}).get("config_hash", "")})
            client.set_terminated(child)
        if own:
            client.set_terminated(parent)
        return parent
    except Exception as exc:  # tracking is optional: the table is published already
        log.warning("logging the comparison to MLflow at %s failed: %s", uri, exc)
        return None
