"""`stage()`: copy a dataset prefix (s3:// or local) into a local directory, verified and pinned.

What it guarantees, and why:
- A file appears under the destination only when it is complete and its sha256 is verified: bytes
  are written under `DEST/.staging/partial/` (same filesystem, so `os.replace` is atomic) and renamed
  into place afterwards. Training never reads a half-downloaded shard.
- Corrupted data is refused, never used: if the object carries our `x-amz-meta-sha256` (written by
  `upload`) or an expected manifest gives a sha256, the downloaded bytes must match it; otherwise the
  sha256 is computed and recorded. A refusal raises IntegrityError naming the object and leaves
  nothing partial behind.
- Resumable: files verified by an earlier (interrupted) run are recorded in `.staging/journal.jsonl`
  and are not fetched again while they and their source objects are unchanged; with an expected
  manifest, an existing file whose size and sha256 match is kept too.
- Pinned: the result is a Manifest (key, size, sha256, ETag, version) of exactly what was staged;
  with an expected manifest that carries version ids, those exact object versions are fetched.
- Fast: many small objects are fetched in parallel with one GET each (hashing while writing); large
  objects go through boto3's transfer manager (parallel ranged GETs, pinned by ETag/version).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import random
import shutil
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError
from s3transfer.subscribers import BaseSubscriber
from tqdm import tqdm

from gbcosface.errors import clip
from gbcosface.storage.client import error_code, get_client, s3_errors
from gbcosface.storage.errors import IntegrityError, NotFoundError, StorageError, URIError
from gbcosface.storage.journal import JournalRecord, StagingJournal
from gbcosface.storage.manifest import (
    STAGING_DIR,
    Manifest,
    ManifestEntry,
    read_manifest,
    sha256_file,
    write_manifest,
)
from gbcosface.storage.objects import (
    SHA256_METADATA,
    ObjectInfo,
    list_objects,
    normalize_version,
    unquote_etag,
)
from gbcosface.storage.uri import Location, check_relative_key, parse_uri

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_CHUNK = 1 * MiB
# Errors while reading a response body: botocore's retries cover only the request itself.
RETRYABLE_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    socket.timeout,
    ConnectionError,
    ReadTimeoutError,
    IncompleteReadError,
    ResponseStreamingError,
    ConnectionClosedError,
)


def default_transfer_config(
    max_concurrency: int = 8,
    multipart_threshold: int = 16 * MiB,
    multipart_chunksize: int = 8 * MiB,
) -> TransferConfig:
    """Transfer settings: objects at or above `multipart_threshold` use parallel ranged GETs/parts."""
    return TransferConfig(
        multipart_threshold=multipart_threshold,
        multipart_chunksize=multipart_chunksize,
        max_concurrency=max_concurrency,
        num_download_attempts=5,
        use_threads=True,
        preferred_transfer_client="classic",
    )


@dataclass
class StageResult:
    """What `stage` did: the manifest of the staged files plus counts for logs and benchmarks."""

    manifest: Manifest
    dest: Path
    fetched: int
    reused: int
    bytes_fetched: int
    seconds: float


@dataclass(frozen=True)
class _Item:
    obj: ObjectInfo
    expected: ManifestEntry | None


@dataclass
class _Fetched:
    sha256: str
    size: int
    meta_sha256: str | None = None
    etag: str | None = None
    version_id: str | None = None


@dataclass
class _Outcome:
    entry: ManifestEntry
    fetched: bool
    nbytes: int = 0


class _Cancelled(Exception):
    """Raised by workers that start after another worker failed."""


def stage(
    src_uri: str | Path | Location,
    dest_dir: str | Path,
    manifest_out: str | Path | None = None,
    expected_manifest: Manifest | str | Path | None = None,
    workers: int = 8,
    progress: bool = True,
    *,
    endpoint_url: str | None = None,
    transfer_config: TransferConfig | None = None,
    fsync: bool = True,
    client: Any = None,
    lock_timeout: float = 0.0,
) -> StageResult:
    """Stage every object under `src_uri` into `dest_dir`; return the manifest of what was staged.

    One stage writes into a directory at a time; `lock_timeout` seconds are waited for another
    (processes sharing a disk, e.g. emulated replicas on one machine), then StorageError.

    `expected_manifest` (a Manifest or a path to one) pins the dataset: exactly its keys are staged
    (other objects under the prefix are ignored), each must have its size and sha256, and entries with
    a version id are fetched at that version. `manifest_out` receives the resulting manifest
    (atomically). `workers` files are fetched at once; `progress` shows a bar on a terminal.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    start = time.monotonic()
    loc = parse_uri(src_uri)
    dest = Path(dest_dir)
    expected = _load_expected(expected_manifest)
    tc = transfer_config or default_transfer_config()
    if loc.is_s3:
        pool_size = workers + tc.max_request_concurrency + 4
        client = client or get_client(endpoint_url, max_pool_connections=pool_size)
    else:
        _check_no_overlap(loc, dest)
    listing = list_objects(loc, client=client)
    items = _plan(loc, listing, expected)
    _check_dest(dest, [it.obj.key for it in items], loc)
    with _StagingArea(dest, lock_timeout) as area:
        stager = _Stager(loc, dest, area, client, tc, fsync=fsync, progress=progress)
        outcomes = stager.run(items, workers)
    manifest = Manifest(source=loc.uri, entries=[o.entry for o in outcomes])
    if manifest_out is not None:
        write_manifest(manifest, manifest_out)
    fetched = [o for o in outcomes if o.fetched]
    result = StageResult(
        manifest=manifest,
        dest=dest,
        fetched=len(fetched),
        reused=len(outcomes) - len(fetched),
        bytes_fetched=sum(o.nbytes for o in fetched),
        seconds=time.monotonic() - start,
    )
    log.info(
        "staged %s -> %s: %d files (%d fetched, %d already present), %.1f MB in %.1f s, manifest %s",
        loc.uri,
        dest,
        len(outcomes),
        result.fetched,
        result.reused,
        manifest.total_size / 1e6,
        result.seconds,
        manifest.hash[:16],
    )
    return result


def _load_expected(expected: Manifest | str | Path | None) -> Manifest | None:
    if expected is None or isinstance(expected, Manifest):
        return expected
    return read_manifest(expected)


def _check_no_overlap(loc: Location, dest: Path) -> None:
    assert loc.path is not None
    src, dst = loc.path.resolve(), dest.resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        raise URIError(f"cannot stage {src} into {dst}: source and destination overlap")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_dest(dest: Path, keys: list[str], loc: Location) -> None:
    """Refuse, before anything is staged, a destination that is not a writable directory, a symlink
    inside it that a key would write through, and keys longer than its filesystem allows."""
    base = _existing_ancestor(dest)
    try:
        name_max = os.pathconf(base, "PC_NAME_MAX")
        path_max = os.pathconf(base, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    # Parts are written under DEST/.staging/partial/KEY: the longest path a key makes.
    longest = len(os.fsencode(str((dest / STAGING_DIR / "partial").absolute()))) + 1
    for key in keys:
        for part in key.split("/"):
            if len(os.fsencode(part)) > name_max:
                raise URIError(
                    f"{loc.uri}: object key {clip(key)} has a path segment of {len(os.fsencode(part))} bytes; "
                    f"the filesystem of {base} allows {name_max}"
                )
        if longest + len(os.fsencode(key)) >= path_max:
            raise URIError(f"{loc.uri}: object key {clip(key)} makes a local path longer than {path_max} bytes")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StorageError(f"{dest}: exists and is not a directory; cannot stage into it") from None
    except OSError as exc:
        raise StorageError(f"{dest}: cannot create the staging directory: {exc.strerror}") from None
    if not dest.is_dir():
        raise StorageError(f"{dest}: is not a directory; cannot stage into it")
    if not os.access(dest, os.W_OK | os.X_OK):
        raise StorageError(f"{dest}: is not writable; cannot stage into it")
    area = [f"{STAGING_DIR}/{name}" for name in ("partial/x", "lock", "journal.jsonl")]
    checked: set[str] = set()
    for key in [*area, *keys]:
        _refuse_symlinks(dest, key, checked)


def _refuse_symlinks(dest: Path, key: str, checked: set[str]) -> None:
    """A symlink already in DEST on the way to KEY (a parent directory, or the file itself) would make
    the stage write (or reuse) a file outside DEST: refuse it, naming the link. `checked` holds the
    relative directories already seen (a dataset of 10^6 files has few directories)."""
    path = dest
    parts = key.split("/")
    for i, part in enumerate(parts):
        path = path / part
        rel = "/".join(parts[: i + 1])
        if i < len(parts) - 1 and rel in checked:
            continue
        checked.add(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"{path}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise StorageError(
                f"{path}: is a symbolic link inside the staging directory (to {os.readlink(path)}); "
                "refusing to stage through it"
            )


def _plan(loc: Location, listing: list[ObjectInfo], expected: Manifest | None) -> list[_Item]:
    """Which objects to stage, checked up front so that a bad source fails before any download."""
    if expected is None:
        if not listing:
            raise NotFoundError(f"{loc.uri}: no objects to stage")
        items = [_Item(o, None) for o in listing]
    else:
        by_key = {o.key: o for o in listing}
        items, problems = [], []
        for entry in expected.entries:
            obj = by_key.get(entry.key)
            if entry.version_id and loc.is_s3:
                # Pinned to an exact version: fetched as such even if the key was overwritten since.
                pinned = ObjectInfo(
                    entry.key, entry.size, entry.etag, f"version:{entry.version_id}", entry.version_id
                )
                items.append(_Item(pinned, entry))
            elif obj is None:
                problems.append(f"{entry.key}: in the expected manifest but not under {loc.uri}")
            elif obj.size != entry.size:
                problems.append(
                    f"{entry.key}: {obj.size} bytes under {loc.uri} but {entry.size} in the expected manifest"
                )
            else:
                items.append(_Item(obj, entry))
        if problems:
            shown = "\n  ".join(problems[:10])
            raise IntegrityError(
                f"{loc.uri} does not match the expected manifest ({len(problems)} problem(s)):\n  {shown}"
            )
        extra = len(set(by_key) - {e.key for e in expected.entries})
        if extra:
            log.info("%s: ignoring %d object(s) that the expected manifest does not list", loc.uri, extra)
    keys = {it.obj.key for it in items}
    for key in sorted(keys):
        check_relative_key(key, where=loc.uri)
        if key.split("/")[0] == STAGING_DIR:
            raise URIError(
                f"{loc.uri}: object key {key!r} collides with the stager's {STAGING_DIR}/ directory"
            )
        parts = key.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in keys:
                raise URIError(f"{loc.uri}: key {parent!r} is both a file and the directory of {key!r}")
    # Largest first, so that big objects overlap with the many small ones instead of trailing.
    return sorted(items, key=lambda it: (-it.obj.size, it.obj.key))


class _StagingArea:
    """`DEST/.staging/`: an exclusive lock, the partial-file area and the journal."""

    def __init__(self, dest: Path, lock_timeout: float = 0.0) -> None:
        self.lock_timeout = lock_timeout
        self.root = dest / STAGING_DIR
        self.partial = self.root / "partial"
        self.journal = StagingJournal(self.root / "journal.jsonl")
        self._lock_file: Any = None

    def __enter__(self) -> _StagingArea:
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.root / "lock", "w")  # noqa: SIM115 - held for the whole stage
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._lock_file.close()
                    raise StorageError(
                        f"{self.root.parent}: another stage is writing into this directory") from None
                time.sleep(0.2)
        # Parts left by a killed run are never trusted: start the partial area empty.
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir()
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()


class _KnownObject(BaseSubscriber):
    """Tells the transfer manager the size and ETag we already know, so it skips its own HEAD."""

    def __init__(self, size: int, etag: str | None, bar: tqdm, lock: threading.Lock) -> None:
        self._size, self._etag, self._bar, self._lock = size, etag, bar, lock

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._size)
        if self._etag:
            future.meta.provide_object_etag(f'"{self._etag}"')

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        with self._lock:
            self._bar.update(bytes_transferred)


@dataclass
class _Stager:
    loc: Location
    dest: Path
    area: _StagingArea
    client: Any
    tc: TransferConfig
    fsync: bool = True
    progress: bool = True
    cancel: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _manager: Any = None
    _bar: Any = None
    _dirs: set[Path] = field(default_factory=set)
    _fingerprints: dict[str, tuple[str, int]] = field(default_factory=dict)

    def run(self, items: list[_Item], workers: int) -> list[_Outcome]:
        records = self.area.journal.load()
        show = self.progress and sys.stderr.isatty()
        self._bar = tqdm(
            total=sum(it.obj.size for it in items),
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="stage",
            disable=not show,
            dynamic_ncols=True,
        )
        if self.loc.is_s3 and any(it.obj.size >= self.tc.multipart_threshold for it in items):
            self._manager = create_transfer_manager(self.client, self.tc)
        outcomes: list[_Outcome] = []
        first_error: BaseException | None = None
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="stage") as pool:
                futures: list[Future[_Outcome]] = [
                    pool.submit(self._one, it, records.get(it.obj.key)) for it in items
                ]
                try:
                    for fut in as_completed(futures):
                        if fut.cancelled():
                            continue
                        exc = fut.exception()
                        if exc is None:
                            outcomes.append(fut.result())
                        elif first_error is None and not isinstance(exc, _Cancelled | CancelledError):
                            first_error = exc
                            self._abort(futures)
                except BaseException:  # KeyboardInterrupt: stop starting new files, let running ones end
                    self._abort(futures)
                    raise
            if first_error is not None:
                raise first_error
            if self._manager is not None:
                self._manager.shutdown()
            self._sync_dirs()
            self.area.journal.rewrite([self._record_for(o.entry) for o in outcomes])
        finally:
            self._bar.close()
        return outcomes

    def _abort(self, futures: list[Future[_Outcome]]) -> None:
        self.cancel.set()
        for fut in futures:
            fut.cancel()
        if self._manager is not None:
            self._manager.shutdown(cancel=True, cancel_msg="stage aborted")

    def _one(self, item: _Item, record: JournalRecord | None) -> _Outcome:
        obj, exp = item.obj, item.expected
        final = self.dest / obj.key
        entry = self._reuse(obj, exp, final, record)
        if entry is not None:
            with self._lock:
                self._bar.update(obj.size)
            return _Outcome(entry, fetched=False)
        if self.cancel.is_set():
            raise _Cancelled()
        part = self.area.partial / obj.key
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            got = self._fetch(obj, part)
            self._verify(obj, exp, got)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(part, final)
            except OSError as exc:
                raise StorageError(f"{final}: cannot move the verified file into place: {exc}") from None
        finally:
            part.unlink(missing_ok=True)
        entry = ManifestEntry(obj.key, got.size, got.sha256, got.etag, got.version_id)
        self._journal(entry, obj.fingerprint, final)
        with self._lock:
            self._dirs.add(final.parent)
        return _Outcome(entry, fetched=True, nbytes=got.size)

    def _reuse(
        self, obj: ObjectInfo, exp: ManifestEntry | None, final: Path, record: JournalRecord | None
    ) -> ManifestEntry | None:
        """The entry of an already-staged file that need not be fetched again, else None."""
        if StagingJournal.matches(record, final, obj.fingerprint):
            assert record is not None
            if exp is None or exp.sha256 == record.sha256:
                with self._lock:
                    self._fingerprints[obj.key] = (record.fingerprint, record.mtime_ns)
                return ManifestEntry(obj.key, record.size, record.sha256, record.etag, record.version_id)
            return None
        same_object = exp is not None and (exp.etag is None or obj.etag is None or exp.etag == obj.etag)
        if exp is not None and same_object and final.is_file() and final.stat().st_size == exp.size:
            if sha256_file(final) == exp.sha256:
                entry = ManifestEntry(
                    obj.key, exp.size, exp.sha256, obj.etag or exp.etag, exp.version_id or obj.version_id
                )
                self._journal(entry, obj.fingerprint, final)
                return entry
        return None

    def _journal(self, entry: ManifestEntry, fingerprint: str, final: Path) -> None:
        st = final.stat()
        self.area.journal.append(
            JournalRecord(
                entry.key, entry.size, entry.sha256, entry.etag, entry.version_id, fingerprint, st.st_mtime_ns
            )
        )
        with self._lock:
            self._fingerprints[entry.key] = (fingerprint, st.st_mtime_ns)

    def _record_for(self, entry: ManifestEntry) -> JournalRecord:
        fingerprint, mtime_ns = self._fingerprints[entry.key]
        return JournalRecord(
            entry.key, entry.size, entry.sha256, entry.etag, entry.version_id, fingerprint, mtime_ns
        )

    def _where(self, obj: ObjectInfo) -> str:
        return self.loc.join(obj.key).uri

    def _verify(self, obj: ObjectInfo, exp: ManifestEntry | None, got: _Fetched) -> None:
        where = self._where(obj)
        want_size = exp.size if exp is not None else obj.size
        if got.size != want_size:
            raise IntegrityError(f"{where}: received {got.size} bytes but expected {want_size}; refusing it")
        if got.meta_sha256 and got.meta_sha256 != got.sha256:
            raise IntegrityError(
                f"{where}: the bytes have sha256 {got.sha256} but the object's sha256 metadata says "
                f"{got.meta_sha256}: the stored object is corrupted; refusing it"
            )
        if exp is not None and got.sha256 != exp.sha256:
            raise IntegrityError(
                f"{where}: the bytes have sha256 {got.sha256} but the expected manifest says {exp.sha256}; refusing it"
            )

    # -- fetching ---------------------------------------------------------------------------------

    def _fetch(self, obj: ObjectInfo, part: Path) -> _Fetched:
        if not self.loc.is_s3:
            return self._copy_local(obj, part)
        if obj.size >= self.tc.multipart_threshold:
            return self._get_large(obj, part)
        return self._get_small(obj, part)

    def _copy_local(self, obj: ObjectInfo, part: Path) -> _Fetched:
        src = self.loc.join(obj.key).path
        assert src is not None and self.loc.path is not None
        # Checked again here (the listing checked too): a link swapped in since must not lead outside.
        real = Path(os.path.realpath(src))
        root = Path(os.path.realpath(self.loc.path))
        if root != real and root not in real.parents:
            raise URIError(f"{src}: resolves to {real}, outside the source {root}; refusing to stage it")
        h, n = hashlib.sha256(), 0
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
            with open(fd, "rb") as fin, open(part, "wb") as fout:
                while chunk := fin.read(_CHUNK):
                    fout.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
                    with self._lock:
                        self._bar.update(len(chunk))
                self._sync(fout)
            st = os.stat(src)
        except FileNotFoundError:
            raise NotFoundError(f"{src}: vanished while staging") from None
        if f"file:{st.st_size}:{st.st_mtime_ns}" != obj.fingerprint:
            raise StorageError(f"{src}: changed while staging; re-run stage")
        return _Fetched(sha256=h.hexdigest(), size=n)

    def _pin_args(self, obj: ObjectInfo) -> dict[str, str]:
        if obj.version_id:
            return {"VersionId": obj.version_id}
        return {"IfMatch": f'"{obj.etag}"'} if obj.etag else {}

    def _get_small(self, obj: ObjectInfo, part: Path) -> _Fetched:
        """One GET, hashed while written; retried on broken streams (botocore retries only the request)."""
        where = self._where(obj)
        key = self.loc.prefix + obj.key
        attempts = max(1, self.tc.num_download_attempts)
        for attempt in range(1, attempts + 1):
            n = 0
            try:
                with self._s3_call(where, obj):
                    resp = self.client.get_object(Bucket=self.loc.bucket, Key=key, **self._pin_args(obj))
                    h = hashlib.sha256()
                    with open(part, "wb") as f:
                        for chunk in resp["Body"].iter_chunks(_CHUNK):
                            f.write(chunk)
                            h.update(chunk)
                            n += len(chunk)
                            with self._lock:
                                self._bar.update(len(chunk))
                        self._sync(f)
                return _Fetched(
                    sha256=h.hexdigest(),
                    size=n,
                    meta_sha256=resp.get("Metadata", {}).get(SHA256_METADATA),
                    etag=unquote_etag(resp.get("ETag")),
                    version_id=normalize_version(resp.get("VersionId")),
                )
            except RETRYABLE_STREAM_ERRORS as exc:
                with self._lock:
                    self._bar.update(-n)
                if attempt == attempts or self.cancel.is_set():
                    raise StorageError(f"{where}: download failed after {attempt} attempt(s): {exc}") from exc
                log.debug("%s: retrying a broken download (%s)", where, exc)
                time.sleep(min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def _get_large(self, obj: ObjectInfo, part: Path) -> _Fetched:
        """HEAD (for our sha256 metadata and the version), then parallel ranged GETs pinned to it."""
        where = self._where(obj)
        key = self.loc.prefix + obj.key
        with self._s3_call(where, obj):
            head = self.client.head_object(Bucket=self.loc.bucket, Key=key, **self._pin_args(obj))
        etag = unquote_etag(head.get("ETag"))
        version = normalize_version(head.get("VersionId"))
        size = int(head["ContentLength"])
        extra = {"VersionId": version} if version else {}
        subscriber = _KnownObject(size, etag, self._bar, self._lock)
        future = self._manager.download(
            self.loc.bucket, key, str(part), extra_args=extra, subscribers=[subscriber]
        )
        try:
            with self._s3_call(where, obj):
                future.result()
        except RETRYABLE_STREAM_ERRORS as exc:  # the transfer manager already retried these
            raise StorageError(f"{where}: download failed: {exc}") from exc
        with open(part, "rb") as f:
            self._sync(f)
        return _Fetched(
            sha256=sha256_file(part),
            size=os.path.getsize(part),
            meta_sha256=head.get("Metadata", {}).get(SHA256_METADATA),
            etag=etag,
            version_id=version,
        )

    def _s3_call(self, where: str, obj: ObjectInfo) -> contextlib.AbstractContextManager[None]:
        return _s3_call(where, obj)

    def _sync(self, f: Any) -> None:
        if self.fsync:
            f.flush()
            os.fsync(f.fileno())

    def _sync_dirs(self) -> None:
        """Make the renames durable: fsync each directory that received files."""
        if not self.fsync:
            return
        for d in sorted(self._dirs):
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextlib.contextmanager
def _s3_call(where: str, obj: ObjectInfo) -> Iterator[None]:
    """`s3_errors`, except that broken streams pass through (the caller retries them) and a failed
    If-Match precondition says plainly that the object changed between listing and download."""
    try:
        yield
    except RETRYABLE_STREAM_ERRORS:
        raise
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if error_code(exc) in ("PreconditionFailed", "412") or status == 412:
            raise StorageError(
                f"{where}: the object changed while staging (its ETag is no longer {obj.etag}); re-run stage"
            ) from exc
        with s3_errors(where):
            raise
    except S3DownloadFailedError as exc:  # a ranged GET's If-Match failed: the object changed since the HEAD
        raise StorageError(
            f"{where}: the object changed while staging (its ETag is no longer {obj.etag}); re-run stage"
        ) from exc
    except (BotoCoreError, RetriesExceededError) as exc:
        raise StorageError(f"{where}: {exc}") from exc


def stage_cli_summary(result: StageResult) -> str:
    """One line for logs and the CLI."""
    m = result.manifest
    rate = result.bytes_fetched / result.seconds / 1e6 if result.seconds > 0 else 0.0
    return (
        f"staged {len(m.entries)} files ({m.total_size / 1e6:.1f} MB) from {m.source} into {result.dest}: "
        f"{result.fetched} fetched, {result.reused} already present; {rate:.1f} MB/s; "
        f"manifest_hash {m.hash}"
    )
