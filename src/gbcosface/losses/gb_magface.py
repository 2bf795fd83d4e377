"""GB-MagFace: GB-CosFace with MagFace's magnitude-aware margin. A RECONSTRUCTION.

The paper's appendix describes GB-MagFace, but its official code is missing from the release, so
this is rebuilt from the description (ALGORITHMS.md section 2) and the MagFace paper:

    a_i  = clamp(|x_i|, l_a, u_a)                          feature norm before normalisation
    m_i  = (u_m - l_m) / (u_a - l_a) * (a_i - l_a) + l_m    margin growing with the norm
    g(a) = a / u_a^2 + 1 / a                               MagFace's norm regulariser
    loss = mean(L_p) + mean(L_n) + lambda_g * mean_i g(a_i)

with the GB-CosFace boundary machinery (p, n, v, V, w, cos_v) unchanged. Gradients flow into the
norms through both m_i and g (as in MagFace, where the margin is not detached); clamping stops
them outside [l_a, u_a].

Whether the margin is additive-cosine or angular is not published, so it is a parameter:
  margin_type="cosine" (default): L_p = 0.5 softplus(2s(w - p + m_i)),
                                  L_n = 0.5 softplus(2s(n - w + m_i))      (GB-CosFace's form)
  margin_type="angular":          L_p = 0.5 softplus(2s(w - cos(theta_p + m_i))),
                                  L_n = 0.5 softplus(2s(n - cos(theta_w + m_i)))
i.e. the margin sits where GB-CosFace puts it (on p in L_p, on the detached boundary w in L_n),
added to the angle instead of subtracted from the cosine; theta_w = arccos(clamp(w, -1, 1)), and
past theta + m > pi the standard ArcFace continuation applies.

Default margins: l_m = 0.12, u_m = 0.20 (cosine) centre the range on GB-CosFace's m = 0.16, because
a GB margin acts twice (on L_p and L_n; with alpha = 0 it is CosFace with margin 2m), so MagFace's
own [0.45, 0.8] (angular, one-sided, at s = 64) would be far too strong here. l_a, u_a and
lambda_g are MagFace's (10, 110, 35); lambda_g is not tuned for GB-MagFace. Pass
margin_type="angular", l_m=0.45, u_m=0.8 to use MagFace's margins verbatim.
"""

from __future__ import annotations

import torch

from ._common import check_norms, cos_plus_angle, softplus
from .gb_cosface import GBCosFace

MARGIN_TYPES = ("cosine", "angular")


class GBMagFace(GBCosFace):
    """GB-CosFace with a per-sample margin m(|x|) and MagFace's g regulariser; needs the norms.

    Extra detached outputs: "loss_g" (mean g), "margin_mean", "norm_mean" (mean clamped norm).
    """

    requires_norms = True

    def __init__(
        self,
        s: float = 32.0,
        alpha: float = 0.15,
        update_rate: float = 0.01,
        min_cos_v: float = 0.5,
        max_cos_v: float = 0.7,
        margin_type: str = "cosine",
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.12,
        u_m: float = 0.20,
        lambda_g: float = 35.0,
    ) -> None:
        super().__init__(s=s, margin=0.0, alpha=alpha, update_rate=update_rate,
                         min_cos_v=min_cos_v, max_cos_v=max_cos_v)
        if margin_type not in MARGIN_TYPES:
            raise ValueError(f"GBMagFace: margin_type must be one of {MARGIN_TYPES}, got {margin_type!r}")
        if not 0.0 < l_a < u_a:
            raise ValueError(f"GBMagFace: need 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        self.margin_type = margin_type
        self.l_a, self.u_a = float(l_a), float(u_a)
        self.l_m, self.u_m = float(l_m), float(u_m)
        self.lambda_g = float(lambda_g)

    def extra_repr(self) -> str:
        return (f"s={self.s}, alpha={self.alpha}, update_rate={self.update_rate}, min_cos_v={self.min_cos_v}, "
                f"max_cos_v={self.max_cos_v}, margin_type={self.margin_type}, l_a={self.l_a}, u_a={self.u_a}, "
                f"l_m={self.l_m}, u_m={self.u_m}, lambda_g={self.lambda_g}")

    def margin_terms(
        self, batch: int, norms: torch.Tensor | None, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        a = check_norms(self._name(), norms, batch, dtype).clamp(self.l_a, self.u_a)
        m = (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m
        g = a / self.u_a**2 + 1.0 / a
        loss_g = g.mean()
        stats = {"loss_g": loss_g, "margin_mean": m.mean(), "norm_mean": a.mean()}
        return m, self.lambda_g * loss_g, stats

    def pair_losses(
        self, p: torch.Tensor, n: torch.Tensor, w: torch.Tensor, margin: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.margin_type == "cosine":
            return super().pair_losses(p, n, w, margin)
        two_s = 2.0 * self.s
        loss_pos = 0.5 * softplus(two_s * (w - cos_plus_angle(p, margin)))
        loss_neg = 0.5 * softplus(two_s * (n - cos_plus_angle(w, margin)))
        return loss_pos, loss_neg
