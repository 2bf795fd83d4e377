"""Cosine heads: official BaseHead weight layout (embedding, classes), clamping, norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gbcosface.heads import MagHead, NormLinearHead, get_head


def test_official_basehead_weight_loads_and_gives_normalised_cosines():
    emb, classes = 8, 5
    gen = torch.Generator().manual_seed(0)
    official = {"weight": torch.randn(emb, classes, generator=gen)}  # BaseHead: (in_features, out_features)
    head = get_head("linear", emb, classes)
    head.load_state_dict(official, strict=True)
    x = torch.randn(4, emb, generator=gen)
    cos = head(x)
    xs, ws = x.numpy().astype(np.float64), official["weight"].numpy().astype(np.float64)
    expected = np.empty((4, classes))
    for i in range(4):
        for j in range(classes):
            expected[i, j] = xs[i] @ ws[:, j] / (np.linalg.norm(xs[i]) * np.linalg.norm(ws[:, j]))
    np.testing.assert_allclose(cos.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_cosines_are_clamped_where_rounding_would_exceed_one():
    head = NormLinearHead(64, 3)
    # find float32 vectors whose unclamped normalised self-product rounds above 1
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        v = torch.randn(64, generator=gen)
        unclamped = torch.nn.functional.normalize(v[None], dim=1) @ torch.nn.functional.normalize(v[:, None], dim=0)
        if unclamped.item() > 1.0:
            break
    else:
        pytest.fail("no float32 vector with a self-cosine above 1 found")
    with torch.no_grad():
        head.weight[:, 0] = v
        head.weight[:, 1] = -v
    cos = head(v[None])
    assert cos[0, 0].item() == 1.0 and cos[0, 1].item() == -1.0


def test_mag_head_returns_cosines_and_raw_norms():
    head = get_head("mag", 6, 4)
    assert isinstance(head, MagHead)
    x = torch.randn(3, 6) * 20
    cos, norms = head(x)
    torch.testing.assert_close(cos, NormLinearHead.forward(head, x))
    np.testing.assert_allclose(norms.numpy(), np.linalg.norm(x.numpy(), axis=1), rtol=1e-6)
    assert norms.shape == (3,)


def test_default_init_is_the_official_unit_norm_class_centres():
    # Official BaseHead: uniform(-1, 1) columns renormalised to norm 1 (was N(0, 0.01), norm ~0.23).
    head = NormLinearHead(512, 1000)
    assert head.weight.shape == (512, 1000) and head.init == "unit"
    norms = torch.linalg.vector_norm(head.weight, dim=0)
    torch.testing.assert_close(norms, torch.ones(1000), rtol=1e-6, atol=1e-6)
    w = head.weight / norms  # entries of a normalised uniform cube: std 1/sqrt(D) and |w| <= 1/sqrt(D/3)-ish
    assert abs(w.std().item() - 512**-0.5) < 0.002
    # directions are isotropic enough: the mean centre is near the origin
    assert torch.linalg.vector_norm(w.mean(dim=1)).item() < 0.1


def test_normal_init_keeps_insightface_scale_and_changes_the_gradient_scale():
    torch.manual_seed(0)
    unit, normal = NormLinearHead(512, 64, init="unit"), NormLinearHead(512, 64, init="normal")
    assert abs(normal.weight.std().item() - 0.01) < 0.001
    x = torch.randn(32, 512)
    grads = []
    for head in (unit, normal):
        head(x).sum().backward()
        grads.append(head.weight.grad.norm().item())
    # The gradient through the normalisation scales with 1/|W|: |W| = 1 vs ~0.01 sqrt(512) = 0.226.
    assert 3.5 < grads[1] / grads[0] < 5.5


def test_cosines_and_norms_stay_float32_under_autocast():
    head = get_head("mag", 16, 5)
    x = torch.randn(4, 16)
    ref_cos, ref_norms = head(x)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            cos, norms = head(x)
        assert cos.dtype == torch.float32 and norms.dtype == torch.float32
        torch.testing.assert_close(cos, ref_cos)
        torch.testing.assert_close(norms, ref_norms)


def test_initialisation_and_errors():
    head = NormLinearHead(512, 10)
    with pytest.raises(ValueError, match="unknown head type"):
        get_head("arc", 4, 4)
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        get_head("linear", 4, 4, init="xavier")
    with pytest.raises(ValueError, match=r"shape \(B, 512\)"):
        head(torch.randn(2, 128))
