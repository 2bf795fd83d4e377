"""TAR@FAR (nearest, strict) and AUC against sklearn and against plain brute force."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from gbcosface.eval.roc import (
    DEFAULT_FARS,
    REASON_FEW_IMPOSTORS,
    REASON_SEPARATED,
    ScoreSet,
    exact_auc,
    split_scores,
    tar_at_far,
)


def official_nearest(labels, scores, far):
    """The published selection, as the official script writes it: roc_curve, flip, min over (|d|, index)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, i = min(zip(abs(fpr - far), range(len(fpr)), strict=True))
    return tpr[i], fpr[i]


def brute_strict(labels, scores, far):
    """Largest TPR over every threshold (each distinct score, and +inf) with FPR <= far, by plain loops."""
    pos = sum(1 for y in labels if y == 1)
    neg = len(labels) - pos
    best = 0.0
    for t in sorted(set(scores.tolist())):
        tp = sum(1 for y, s in zip(labels, scores, strict=True) if y == 1 and s >= t)
        fp = sum(1 for y, s in zip(labels, scores, strict=True) if y == 0 and s >= t)
        if fp / neg <= far:
            best = max(best, tp / pos)
    return best


def brute_auc(labels, scores):
    gen = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    imp = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    wins = sum((g > i) + 0.5 * (g == i) for g in gen for i in imp)
    return wins / (len(gen) * len(imp))


def random_case(rng, n, quant):
    labels = (rng.random(n) < rng.uniform(0.05, 0.5)).astype(np.int64)
    labels[0], labels[1] = 1, 0  # both classes present
    scores = rng.standard_normal(n) + labels * rng.uniform(0, 3)
    if quant:  # coarse rounding makes many ties, within and across classes
        scores = np.round(scores * quant) / quant
    return labels, scores.astype(np.float32)


FARS = (*DEFAULT_FARS, 0.2, 0.37, 0.5, 0.9, 1.0, 0.03125)


@pytest.mark.parametrize("n", [3, 10, 57, 400, 5000, 60000])
@pytest.mark.parametrize("quant", [0, 2, 10, 1000])
def test_nearest_equals_sklearn_roc_curve_selection(n, quant):
    rng = np.random.default_rng(n * 31 + quant)
    labels, scores = random_case(rng, n, quant)
    cells = tar_at_far(labels, scores, FARS, convention="nearest")
    for cell, far in zip(cells, FARS, strict=True):
        tpr, fpr = official_nearest(labels, scores, far)
        assert (cell.value, cell.fpr) == (tpr, fpr), far


@pytest.mark.parametrize("k", [1, 2, 3, 7, 40])
def test_nearest_exact_when_starting_from_very_few_top_impostors(k):
    """Force the top-k path to start tiny so that it must grow; the result must not change."""
    rng = np.random.default_rng(k)
    for trial in range(30):
        labels, scores = random_case(rng, int(rng.integers(3, 3000)), [0, 3, 50][trial % 3])
        ss = ScoreSet(labels, scores)
        ss.k_for = lambda far, k=k: k  # type: ignore[method-assign]
        for far in FARS:
            assert ss.nearest(far)[:2] == official_nearest(labels, scores, far)


def test_nearest_keeps_roc_curve_thinning():
    """Points that roc_curve drops (equal collinear steps) are never chosen, even when nearer."""
    # Nine thresholds, each one genuine tied with one impostor: steps (+1, +1) all the way, so
    # roc_curve keeps only the first and last of them: FPR 0 (prepended), 1/9 and 1.
    scores = np.repeat(np.arange(9, 0, -1), 2).astype(np.float32)
    labels = np.tile([1, 0], 9)
    fpr, _, _ = roc_curve(labels, scores)
    assert fpr.tolist() == [0.0, 1 / 9, 1.0]
    cell = tar_at_far(labels, scores, [1 / 3], "nearest")[0]
    assert (cell.value, cell.fpr) == (1 / 9, 1 / 9)  # without the thinning it would be 3/9 at FPR 3/9
    assert (cell.value, cell.fpr) == official_nearest(labels, scores, 1 / 3)


def test_nearest_tie_takes_the_highest_tpr_at_equal_fpr():
    # A vertical segment: two points with the same FPR and different TPR.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], np.float32)
    labels = np.array([0, 1, 1, 1, 0, 0])
    cell = tar_at_far(labels, scores, [1 / 3], "nearest")[0]
    assert cell.fpr == pytest.approx(1 / 3) and cell.value == 1.0
    assert (cell.value, cell.fpr) == official_nearest(labels, scores, 1 / 3)


@pytest.mark.parametrize("seed", range(12))
def test_strict_against_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    labels, scores = random_case(rng, int(rng.integers(3, 120)), [0, 2, 5][seed % 3])
    fars = (1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 0.99, 1.0)
    cells = tar_at_far(labels, scores, fars, convention="strict")
    for cell, far in zip(cells, fars, strict=True):
        assert cell.value == pytest.approx(brute_strict(labels, scores, far), abs=1e-15), far
        assert cell.fpr <= far
        # The reported threshold reproduces the reported rates.
        tp = np.sum((scores >= cell.threshold) & (labels == 1)) / labels.sum()
        assert tp == pytest.approx(cell.value)


def test_strict_against_sklearn_all_thresholds_large():
    rng = np.random.default_rng(7)
    labels, scores = random_case(rng, 200_000, 0)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    for cell in tar_at_far(labels, scores, DEFAULT_FARS, convention="strict"):
        assert cell.value == tpr[fpr <= cell.far].max()


@pytest.mark.parametrize("quant", [0, 3, 100])
def test_auc_against_sklearn_and_brute_force(quant):
    rng = np.random.default_rng(quant)
    for n in (4, 30, 300):
        labels, scores = random_case(rng, n, quant)
        ss = ScoreSet(labels, scores)
        assert ss.auc() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert ss.auc() == pytest.approx(brute_auc(labels, scores), abs=1e-12)
    labels, scores = random_case(rng, 300_000, quant)
    assert ScoreSet(labels, scores).auc() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_few_buckets_and_constant_scores():
    rng = np.random.default_rng(3)
    labels, scores = random_case(rng, 2000, 7)
    gen, imp = split_scores(labels, scores)
    assert exact_auc(gen, imp, buckets=3) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert exact_auc(np.zeros(3), np.zeros(5)) == 0.5


def test_cells_meaningless_with_too_few_impostors():
    rng = np.random.default_rng(0)
    labels, scores = random_case(rng, 3000, 0)
    n_neg = int((labels == 0).sum())
    cells = tar_at_far(labels, scores, DEFAULT_FARS)
    for cell in cells:
        enough = n_neg >= 1 / cell.far
        assert cell.meaningful == enough
        assert (cell.tar is None) == (not enough)
        assert cell.reason == (None if enough else REASON_FEW_IMPOSTORS)
        assert 0.0 <= cell.value <= 1.0  # the number is still there for who wants it


def test_cells_meaningless_when_scores_separate_perfectly():
    labels = np.array([1] * 50 + [0] * 2000)
    scores = np.concatenate([np.linspace(0.6, 0.9, 50), np.linspace(-0.5, 0.5, 2000)]).astype(np.float32)
    for conv in ("nearest", "strict"):
        cell = tar_at_far(labels, scores, [1e-2], conv)[0]
        assert not cell.meaningful and cell.reason == REASON_SEPARATED and cell.value == 1.0
        assert cell.to_dict()["tar"] is None


@pytest.mark.parametrize(
    "labels, scores, match",
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "labels must be 0"),
        ([0, 1], [0.1, np.nan], "finite"),
        ([1, 1], [0.1, 0.2], "both genuine and impostor"),
        ([0, 1], [0.1], "equally long"),
    ],
)
def test_bad_input(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        tar_at_far(np.array(labels), np.array(scores), [0.1])


def test_bad_far_and_convention():
    labels, scores = np.array([0, 1, 0]), np.array([0.1, 0.9, 0.2])
    with pytest.raises(ValueError, match="convention"):
        tar_at_far(labels, scores, [0.1], convention="loose")
    with pytest.raises(ValueError, match="FAR"):
        tar_at_far(labels, scores, [0.0])


@pytest.mark.parametrize("n, quant", [(50, 0), (20_000, 0), (20_000, 20)])
def test_curve_is_a_prefix_of_roc_curve(n, quant):
    rng = np.random.default_rng(n + quant)
    labels, scores = random_case(rng, n, quant)
    fpr, tpr, thr = roc_curve(labels, scores)
    curve = ScoreSet(labels, scores).curve(0.05)
    m = curve.fpr.size - (0 if curve.complete else 1)  # an incomplete curve's last point may be extra
    assert curve.fpr[-1] >= 0.05 or curve.complete
    np.testing.assert_array_equal(curve.fpr[:m], fpr[:m])
    np.testing.assert_array_equal(curve.tpr[:m], tpr[:m])
    np.testing.assert_array_equal(curve.thresholds[:m], thr[:m])
