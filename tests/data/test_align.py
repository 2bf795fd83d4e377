"""Alignment: Umeyama against an independent 4-parameter least-squares solve, and warping."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from gbcosface.data.align import ARCFACE_TEMPLATE, align_face, similarity_transform


def lstsq_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Independent solve: x' = a x - b y + tx, y' = b x + a y + ty, least squares in (a, b, tx, ty)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, -y, 1, 0])
        rhs.append(u)
        rows.append([y, x, 0, 1])
        rhs.append(v)
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows, float), np.array(rhs, float), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def test_template_values():
    assert ARCFACE_TEMPLATE.shape == (5, 2)
    np.testing.assert_allclose(ARCFACE_TEMPLATE[0], [38.2946, 51.6963], rtol=0, atol=1e-4)
    np.testing.assert_allclose(ARCFACE_TEMPLATE[4], [70.7299, 92.2041], rtol=0, atol=1e-4)


def test_recovers_exact_similarity():
    truth = similarity(0.37, -23.0, 12.5, -4.0)
    src = np.random.default_rng(0).uniform(0, 300, (5, 2))
    np.testing.assert_allclose(similarity_transform(src, apply(truth, src)), truth, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_matches_independent_least_squares_on_noisy_points(seed):
    rng = np.random.default_rng(seed)
    src = rng.uniform(20, 200, (5, 2))
    dst = ARCFACE_TEMPLATE + rng.normal(0, 3, (5, 2))
    np.testing.assert_allclose(similarity_transform(src, dst), lstsq_similarity(src, dst), atol=1e-8)


def test_never_reflects():
    src = ARCFACE_TEMPLATE.astype(float).copy()
    src[:, 0] = 112 - src[:, 0]  # mirrored face: the best orthogonal map would be a reflection
    m = similarity_transform(src, ARCFACE_TEMPLATE)
    assert np.linalg.det(m[:, :2]) > 0
    np.testing.assert_allclose(m, lstsq_similarity(src, ARCFACE_TEMPLATE), atol=1e-8)


def test_degenerate_input():
    with pytest.raises(ValueError, match="identical"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError):
        similarity_transform(np.ones((5, 3)), np.ones((5, 3)))


def test_align_face_puts_landmarks_on_template():
    truth = similarity(2.3, 17.0, 60.0, 35.0)  # template -> loose crop
    landmarks = apply(truth, ARCFACE_TEMPLATE.astype(float))
    img = np.zeros((400, 400, 3), np.uint8)
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]  # BGR
    for (x, y), color in zip(landmarks, colors, strict=True):
        cv2.circle(img, (round(x), round(y)), 9, color, -1)
    out = align_face(img, landmarks)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    for (x, y), color in zip(ARCFACE_TEMPLATE, colors, strict=True):
        assert tuple(out[round(y), round(x)]) == color[::-1]  # RGB now
    # the same warp computed independently
    inverse = lstsq_similarity(landmarks, ARCFACE_TEMPLATE)
    expected = cv2.cvtColor(cv2.warpAffine(img, inverse, (112, 112), borderValue=0), cv2.COLOR_BGR2RGB)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_align_face_border_is_zero_and_size_scales():
    img = np.full((120, 120, 3), 200, np.uint8)
    landmarks = ARCFACE_TEMPLATE * 3.0  # a face larger than the image: the output leaves the source
    out = align_face(img, landmarks)
    assert (out[-1, -1] == 0).all() and (out[0, 0] == 200).all()
    big = align_face(img, ARCFACE_TEMPLATE, size=224)
    assert big.shape == (224, 224, 3) and (big == 200).all()  # template*2 from template: a 2x zoom
    with pytest.raises(ValueError, match="5"):
        align_face(img, np.zeros((4, 2)))
