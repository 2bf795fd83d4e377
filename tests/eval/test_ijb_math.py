"""Template aggregation, image weights (eval/ijb.py) and 1:1 pair scores (eval/ijb_11.py) against plain loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gbcosface.eval.ijb import (
    UnknownTemplateError,
    image_weights,
    template_features,
    template_rows,
)
from gbcosface.eval.ijb_11 import pair_scores


def random_ijb(seed, n_templates=12, dim=8, max_medias=4, max_per_media=4, shared_media=True):
    """Templates of one or several medias, some medias with several frames; media ids may recur across templates."""
    rng = np.random.default_rng(seed)
    templates, medias = [], []
    template_ids = rng.choice(np.arange(1, 10_000), n_templates, replace=False)
    for t in template_ids:
        for m in range(int(rng.integers(1, max_medias + 1))):
            media = int(rng.integers(0, 5)) if shared_media else int(t) * 100 + m
            for _ in range(int(rng.integers(1, max_per_media + 1))):
                templates.append(int(t))
                medias.append(media)
    order = rng.permutation(len(templates))  # images of a template need not be adjacent
    templates = np.array(templates)[order]
    medias = np.array(medias)[order]
    feats = rng.standard_normal((len(templates), dim)) * rng.uniform(0.5, 3, (len(templates), 1))
    return feats.astype(np.float32), templates, medias, rng


def loop_template_features(feats, templates, medias, weights=None, include=None):
    """The definition, one template and one media at a time, in float64."""
    out = {}
    for t in sorted(set(templates.tolist())):
        total = [0.0] * feats.shape[1]
        media_ids = sorted({int(m) for m, tt in zip(medias, templates, strict=True) if tt == t})
        for m in media_ids:
            rows = [i for i in range(len(templates)) if templates[i] == t and medias[i] == m
                    and (include is None or include[i])]
            if not rows:
                continue
            for d in range(feats.shape[1]):
                w = [(1.0 if weights is None else float(weights[i])) * float(feats[i, d]) for i in rows]
                total[d] += sum(w) / len(rows)
        norm = math.sqrt(sum(v * v for v in total))
        out[t] = [v / norm if norm > 0 else 0.0 for v in total]
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shared_media", [True, False])
def test_template_features_against_loops(seed, shared_media):
    feats, templates, medias, _ = random_ijb(seed, shared_media=shared_media)
    got, ids = template_features(feats, templates, medias)
    ref = loop_template_features(feats, templates, medias)
    assert ids.tolist() == sorted(ref) and got.dtype == np.float64
    for row, t in zip(got, ids, strict=True):
        np.testing.assert_allclose(row, ref[int(t)], rtol=1e-5, atol=1e-6)


def test_single_image_and_single_media_templates():
    feats = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]], np.float32)
    templates = np.array([7, 8, 8, 9])
    medias = np.array([1, 2, 2, 3])  # template 8: one media of two frames -> their mean
    got, ids = template_features(feats, templates, medias)
    assert ids.tolist() == [7, 8, 9]
    np.testing.assert_allclose(got, [[0.6, 0.8], [1 / math.sqrt(5), 2 / math.sqrt(5)], [2**-0.5, 2**-0.5]], rtol=1e-6)


def test_media_mean_then_sum_differs_from_plain_mean():
    # Template 1: media A has 3 frames, media B one image. Mean per media, then sum: A counts once.
    feats = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    got, _ = template_features(feats, np.array([1, 1, 1, 1]), np.array([5, 5, 5, 6]))
    np.testing.assert_allclose(got[0], [2**-0.5, 2**-0.5], rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_weights_and_include_against_loops(seed):
    feats, templates, medias, rng = random_ijb(seed + 10)
    weights = rng.uniform(0.1, 1.0, feats.shape[0])
    include = rng.random(feats.shape[0]) > 0.3
    got, ids = template_features(feats, templates, medias, weights=weights, include=include)
    ref = loop_template_features(feats, templates, medias, weights=weights, include=include)
    for row, t in zip(got, ids, strict=True):
        np.testing.assert_allclose(row, ref[int(t)], rtol=1e-5, atol=1e-6)


def test_template_without_included_images_is_zero():
    feats = np.ones((3, 4), np.float32)
    got, ids = template_features(feats, np.array([1, 2, 2]), np.array([0, 0, 1]), include=np.array([False, True, True]))
    assert ids.tolist() == [1, 2] and not got[0].any() and np.isclose(np.linalg.norm(got[1]), 1)


@pytest.mark.parametrize("norm_score", [True, False])
@pytest.mark.parametrize("detector_score", [True, False])
def test_image_weights_match_the_official_preprocessing(norm_score, detector_score):
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((20, 6)).astype(np.float32) * 4
    det = rng.uniform(0.2, 1.0, 20).astype(np.float32)
    w = image_weights(feats, det, norm_score=norm_score, detector_score=detector_score)
    expected = feats.astype(np.float64)
    if not norm_score:  # remove norm information
        expected = expected / np.sqrt(np.sum(expected**2, -1, keepdims=True))
    if detector_score:
        expected = expected * det[:, None]
    np.testing.assert_allclose(feats * w[:, None], expected, rtol=1e-6)


def test_image_weights_zero_feature_and_bad_det_shape():
    feats = np.zeros((2, 3), np.float32)
    feats[1] = 1
    assert image_weights(feats, norm_score=False, detector_score=False).tolist() == [0.0, 1 / math.sqrt(3)]
    with pytest.raises(ValueError, match="det_scores"):
        image_weights(feats, np.ones(3), detector_score=True)


def loop_scores(feats, ids, p1, p2):
    row = {int(t): i for i, t in enumerate(ids)}
    return [sum(float(a) * float(b) for a, b in zip(feats[row[int(x)]], feats[row[int(y)]], strict=True))
            for x, y in zip(p1, p2, strict=True)]


def protocol_pairs(rng, ids, n_first, per_second):
    """IJB-like: a few first templates, each second template paired with some of them."""
    first, second = ids[:n_first], ids[n_first:]
    p1, p2 = [], []
    for s in second:
        for f in rng.choice(first, min(per_second, n_first), replace=False):
            p1.append(f)
            p2.append(s)
    order = rng.permutation(len(p1))
    return np.array(p1)[order], np.array(p2)[order]


@pytest.mark.parametrize("block_bytes", [64 << 20, 40, 500])
@pytest.mark.parametrize("order", ["random", "by_first", "by_second"])
def test_pair_scores_block_products_against_loops(block_bytes, order):
    """Every way through the block products: one block or many, pairs grouped by either side or not."""
    feats, templates, medias, rng = random_ijb(1, n_templates=30)
    tf, ids = template_features(feats, templates, medias)
    p1, p2 = protocol_pairs(rng, ids, 6, 4)  # dense enough for the block products
    if order != "random":
        perm = np.argsort(p1 if order == "by_first" else p2, kind="stable")
        p1, p2 = p1[perm], p2[perm]
    got = pair_scores(tf, ids, p1, p2, block_bytes=block_bytes)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, loop_scores(tf, ids, p1, p2), rtol=1e-12, atol=1e-12)


def test_pair_scores_sparse_protocol_uses_rowwise_path():
    feats, templates, medias, rng = random_ijb(2, n_templates=40)
    tf, ids = template_features(feats, templates, medias)
    p1 = rng.choice(ids, 15)
    p2 = rng.choice(ids, 15)
    got = pair_scores(tf, ids, p1, p2, dense_ratio=0.5)
    np.testing.assert_allclose(got, loop_scores(tf, ids, p1, p2), rtol=1e-12, atol=1e-12)
    # and the same numbers through the block path
    np.testing.assert_allclose(pair_scores(tf, ids, p1, p2, dense_ratio=1e9), got, rtol=1e-5, atol=1e-6)


def test_pair_scores_with_huge_template_ids_uses_search():
    rng = np.random.default_rng(3)
    ids = np.unique(rng.integers(10**12, 10**12 + 10**9, 9))
    assert ids.size == 9
    tf = rng.standard_normal((9, 5)).astype(np.float32)
    tf /= np.linalg.norm(tf, axis=1, keepdims=True)
    p1, p2 = rng.choice(ids, 20), rng.choice(ids, 20)
    np.testing.assert_allclose(pair_scores(tf, ids, p1, p2), loop_scores(tf, ids, p1, p2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ids", [np.array([3, 5, 9]), np.array([10**12, 10**12 + 5])])
def test_unknown_template_names_the_pair(ids):
    tf = np.eye(len(ids), dtype=np.float32)
    p1 = np.array([ids[0], ids[1], ids[0]])
    p2 = np.array([ids[1], ids[0], 4])
    with pytest.raises(UnknownTemplateError) as err:
        pair_scores(tf, ids, p1, p2)
    assert err.value.index == 2 and err.value.template == 4 and "pair 2" in str(err.value)
    with pytest.raises(UnknownTemplateError):
        template_rows(ids, np.array([-1]))
    assert template_rows(ids, ids[::-1]).tolist() == list(range(len(ids)))[::-1]


def test_pair_scores_empty_and_shape_errors():
    tf = np.eye(2, dtype=np.float32)
    assert pair_scores(tf, np.array([1, 2]), np.array([], int), np.array([], int)).size == 0
    with pytest.raises(ValueError, match="equally long"):
        pair_scores(tf, np.array([1, 2]), np.array([1]), np.array([1, 2]))
