"""Stage the pinned dataset inside the training job, before the first step.

Why in the trainer: a PyTorchJob pod starts empty; the pipeline pinned the dataset in a manifest,
so every node fetches exactly those bytes (verified by sha256) into its own scratch volume. One
process per node (local rank 0) stages; the others wait at a barrier. Staging is resumable, so a
restarted pod only fetches what it lacks, and a node that already holds the files fetches nothing.
"""

from __future__ import annotations

import logging

from gbcosface.config import DataConfig

log = logging.getLogger(__name__)


def stage_training_data(data: DataConfig, local_rank: int) -> None:
    """Stage `data.stage_from` into `data.stage_to` on local rank 0 (call a barrier afterwards)."""
    if not data.stage_from or local_rank != 0:
        return
    from gbcosface.storage import Manifest, get_bytes, parse_manifest, stage
    from gbcosface.storage.stage import stage_cli_summary

    if not data.stage_to:
        raise ValueError("data.stage_from is set but data.stage_to (where to stage) is empty")
    expected = None
    if data.stage_manifest:
        pinned = parse_manifest(get_bytes(data.stage_manifest), where=data.stage_manifest)
        prefixes = tuple(p.strip("/") + "/" for p in data.stage_prefixes)
        entries = [e for e in pinned.entries if not prefixes or e.key.startswith(prefixes)]
        if not entries:
            raise ValueError(f"{data.stage_manifest}: no files under {', '.join(prefixes)}")
        expected = Manifest(source=pinned.source, entries=entries, created=pinned.created)
        if pinned.source.rstrip("/") != data.stage_from.rstrip("/"):
            log.warning("data.stage_from %s differs from the manifest's source %s; staging from the manifest's",
                        data.stage_from, pinned.source)
        source = pinned.source
    else:
        source = data.stage_from
    # Emulated replicas share one disk: wait for another node's stage instead of failing.
    result = stage(source, data.stage_to, expected_manifest=expected, progress=False, lock_timeout=3600)
    log.info("%s", stage_cli_summary(result))
