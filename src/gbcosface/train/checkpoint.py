"""Full-state checkpoints under `<output>/checkpoints/step-NNNNNNN/`, local or s3://.

Why this shape:
- A checkpoint is a directory of a few files: `state.pt` (model, head, loss buffers such as cos_v,
  optimizer, lr schedule, grad scaler, step/epoch, data position), `rng.pt` (the RNG states of every
  rank, gathered to rank 0), `meta.json` (a readable summary) and the marker `COMPLETE`, written last.
  A directory without its marker is ignored, so a job killed while writing resumes from the previous
  checkpoint instead of a torn one.
- Locally the directory is first written under a temporary name (`.tmp-step-...`), fsynced and renamed
  into place, so a reader never sees a half-written `step-*` directory either. On S3 (no rename) the
  files are uploaded by `gbcosface.storage.upload_dir` (multipart, sha256 metadata checked on read)
  and the marker, which then holds the upload manifest, last.
- Loading uses `torch.load(weights_only=True)`: a checkpoint is data, never code. A file whose pickle
  asks for anything beyond tensors and plain containers is refused with CheckpointError.
- Only rank 0 writes: model and optimizer states are identical on every rank under DDP, and the
  per-rank RNG states are gathered to it, so one writer needs no shared file system between nodes.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gbcosface.storage import (
    NotFoundError,
    delete_prefix,
    get_bytes,
    join_uri,
    list_uri,
    parse_uri,
    upload_dir,
)

CHECKPOINT_DIR = "checkpoints"
MARKER = "COMPLETE"
STATE_FILE = "state.pt"
RNG_FILE = "rng.pt"
META_FILE = "meta.json"
TMP_PREFIX = ".tmp-"
_STEP_RE = re.compile(r"^step-(\d{7,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names it."""


@dataclass(frozen=True)
class CheckpointRef:
    step: int
    uri: str  # the step directory (local path or s3:// URI)

    def file(self, name: str) -> str:
        return join_uri(self.uri, name)


def step_name(step: int) -> str:
    if step < 0:
        raise ValueError("step must be >= 0")
    return f"step-{step:07d}"


def parse_step(name: str) -> int | None:
    """The step of a `step-NNNNNNN` directory name, None for anything else (temp dirs, stray files)."""
    match = _STEP_RE.match(name)
    return int(match.group(1)) if match else None


def checkpoints_uri(output: str) -> str:
    return join_uri(output, CHECKPOINT_DIR)


def _scan(output: str) -> tuple[dict[int, bool], list[str]]:
    """{step: complete?} of every step directory, and the names of local temporary directories."""
    root = checkpoints_uri(output)
    steps: dict[int, bool] = {}
    temps: list[str] = []
    loc = parse_uri(root)
    if loc.is_s3:
        try:
            keys = list_uri(root)
        except NotFoundError:
            return {}, []
        for key in keys:
            top, _, rest = key.partition("/")
            step = parse_step(top)
            if step is None:
                continue
            steps[step] = steps.get(step, False) or rest == MARKER
        return steps, temps
    assert loc.path is not None
    if not loc.path.is_dir():
        return {}, []
    for child in loc.path.iterdir():
        if child.name.startswith(TMP_PREFIX):
            temps.append(child.name)
            continue
        step = parse_step(child.name)
        if step is not None and child.is_dir():
            steps[step] = (child / MARKER).is_file()
    return steps, temps


def list_complete(output: str) -> list[CheckpointRef]:
    """Complete checkpoints, oldest first."""
    steps, _ = _scan(output)
    root = checkpoints_uri(output)
    return [CheckpointRef(s, join_uri(root, step_name(s))) for s in sorted(steps) if steps[s]]


def latest_complete(output: str) -> CheckpointRef | None:
    refs = list_complete(output)
    return refs[-1] if refs else None


def to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_bytes(data: bytes, where: str) -> Any:
    """Load tensors and plain containers only; anything else (pickled code) is refused, not run."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{where}: refused: it holds objects other than tensors and plain data ({first})") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{where}: unreadable checkpoint file: {exc}") from None


def read_file(ref: CheckpointRef, name: str) -> Any:
    uri = ref.file(name)
    try:
        data = get_bytes(uri)
    except NotFoundError:
        raise CheckpointError(f"{uri}: missing from a checkpoint marked complete") from None
    return from_bytes(data, uri)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save(output: str, step: int, files: dict[str, bytes], meta: dict[str, Any]) -> CheckpointRef:
    """Write a complete checkpoint directory for `step`: `files`, `meta.json`, then the marker."""
    root = checkpoints_uri(output)
    name = step_name(step)
    meta = {**meta, "step": step, "files": sorted(files), "written_at": time.time()}
    payload = dict(files)
    payload[META_FILE] = json.dumps(meta, indent=2, sort_keys=True).encode()
    loc = parse_uri(root)
    if loc.is_s3:
        target = join_uri(root, name)
        delete_prefix(target)  # a torn earlier attempt at this step must not mix with this one
        with tempfile.TemporaryDirectory(prefix="gbcosface-ckpt-") as tmp:
            for fname in sorted(payload):
                _write_file(Path(tmp) / fname, payload[fname])
            # parallel multipart uploads with sha256 metadata; the marker (holding the manifest) last
            upload_dir(tmp, target, marker=MARKER, skip_existing=False)
        return CheckpointRef(step, target)
    assert loc.path is not None
    loc.path.mkdir(parents=True, exist_ok=True)
    tmp = loc.path / f"{TMP_PREFIX}{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for fname in sorted(payload):
        _write_file(tmp / fname, payload[fname])
    _write_file(tmp / MARKER, b"")
    _fsync_dir(tmp)
    final = loc.path / name
    if final.exists():  # re-saving a step (e.g. a torn directory from a killed writer)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(loc.path)
    return CheckpointRef(step, str(final))


def prune(output: str, keep_last: int) -> list[int]:
    """Keep the newest `keep_last` complete checkpoints; drop older ones, torn ones older than the
    newest complete one, and stale local temporary directories. Returns the deleted steps."""
    steps, temps = _scan(output)
    root = checkpoints_uri(output)
    complete = sorted(s for s, ok in steps.items() if ok)
    if not complete:
        return []
    keep = set(complete[-max(1, keep_last):])
    newest = complete[-1]
    doomed = [s for s in sorted(steps) if s not in keep and (steps[s] or s < newest)]
    for s in doomed:
        delete_prefix(join_uri(root, step_name(s)))
    loc = parse_uri(root)
    if not loc.is_s3:
        assert loc.path is not None
        for t in temps:
            shutil.rmtree(loc.path / t, ignore_errors=True)
    return doomed
