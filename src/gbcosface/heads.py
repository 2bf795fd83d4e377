"""Classification heads: cosine logits between embeddings and class centres.

Why the weight is stored as (embedding_size, num_classes): that is the official GB-CosFace
BaseHead's layout, so its released head weight loads directly (key "weight"); the class centres are
its columns and are normalised along dim 0. The weight starts from N(0, 0.01): only its direction
matters (it is normalised), and a small isotropic normal gives uniformly random directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_TYPES = ("linear", "mag")


class NormLinearHead(nn.Module):
    """cos[i, j] = <x_i/|x_i|, W_j/|W_j|>, clamped to [-1, 1] (the input of every margin loss)."""

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        if embedding_size < 1 or num_classes < 1:
            raise ValueError(f"head: embedding_size and num_classes must be positive, got {embedding_size}, {num_classes}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(embedding_size, num_classes))
        nn.init.normal_(self.weight, 0.0, 0.01)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.embedding_size:
            raise ValueError(f"head: expected embeddings of shape (B, {self.embedding_size}), got {tuple(x.shape)}")

    def _cosine(self, x: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self.weight, dim=0)
        return (F.normalize(x, dim=1) @ w.to(x.dtype)).clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self._cosine(x)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}"


class MagHead(NormLinearHead):
    """Same cosines plus the feature norms |x_i| (shape (B,)) taken before normalisation (MagFace)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        self._check(x)
        return self._cosine(x), torch.linalg.vector_norm(x, dim=1)


def get_head(type: str, embedding_size: int, num_classes: int) -> NormLinearHead:
    """`linear` -> NormLinearHead (returns cos), `mag` -> MagHead (returns (cos, norms))."""
    if type == "linear":
        return NormLinearHead(embedding_size, num_classes)
    if type == "mag":
        return MagHead(embedding_size, num_classes)
    raise ValueError(f"unknown head type {type!r} (known: {', '.join(HEAD_TYPES)})")
