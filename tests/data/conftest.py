"""Fixtures for the data tests: JPEG makers, small training sets, and the mxnet interpreter."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def make_jpeg():
    """make_jpeg(seed, size=112, quality=90) -> JPEG bytes of a smooth random colour image."""

    def make(seed: int, size: int = 112, quality: int = 90) -> bytes:
        rng = np.random.default_rng(seed)
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        return buf.tobytes()

    return make


@pytest.fixture
def make_train_dir(make_jpeg):
    """make_train_dir(path, images_per_class=[...], size=112) -> path of an insightface-style set.

    Labels are grouped 0..C-1; image k (1-based key) is make_jpeg(k).
    """
    from gbcosface.data.recordio import write_face_rec

    def make(path: Path, images_per_class=(3, 2, 4), size: int = 112, bad_keys=()) -> Path:
        labels = [c for c, n in enumerate(images_per_class) for _ in range(n)]

        def samples():
            for k, label in enumerate(labels, 1):
                yield label, (b"\xff\xd8 not a jpeg" if k in bad_keys else make_jpeg(k, size))

        write_face_rec(path, samples(), len(labels), len(images_per_class), (size, size))
        return path

    return make


@pytest.fixture(scope="session")
def mxnet_python() -> str:
    """The interpreter of the separate mxnet venv (`make mxnet-venv`); a missing venv fails the test."""
    python = Path(os.environ.get("GBCOSFACE_MXNET_PYTHON", REPO / ".venv-mxnet" / "bin" / "python"))
    if not python.exists():
        pytest.fail(
            f"mxnet interoperability tests need {python}: run `make mxnet-venv` "
            "(mxnet 1.9.1 + numpy 1.23.5 in its own venv), or set GBCOSFACE_MXNET_PYTHON"
        )
    return str(python)
