"""IJB 1:1 verification: cosine scores of the protocol's template pairs, then TAR@FAR (eval/roc.py).

Why blocks: IJB-C has 15,658,489 pairs. The official script gathers two 512-float rows per pair (about
64 GB of memory traffic); here the template matrices of the two sides of the protocol are multiplied
block by block (IJB pairs join a small set of first templates to many others) and each pair picks its
entry. `bench/bench_ijb_scoring.py` measures both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gbcosface.data.errors import DataFormatError
from gbcosface.data.ijb import IJBMeta, meta_paths
from gbcosface.eval import report
from gbcosface.eval.ijb import UnknownTemplateError, compact_ranks, template_rows
from gbcosface.eval.roc import ScoreSet

__all__ = ["PairScores", "Pairs11", "Verification11", "pair_scores"]


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


@dataclass
class Pairs11:
    """The template pairs of the protocol, as the pair file lists them."""

    t1: np.ndarray
    t2: np.ndarray
    label: np.ndarray
    path: Path


@dataclass
class PairScores:
    """One score per line of the pair file (NaN where a template has no features) and the labels."""

    scores: np.ndarray  # float64 (P,)
    valid: np.ndarray  # bool (P,)
    labels: np.ndarray  # int64 (P,)
    pair_path: Path


class Verification11:
    """IJB 1:1 verification (`--protocol 11`): the template pair file, TAR@FAR in both conventions, AUC, ROC."""

    name = "11"
    title = "1:1 verification"

    def meta_files(self, root: str | os.PathLike, target: str) -> list[Path]:
        return [meta_paths(root, target)[2]]

    def read_meta(self, root: str | os.PathLike, target: str, base: IJBMeta) -> Pairs11:
        """The pairs: read_ijb_meta(pairs=True) has read and checked the pair file into `base`."""
        return Pairs11(base.pair_t1, base.pair_t2, base.pair_label, meta_paths(root, target)[2])

    def score(self, tfeats: np.ndarray, templates: np.ndarray, meta: Pairs11) -> PairScores:
        try:
            scores = pair_scores(tfeats, templates, meta.t1, meta.t2)
        except UnknownTemplateError as exc:
            raise DataFormatError(f"{meta.path}:{exc.index + 1}: {exc}") from None
        empty = ~np.any(tfeats != 0, axis=1)
        valid = np.ones(scores.size, dtype=bool)
        if empty.any():
            valid = ~(empty[template_rows(templates, meta.t1)] | empty[template_rows(templates, meta.t2)])
            scores[~valid] = np.nan
        return PairScores(scores, valid, meta.label, meta.path)

    def metrics(self, scores: PairScores, at: Sequence[float]) -> dict[str, Any]:
        fars = [float(f) for f in at]
        try:
            ss = ScoreSet(scores.labels[scores.valid], scores.scores[scores.valid])
        except ValueError as exc:
            raise DataFormatError(f"{scores.pair_path}: cannot compute a ROC: {exc}") from None
        ss.top_impostors(ss.k_for(max(fars)))
        cells = {conv: [ss.cell(f, conv).to_dict() for f in fars] for conv in ("nearest", "strict")}
        auc = ss.auc()
        curve = ss.curve(max(fars))
        return {
            "counts": {"pairs": int(scores.scores.size), "pairs_excluded": int((~scores.valid).sum()),
                       "pairs_scored": int(scores.valid.sum()), "genuine": ss.n_pos, "impostor": ss.n_neg},
            "tar_at_far": cells,
            "auc": auc,
            "separated": ss.separated,
            "roc": report.downsample_curve(curve.fpr, curve.tpr, curve.thresholds),
            "_curve": curve,
        }

    def headline(self, metrics: dict[str, Any], at: float) -> float:
        """TAR (nearest convention) at FAR `at`; NaN when the cell is not meaningful."""
        for cell in metrics["tar_at_far"]["nearest"]:
            if math.isclose(cell["far"], at, rel_tol=1e-9):
                return float("nan") if cell["tar"] is None else float(cell["tar"])
        raise ValueError(f"FAR {at:g} was not evaluated")
