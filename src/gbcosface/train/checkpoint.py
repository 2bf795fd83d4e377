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
- The marker holds the manifest of the checkpoint (every file's size and sha256), locally and on S3,
  and every read checks every object against it: a truncated `state.pt`, a flipped byte (also one
  under matching S3 sha256 metadata) or a `state.pt` swapped in from another checkpoint is refused
  with CheckpointError naming the file. Markers written before manifests existed are empty: such a
  checkpoint is still read (unverified, with a warning).
- `Checkpointer` owns the lifecycle: it reads and verifies before anything is deleted, falls back to
  the newest checkpoint that verifies (logging which ones were skipped and why), and prunes only
  after a newer checkpoint has been written and verified by reading it back. Why never prune first:
  with the newest checkpoint damaged, the older good ones are exactly what the restart needs.
- Loading uses `torch.load(weights_only=True)`: a checkpoint is data, never code. A file whose pickle
  asks for anything beyond tensors and plain containers is refused with CheckpointError.
- Only rank 0 writes: model and optimizer states are identical on every rank under DDP, and the
  per-rank RNG states are gathered to it, so one writer needs no shared file system between nodes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gbcosface.storage import (
    IntegrityError,
    Manifest,
    ManifestEntry,
    ManifestError,
    NotFoundError,
    delete_prefix,
    get_bytes,
    join_uri,
    list_uri,
    parse_manifest,
    parse_uri,
    upload_dir,
)

log = logging.getLogger("gbcosface.train")

CHECKPOINT_DIR = "checkpoints"
MARKER = "COMPLETE"
STATE_FILE = "state.pt"
RNG_FILE = "rng.pt"
META_FILE = "meta.json"
TMP_PREFIX = ".tmp-"
_STEP_RE = re.compile(r"^step-(\d{7,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names it."""


class CheckpointConfigError(CheckpointError):
    """A sound checkpoint that does not fit the current config's model (another width, depth, class count).

    Not damage: an older checkpoint of the same run would not fit either, so there is no fallback.
    """


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


def read_manifest(ref: CheckpointRef) -> Manifest | None:
    """The manifest the marker holds; None for an empty marker (written before manifests existed)."""
    uri = ref.file(MARKER)
    try:
        data = get_bytes(uri)
    except NotFoundError:
        raise CheckpointError(f"{uri}: the completion marker is gone") from None
    except IntegrityError as exc:
        raise CheckpointError(f"{uri}: {_first_line(exc)}") from None
    if not data.strip():
        return None
    try:
        return parse_manifest(data, uri)
    except ManifestError as exc:
        raise CheckpointError(f"{uri}: unreadable manifest: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_bytes(ref: CheckpointRef, name: str, manifest: Manifest | None) -> bytes:
    """One file's bytes, checked against its manifest entry (size, then sha256) when there is a manifest."""
    uri = ref.file(name)
    if manifest is not None and manifest.get(name) is None:
        raise CheckpointError(f"{uri}: not in the checkpoint's manifest ({MARKER} lists "
                              f"{', '.join(e.key for e in manifest.entries)})")
    try:
        data = get_bytes(uri)
    except NotFoundError:
        raise CheckpointError(f"{uri}: missing from a checkpoint marked complete") from None
    except IntegrityError as exc:  # S3: the bytes do not match their own sha256 metadata
        raise CheckpointError(f"{uri}: {_first_line(exc).removeprefix(uri + ': ')}") from None
    if manifest is not None:
        entry = manifest.get(name)
        assert entry is not None
        if len(data) != entry.size:
            raise CheckpointError(f"{uri}: {len(data)} bytes but the manifest in {MARKER} says {entry.size} "
                                  "(truncated or replaced)")
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise CheckpointError(f"{uri}: sha256 {digest[:16]}... but the manifest in {MARKER} says "
                                  f"{entry.sha256[:16]}... (damaged or replaced)")
    return data


def read_file(ref: CheckpointRef, name: str, manifest: Manifest | None | bool = True) -> Any:
    """Load one file of a checkpoint, verified against its manifest (`manifest=True` reads it first)."""
    if manifest is True:
        manifest = read_manifest(ref)
    return from_bytes(read_bytes(ref, name, manifest or None), ref.file(name))


def _read_all(ref: CheckpointRef) -> tuple[Manifest | None, dict[str, bytes]]:
    """Every object the manifest lists, each checked (size, sha256) as it is read, and read once."""
    manifest = read_manifest(ref)
    if manifest is None:
        return None, {}
    return manifest, {entry.key: read_bytes(ref, entry.key, manifest) for entry in manifest.entries}


def verify(ref: CheckpointRef) -> Manifest | None:
    """Read back every object the manifest lists and check its size and sha256; the manifest."""
    return _read_all(ref)[0]


@dataclass(frozen=True)
class Loaded:
    """A checkpoint read and verified: its state and RNG dicts."""

    ref: CheckpointRef
    state: dict[str, Any]
    rngs: dict[str, Any]


def load(ref: CheckpointRef) -> Loaded:
    """Verify every object of `ref` against its manifest, then load state and RNG files (weights only)."""
    manifest, data = _read_all(ref)
    if manifest is None:
        log.warning("%s: written without a manifest (an older version): its files are not verified", ref.uri)
    for name in (STATE_FILE, RNG_FILE):
        if name not in data:
            data[name] = read_bytes(ref, name, manifest)  # not listed: refused; no manifest: read unverified
    state = from_bytes(data[STATE_FILE], ref.file(STATE_FILE))
    rngs = from_bytes(data[RNG_FILE], ref.file(RNG_FILE))
    if not isinstance(state, dict) or not isinstance(rngs, dict):
        raise CheckpointError(f"{ref.uri}: {STATE_FILE} and {RNG_FILE} must hold dicts")
    return Loaded(ref, state, rngs)


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
    manifest = Manifest(source=join_uri(root, name), entries=[
        ManifestEntry(key=f, size=len(payload[f]), sha256=hashlib.sha256(payload[f]).hexdigest()) for f in payload
    ])
    _write_file(tmp / MARKER, manifest.to_json().encode())
    _fsync_dir(tmp)
    final = loc.path / name
    if final.exists():  # re-saving a step (e.g. a torn directory from a killed writer)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(loc.path)
    return CheckpointRef(step, str(final))


def prune(output: str, keep_last: int, newest: int | None = None) -> list[int]:
    """Keep the newest `keep_last` complete checkpoints up to step `newest` (default: the newest complete
    one); drop older ones, torn ones older than `newest`, and stale local temporary directories.
    Steps after `newest` are never touched: when `newest` is the checkpoint just written, a newer one
    is one that a resume skipped as damaged, kept for inspection (and overwritten when training
    reaches its step). Returns the deleted steps."""
    steps, temps = _scan(output)
    root = checkpoints_uri(output)
    complete = sorted(s for s, ok in steps.items() if ok and (newest is None or s <= newest))
    if not complete:
        return []
    keep = set(complete[-max(1, keep_last):])
    newest = complete[-1]
    doomed = [s for s in sorted(steps) if s < newest and s not in keep]
    for s in doomed:
        delete_prefix(join_uri(root, step_name(s)))
    loc = parse_uri(root)
    if not loc.is_s3:
        assert loc.path is not None
        for t in temps:
            shutil.rmtree(loc.path / t, ignore_errors=True)
    return doomed


class Checkpointer:
    """A run's checkpoints under `output`: load with verification and fallback, save, verify, prune.

    Order of a resume: list the complete checkpoints, then, newest first, read and verify each one
    (every object against the manifest, then a weights-only load, then `check`, the caller's test
    that the state fits its model) until one passes; nothing is deleted. A damaged checkpoint is
    skipped with a warning naming it and the reason; if none passes, CheckpointError lists them all
    (starting from scratch would silently overwrite them). A CheckpointConfigError from `check` is
    raised at once: older checkpoints of the run have the same shapes. Order of a save: write, read
    back and verify, and only then prune older ones.
    """

    def __init__(self, output: str, keep_last: int) -> None:
        self.output = output
        self.keep_last = keep_last
        self.skipped: list[tuple[CheckpointRef, str]] = []  # (checkpoint, why) of the last load_latest
        self.last_good: CheckpointRef | None = None  # the last checkpoint this process verified

    def load_latest(self, check: Callable[[Loaded], None] | None = None) -> Loaded | None:
        """The newest complete checkpoint that verifies and passes `check`; None when there is none at all."""
        self.skipped = []
        refs = list_complete(self.output)
        for ref in reversed(refs):
            try:
                loaded = load(ref)
                if check is not None:
                    check(loaded)
            except CheckpointConfigError:
                raise
            except CheckpointError as exc:
                reason = _first_line(exc)
                self.skipped.append((ref, reason))
                log.warning("skipping checkpoint %s: %s", ref.uri, reason)
                continue
            self.last_good = loaded.ref
            if self.skipped:
                log.warning("resuming from %s, the newest checkpoint that verifies (skipped: %s)", ref.uri,
                            ", ".join(step_name(r.step) for r, _ in self.skipped))
            return loaded
        if self.skipped:
            raise CheckpointError(f"{checkpoints_uri(self.output)}: no usable checkpoint, all kept for inspection: "
                                  + "; ".join(f"{step_name(r.step)}: {why}" for r, why in self.skipped))
        return None

    def save(self, step: int, files: dict[str, bytes], meta: dict[str, Any]) -> tuple[CheckpointRef, list[int]]:
        """Write step `step`, verify it by reading it back, then prune; (the checkpoint, the pruned steps)."""
        ref = save(self.output, step, files, meta)
        verify(ref)  # raises CheckpointError, and nothing is pruned, if what landed is not what was written
        self.last_good = ref
        return ref, prune(self.output, self.keep_last, newest=step)
