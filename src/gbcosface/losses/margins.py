"""The baselines on the same cosine head: CosFace, ArcFace, MagFace (docs/losses.md, "Baselines").

All three are softmax cross-entropy over s * (cosines with the target's entry changed):
    CosFace  target logit cos_y - m                           (s = 64, m = 0.4, as arcface_torch)
    ArcFace  target logit cos(theta_y + m)                    (s = 64, m = 0.5)
    MagFace  target logit cos(theta_y + m(a)),  a = clamp(|x|, l_a, u_a),
             m(a) = (u_m - l_m)/(u_a - l_a) (a - l_a) + l_m, plus lambda_g * mean(a/u_a^2 + 1/a)
Past theta + m > pi the angular losses need a rule (`_common.cos_plus_angle`):
  ArcFace  formulation="classic" (default): the ArcFace paper's and the older insightface rule
           (target c - m sin(pi - m) where c <= cos(pi - m)), exact gradients;
           formulation="straight_through": insightface's current CombinedMarginLoss (cos(theta + m)
           for every theta, gradient of the plain cosine).
  MagFace  easy_margin=True (default, MagFace's own MagLinear default): no margin where cos <= 0;
           easy_margin=False: the classic rule.
Everything runs in float32 at least. Each returns "loss" plus detached "loss_ce", "cos_pos" (mean
target cosine) and "cos_neg" (mean soft maximum of the negatives at scale s); MagFace adds "loss_g",
"margin_mean", "norm_mean". MagFace warns when lambda_g is below its feasibility bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    check_inputs,
    check_norms,
    cos_plus_angle,
    cos_plus_angle_straight_through,
    magnitude_lambda_bound,
    no_autocast,
    positive_and_soft_negative,
    warn_if_lambda_infeasible,
)

TargetLogit = tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]
ARCFACE_FORMULATIONS = ("classic", "straight_through")


class _MarginSoftmax(nn.Module):
    """Cross-entropy of s * cos with the target cosine replaced by `target_logit(...)`."""

    requires_norms = False

    def __init__(self, s: float) -> None:
        super().__init__()
        if s <= 0:
            raise ValueError(f"{type(self).__name__}: s must be positive, got {s}")
        self.s = float(s)

    def target_logit(self, p: torch.Tensor, norms: torch.Tensor | None) -> TargetLogit:
        """(new target cosines (B,), regulariser added to the loss or None, extra stats)."""
        raise NotImplementedError

    def forward(
        self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        with no_autocast(cos.device):
            cos, labels = check_inputs(type(self).__name__, cos, labels)
            p, n = positive_and_soft_negative(cos, labels, self.s)
            target, regulariser, extra = self.target_logit(p, norms)
            logits = cos.scatter(1, labels[:, None], target[:, None]) * self.s
            ce = F.cross_entropy(logits, labels)
            loss = ce if regulariser is None else ce + regulariser
            stats = {"loss_ce": ce, "cos_pos": p.mean(), "cos_neg": n.mean(), **extra}
            return {"loss": loss, **{k: t.detach() for k, t in stats.items()}}


class CosFace(_MarginSoftmax):
    """Large margin cosine loss: target logit s (cos_y - m)."""

    def __init__(self, s: float = 64.0, m: float = 0.4) -> None:
        super().__init__(s)
        self.m = float(m)

    def target_logit(self, p: torch.Tensor, norms: torch.Tensor | None) -> TargetLogit:
        return p - self.m, None, {}

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}"


class ArcFace(_MarginSoftmax):
    """Additive angular margin: target logit s cos(theta_y + m); `formulation` as the module says."""

    def __init__(self, s: float = 64.0, m: float = 0.5, formulation: str = "classic") -> None:
        super().__init__(s)
        if formulation not in ARCFACE_FORMULATIONS:
            raise ValueError(f"ArcFace: formulation must be one of {ARCFACE_FORMULATIONS}, got {formulation!r}")
        self.m = float(m)
        self.formulation = formulation

    def target_logit(self, p: torch.Tensor, norms: torch.Tensor | None) -> TargetLogit:
        if self.formulation == "straight_through":
            return cos_plus_angle_straight_through(p, self.m), None, {}
        return cos_plus_angle(p, self.m), None, {}

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, formulation={self.formulation}"


class MagFace(_MarginSoftmax):
    """Magnitude-aware angular margin plus the g regulariser; needs the feature norms (mag head)."""

    requires_norms = True

    def __init__(
        self,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
        easy_margin: bool = True,
    ) -> None:
        super().__init__(s)
        if not 0.0 < l_a < u_a:
            raise ValueError(f"MagFace: need 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        self.l_a, self.u_a = float(l_a), float(u_a)
        self.l_m, self.u_m = float(l_m), float(u_m)
        self.lambda_g = float(lambda_g)
        self.easy_margin = bool(easy_margin)
        self.lambda_bound = magnitude_lambda_bound(self.s, self.l_a, self.u_a, self.l_m, self.u_m, sides=1)
        warn_if_lambda_infeasible("MagFace", self.lambda_g, self.lambda_bound)

    def target_logit(self, p: torch.Tensor, norms: torch.Tensor | None) -> TargetLogit:
        a = check_norms("MagFace", norms, p.shape[0], p.dtype).clamp(self.l_a, self.u_a)
        m = (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m
        loss_g = (a / self.u_a**2 + 1.0 / a).mean()
        stats = {"loss_g": loss_g, "margin_mean": m.mean(), "norm_mean": a.mean()}
        return cos_plus_angle(p, m, "easy" if self.easy_margin else "classic"), self.lambda_g * loss_g, stats

    def extra_repr(self) -> str:
        return (f"s={self.s}, l_a={self.l_a}, u_a={self.u_a}, l_m={self.l_m}, u_m={self.u_m}, "
                f"lambda_g={self.lambda_g}, easy_margin={self.easy_margin}")
