"""Uploads (files and directories) and marker-guarded directory transfers.

Why a marker: an S3 "directory" is many independent objects, so a reader can see half of a
checkpoint that is still being uploaded (or whose upload died). `upload_dir(..., marker="COMPLETE")`
removes any old marker first, uploads every file, and writes the marker last; its content is the
manifest of the directory. A reader that requires the marker (`download_dir(..., marker=...)`)
therefore sees only complete directories, and verifies every file against that manifest.

Uploads store each file's sha256 as `x-amz-meta-sha256`, which `stage` and `get_bytes` check on the
way back. Re-running an upload skips objects that already hold the same bytes (same size and sha256
metadata), so an interrupted upload resumes instead of starting over.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from tqdm import tqdm

from gbcosface.storage.client import get_client, s3_errors
from gbcosface.storage.errors import NotFoundError, StorageError, URIError
from gbcosface.storage.manifest import (
    STAGING_DIR,
    Manifest,
    ManifestEntry,
    atomic_write_bytes,
    parse_manifest,
    sha256_file,
    write_manifest,
)
from gbcosface.storage.objects import (
    SHA256_METADATA,
    ObjectInfo,
    get_bytes,
    list_objects,
    normalize_version,
    put_bytes,
    unquote_etag,
)
from gbcosface.storage.stage import default_transfer_config, stage
from gbcosface.storage.uri import Location, check_relative_key, parse_uri

log = logging.getLogger(__name__)
_CHUNK = 1024 * 1024


def local_files(src: Path) -> list[tuple[str, Path]]:
    """(key, path) for every regular file under `src`, sorted; a stager's `.staging` is skipped."""
    if src.is_file():
        return [(src.name, src)]
    if not src.is_dir():
        raise NotFoundError(f"{src}: no such file or directory")
    out = []
    for path in src.rglob("*"):
        rel = path.relative_to(src).as_posix()
        if rel.split("/")[0] == STAGING_DIR or not path.is_file():
            continue
        out.append((rel, path))
    return sorted(out)


def upload(
    src: str | Path,
    dest_uri: str | Path | Location,
    *,
    endpoint_url: str | None = None,
    workers: int = 8,
    transfer_config: TransferConfig | None = None,
    skip_existing: bool = True,
    marker: str | None = None,
    manifest_out: str | Path | None = None,
    progress: bool = False,
) -> Manifest:
    """Upload a file or a directory tree to `dest_uri` (s3:// or local); return its manifest.

    A directory's files land under `dest_uri/` with their relative paths as keys. A single file lands
    at `dest_uri` itself, or at `dest_uri/NAME` when `dest_uri` ends with '/'. Objects at or above the
    multipart threshold are uploaded in parallel parts. With `marker`, the marker object (holding the
    manifest JSON) is removed first and written last, after every file succeeded.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    src = Path(src)
    dest = parse_uri(dest_uri)
    files = local_files(src)
    if src.is_file():
        base = dest if str(dest_uri).endswith("/") else dest.parent()
        key = src.name if str(dest_uri).endswith("/") else dest.name
        if not key:
            raise URIError(f"{dest_uri}: give an object key (or end the URI with '/') to upload a file")
        files = [(key, src)]
    else:
        base = dest
    for key, _ in files:
        check_relative_key(key, where=str(src))
    if marker is not None:
        check_relative_key(marker, where="marker")
        if any(key == marker for key, _ in files):
            raise URIError(f"{src}: contains a file named {marker!r}, which is also the completion marker")
        _remove_marker(base, marker, endpoint_url)
    uploader = _Uploader(
        base, endpoint_url, transfer_config or default_transfer_config(), workers, skip_existing
    )
    entries = uploader.run(files, progress=progress)
    manifest = Manifest(source=base.uri, entries=entries)
    if marker is not None:
        put_bytes(base.join(marker), manifest.to_json().encode(), endpoint_url=endpoint_url)
    if manifest_out is not None:
        write_manifest(manifest, manifest_out)
    log.info(
        "uploaded %s -> %s: %d files, %.1f MB (%d already there)",
        src,
        base.uri,
        len(entries),
        manifest.total_size / 1e6,
        uploader.skipped,
    )
    return manifest


def upload_dir(
    local_dir: str | Path, uri: str | Path | Location, *, marker: str | None = "COMPLETE", **kwargs: Any
) -> Manifest:
    """Upload a directory tree (for example a checkpoint); the marker (default COMPLETE) is written last.

    Pass `marker=None` for a plain upload without a completion marker.
    """
    if not Path(local_dir).is_dir():
        raise NotFoundError(f"{local_dir}: no such directory")
    return upload(local_dir, uri, marker=marker, **kwargs)


def download_dir(
    uri: str | Path | Location,
    local_dir: str | Path,
    *,
    marker: str | None = None,
    endpoint_url: str | None = None,
    workers: int = 8,
) -> Manifest:
    """Download a directory tree, atomically per file and resumably.

    With `marker`, the directory must be complete (the marker exists) and every file is verified
    against the manifest the marker holds; the marker is copied last. A missing marker raises
    NotFoundError saying that the directory is incomplete.
    """
    loc = parse_uri(uri)
    if marker is None:
        return stage(loc, local_dir, workers=workers, progress=False, endpoint_url=endpoint_url).manifest
    marker_loc = loc.join(marker)
    try:
        data = get_bytes(marker_loc, endpoint_url=endpoint_url)
    except NotFoundError:
        raise NotFoundError(f"{loc.uri}: incomplete directory (no {marker} marker)") from None
    expected = parse_manifest(data, str(marker_loc))
    result = stage(
        loc, local_dir, expected_manifest=expected, workers=workers, progress=False, endpoint_url=endpoint_url
    )
    atomic_write_bytes(Path(local_dir) / marker, data)
    return result.manifest


def _remove_marker(base: Location, marker: str, endpoint_url: str | None) -> None:
    loc = base.join(marker)
    if not loc.is_s3:
        assert loc.path is not None
        loc.path.unlink(missing_ok=True)
        return
    with s3_errors(loc.uri):
        get_client(endpoint_url).delete_object(Bucket=loc.bucket, Key=loc.key)


class _Uploader:
    def __init__(
        self, base: Location, endpoint_url: str | None, tc: TransferConfig, workers: int, skip_existing: bool
    ) -> None:
        self.base, self.tc, self.workers, self.skip_existing = base, tc, workers, skip_existing
        self.client = (
            get_client(endpoint_url, max_pool_connections=workers + tc.max_request_concurrency + 4)
            if base.is_s3
            else None
        )
        self.skipped = 0
        self._lock = threading.Lock()
        self._bar: Any = None
        self._manager: Any = None
        self._existing: dict[str, ObjectInfo] = {}

    def run(self, files: list[tuple[str, Path]], progress: bool) -> list[ManifestEntry]:
        if self.skip_existing:
            try:
                self._existing = {o.key: o for o in list_objects(self.base, client=self.client)}
            except NotFoundError:
                if self.base.is_s3:
                    raise
        total = sum(p.stat().st_size for _, p in files)
        self._bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="upload",
            disable=not (progress and sys.stderr.isatty()),
        )
        if self.base.is_s3 and any(p.stat().st_size >= self.tc.multipart_threshold for _, p in files):
            self._manager = create_transfer_manager(self.client, self.tc)
        entries: list[ManifestEntry] = []
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="upload") as pool:
                futures: list[Future[ManifestEntry]] = [pool.submit(self._one, k, p) for k, p in files]
                try:
                    for fut in as_completed(futures):
                        entries.append(fut.result())
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
        finally:
            if self._manager is not None:
                self._manager.shutdown()
            self._bar.close()
        return entries

    def _one(self, key: str, path: Path) -> ManifestEntry:
        before = path.stat()
        sha = sha256_file(path)
        entry = (
            self._put_s3(key, path, before.st_size, sha)
            if self.base.is_s3
            else self._put_local(key, path, sha)
        )
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise StorageError(f"{path}: changed while uploading; re-run the upload")
        with self._lock:
            self._bar.update(before.st_size)
        return entry

    def _put_s3(self, key: str, path: Path, size: int, sha: str) -> ManifestEntry:
        where = self.base.join(key).uri
        full = self.base.prefix + key
        client, bucket = self.client, self.base.bucket
        with s3_errors(where):
            old = self._existing.get(key)
            if old is not None and old.size == size:
                head = client.head_object(Bucket=bucket, Key=full)
                if head.get("Metadata", {}).get(SHA256_METADATA) == sha:
                    with self._lock:
                        self.skipped += 1
                    return ManifestEntry(
                        key,
                        size,
                        sha,
                        unquote_etag(head.get("ETag")),
                        normalize_version(head.get("VersionId")),
                    )
            meta = {SHA256_METADATA: sha}
            if size < self.tc.multipart_threshold:
                with open(path, "rb") as f:
                    resp = client.put_object(Bucket=bucket, Key=full, Body=f, Metadata=meta)
                return ManifestEntry(
                    key, size, sha, unquote_etag(resp.get("ETag")), normalize_version(resp.get("VersionId"))
                )
            self._manager.upload(str(path), bucket, full, extra_args={"Metadata": meta}).result()
            head = client.head_object(Bucket=bucket, Key=full)
        if head.get("Metadata", {}).get(SHA256_METADATA) != sha or int(head["ContentLength"]) != size:
            raise StorageError(f"{where}: was overwritten by someone else during the upload")
        return ManifestEntry(
            key, size, sha, unquote_etag(head.get("ETag")), normalize_version(head.get("VersionId"))
        )

    def _put_local(self, key: str, path: Path, sha: str) -> ManifestEntry:
        target = self.base.join(key).path
        assert target is not None
        size = path.stat().st_size
        if (
            self.skip_existing
            and target.is_file()
            and target.stat().st_size == size
            and sha256_file(target) == sha
        ):
            with self._lock:
                self.skipped += 1
            return ManifestEntry(key, size, sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as fout, open(path, "rb") as fin:
                while chunk := fin.read(_CHUNK):
                    fout.write(chunk)
                    h.update(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            if h.hexdigest() != sha:
                raise StorageError(f"{path}: changed while copying; re-run the upload")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ManifestEntry(key, size, sha)
