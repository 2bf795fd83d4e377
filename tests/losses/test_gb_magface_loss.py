"""GB-MagFace (a reconstruction, docs/losses.md "GB-MagFace") against plain-Python computations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from gbcosface.losses import GBMagFace, get_loss


def softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def cos_plus(c: float, m: float, easy: bool) -> float:
    c = max(-1.0, min(1.0, c))
    theta = math.acos(c)
    if easy:
        return math.cos(theta + m) if c > 0 else c
    return math.cos(theta + m) if theta + m <= math.pi else c - m * math.sin(math.pi - m)


def reference(cos, labels, norms, V, s, alpha, margin_type, l_a, u_a, l_m, u_m, lambda_g, easy_margin=True):
    lps, lns, gs = [], [], []
    for i, y in enumerate(labels):
        p = float(cos[i, y])
        neg = [s * float(cos[i, j]) for j in range(cos.shape[1]) if j != y]
        top = max(neg)
        n = (top + math.log(sum(math.exp(v - top) for v in neg))) / s
        v = (p + n) / 2
        w = v + alpha * (V - v)
        a = min(max(float(norms[i]), l_a), u_a)
        m = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
        if margin_type == "cosine":
            lps.append(0.5 * softplus(2 * s * (w - p + m)))
            lns.append(0.5 * softplus(2 * s * (n - w + m)))
        elif margin_type == "angular":
            lps.append(0.5 * softplus(2 * s * (w - cos_plus(p, m, easy_margin))))
            lns.append(0.5 * softplus(2 * s * (n - cos_plus(w, m, easy_margin))))
        else:  # positive_angular: MagFace's head margin, on the target cosine only
            lps.append(0.5 * softplus(2 * s * (w - cos_plus(p, m, easy_margin))))
            lns.append(0.5 * softplus(2 * s * (n - w)))
        gs.append(a / u_a**2 + 1 / a)
    return np.mean(lps) + np.mean(lns) + lambda_g * np.mean(gs), np.mean(gs)


def batch(seed, b=6, c=5):
    gen = torch.Generator().manual_seed(seed)
    cos = torch.rand(b, c, generator=gen, dtype=torch.float64) * 1.4 - 0.7
    labels = torch.randint(0, c, (b,), generator=gen)
    cos[torch.arange(b), labels] = 0.4 + 0.4 * torch.rand(b, generator=gen, dtype=torch.float64)
    norms = torch.rand(b, generator=gen, dtype=torch.float64) * 120 + 2
    return cos, labels, norms


def fixed(loss, V=0.625):
    loss.cos_v.fill_(V)
    loss.initialised.fill_(True)
    return loss.eval()


@pytest.mark.parametrize("margin_type", ["cosine", "angular", "positive_angular"])
@pytest.mark.parametrize("easy_margin", [True, False])
def test_matches_reference(margin_type, easy_margin):
    params = dict(s=32.0, alpha=0.15, margin_type=margin_type, l_a=10.0, u_a=110.0, l_m=0.12, u_m=0.2, lambda_g=35.0,
                  easy_margin=easy_margin)
    loss = fixed(GBMagFace(**params))
    cos, labels, norms = batch(1)
    cos[0, labels[0]] = -0.9  # a negative target cosine, where the angular rules differ
    out = loss(cos, labels, norms)
    total, g = reference(cos.numpy(), labels.numpy(), norms.numpy(), 0.625, **params)
    assert out["loss"].item() == pytest.approx(total, rel=1e-9)
    assert out["loss_g"].item() == pytest.approx(g, rel=1e-9)
    assert out["cos_v"].item() == 0.625


def test_default_is_magface_head_margin_with_magface_values():
    """The release's MagHead(l_a, u_a, l_margin, u_margin, lamda) points to MagFace's head margin."""
    loss = GBMagFace()
    assert loss.margin_type == "positive_angular" and loss.easy_margin
    assert (loss.l_a, loss.u_a, loss.l_m, loss.u_m, loss.lambda_g) == (10.0, 110.0, 0.45, 0.8, 35.0)
    assert (GBMagFace(margin_type="cosine").l_m, GBMagFace(margin_type="cosine").u_m) == (0.12, 0.20)
    cos, labels, norms = batch(6)
    out = fixed(GBMagFace())(cos, labels, norms)
    total, _ = reference(cos.numpy(), labels.numpy(), norms.numpy(), 0.625, 32.0, 0.15, "positive_angular",
                         10.0, 110.0, 0.45, 0.8, 35.0)
    assert out["loss"].item() == pytest.approx(total, rel=1e-9)


def test_lambda_feasibility_bound_warns_per_margin_type():
    # one-sided: s m' l_a^2 u_a^2 / (u_a^2 - l_a^2) = 32 * 0.0035 * 100.83 = 11.29; two-sided: twice that
    k = 110**2 * 10**2 / (110**2 - 10**2)
    assert GBMagFace().lambda_bound == pytest.approx(32 * 0.0035 * k)
    assert GBMagFace(margin_type="angular").lambda_bound == pytest.approx(2 * 32 * 0.0035 * k)
    assert GBMagFace(margin_type="cosine").lambda_bound == pytest.approx(2 * 32 * 0.0008 * k)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for margin_type in ("positive_angular", "angular", "cosine"):
            GBMagFace(margin_type=margin_type)  # lambda_g = 35 is above every default bound
    with pytest.warns(RuntimeWarning, match="lambda_g=10 is below the feasibility bound 11.29"):
        GBMagFace(lambda_g=10.0)
    with pytest.warns(RuntimeWarning, match="below the feasibility bound"):
        GBMagFace(margin_type="angular", s=64.0)  # 2 * 64 * 0.0035 * 100.83 = 45.2 > 35


def test_cosine_with_constant_margin_equals_gb_cosface():
    """l_m = u_m = m and lambda_g = 0 is GB-CosFace with margin m."""
    cos, labels, norms = batch(2)
    gbm = fixed(GBMagFace(margin_type="cosine", l_m=0.16, u_m=0.16, lambda_g=0.0))
    gbc = fixed(get_loss("gb_cosface", margin=0.16))
    assert gbm(cos, labels, norms)["loss"].item() == pytest.approx(gbc(cos, labels)["loss"].item(), rel=1e-12)


@pytest.mark.parametrize("margin_type", ["cosine", "angular", "positive_angular"])
def test_gradcheck_float64_with_fixed_boundary(margin_type):
    """alpha = 1 makes w = V constant, so finite differences and autograd must agree exactly."""
    loss = GBMagFace(s=4.0, alpha=1.0, margin_type=margin_type)
    cos, labels, norms = batch(3, b=4, c=5)
    loss.train()
    loss(cos, labels, norms)
    loss.eval()
    cos = cos.clamp(-0.8, 0.8).requires_grad_(True)
    norms = norms.clamp(12, 105).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, a: loss(x, labels, a)["loss"], (cos, norms), eps=1e-6, atol=1e-7)


def test_boundary_dynamics_are_gb_cosface_s():
    cos, labels, norms = batch(4)
    gbm, gbc = GBMagFace(update_rate=0.3), get_loss("gb_cosface", update_rate=0.3)
    gbm.train()
    gbc.train()
    for k in range(3):
        cos, labels, norms = batch(10 + k)
        gbm(cos, labels, norms)
        gbc(cos, labels)
        assert gbm.cos_v.item() == gbc.cos_v.item()


def test_errors():
    cos, labels, _ = batch(5)
    with pytest.raises(ValueError, match="needs the feature norms"):
        GBMagFace()(cos, labels)
    with pytest.raises(ValueError, match="margin_type"):
        GBMagFace(margin_type="additive")
    with pytest.raises(ValueError, match="norms must have shape"):
        GBMagFace()(cos, labels, torch.ones(3))
    assert GBMagFace.requires_norms
