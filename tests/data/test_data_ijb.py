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
    meta_paths_1n,
    read_ijb_1n_meta,
    read_ijb_1n_set,
    read_ijb_meta,
    write_ijb_1n_meta,
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


# ---------------------------------------------------------------------------------------------------------
# 1:N files

NIST_HEAD = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT"


def test_1n_set_reads_nist_rows_one_per_image(tmp_path):
    """The NIST layout: a header, one row per image, so templates repeat; only the first two columns count."""
    path = tmp_path / "ijbc_1N_gallery_G1.csv"
    path.write_text(f"{NIST_HEAD}\n11,7,img/1.jpg,1,10,20,30,40\n5,3,frames/2_1.png,2,1,2,3,4\n"
                    "11,7,img/9.jpg,3,1,1,1,1\n8,9,img/3.jpg,,,,,\r\n")
    s = read_ijb_1n_set(path)
    assert s.templates.tolist() == [5, 8, 11] and s.subjects.tolist() == [3, 9, 7] and s.lines.tolist() == [3, 5, 2]


def test_1n_paths_name_the_real_files():
    assert {k: p.name for k, p in meta_paths_1n("R", "IJBC").items()} == {
        "G1": "ijbc_1N_gallery_G1.csv", "G2": "ijbc_1N_gallery_G2.csv", "probe": "ijbc_1N_probe_mixed.csv"}
    assert {k: p.name for k, p in meta_paths_1n("R", "ijbb").items()} == {
        "S1": "ijbb_1N_gallery_S1.csv", "S2": "ijbb_1N_gallery_S2.csv", "probe": "ijbb_1N_probe_mixed.csv"}


@pytest.mark.parametrize("text, message", [
    ("11,7,a.jpg\n", r":1: expected a header starting TEMPLATE_ID,SUBJECT_ID"),
    (f"{NIST_HEAD}\n11,7,a.jpg\n12,x,b.jpg\n", r":3: expected integer TEMPLATE_ID,SUBJECT_ID"),
    (f"{NIST_HEAD}\n11,7,a.jpg\n12\n", r":3: expected integer TEMPLATE_ID,SUBJECT_ID"),
    (f"{NIST_HEAD}\n11,7,a.jpg\n12,8,b.jpg\n11,9,c.jpg\n", r":4: template 11 has subject 9, but line 2 gives it subject 7"),
    (f"{NIST_HEAD}\n11,7,a.jpg\n\n12,8,b.jpg\n", r":3: empty line"),
])
def test_1n_malformed_rows_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "ijbc_1N_probe_mixed.csv"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=rf"{path}{message}"):
        read_ijb_1n_set(path)


def test_1n_meta_round_trip_and_cross_checks(tmp_path):
    galleries = {"G1": (np.array([3, 1]), np.array([30, 10])), "G2": (np.array([2]), np.array([20]))}
    probes = (np.array([4, 5, 6]), np.array([10, 20, 40]))
    write_ijb_1n_meta(tmp_path, "IJBC", galleries, probes, filenames={3: ["a.jpg", "b.jpg"], 4: ["c.jpg"]})
    m = read_ijb_1n_meta(tmp_path, "ijbc", known_templates=np.arange(1, 7))
    assert m.galleries["G1"].templates.tolist() == [1, 3] and m.galleries["G1"].subjects.tolist() == [10, 30]
    assert m.probes.templates.tolist() == [4, 5, 6] and m.probes.subjects.tolist() == [10, 20, 40]
    assert (tmp_path / "meta" / "ijbc_1N_gallery_G1.csv").read_text().splitlines()[1:3] == [
        "3,30,a.jpg,,,,,", "3,30,b.jpg,,,,,"]
    g2 = meta_paths_1n(tmp_path, "ijbc")["G2"]
    with pytest.raises(DataFormatError, match=rf"{meta_paths_1n(tmp_path, 'ijbc')['probe']}:4: template 6 has no image"):
        read_ijb_1n_meta(tmp_path, "ijbc", known_templates=np.arange(1, 6))
    g2.write_text(f"{NIST_HEAD}\n2,20,x.jpg\n7,20,y.jpg\n")
    with pytest.raises(DataFormatError, match=rf"{g2}:3: subject 20 has a second gallery template"):
        read_ijb_1n_meta(tmp_path, "ijbc")
    g2.unlink()
    with pytest.raises(DataFormatError, match=rf"{g2}: IJB meta file not found"):
        read_ijb_1n_meta(tmp_path, "ijbc")
    with pytest.raises(ValueError, match="galleries are"):
        write_ijb_1n_meta(tmp_path, "IJBB", galleries, probes)
