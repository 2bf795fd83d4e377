"""Small object operations over s3:// and local URIs: list, exists, put/get bytes, delete.

Why these exist: the trainer (checkpoints, summaries), the evaluator (reports) and the pipeline steps
(lineage records) read and write single objects in the run prefix. They should not each talk to
boto3, and they must work unchanged on a local output directory in the demo. Writes are atomic on
both kinds (an S3 PUT is atomic per object; local writes go through a temporary file and a rename),
and `put_bytes` stores the sha256 as object metadata so that `get_bytes` can refuse damaged bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from gbcosface.storage.client import get_client, is_not_found, s3_errors
from gbcosface.storage.errors import IntegrityError, NotFoundError, StorageError, URIError
from gbcosface.storage.manifest import STAGING_DIR, atomic_write_bytes
from gbcosface.storage.uri import Location, parse_uri

SHA256_METADATA = "sha256"  # stored as x-amz-meta-sha256 by our uploads
LIST_PAGE_SIZE = 1000  # keys per ListObjectsV2 page (S3's maximum; tests lower it to exercise paging)


@dataclass(frozen=True)
class ObjectInfo:
    """A listed object: `key` relative to the listed prefix.

    `fingerprint` changes whenever the object changes (the ETag on S3; size and mtime locally); the
    stager compares it with its journal to skip files it has already fetched and verified.
    """

    key: str
    size: int
    etag: str | None
    fingerprint: str
    version_id: str | None = None


def unquote_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else None


def normalize_version(version_id: str | None) -> str | None:
    """S3 reports unversioned objects with the version id 'null'; treat that as no version."""
    return None if version_id in (None, "", "null") else version_id


def client_for(loc: Location, endpoint_url: str | None, client: Any = None) -> Any:
    return client if client is not None else get_client(endpoint_url)


def list_objects(
    uri: str | Path | Location, *, endpoint_url: str | None = None, client: Any = None
) -> list[ObjectInfo]:
    """Every object (file) under a directory-like URI, sorted by key, keys relative to it.

    S3 'folder' placeholder keys (ending in '/') are skipped, and so is a stager's `.staging`
    directory at the top of a local tree. A missing bucket or local directory is a NotFoundError;
    an existing but empty prefix gives [].
    """
    loc = parse_uri(uri)
    if loc.is_s3:
        return _list_s3(loc, client_for(loc, endpoint_url, client))
    return _list_local(loc)


def _list_s3(loc: Location, client: Any) -> list[ObjectInfo]:
    prefix = loc.prefix
    out: list[ObjectInfo] = []
    with s3_errors(loc.uri):
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=loc.bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE_SIZE}
        )
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"][len(prefix) :]
                if not key or key.endswith("/"):
                    continue
                etag = unquote_etag(item.get("ETag"))
                out.append(ObjectInfo(key=key, size=int(item["Size"]), etag=etag, fingerprint=f"etag:{etag}"))
    out.sort(key=lambda o: o.key)
    return out


def _list_local(loc: Location) -> list[ObjectInfo]:
    root = loc.path
    assert root is not None
    if not root.is_dir():
        raise NotFoundError(f"{root}: no such directory")
    out: list[ObjectInfo] = []
    real_root = Path(os.path.realpath(root))
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and STAGING_DIR in dirnames:
            dirnames.remove(STAGING_DIR)
        dirnames.sort()
        for name in [*dirnames, *filenames]:
            _refuse_outside_link(Path(dirpath, name), root, real_root)
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_file():  # sockets, fifos, broken links
                continue
            st = path.stat()
            key = path.relative_to(root).as_posix()
            out.append(
                ObjectInfo(
                    key=key, size=st.st_size, etag=None, fingerprint=f"file:{st.st_size}:{st.st_mtime_ns}"
                )
            )
    out.sort(key=lambda o: o.key)
    return out


def _refuse_outside_link(path: Path, root: Path, real_root: Path) -> None:
    """A symbolic link under a local source that leads outside it would make `stage` read (and publish)
    a file the source does not hold, e.g. `ln -s /etc/shadow data/x`: refuse it, naming the link."""
    if not path.is_symlink():
        return
    real = Path(os.path.realpath(path))
    if real != real_root and real_root not in real.parents:
        raise URIError(
            f"{path}: is a symbolic link to {os.readlink(path)}, outside the source {root}; refusing to read it"
        )


def list_uri(uri: str | Path | Location, *, endpoint_url: str | None = None) -> list[str]:
    """The keys (relative, sorted) of every object under a directory-like URI."""
    return [o.key for o in list_objects(uri, endpoint_url=endpoint_url)]


def exists(uri: str | Path | Location, *, endpoint_url: str | None = None) -> bool:
    """Whether an object (S3) or a file or directory (local) exists at `uri`."""
    loc = parse_uri(uri)
    if not loc.is_s3:
        assert loc.path is not None
        return loc.path.exists()
    if not loc.key:
        raise URIError(f"{loc.uri}: exists() needs an object key, not a bucket")
    client = get_client(endpoint_url)
    with s3_errors(loc.uri):
        try:
            client.head_object(Bucket=loc.bucket, Key=loc.key)
        except ClientError as exc:
            if is_not_found(exc):
                return False
            raise
    return True


def put_bytes(
    uri: str | Path | Location,
    data: bytes,
    *,
    metadata: dict[str, str] | None = None,
    endpoint_url: str | None = None,
) -> str:
    """Write one object atomically, recording its sha256 (returned) as object metadata on S3."""
    loc = parse_uri(uri)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"put_bytes({loc}): data must be bytes, not {type(data).__name__}")
    data = bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    if not loc.is_s3:
        assert loc.path is not None
        atomic_write_bytes(loc.path, data)
        return digest
    if not loc.key or loc.key.endswith("/"):
        raise URIError(f"{loc.uri}: put_bytes needs an object key")
    meta = {**(metadata or {}), SHA256_METADATA: digest}
    with s3_errors(loc.uri):
        get_client(endpoint_url).put_object(Bucket=loc.bucket, Key=loc.key, Body=data, Metadata=meta)
    return digest


def get_bytes(uri: str | Path | Location, *, endpoint_url: str | None = None) -> bytes:
    """Read one object; if it carries our sha256 metadata, refuse bytes that do not match it."""
    loc = parse_uri(uri)
    if not loc.is_s3:
        assert loc.path is not None
        try:
            return loc.path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{loc.path}: no such file") from None
        except IsADirectoryError:
            raise StorageError(f"{loc.path}: is a directory, not a file") from None
    if not loc.key:
        raise URIError(f"{loc.uri}: get_bytes needs an object key")
    with s3_errors(loc.uri):
        resp = get_client(endpoint_url).get_object(Bucket=loc.bucket, Key=loc.key)
        data = resp["Body"].read()
    want = resp.get("Metadata", {}).get(SHA256_METADATA)
    if want and hashlib.sha256(data).hexdigest() != want:
        raise IntegrityError(f"{loc.uri}: content does not match its sha256 metadata {want}")
    return data


def delete_prefix(
    uri: str | Path | Location, *, endpoint_url: str | None = None, allow_root: bool = False
) -> int:
    """Delete the object at `uri` and every object under `uri/` (like a local file or tree); return how many.

    Deleting a whole bucket's contents (an empty key) is refused unless `allow_root=True`, because a
    missing run prefix in a caller's configuration must not wipe a shared bucket.
    """
    loc = parse_uri(uri)
    if not loc.is_s3:
        path = loc.path
        assert path is not None
        if path.is_dir():
            count = sum(1 for p in path.rglob("*") if not p.is_dir())
            shutil.rmtree(path)
            return count
        if path.exists():
            path.unlink()
            return 1
        return 0
    if not loc.prefix and not allow_root:
        raise URIError(f"{loc.uri}: refusing to delete a whole bucket (pass allow_root=True)")
    client = get_client(endpoint_url)
    keys = [loc.prefix + o.key for o in _list_s3(loc, client)]
    own = Location("s3", loc.bucket, loc.key.rstrip("/"))
    if own.key and exists(own, endpoint_url=endpoint_url):  # the object itself, like a local file
        keys.append(own.key)
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        with s3_errors(loc.uri):
            resp = client.delete_objects(Bucket=loc.bucket, Delete={"Objects": batch, "Quiet": True})
        errors = resp.get("Errors") or []
        if errors:
            first = errors[0]
            raise StorageError(
                f"{loc.uri}: could not delete {len(errors)} object(s), e.g. {first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message', '')}".rstrip()
            )
    return len(keys)
