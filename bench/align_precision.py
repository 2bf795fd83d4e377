"""How far the float64 alignment moves crops from the official float32 path (docs/reproducing.md).

Warps N smooth synthetic images with detector-like landmarks (the template under a random similarity,
2 px of noise, 3 decimals as in the IJB files) both ways and prints how many crops differ, by how many
levels, and in what fraction of their pixel values.

    .venv/bin/python bench/align_precision.py [N]
"""

from __future__ import annotations

import math
import platform
import sys

import cv2
import numpy as np
from _machine import cpu_model

from gbcosface.data.align import ARCFACE_TEMPLATE, align_face


def similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def main(n: int) -> None:
    rng = np.random.default_rng(11)
    img = cv2.GaussianBlur(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8), (0, 0), 1.5)
    moved, worst, fractions = 0, 0, []
    for _ in range(n):
        m = similarity(rng.uniform(0.8, 2.5), rng.uniform(-40, 40), rng.uniform(0, 100), rng.uniform(0, 100))
        lm = ARCFACE_TEMPLATE.astype(float) @ m[:, :2].T + m[:, 2] + rng.normal(0, 2.0, (5, 2))
        lm = np.round(lm, 3).astype(np.float32)
        diff = np.abs(align_face(img, lm).astype(int) - align_face(img, lm, precision="float64").astype(int))
        moved += int(diff.max() > 0)
        worst = max(worst, int(diff.max()))
        fractions.append(float((diff > 0).mean()))
    print(f"machine: {platform.machine()} {cpu_model()}; numpy {np.__version__}, opencv {cv2.__version__}")
    print(f"{moved}/{n} crops differ; max level difference {worst}; "
          f"mean fraction of differing pixel values {np.mean(fractions):.4%}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
