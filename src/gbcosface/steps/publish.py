"""Publish step: model, metadata and evaluation artifacts under the run prefix, plus a run summary.

Why a summary object: one JSON at `runs/RUN_ID/summary.json` ties the run together (dataset
manifest, config, model, evaluation, lineage), so a published model can be traced back to exactly
what made it without the pipeline UI.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from gbcosface.storage import join_uri, put_bytes, sha256_file, upload

log = logging.getLogger(__name__)

LINEAGE_KEYS = ("run_id", "config_hash", "dataset_manifest_hash", "code_version", "image", "seed")


def lineage_of(metadata: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in LINEAGE_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"model metadata lacks lineage fields {missing}")
    return {k: metadata[k] for k in LINEAGE_KEYS}


def publish(*, model_dir: str, model_metadata: dict[str, Any], results_dir: str,
            dataset_metadata: dict[str, Any], run_uri: str, endpoint_url: str = "",
            export_onnx: bool = True, summary_out: str, more_results_dir: str = "") -> dict[str, Any]:
    """Upload model (+ ONNX) and metadata, the gate target's evaluation and every other target's
    (`more_results_dir/<TARGET>/`), then the run summary that ties them together."""
    endpoint = endpoint_url or None
    lineage = lineage_of(model_metadata)
    model_path = Path(model_dir)
    results = Path(results_dir)
    metrics = json.loads((results / "metrics.json").read_text())
    target = metrics.get("target", "IJBC")

    with tempfile.TemporaryDirectory(prefix="gbcosface-publish-") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        for name in ("backbone.pt", "backbone.json"):
            (staging / name).write_bytes((model_path / name).read_bytes())
        onnx_info = None
        if export_onnx:
            from gbcosface.eval.export import export_onnx as to_onnx

            onnx_info = to_onnx(str(staging / "backbone.pt"), str(staging / "backbone.onnx"))
        metadata = {**json.loads((model_path / "metadata.json").read_text()), **lineage,
                    "files": {p.name: sha256_file(p) for p in sorted(staging.iterdir())},
                    "onnx": onnx_info, "dataset": dataset_metadata,
                    "evaluation": {"target": target, "metrics_uri": join_uri(run_uri, "eval", target, "metrics.json")}}
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
        model_manifest = upload(staging, join_uri(run_uri, "model"), endpoint_url=endpoint)
    eval_manifest = upload(results, join_uri(run_uri, "eval", target), endpoint_url=endpoint)
    more = {}
    more_root = Path(more_results_dir) if more_results_dir else None
    for sub in sorted(more_root.iterdir()) if more_root and more_root.is_dir() else []:
        if sub.is_dir() and (sub / "metrics.json").is_file():
            other = json.loads((sub / "metrics.json").read_text())
            manifest = upload(sub, join_uri(run_uri, "eval", sub.name), endpoint_url=endpoint)
            more[sub.name] = {"uri": join_uri(run_uri, "eval", sub.name), "target": sub.name,
                              "files": {e.key: e.sha256 for e in manifest.entries},
                              "flags": other.get("flags"), "tar_at_far": other.get("tar_at_far")}

    summary = {
        "run_id": lineage["run_id"],
        "run_uri": run_uri,
        "lineage": lineage,
        "dataset": {"source": dataset_metadata.get("source"),
                    "manifest_uri": dataset_metadata.get("manifest_uri"),
                    "manifest_hash": dataset_metadata.get("manifest_hash")},
        "config_uri": join_uri(run_uri, "config.yaml"),
        "model": {"uri": join_uri(run_uri, "model"), "files": {e.key: e.sha256 for e in model_manifest.entries}},
        "evaluation": {"uri": join_uri(run_uri, "eval", target), "target": target,
                       "files": {e.key: e.sha256 for e in eval_manifest.entries},
                       "flags": metrics.get("flags"), "tar_at_far": metrics.get("tar_at_far")},
        "other_evaluations": more,
        "gate": "pass",
    }
    text = json.dumps(summary, indent=2, sort_keys=True, default=str)
    Path(summary_out).write_text(text)
    summary_uri = join_uri(run_uri, "summary.json")
    put_bytes(summary_uri, text.encode(), endpoint_url=endpoint)
    log.info("published run %s to %s", lineage["run_id"], run_uri)
    return {"lineage": lineage, "summary_uri": summary_uri}
