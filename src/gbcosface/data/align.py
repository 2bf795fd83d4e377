"""Face alignment to insightface's 112x112 ArcFace template (docs/formats.md, "IJB-B / IJB-C").

Why two precisions: every published IJB number was computed by scikit-image's SimilarityTransform
(Umeyama's least squares, no reflection) on float32 landmarks and a float32 template written as
(30.2946 + 8.0, ...), whose first coordinates lie one float32 ulp from float32(38.2946). The default,
`precision="official"`, reproduces that path operation for operation (float32 means, covariance and
SVD; the scale and translation as scikit-image composes them), so the matrices, and the warped
pixels, are bit-identical to the official evaluation (tests/data/test_align.py checks it against
scikit-image, a test dependency only). `precision="float64"` is the exact least-squares solution in
float64 with the template's decimal constants; it moves most crops by +-1 pixel level
(docs/reproducing.md has the figures).
"""

from __future__ import annotations

import cv2
import numpy as np

# Left eye, right eye, nose tip, left mouth corner, right mouth corner in a 112x112 crop.
TEMPLATE_DECIMAL = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
ARCFACE_TEMPLATE = np.array(TEMPLATE_DECIMAL, dtype=np.float32)


# The same points in a 96x112 crop: the official scripts start from these and add 8 to x in float32.
TEMPLATE_96_DECIMAL = (
    (30.2946, 51.6963),
    (65.5318, 51.5014),
    (48.0252, 71.7366),
    (33.5493, 92.3655),
    (62.7299, 92.2041),
)


def official_template() -> np.ndarray:
    """The template as the official scripts build it: float32 96-px points, x + 8.0 in float32.

    It differs from float32(TEMPLATE_DECIMAL) in one coordinate by one ulp (70.7299: 62.7299 + 8).
    """
    t = np.array(TEMPLATE_96_DECIMAL, dtype=np.float32)
    t[:, 0] += np.float32(8.0)
    return t


PRECISIONS = ("official", "float64")


def _check_points(src: np.ndarray, dst: np.ndarray) -> None:
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"need two (K, 2) point sets with K >= 2, got {src.shape} and {dst.shape}")


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The (2, 3) float64 similarity (rotation, uniform scale, translation) mapping `src` onto `dst`.

    Umeyama (1991) in float64: least squares over rotations (reflections excluded) and scales.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    _check_points(src, dst)
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc**2).sum() / n
    if var_s <= 0:
        raise ValueError("source points are all identical: no similarity transform is defined")
    cov = dc.T @ sc / n
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0  # the best orthogonal map would be a reflection: take the best rotation instead
    rot = u @ np.diag(d) @ vt
    scale = (sv * d).sum() / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def similarity_transform_official(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The (2, 3) matrix scikit-image's SimilarityTransform.estimate gives for float32 points.

    The same least squares, in the order and precision of that implementation: float32 means,
    centred points and covariance A; its SVD in float32; the reflection test on det(A); the rotation
    U diag(d) V and the scale (1 / sum(var(src))) * (S . d) promoted to float64; the translation
    mean(dst) - scale R mean(src); then R scaled. Identical bits need identical operations.
    """
    src = np.asarray(src, dtype=np.float32)
    dst = np.asarray(dst, dtype=np.float32)
    _check_points(src, dst)
    n = src.shape[0]
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / n
    d = np.ones(2, dtype=np.float64)
    if np.linalg.det(cov) < 0:
        d[1] = -1.0
    u, sv, vt = np.linalg.svd(cov)
    tol = sv.max() * max(cov.shape) * np.finfo(float).eps
    rank = int(np.count_nonzero(sv > tol))
    if rank == 0:
        raise ValueError("source points are all identical: no similarity transform is defined")
    if rank == 1 and np.linalg.det(u) * np.linalg.det(vt) > 0:
        rot = u @ vt
    elif rank == 1:
        rot = u @ np.diag([d[0], -1.0]) @ vt
    else:
        rot = u @ np.diag(d) @ vt
    scale = 1.0 / sc.var(axis=0).sum() * (sv @ d)
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, 2] = mu_d - scale * (rot @ mu_s.T)
    matrix[:, :2] = rot * scale
    return matrix


def align_face(img_bgr: np.ndarray, landmarks: np.ndarray, size: int = 112, precision: str = "official") -> np.ndarray:
    """Warp a BGR image so that its 5 landmarks land on the template; return RGB uint8 (size, size, 3).

    `precision`: "official" (default, the official evaluation's float32 path) or "float64" (see the
    module docstring). For size != 112 the template is scaled by size/112. Pixels outside the source are 0.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown alignment precision {precision!r} (known: {', '.join(PRECISIONS)})")
    lm = np.asarray(landmarks).reshape(-1, 2)
    if lm.shape != (5, 2):
        raise ValueError(f"expected 5 (x, y) landmarks, got shape {np.shape(landmarks)}")
    if img_bgr.ndim != 3 or img_bgr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) BGR image, got shape {img_bgr.shape}")
    if precision == "official":
        template = official_template()
        if size != 112:
            template = template * np.float32(size / 112.0)
        matrix = similarity_transform_official(lm.astype(np.float32), template)
    else:
        template = np.array(TEMPLATE_DECIMAL, dtype=np.float64) * (size / 112.0)
        matrix = similarity_transform(lm.astype(np.float64), template)
    warped = cv2.warpAffine(img_bgr, matrix, (size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.cvtColor(warped, cv2.COLOR_BGR2RGB)
