"""Pieces every margin loss shares: input checks, float32 maths, the soft negative, distributed mean.

Why float32: the logits are scaled by s = 32..64 before exponentiation; in bf16/fp16 that loses the
margin entirely, so losses always compute in at least float32 (float64 stays float64, for gradcheck)
and outside any autocast region.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
import torch.distributed as dist

from gbcosface.precision import fp32_region


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast for the loss maths (a no-op where autocast is not active)."""
    return fp32_region(device)


def check_inputs(name: str, cos: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (B, C) cosines and (B,) integer labels; return cos in >= float32 and int64 labels."""
    if not isinstance(cos, torch.Tensor) or cos.dim() != 2:
        raise ValueError(f"{name}: cos must be a (B, C) tensor, got shape {tuple(getattr(cos, 'shape', ()))}")
    batch, classes = cos.shape
    if batch < 1 or classes < 2:
        raise ValueError(f"{name}: need at least 1 sample and 2 classes, got cos of shape {tuple(cos.shape)}")
    if not cos.is_floating_point():
        raise ValueError(f"{name}: cos must be floating point, got {cos.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (batch,):
        raise ValueError(f"{name}: labels must have shape ({batch},), got {tuple(getattr(labels, 'shape', ()))}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be integers, got {labels.dtype}")
    labels = labels.to(device=cos.device, dtype=torch.long)
    if bool(((labels < 0) | (labels >= classes)).any()):
        bad = labels[(labels < 0) | (labels >= classes)][:5].tolist()
        raise ValueError(f"{name}: labels out of range [0, {classes}): {bad}")
    return cos.to(torch.promote_types(cos.dtype, torch.float32)), labels


def check_norms(name: str, norms: torch.Tensor | None, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """Feature norms as a (B,) tensor of `dtype`; accepts (B,) or (B, 1)."""
    if norms is None:
        raise ValueError(f"{name}: needs the feature norms (use the 'mag' head, which returns (cos, norms))")
    if not isinstance(norms, torch.Tensor) or norms.numel() != batch or norms.dim() > 2:
        raise ValueError(f"{name}: norms must have shape ({batch},) or ({batch}, 1), got {tuple(getattr(norms, 'shape', ()))}")
    return norms.reshape(batch).to(dtype)


def positive_and_soft_negative(cos: torch.Tensor, labels: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """p_i = cos[i, y_i];  n_i = logsumexp_{j != y_i}(s * cos[i, j]) / s (the positive masked with -inf)."""
    positive_mask = torch.zeros_like(cos, dtype=torch.bool).scatter_(1, labels[:, None], True)
    p = cos.gather(1, labels[:, None]).squeeze(1)
    n = torch.logsumexp((s * cos).masked_fill(positive_mask, -math.inf), dim=1) / s
    return p, n


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)), exact and smooth everywhere (F.softplus switches to x above a threshold)."""
    return torch.logaddexp(x, torch.zeros_like(x))


ANGLE_RULES = ("classic", "easy")


def cos_plus_angle(c: torch.Tensor, m: torch.Tensor | float, rule: str = "classic") -> torch.Tensor:
    """cos(arccos(c) + m) with one of the two published continuations.

    Where theta + m <= pi both are cos(theta + m) = c cos m - sin(theta) sin m. Beyond, cos(theta + m)
    would rise again and reward a larger angle, so
      rule="classic": the target logit becomes c - m sin(pi - m) where c <= cos(pi - m) (ArcFace's
                      rule, insightface's `easy_margin=False`; a CosFace-like margin that keeps the
                      logit decreasing in theta);
      rule="easy":    no margin at all where c <= 0 (MagFace's default `easy_margin=True`).
    """
    if rule not in ANGLE_RULES:
        raise ValueError(f"unknown angular-margin rule {rule!r} (known: {', '.join(ANGLE_RULES)})")
    m = torch.as_tensor(m, dtype=c.dtype, device=c.device)
    c = c.clamp(-1.0, 1.0)
    sin = torch.sqrt((1.0 - c * c).clamp_min(1e-12))
    shifted = c * torch.cos(m) - sin * torch.sin(m)
    if rule == "easy":
        return torch.where(c > 0, shifted, c)
    threshold = torch.cos(math.pi - m)
    return torch.where(c > threshold, shifted, c - torch.sin(math.pi - m) * m)


def cos_plus_angle_straight_through(c: torch.Tensor, m: torch.Tensor | float) -> torch.Tensor:
    """Value cos(arccos(c) + m) for every c (no continuation), gradient 1 with respect to c.

    insightface's current CombinedMarginLoss computes arccos, adds m and takes the cosine under
    `torch.no_grad()`, in place: the forward value has no theta + m > pi rule, and the backward pass
    sees the plain cosine (a straight-through estimator).
    """
    m = torch.as_tensor(m, dtype=c.dtype, device=c.device)
    with torch.no_grad():
        target = torch.cos(torch.arccos(c.clamp(-1.0, 1.0)) + m)
    return c + (target - c).detach()


def magnitude_lambda_bound(s: float, l_a: float, u_a: float, l_m: float, u_m: float, sides: int = 1) -> float:
    """Smallest lambda_g for which the loss still decreases in |x| at |x| = l_a (docs/losses.md).

    d/da of the margin terms is at most sides * s * m'(a), with m' = (u_m - l_m) / (u_a - l_a); the
    regulariser gives lambda_g g'(l_a) = -lambda_g (u_a^2 - l_a^2) / (u_a^2 l_a^2). `sides` is how
    many loss terms carry the margin (1 for MagFace; 2 for GB-MagFace's two-sided margin types).
    """
    slope = (u_m - l_m) / (u_a - l_a)
    return sides * s * max(slope, 0.0) * (u_a**2 * l_a**2) / (u_a**2 - l_a**2)


def warn_if_lambda_infeasible(name: str, lambda_g: float, bound: float) -> None:
    """A RuntimeWarning when lambda_g is below the feasibility bound (norms may collapse to l_a)."""
    if lambda_g < bound:
        warnings.warn(f"{name}: lambda_g={lambda_g:g} is below the feasibility bound {bound:.4g} for these "
                      "s, l_a, u_a, l_m, u_m: the loss may not push feature norms above l_a "
                      "(see docs/losses.md, 'The lambda_g bound')", RuntimeWarning, stacklevel=3)


def distributed() -> bool:
    """True when a torch.distributed process group is initialised (collectives must be used)."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over all ranks (SUM / world size); `t` itself when there is no process group."""
    if not distributed():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()
