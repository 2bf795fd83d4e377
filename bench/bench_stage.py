"""Benchmark: `gbcosface.storage.stage` vs `aws s3 cp --recursive` from the same local S3 server.

Starts a moto S3 server on 127.0.0.1, uploads a dataset shaped like a face-recognition training set
(a few large RecordIO-like shards plus many small files, like IJB crops or .bin sets), then copies
each part to fresh local directories with both tools, alternating which goes first, and prints MB/s
and files/s for each together with the machine it ran on. The awscli figures include its process
start-up (measured separately and printed), because that is what a pipeline step pays too.

    .venv/bin/python bench/bench_stage.py                    # 3 x 64 MiB + 2,000 x 10 KiB
    .venv/bin/python bench/bench_stage.py --shards 2 --shard-mib 16 --small 500   # quicker

The numbers are only comparable within one run: the moto server, both clients and the disk share
the same (possibly busy) CPUs.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gbcosface.storage import stage, upload, verify_dir
from gbcosface.storage.local_server import LocalS3Server

MiB = 1024 * 1024

from _machine import cpu_model  # noqa: E402 - bench/ is on sys.path when run as a script


def machine() -> str:
    cpu = cpu_model()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = ", ".join(f"{p} {_version(p)}" for p in ("boto3", "s3transfer", "awscli", "moto"))
    return (
        f"{platform.node()} | {platform.platform()} | {cpu} x {os.cpu_count()} logical CPUs | "
        f"load average {load} | Python {platform.python_version()} | {versions}"
    )


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "absent"


def make_dataset(root: Path, shards: int, shard_mib: int, small: int, small_kib: int) -> None:
    for i in range(shards):
        path = root / "shards" / f"train-{i:03d}.rec"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for _ in range(shard_mib):
                f.write(os.urandom(MiB))
    for i in range(small):
        path = root / "small" / f"{i // 500:02d}" / f"img-{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(small_kib * 1024))


def aws_cli() -> list[str]:
    beside = Path(sys.executable).with_name("aws")
    exe = str(beside) if beside.exists() else shutil.which("aws")
    if not exe:
        raise SystemExit("awscli not found: pip install awscli")
    return [exe]


def run_aws(src: str, dest: Path, endpoint: str, env: dict[str, str]) -> float:
    cmd = [
        *aws_cli(),
        "s3",
        "cp",
        "--recursive",
        src,
        str(dest),
        "--endpoint-url",
        endpoint,
        "--only-show-errors",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return time.perf_counter() - t0


def run_ours(src: str, dest: Path, endpoint: str, workers: int) -> float:
    t0 = time.perf_counter()
    stage(src, dest, workers=workers, progress=False, endpoint_url=endpoint)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--shard-mib", type=int, default=64)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--small-kib", type=int, default=10)
    ap.add_argument(
        "--workers", type=int, default=8, help="gbcosface stage workers (awscli uses its default 10)"
    )
    ap.add_argument("--repeat", type=int, default=2, help="runs per tool and part (alternating order)")
    args = ap.parse_args()

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp, LocalS3Server() as server:
        root = Path(tmp)
        env = {**os.environ, **server.aws_tool_env()}  # for the aws CLI, which knows only AWS_* names
        os.environ.update(server.env())
        server.create_bucket("bench")
        t0 = time.perf_counter()
        make_dataset(root / "src", args.shards, args.shard_mib, args.small, args.small_kib)
        manifest = upload(root / "src", "s3://bench/ds", workers=args.workers)
        print(
            f"dataset: {args.shards} x {args.shard_mib} MiB shards + {args.small} x {args.small_kib} KiB files "
            f"({manifest.total_size / 1e6:.1f} MB), generated and uploaded in {time.perf_counter() - t0:.1f} s"
        )
        probe = [
            *aws_cli(),
            "s3api",
            "head-bucket",
            "--bucket",
            "bench",
            "--endpoint-url",
            server.endpoint_url,
        ]
        startup = statistics.median(_time_cmd(probe, env) for _ in range(3))
        print(
            f"awscli start-up + one request (s3api head-bucket): {startup:.2f} s (median of 3), included below"
        )
        parts = {p: [e for e in manifest.entries if e.key.startswith(p + "/")] for p in ("shards", "small")}
        print(f"{'part':8} {'tool':22} {'seconds':>8} {'MB/s':>8} {'files/s':>9}")
        for part, entries in parts.items():
            if not entries:
                continue
            size, count = sum(e.size for e in entries), len(entries)
            times: dict[str, list[float]] = {"gbcosface stage": [], "aws s3 cp --recursive": []}
            for rep in range(args.repeat):
                order = list(times) if rep % 2 == 0 else list(reversed(times))
                for tool in order:
                    dest = root / f"out-{rep}-{tool.split()[0]}" / part
                    src = f"s3://bench/ds/{part}"
                    if tool == "gbcosface stage":
                        times[tool].append(run_ours(src, dest, server.endpoint_url, args.workers))
                    else:
                        times[tool].append(run_aws(src, dest, server.endpoint_url, env))
                    _check(dest, manifest, part)
                    shutil.rmtree(dest.parent)
            for tool, ts in times.items():
                best = min(ts)
                print(
                    f"{part:8} {tool:22} {best:8.2f} {size / best / 1e6:8.1f} {count / best:9.1f}"
                    f"   (runs: {', '.join(f'{t:.2f}' for t in ts)})"
                )
        print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def _time_cmd(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _check(dest: Path, manifest, part: str) -> None:
    """Both tools must have produced exactly the uploaded bytes (else the timing means nothing)."""
    from gbcosface.storage.manifest import Manifest, ManifestEntry

    sub = Manifest(
        manifest.source,
        [
            ManifestEntry(e.key[len(part) + 1 :], e.size, e.sha256)
            for e in manifest.entries
            if e.key.startswith(part + "/")
        ],
    )
    verify_dir(dest, sub, allow_extra=False)


if __name__ == "__main__":
    sys.exit(main())
