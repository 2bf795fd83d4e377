"""Steps on one machine share the staged dataset (work_dir/data): a second stager waits for the first.

Why: a sweep's ParallelFor iterations run side by side (KFP's local runner runs them in threads), so
two evaluate steps stage the same pinned dataset into the same directory at once; the second must
wait for the first's lock and then reuse its files, not fail the iteration.
"""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

import pytest

from gbcosface.steps.stage import data_cache_dir, stage_pinned
from gbcosface.storage import stage
from gbcosface.storage.errors import StorageError
from gbcosface.storage.manifest import STAGING_DIR

FILES = {"IJBC/meta/a.txt": b"alpha\n", "IJBC/loose_crop/1.jpg": b"\xff\xd8jpeg", "train/property": b"2,112,112"}


def _pinned(tmp_path: Path) -> tuple[Path, Path]:
    src, work = tmp_path / "src", tmp_path / "work"
    for key, data in FILES.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    manifest = tmp_path / "manifest.json"
    stage(f"file://{src}", data_cache_dir(work), manifest_out=manifest, progress=False)
    return manifest, work


def _hold_lock(work: Path):
    fh = open(data_cache_dir(work) / STAGING_DIR / "lock", "w")  # noqa: SIM115 - released by the caller
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fh


def test_a_stage_into_a_busy_cache_waits_and_then_reuses_it(tmp_path: Path) -> None:
    manifest, work = _pinned(tmp_path)
    held = _hold_lock(work)
    outcome: dict[str, object] = {}

    def evaluate_step() -> None:
        try:
            outcome["root"] = stage_pinned(manifest, work, prefix="IJBC")
        except Exception as exc:  # noqa: BLE001 - reported to the test thread
            outcome["error"] = exc

    worker = threading.Thread(target=evaluate_step)
    worker.start()
    worker.join(timeout=1.0)  # the lock is still held: a stager that does not wait has failed by now
    fcntl.flock(held, fcntl.LOCK_UN)
    held.close()
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["root"] == data_cache_dir(work)
    assert (data_cache_dir(work) / "IJBC/meta/a.txt").read_bytes() == b"alpha\n"


def test_a_stage_told_not_to_wait_names_the_busy_directory(tmp_path: Path) -> None:
    manifest, work = _pinned(tmp_path)
    held = _hold_lock(work)
    try:
        with pytest.raises(StorageError, match=f"{data_cache_dir(work)}: another stage is writing"):
            stage_pinned(manifest, work, lock_timeout=0)
    finally:
        held.close()
