"""Training-loader throughput against the JPEG decode-only ceiling, on this machine.

Writes a synthetic train.rec (noise-textured 112x112 JPEGs of about 9 KB) to a temporary directory, then
measures in the same run:
  1. the decode-only ceiling: cv2.imdecode and torchvision.io.decode_jpeg of the same bytes held in memory,
     one thread, tight loop (with and without the conversion to an RGB (3,H,W) tensor);
  2. RecordFaceDataset.__getitem__ / __getitems__ in a loop (mmap read + unpack + decode + checks);
  3. the training DataLoader (RecordFaceDataset + ResumableDistributedSampler + build_train_loader) with
     0, 1, 2 workers, and its rate per worker as a fraction of the decode ceiling.
Figures depend on what else runs on the machine: the load average is printed with them, and every rate
is also given per CPU-second actually received (process CPU time), which is robust to other load.

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
from _machine import cpu_model  # noqa: E402 - bench/ is on sys.path when run as a script

from gbcosface.data.recordio import write_face_rec
from gbcosface.data.train_set import (
    RecordFaceDataset,
    ResumableDistributedSampler,
    build_train_loader,
    decode_cv2,
    decode_torchvision,
)


def machine() -> str:
    cpu = cpu_model()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import torchvision

    return (
        f"{platform.node()} {platform.machine()} cpu={cpu!r} cores={os.cpu_count()} usable={usable} "
        f"load={'/'.join(f'{x:.2f}' for x in os.getloadavg())} python={platform.python_version()} "
        f"torch={torch.__version__} torchvision={torchvision.__version__} cv2={cv2.__version__} numpy={np.__version__}"
    )


def make_jpegs(n: int, seed: int = 0, target_kb: float = 9.0) -> list[bytes]:
    """Noise-textured face-sized images; the JPEG quality is chosen once so the mean size is near target_kb."""
    rng = np.random.default_rng(seed)

    def image():
        small = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
        base = cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)
        return np.clip(base + rng.normal(0, 20, (112, 112, 3)), 0, 255).astype(np.uint8)

    probe = [image() for _ in range(32)]

    def mean_kb(q):
        return np.mean([len(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, q])[1]) for im in probe]) / 1024

    quality = min(range(60, 99), key=lambda q: abs(mean_kb(q) - target_kb))
    return [cv2.imencode(".jpg", image(), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes() for _ in range(n)]


def rate(fn, items, repeats: int = 3) -> tuple[float, float]:
    """(items per wall second, items per CPU second), best of `repeats` passes.

    The CPU-time figure is what one process achieves per core it actually got, which stays meaningful
    when other jobs share the machine; the wall figure is what was observed.
    """
    best_wall = best_cpu = 0.0
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        for x in items:
            fn(x)
        best_wall = max(best_wall, len(items) / (time.perf_counter() - w0))
        best_cpu = max(best_cpu, len(items) / (time.process_time() - c0))
    return best_wall, best_cpu


def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def loader_rate(ds, workers: int, batch_size: int, epochs: int, ring: bool = True) -> tuple[float, float, float]:
    """(samples per wall second, per CPU-second of the decoding processes, main-process CPU us per sample).

    Decoding processes are the workers (or the main process with 0 workers); worker CPU time comes
    from /proc. The first batch (worker start-up) is excluded.
    """
    sampler = ResumableDistributedSampler(len(ds), seed=0)
    loader = build_train_loader(ds, sampler, batch_size=batch_size, num_workers=workers, pin_memory=False, use_ring=ring)
    it = iter(loader)
    next(it)
    inner = getattr(loader.loader, "_iterator", None)
    pids = [w.pid for w in getattr(inner, "_workers", [])]
    cpu0 = sum(_proc_cpu_seconds(p) for p in pids)
    main0 = time.process_time()
    n, t0 = 0, time.perf_counter()
    for images, _ in it:
        n += images.shape[0]
    for epoch in range(1, epochs):
        sampler.set_epoch(epoch)
        for images, _ in loader:
            n += images.shape[0]
    wall = time.perf_counter() - t0
    main_cpu = time.process_time() - main0
    cpu = sum(_proc_cpu_seconds(p) for p in pids) - cpu0 if pids else main_cpu
    del it, loader
    return n / wall, n / max(cpu, 1e-9), main_cpu / n * 1e6


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
        ceiling = raw_cv2[1]
        print("decode-only ceiling, 1 thread, same bytes in memory  (images/s: wall | per CPU-second):")
        print(f"  cv2.imdecode -> BGR HWC      [baseline] {raw_cv2[0]:7.0f} | {raw_cv2[1]:7.0f}")
        print(f"  cv2 -> RGB (3,H,W) tensor               {ceil_cv2[0]:7.0f} | {ceil_cv2[1]:7.0f}")
        print(f"  torchvision decode_jpeg -> (3,H,W)      {ceil_tv[0]:7.0f} | {ceil_tv[1]:7.0f}")

        ds = RecordFaceDataset(tmp)
        idx = list(range(len(ds)))
        single = rate(ds.__getitem__, idx)
        batches = [idx[i : i + args.batch_size] for i in range(0, len(idx), args.batch_size)]
        batched = rate(ds.__getitems__, batches)
        batched = (batched[0] * args.batch_size, batched[1] * args.batch_size)
        print(f"RecordFaceDataset.__getitem__ loop        {single[0]:7.0f} | {single[1]:7.0f}  ({single[1] / ceiling:.0%})")
        print(f"RecordFaceDataset.__getitems__ (batched)  {batched[0]:7.0f} | {batched[1]:7.0f}  ({batched[1] / ceiling:.0%})")
        print(f"DataLoader, batch {args.batch_size}, {args.epochs} epochs, first batch excluded; % = vs the baseline:")
        for w in args.workers:
            for ring in (True, False) if w else (True,):
                wall, cpu, main_us = loader_rate(ds, w, args.batch_size, args.epochs, ring)
                per = wall / max(w, 1)
                name = f"workers={w}" + ("" if not w else (" ring" if ring else " plain"))
                print(
                    f"  {name:15s} {wall:6.0f} samples/s wall, {per:6.0f} per worker ({per / ceiling:4.0%}); "
                    f"{cpu:6.0f} per decoding CPU-second ({cpu / ceiling:4.0%}); main {main_us:5.1f} us CPU/sample"
                )
    print("load after:", "/".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
