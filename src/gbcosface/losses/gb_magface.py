"""GB-MagFace: GB-CosFace with MagFace's magnitude-aware margin. A RECONSTRUCTION.

The paper's appendix describes GB-MagFace, but its official code is missing from the release, so
this is rebuilt from the description and the MagFace paper (docs/losses.md, "GB-MagFace"):

    a_i  = clamp(|x_i|, l_a, u_a)                          feature norm before normalisation
    m_i  = (u_m - l_m) / (u_a - l_a) * (a_i - l_a) + l_m    margin growing with the norm
    g(a) = a / u_a^2 + 1 / a                               MagFace's norm regulariser
    loss = mean(L_p) + mean(L_n) + lambda_g * mean_i g(a_i)

with the GB-CosFace boundary machinery (p, n, v, V, w, cos_v) unchanged. Gradients flow into the
norms through both m_i and g (as in MagFace, where the margin is not detached); clamping stops
them outside [l_a, u_a].

Where the margin goes is not published, so it is a parameter (theta_p = arccos p):
  margin_type="positive_angular" (default): MagFace's head margin. The release's factories build
      GBMagFace with no margin argument and a MagHead(l_a, u_a, l_margin, u_margin, lamda), i.e. the
      margin lives in the head, as MagFace's MagLinear puts it: on the target cosine only.
          L_p = 0.5 softplus(2s(w - cos(theta_p + m_i)))     L_n = 0.5 softplus(2s(n - w))
      MagFace's own values apply (l_m = 0.45, u_m = 0.8, easy margin), as in MagFace.
  margin_type="angular": the margin on both GB terms, added to the angle,
          L_p = 0.5 softplus(2s(w - cos(theta_p + m_i)))     L_n = 0.5 softplus(2s(n - cos(theta_w + m_i)))
  margin_type="cosine": GB-CosFace's own additive form with a per-sample m_i,
          L_p = 0.5 softplus(2s(w - p + m_i))                L_n = 0.5 softplus(2s(n - w + m_i))
      default margins l_m = 0.12, u_m = 0.20, centred on GB-CosFace's m = 0.16 (a two-sided GB
      margin acts twice: with alpha = 0 it is CosFace with margin 2m).
theta_w = arccos(clamp(w, -1, 1)). For the angular types `easy_margin` picks the continuation past
theta + m > pi (`_common.cos_plus_angle`): True (MagFace's default) = no margin where the cosine is
<= 0, False = the classic ArcFace rule. l_a, u_a and lambda_g are MagFace's (10, 110, 35).
A RuntimeWarning says when lambda_g is below the feasibility bound of the chosen type
(`_common.magnitude_lambda_bound`, with the margin on 1 or 2 terms).
"""

from __future__ import annotations

import torch

from ._common import check_norms, cos_plus_angle, magnitude_lambda_bound, softplus, warn_if_lambda_infeasible
from .gb_cosface import GBCosFace

MARGIN_TYPES = ("positive_angular", "angular", "cosine")
# (l_m, u_m) when not given: MagFace's for the angular types, [0.12, 0.20] for the additive one.
DEFAULT_MARGINS = {"positive_angular": (0.45, 0.8), "angular": (0.45, 0.8), "cosine": (0.12, 0.20)}
_MARGIN_SIDES = {"positive_angular": 1, "angular": 2, "cosine": 2}


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
        margin_type: str = "positive_angular",
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float | None = None,
        u_m: float | None = None,
        lambda_g: float = 35.0,
        easy_margin: bool = True,
    ) -> None:
        super().__init__(s=s, margin=0.0, alpha=alpha, update_rate=update_rate,
                         min_cos_v=min_cos_v, max_cos_v=max_cos_v)
        if margin_type not in MARGIN_TYPES:
            raise ValueError(f"GBMagFace: margin_type must be one of {MARGIN_TYPES}, got {margin_type!r}")
        if not 0.0 < l_a < u_a:
            raise ValueError(f"GBMagFace: need 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        default_l, default_u = DEFAULT_MARGINS[margin_type]
        self.margin_type = margin_type
        self.l_a, self.u_a = float(l_a), float(u_a)
        self.l_m = float(default_l if l_m is None else l_m)
        self.u_m = float(default_u if u_m is None else u_m)
        self.lambda_g = float(lambda_g)
        self.easy_margin = bool(easy_margin)
        self.lambda_bound = magnitude_lambda_bound(self.s, self.l_a, self.u_a, self.l_m, self.u_m,
                                                   sides=_MARGIN_SIDES[margin_type])
        warn_if_lambda_infeasible("GBMagFace", self.lambda_g, self.lambda_bound)

    def extra_repr(self) -> str:
        return (f"s={self.s}, alpha={self.alpha}, update_rate={self.update_rate}, min_cos_v={self.min_cos_v}, "
                f"max_cos_v={self.max_cos_v}, margin_type={self.margin_type}, l_a={self.l_a}, u_a={self.u_a}, "
                f"l_m={self.l_m}, u_m={self.u_m}, lambda_g={self.lambda_g}, easy_margin={self.easy_margin}")

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
        rule = "easy" if self.easy_margin else "classic"
        loss_pos = 0.5 * softplus(two_s * (w - cos_plus_angle(p, margin, rule)))
        if self.margin_type == "positive_angular":
            return loss_pos, 0.5 * softplus(two_s * (n - w))
        return loss_pos, 0.5 * softplus(two_s * (n - cos_plus_angle(w, margin, rule)))
