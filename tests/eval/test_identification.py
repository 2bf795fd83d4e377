"""1:N identification against independent computations: ijb_1n.py's loops and a threshold sweep."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gbcosface.eval.identification import identification_metrics, search


def world(seed, n_gallery=30, n_probes=120, mated_share=0.6, dim=16, noise=0.9):
    """Normalised float64 features: gallery subjects with one template each, probes partly of absent subjects."""
    rng = np.random.default_rng(seed)
    gallery_ids = rng.choice(np.arange(1000, 5000), n_gallery, replace=False)
    absent = np.arange(6000, 6000 + n_gallery)
    centers = {int(s): rng.standard_normal(dim) for s in np.concatenate([gallery_ids, absent])}
    probe_ids = np.where(rng.random(n_probes) < mated_share, rng.choice(gallery_ids, n_probes),
                         rng.choice(absent, n_probes))

    def feats(ids):
        f = np.array([centers[int(s)] + noise * rng.standard_normal(dim) for s in ids])
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    return feats(probe_ids), probe_ids, feats(gallery_ids), gallery_ids


def insightface_by_loops(pf, pids, gf, gids, ranks, fpirs):
    """ijb_1n.py's evaluation(), written out with loops, on the probes that have a mate."""
    keep = [i for i in range(len(pids)) if pids[i] in set(gids.tolist())]
    mask = [list(gids).index(pids[i]) for i in keep]
    q = len(keep)
    sims = [[float(sum(pf[i, d] * gf[j, d] for d in range(pf.shape[1]))) for j in range(len(gids))] for i in keep]
    cmc = {}
    for k in ranks:
        hits = 0
        for row, m in zip(sims, mask, strict=True):
            order = sorted(range(len(row)), key=lambda j: -row[j])
            hits += m in order[:k]
        cmc[k] = hits / q
    pos = [row[m] for row, m in zip(sims, mask, strict=True)]
    neg = sorted((row[j] for row, m in zip(sims, mask, strict=True) for j in range(len(row)) if j != m), reverse=True)
    tpir = {}
    for f in fpirs:
        th = neg[math.ceil(q * f) - 1]
        tpir[f] = sum(p > th for p in pos) / q
    return {"cmc": cmc, "tpir_at_fpir": tpir}


def open_set_by_sweep(pf, pids, gf, gids, ranks, fpirs):
    """The open-set definitions, with the best threshold found by trying every score (and -inf)."""
    sims = pf @ gf.T
    gallery = list(gids)
    mated = [i for i in range(len(pids)) if pids[i] in gallery]
    nonmated = [i for i in range(len(pids)) if pids[i] not in gallery]
    rank, mscore = {}, {}
    for i in mated:
        m = gallery.index(pids[i])
        order = sorted(range(len(gallery)), key=lambda j: -sims[i, j])
        rank[i] = order.index(m) + 1
        mscore[i] = sims[i, m]
    cmc = {k: sum(rank[i] <= k for i in mated) / len(mated) for k in ranks}
    tops = [max(sims[i]) for i in nonmated]
    candidates = sorted(set(sims.ravel().tolist())) + [-math.inf, math.inf]
    tpir = {}
    for f in fpirs:
        best = 0.0
        for t in candidates:  # accept scores >= t
            fp = sum(s >= t for s in tops) / len(nonmated)
            if fp <= f:
                best = max(best, sum(rank[i] == 1 and mscore[i] >= t for i in mated) / len(mated))
        tpir[f] = best
    return {"cmc": cmc, "tpir_at_fpir": tpir}


@pytest.mark.parametrize("seed", range(3))
def test_insightface_convention_equals_ijb_1n_loops(seed):
    pf, pids, gf, gids = world(seed)
    ranks, fpirs = (1, 2, 5, 10), (0.01, 0.05, 0.1, 0.3)
    got = identification_metrics(pf, pids, gf, gids, ranks=ranks, fpirs=fpirs, convention="insightface")
    want = insightface_by_loops(pf, pids, gf, gids, ranks, fpirs)
    assert got["cmc"] == pytest.approx(want["cmc"], abs=0)
    assert got["tpir_at_fpir"] == pytest.approx(want["tpir_at_fpir"], abs=0)
    assert 0 < got["cmc"][1] < 1 and 0 < got["tpir_at_fpir"][0.01] < 1  # not a degenerate case


def test_insightface_convention_on_a_gallery_holding_every_probe_subject():
    """ijb_1n.py's own setting (G1 + G2 together): every probe is mated, nothing is left out."""
    pf, pids, gf, gids = world(7, mated_share=1.0)
    got = identification_metrics(pf, pids, gf, gids, convention="insightface")
    assert got == insightface_by_loops(pf, pids, gf, gids, (1, 5, 10), (0.01, 0.1))
    assert set(got) == {"cmc", "tpir_at_fpir"} and set(got["cmc"]) == {1, 5, 10}


@pytest.mark.parametrize("seed", range(3))
def test_open_set_convention_equals_a_threshold_sweep(seed):
    pf, pids, gf, gids = world(10 + seed, n_probes=100)
    ranks, fpirs = (1, 3, 10), (0.01, 0.05, 0.1, 0.25, 1.0)
    got = identification_metrics(pf, pids, gf, gids, ranks=ranks, fpirs=fpirs, convention="open_set")
    want = open_set_by_sweep(pf, pids, gf, gids, ranks, fpirs)
    assert got["cmc"] == pytest.approx(want["cmc"], abs=0)
    assert got["tpir_at_fpir"] == pytest.approx(want["tpir_at_fpir"], abs=0)
    assert got["tpir_at_fpir"][1.0] == got["cmc"][1]  # FPIR 1 accepts everything: TPIR is the rank-1 rate


def test_conventions_differ_and_blocks_do_not_matter():
    pf, pids, gf, gids = world(3)
    a = identification_metrics(pf, pids, gf, gids, convention="insightface")
    b = identification_metrics(pf, pids, gf, gids, convention="open_set")
    assert a["cmc"] == b["cmc"]  # same mated probes, same ranks
    assert a["tpir_at_fpir"] != b["tpir_at_fpir"]
    whole = search(pf, pids, gf, gids, keep_negatives=50)
    tiny = search(pf, pids, gf, gids, keep_negatives=50, block_bytes=1)  # one probe per block
    np.testing.assert_array_equal(whole.rank, tiny.rank)
    np.testing.assert_array_equal(whole.mated, tiny.mated)
    for name in ("top_score", "top_negatives", "mated_score"):  # BLAS may round differently per block size
        np.testing.assert_allclose(getattr(whole, name), getattr(tiny, name), rtol=0, atol=1e-12)


def test_float32_features_score_like_float64():
    pf, pids, gf, gids = world(5)
    a = identification_metrics(pf.astype(np.float32), pids, gf.astype(np.float32), gids)
    b = identification_metrics(pf, pids, gf, gids)
    assert a["cmc"] == b["cmc"]


def test_bad_inputs_are_named():
    pf, pids, gf, gids = world(1)
    dup = gids.copy()
    dup[3] = dup[0]
    with pytest.raises(ValueError, match=f"gallery subject {dup[0]} has more than one gallery template"):
        identification_metrics(pf, pids, gf, dup)
    with pytest.raises(ValueError, match="no probe has a gallery template"):
        identification_metrics(pf, pids + 100_000, gf, gids)
    mated = np.isin(pids, gids)
    with pytest.raises(ValueError, match="needs non-mated searches"):
        identification_metrics(pf[mated], pids[mated], gf, gids, convention="open_set")
    with pytest.raises(ValueError, match="convention must be one of"):
        identification_metrics(pf, pids, gf, gids, convention="nist")
    with pytest.raises(ValueError, match=r"FPIRs must be in \(0, 1\]"):
        identification_metrics(pf, pids, gf, gids, fpirs=(0.0,))
    with pytest.raises(ValueError, match="ranks must be positive integers"):
        identification_metrics(pf, pids, gf, gids, ranks=(0, 1))
    with pytest.raises(ValueError, match="must have one id per row"):
        identification_metrics(pf, pids[:-1], gf, gids)
