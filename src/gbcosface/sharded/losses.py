"""The margin losses on a class-sharded head: same maths, parameters, outputs and buffers as gbcosface.losses.

Every loss here is a function of the per-sample p_i (target cosine), n_i (soft maximum of the
negatives at scale s) and, for the Mag variants, the feature norms. Only p and n need the other
shards (`functional.positive_and_soft_negative_sharded`: an all-reduce SUM for p, a MAX and a SUM
for n); everything after them is replicated on every rank, which is what makes the gradients exact
(see `functional`). The margin-softmax baselines are therefore written as
    CE_i = logsumexp(s t_i, s cos_ij (j != y_i)) - s t_i = softplus(s (n_i - t_i)),
(t_i the target cosine with its margin), identical to gbcosface.losses' cross-entropy in value and
gradient.

Each class subclasses its gbcosface.losses counterpart: constructor, defaults, validation,
`requires_norms`, the margin/target formulas and the state_dict (cos_v, initialised) are inherited,
so a loss checkpoint moves freely between the sharded and the replicated training.

GB-CosFace's boundary V: after the gather every rank holds the same global batch and receives the
same all-reduced p and n (an all-reduce returns identical values on every rank), so v, its mean and V
are computed identically everywhere. V is therefore initialised from the mean over the GLOBAL batch
and updated with it, WITHOUT the rank-averaging all-reduce of the replicated loss; this equals the
replicated loss on the concatenated batch (and the replicated multi-rank training when the local
batches have equal sizes, where the mean of the ranks' means is the global mean).

`forward(ShardedCosines) -> dict` is a collective (train and eval mode alike).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from gbcosface.losses import ArcFace, CosFace, GBCosFace, GBMagFace, MagFace
from gbcosface.losses._common import no_autocast, softplus

from .functional import positive_and_soft_negative_sharded
from .head import ShardedCosines


def check_sharded_inputs(name: str, sc: ShardedCosines) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate what a sharded head produced; return cos in >= float32 and int64 labels."""
    if not isinstance(sc, ShardedCosines):
        raise TypeError(f"{name}: expects the ShardedCosines of a sharded head, got {type(sc).__name__} "
                        "(use gbcosface.losses for a replicated head)")
    cos, labels = sc.cos, sc.labels
    if cos.dim() != 2 or cos.shape[0] < 1 or cos.shape[1] < 1 or not cos.is_floating_point():
        raise ValueError(f"{name}: cos must be a non-empty floating (N, C_local) tensor, got {tuple(cos.shape)} {cos.dtype}")
    if sc.num_classes < 2:
        raise ValueError(f"{name}: need at least 2 classes, got {sc.num_classes}")
    if labels.shape != (cos.shape[0],):
        raise ValueError(f"{name}: labels must have shape ({cos.shape[0]},), got {tuple(labels.shape)}")
    if not 0 <= sc.class_start <= sc.num_classes - cos.shape[1]:
        raise ValueError(f"{name}: shard [{sc.class_start}, {sc.class_start + cos.shape[1]}) outside "
                         f"[0, {sc.num_classes})")
    return cos.to(torch.promote_types(cos.dtype, torch.float32)), labels.to(device=cos.device, dtype=torch.long)


class _ShardedGBMixin:
    """GB-CosFace's forward on (p, n) from the shards; V from the global batch, no rank averaging."""

    s: float
    alpha: float
    training: bool
    cos_v: torch.Tensor
    initialised: torch.Tensor
    min_cos_v: float
    max_cos_v: float
    update_rate: float

    @torch.no_grad()
    def _boundary(self, v: torch.Tensor) -> torch.Tensor:
        """As GBCosFace._boundary, but the first mean is already global (v covers the global batch)."""
        if bool(self.initialised):
            current = self.cos_v.to(device=v.device, dtype=torch.float32)
        else:
            current = v.mean().float()
            if self.training:
                self.initialised.fill_(True)
        current = current.clamp(self.min_cos_v, self.max_cos_v)
        if self.training:
            self.cos_v.copy_(current)
        return current

    @torch.no_grad()
    def _update(self, v: torch.Tensor) -> None:
        """EMA with the global batch mean; identical on every rank, so no all-reduce."""
        r = self.update_rate
        self.cos_v.copy_((1.0 - r) * self.cos_v.to(device=v.device, dtype=torch.float32) + r * v.mean().float())

    def forward(self, sc: ShardedCosines) -> dict[str, torch.Tensor]:
        name = type(self).__name__
        cos, labels = check_sharded_inputs(name, sc)
        with no_autocast(cos.device):
            margin, regulariser, extra = self.margin_terms(cos.shape[0], sc.norms, cos.dtype)  # type: ignore[attr-defined]
            p, n = positive_and_soft_negative_sharded(cos, labels, sc.class_start, self.s, sc.world_size, sc.group)
            v = (0.5 * (p + n)).detach()
            boundary = self._boundary(v)
            w = v + self.alpha * (boundary.to(v.dtype) - v)
            loss_pos, loss_neg = self.pair_losses(p, n, w, margin)  # type: ignore[attr-defined]
            loss = loss_pos.mean() + loss_neg.mean()
            if regulariser is not None:
                loss = loss + regulariser
            if self.training:
                self._update(v)
            stats = {"loss_pos": loss_pos.mean(), "loss_neg": loss_neg.mean(), "cos_v": boundary,
                     "cos_pos": p.mean(), "cos_neg": n.mean(), "v_mean": v.mean(), "w_mean": w.mean(), **extra}
            return {"loss": loss, **{k: t.detach() for k, t in stats.items()}}


class _ShardedMarginMixin:
    """Margin softmax cross-entropy as softplus(s (n - t)); `target_logit` is the replicated loss's."""

    s: float

    def forward(self, sc: ShardedCosines) -> dict[str, torch.Tensor]:
        name = type(self).__name__
        cos, labels = check_sharded_inputs(name, sc)
        with no_autocast(cos.device):
            p, n = positive_and_soft_negative_sharded(cos, labels, sc.class_start, self.s, sc.world_size, sc.group)
            target, regulariser, extra = self.target_logit(p, sc.norms)  # type: ignore[attr-defined]
            ce = softplus(self.s * (n - target)).mean()
            loss = ce if regulariser is None else ce + regulariser
            stats = {"loss_ce": ce, "cos_pos": p.mean(), "cos_neg": n.mean(), **extra}
            return {"loss": loss, **{k: t.detach() for k, t in stats.items()}}


class ShardedGBCosFace(_ShardedGBMixin, GBCosFace):
    """GB-CosFace on a sharded head (parameters and outputs of gbcosface.losses.GBCosFace)."""


class ShardedGBMagFace(_ShardedGBMixin, GBMagFace):
    """GB-MagFace (reconstruction) on a sharded mag head (parameters of GBMagFace)."""


class ShardedCosFace(_ShardedMarginMixin, CosFace):
    """CosFace on a sharded head."""


class ShardedArcFace(_ShardedMarginMixin, ArcFace):
    """ArcFace on a sharded head."""


class ShardedMagFace(_ShardedMarginMixin, MagFace):
    """MagFace on a sharded mag head."""


SHARDED_LOSSES: dict[str, type[nn.Module]] = {
    "gb_cosface": ShardedGBCosFace,
    "gb_magface": ShardedGBMagFace,
    "cosface": ShardedCosFace,
    "arcface": ShardedArcFace,
    "magface": ShardedMagFace,
}


def get_sharded_loss(name: str, **params: Any) -> nn.Module:
    """As gbcosface.losses.get_loss (same names and parameters), for a sharded head."""
    try:
        cls = SHARDED_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r} (known: {', '.join(SHARDED_LOSSES)})") from None
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"loss {name}: unknown parameters {unknown} (allowed: {', '.join(allowed)})")
    return cls(**params)
