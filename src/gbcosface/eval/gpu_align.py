"""Decode and align IJB crops on the device: batched JPEG decode plus a batched similarity warp.

Why: the CPU path (cv2.imdecode + cv2.warpAffine per image in loader workers) caps embedding speed at
what the host's cores decode, far below what one GPU embeds (ENVIRONMENT.md: ~8,500 decodes/s per core
for 112 px JPEGs; IJB loose crops are larger). Here loader workers only read file bytes and fit the
5-point similarity (a few microseconds); `torchvision.io.decode_jpeg` decodes a list of images on the
device (nvJPEG on CUDA, libjpeg-turbo on the CPU) and `warp_faces` resamples them with
`affine_grid`/`grid_sample` in padded groups of bounded memory.

Exactness: the warp is the same map as `data.align.align_face` (cv2.warpAffine, bilinear, border 0) up
to interpolation arithmetic: cv2 quantises source coordinates to 1/32 pixel and weights to 15 bits,
grid_sample computes in float32. Measured on 120 IJB-like crops of 120-260 px, some warped past the
edge (tests/eval/test_gpu_align.py, CPU): after both are rounded to uint8, mean absolute difference
5e-5 grey levels, no pixel off by more than 1; the test's tolerance is mean <= 0.01, max <= 1. Decoders
may differ by a grey level or so (nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's); the
features then differ by what such noise makes (the test asks cosine > 0.999 on the CPU path).
torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec; decode_jpeg still works.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gbcosface.data.align import ARCFACE_TEMPLATE, similarity_transform

__all__ = ["align_matrices", "decode_images", "warp_faces"]


def align_matrices(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """(N, 2, 3) float64 similarity maps from each image's 5 landmarks onto the template (align_face's)."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    dst = ARCFACE_TEMPLATE.astype(np.float64) * (size / 112.0)
    return np.stack([similarity_transform(p, dst) for p in lm]) if lm.size else np.zeros((0, 2, 3))


def decode_images(data: Sequence[torch.Tensor], device: torch.device | str) -> tuple[list[torch.Tensor | None], list[bool]]:
    """Decode JPEG byte tensors to RGB uint8 (3, H, W) on `device`: (images, ok flags); a bad file gives None.

    One batched call when every file decodes; otherwise each file alone, to tell which one failed.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    if not data:
        return [], []
    with warnings.catch_warnings():  # torchvision 0.29 warns on every call that TorchCodec supersedes it
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            imgs = decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device)
            return list(imgs), [True] * len(imgs)
        except (RuntimeError, ValueError):
            out, ok = [], []
            for d in data:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                    ok.append(True)
                except (RuntimeError, ValueError):
                    out.append(None)
                    ok.append(False)
            return out, ok


def _theta(matrices: np.ndarray, heights: np.ndarray, widths: np.ndarray, size: int) -> np.ndarray:
    """affine_grid thetas (align_corners=False) that sample, for each output pixel, the source point the
    inverse of `matrices` (source pixel -> output pixel) gives, in the padded input's normalised coordinates."""
    n = matrices.shape[0]
    fwd = np.zeros((n, 3, 3))
    fwd[:, :2] = matrices
    fwd[:, 2, 2] = 1.0
    inv = np.linalg.inv(fwd)
    # normalised output coordinate -> output pixel centre: u = (S * (un + 1) - 1) / 2
    t_out = np.array([[size / 2.0, 0.0, (size - 1) / 2.0], [0.0, size / 2.0, (size - 1) / 2.0], [0.0, 0.0, 1.0]])
    # source pixel -> normalised input coordinate: xn = (2x + 1) / W - 1
    n_in = np.zeros((n, 3, 3))
    n_in[:, 0, 0] = 2.0 / widths
    n_in[:, 0, 2] = 1.0 / widths - 1.0
    n_in[:, 1, 1] = 2.0 / heights
    n_in[:, 1, 2] = 1.0 / heights - 1.0
    n_in[:, 2, 2] = 1.0
    return (n_in @ inv @ t_out)[:, :2]


def warp_faces(images: Sequence[torch.Tensor], matrices: np.ndarray, size: int = 112,
               group_bytes: int = 256 << 20, round_to_uint8: bool = True) -> torch.Tensor:
    """Warp (3, H_i, W_i) images (any sizes, one device) by their (2, 3) maps to float32 (N, 3, size, size).

    Pixels outside a source image are 0 (cv2's BORDER_CONSTANT 0). Images are zero-padded to the largest
    in a group, so the padding is that same border; groups stay under `group_bytes` of float32 input.
    With `round_to_uint8` values are rounded to integers in [0, 255], as the CPU path's uint8 output.
    """
    n = len(images)
    matrices = np.asarray(matrices, dtype=np.float64).reshape(n, 2, 3)
    if n == 0:
        return torch.zeros((0, 3, size, size))
    device = images[0].device
    out = torch.empty((n, 3, size, size), dtype=torch.float32, device=device)
    start = 0
    while start < n:
        h = w = 0
        end = start
        while end < n:
            hh, ww = max(h, images[end].shape[1]), max(w, images[end].shape[2])
            if end > start and (end - start + 1) * 3 * hh * ww * 4 > group_bytes:
                break
            h, w, end = hh, ww, end + 1
        batch = torch.zeros((end - start, 3, h, w), dtype=torch.float32, device=device)
        for j, img in enumerate(images[start:end]):
            batch[j, :, : img.shape[1], : img.shape[2]] = img
        theta = _theta(matrices[start:end], np.full(end - start, float(h)), np.full(end - start, float(w)), size)
        grid = F.affine_grid(torch.from_numpy(theta).to(device=device, dtype=torch.float32),
                             [end - start, 3, size, size], align_corners=False)
        out[start:end] = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        start = end
    if round_to_uint8:
        out.round_().clamp_(0.0, 255.0)
    return out
