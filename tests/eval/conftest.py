"""Fixtures for the evaluation tests: a tiny saved backbone, face-like crops, a tiny IJB directory."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gbcosface.data.align import ARCFACE_TEMPLATE

TINY_ARCH = dict(name="iresnet18", embedding_size=16, width=4, layers=[1, 1, 1, 1], stem_stride=2)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def make_tiny_backbone(seed: int = 0):
    from gbcosface.models import get_backbone

    torch.manual_seed(seed)
    model = get_backbone(**TINY_ARCH).eval()
    # Non-trivial BatchNorm statistics so that eval mode differs from train mode.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def tiny_backbone(tmp_path) -> Path:
    """Path of a tiny random iresnet saved with save_backbone (state dict + .json sidecar)."""
    from gbcosface.models import save_backbone

    path = tmp_path / "model" / "backbone.pt"
    save_backbone(make_tiny_backbone(), path)
    return path


def face_image(identity: int, variant: int, size: int = 140) -> np.ndarray:
    """A BGR image whose colours depend on the identity, with per-image noise; landmarks are placed later."""
    rng = np.random.default_rng(1000 * identity + variant)
    base = np.random.default_rng(identity).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    img = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += rng.integers(-25, 26, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def landmarks_for(variant: int, size: int = 140) -> np.ndarray:
    """The template's 5 points moved into a `size` crop with a small per-image similarity jitter."""
    rng = np.random.default_rng(variant)
    angle = rng.uniform(-0.2, 0.2)
    scale = rng.uniform(1.0, 1.2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = (ARCFACE_TEMPLATE - 56.0) @ rot.T * scale + size / 2 + rng.uniform(-4, 4, 2)
    return pts.astype(np.float32)


@pytest.fixture
def make_ijb():
    """make_ijb(root, n_subjects=5, templates_per_subject=4, target='IJBC') -> dict of what was written."""
    return write_tiny_ijb


def write_tiny_ijb(root: Path, n_subjects: int = 5, templates_per_subject: int = 4, target: str = "IJBC") -> dict:
    """Write a tiny IJB directory (images made with cv2, meta with gbcosface.data.ijb's writer).

    Templates mix one-image medias and multi-frame medias. Pairs: every pair of templates
    (t1 < t2), genuine when both show the same subject.
    """
    from gbcosface.data.ijb import write_ijb_meta

    crop = root / "loose_crop"
    crop.mkdir(parents=True, exist_ok=True)
    images, templates, medias, landmarks, det = [], [], [], [], []
    rng = np.random.default_rng(42)
    tid = 100
    for s in range(n_subjects):
        for _ in range(templates_per_subject):
            tid += 3
            n_media = int(rng.integers(1, 3))
            for m in range(n_media):
                frames = int(rng.integers(1, 3))
                for _ in range(frames):
                    k = len(images)
                    name = f"{k}.jpg"
                    ok, buf = cv2.imencode(".jpg", face_image(s, k), [cv2.IMWRITE_JPEG_QUALITY, 90])
                    assert ok
                    (crop / name).write_bytes(buf.tobytes())
                    images.append(name)
                    templates.append(tid)
                    medias.append(5000 + 10 * tid + m)
                    landmarks.append(landmarks_for(k))
                    det.append(float(rng.uniform(0.5, 1.0)))
    subject_of = {t: (t - 103) // 3 // templates_per_subject for t in set(templates)}
    uniq = sorted(set(templates))
    t1, t2, lab = [], [], []
    for i, a in enumerate(uniq):
        for b in uniq[i + 1:]:
            t1.append(a)
            t2.append(b)
            lab.append(int(subject_of[a] == subject_of[b]))
    fields = dict(images=images, templates=np.array(templates), medias=np.array(medias),
                  landmarks=np.array(landmarks), det_scores=np.array(det, np.float32),
                  pair_t1=np.array(t1), pair_t2=np.array(t2), pair_label=np.array(lab))
    write_ijb_meta(root, target, **fields)
    return fields
