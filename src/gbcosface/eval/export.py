"""Export a backbone to ONNX with a dynamic batch axis, and check it against PyTorch with onnxruntime.

Why the parity check is part of the export: an ONNX file that loads but computes something else
(an op translated differently, BatchNorm left in training mode) would only show up later as a worse
deployment. The exported graph takes `input` float32 (B, 3, H, W), normalised (x/255 - 0.5)/0.5 RGB,
and returns `embedding` float32 (B, D), unnormalised, exactly as the PyTorch backbone.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class ExportParityError(RuntimeError):
    """onnxruntime's output differs from PyTorch's by more than the tolerance."""


def export_onnx(
    model_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    backbone_type: str | None = None,
    opset: int = 18,
    image_size: int = 112,
    check: bool = True,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    check_batch: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Write `onnx_path` (atomically) from a backbone file; returns {"path", "max_abs_diff", ...}.

    The parity check runs a batch of `check_batch` random inputs (a different batch size from the
    one traced, so the dynamic axis is exercised) through both and fails when
    |onnx - torch| > atol + rtol * |torch| anywhere. fp16 backbones are exported in float32.
    """
    from gbcosface.models import load_backbone

    arch_override = {"fp16": False}
    model = load_backbone(model_path, name=backbone_type, **arch_override).eval()
    onnx_path = Path(onnx_path)
    return export_module(model, onnx_path, opset=opset, image_size=image_size, check=check, atol=atol,
                         rtol=rtol, check_batch=check_batch, seed=seed)


def export_module(model: nn.Module, onnx_path: Path, opset: int = 18, image_size: int = 112, check: bool = True,
                  atol: float = 1e-3, rtol: float = 1e-3, check_batch: int = 3, seed: int = 0) -> dict[str, Any]:
    """Export an in-memory backbone (see `export_onnx`)."""
    model = model.eval()
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, image_size, image_size)
    fd, tmp = tempfile.mkstemp(dir=onnx_path.parent, prefix=f".{onnx_path.name}.", suffix=".onnx")
    os.close(fd)
    t = time.perf_counter()
    try:
        with torch.no_grad():
            torch.onnx.export(
                model, (example,), tmp, input_names=["input"], output_names=["embedding"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), opset_version=opset, dynamo=True,
                external_data=False, verbose=False,
            )
        result: dict[str, Any] = {"path": str(onnx_path), "opset": opset, "export_seconds": time.perf_counter() - t}
        if check:
            result.update(check_parity(model, tmp, image_size, atol, rtol, check_batch, seed))
        os.replace(tmp, onnx_path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return result


def check_parity(model: nn.Module, onnx_file: str | os.PathLike, image_size: int = 112, atol: float = 1e-3,
                 rtol: float = 1e-3, batch: int = 3, seed: int = 0) -> dict[str, Any]:
    """Compare onnxruntime (CPU) with PyTorch on random inputs; raises ExportParityError past tolerance."""
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, image_size, image_size, generator=gen) * 2 - 1
    with torch.no_grad():
        ref = model(x).float().numpy()
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = sess.run(["embedding"], {"input": x.numpy()})[0]
    if got.shape != ref.shape:
        raise ExportParityError(f"{onnx_file}: onnxruntime output shape {got.shape}, PyTorch {ref.shape}")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max())
    allowed = atol + rtol * np.abs(ref)
    if (diff > allowed).any():
        raise ExportParityError(f"{onnx_file}: onnxruntime differs from PyTorch by up to {max_abs:.3g} "
                                f"(tolerance {atol} + {rtol} x |output|)")
    return {"max_abs_diff": max_abs, "max_abs_output": float(np.abs(ref).max()), "check_batch": batch}
