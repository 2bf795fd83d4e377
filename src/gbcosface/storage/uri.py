"""Storage locations: `s3://bucket/prefix`, `file:///abs/path` and plain local paths.

Why one `Location` type: every storage function accepts either kind of URI, so the pipeline and
the trainer run unchanged against S3 on a cluster and against a local directory in the demo.
A location is treated like a directory when it is used as a prefix: `s3://b/data` lists the keys
under `data/`, never `database/...`, which mirrors what a local directory would hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from gbcosface.storage.errors import URIError

# S3 bucket naming rules (the subset that matters for path-style addressing).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


@dataclass(frozen=True)
class Location:
    """A parsed storage location.

    `scheme` is "s3" or "file". For s3, `bucket` and `key` (no leading slash, possibly empty) are
    set; for file, `path` is set (as given: relative paths stay relative to the working directory).
    """

    scheme: str
    bucket: str = ""
    key: str = ""
    path: Path | None = None

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    @property
    def uri(self) -> str:
        """The canonical URI; local paths become absolute `file://` URIs (for manifests, lineage)."""
        if self.is_s3:
            return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"
        assert self.path is not None
        return "file://" + str(self.path.absolute())

    @property
    def prefix(self) -> str:
        """The key as a directory prefix: '' for the bucket root, else ending with '/'."""
        key = self.key.strip("/")
        return f"{key}/" if key else ""

    @property
    def name(self) -> str:
        """The last path segment (the object or file name)."""
        if self.is_s3:
            return PurePosixPath(self.key.rstrip("/")).name
        assert self.path is not None
        return self.path.name

    def join(self, *parts: str) -> Location:
        """A location below this one; `parts` are relative keys ('a/b' or 'a', 'b')."""
        rel = "/".join(p.strip("/") for p in parts if p.strip("/"))
        if not rel:
            return self
        check_relative_key(rel)
        if self.is_s3:
            return Location("s3", self.bucket, self.prefix + rel)
        assert self.path is not None
        return Location("file", path=self.path.joinpath(*rel.split("/")))

    def parent(self) -> Location:
        if self.is_s3:
            key = self.key.rstrip("/")
            return Location("s3", self.bucket, key.rsplit("/", 1)[0] if "/" in key else "")
        assert self.path is not None
        return Location("file", path=self.path.parent)

    def __str__(self) -> str:
        if self.is_s3:
            return self.uri
        return str(self.path)


def parse_uri(uri: str | Path | Location) -> Location:
    """Parse `s3://bucket/key`, `file:///abs/path` or a plain path; a clear URIError otherwise."""
    if isinstance(uri, Location):
        return uri
    if isinstance(uri, Path):
        return Location("file", path=uri)
    if not isinstance(uri, str) or not uri:
        raise URIError(f"empty or non-string storage URI: {uri!r}")
    match = _SCHEME_RE.match(uri)
    if not match:
        return Location("file", path=Path(uri))
    scheme = match.group(1).lower()
    if scheme == "s3":
        rest = uri[len(match.group(0)) :]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise URIError(f"{uri}: no bucket name (expected s3://BUCKET/KEY)")
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise URIError(
                f"{uri}: invalid bucket name {bucket!r} (3-63 characters: lowercase letters, digits, '.', '-')"
            )
        if "//" in key or key.startswith("/"):
            # `s3://b//p` would list `p/` (the prefix strips slashes) but be recorded as given, so a
            # manifest would name a location nobody wrote to: refuse it rather than guess.
            raise URIError(f"{uri}: empty path segment ('//') in the key; write s3://{bucket}/{'/'.join(p for p in key.split('/') if p)}")
        return Location("s3", bucket, key)
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise URIError(f"{uri}: file URIs must not name a host (use file:///absolute/path)")
        if not parts.path.startswith("/"):
            raise URIError(f"{uri}: file URIs need an absolute path (file:///absolute/path)")
        return Location("file", path=Path(unquote(parts.path)))
    raise URIError(f"{uri}: unsupported scheme {scheme!r} (use s3://, file:// or a local path)")


def join_uri(base: str | Path | Location, *parts: str) -> str:
    """Join relative key parts onto a URI, keeping its kind: join_uri('s3://b/run', 'model') -> 's3://b/run/model'."""
    loc = parse_uri(base).join(*parts)
    if loc.is_s3:
        return loc.uri
    return str(loc.path)


def is_s3_uri(uri: str | Path | Location) -> bool:
    return parse_uri(uri).is_s3


def check_relative_key(key: str, where: str = "") -> PurePosixPath:
    """Check that an object key can live under a local directory; return it as a relative path.

    Why: keys come from a bucket that someone else may write to; a key such as `../../etc/x` or
    `/abs` must never escape the staging directory.
    """
    label = f"{where}: " if where else ""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise URIError(f"{label}object key {key!r} cannot be mapped to a relative local path")
    rel = PurePosixPath(key)
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise URIError(f"{label}object key {key!r} has an empty, '.' or '..' path segment")
    return rel
