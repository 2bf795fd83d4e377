"""Alignment: Umeyama against an independent least-squares solve and scikit-image; warping."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest

from gbcosface.data.align import (
    ARCFACE_TEMPLATE,
    align_face,
    official_template,
    similarity_transform,
    similarity_transform_official,
)


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


# --- against scikit-image's SimilarityTransform: what the official evaluation runs -------------------


def official_matrix(landmarks: np.ndarray) -> np.ndarray:
    """The official scripts' matrix: skimage's estimate on float32 landmarks and the float32 template."""
    from skimage.transform import SimilarityTransform

    src = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                    [33.5493, 92.3655], [62.7299, 92.2041]], dtype=np.float32)
    src[:, 0] += 8.0
    tform = SimilarityTransform()
    with warnings.catch_warnings():  # `estimate` (what the official scripts call) is deprecated in 0.26
        warnings.simplefilter("ignore", FutureWarning)
        tform.estimate(np.asarray(landmarks, dtype=np.float32), src)
    return tform.params[0:2, :]


def face_landmarks(rng: np.random.Generator) -> np.ndarray:
    """Detector-like landmarks: the template under a random similarity plus a few pixels of noise."""
    truth = similarity(rng.uniform(0.8, 3.0), rng.uniform(-40, 40), rng.uniform(0, 150), rng.uniform(0, 150))
    pts = apply(truth, ARCFACE_TEMPLATE.astype(float)) + rng.normal(0, 2.0, (5, 2))
    return np.round(pts, 3).astype(np.float32)  # IJB files carry 3 decimals, parsed into float32


def test_official_template_is_one_ulp_from_the_decimal_template():
    t = official_template()
    diff = t != ARCFACE_TEMPLATE
    assert diff.sum() == 1 and diff[4, 0]
    assert np.nextafter(ARCFACE_TEMPLATE[4, 0], np.float32(100)) == t[4, 0]


@pytest.mark.parametrize("seed", range(4))
def test_official_path_matrix_is_bit_identical_to_skimage(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        lm = face_landmarks(rng)
        ours = similarity_transform_official(lm, official_template())
        assert np.array_equal(ours, official_matrix(lm)), lm
    mirrored = ARCFACE_TEMPLATE.copy()
    mirrored[:, 0] = 112 - mirrored[:, 0]  # the reflection case
    assert np.array_equal(similarity_transform_official(mirrored, official_template()), official_matrix(mirrored))


def test_align_face_default_reproduces_the_official_crop_and_float64_is_an_option():
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (260, 260, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (0, 0), 1.5)  # smooth, photo-like content
    moved = 0
    for _ in range(20):
        lm = face_landmarks(rng)
        expected = cv2.cvtColor(cv2.warpAffine(img, official_matrix(lm), (112, 112), borderValue=0.0),
                                cv2.COLOR_BGR2RGB)
        out = align_face(img, lm)
        assert np.array_equal(out, expected)
        exact = align_face(img, lm, precision="float64")
        diff = np.abs(exact.astype(int) - out.astype(int)).max()
        assert diff <= 2
        moved += diff > 0
    assert moved > 0  # the float64 solution does move some pixel levels
    with pytest.raises(ValueError, match="precision"):
        align_face(img, face_landmarks(rng), precision="float16")
