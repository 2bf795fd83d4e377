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


def test_initialisation_and_errors():
    head = NormLinearHead(512, 1000)
    assert head.weight.shape == (512, 1000)
    assert abs(head.weight.std().item() - 0.01) < 0.001
    with pytest.raises(ValueError, match="unknown head type"):
        get_head("arc", 4, 4)
    with pytest.raises(ValueError, match=r"shape \(B, 512\)"):
        head(torch.randn(2, 128))
