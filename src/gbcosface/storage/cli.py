"""Verbs: `gbcosface stage`, `gbcosface upload`, `gbcosface s3-server`.

Why thin: the pipeline's staging step, a hand-run `stage` and the demo all call the same library
functions; the CLI only parses flags, and `gbcosface.cli` turns a StorageError into one clear line and
its exit code (docs/architecture.md, "Errors and exit codes").
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from gbcosface.storage.errors import StorageError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "stage",
        help="copy a dataset (s3:// or local) into a directory, verified, with a manifest",
        description="Stage every object under --src into --dest: atomic per file, sha256-verified, resumable.",
    )
    p.add_argument("--src", required=True, help="s3://bucket/prefix, file:///path or a local directory")
    p.add_argument("--dest", required=True, help="local directory to stage into")
    p.add_argument("--manifest", help="write the manifest of the staged files here (JSON)")
    p.add_argument(
        "--expect-manifest", help="stage exactly the files of this manifest, verifying each sha256"
    )
    p.add_argument("--endpoint-url", help="S3 endpoint (default: $GBCOSFACE_S3_ENDPOINT_URL / $AWS_ENDPOINT_URL / AWS)")
    p.add_argument("--workers", type=_positive_int, default=8, help="files fetched at once (default 8)")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.set_defaults(func=_stage)

    p = sub.add_parser(
        "upload",
        help="upload a file or directory to s3:// (or a local path), recording sha256 metadata",
    )
    p.add_argument("--src", required=True, help="local file or directory")
    p.add_argument("--dest", required=True, help="s3://bucket/prefix (or a local path)")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: $GBCOSFACE_S3_ENDPOINT_URL / $AWS_ENDPOINT_URL / AWS)")
    p.add_argument("--workers", type=_positive_int, default=8, help="files uploaded at once (default 8)")
    p.add_argument("--manifest", help="write the manifest of the uploaded files here (JSON)")
    p.add_argument("--marker", help="write this marker object (holding the manifest) after all files")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.set_defaults(func=_upload)

    p = sub.add_parser(
        "s3-server",
        help="run a local S3 API server (moto) on 127.0.0.1 in the foreground",
    )
    p.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    p.add_argument("--bucket", action="append", default=[], help="create this bucket at start (repeatable)")
    p.add_argument("--log", help="write the server's request log here (default: a temporary file)")
    p.set_defaults(func=_s3_server)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def _stage(args: argparse.Namespace) -> int:
    from gbcosface.storage.stage import stage, stage_cli_summary

    # A StorageError reaches gbcosface.cli, which prints it on one line with its exit code.
    result = stage(
        args.src,
        args.dest,
        manifest_out=args.manifest,
        expected_manifest=args.expect_manifest,
        workers=args.workers,
        progress=not args.no_progress,
        endpoint_url=args.endpoint_url,
    )
    print(stage_cli_summary(result))
    return 0


def _upload(args: argparse.Namespace) -> int:
    from gbcosface.storage.transfer import upload

    manifest = upload(
        args.src,
        args.dest,
        endpoint_url=args.endpoint_url,
        workers=args.workers,
        marker=args.marker,
        manifest_out=args.manifest,
        progress=not args.no_progress,
    )
    print(
        f"uploaded {len(manifest.entries)} files ({manifest.total_size / 1e6:.1f} MB) to {manifest.source}; "
        f"manifest_hash {manifest.hash}"
    )
    return 0


def _s3_server(args: argparse.Namespace) -> int:
    from gbcosface.storage.local_server import LocalS3Server

    try:
        server = LocalS3Server(args.port, log_path=args.log).start()
    except StorageError as exc:
        return _fail(exc)
    # `kill PID` (SIGTERM) must stop the server as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for bucket in args.bucket:
            server.create_bucket(bucket)
        print(f"S3 API server (moto) on {server.endpoint_url}; Ctrl-C stops it. Use:")
        for key, value in server.env().items():
            print(f"  export {key}={value}")
        if server.log_path:
            print(f"request log: {server.log_path}")
        sys.stdout.flush()
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
