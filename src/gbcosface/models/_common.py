"""Small helpers shared by the backbones.

Why: both backbones size their final layer from the spatial size the trunk really produces (so a
stride-2 stem or a tiny test input still builds), and both offer insightface's `fp16` trunk flag.
"""

from __future__ import annotations

import contextlib

import torch


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
