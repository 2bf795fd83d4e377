"""Evaluate step: IJB 1:1 verification of the trained backbone on the pinned dataset.

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
    """Scalars for the KFP Metrics artifact: both conventions, meaningful cells only, plus AUC."""
    out: dict[str, float] = {"auc": float(metrics["auc"])}
    for convention, cells in metrics["tar_at_far"].items():
        for cell in cells:
            if cell["tar"] is not None:
                out[f"tar_at_far_{cell['far']:.0e}_{convention}"] = float(cell["tar"])
    return out


def evaluate_model(*, dataset_manifest: str, model_dir: str, model_metadata: dict[str, Any], target: str,
                   work_dir: str, endpoint_url: str = "", flip: bool = False, norm_score: bool = True,
                   detector_score: bool = True, gate_far: float = 1e-4, result_dir: str,
                   run_uri: str = "") -> dict[str, Any]:
    from gbcosface.eval.ijb import evaluate_ijb
    from gbcosface.eval.report import format_markdown

    folder = target.upper()
    root = stage_pinned(dataset_manifest, work_dir, prefix=folder, endpoint_url=endpoint_url)
    metrics = evaluate_ijb(model_path=str(Path(model_dir) / "backbone.pt"), image_path=str(root / folder),
                           target=folder, result_dir=result_dir, flip=flip, norm_score=norm_score,
                           detector_score=detector_score, cache_dir=str(Path(work_dir) / "feature-cache"))
    lineage = lineage_of(model_metadata)
    metrics["lineage"] = lineage
    tmp = Path(result_dir) / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    os.replace(tmp, Path(result_dir) / "metrics.json")
    return {
        "gate_tar": gate_value(metrics, gate_far),
        "kfp_metrics": kfp_metrics(metrics),
        "roc": metrics["roc"],
        "report_html": (Path(result_dir) / "report.html").read_text(),
        "table_markdown": format_markdown(metrics),
        "lineage": lineage,
    }
