"""IJB image features: read loose crops, align, embed in batches, and cache the result on disk.

Why a cache: embedding IJB-C (469k images) is the expensive part of an evaluation (minutes on a GPU,
hours on a CPU), while the flags (norm score, detector score) only change the cheap aggregation.
Features are stored per view (the image, and its horizontal flip) under a key made of the model
file's sha256, the architecture, the landmark file's sha256, the image directory and the precision,
so rescoring with other flags, or the flip test after a run without it, embeds only what is missing.

Missing images: without `skip_missing` the first missing file is an error that names it (found by
a scan before any embedding). With it, missing or undecodable images get all-zero features and are
left out of the template aggregation (not counted in their media's mean); the counts are reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gbcosface.data.align import align_face
from gbcosface.data.errors import DataFormatError
from gbcosface.eval._io import atomic_write_bytes
from gbcosface.eval.verification import normalize_images

log = logging.getLogger(__name__)

OK, MISSING, UNREADABLE = 0, 1, 2
VIEWS = ("image", "flip")
CACHE_VERSION = 1


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class IJBFaceDataset(Dataset):
    """Aligned faces of an IJB image list: (uint8 (3, size, size) RGB tensor, status)."""

    def __init__(self, root: str | os.PathLike, images: Sequence[str], landmarks: np.ndarray,
                 size: int = 112, skip: np.ndarray | None = None) -> None:
        self.crop_dir = Path(root) / "loose_crop"
        self.images = list(images)
        self.landmarks = np.asarray(landmarks, dtype=np.float32)
        self.size = size
        self.skip = skip  # indices known to be missing: not read

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        blank = torch.zeros((3, self.size, self.size), dtype=torch.uint8)
        if self.skip is not None and self.skip[i]:
            return blank, MISSING
        try:
            data = np.fromfile(self.crop_dir / self.images[i], dtype=np.uint8)
        except FileNotFoundError:
            return blank, MISSING
        img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if img is None:
            return blank, UNREADABLE
        face = align_face(img, self.landmarks[i], size=self.size)
        return torch.from_numpy(np.ascontiguousarray(face.transpose(2, 0, 1))), OK


class IJBRawDataset(Dataset):
    """File bytes and alignment map of each IJB image, for decoding and warping on the device (gpu_align).

    Items: (uint8 1-D tensor of the file, float64 (2, 3) map, status); a missing file gives empty bytes.
    """

    def __init__(self, root: str | os.PathLike, images: Sequence[str], landmarks: np.ndarray,
                 size: int = 112, skip: np.ndarray | None = None) -> None:
        from gbcosface.eval.gpu_align import align_matrices

        self.crop_dir = Path(root) / "loose_crop"
        self.images = list(images)
        self.matrices = align_matrices(landmarks, size)
        self.skip = skip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, np.ndarray, int]:
        empty = torch.zeros(0, dtype=torch.uint8)
        if self.skip is not None and self.skip[i]:
            return empty, self.matrices[i], MISSING
        try:
            data = np.fromfile(self.crop_dir / self.images[i], dtype=np.uint8)
        except FileNotFoundError:
            return empty, self.matrices[i], MISSING
        return torch.from_numpy(data), self.matrices[i], OK if data.size else UNREADABLE


def _raw_collate(items):
    data, mats, st = zip(*items, strict=True)
    return list(data), np.stack(mats), torch.tensor(st, dtype=torch.int8)


def _device_aligned(batch, device: torch.device, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Decode and warp a raw batch on `device`: (uint8-valued float (B, 3, size, size), status (B,))."""
    from gbcosface.eval.gpu_align import decode_images, warp_faces

    data, mats, st = batch
    status = st.numpy().copy()
    todo = [i for i in range(len(data)) if status[i] == OK]
    imgs, ok = decode_images([data[i] for i in todo], device)
    x = torch.zeros((len(data), 3, size, size), dtype=torch.float32, device=device)
    good = [i for i, flag in zip(todo, ok, strict=True) if flag]
    for i, flag in zip(todo, ok, strict=True):
        if not flag:
            status[i] = UNREADABLE
    if good:
        x[good] = warp_faces([im for im, flag in zip(imgs, ok, strict=True) if flag], mats[good], size)
    return x, status


def default_workers() -> int:
    """Loader processes: the cores this process may use, up to 32 (was capped at 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(32, cores))


def find_missing(root: str | os.PathLike, images: Sequence[str]) -> np.ndarray:
    """Boolean mask of images absent from `root/loose_crop`."""
    crop = Path(root) / "loose_crop"
    return np.fromiter((not os.path.isfile(crop / name) for name in images), dtype=bool, count=len(images))


@dataclass
class ExtractResult:
    views: dict[str, np.ndarray]  # view name -> float32 (N, D)
    status: np.ndarray  # int8 (N,): OK, MISSING or UNREADABLE
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


PRECISIONS = ("fp32", "fp16", "bf16")
DECODERS = ("cv2", "device")


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    root: str | os.PathLike,
    images: Sequence[str],
    landmarks: np.ndarray,
    views: Sequence[str] = ("image",),
    batch_size: int = 128,
    device: torch.device | str | None = None,
    fp16: bool = False,
    workers: int | None = None,
    skip: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
    bf16: bool = False,
    channels_last: bool | None = None,
    cudnn_benchmark: bool | None = None,
    compile: bool = False,
    decode: str = "cv2",
    progress_bar: bool | None = None,
) -> ExtractResult:
    """Embed every image (and/or its flip) with `backbone`; batched, on the GPU when there is one.

    A DataLoader with `workers` processes reads the crops; with ``decode="cv2"`` they also decode and
    align them (cv2, as the official script), with ``decode="device"`` only the bytes travel and
    `gpu_align` decodes and warps them on `device` (nvJPEG on CUDA). The flip is made on the device,
    only when asked for. fp32 by default; ``fp16`` autocasts on CUDA only, ``bf16`` on any device.
    ``channels_last`` and ``cudnn_benchmark`` default to on for CUDA; ``compile`` wraps the backbone in
    torch.compile. ``progress_bar``: a tqdm bar on stderr (None: only when stderr is a terminal).
    """
    import time

    t0 = time.perf_counter()
    device = torch.device(device) if device is not None else default_device()
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {list(views)}")
    if decode not in DECODERS:
        raise ValueError(f"decode must be one of {DECODERS}, got {decode!r}")
    if fp16 and bf16:
        raise ValueError("fp16 and bf16 exclude each other")
    cuda = device.type == "cuda"
    if workers is None:
        workers = default_workers()
    channels_last = cuda if channels_last is None else channels_last
    if cudnn_benchmark is None:
        cudnn_benchmark = cuda
    if cuda:
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    if decode == "cv2":
        ds: Dataset = IJBFaceDataset(root, images, landmarks, skip=skip)
        collate = None
    else:
        ds = IJBRawDataset(root, images, landmarks, skip=skip)
        collate = _raw_collate
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                        pin_memory=cuda and decode == "cv2", persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    backbone = backbone.to(device).eval()
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    model = torch.compile(backbone, dynamic=False) if compile else backbone
    if fp16 and cuda:
        autocast = torch.autocast("cuda", dtype=torch.float16)
    elif bf16:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = None
    result: dict[str, np.ndarray] = {}  # filled in place: no list of batches, no final concatenation copy
    status = np.zeros(len(ds), dtype=np.int8)
    done = 0
    bar = _progress_bar(len(ds), progress_bar)
    try:
        for batch in loader:
            if decode == "cv2":
                x, st = normalize_images(batch[0], device), batch[1].numpy()
            else:
                x, st = _device_aligned(batch, device, 112)
                x = ((x / 255.0) - 0.5) / 0.5
            parts = [x if v == "image" else torch.flip(x, dims=[3]) for v in views]
            inp = torch.cat(parts) if len(parts) > 1 else parts[0]
            if channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last)
            if autocast is not None:
                with autocast:
                    f = model(inp)
            else:
                f = model(inp)
            f = f.float().cpu().numpy()
            b = x.shape[0]
            if not result:
                result = {v: np.empty((len(ds), f.shape[1]), dtype=np.float32) for v in views}
            for j, v in enumerate(views):
                result[v][done : done + b] = f[j * b : (j + 1) * b]
            status[done : done + b] = st
            done += b
            if bar is not None:
                bar.update(b)
            if progress is not None:
                progress(done, len(ds))
    finally:
        if bar is not None:
            bar.close()
    if not result:
        result = {v: np.zeros((0, 0), np.float32) for v in views}
    bad = status != OK
    for arr in result.values():
        arr[bad] = 0.0
    precision = "fp16" if (fp16 and cuda) else "bf16" if bf16 else "fp32"
    return ExtractResult(views=result, status=status, seconds=time.perf_counter() - t0,
                         info={"device": str(device), "fp16": precision == "fp16", "precision": precision,
                               "workers": workers, "decode": decode, "channels_last": bool(channels_last),
                               "compile": bool(compile)})


def _progress_bar(total: int, enabled: bool | None):
    """A tqdm bar for `total` images (None: on only when stderr is a terminal, tqdm's disable=None)."""
    if enabled is False:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="embedding", disable=None if enabled is None else False,
                dynamic_ncols=True, smoothing=0.1)


# ---------------------------------------------------------------------------------------------------------
# cache


class FeatureCache:
    """Per-view feature arrays in `directory`: `<key>.npy` (float32 (N, D)) + `<key>.json` (what it is)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    @staticmethod
    def identity(model_sha256: str, arch: dict, landmarks_sha256: str, image_root: str, view: str,
                 fp16: bool, variant: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the features depend on; `variant` (e.g. bf16, the device decoder) only when not the default,
        so that keys of default runs stay what they were."""
        ident = {"version": CACHE_VERSION, "model_sha256": model_sha256, "arch": arch,
                 "landmarks_sha256": landmarks_sha256, "image_root": str(Path(image_root).resolve()),
                 "view": view, "fp16": bool(fp16)}
        if variant:
            ident["variant"] = dict(sorted(variant.items()))
        return ident

    def _paths(self, ident: dict[str, Any]) -> tuple[Path, Path]:
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
        return self.directory / f"{key}.npy", self.directory / f"{key}.json"

    def load(self, ident: dict[str, Any], n_images: int, list_path: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(features, status) if cached; a cached array of the wrong length is an error naming it."""
        npy, meta = self._paths(ident)
        if not (npy.is_file() and meta.is_file()):
            return None
        feats = np.load(npy, allow_pickle=False)
        info = json.loads(meta.read_text())
        check_feature_count(feats, n_images, str(npy), list_path)
        status = np.zeros(n_images, dtype=np.int8)
        status[np.asarray(info.get("missing", []), dtype=np.int64)] = MISSING
        status[np.asarray(info.get("unreadable", []), dtype=np.int64)] = UNREADABLE
        return feats, status

    def save(self, ident: dict[str, Any], feats: np.ndarray, status: np.ndarray) -> Path:
        npy, meta = self._paths(ident)
        atomic_write_bytes(npy, lambda fh: np.save(fh, np.ascontiguousarray(feats, dtype=np.float32)))
        info = {**ident, "shape": list(feats.shape),
                "missing": np.flatnonzero(status == MISSING).tolist(),
                "unreadable": np.flatnonzero(status == UNREADABLE).tolist()}
        atomic_write_bytes(meta, lambda fh: fh.write(json.dumps(info, indent=1).encode()))
        return npy


def check_feature_count(feats: np.ndarray, n_images: int, feats_path: str, list_path: str) -> None:
    """Features must be a 2-D array with one row per listed image."""
    if feats.ndim != 2:
        raise DataFormatError(f"{feats_path}: features must be a 2-D array (images x dims), got shape {feats.shape}")
    if feats.shape[0] != n_images:
        raise DataFormatError(
            f"{feats_path}: {feats.shape[0]} feature rows but {list_path} lists {n_images} images (they must match)"
        )


def load_features_file(path: str | os.PathLike, n_images: int, list_path: str) -> np.ndarray:
    """A user-supplied (N, D) .npy of image features (e.g. from another tool), count-checked."""
    try:
        feats = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: features file not found") from None
    except ValueError as exc:
        raise DataFormatError(f"{path}: not a .npy array: {exc}") from None
    check_feature_count(feats, n_images, str(path), list_path)
    return np.asarray(feats, dtype=np.float32)
