"""Face alignment to insightface's 112x112 ArcFace template (ALGORITHMS.md section 6).

Why our own Umeyama: every published IJB number assumes this exact similarity transform (least squares,
no reflection), and the project does not depend on scikit-image; the closed form is short.
"""

from __future__ import annotations

import cv2
import numpy as np

# Left eye, right eye, nose tip, left mouth corner, right mouth corner in a 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The (2, 3) similarity (rotation, uniform scale, translation) mapping `src` onto `dst`.

    Umeyama (1991): least squares over rotations (reflections excluded) and scales.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"need two (K, 2) point sets with K >= 2, got {src.shape} and {dst.shape}")
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


def align_face(img_bgr: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp a BGR image so that its 5 landmarks land on the template; return RGB uint8 (size, size, 3).

    For size != 112 the template is scaled by size/112. Pixels outside the source are 0.
    """
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if lm.shape != (5, 2):
        raise ValueError(f"expected 5 (x, y) landmarks, got shape {np.shape(landmarks)}")
    if img_bgr.ndim != 3 or img_bgr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) BGR image, got shape {img_bgr.shape}")
    matrix = similarity_transform(lm, ARCFACE_TEMPLATE.astype(np.float64) * (size / 112.0))
    warped = cv2.warpAffine(img_bgr, matrix, (size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.cvtColor(warped, cv2.COLOR_BGR2RGB)
