"""Stage step: fetch the dataset, verify it, and pin exactly what was fetched.

Why a manifest: the train and evaluate steps (and the training pods) stage again from the same
source and must see the very same bytes; they verify against this manifest, and its hash names the
dataset in every artifact's lineage.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gbcosface.storage import Manifest, join_uri, put_bytes, read_manifest, stage
from gbcosface.storage.stage import stage_cli_summary

log = logging.getLogger(__name__)


def data_cache_dir(work_dir: str | Path) -> Path:
    """Where a step stages the dataset; steps on one machine share it, so nothing is fetched twice."""
    return Path(work_dir) / "data"


def stage_dataset(*, data_uri: str, run_uri: str, work_dir: str, endpoint_url: str = "",
                  manifest_out: str) -> dict[str, Any]:
    """Stage `data_uri` into the work dir, write the manifest to `manifest_out` and to
    `run_uri/dataset/manifest.json`; return what the Dataset artifact's metadata should hold."""
    result = stage(data_uri, data_cache_dir(work_dir), manifest_out=manifest_out,
                   endpoint_url=endpoint_url or None, progress=False)
    log.info("%s", stage_cli_summary(result))
    manifest_uri = join_uri(run_uri, "dataset", "manifest.json")
    put_bytes(manifest_uri, result.manifest.to_json().encode(), endpoint_url=endpoint_url or None)
    return {
        "source": result.manifest.source,
        "manifest_hash": result.manifest.hash,
        "manifest_uri": manifest_uri,
        "file_count": len(result.manifest.entries),
        "total_bytes": result.manifest.total_size,
    }


def subset(manifest: Manifest, prefix: str) -> Manifest:
    """The part of a dataset manifest under `prefix/` (for example the IJBC folder)."""
    prefix = prefix.strip("/") + "/"
    entries = [e for e in manifest.entries if e.key.startswith(prefix)]
    if not entries:
        raise FileNotFoundError(f"dataset {manifest.source} has no files under {prefix}")
    return Manifest(source=manifest.source, entries=entries, created=manifest.created)


def stage_pinned(manifest_path: str | Path, work_dir: str | Path, prefix: str | None = None,
                 endpoint_url: str = "", lock_timeout: float = 3600.0) -> Path:
    """Stage (or reuse) the pinned dataset, or the part under `prefix`; return the local root.

    Steps that share a machine share the cache (a sweep's iterations run side by side), so a stage
    already writing there is waited for, as the training pods do (train/staging.py), not an error.
    """
    manifest = read_manifest(manifest_path)
    wanted = subset(manifest, prefix) if prefix else manifest
    dest = data_cache_dir(work_dir)
    result = stage(manifest.source, dest, expected_manifest=wanted, endpoint_url=endpoint_url or None,
                   progress=False, lock_timeout=lock_timeout)
    log.info("%s", stage_cli_summary(result))
    return dest
