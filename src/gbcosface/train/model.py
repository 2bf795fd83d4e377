"""The trained module: backbone + head in one nn.Module, so one DDP wrapper all-reduces both.

Why one module: the head's gradients must be averaged across ranks exactly like the backbone's;
wrapping both in a single DistributedDataParallel does that with no extra code and without
`find_unused_parameters` (every parameter is used on every step).
Why autocast only around the backbone: the convolutional trunk is where bf16/fp16 pays off; the
embedding layer (the backbone's final FC + BatchNorm1d), the head and the loss compute in float32
because the cosines are scaled by s = 32..64 inside the loss, and in bf16 the margin (0.16) would be
lost in rounding. Each of those modules disables autocast for its own part (docs/models.md,
"Precision"), so this holds whatever wraps them; the explicit fp32 region below only documents it.
The head matmul is a small fraction of the step (2 x B x D x C against ~12 GMACs per sample for
iresnet100).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str) -> torch.dtype | None:
    if amp not in AMP_DTYPES:
        raise ValueError(f"run.amp must be one of {', '.join(AMP_DTYPES)}, not {amp!r}")
    return AMP_DTYPES[amp]


class FaceModel(nn.Module):
    """images -> (cos (B, C) float32, feature norms (B,) or None)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, amp: str = "none") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.amp = amp
        self._dtype = amp_dtype(amp)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self._dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self._dtype)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with self._autocast(images.device):
            emb = self.backbone(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            out = self.head(emb.to(torch.promote_types(emb.dtype, torch.float32)))  # float64 stays float64
        if isinstance(out, tuple):
            cos, norms = out
            return cos, norms
        return out, None
