"""CosFace, ArcFace and MagFace against plain-Python cross-entropy; gradcheck; the theta+m>pi rules."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from gbcosface.losses import ArcFace, CosFace, MagFace, get_loss


def ce_with_target(cos: np.ndarray, labels: np.ndarray, targets: list[float], s: float) -> float:
    """Mean cross-entropy of s*cos where row i's label entry is replaced by targets[i]."""
    total = 0.0
    for i, y in enumerate(labels):
        logits = [s * float(c) for c in cos[i]]
        logits[y] = s * targets[i]
        top = max(logits)
        lse = top + math.log(sum(math.exp(v - top) for v in logits))
        total += lse - logits[y]
    return total / len(labels)


def arc_target(c: float, m: float) -> float:
    """cos(theta + m) while theta + m <= pi, else cos(theta) - m*sin(pi - m)."""
    theta = math.acos(max(-1.0, min(1.0, c)))
    if theta + m <= math.pi:
        return math.cos(theta + m)
    return c - m * math.sin(math.pi - m)


def easy_target(c: float, m: float) -> float:
    """MagFace's easy margin: cos(theta + m) where cos > 0, the plain cosine elsewhere."""
    return math.cos(math.acos(c) + m) if c > 0 else c


def mag_margin(a: float, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8) -> float:
    a = min(max(a, l_a), u_a)
    return (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m


def batch(seed: int, b: int = 6, c: int = 5):
    gen = torch.Generator().manual_seed(seed)
    cos = torch.rand(b, c, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    labels = torch.randint(0, c, (b,), generator=gen)
    norms = torch.rand(b, generator=gen, dtype=torch.float64) * 120 + 2  # some outside [10, 110]
    return cos, labels, norms


def test_cosface_matches_cross_entropy():
    cos, labels, _ = batch(1)
    out = CosFace()(cos, labels)
    c, y = cos.numpy(), labels.numpy()
    expected = ce_with_target(c, y, [c[i, t] - 0.4 for i, t in enumerate(y)], 64.0)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-10)
    assert out["loss_ce"].item() == out["loss"].item()
    assert out["cos_pos"].item() == pytest.approx(np.mean([c[i, t] for i, t in enumerate(y)]))


def test_arcface_matches_cross_entropy_including_theta_plus_m_beyond_pi():
    cos, labels, _ = batch(2)
    cos[0, labels[0]] = -0.95  # theta ~ 161.8 deg: theta + 0.5 rad > pi
    cos[1, labels[1]] = 0.3
    out = ArcFace()(cos, labels)
    c, y = cos.numpy(), labels.numpy()
    assert math.acos(-0.95) + 0.5 > math.pi
    expected = ce_with_target(c, y, [arc_target(c[i, t], 0.5) for i, t in enumerate(y)], 64.0)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-10)


def test_arcface_target_logit_keeps_decreasing_in_theta():
    """The continuation beyond pi - m must not reward a larger angle."""
    loss = ArcFace(s=1.0, m=0.5)
    thetas = torch.linspace(0.01, math.pi - 0.01, 400, dtype=torch.float64)
    cos = torch.stack([torch.cos(thetas), torch.zeros_like(thetas)], dim=1)
    labels = torch.zeros(len(thetas), dtype=torch.long)
    # loss per sample grows as the target logit falls; check through single-sample losses
    losses = [loss(cos[i : i + 1], labels[i : i + 1])["loss"].item() for i in range(len(thetas))]
    assert all(b >= a for a, b in zip(losses, losses[1:], strict=False))


def test_arcface_straight_through_is_insightface_combined_margin():
    """Value cos(theta + m) for every theta (no pi rule); gradient that of the plain target cosine."""
    cos, labels, _ = batch(2)
    cos[0, labels[0]] = -0.95  # theta + m > pi: classic and straight-through differ here
    c, y = cos.numpy(), labels.numpy()
    loss = ArcFace(formulation="straight_through")
    x = cos.clone().requires_grad_(True)
    out = loss(x, labels)
    expected = ce_with_target(c, y, [math.cos(math.acos(c[i, t]) + 0.5) for i, t in enumerate(y)], 64.0)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-10)
    assert out["loss"].item() != pytest.approx(ArcFace()(cos, labels)["loss"].item(), rel=1e-6)
    out["loss"].backward()
    # d loss / d cos_ij = s (softmax_ij - [j == y]) / B of the margined logits, target included
    logits = 64.0 * c.copy()
    for i, t in enumerate(y):
        logits[i, t] = 64.0 * math.cos(math.acos(c[i, t]) + 0.5)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    onehot = np.eye(c.shape[1])[y]
    np.testing.assert_allclose(x.grad.numpy(), 64.0 * (prob - onehot) / len(y), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="formulation"):
        ArcFace(formulation="exact")


def test_magface_default_is_magface_easy_margin_and_classic_is_an_option():
    """MagFace's MagLinear defaults to easy_margin=True: no margin on a negative target cosine."""
    cos, labels, norms = batch(7)
    cos[0, labels[0]] = -0.4
    norms[0] = 110.0  # margin 0.8
    c, y, a = cos.numpy(), labels.numpy(), norms.numpy()
    easy = MagFace()(cos, labels, norms)["loss_ce"].item()
    classic = MagFace(easy_margin=False)(cos, labels, norms)["loss_ce"].item()
    assert easy == pytest.approx(ce_with_target(c, y, [easy_target(c[i, t], mag_margin(a[i]))
                                                       for i, t in enumerate(y)], 64.0), rel=1e-10)
    assert classic == pytest.approx(ce_with_target(c, y, [arc_target(c[i, t], mag_margin(a[i]))
                                                          for i, t in enumerate(y)], 64.0), rel=1e-10)
    assert classic - easy > 1.0  # one sample's target logit moves by s * (cos(theta + m) - cos)


def test_magface_warns_below_the_lambda_feasibility_bound():
    # bound = s m' l_a^2 u_a^2 / (u_a^2 - l_a^2): 64 * 0.0035 * 100.83 = 22.59 for MagFace's values
    assert MagFace().lambda_bound == pytest.approx(64 * 0.35 / 100 * 110**2 * 10**2 / (110**2 - 10**2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MagFace()  # lambda_g = 35 is feasible
    with pytest.warns(RuntimeWarning, match="below the feasibility bound 22.59"):
        MagFace(lambda_g=20.0)


def test_magface_matches_cross_entropy_plus_regulariser():
    cos, labels, norms = batch(3)
    out = MagFace()(cos, labels, norms)
    c, y, a = cos.numpy(), labels.numpy(), norms.numpy()
    targets = [easy_target(c[i, t], mag_margin(a[i])) for i, t in enumerate(y)]
    ce = ce_with_target(c, y, targets, 64.0)
    clamped = [min(max(x, 10.0), 110.0) for x in a]
    g = np.mean([x / 110.0**2 + 1.0 / x for x in clamped])
    assert out["loss_ce"].item() == pytest.approx(ce, rel=1e-10)
    assert out["loss_g"].item() == pytest.approx(g, rel=1e-10)
    assert out["loss"].item() == pytest.approx(ce + 35.0 * g, rel=1e-10)
    assert out["margin_mean"].item() == pytest.approx(np.mean([mag_margin(x) for x in a]))
    # norms given as (B, 1) (MagFace's own head layout) work the same
    assert MagFace()(cos, labels, norms[:, None])["loss"].item() == out["loss"].item()


@pytest.mark.parametrize("name", ["cosface", "arcface", "magface"])
def test_gradcheck_float64(name):
    cos, labels, norms = batch(4, b=4, c=5)
    cos = cos.clamp(-0.8, 0.8).requires_grad_(True)  # away from the arccos kink at +-1
    norms = (norms.clamp(12, 105)).requires_grad_(True)  # inside [l_a, u_a]: the clamp is smooth there
    loss = get_loss(name, s=4.0)
    assert torch.autograd.gradcheck(lambda x, a: loss(x, labels, a)["loss"], (cos, norms), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["cosface", "arcface", "magface"])
def test_bf16_inputs_compute_in_float32(name):
    cos, labels, norms = batch(5)
    low = cos.to(torch.bfloat16)
    loss = get_loss(name)
    out = loss(low, labels, norms.float())
    ref = loss(low.double(), labels, norms)
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-5)


def test_magface_needs_norms_and_defaults_are_the_published_ones():
    cos, labels, _ = batch(6)
    with pytest.raises(ValueError, match="needs the feature norms"):
        MagFace()(cos, labels)
    m = MagFace()
    assert (m.s, m.l_a, m.u_a, m.l_m, m.u_m, m.lambda_g, m.easy_margin) == (64.0, 10.0, 110.0, 0.45, 0.8, 35.0, True)
    assert (CosFace().s, CosFace().m, ArcFace().s, ArcFace().m) == (64.0, 0.4, 64.0, 0.5)
    assert ArcFace().formulation == "classic"
    assert MagFace.requires_norms and not CosFace.requires_norms
