"""Classification heads: cosine logits between embeddings and class centres.

Why the weight is stored as (embedding_size, num_classes): that is the official GB-CosFace
BaseHead's layout, so its released head weight loads directly (key "weight"); the class centres are
its columns and are normalised along dim 0.

Why unit-norm initial columns (`init="unit"`, the default): the official BaseHead (and MagFace's
MagLinear) start every class centre at norm 1 in a uniformly drawn direction. The scale matters
although the forward pass normalises it: the gradient reaching W_j through the normalisation is
proportional to 1/|W_j|, so insightface's N(0, 0.01) columns (|W_j| ~ 0.01 sqrt(D) = 0.23 at D = 512)
get ~4.4x larger gradients and, under SGD with weight decay, turn much faster at the same lr.
`init="normal"` keeps insightface's N(0, 0.01). See docs/reproducing.md.

Why the cosines are computed in float32 with autocast disabled here (not by the caller): the loss
scales them by s = 32..64, and a bf16 cosine (8 mantissa bits) loses the margin; doing it inside
the module keeps it float32 whatever wraps it (DDP, a trainer's autocast, a sharded classifier).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gbcosface.precision import fp32_region

HEAD_TYPES = ("linear", "mag")
HEAD_INITS = ("unit", "normal")


@torch.no_grad()
def init_head_weight_(weight: torch.Tensor, init: str = "unit", generator: torch.Generator | None = None) -> torch.Tensor:
    """Initialise (D, C) class centres in place: `unit` (official) or `normal` (insightface)."""
    if init == "unit":
        # Uniform in [-1, 1]^D, then each column scaled to norm 1: the official BaseHead's result.
        weight.uniform_(-1.0, 1.0, generator=generator)
        weight.div_(torch.linalg.vector_norm(weight, dim=0, keepdim=True).clamp_min(1e-12))
    elif init == "normal":
        weight.normal_(0.0, 0.01, generator=generator)
    else:
        raise ValueError(f"unknown head init {init!r} (known: {', '.join(HEAD_INITS)})")
    return weight


class NormLinearHead(nn.Module):
    """cos[i, j] = <x_i/|x_i|, W_j/|W_j|>, clamped to [-1, 1] (the input of every margin loss)."""

    def __init__(self, embedding_size: int, num_classes: int, init: str = "unit") -> None:
        super().__init__()
        if embedding_size < 1 or num_classes < 1:
            raise ValueError(f"head: embedding_size and num_classes must be positive, got {embedding_size}, {num_classes}")
        if init not in HEAD_INITS:
            raise ValueError(f"head: unknown init {init!r} (known: {', '.join(HEAD_INITS)})")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.init = init
        self.weight = nn.Parameter(torch.empty(embedding_size, num_classes))
        init_head_weight_(self.weight, init)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.embedding_size:
            raise ValueError(f"head: expected embeddings of shape (B, {self.embedding_size}), got {tuple(x.shape)}")

    def _cosine(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        w = F.normalize(self.weight.to(dtype), dim=0)
        return (F.normalize(x.to(dtype), dim=1) @ w).clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        with fp32_region(x.device):
            return self._cosine(x)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, init={self.init}"


class MagHead(NormLinearHead):
    """Same cosines plus the feature norms |x_i| (shape (B,)) taken before normalisation (MagFace)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        self._check(x)
        with fp32_region(x.device):
            norms = torch.linalg.vector_norm(x.to(torch.promote_types(x.dtype, torch.float32)), dim=1)
            return self._cosine(x), norms


def get_head(type: str, embedding_size: int, num_classes: int, init: str = "unit") -> NormLinearHead:
    """`linear` -> NormLinearHead (returns cos), `mag` -> MagHead (returns (cos, norms))."""
    if type == "linear":
        return NormLinearHead(embedding_size, num_classes, init=init)
    if type == "mag":
        return MagHead(embedding_size, num_classes, init=init)
    raise ValueError(f"unknown head type {type!r} (known: {', '.join(HEAD_TYPES)})")
