"""Margin losses on cosine logits: GB-CosFace, GB-MagFace (reconstruction), CosFace, ArcFace, MagFace.

Every loss is an nn.Module with `forward(cos, labels, norms=None) -> dict[str, Tensor]`: "loss" is
the differentiable scalar, every other entry a detached scalar for logging. `requires_norms` says
whether the loss needs the feature norms (the `mag` head). See docs/losses.md.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .gb_cosface import GBCosFace
from .gb_magface import GBMagFace
from .margins import ArcFace, CosFace, MagFace

LOSSES: dict[str, type[nn.Module]] = {
    "gb_cosface": GBCosFace,
    "gb_magface": GBMagFace,
    "cosface": CosFace,
    "arcface": ArcFace,
    "magface": MagFace,
}


def get_loss(name: str, **params: Any) -> nn.Module:
    """Build a loss by name; unknown names or parameters are errors that list what is allowed."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r} (known: {', '.join(LOSSES)})") from None
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"loss {name}: unknown parameters {unknown} (allowed: {', '.join(allowed)})")
    return cls(**params)


__all__ = ["LOSSES", "ArcFace", "CosFace", "GBCosFace", "GBMagFace", "MagFace", "get_loss"]
