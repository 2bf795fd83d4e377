"""Storage: s3:// and file:// URIs, verified S3 staging with dataset manifests, uploads, checkpoints I/O.

Public API (see docs/architecture.md, "Storage"):
- URIs: `parse_uri`, `join_uri`, `is_s3_uri`, `Location`
- manifests: `Manifest`, `ManifestEntry`, `read_manifest`, `write_manifest`, `verify_dir`, `manifest_hash`
- transfers: `stage` (-> `StageResult`), `upload`, `upload_dir`, `download_dir`
- objects: `put_bytes`, `get_bytes`, `exists`, `list_uri`, `list_objects`, `delete_prefix`
- `get_client` (endpoint, credentials, retries), errors (`StorageError` and subclasses)
- `gbcosface.storage.local_server.LocalS3Server`: a moto S3 server on 127.0.0.1 for the demo and tests
"""

from gbcosface.storage.client import get_client, get_resource, resolve_endpoint
from gbcosface.storage.errors import IntegrityError, ManifestError, NotFoundError, StorageError, URIError
from gbcosface.storage.manifest import (
    Manifest,
    ManifestEntry,
    manifest_hash,
    parse_manifest,
    read_manifest,
    sha256_file,
    verify_dir,
    write_manifest,
)
from gbcosface.storage.objects import delete_prefix, exists, get_bytes, list_objects, list_uri, put_bytes
from gbcosface.storage.stage import StageResult, default_transfer_config, stage
from gbcosface.storage.transfer import download_dir, upload, upload_dir
from gbcosface.storage.uri import Location, is_s3_uri, join_uri, parse_uri

__all__ = [
    "IntegrityError",
    "Location",
    "Manifest",
    "ManifestEntry",
    "ManifestError",
    "NotFoundError",
    "StageResult",
    "StorageError",
    "URIError",
    "default_transfer_config",
    "delete_prefix",
    "download_dir",
    "exists",
    "get_bytes",
    "get_client",
    "get_resource",
    "is_s3_uri",
    "join_uri",
    "list_objects",
    "list_uri",
    "manifest_hash",
    "parse_manifest",
    "parse_uri",
    "put_bytes",
    "read_manifest",
    "resolve_endpoint",
    "sha256_file",
    "stage",
    "upload",
    "upload_dir",
    "verify_dir",
    "write_manifest",
]
