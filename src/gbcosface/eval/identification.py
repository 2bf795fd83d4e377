"""1:N identification (open-set search) of probe templates against a gallery: CMC and TPIR@FPIR.

Two conventions, both computed from one pass over the probe x gallery scores (docs/evaluation.md):

- ``insightface`` (recognition/_evaluation_/ijb/ijb_1n.py, the numbers published with its script):
  closed-set over the probes whose subject has a gallery template (ijb_1n.py raises when a probe has none;
  here such probes are left out and counted, so that the convention also applies to one gallery of a
  split; on G1+G2 together, which ijb_1n.py uses, every probe is mated and the numbers are its own).
  CMC at rank k: the share of probes whose mate is among the k best-scoring gallery templates.
  TPIR at "FPIR" f: with ``K = math.ceil(n_probes * f)`` (that exact float expression), the threshold is
  the K-th largest of ALL non-mated probe x gallery scores, and TPIR is the share of probes whose mated
  score is above it (at any rank).
- ``open_set`` (the standard one: NIST FRVT 1:N, ISO/IEC 19795-1, the IJB-C paper): mated searches are
  the probes whose subject is in the gallery, non-mated searches the others. CMC at rank k over mated
  searches. FPIR(t) = share of non-mated searches whose best score is >= t; TPIR(t) = share of mated
  searches whose mate is at rank 1 with a score >= t. TPIR at FPIR f is the largest TPIR over thresholds
  with FPIR <= f (as roc.py's ``strict`` TAR).

Ranks: 1 + the number of non-mated gallery templates that score strictly above the mate (ties go to
the mate; with float64 cosines ties do not occur in practice). Every gallery subject must have exactly
one template (as in IJB's galleries).

Why blocks: at IJB-C size (19,593 probes x 1,772 gallery templates, 512-D) the score matrix is 278 MB
in float64; probes are scored a block at a time and only per-probe facts (mated score, rank, best
non-mated score) and the top K non-mated scores are kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONVENTIONS_1N = ("insightface", "open_set")
DEFAULT_RANKS: tuple[int, ...] = (1, 5, 10, 20)
DEFAULT_FPIRS: tuple[float, ...] = (0.01, 0.1)
MIN_SEARCHES_PER_FPIR = 1  # as roc.py's 1/FAR: at least one false alarm must fit under the FPIR

__all__ = ["CONVENTIONS_1N", "DEFAULT_FPIRS", "DEFAULT_RANKS", "SearchOutcomes", "TpirCell", "identification_metrics",
           "search"]


@dataclass(frozen=True)
class TpirCell:
    """TPIR at one FPIR under one convention; ``value`` is always computed, ``meaningful`` says if it means much."""

    fpir: float
    convention: str
    value: float  # TPIR in [0, 1]
    threshold: float  # accept scores above this (-inf: accept everything)
    realized_fpir: float  # the FPIR (insightface: false alarms per probe) at that threshold
    meaningful: bool
    reason: str | None

    @property
    def tpir(self) -> float | None:
        return self.value if self.meaningful else None

    def to_dict(self) -> dict:
        return {"fpir": self.fpir, "convention": self.convention, "value": self.value, "tpir": self.tpir,
                "threshold": None if math.isinf(self.threshold) else self.threshold,
                "realized_fpir": self.realized_fpir, "meaningful": self.meaningful, "reason": self.reason}


@dataclass
class SearchOutcomes:
    """What every probe's search against one gallery produced; enough for both conventions and the curves."""

    mated: np.ndarray  # bool (P,): the probe's subject has a gallery template
    mated_score: np.ndarray  # float64 (P,): score against that template (NaN when not mated)
    rank: np.ndarray  # int64 (P,): 1-based rank of the mate (0 when not mated)
    top_score: np.ndarray  # float64 (P,): best score over the whole gallery
    top_negatives: np.ndarray  # float64, descending: the largest non-mated scores of mated probes (at least K)
    n_negatives: int  # how many non-mated scores mated probes have in all
    gallery_size: int

    @property
    def n_mated(self) -> int:
        return int(self.mated.sum())

    @property
    def n_nonmated(self) -> int:
        return int(self.mated.size - self.mated.sum())

    # ------------------------------------------------------------------------------------------------------
    def cmc(self, ranks: Sequence[int]) -> dict[int, float]:
        """Share of mated probes whose mate ranks <= k, for each k (both conventions count the same)."""
        r = self.rank[self.mated]
        return {int(k): float(np.count_nonzero(r <= k) / r.size) for k in ranks}

    def cmc_curve(self, max_rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ranks 1..R, identification rate at each) for the CMC plot."""
        top = min(self.gallery_size, max_rank or self.gallery_size)
        r = self.rank[self.mated]
        counts = np.bincount(np.minimum(r, top + 1), minlength=top + 2)[1 : top + 1]
        return np.arange(1, top + 1), np.cumsum(counts) / r.size

    def insightface_cell(self, fpir: float) -> TpirCell:
        n = self.n_mated
        k = math.ceil(n * fpir)  # ijb_1n.py: required_topk = math.ceil(query_num * far)
        if k > self.top_negatives.size:  # more false alarms allowed than there are negatives: accept all
            threshold = -math.inf
        else:
            threshold = float(self.top_negatives[k - 1])
        pos = self.mated_score[self.mated]
        value = float(np.count_nonzero(pos > threshold) / n)
        alarms = int(np.count_nonzero(self.top_negatives > threshold)) if math.isfinite(threshold) else self.n_negatives
        reason = "too few probes" if n < MIN_SEARCHES_PER_FPIR / fpir else None
        return TpirCell(fpir, "insightface", value, threshold, alarms / n, reason is None, reason)

    def open_set_cell(self, fpir: float) -> TpirCell:
        n_nm = self.n_nonmated
        if n_nm == 0:
            raise ValueError("open-set TPIR@FPIR needs non-mated searches (probes whose subject is not in the gallery)")
        nm = np.sort(self.top_score[~self.mated])[::-1]
        j = strict_count(fpir, n_nm)  # at most j non-mated searches may score at or above the threshold
        threshold = -math.inf if j >= n_nm else float(nm[j])
        hit = self.mated & (self.rank == 1) & (self.mated_score > threshold)
        value = float(np.count_nonzero(hit) / self.n_mated)
        realized = float(np.count_nonzero(nm > threshold) / n_nm)
        reason = "too few non-mated searches" if n_nm < MIN_SEARCHES_PER_FPIR / fpir else None
        return TpirCell(fpir, "open_set", value, threshold, realized, reason is None, reason)

    def cell(self, fpir: float, convention: str) -> TpirCell:
        if convention not in CONVENTIONS_1N:
            raise ValueError(f"convention must be one of {CONVENTIONS_1N}, got {convention!r}")
        fpir = float(fpir)
        if not 0.0 < fpir <= 1.0:
            raise ValueError(f"FPIR must be in (0, 1], got {fpir}")
        return self.insightface_cell(fpir) if convention == "insightface" else self.open_set_cell(fpir)

    def det_curve(self, convention: str, points: int = 60, lowest: float = 1e-4) -> dict[str, list[float]]:
        """TPIR at FPIRs spread in log space from `lowest` to 1, for the TPIR-vs-FPIR (DET-style) plot."""
        fpirs = np.logspace(math.log10(lowest), 0.0, points)
        cells = [self.cell(f, convention) for f in fpirs]
        return {"fpir": fpirs.tolist(), "tpir": [c.value for c in cells]}


def strict_count(rate: float, n: int) -> int:
    """The largest j in [0, n] with j / n <= rate, robust to rounding in rate * n."""
    j = min(n, max(0, int(math.floor(rate * n))))
    while j < n and (j + 1) / n <= rate:
        j += 1
    while j > 0 and j / n > rate:
        j -= 1
    return j


def _mate_columns(probe_ids: np.ndarray, gallery_ids: np.ndarray) -> np.ndarray:
    """Gallery column of each probe's subject (-1 if absent); gallery subjects must be unique."""
    order = np.argsort(gallery_ids, kind="stable")
    sorted_ids = gallery_ids[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if dup.size:
        raise ValueError(f"gallery subject {sorted_ids[dup[0]].item()!r} has more than one gallery template "
                         f"(columns {sorted(order[sorted_ids == sorted_ids[dup[0]]].tolist())}); "
                         f"each gallery subject must have exactly one")
    if sorted_ids.size == 0:
        return np.full(probe_ids.size, -1, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, probe_ids).clip(max=sorted_ids.size - 1)
    found = sorted_ids[pos] == probe_ids
    return np.where(found, order[pos], -1).astype(np.int64)


def search(
    probe_feats: np.ndarray,
    probe_ids: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_ids: np.ndarray,
    keep_negatives: int = 0,
    block_bytes: int = 64 << 20,
) -> SearchOutcomes:
    """Score every probe against the gallery (dot products of the given, normalised, features) in blocks.

    `keep_negatives`: how many of the largest non-mated scores of mated probes to keep (the insightface
    threshold at FPIR f needs ceil(n_mated * f) <= n_mated of them); ties of the last kept one are kept too.
    """
    pf = np.asarray(probe_feats)
    gf = np.asarray(gallery_feats)
    probe_ids = np.asarray(probe_ids)
    gallery_ids = np.asarray(gallery_ids)
    if pf.ndim != 2 or gf.ndim != 2 or pf.shape[1] != gf.shape[1]:
        raise ValueError(f"probe_feats {pf.shape} and gallery_feats {gf.shape} must be (P, D) and (G, D)")
    if probe_ids.shape != (pf.shape[0],) or gallery_ids.shape != (gf.shape[0],):
        raise ValueError(f"probe_ids {probe_ids.shape} and gallery_ids {gallery_ids.shape} must have one id per row")
    if gf.shape[0] == 0 or pf.shape[0] == 0:
        raise ValueError(f"need probes and a gallery, got {pf.shape[0]} probes and {gf.shape[0]} gallery templates")
    dtype = np.result_type(pf.dtype, gf.dtype, np.float32)
    pf = pf.astype(dtype, copy=False)
    gf = gf.astype(dtype, copy=False)
    mate = _mate_columns(probe_ids, gallery_ids)
    p, g = pf.shape[0], gf.shape[0]
    mated = mate >= 0
    mated_score = np.full(p, np.nan)
    rank = np.zeros(p, dtype=np.int64)
    top_score = np.empty(p)
    top_neg = np.zeros(0)
    keep = max(0, int(keep_negatives))
    per_block = max(1, block_bytes // max(1, 8 * g))
    for s in range(0, p, per_block):
        e = min(p, s + per_block)
        sc = np.asarray(pf[s:e] @ gf.T, dtype=np.float64)  # (b, G)
        top_score[s:e] = sc.max(axis=1)
        rows = np.flatnonzero(mated[s:e])
        if rows.size == 0:
            continue
        cols = mate[s:e][rows]
        ms = sc[rows, cols]
        mated_score[s + rows] = ms
        rank[s + rows] = 1 + np.count_nonzero(sc[rows] > ms[:, None], axis=1)
        if keep:
            sub = sc[rows]
            sub[np.arange(rows.size), cols] = -np.inf  # the mated entries are not negatives
            neg = sub.ravel()
            neg = neg[np.isfinite(neg)] if g > 1 else neg[:0]
            top_neg = _top_k(np.concatenate([top_neg, neg]), keep)
    n_neg = int(mated.sum()) * (g - 1)
    return SearchOutcomes(mated=mated, mated_score=mated_score, rank=rank, top_score=top_score,
                          top_negatives=top_neg, n_negatives=n_neg, gallery_size=g)


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """The k largest values, descending, with all ties of the k-th."""
    if values.size > k:
        cut = values.size - k
        part = np.partition(values, cut)
        c = part[cut]
        values = np.concatenate([part[cut:], part[:cut][part[:cut] == c]])
    return np.sort(values)[::-1]


def identification_metrics(
    probe_feats: np.ndarray,
    probe_ids: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_ids: np.ndarray,
    ranks: Sequence[int] = (1, 5, 10),
    fpirs: Sequence[float] = (0.01, 0.1),
    convention: str = "insightface",
) -> dict[str, dict]:
    """``{"cmc": {rank: rate}, "tpir_at_fpir": {fpir: rate}}`` (rates in [0, 1]) of probes searched in a gallery.

    Features are template features as in 1:1 (L2-normalised; scores are their dot products); ids are
    subject ids. `convention`: "insightface" or "open_set" (module docstring). Raises ValueError when no
    probe is mated, and for "open_set" TPIR when no probe is non-mated.
    """
    if convention not in CONVENTIONS_1N:
        raise ValueError(f"convention must be one of {CONVENTIONS_1N}, got {convention!r}")
    bad_rank = [k for k in ranks if int(k) != k or k < 1]
    if bad_rank:
        raise ValueError(f"ranks must be positive integers, got {bad_rank}")
    fpirs = [float(f) for f in fpirs]
    bad = [f for f in fpirs if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"FPIRs must be in (0, 1], got {bad}")
    keep = int(np.isin(np.asarray(probe_ids), np.asarray(gallery_ids)).sum()) if convention == "insightface" else 0
    out = search(probe_feats, probe_ids, gallery_feats, gallery_ids, keep_negatives=keep)
    if out.n_mated == 0:
        raise ValueError("no probe has a gallery template of its subject: nothing to identify")
    return {"cmc": out.cmc(ranks), "tpir_at_fpir": {f: out.cell(f, convention).value for f in fpirs}}
