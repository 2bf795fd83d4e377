"""Training-loader throughput against the JPEG decode-only ceiling, on this machine.

Writes a synthetic train.rec (noise-textured 112x112 JPEGs of about 9 KB) to a temporary directory, then
measures in the same run:
  1. the decode-only ceiling: cv2.imdecode and torchvision.io.decode_jpeg of the same bytes held in memory,
     one thread, tight loop (with and without the conversion to an RGB (3,H,W) tensor);
  2. RecordFaceDataset.__getitem__ in a loop (mmap read + unpack + decode + checks);
  3. the training DataLoader (RecordFaceDataset + ResumableDistributedSampler + build_train_loader) with
     0, 1, 2 workers, and its rate per worker as a fraction of the decode ceiling.
Figures depend on what else runs on the machine: the load average is printed with them.

Usage: python bench/bench_loader.py [--images 3000] [--batch-size 64] [--workers 0 1 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from gbcosface.data.recordio import write_face_rec
from gbcosface.data.train_set import (
    RecordFaceDataset,
    ResumableDistributedSampler,
    build_train_loader,
    decode_cv2,
    decode_torchvision,
)


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import torchvision

    return (
        f"{platform.node()} {platform.machine()} cpu={cpu!r} cores={os.cpu_count()} usable={usable} "
        f"load={'/'.join(f'{x:.2f}' for x in os.getloadavg())} python={platform.python_version()} "
        f"torch={torch.__version__} torchvision={torchvision.__version__} cv2={cv2.__version__} numpy={np.__version__}"
    )


def make_jpegs(n: int, seed: int = 0, target_kb: float = 9.0) -> list[bytes]:
    """Noise-textured faces-sized images; the quality is tuned once so the mean size is near target_kb."""
    rng = np.random.default_rng(seed)

    def image(i):
        base = cv2.resize(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8), (112, 112), interpolation=cv2.INTER_CUBIC)
        noise = rng.normal(0, 12, (112, 112, 3))
        return np.clip(base + noise, 0, 255).astype(np.uint8)

    probe = [image(i) for i in range(32)]
    quality = 90
    for q in range(95, 30, -5):
        size = np.mean([len(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, q])[1]) for im in probe]) / 1024
        quality = q
        if size <= target_kb:
            break
    return [cv2.imencode(".jpg", image(i), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes() for i in range(n)]


def rate(fn, items, repeats: int = 3) -> float:
    """Best items/s over `repeats` passes (the best pass is the least disturbed by other load)."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        best = max(best, len(items) / (time.perf_counter() - t0))
    return best


def loader_rate(ds, workers: int, batch_size: int, epochs: int) -> float:
    sampler = ResumableDistributedSampler(len(ds), seed=0)
    loader = build_train_loader(ds, sampler, batch_size=batch_size, num_workers=workers, pin_memory=False)
    it = iter(loader)
    next(it)  # worker start-up and the first batch are not throughput
    n, t0 = 0, time.perf_counter()
    for images, _ in it:
        n += images.shape[0]
    for epoch in range(1, epochs):
        sampler.set_epoch(epoch)
        for images, _ in loader:
            n += images.shape[0]
    dt = time.perf_counter() - t0
    del it, loader
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)

    print("machine:", machine())
    jpegs = make_jpegs(args.images)
    print(f"data: {len(jpegs)} JPEGs 112x112, mean {np.mean([len(j) for j in jpegs]) / 1024:.1f} KiB")
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        per_class = 30
        labels = [i // per_class for i in range(len(jpegs))]
        write_face_rec(tmp, zip(labels, jpegs, strict=True), len(jpegs), labels[-1] + 1)

        raw_cv2 = rate(lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), jpegs)
        ceil_cv2 = rate(decode_cv2, jpegs)
        ceil_tv = rate(decode_torchvision, jpegs)
        print("decode-only ceiling, 1 thread (images/s):")
        print(f"  cv2.imdecode (BGR HWC only)            {raw_cv2:9.0f}")
        print(f"  cv2 -> RGB (3,H,W) tensor  [used]      {ceil_cv2:9.0f}   (baseline)")
        print(f"  torchvision.io.decode_jpeg -> (3,H,W)  {ceil_tv:9.0f}")

        ds = RecordFaceDataset(tmp)
        idx = list(range(len(ds)))
        getitem = rate(ds.__getitem__, idx)
        print(f"RecordFaceDataset.__getitem__ loop      {getitem:9.0f}   ({getitem / ceil_cv2:.0%} of ceiling)")
        print(f"DataLoader, batch {args.batch_size}, {args.epochs} epochs (first batch excluded):")
        for w in args.workers:
            r = loader_rate(ds, w, args.batch_size, args.epochs)
            per = r / max(w, 1)
            print(f"  workers={w}: {r:9.0f} samples/s   per worker {per:7.0f} = {per / ceil_cv2:.0%} of the ceiling")
    print("load after:", "/".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
