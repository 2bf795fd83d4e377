"""Synthetic world generation speed: images/s per process (aligned faces, loose crops) and per world.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_synth.py [--images 2000] [--workers 1 2]

Prints figures with the machine they ran on; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2

from gbcosface.data.synthetic.world import WorldSpec, _Ctx, _run_chunk, generate_world, ijb_layout, train_jobs


def rate(jobs: list, spec: WorldSpec) -> float:
    ctx = _Ctx(spec.seed, spec.spread, spec.nuisance_scale, spec.crop_min, spec.crop_max)
    t = time.perf_counter()
    _run_chunk((ctx, jobs))
    return len(jobs) / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000, help="images per single-process measurement")
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="worker counts for whole worlds")
    ap.add_argument("--difficulty", type=float, default=WorldSpec.difficulty)
    ap.add_argument("--world-identities", type=int, default=200, help="training identities of the timed worlds")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
          f"opencv {cv2.__version__}, load average {os.getloadavg()[0]:.1f}")

    spec = WorldSpec(identities=max(1, args.images // 25), images_per_identity=25, eval_identities=200,
                     difficulty=args.difficulty)
    aligned = train_jobs(spec)[: args.images]
    crops = ijb_layout(spec).jobs[: max(1, args.images // 4)]
    print(f"one process: aligned 112x112 faces {rate(aligned, spec):.0f} images/s ({len(aligned)}), "
          f"IJB loose crops {rate(crops, spec):.0f} images/s ({len(crops)})")

    world_spec = WorldSpec(identities=args.world_identities, images_per_identity=25,
                           eval_identities=max(2, args.world_identities // 4), pairs=500,
                           bin_identities=100, difficulty=args.difficulty)
    for workers in args.workers:
        out = Path(tempfile.mkdtemp(prefix="bench-synth-"))
        try:
            t = time.perf_counter()
            info = generate_world(out, world_spec, workers=workers, overwrite=True, progress=lambda m: None)
            dt = time.perf_counter() - t
        finally:
            shutil.rmtree(out, ignore_errors=True)
        c = info["counts"]
        n = c["train_images"] + 2 * sum(c[f"{b}_pairs"] for b in ("lfw", "cfp_fp", "agedb_30")) + c["ijbc_images"]
        print(f"world with {workers} worker(s): {n} images in {dt:.1f} s = {n / dt:.0f} images/s "
              f"(incl. process start and writing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
