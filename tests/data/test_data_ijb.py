"""IJB-B/C metadata reader/writer and image helpers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from gbcosface.data.align import ARCFACE_TEMPLATE, align_face
from gbcosface.data.errors import DataFormatError
from gbcosface.data.ijb import (
    image_path,
    load_aligned,
    load_ijb_image,
    meta_paths,
    read_ijb_meta,
    write_ijb_meta,
)


def _fields(n_images=7, n_pairs=11, seed=0):
    rng = np.random.default_rng(seed)
    templates = rng.integers(100, 104, n_images)
    return dict(
        images=[f"img_{i}.jpg" for i in range(n_images)],
        templates=templates,
        medias=rng.integers(5000, 5003, n_images),
        landmarks=rng.uniform(10, 150, (n_images, 5, 2)).astype(np.float32),
        det_scores=rng.uniform(0, 1, n_images).astype(np.float32),
        pair_t1=rng.choice(templates, n_pairs),
        pair_t2=rng.choice(templates, n_pairs),
        pair_label=rng.integers(0, 2, n_pairs),
    )


def test_round_trip_against_naive_parse(tmp_path):
    f = _fields()
    write_ijb_meta(tmp_path, "IJBC", **f)
    tid, pts, pairs = meta_paths(tmp_path, "ijbc")
    assert tid == tmp_path / "meta" / "ijbc_face_tid_mid.txt"
    assert pts.name == "ijbc_name_5pts_score.txt" and pairs.name == "ijbc_template_pair_label.txt"
    meta = read_ijb_meta(tmp_path, "IJBC")
    # independent parse of the text
    tid_rows = [line.split() for line in tid.read_text().splitlines()]
    pts_rows = [line.split() for line in pts.read_text().splitlines()]
    pair_rows = [line.split() for line in pairs.read_text().splitlines()]
    assert meta.images == [r[0] for r in tid_rows] == f["images"]
    assert meta.templates.tolist() == [int(r[1]) for r in tid_rows] == f["templates"].tolist()
    assert meta.medias.tolist() == [int(r[2]) for r in tid_rows] == f["medias"].tolist()
    naive_lm = np.array([[float(v) for v in r[1:11]] for r in pts_rows], np.float32).reshape(-1, 5, 2)
    assert meta.landmarks.dtype == np.float32 and meta.landmarks.shape == (7, 5, 2)
    assert np.array_equal(meta.landmarks, naive_lm) and np.array_equal(meta.landmarks, f["landmarks"])
    assert np.array_equal(meta.det_scores, f["det_scores"])  # float32 values survive bit-exactly
    assert meta.pair_t1.tolist() == [int(r[0]) for r in pair_rows] == f["pair_t1"].tolist()
    assert meta.pair_t2.tolist() == f["pair_t2"].tolist() and meta.pair_label.tolist() == f["pair_label"].tolist()


def test_reads_release_style_text(tmp_path):
    meta_dir = tmp_path / "meta"
    meta_dir.mkdir()
    (meta_dir / "ijbb_face_tid_mid.txt").write_text("1.jpg 1 69544\n2.jpg 1 69544\n3.jpg 2 7\n")
    (meta_dir / "ijbb_name_5pts_score.txt").write_text(
        "1.jpg 46.060 62.026 87.785 60.323 68.851 77.656 52.162 99.875 86.047 98.400 0.999\n"
        "2.jpg 1 2 3 4 5 6 7 8 9 10 0.5\n"
        "3.jpg 1 2 3 4 5 6 7 8 9 10 0.25\n"
    )
    (meta_dir / "ijbb_template_pair_label.txt").write_text("1 2 0\n2 2 1\n")
    meta = read_ijb_meta(tmp_path, "ijbb")
    assert meta.templates.tolist() == [1, 1, 2] and meta.medias.tolist() == [69544, 69544, 7]
    np.testing.assert_allclose(meta.landmarks[0, 1], [87.785, 60.323], rtol=1e-6)
    assert meta.det_scores.tolist() == pytest.approx([0.999, 0.5, 0.25])
    assert meta.pair_label.tolist() == [0, 1]


@pytest.mark.parametrize(
    "which, text, message",
    [
        ("tid", "img_0.jpg 100 5000\nimg_1.jpg 100\n", r"ijbc_face_tid_mid\.txt:2: expected 'name template_id media_id' \(3 fields\), got 2"),
        ("tid", "img_0.jpg 100 5000\nimg_1.jpg x 5000\n", r"ijbc_face_tid_mid\.txt:2: expected .*non-numeric"),
        ("tid", "img_0.jpg 100 5000\n\nimg_1.jpg 100 5000\n", r"ijbc_face_tid_mid\.txt:2: empty line"),
        ("pts", "img_0.jpg 1 2 3 4 5 6 7 8 9 10 0.5\nimg_1.jpg 1 2 3\n", r"ijbc_name_5pts_score\.txt:2: expected .*12 fields"),
        ("pts", "img_0.jpg 1 2 3 4 5 6 7 8 9 10 0.5\nimg_9.jpg 1 2 3 4 5 6 7 8 9 10 0.5\n", r"ijbc_name_5pts_score\.txt:2: image 'img_9\.jpg' but .*ijbc_face_tid_mid\.txt:2 has 'img_1\.jpg'"),
        ("pts", "img_0.jpg 1 2 3 4 5 6 7 8 9 10 0.5\n", r"ijbc_name_5pts_score\.txt: 1 lines but"),
        ("pairs", "100 100 1\n100 100\n", r"ijbc_template_pair_label\.txt:2: expected 'template1 template2 label'"),
        ("pairs", "100 100 1\n100 100 2\n", r"ijbc_template_pair_label\.txt:2: label must be 0 or 1"),
        ("pairs", "100 100 1\n100 999 0\n", r"ijbc_template_pair_label\.txt:2: template 999 has no image"),
        ("pairs", "100 100 1\n  \n100 100 1\n", r"ijbc_template_pair_label\.txt:2: expected"),
    ],
)
def test_malformed_meta_names_file_and_line(tmp_path, which, text, message):
    f = _fields(n_images=2)
    f["templates"] = np.array([100, 100])
    f["pair_t1"] = f["pair_t2"] = np.array([100])
    f["pair_label"] = np.array([1])
    write_ijb_meta(tmp_path, "ijbc", **f)
    tid, pts, pairs = meta_paths(tmp_path, "ijbc")
    {"tid": tid, "pts": pts, "pairs": pairs}[which].write_text(text)
    with pytest.raises(DataFormatError, match=message):
        read_ijb_meta(tmp_path, "ijbc")


def test_missing_meta_file_and_bad_target(tmp_path):
    with pytest.raises(DataFormatError, match=r"ijbb_face_tid_mid\.txt: IJB meta file not found"):
        read_ijb_meta(tmp_path, "IJBB")
    with pytest.raises(ValueError, match="ijbb, ijbc"):
        read_ijb_meta(tmp_path, "lfw")


def test_image_helpers(tmp_path):
    f = _fields(n_images=2)
    landmarks = ARCFACE_TEMPLATE * 1.5 + 10
    f["landmarks"] = np.stack([landmarks, landmarks])
    write_ijb_meta(tmp_path, "ijbc", **f)
    meta = read_ijb_meta(tmp_path, "ijbc")
    assert image_path(tmp_path, "img_0.jpg") == Path(tmp_path) / "loose_crop" / "img_0.jpg"
    (tmp_path / "loose_crop").mkdir()
    img = np.random.default_rng(0).integers(0, 256, (200, 220, 3), dtype=np.uint8)
    cv2.imwrite(str(image_path(tmp_path, "img_0.jpg")), img)
    loaded = load_ijb_image(tmp_path, "img_0.jpg")
    assert loaded.shape == (200, 220, 3)
    aligned = load_aligned(tmp_path, meta, 0)
    assert np.array_equal(aligned, align_face(loaded, meta.landmarks[0]))
    with pytest.raises(DataFormatError, match=r"loose_crop/img_1\.jpg: IJB image 'img_1\.jpg' not found"):
        load_aligned(tmp_path, meta, 1)
    image_path(tmp_path, "img_1.jpg").write_bytes(b"not an image")
    with pytest.raises(DataFormatError, match=r"loose_crop/img_1\.jpg: IJB image 'img_1\.jpg' could not be decoded"):
        load_ijb_image(tmp_path, "img_1.jpg")
