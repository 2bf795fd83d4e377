"""Dataset manifests: exactly which bytes were staged, so that a run can name (and re-check) its data.

A manifest lists every file under a source prefix: key (relative to the prefix), size, sha256, and
the object's ETag and version id where the store has them. `manifest_hash` is a sha256 over a
canonical JSON of the entries' *content* fields (key, size, sha256) only. Why not the ETag, the
version, the source or the time: the hash names the dataset, so the same bytes staged from S3, from
a MinIO mirror or from a local copy must hash the same, and re-staging must not change it; the
ETag and version stay in the file for provenance and for pinning a re-stage to exact object versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gbcosface.storage.errors import IntegrityError, ManifestError
from gbcosface.storage.uri import check_relative_key

MANIFEST_FORMAT = "gbcosface.dataset-manifest"
MANIFEST_VERSION = 1
# Names inside a staging directory that belong to the stager, never to the dataset.
STAGING_DIR = ".staging"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class ManifestEntry:
    """One file: key relative to the source prefix, size in bytes, sha256 (hex), ETag and version."""

    key: str
    size: int
    sha256: str
    etag: str | None = None
    version_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
            "etag": self.etag,
            "version_id": self.version_id,
        }


@dataclass
class Manifest:
    """A dataset manifest; entries are kept sorted by key and keys are unique."""

    source: str
    entries: list[ManifestEntry]
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def __post_init__(self) -> None:
        self.entries = sorted(self.entries, key=lambda e: e.key)
        for a, b in zip(self.entries, self.entries[1:], strict=False):
            if a.key == b.key:
                raise ManifestError(f"manifest of {self.source}: duplicate key {a.key!r}")

    @property
    def hash(self) -> str:
        return manifest_hash(self.entries)

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.entries)

    def get(self, key: str) -> ManifestEntry | None:
        return self._by_key().get(key)

    def _by_key(self) -> dict[str, ManifestEntry]:
        return {e.key: e for e in self.entries}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "source": self.source,
            "created": self.created,
            "manifest_hash": self.hash,
            "file_count": len(self.entries),
            "total_size": self.total_size,
            "entries": [e.to_dict() for e in self.entries],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> Manifest:
        """Build from parsed JSON, checking every field; errors name `where` and the entry."""
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: the top level must be a JSON object")
        if data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{where}: not a dataset manifest (format {data.get('format')!r})")
        if data.get("version") != MANIFEST_VERSION:
            raise ManifestError(f"{where}: unsupported manifest version {data.get('version')!r}")
        source, created, raw_entries = data.get("source"), data.get("created"), data.get("entries")
        if not isinstance(source, str) or not isinstance(created, str):
            raise ManifestError(f"{where}: 'source' and 'created' must be strings")
        if not isinstance(raw_entries, list):
            raise ManifestError(f"{where}: 'entries' must be a list")
        entries = [_entry_from_dict(raw, f"{where}: entries[{i}]") for i, raw in enumerate(raw_entries)]
        manifest = cls(source=source, entries=entries, created=created)
        stored = data.get("manifest_hash")
        if stored is not None and stored != manifest.hash:
            raise ManifestError(
                f"{where}: manifest_hash {stored} does not match its entries ({manifest.hash}); "
                "the file was edited or damaged"
            )
        return manifest


def _entry_from_dict(raw: Any, where: str) -> ManifestEntry:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected an object")
    unknown = set(raw) - {"key", "size", "sha256", "etag", "version_id"}
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {sorted(unknown)}")
    key, size, sha, etag, version = (raw.get(k) for k in ("key", "size", "sha256", "etag", "version_id"))
    if not isinstance(key, str):
        raise ManifestError(f"{where}: 'key' must be a string")
    try:
        check_relative_key(key)
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ManifestError(f"{where} ({key}): 'size' must be a non-negative integer, not {size!r}")
    if not isinstance(sha, str) or not _SHA_RE.match(sha):
        raise ManifestError(f"{where} ({key}): 'sha256' must be 64 lowercase hex digits, not {sha!r}")
    for name, value in (("etag", etag), ("version_id", version)):
        if value is not None and not isinstance(value, str):
            raise ManifestError(f"{where} ({key}): '{name}' must be a string or null")
    return ManifestEntry(key=key, size=size, sha256=sha, etag=etag, version_id=version)


def manifest_hash(entries: Iterable[ManifestEntry]) -> str:
    """sha256 of the canonical JSON of the entries' (key, size, sha256), sorted by key."""
    canon = [{"key": e.key, "sha256": e.sha256, "size": e.size} for e in sorted(entries, key=lambda e: e.key)]
    text = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_manifest(manifest: Manifest, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_bytes(path, manifest.to_json().encode())
    return path


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest file not found") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc.strerror}") from None
    return parse_manifest(text, str(path))


def parse_manifest(text: str | bytes, where: str = "manifest") -> Manifest:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where}: invalid JSON: {exc}") from None
    return Manifest.from_dict(data, where)


def verify_dir(
    directory: str | Path,
    manifest: Manifest,
    *,
    allow_extra: bool = True,
    workers: int = 4,
) -> None:
    """Check that `directory` holds every manifest entry with the right size and sha256.

    Raises IntegrityError listing (up to 10 of) the files that are missing, have the wrong size or
    the wrong sha256, each named by its local path. With `allow_extra=False`, files that the
    manifest does not list are errors too (the stager's own `.staging` directory is ignored).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise IntegrityError(f"{directory}: not a directory (expected the files of {manifest.source})")

    def check(entry: ManifestEntry) -> str | None:
        path = directory / entry.key
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{path}: missing"
        if size != entry.size:
            return f"{path}: size {size} but the manifest says {entry.size}"
        digest = sha256_file(path)
        if digest != entry.sha256:
            return f"{path}: sha256 {digest} but the manifest says {entry.sha256}"
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        problems = [p for p in pool.map(check, manifest.entries) if p]
    if not allow_extra:
        listed = {e.key for e in manifest.entries}
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory).as_posix()
            if path.is_file() and rel.split("/")[0] != STAGING_DIR and rel not in listed:
                problems.append(f"{path}: not in the manifest")
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise IntegrityError(
            f"{directory} does not match the manifest of {manifest.source} "
            f"({len(problems)} problem(s)):\n  {shown}{more}"
        )
