"""The device decode + batched warp (eval/gpu_align.py) against cv2, on the CPU."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from gbcosface.data.align import align_face
from gbcosface.eval import features as fx
from gbcosface.eval.gpu_align import align_matrices, decode_images, warp_faces

from .conftest import face_image, landmarks_for

# The stated tolerance (module docstring of gpu_align): after rounding both to uint8.
MEAN_TOL, MAX_TOL = 0.01, 1


def crops(n=12, seed=0):
    """Face-like BGR crops of different sizes with landmarks (some near the border, so the zero border shows)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        size = int(rng.integers(120, 260))
        img = cv2.resize(face_image(k % 4, k), (size, int(size * rng.uniform(0.8, 1.25))))
        lm = landmarks_for(k, size=140) * (size / 140.0)
        if k % 5 == 0:
            lm = lm + np.array([size * 0.3, 0.0], np.float32)  # face pushed right: the warp reads past the edge
        out.append((img, lm.astype(np.float32)))
    return out


def test_warp_matches_cv2_warp_affine_within_the_stated_tolerance():
    items = crops()
    want = np.stack([align_face(img, lm) for img, lm in items]).astype(np.int16)  # RGB (N, 112, 112, 3)
    rgb = [torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))) for img, _ in items]
    got = warp_faces(rgb, align_matrices(np.stack([lm for _, lm in items])))
    got = got.permute(0, 2, 3, 1).numpy().astype(np.int16)
    diff = np.abs(got - want)
    assert diff.mean() <= MEAN_TOL and diff.max() <= MAX_TOL, (diff.mean(), diff.max())
    assert (want == 0).any(axis=-1).sum() > 100  # the zero border was exercised
    # groups of bounded memory (other padding, so float rounding may tip a .5 over) give the same image
    again = warp_faces(rgb, align_matrices(np.stack([lm for _, lm in items])), group_bytes=1)
    step = np.abs(again.permute(0, 2, 3, 1).numpy() - got)
    assert step.max() <= 1 and step.mean() < 1e-3


def test_identity_map_reproduces_the_image():
    img = torch.randint(0, 256, (3, 112, 112), dtype=torch.uint8)
    eye = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    out = warp_faces([img], eye)
    assert torch.equal(out[0], img.float())


def test_decode_matches_cv2_and_flags_bad_files():
    items = crops(4)
    blobs = [cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1] for img, _ in items]
    data = [torch.from_numpy(b.ravel().copy()) for b in blobs] + [torch.tensor([1, 2, 3], dtype=torch.uint8)]
    imgs, ok = decode_images(data, "cpu")
    assert ok == [True] * 4 + [False] and imgs[-1] is None
    for b, im in zip(blobs, imgs[:4], strict=True):
        ref = cv2.imdecode(b, cv2.IMREAD_COLOR)[:, :, ::-1].transpose(2, 0, 1).astype(np.int16)
        assert np.abs(im.numpy().astype(np.int16) - ref).max() <= 2


def test_device_decode_path_embeds_like_the_cv2_path(tmp_path, make_ijb):
    """extract_features(decode="device") on the CPU: same statuses, features within what the warp rounding moves."""
    from .conftest import make_tiny_backbone

    root = tmp_path / "IJBC"
    fields = make_ijb(root, n_subjects=3, templates_per_subject=2)
    (root / "loose_crop" / fields["images"][1]).write_bytes(b"broken")
    model = make_tiny_backbone()
    kw = dict(views=("image", "flip"), batch_size=5, device="cpu", workers=0, progress_bar=False)
    a = fx.extract_features(model, root, fields["images"], fields["landmarks"], **kw)
    b = fx.extract_features(model, root, fields["images"], fields["landmarks"], decode="device", **kw)
    np.testing.assert_array_equal(a.status, b.status)
    assert a.status[1] == fx.UNREADABLE and b.info["decode"] == "device"
    for v in ("image", "flip"):
        fa, fb = a.views[v], b.views[v]
        cos = (fa * fb).sum(1) / np.maximum(np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1), 1e-12)
        ok = a.status == fx.OK
        assert cos[ok].min() > 0.999, cos[ok].min()
        assert not fb[~ok].any()


def test_bf16_and_channels_last_options_run_and_are_recorded(tmp_path, make_ijb):
    from .conftest import make_tiny_backbone

    root = tmp_path / "IJBC"
    fields = make_ijb(root, n_subjects=2, templates_per_subject=1)
    model = make_tiny_backbone()
    kw = dict(batch_size=8, device="cpu", workers=0, progress_bar=False)
    ref = fx.extract_features(model, root, fields["images"], fields["landmarks"], **kw)
    cl = fx.extract_features(model, root, fields["images"], fields["landmarks"], channels_last=True, **kw)
    bf = fx.extract_features(model, root, fields["images"], fields["landmarks"], bf16=True, **kw)
    np.testing.assert_allclose(cl.views["image"], ref.views["image"], rtol=1e-4, atol=1e-4)
    assert bf.info["precision"] == "bf16" and ref.info["precision"] == "fp32" and cl.info["channels_last"]
    cos = (bf.views["image"] * ref.views["image"]).sum(1) / (
        np.linalg.norm(bf.views["image"], axis=1) * np.linalg.norm(ref.views["image"], axis=1))
    assert cos.min() > 0.98
    with pytest.raises(ValueError, match="decode must be one of"):
        fx.extract_features(model, root, fields["images"], fields["landmarks"], decode="nvjpeg", **kw)
