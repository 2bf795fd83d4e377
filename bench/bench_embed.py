"""IJB feature-extraction benchmark: images/s of each decode/align/embed path on this machine.

Writes IJB-like loose crops (JPEG, 150-250 px, face-like, with 5 landmarks) into a temporary directory,
then times, in the same run:
- align only: cv2 decode + cv2.warpAffine per image (the official path, what loader workers do) and the
  device path (torchvision decode_jpeg + batched affine_grid/grid_sample, eval/gpu_align.py);
- embed only: the backbone on aligned batches, fp32 / bf16, NCHW / channels_last (and on CUDA fp16,
  torch.compile);
- end to end: `features.extract_features` (loader workers + backbone) for both decoders.
Backbones: the demo recipe's tiny iresnet18 and a full iresnet100 (512-D; few images on a CPU).
CUDA paths run only where a GPU is present; without one they are listed as not measured.
Run: `.venv/bin/python bench/bench_embed.py` (`--images 2000 --r100-images 64`).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

from gbcosface.data.align import ARCFACE_TEMPLATE, align_face  # noqa: E402
from gbcosface.eval import features as fx  # noqa: E402
from gbcosface.eval.gpu_align import align_matrices, decode_images, warp_faces  # noqa: E402
from gbcosface.eval.verification import normalize_images  # noqa: E402
from gbcosface.models import get_backbone  # noqa: E402

DEMO_ARCH = dict(name="iresnet18", embedding_size=128, width=16, layers=[1, 1, 1, 1], stem_stride=2)
R100_ARCH = dict(name="iresnet100")


def write_crops(root: Path, n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """n JPEG crops under root/loose_crop with landmarks: smooth random colour fields plus noise and a face box."""
    rng = np.random.default_rng(seed)
    crop = root / "loose_crop"
    crop.mkdir(parents=True)
    names, lms = [], []
    for i in range(n):
        size = int(rng.integers(150, 251))
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        img += rng.integers(-20, 21, img.shape, dtype=np.int16)
        img = np.clip(img, 0, 255).astype(np.uint8)
        scale = size / 112.0 * rng.uniform(0.55, 0.75)
        angle = rng.uniform(-0.3, 0.3)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        lm = (ARCFACE_TEMPLATE - 56.0) @ rot.T * scale + size / 2 + rng.uniform(-5, 5, 2)
        for x, y in lm.astype(int):
            cv2.circle(img, (int(x), int(y)), max(2, size // 40), (30, 30, 30), -1)
        name = f"{i + 1}.jpg"
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 96))])
        assert ok
        (crop / name).write_bytes(buf.tobytes())
        names.append(name)
        lms.append(lm.astype(np.float32))
    return names, np.stack(lms)


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:10.0f} images/s  ({seconds:.2f} s for {n:,})"


def bench_align(root: Path, names: list[str], lms: np.ndarray, device: torch.device) -> None:
    crop = root / "loose_crop"
    t = time.perf_counter()
    for name, lm in zip(names, lms, strict=True):
        align_face(cv2.imdecode(np.fromfile(crop / name, np.uint8), cv2.IMREAD_COLOR), lm)
    print(f"  cv2 decode + warpAffine, 1 process          {rate(len(names), time.perf_counter() - t)}")
    data = [torch.from_numpy(np.fromfile(crop / n, np.uint8)) for n in names]
    mats = align_matrices(lms)
    for _ in range(2):  # the first pass warms the decoder and, on CUDA, the kernels
        t = time.perf_counter()
        for s in range(0, len(data), 256):
            imgs, _ = decode_images(data[s:s + 256], device)
            warp_faces(imgs, mats[s:s + 256])
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
    print(f"  decode_jpeg + batched warp on {device.type:<4}          {rate(len(names), dt)}")


def bench_model(arch: dict, n: int, device: torch.device, batch: int) -> None:
    torch.manual_seed(0)
    model = get_backbone(**arch).eval().to(device)
    x = torch.randint(0, 256, (batch, 3, 112, 112), dtype=torch.uint8)
    variants = [("fp32 NCHW", {}), ("fp32 channels_last", {"cl": True})]
    if device.type == "cuda" or arch["name"] != "iresnet100":  # bf16 iresnet100 on a CPU: minutes for a few images
        variants.append(("bf16 channels_last", {"cl": True, "bf16": True}))
    if device.type == "cuda":
        variants += [("fp16 channels_last", {"cl": True, "fp16": True}),
                     ("fp16 channels_last + compile", {"cl": True, "fp16": True, "compile": True})]
    for label, v in variants:
        m = model.to(memory_format=torch.channels_last) if v.get("cl") else model.to(memory_format=torch.contiguous_format)
        run = torch.compile(m, dynamic=False) if v.get("compile") else m
        dtype = torch.float16 if v.get("fp16") else torch.bfloat16 if v.get("bf16") else None
        inp = normalize_images(x, device)
        if v.get("cl"):
            inp = inp.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            run(inp)  # warm-up (and compilation)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            done = 0
            while done < n:
                run(inp)
                done += batch
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
        print(f"  {arch['name']:<10} {label:<30} {rate(done, dt)}")


def bench_end_to_end(root: Path, names: list[str], lms: np.ndarray, device: torch.device, workers: list[int],
                     batch: int) -> None:
    torch.manual_seed(0)
    model = get_backbone(**DEMO_ARCH).eval()
    for decode in ("cv2", "device"):
        for w in workers:
            res = fx.extract_features(model, root, names, lms, batch_size=batch, device=device, workers=w,
                                      decode=decode, progress_bar=False)
            print(f"  extract_features decode={decode:<6} workers={w:<2} {DEMO_ARCH['name']} (demo)  "
                  f"{rate(len(names), res.seconds)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--r100-images", type=int, default=32, help="images through iresnet100 (slow on a CPU)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", default="0,2", help="loader worker counts for the end-to-end runs")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    load = os.getloadavg()
    print(f"machine: {platform.node()} {cpu_model()}, {os.cpu_count()} cores, load average {load[0]:.1f}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), GPU: {gpu}")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if cuda else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        names, lms = write_crops(root, args.images)
        size = sum((root / "loose_crop" / n).stat().st_size for n in names) / len(names)
        print(f"data: {len(names):,} JPEG crops of 150-250 px, {size / 1024:.1f} KiB each "
              f"(written in {time.perf_counter() - t:.1f} s)")
        for dev in devices:
            print(f"\nalign only ({dev.type})")
            bench_align(root, names, lms, dev)
            print(f"\nembed only ({dev.type}, batch {args.batch_size})")
            bench_model(DEMO_ARCH, args.images, dev, args.batch_size)
            bench_model(R100_ARCH, args.r100_images if dev.type == "cpu" else 20 * args.batch_size, dev,
                        min(args.batch_size, args.r100_images) if dev.type == "cpu" else args.batch_size)
            print(f"\nend to end ({dev.type})")
            bench_end_to_end(root, names, lms, dev, [int(w) for w in args.workers.split(",")], args.batch_size)
    if not cuda:
        print("\nCUDA paths (nvJPEG decode, fp16, torch.compile, iresnet100 on a GPU): not measured here, no GPU.")


if __name__ == "__main__":
    main()
