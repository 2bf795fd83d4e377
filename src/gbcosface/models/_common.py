"""Small helpers shared by the backbones.

Why: both backbones size their final layer from the spatial size the trunk really produces (so a
stride-2 stem or a tiny test input still builds), both offer insightface's `fp16` trunk flag, and
both compute their embedding layer (final Linear + BatchNorm1d) in float32 under any autocast.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from gbcosface.precision import fp32_region


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis (dilation 1), as PyTorch computes it."""
    return (size + 2 * padding - kernel) // stride + 1


def trunk_autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """insightface's `fp16` flag: run the convolutional trunk under autocast.

    Unlike insightface (which *disables* autocast in the trunk when fp16 is off), fp16=False leaves
    the caller's autocast state alone, so a trainer's outer bf16/fp16 autocast still applies.
    On CUDA the trunk runs in float16; on other devices in bfloat16 (the CPU autocast dtype).
    """
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def float32_embedding(fc: nn.Module, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """bn(fc(x)) in (at least) float32 with autocast disabled, whatever precision the trunk ran in.

    Why: the embedding is what the cosine head normalises and what verification compares; in bf16 its
    8 mantissa bits move cosines by ~4e-3, more than the gaps the margins are tuned on. insightface's
    fp16 path keeps this layer in float32 too; the official GB-CosFace run is float32 throughout.
    """
    with fp32_region(x.device):
        return bn(fc(x.to(torch.promote_types(x.dtype, torch.float32))))
