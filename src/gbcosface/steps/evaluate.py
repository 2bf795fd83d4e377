"""Evaluate step: IJB 1:1 verification (and 1:N identification when the target has its files) of the
trained backbone on the pinned dataset.

Why the step re-stages: the evaluation pod starts empty on a cluster; it fetches only the IJB part
of the pinned manifest (verified), and on one machine finds it already staged and fetches nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from gbcosface.steps.publish import lineage_of
from gbcosface.steps.stage import stage_pinned

log = logging.getLogger(__name__)


def gate_value(metrics: dict[str, Any], far: float, convention: str = "nearest") -> float:
    """TAR at `far` from metrics.json; NaN when the cell is not meaningful (the gate then fails)."""
    for cell in metrics["tar_at_far"][convention]:
        if math.isclose(cell["far"], far, rel_tol=1e-9):
            return float("nan") if cell["tar"] is None else float(cell["tar"])
    raise ValueError(f"FAR {far:g} was not evaluated (evaluated: {[c['far'] for c in metrics['tar_at_far'][convention]]})")


def kfp_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalars for the KFP Metrics artifact: both TAR conventions, meaningful cells only, plus AUC; with 1:N,
    CMC and meaningful TPIR cells of the galleries' mean (both conventions) and of the union (insightface),
    e.g. `ident_open_set_mean_rank1`, `ident_insightface_union_tpir_at_fpir_1e-02`."""
    out: dict[str, float] = {}
    if "tar_at_far" in metrics:
        out["auc"] = float(metrics["auc"])
        for convention, cells in metrics["tar_at_far"].items():
            for cell in cells:
                if cell["tar"] is not None:
                    out[f"tar_at_far_{cell['far']:.0e}_{convention}"] = float(cell["tar"])
    ident = metrics.get("identification")
    if ident:
        for conv in ("insightface", "open_set"):
            for key, label in (("mean", "mean"), (ident.get("combined"), "union")):
                block = (ident.get(conv) or {}).get(key) if key else None
                if not block:
                    continue
                for rank, rate in block["cmc"].items():
                    out[f"ident_{conv}_{label}_rank{rank}"] = float(rate)
                for cell in block["tpir_at_fpir"]:
                    if cell["tpir"] is not None:
                        out[f"ident_{conv}_{label}_tpir_at_fpir_{cell['fpir']:.0e}"] = float(cell["tpir"])
    return out


def has_identification_files(root: str | os.PathLike, target: str) -> bool:
    """Whether the staged target holds the 1:N gallery and probe files."""
    from gbcosface.data.ijb import meta_paths_1n

    return all(p.is_file() for p in meta_paths_1n(root, target).values())


def evaluate_model(*, dataset_manifest: str, model_dir: str, model_metadata: dict[str, Any], target: str,
                   work_dir: str, endpoint_url: str = "", flip: bool = False, norm_score: bool = True,
                   detector_score: bool = True, gate_far: float = 1e-4, result_dir: str,
                   run_uri: str = "", protocol: str = "auto", run_id: str = "",
                   mlflow_tracking_uri: str = "") -> dict[str, Any]:
    """Stage the target, evaluate, and return what the DAG reads (the gate reads the 1:1 `gate_tar`).

    `protocol`: "auto" (both when the target has the 1:N files, else 11), "11" or "both".
    Besides the keys below, `identification` (the metrics.json section, or None) and
    `identification_markdown` (the demo's 1:N table, "" without 1:N). With MLflow (KFP's integration, or
    `mlflow_tracking_uri` with `run_id`) the headline figures go to this task's run (tracking/pipeline.py).
    """
    from gbcosface.eval.report import format_identification_markdown, format_markdown
    from gbcosface.eval.run_ijb import evaluate_ijb

    folder = target.upper()
    root = stage_pinned(dataset_manifest, work_dir, prefix=folder, endpoint_url=endpoint_url)
    if protocol == "auto":
        protocol = "both" if has_identification_files(root / folder, folder) else "11"
    if protocol not in ("11", "both"):
        raise ValueError(f"the evaluate step gates on 1:1 TAR: protocol must be auto, 11 or both, got {protocol!r}")
    metrics = evaluate_ijb(model_path=str(Path(model_dir) / "backbone.pt"), image_path=str(root / folder),
                           target=folder, result_dir=result_dir, flip=flip, norm_score=norm_score,
                           detector_score=detector_score, cache_dir=str(Path(work_dir) / "feature-cache"),
                           protocols=protocol)
    lineage = lineage_of(model_metadata)
    metrics["lineage"] = lineage
    tmp = Path(result_dir) / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    os.replace(tmp, Path(result_dir) / "metrics.json")
    if run_uri:  # the training curves of the model evaluated, from its event files
        from gbcosface.storage import join_uri
        from gbcosface.tracking.curves import add_to_report

        add_to_report(result_dir, metrics, join_uri(run_uri, "train", "tensorboard"), endpoint_url or None)
    _track(metrics, folder, lineage, run_id=run_id, tracking_uri=mlflow_tracking_uri, result_dir=result_dir)
    return {
        "gate_tar": gate_value(metrics, gate_far),
        "kfp_metrics": kfp_metrics(metrics),
        "roc": metrics["roc"],
        "report_html": (Path(result_dir) / "report.html").read_text(),
        "table_markdown": format_markdown(metrics)
        + (("\n" + format_identification_markdown(metrics)) if "identification" in metrics else ""),
        "lineage": lineage,
        "identification": metrics.get("identification"),
        "identification_markdown": format_identification_markdown(metrics) if "identification" in metrics else "",
    }


def _track(metrics: dict[str, Any], target: str, lineage: dict[str, Any], *, run_id: str, tracking_uri: str,
           result_dir: str) -> None:
    """TAR@FAR (both conventions), AUC and the 1:N figures as `<target>/<name>` in this task's MLflow run,
    and the report, plots and metrics.json as its artifacts (under `<target>/`)."""
    from gbcosface.tracking.pipeline import task_run

    if not (run_id or os.environ.get("MLFLOW_RUN_ID")):
        return
    tracking = task_run(run_id=run_id, task="evaluate", tracking_uri=tracking_uri)
    if tracking is None:
        return
    tracking.log_params({f"{target}/{k}": v for k, v in lineage.items() if isinstance(v, str | int | float)})
    tracking.log_metrics({f"{target}/{k}": v for k, v in kfp_metrics(metrics).items()})
    tracking.log_artifacts([p for p in sorted(Path(result_dir).iterdir())
                            if p.suffix in (".html", ".png", ".json") and p.is_file()], target)
    tracking.end("FINISHED")


def ijb_targets(manifest_path: str | os.PathLike) -> list[str]:
    """The IJB targets a pinned dataset holds (`IJBB/`, `IJBC/` with their 1:1 meta files), sorted."""
    from gbcosface.data.ijb import TARGETS
    from gbcosface.storage import read_manifest

    keys = {e.key for e in read_manifest(manifest_path).entries}
    return [t.upper() for t in TARGETS if f"{t.upper()}/meta/{t}_template_pair_label.txt" in keys]


def evaluate_other_targets(*, dataset_manifest: str, model_dir: str, model_metadata: dict[str, Any],
                           gate_target: str, result_dir: str, **options: Any) -> dict[str, Any]:
    """Evaluate every IJB target of the dataset except the gate's, each into `result_dir/<TARGET>/`.

    Why a step of its own: it runs beside the gate's evaluation (IJB-B and IJB-C in parallel on a
    cluster) and its results are published with the rest once the gate passes; a dataset with only
    the gate's target leaves `result_dir` empty. `options` as for `evaluate_model`.
    """
    done: dict[str, Any] = {}
    out = Path(result_dir)
    out.mkdir(parents=True, exist_ok=True)
    for target in ijb_targets(dataset_manifest):
        if target == gate_target.upper():
            continue
        res = evaluate_model(dataset_manifest=dataset_manifest, model_dir=model_dir, model_metadata=model_metadata,
                             target=target, result_dir=str(out / target), **options)
        done[target] = res
        log.info("evaluated %s: TAR at the gate's FAR %.4f", target, res["gate_tar"])
    return {"targets": sorted(done), "table_markdown": "\n".join(r["table_markdown"] for r in done.values()),
            "kfp_metrics": {f"{t}_{k}": v for t, r in done.items() for k, v in r["kfp_metrics"].items()},
            "lineage": lineage_of(model_metadata)}
