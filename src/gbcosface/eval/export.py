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


class OnnxBackbone(nn.Module):
    """An exported `.onnx` backbone run by onnxruntime behind the nn.Module call the evaluation uses.

    As insightface's onnx_ijbc.py: the same alignment, normalisation, aggregation and scoring, only the
    embedding comes from onnxruntime (CUDA provider when the input is on a CUDA device and onnxruntime
    has it, else the CPU). Inputs are float32 (B, 3, H, W) normalised RGB, as the export takes them.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a test dependency here
            raise RuntimeError("evaluating an .onnx model needs onnxruntime (pip install 'gbcosface[onnx]')") from exc
        self.path = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: ONNX model not found")
        self._ort = ort
        self._sessions: dict[str, Any] = {}

    def _session(self, device: torch.device):
        kind = "cuda" if device.type == "cuda" and "CUDAExecutionProvider" in self._ort.get_available_providers() \
            else "cpu"
        if kind not in self._sessions:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if kind == "cuda" else ["CPUExecutionProvider"]
            self._sessions[kind] = self._ort.InferenceSession(self.path, providers=providers)
        return self._sessions[kind]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sess = self._session(x.device)
        name = sess.get_inputs()[0].name
        out = sess.run(None, {name: x.detach().float().contiguous().cpu().numpy()})[0]
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)


def load_model_file(path: str | os.PathLike, backbone_type: str | None = None) -> nn.Module:
    """A backbone from a file: `.onnx` through onnxruntime (OnnxBackbone), anything else via load_backbone."""
    if str(path).lower().endswith(".onnx"):
        return OnnxBackbone(path)
    from gbcosface.models import load_backbone

    return load_backbone(path, name=backbone_type)
