"""The synthetic world on disk: formats readable by the project's readers, determinism, disjointness."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from gbcosface.data.align import ARCFACE_TEMPLATE, similarity_transform
from gbcosface.data.bin_sets import load_bin
from gbcosface.data.ijb import load_ijb_image, read_ijb_1n_meta, read_ijb_meta
from gbcosface.data.recordio import IndexedRecordReader, read_face_layout, read_property, unpack
from gbcosface.data.synthetic.identity import make_identity
from gbcosface.data.synthetic.world import (
    BIN_SETS,
    WorldSpec,
    _Ctx,
    _render_crop_job,
    bin_pairs,
    generate_world,
    ijb_layout,
    load_world,
    sha256_file,
    train_jobs,
)

TINY = WorldSpec(seed=5, identities=6, images_per_identity=3, eval_identities=5, templates_per_identity=3,
                 pairs=10, bin_identities=4, impostor_pairs=50, difficulty=0.5, crop_min=150, crop_max=200)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, TINY, workers=1)
    return out


def test_layout_and_world_json(world):
    for rel in ("train/train.rec", "train/train.idx", "train/property", "val/lfw.bin", "val/cfp_fp.bin",
                "val/agedb_30.bin", "IJBC/meta/ijbc_face_tid_mid.txt", "IJBC/meta/ijbc_name_5pts_score.txt",
                "IJBC/meta/ijbc_template_pair_label.txt", "IJBC/meta/ijbc_1N_gallery_G1.csv",
                "IJBC/meta/ijbc_1N_gallery_G2.csv", "IJBC/meta/ijbc_1N_probe_mixed.csv", "world.json"):
        assert (world / rel).is_file(), rel
    info = load_world(world)
    assert info["seed"] == TINY.seed and info["spec"] == dataclasses.asdict(TINY)
    assert info["code_version"] and info["generator_version"] >= 1
    for rel, entry in info["files"].items():
        if rel.endswith("/"):
            assert entry["files"] == len(list((world / rel).iterdir()))
        else:
            assert sha256_file(world / rel) == entry["sha256"], rel
    assert not list(world.glob(".synth-staging-*"))


def test_training_set_is_an_insightface_record_file(world):
    c, k = TINY.identities, TINY.images_per_identity
    n = c * k
    assert read_property(world / "train") == (c, 112, 112)
    with IndexedRecordReader(world / "train/train.idx", world / "train/train.rec") as reader:
        head, payload = unpack(reader.read(0))
        assert head.flag == 2 and payload == b""
        assert np.asarray(head.label).tolist() == [n + 1, n + 1 + c]
        layout = read_face_layout(reader)
        assert layout.has_header and layout.num_identities == c
        assert layout.image_keys.tolist() == list(range(1, n + 1))
        # identity i owns keys [1 + i*k, 1 + (i+1)*k), and every image there is labelled i
        assert layout.identity_ranges.tolist() == [[1 + i * k, 1 + (i + 1) * k] for i in range(c)]
        for i, (start, end) in enumerate(layout.identity_ranges.tolist()):
            for key in range(start, end):
                h, jpeg = unpack(reader.read(key))
                assert h.flag == 0 and int(h.label) == i
                img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                assert img.shape == (112, 112, 3)


def test_bin_sets_load_with_half_genuine_pairs(world):
    info = load_world(world)
    for name in BIN_SETS:
        b = load_bin(world / "val" / f"{name}.bin")
        assert b.images.shape == (2 * TINY.pairs, 3, 112, 112)
        assert len(b.issame) == TINY.pairs and int(b.issame.sum()) == TINY.pairs // 2
        assert info["counts"][f"{name}_pairs"] == TINY.pairs
        # genuine pairs are two different photos
        assert all(not np.array_equal(b.images[2 * i], b.images[2 * i + 1]) for i in range(TINY.pairs))


def test_bin_pairs_follow_issame():
    for name in BIN_SETS:
        jobs, issame = bin_pairs(TINY, name)
        for i, same in enumerate(issame):
            assert (jobs[2 * i][1] == jobs[2 * i + 1][1]) == same
            assert jobs[2 * i][2] != jobs[2 * i + 1][2]  # never the same image twice


def test_ijb_directory_reads_back_and_is_consistent(world):
    meta = read_ijb_meta(world / "IJBC", "ijbc")
    lay = ijb_layout(TINY)
    n_templates = TINY.eval_identities * TINY.templates_per_identity
    assert len(np.unique(meta.templates)) == n_templates
    assert len(meta.images) == len(lay.jobs) == load_world(world)["counts"]["ijbc_images"]
    # templates are made of medias, some of several frames; each media belongs to one template
    media_template = {}
    for t, m in zip(meta.templates.tolist(), meta.medias.tolist(), strict=True):
        assert media_template.setdefault(m, t) == t
    assert len(media_template) > n_templates  # some templates hold more than one media
    assert len(media_template) < len(meta.images)  # some medias hold more than one frame
    # pairs: every genuine template pair of an identity, impostors capped, no duplicates
    pairs = list(zip(meta.pair_t1.tolist(), meta.pair_t2.tolist(), strict=True))
    assert len(set(pairs)) == len(pairs)
    genuine = int(meta.pair_label.sum())
    assert genuine == TINY.eval_identities * 3  # C(3, 2) per identity
    assert int((meta.pair_label == 0).sum()) == TINY.impostor_pairs
    for (a, b), label in zip(pairs, meta.pair_label.tolist(), strict=True):
        assert (lay.template_identity[a] == lay.template_identity[b]) == bool(label)
    # images: loose crops larger than 112 with landmarks inside and detector scores in (0, 1)
    assert ((meta.det_scores > 0) & (meta.det_scores < 1)).all()
    for i, name in enumerate(meta.images):
        img = load_ijb_image(world / "IJBC", name)
        h, w = img.shape[:2]
        assert TINY.crop_min <= h <= TINY.crop_max and TINY.crop_min <= w <= TINY.crop_max
        lm = meta.landmarks[i]
        assert (lm[:, 0] > -5).all() and (lm[:, 0] < w + 5).all() and (lm[:, 1] > -5).all() and (lm[:, 1] < h + 5).all()


def test_ijb_landmarks_are_the_rendered_landmarks_plus_detector_noise(world):
    """The written landmarks match the face's true landmarks in each crop, within detector noise."""
    meta = read_ijb_meta(world / "IJBC", "ijbc")
    lay = ijb_layout(TINY)
    ctx = _Ctx(TINY.seed, TINY.spread, TINY.nuisance_scale, TINY.crop_min, TINY.crop_max)
    template = ARCFACE_TEMPLATE.astype(np.float64)
    for i in range(0, len(lay.jobs), 3):
        job = lay.jobs[i]
        jpeg, lm, score = _render_crop_job(ctx, make_identity(TINY.seed, job[1], TINY.spread), job[2], job[3])
        assert jpeg == (world / "IJBC/loose_crop" / meta.images[i]).read_bytes()
        assert np.array_equal(lm, meta.landmarks[i]) and np.float32(score) == meta.det_scores[i]
        # a similarity maps the landmarks onto the template up to pose distortion and detector noise
        s = similarity_transform(meta.landmarks[i], template)
        mapped = meta.landmarks[i] @ s[:, :2].T + s[:, 2]
        assert np.abs(mapped - template).mean() < 8.0


def test_identities_are_disjoint_between_training_and_evaluation():
    blocks = TINY.identity_blocks()
    ranges = sorted(blocks.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    used = {"train": {j[1] for j in train_jobs(TINY)}, "ijbc": {j[1] for j in ijb_layout(TINY).jobs}}
    for name in BIN_SETS:
        used[name] = {j[1] for j in bin_pairs(TINY, name)[0]}
    for name, ids in used.items():
        lo, hi = blocks[name]
        assert ids and all(lo <= i < hi for i in ids), name
    prints = {name: {make_identity(TINY.seed, i, TINY.spread).fingerprint() for i in ids} for name, ids in used.items()}
    for name in used:
        if name != "train":
            assert not prints["train"] & prints[name], name


def test_same_seed_same_bytes_any_worker_count(world, tmp_path):
    again = generate_world(tmp_path / "again", TINY, workers=2)
    first = load_world(world)
    assert again["files"] == first["files"] and again["digest"] == first["digest"]
    assert (tmp_path / "again/world.json").read_bytes() == (world / "world.json").read_bytes()


def test_different_seed_differs(world, tmp_path):
    other = generate_world(tmp_path / "other", dataclasses.replace(TINY, seed=6), workers=1)
    first = load_world(world)
    assert other["digest"] != first["digest"]
    for rel in ("train/train.rec", "val/lfw.bin", "IJBC/loose_crop/"):
        assert other["files"][rel]["sha256"] != first["files"][rel]["sha256"], rel


def test_refuses_to_replace_a_world_and_leaves_it_intact(world, tmp_path):
    target = tmp_path / "w"
    generate_world(target, dataclasses.replace(TINY, identities=2, eval_identities=2, pairs=2, bin_identities=2))
    before = (target / "world.json").read_bytes()
    with pytest.raises(FileExistsError):
        generate_world(target, TINY)
    assert (target / "world.json").read_bytes() == before


def test_failure_midway_writes_nothing(tmp_path, monkeypatch):
    import gbcosface.data.bin_sets as bin_sets

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bin_sets, "write_bin", broken)
    with pytest.raises(OSError, match="disk full"):
        generate_world(tmp_path / "w", TINY)
    assert list((tmp_path / "w").iterdir()) == []


def test_spec_validation():
    with pytest.raises(ValueError, match="difficulty"):
        dataclasses.replace(TINY, difficulty=1.5).validate()
    with pytest.raises(ValueError, match="eval_identities"):
        dataclasses.replace(TINY, eval_identities=1).validate()
    assert WorldSpec(difficulty=1.0).spread < WorldSpec(difficulty=0.0).spread
    assert WorldSpec(difficulty=1.0).nuisance_scale > WorldSpec(difficulty=0.0).nuisance_scale


def test_cli_synth(tmp_path, capsys):
    from gbcosface.cli import main

    out = tmp_path / "cli"
    args = ["synth", "--out", str(out), "--seed", "3", "--identities", "3", "--images-per-identity", "2",
            "--eval-identities", "3", "--templates-per-identity", "2", "--pairs", "4", "--bin-identities", "2",
            "--workers", "1"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    info = load_world(out)
    assert printed["digest"] == info["digest"]
    assert info["counts"]["train_images"] == 6 and info["counts"]["ijbc_templates"] == 6
    assert main(args) == 1  # exists: refused
    assert main([*args, "--overwrite"]) == 0
    assert load_world(out)["digest"] == info["digest"]
    assert main([*args[:-2], "--difficulty", "2", "--workers", "1", "--overwrite"]) == 2


def test_1n_files_split_subjects_into_two_galleries_like_ijbc(world):
    """Each identity enrols in exactly one gallery with its first template; its other templates are probes,
    so every probe is mated in one gallery and non-mated in the other; the CSV rows list the images."""
    meta = read_ijb_meta(world / "IJBC", "ijbc", pairs=False)
    one_n = read_ijb_1n_meta(world / "IJBC", "ijbc", known_templates=meta.templates)
    lay = ijb_layout(TINY)
    g1, g2 = one_n.galleries["G1"], one_n.galleries["G2"]
    assert set(one_n.galleries) == {"G1", "G2"}
    assert not set(g1.subjects.tolist()) & set(g2.subjects.tolist())
    assert set(g1.subjects.tolist()) | set(g2.subjects.tolist()) == set(one_n.probes.subjects.tolist())
    assert g1.templates.size + g2.templates.size == TINY.eval_identities
    assert one_n.probes.templates.size == TINY.eval_identities * (TINY.templates_per_identity - 1)
    for s in (g1, g2, one_n.probes):
        for t, subj in zip(s.templates.tolist(), s.subjects.tolist(), strict=True):
            assert lay.template_identity[t] + 1 == subj
    assert not set(one_n.probes.templates.tolist()) & (set(g1.templates.tolist()) | set(g2.templates.tolist()))
    rows = (world / "IJBC/meta/ijbc_1N_probe_mixed.csv").read_text().splitlines()
    assert rows[0].startswith("TEMPLATE_ID,SUBJECT_ID,FILENAME")
    assert len(rows) - 1 == int(np.isin(meta.templates, one_n.probes.templates).sum())  # one row per image
    counts = load_world(world)["counts"]
    assert counts["ijbc_1n_gallery_G1"] == g1.templates.size and counts["ijbc_1n_probes"] == one_n.probes.templates.size
