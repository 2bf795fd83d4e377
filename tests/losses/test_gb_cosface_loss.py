"""GB-CosFace against plain numpy computations of docs/losses.md ("GB-CosFace")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gbcosface.losses import GBCosFace, get_loss


def np_logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def np_softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def np_p_n(cos: np.ndarray, labels: np.ndarray, s: float) -> tuple[list[float], list[float]]:
    """p_i = cos[i, y_i]; n_i = (1/s) log sum_{j != y_i} exp(s cos[i, j]), one sample at a time."""
    ps, ns = [], []
    for i, y in enumerate(labels):
        ps.append(float(cos[i, y]))
        ns.append(np_logsumexp([s * float(cos[i, j]) for j in range(cos.shape[1]) if j != y]) / s)
    return ps, ns


def np_gb_loss(cos, labels, V, s, m, alpha):
    """Total GB-CosFace loss for a given (already clamped) global boundary V."""
    ps, ns = np_p_n(cos, labels, s)
    lp, ln = [], []
    for p, n in zip(ps, ns, strict=True):
        v = (p + n) / 2
        w = v + alpha * (V - v)
        lp.append(0.5 * np_softplus(2 * s * (w - p + m)))
        ln.append(0.5 * np_softplus(2 * s * (n - w + m)))
    return sum(lp) / len(lp) + sum(ln) / len(ln), sum(lp) / len(lp), sum(ln) / len(ln)


def random_batch(seed: int, b: int = 6, c: int = 7, pos: float = 0.5, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    cos = torch.rand(b, c, generator=gen, dtype=dtype) * 1.2 - 0.6
    labels = torch.randint(0, c, (b,), generator=gen)
    cos[torch.arange(b), labels] = pos + 0.2 * torch.rand(b, generator=gen, dtype=dtype)
    return cos, labels


def test_loss_matches_numpy_for_a_fixed_boundary():
    s, m, alpha = 32.0, 0.16, 0.15
    loss = GBCosFace(s=s, margin=m, alpha=alpha)
    loss.cos_v.fill_(0.625)
    loss.initialised.fill_(True)
    loss.eval()
    cos, labels = random_batch(1)
    out = loss(cos.requires_grad_(True), labels)
    cos = cos.detach()
    total, lp, ln = np_gb_loss(cos.numpy(), labels.numpy(), 0.625, s, m, alpha)
    assert out["loss"].item() == pytest.approx(total, rel=1e-9)
    assert out["loss_pos"].item() == pytest.approx(lp, rel=1e-9)
    assert out["loss_neg"].item() == pytest.approx(ln, rel=1e-9)
    ps, ns = np_p_n(cos.numpy(), labels.numpy(), s)
    assert out["cos_pos"].item() == pytest.approx(np.mean(ps))
    assert out["cos_neg"].item() == pytest.approx(np.mean(ns))
    assert out["v_mean"].item() == pytest.approx(np.mean([(p + n) / 2 for p, n in zip(ps, ns, strict=True)]))
    assert out["cos_v"].item() == pytest.approx(0.625, abs=1e-7)
    assert out["loss"].requires_grad and not out["loss_pos"].requires_grad
    # eval mode never moves the boundary
    assert loss.cos_v.item() == pytest.approx(0.625, abs=1e-7)


def test_alpha_zero_is_cosface_with_margin_2m_in_value_and_gradient():
    """w = (p+n)/2 turns both terms into 0.5 softplus(s(n - p + 2m)): CosFace(s, 2m)."""
    s, m = 32.0, 0.16
    cos, labels = random_batch(2, b=9, c=11)
    cos_gb = cos.clone().requires_grad_(True)
    loss = GBCosFace(s=s, margin=m, alpha=0.0)
    loss.train()
    gb = loss(cos_gb, labels)["loss"]
    gb.backward()

    # independent CosFace: cross-entropy of s*cos with the target logit s*(cos_y - 2m)
    cos_ce = cos.clone().requires_grad_(True)
    onehot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
    ce = F.cross_entropy(s * (cos_ce - 2 * m * onehot), labels)
    ce.backward()
    # and the closed form softplus(s(n - p + 2m)) in plain Python
    ps, ns = np_p_n(cos.numpy(), labels.numpy(), s)
    closed = np.mean([np_softplus(s * (n - p + 2 * m)) for p, n in zip(ps, ns, strict=True)])

    assert gb.item() == pytest.approx(ce.item(), rel=1e-10)
    assert gb.item() == pytest.approx(closed, rel=1e-10)
    torch.testing.assert_close(cos_gb.grad, cos_ce.grad, rtol=1e-9, atol=1e-12)


def test_gradient_flows_through_p_in_lp_and_n_in_ln_only():
    """Autograd's gradient equals the hand derivative with w treated as a constant."""
    s, m, alpha, V = 32.0, 0.16, 0.3, 0.625  # V exact in float32 (the buffer's dtype)
    cos, labels = random_batch(3, b=5, c=6)
    cos.requires_grad_(True)
    loss = GBCosFace(s=s, margin=m, alpha=alpha)
    loss.cos_v.fill_(V)
    loss.initialised.fill_(True)
    loss.eval()
    loss(cos, labels)["loss"].backward()

    c = cos.detach().numpy()
    b, k = c.shape
    expected = np.zeros_like(c)
    ps, ns = np_p_n(c, labels.numpy(), s)
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    for i, y in enumerate(labels.numpy()):
        p, n = ps[i], ns[i]
        v = (p + n) / 2
        w = v + alpha * (V - v)
        expected[i, y] = -s * sig(2 * s * (w - p + m)) / b  # d/dp of mean 0.5 softplus(2s(w-p+m))
        dn = s * sig(2 * s * (n - w + m)) / b  # d/dn of mean 0.5 softplus(2s(n-w+m))
        z = sum(math.exp(s * c[i, j]) for j in range(k) if j != y)
        for j in range(k):
            if j != y:
                expected[i, j] = dn * math.exp(s * c[i, j]) / z  # dn/dcos_ij = softmax over negatives
    np.testing.assert_allclose(cos.grad.numpy(), expected, rtol=1e-8, atol=1e-14)


def test_gradcheck_float64_with_fixed_boundary():
    """With alpha = 1, w = V: a fixed boundary, so the whole loss is an honest function of cos.

    (For alpha < 1, w depends on the detached v: finite differences would see that dependence and
    autograd, by design, does not; the hand-derived gradient test above covers that case.)
    """
    loss = GBCosFace(s=8.0, margin=0.16, alpha=1.0)
    cos, labels = random_batch(4, b=4, c=5)
    loss.train()
    loss(cos, labels)  # initialise V
    loss.eval()  # V fixed from here on
    cos.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels)["loss"], (cos,), eps=1e-6, atol=1e-7)


def test_gradcheck_float64_of_the_pair_terms_with_w_as_input():
    loss = GBCosFace(s=8.0, margin=0.16)
    gen = torch.Generator().manual_seed(8)
    p, n, w = (torch.rand(5, generator=gen, dtype=torch.float64).requires_grad_(True) for _ in range(3))

    def total(p, n, w):
        lp, ln = loss.pair_losses(p, n, w, loss.margin)
        return lp.mean() + ln.mean()

    assert torch.autograd.gradcheck(total, (p, n, w), eps=1e-6, atol=1e-7)


def np_v_mean(cos, labels, s):
    ps, ns = np_p_n(cos, labels, s)
    return sum((p + n) / 2 for p, n in zip(ps, ns, strict=True)) / len(ps)


def test_cos_v_dynamics_init_clamp_ema_against_numpy():
    s, m, alpha, r, lo, hi = 32.0, 0.16, 0.15, 0.2, 0.5, 0.7
    loss = GBCosFace(s=s, margin=m, alpha=alpha, update_rate=r, min_cos_v=lo, max_cos_v=hi)
    loss.train()
    # positives chosen so that batch boundaries fall below, inside and above [lo, hi]
    batches = [random_batch(10 + k, pos=pos, c=4) for k, pos in enumerate([0.9, 0.9, -0.2, 0.3, 0.95, 0.5])]
    V = None
    for cos, labels in batches:
        c, y = cos.numpy(), labels.numpy()
        mv = np_v_mean(c, y, s)
        if V is None:
            V = mv  # first batch initialises
        V = min(max(V, lo), hi)  # clamp before use
        out = loss(cos, labels)
        assert out["cos_v"].item() == pytest.approx(V, abs=1e-6)
        assert out["loss"].item() == pytest.approx(np_gb_loss(c, y, V, s, m, alpha)[0], rel=1e-5)
        V = (1 - r) * V + r * mv  # EMA after the loss
        assert loss.cos_v.item() == pytest.approx(V, abs=1e-6)
        assert loss.cos_v.dtype == torch.float32
    assert bool(loss.initialised)
    # the sequence really exercised the clamp (above hi on the first steps, then below lo)
    assert any(np_v_mean(c.numpy(), y.numpy(), s) > hi for c, y in batches)
    assert any(np_v_mean(c.numpy(), y.numpy(), s) < lo for c, y in batches)


def test_state_dict_carries_cos_v_and_resume_continues():
    a = GBCosFace(update_rate=0.5)
    a.train()
    for k in range(3):
        a(*random_batch(20 + k))
    state = a.state_dict()
    assert set(state) == {"cos_v", "initialised"}
    b = GBCosFace(update_rate=0.5)
    b.load_state_dict(state)
    b.train()
    cos, labels = random_batch(99)
    out_a, out_b = a(cos, labels), b(cos, labels)
    assert out_a["loss"].item() == out_b["loss"].item()
    assert a.cos_v.item() == b.cos_v.item()


def test_eval_mode_does_not_initialise_or_move_the_boundary():
    loss = GBCosFace()
    loss.eval()
    cos, labels = random_batch(5, pos=0.6)
    out = loss(cos, labels)
    mv = np_v_mean(cos.numpy(), labels.numpy(), 32.0)
    assert out["cos_v"].item() == pytest.approx(min(max(mv, 0.5), 0.7), abs=1e-6)
    assert not bool(loss.initialised) and loss.cos_v.item() == 0.0


def test_bf16_input_is_computed_in_float32():
    cos, labels = random_batch(6, dtype=torch.float32)
    low = cos.to(torch.bfloat16)
    loss = GBCosFace()
    loss.cos_v.fill_(0.6)
    loss.initialised.fill_(True)
    loss.eval()
    out = loss(low, labels)
    assert out["loss"].dtype == torch.float32
    expected = np_gb_loss(low.float().double().numpy(), labels.numpy(), 0.6, 32.0, 0.16, 0.15)[0]
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(low, labels)["loss"].dtype == torch.float32


def test_bad_inputs_are_clear_errors_and_leave_state_untouched():
    loss = GBCosFace()
    loss.train()
    cos, labels = random_batch(7)
    with pytest.raises(ValueError, match="labels out of range"):
        loss(cos, labels + 100)
    with pytest.raises(ValueError, match="labels must have shape"):
        loss(cos, labels[:2])
    with pytest.raises(ValueError, match="2 classes"):
        loss(cos[:, :1], torch.zeros(cos.shape[0], dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        loss(cos, labels.float())
    assert not bool(loss.initialised)
    with pytest.raises(ValueError, match="min_cos_v"):
        GBCosFace(min_cos_v=0.8, max_cos_v=0.7)


def test_get_loss_builds_with_recipe_params_and_rejects_unknown():
    params = {"s": 32.0, "margin": 0.16, "alpha": 0.15, "update_rate": 0.01, "min_cos_v": 0.5, "max_cos_v": 0.7}
    loss = get_loss("gb_cosface", **params)
    assert isinstance(loss, GBCosFace) and loss.alpha == 0.15
    with pytest.raises(ValueError, match="unknown parameters"):
        get_loss("gb_cosface", m=0.2)
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("softmax")
