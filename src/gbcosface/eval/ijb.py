"""IJB-B / IJB-C template maths shared by both protocols: image features -> template features.

The convention is docs/formats.md ("IJB-B / IJB-C", "TAR@FAR"), which every published IJB number follows:
image feature (f, or f + f_flip) -> optionally L2-normalised (norm score off) -> optionally times the
detector score -> mean within each (template, media) -> summed over the template's medias ->
L2-normalised. insightface's scripts share this aggregation between 1:1 verification and 1:N
identification; only the scoring differs: `eval/ijb_11.py` (pairs, TAR@FAR) and `eval/ijb_1n.py`
(gallery x probe search, CMC and TPIR@FPIR), both behind the `IJBProtocol` interface below.

Why vectorised: IJB-C has 469,375 images and 23,124 templates. The official script loops over
templates in Python; here aggregation is one sparse-matrix product. `bench/bench_ijb_scoring.py`
measures it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse

__all__ = [
    "IJBProtocol",
    "UnknownTemplateError",
    "compact_ranks",
    "image_weights",
    "template_features",
    "template_rows",
]


class IJBProtocol(Protocol):
    """One IJB protocol over the shared template features: what it reads, how it scores, what it reports.

    `name` is the CLI spelling ("11", "1N"); `title` what reports call it.
    """

    name: str
    title: str

    def meta_files(self, root: str | os.PathLike, target: str) -> list[Path]:
        """The protocol's own meta files (their sha256 goes into metrics.json)."""
        ...

    def read_meta(self, root: str | os.PathLike, target: str, base: Any) -> Any:
        """Parse and check the protocol files against `base` (data.ijb.IJBMeta); errors name file:line."""
        ...

    def score(self, tfeats: np.ndarray, templates: np.ndarray, meta: Any) -> Any:
        """Scores from the template features (rows of `templates`; all-zero rows have no features)."""
        ...

    def metrics(self, scores: Any, at: Sequence[float]) -> dict[str, Any]:
        """The protocol's metrics at the operating points `at` (FARs for 1:1, FPIRs for 1:N)."""
        ...

    def headline(self, metrics: dict[str, Any], at: float) -> float:
        """The one number a gate reads (NaN when it is not meaningful)."""
        ...


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
