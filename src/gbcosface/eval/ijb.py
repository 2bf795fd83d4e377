"""IJB-B / IJB-C 1:1 verification maths: image features -> template features -> pair scores -> TAR@FAR.

The convention is docs/formats.md ("IJB-B / IJB-C", "TAR@FAR"), which every published IJB number follows:
image feature (f, or f + f_flip) -> optionally L2-normalised (norm score off) -> optionally times the
detector score -> mean within each (template, media) -> summed over the template's medias ->
L2-normalised -> cosine per pair -> sklearn-style ROC.

Why vectorised: IJB-C has 469,375 images, 23,124 templates and 15,658,489 pairs. The official script
loops over templates in Python and gathers two 512-float rows per pair (about 64 GB of memory
traffic); here aggregation is one sparse-matrix product, and scoring multiplies the template
matrices of the two sides of the protocol block by block (IJB pairs join a small set of first
templates to many others), then picks the pairs' entries. `bench/bench_ijb_scoring.py` measures both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

from gbcosface.eval.roc import DEFAULT_FARS, ScoreSet, TarCell, tar_at_far

__all__ = [
    "DEFAULT_FARS",
    "ScoreSet",
    "TarCell",
    "UnknownTemplateError",
    "evaluate_ijb",
    "format_comparison",
    "image_weights",
    "pair_scores",
    "tar_at_far",
    "compact_ranks",
    "template_features",
    "template_rows",
]


class UnknownTemplateError(ValueError):
    """A pair names a template that has no features; ``index`` is the pair's 0-based position."""

    def __init__(self, message: str, index: int, template: int, column: str) -> None:
        super().__init__(message)
        self.index = index
        self.template = template
        self.column = column


def image_weights(
    img_feats: np.ndarray,
    det_scores: np.ndarray | None = None,
    norm_score: bool = True,
    detector_score: bool = True,
) -> np.ndarray:
    """Per-image multipliers that implement the image-feature flags without copying the features.

    norm score on keeps each feature's raw norm (weight 1); off divides by the norm (an all-zero
    feature gets weight 0 rather than NaN). detector score on multiplies by the detector score.
    """
    n = img_feats.shape[0]
    w = np.ones(n, dtype=np.float64)
    if not norm_score:
        norms = np.sqrt(np.einsum("ij,ij->i", img_feats, img_feats, dtype=np.float64))
        np.divide(1.0, norms, out=w, where=norms > 0)
        w[norms == 0] = 0.0
    if detector_score:
        if det_scores is None:
            raise ValueError("detector score weighting needs det_scores")
        det = np.asarray(det_scores, dtype=np.float64)
        if det.shape != (n,):
            raise ValueError(f"det_scores has shape {det.shape}, expected ({n},) (one per image)")
        w *= det
    return w


def template_features(
    img_feats: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    weights: np.ndarray | None = None,
    include: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised template features float64 (T, D), sorted unique template ids (T,)).

    Template feature = sum over its medias of the mean of ``weights[i] * img_feats[i]`` over the
    template's images of that media, then L2-normalised. Medias are grouped per template (one media id
    in two templates is two groups). Images with ``include`` False are left out entirely (not counted
    in their media's mean); a template left without images gets an all-zero row, as sklearn's
    normalize leaves a zero row.

    Precision follows the official script: media means accumulate in the features' precision
    (float32 for float32 features, so the 469k x 512 matrix is never copied), template features
    are float64, so that pair scores are float64 as well: float32 scores would tie at IJB-C scale,
    and roc_curve's thinning (hence TAR "nearest") depends on ties.
    """
    img_feats = np.asarray(img_feats)
    templates = np.asarray(templates)
    medias = np.asarray(medias)
    n = img_feats.shape[0]
    if img_feats.ndim != 2:
        raise ValueError(f"img_feats must be (N, D), got shape {img_feats.shape}")
    if templates.shape != (n,) or medias.shape != (n,):
        raise ValueError(f"templates {templates.shape} and medias {medias.shape} must have one entry per image ({n})")
    uniq_t, t_idx = np.unique(templates, return_inverse=True)
    uniq_m, m_idx = np.unique(medias, return_inverse=True)
    key = t_idx.astype(np.int64) * len(uniq_m) + m_idx
    rows_img = np.arange(n)
    if include is not None:
        include = np.asarray(include, dtype=bool)
        if include.shape != (n,):
            raise ValueError(f"include has shape {include.shape}, expected ({n},)")
        key, rows_img = key[include], rows_img[include]
    _, g_idx, g_cnt = np.unique(key, return_inverse=True, return_counts=True)
    w = 1.0 / g_cnt[g_idx]
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (n,):
            raise ValueError(f"weights has shape {weights.shape}, expected ({n},)")
        w = w * weights[rows_img]
    dtype = np.float64 if img_feats.dtype == np.float64 else np.float32
    agg = scipy.sparse.csr_matrix(
        (w.astype(dtype), (key // len(uniq_m), rows_img)), shape=(len(uniq_t), n)
    )
    feats = np.asarray(agg @ img_feats.astype(dtype, copy=False), dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", feats, feats))
    np.divide(feats, norms[:, None], out=feats, where=norms[:, None] > 0)
    return feats, uniq_t.astype(np.int64, copy=False)


def template_rows(unique_templates: np.ndarray, ids: np.ndarray, column: str = "template") -> np.ndarray:
    """Row of each id in the sorted `unique_templates` (int32); an unknown id raises UnknownTemplateError.

    Template ids are small non-negative integers in IJB, so a lookup table (one pass) replaces the
    binary search when it is not much larger than the id range; np.searchsorted otherwise.
    """
    ut = np.asarray(unique_templates)
    ids = np.asarray(ids)
    if ut.size == 0:
        if ids.size:
            raise UnknownTemplateError(f"{column} of pair 0 names template {int(ids[0])}, but there are no templates",
                                       0, int(ids[0]), column)
        return np.zeros(0, dtype=np.int32)
    if ids.size == 0:
        return np.zeros(0, dtype=np.int32)
    lo, hi = int(ut[0]), int(ut[-1])
    if lo >= 0 and hi < max(1 << 22, 64 * ut.size) and np.issubdtype(ids.dtype, np.integer):
        table = np.full(hi + 2, -1, dtype=np.int32)
        table[ut] = np.arange(ut.size, dtype=np.int32)
        rows = table[np.clip(ids, -1, hi + 1)]  # out-of-range ids land on a -1 entry
        bad = rows < 0
    else:
        pos = np.searchsorted(ut, ids).clip(max=ut.size - 1)
        bad = ut[pos] != ids
        rows = pos.astype(np.int32)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UnknownTemplateError(f"{column} of pair {i} names template {ids[i]}, which has no images",
                                   i, int(ids[i]), column)
    return rows


def compact_ranks(unique_templates: np.ndarray, ids: np.ndarray, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(rank of each id among the distinct ids used (int32), row in `unique_templates` of each used id).

    For small non-negative ids one bincount and one table gather do it; unknown ids raise
    UnknownTemplateError naming the first pair that uses one.
    """
    ut = np.asarray(unique_templates)
    ids = np.asarray(ids)
    if ids.size and np.issubdtype(ids.dtype, np.integer) and ut.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo >= 0 and hi < max(1 << 22, 64 * ut.size):
            used_ids = np.flatnonzero(np.bincount(ids, minlength=hi + 1))
            try:
                used_rows = template_rows(ut, used_ids, column)
            except UnknownTemplateError:
                template_rows(ut, ids, column)  # raises, naming the first pair with an unknown template
                raise
            table = np.zeros(hi + 1, dtype=np.int32)
            table[used_ids] = np.arange(used_ids.size, dtype=np.int32)
            return table[ids], used_rows
    rows = template_rows(ut, ids, column)
    used_rows, ranks = np.unique(rows, return_inverse=True)
    return ranks.astype(np.int32), used_rows


def _is_sorted(a: np.ndarray) -> bool:
    return bool(a.size < 2 or np.all(a[1:] >= a[:-1]))


def pair_scores(
    feats: np.ndarray,
    unique_templates: np.ndarray,
    p1: np.ndarray,
    p2: np.ndarray,
    block_bytes: int = 64 << 20,
    dense_ratio: float = 8.0,
) -> np.ndarray:
    """Cosine score of each pair (p1[i], p2[i]) of template ids, from normalised `feats` (float64 for float64 feats).

    When the distinct first and second templates form a block not much larger than the number of
    pairs (`dense_ratio`), scores come from matrix products of one side's templates, a block of rows
    at a time (each product at most `block_bytes`), against all of the other side's, and each pair
    picks its entry. The blocked side is one the pairs are sorted by when there is one (IJB's pair
    files run through the first templates in order), so each block's pairs are a contiguous run;
    otherwise a radix sort of the block numbers groups them. Sparse protocols get chunked row-wise
    dot products instead. Memory stays bounded either way.
    """
    feats = np.asarray(feats)
    p1, p2 = np.asarray(p1), np.asarray(p2)
    if p1.shape != p2.shape or p1.ndim != 1:
        raise ValueError(f"p1 and p2 must be equally long 1-D arrays, got {p1.shape} and {p2.shape}")
    out = np.empty(p1.size, dtype=np.result_type(feats.dtype, np.float32))
    if p1.size == 0:
        template_rows(unique_templates, p1, "first template")
        return out
    rank1, rows1 = compact_ranks(unique_templates, p1, "first template")
    rank2, rows2 = compact_ranks(unique_templates, p2, "second template")
    k1, k2 = rows1.size, rows2.size
    if k1 * k2 > dense_ratio * p1.size:
        _rowwise_scores(feats, rows1[rank1], rows2[rank2], out)
        return out
    sorted1 = _is_sorted(rank1)
    if (not sorted1 and _is_sorted(rank2)) or (not sorted1 and k1 < k2):
        rank1, rank2, rows1, rows2, k1, k2 = rank2, rank1, rows2, rows1, k2, k1  # block side 1
        sorted1 = _is_sorted(rank1)
    whole = feats[rows2]
    per_block = max(1, min(k1, block_bytes // max(1, feats.itemsize * k2)))
    starts = np.arange(0, k1, per_block)
    if sorted1:
        bounds = np.append(np.searchsorted(rank1, starts), rank1.size)
        order = None
    else:  # group the pairs by block: a stable radix sort of small integer keys is linear
        block_of = rank1 // per_block
        key = block_of.astype(np.uint8 if starts.size <= 256 else np.uint16 if starts.size <= 65536 else np.int64)
        order = np.argsort(key, kind="stable")
        bounds = np.append(0, np.cumsum(np.bincount(block_of, minlength=starts.size)))
    for blk, lo in enumerate(starts.tolist()):
        s, e = int(bounds[blk]), int(bounds[blk + 1])
        if s == e:
            continue
        hi = min(k1, lo + per_block)
        m = feats[rows1[lo:hi]] @ whole.T  # (hi - lo, k2)
        idx = slice(s, e) if order is None else order[s:e]
        flat = (rank1[idx] - lo).astype(np.int64) * k2 + rank2[idx]
        out[idx] = np.take(m.ravel(), flat)
    return out


def _rowwise_scores(feats: np.ndarray, r1: np.ndarray, r2: np.ndarray, out: np.ndarray, chunk: int = 1 << 16) -> None:
    for s in range(0, r1.size, chunk):
        e = min(r1.size, s + chunk)
        out[s:e] = np.einsum("ij,ij->i", feats[r1[s:e]], feats[r2[s:e]])


def evaluate_ijb(model_path: str, image_path: str, target: str, result_dir: str, **kwargs: Any) -> dict:
    """Embed, aggregate, score and report one IJB target; see `gbcosface.eval.run_ijb.evaluate_ijb`."""
    from gbcosface.eval.run_ijb import evaluate_ijb as run

    return run(model_path=model_path, image_path=image_path, target=target, result_dir=result_dir, **kwargs)


def format_comparison(results: dict[str, dict]) -> str:
    """A TAR@FAR table with one column per named metrics dict (as evaluate_ijb returns)."""
    from gbcosface.eval.report import format_comparison as fmt

    return fmt(results)
