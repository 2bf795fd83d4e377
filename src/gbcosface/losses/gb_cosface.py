"""GB-CosFace (ACCV 2022): a CosFace-like loss with a global boundary learned from the batch.

Exactly docs/losses.md ("GB-CosFace"). For each sample, with s the scale and m the margin:

    p_i = cos[i, y_i]                                     positive similarity
    n_i = logsumexp_{j != y_i}(s cos[i, j]) / s           soft maximum of the negatives
    v_i = (p_i + n_i) / 2                                 per-sample boundary (no gradient)
    V   = clamp(cos_v, min_cos_v, max_cos_v)              global boundary (a buffer)
    w_i = v_i + alpha (V - v_i)                           adjusted boundary (no gradient)
    L_p = 0.5 softplus(2s (w_i - p_i + m))   L_n = 0.5 softplus(2s (n_i - w_i + m))
    loss = mean(L_p) + mean(L_n)

With alpha = 0 this equals CosFace with scale s and margin 2m, in value and gradient:
w = (p + n)/2 makes both 2s(...) arguments s(n - p + 2m), and softplus(s(n - p + 2m)) is the
cross-entropy of the logits s(p - 2m) (target) and s cos_j (others).

The global boundary `cos_v` is a persistent float32 buffer with an `initialised` flag, so it is in
every checkpoint and a resume continues it. It moves only in training mode (`module.train()`):
  1. first training batch: cos_v = mean_i(v_i), averaged over ranks when a process group exists,
     so every rank starts identical;
  2. each training step, before use: cos_v is clamped to [min_cos_v, max_cos_v] (stored clamped);
  3. after the loss: cos_v = (1 - r) cos_v + r mean_i(v_i), then averaged over ranks
     (all-reduce SUM / world size); without a process group it is the local value.
In eval mode the buffer is read (clamped) but never written, and no collective is called, so
evaluation on one rank cannot deadlock; an uninitialised loss then uses the clamped batch mean.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import (
    all_reduce_mean,
    check_inputs,
    no_autocast,
    positive_and_soft_negative,
    softplus,
)


class GBCosFace(nn.Module):
    """GB-CosFace loss on clamped cosine logits; `forward(cos, labels, norms=None) -> dict`.

    Returns "loss" (differentiable scalar) and detached scalars: "loss_pos", "loss_neg", "cos_v"
    (the clamped V used by this step), "cos_pos" (mean p), "cos_neg" (mean n), "v_mean" (mean v),
    "w_mean" (mean w). Defaults are the official configuration.
    """

    requires_norms = False

    def __init__(
        self,
        s: float = 32.0,
        margin: float = 0.16,
        alpha: float = 0.15,
        update_rate: float = 0.01,
        min_cos_v: float = 0.5,
        max_cos_v: float = 0.7,
    ) -> None:
        super().__init__()
        if s <= 0:
            raise ValueError(f"{self._name()}: s must be positive, got {s}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{self._name()}: alpha must be in [0, 1], got {alpha}")
        if not 0.0 <= update_rate <= 1.0:
            raise ValueError(f"{self._name()}: update_rate must be in [0, 1], got {update_rate}")
        if min_cos_v > max_cos_v:
            raise ValueError(f"{self._name()}: min_cos_v {min_cos_v} > max_cos_v {max_cos_v}")
        self.s = float(s)
        self.margin = float(margin)
        self.alpha = float(alpha)
        self.update_rate = float(update_rate)
        self.min_cos_v = float(min_cos_v)
        self.max_cos_v = float(max_cos_v)
        self.register_buffer("cos_v", torch.zeros((), dtype=torch.float32))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def _name(self) -> str:
        return type(self).__name__

    def extra_repr(self) -> str:
        return (f"s={self.s}, margin={self.margin}, alpha={self.alpha}, update_rate={self.update_rate}, "
                f"min_cos_v={self.min_cos_v}, max_cos_v={self.max_cos_v}")

    @torch.no_grad()
    def _boundary(self, v: torch.Tensor) -> torch.Tensor:
        """V for this step (float32, on v's device): initialise, clamp, store (training only)."""
        if bool(self.initialised):
            current = self.cos_v.to(device=v.device, dtype=torch.float32)
        elif self.training:
            current = all_reduce_mean(v.mean().float())
            self.initialised.fill_(True)
        else:
            current = v.mean().float()
        current = current.clamp(self.min_cos_v, self.max_cos_v)
        if self.training:
            self.cos_v.copy_(current)
        return current

    @torch.no_grad()
    def _update(self, v: torch.Tensor) -> None:
        """EMA of the batch boundary, then the mean over ranks."""
        r = self.update_rate
        moved = (1.0 - r) * self.cos_v.to(device=v.device, dtype=torch.float32) + r * v.mean().float()
        self.cos_v.copy_(all_reduce_mean(moved))

    def margin_terms(
        self, batch: int, norms: torch.Tensor | None, dtype: torch.dtype
    ) -> tuple[torch.Tensor | float, torch.Tensor | None, dict[str, torch.Tensor]]:
        """(margin, regulariser added to the loss or None, extra stats); GB-MagFace overrides it."""
        return self.margin, None, {}

    def pair_losses(
        self, p: torch.Tensor, n: torch.Tensor, w: torch.Tensor, margin: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample L_p = 0.5 softplus(2s(w - p + m)) and L_n = 0.5 softplus(2s(n - w + m))."""
        two_s = 2.0 * self.s
        return 0.5 * softplus(two_s * (w - p + margin)), 0.5 * softplus(two_s * (n - w + margin))

    def forward(
        self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        with no_autocast(cos.device):
            cos, labels = check_inputs(self._name(), cos, labels)
            margin, regulariser, extra = self.margin_terms(cos.shape[0], norms, cos.dtype)
            p, n = positive_and_soft_negative(cos, labels, self.s)
            v = (0.5 * (p + n)).detach()
            boundary = self._boundary(v)
            w = v + self.alpha * (boundary.to(v.dtype) - v)
            loss_pos, loss_neg = self.pair_losses(p, n, w, margin)
            loss = loss_pos.mean() + loss_neg.mean()
            if regulariser is not None:
                loss = loss + regulariser
            if self.training:
                self._update(v)
            stats = {
                "loss_pos": loss_pos.mean(),
                "loss_neg": loss_neg.mean(),
                "cos_v": boundary,
                "cos_pos": p.mean(),
                "cos_neg": n.mean(),
                "v_mean": v.mean(),
                "w_mean": w.mean(),
                **extra,
            }
            return {"loss": loss, **{k: t.detach() for k, t in stats.items()}}
