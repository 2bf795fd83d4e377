"""TAR@FAR and AUC for 1:1 verification scores, exact and fast at IJB-C scale (docs/formats.md, "TAR@FAR").

Two conventions for TAR at a target FAR:

- ``nearest`` (every published IJB number): among exactly the points that
  ``sklearn.metrics.roc_curve(labels, scores)`` returns (default ``drop_intermediate=True``, plus its
  prepended (0, 0) point), the one whose FPR is nearest to the target; it may lie above the target.
  Ties in distance go to the point that comes last in roc_curve's order (the highest TPR among equal
  FPRs), as the official script does by flipping the arrays and taking ``min((|fpr - far|, index))``.
- ``strict``: the largest TPR over all thresholds whose FPR <= target.

Why not call roc_curve: at IJB-C size (15.66M pairs) it argsorts everything (seconds). TAR@FAR only
needs the top impostor scores: ``np.partition`` isolates the k largest impostors in linear time, the
ROC points with a threshold above the k-th impostor are then known exactly (counts above a threshold
never depend on what lies below it), and so is roc_curve's thinning of those points (it looks only at
each point's two neighbours). When the answer could still lie among the unknown points below, k grows
(up to all impostors, where the computation is the full one). The AUC uses an exact bucketed
Mann-Whitney count instead of a full sort. Tests check equality with sklearn on random data with ties.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
CONVENTIONS = ("nearest", "strict")
# A cell needs at least 1/FAR impostor pairs: with fewer, not even one false accept fits under the FAR, so no
# operating point can lie near it. This is where the published tables stop: IJB-B's 8,000,000 impostors
# print TAR@1e-6 (8 false accepts), IJB-C's 15.6M as well; neither protocol prints 1e-7. (It was 10/FAR,
# which blanked IJB-B's 1e-6.) The value stays in every cell either way.
MIN_IMPOSTORS_PER_FAR = 1

REASON_FEW_IMPOSTORS = "too few impostors"
REASON_SEPARATED = "scores separate perfectly"


@dataclass(frozen=True)
class TarCell:
    """One TAR@FAR cell. ``value`` is always computed; ``tar`` is None when the cell is meaningless."""

    far: float
    convention: str
    value: float  # the TAR the convention yields, in [0, 1]
    fpr: float  # the FPR of the chosen operating point
    threshold: float  # the score threshold of that point (inf: accept nothing)
    meaningful: bool
    reason: str | None  # why the cell is not meaningful

    @property
    def tar(self) -> float | None:
        return self.value if self.meaningful else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tar"] = self.tar
        d["threshold"] = None if math.isinf(self.threshold) else self.threshold
        return d


@dataclass(frozen=True)
class RocPoints:
    """ROC points as sklearn's roc_curve returns them, possibly only its first part.

    ``complete`` is False when only the points up to FPR ``fpr[-1]`` are listed (top-k mode).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    complete: bool


def split_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(genuine scores sorted ascending, impostor scores) with input checks; labels 1 = genuine."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(f"labels and scores must be 1-D and equally long, got {labels.shape} and {scores.shape}")
    if scores.dtype.kind not in "fiu":
        raise ValueError(f"scores must be numeric, got dtype {scores.dtype}")
    if scores.dtype.kind == "f" and not np.isfinite(scores).all():
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(f"score {bad} is {scores[bad]}: scores must be finite")
    if labels.dtype == bool:
        gen_mask = labels
    else:
        gen_mask = labels == 1
        if not np.all(gen_mask | (labels == 0)):
            bad = int(np.flatnonzero(~(gen_mask | (labels == 0)))[0])
            raise ValueError(f"label {bad} is {labels[bad]!r}: labels must be 0 (impostor) or 1 (genuine)")
    gen = np.sort(scores[gen_mask])
    imp = scores[~gen_mask]
    if gen.size == 0 or imp.size == 0:
        raise ValueError(f"need both genuine and impostor pairs, got {gen.size} genuine and {imp.size} impostor")
    return gen, imp


class ScoreSet:
    """Genuine and impostor scores with the top impostors cached, shared by all cells and conventions."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        self.gen, self.imp = split_scores(labels, scores)  # imp is a fresh copy (boolean indexing)
        self.n_pos, self.n_neg = int(self.gen.size), int(self.imp.size)
        self.imp_max = self.imp.max()
        self._top: tuple[int, np.ndarray, bool] | None = None  # (k asked, sorted top impostors, complete)
        self._points: tuple | None = None  # points() of the cached top impostors

    @property
    def separated(self) -> bool:
        """Every genuine scores above every impostor."""
        return bool(self.gen[0] > self.imp_max)

    def top_impostors(self, k: int) -> tuple[np.ndarray, bool]:
        """(at least the k largest impostor scores, ascending, with all ties of the k-th; complete?).

        Complete means it holds every impostor.
        """
        k = max(1, min(int(k), self.n_neg))
        if self._top is not None and self._top[0] >= k:
            return self._top[1], self._top[2]
        if k >= self.n_neg:
            top, complete = np.sort(self.imp), True
        else:
            cut = self.n_neg - k
            self.imp.partition(cut)  # in place: imp is this object's own copy, and its order is free
            c = self.imp[cut]
            ties = int(np.count_nonzero(self.imp[:cut] == c))
            top = np.sort(self.imp[cut:])
            if ties:
                top = np.concatenate([np.full(ties, c, dtype=top.dtype), top])
            complete = top.size == self.n_neg
        self._top = (k, top, complete)
        self._points = None
        return top, complete

    def points(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
        """ROC points over the top-k impostors: (fps, tps, thresholds, kept, complete).

        fps/tps/thresholds (descending thresholds) are exact for every listed point; ``kept`` says
        whether roc_curve(drop_intermediate=True) keeps it. When not complete, the last listed point
        (threshold = the smallest top impostor) has an unknown fate and is marked not kept.
        """
        top, complete = self.top_impostors(k)
        if self._points is not None:
            return self._points
        c = top[0]
        gen = self.gen if complete else self.gen[np.searchsorted(self.gen, c, "left"):]
        # Two sorted runs: a stable sort merges them in linear time.
        vals = np.sort(np.concatenate([top, gen.astype(top.dtype, copy=False)]), kind="stable")
        if vals.size > 1:
            distinct = np.empty(vals.size, dtype=bool)
            distinct[:-1] = vals[1:] != vals[:-1]
            distinct[-1] = True
            vals = vals[distinct]
        vals = vals[::-1]
        fps = top.size - np.searchsorted(top, vals, "left")
        tps = self.n_pos - np.searchsorted(self.gen, vals, "left")
        n = vals.size
        kept = np.ones(n, dtype=bool)
        if complete:
            if n > 2:
                kept[1:-1] = (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0)
        else:
            # At least one impostor lies below: roc_curve has n + 1 or more points, and only the
            # last listed point lacks its successor.
            if n > 2:
                kept[1:-1] = (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0)
            kept[-1] = False
        result = (fps, tps, vals, kept, complete)
        self._points = result
        return result

    def k_for(self, far: float) -> int:
        """A first guess of how many top impostors settle `far` (a little past far * n)."""
        return int(math.ceil(far * self.n_neg * 1.02)) + 64

    # ---------------------------------------------------------------------------------------------
    # conventions

    def nearest(self, far: float) -> tuple[float, float, float]:
        """(tpr, fpr, threshold) of the roc_curve point nearest to `far` (ties: the later point)."""
        k = self.k_for(far)
        while True:
            fps, tps, vals, kept, complete = self.points(k)
            fpr = np.concatenate([[0.0], fps[kept] / float(self.n_neg)])
            tpr = np.concatenate([[0.0], tps[kept] / float(self.n_pos)])
            thr = np.concatenate([[np.inf], vals[kept].astype(np.float64)])
            dist = np.abs(fpr - far)
            i = dist.size - 1 - int(np.argmin(dist[::-1]))
            if complete:
                return float(tpr[i]), float(fpr[i]), float(thr[i])
            # Unlisted points have FPR >= that of the last listed point.
            bound = fps[-1] / float(self.n_neg) - far
            if vals.size >= 2 and dist[i] < bound:
                return float(tpr[i]), float(fpr[i]), float(thr[i])
            k = 2 * max(k, self._top[0] if self._top else k)

    def strict(self, far: float) -> tuple[float, float, float]:
        """(tpr, fpr, threshold): the largest TPR over all thresholds with FPR <= `far`."""
        n = self.n_neg
        j = min(n, max(0, int(math.floor(far * n))))
        while j < n and (j + 1) / n <= far:
            j += 1
        while j > 0 and j / n > far:
            j -= 1
        if j >= n:  # every threshold is allowed: accept everything
            return 1.0, 1.0, float(min(self.gen[0], self.imp.min()))
        top, _ = self.top_impostors(max(j + 1, self.k_for(far)))
        cut = top[top.size - 1 - j]  # the (j+1)-th largest impostor: the threshold must lie above it
        n_gen = self.n_pos - int(np.searchsorted(self.gen, cut, "right"))
        n_imp = top.size - int(np.searchsorted(top, cut, "right"))
        above = [x for x in (self._next_above(self.gen, cut), self._next_above(top, cut)) if x is not None]
        threshold = float(min(above)) if above else math.inf
        return n_gen / self.n_pos, n_imp / n, threshold

    @staticmethod
    def _next_above(sorted_vals: np.ndarray, x) -> float | None:
        i = int(np.searchsorted(sorted_vals, x, "right"))
        return float(sorted_vals[i]) if i < sorted_vals.size else None

    def cell(self, far: float, convention: str) -> TarCell:
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        far = float(far)
        if not 0.0 < far <= 1.0:
            raise ValueError(f"FAR must be in (0, 1], got {far}")
        tpr, fpr, thr = self.nearest(far) if convention == "nearest" else self.strict(far)
        reason = None
        if self.n_neg < MIN_IMPOSTORS_PER_FAR / far:
            reason = REASON_FEW_IMPOSTORS
        elif self.separated:
            reason = REASON_SEPARATED
        return TarCell(far=far, convention=convention, value=tpr, fpr=fpr, threshold=thr,
                       meaningful=reason is None, reason=reason)

    def auc(self) -> float:
        """Exact area under the ROC curve (Mann-Whitney with ties counted half)."""
        return exact_auc(self.gen, self.imp)

    def curve(self, max_fpr: float = 0.1) -> RocPoints:
        """roc_curve's points up to (at least) FPR `max_fpr`, for plots.

        When the top impostors do not cover every impostor, the last point is the exact ROC point
        at the smallest top impostor, listed whether or not roc_curve's thinning would keep it.
        """
        k = self.k_for(max_fpr)
        fps, tps, vals, kept, complete = self.points(max(k, self._top[0] if self._top else k))
        if not complete:  # the last listed point is exact even if its thinning fate is not known
            kept = kept.copy()
            kept[-1] = True
        return RocPoints(
            fpr=np.concatenate([[0.0], fps[kept] / float(self.n_neg)]),
            tpr=np.concatenate([[0.0], tps[kept] / float(self.n_pos)]),
            thresholds=np.concatenate([[np.inf], vals[kept].astype(np.float64)]),
            complete=complete,
        )


def tar_at_far(labels: np.ndarray, scores: np.ndarray, fars=DEFAULT_FARS, convention: str = "nearest",
               score_set: ScoreSet | None = None) -> list[TarCell]:
    """TAR at each FAR in `fars` under `convention` ("nearest" | "strict"); one TarCell per FAR.

    A cell is marked not meaningful (``tar`` None, ``reason`` set) when there are fewer than 1/FAR
    impostor pairs, or when the scores separate genuine from impostor pairs perfectly.
    """
    ss = score_set or ScoreSet(labels, scores)
    fars = [float(f) for f in fars]
    if fars and 0.0 < max(fars) <= 1.0:
        ss.top_impostors(ss.k_for(max(fars)))  # one partition serves every cell
    return [ss.cell(far, convention) for far in fars]


def exact_auc(gen_sorted: np.ndarray, imp: np.ndarray, buckets: int = 1 << 20) -> float:
    """P(genuine > impostor) + P(genuine == impostor) / 2, computed exactly.

    Why buckets: a monotone map of scores to `buckets` integer cells settles every impostor that shares
    no cell with a genuine by counting (np.bincount); only impostors in a genuine's cell are sorted and
    compared one by one. Linear time, where a full sort of 15.6M scores takes about a second.
    """
    gen = np.asarray(gen_sorted)
    imp = np.asarray(imp)
    m, n = gen.size, imp.size
    dtype = np.result_type(gen.dtype, imp.dtype, np.float32)
    lo = min(gen[0], imp.min())
    hi = max(gen[-1], imp.max())
    if hi == lo:
        return 0.5
    scale = dtype.type((buckets - 1) / (float(hi) - float(lo)))
    lo = dtype.type(lo)

    def bucket(x: np.ndarray) -> np.ndarray:
        # (x - lo) * scale with correctly rounded operations is non-decreasing in x; so is the cast.
        t = np.subtract(x, lo, dtype=dtype)
        np.multiply(t, scale, out=t)
        np.minimum(t, buckets, out=t)
        return t.astype(np.int32)

    b_imp = bucket(imp)
    b_gen = bucket(gen)
    counts = np.bincount(b_imp, minlength=buckets + 1)
    has_gen = np.zeros(buckets + 1, dtype=bool)
    has_gen[b_gen] = True
    sel = np.sort(imp[has_gen[b_imp]].astype(dtype, copy=False))
    counts[has_gen] = 0
    below = np.concatenate([[0], np.cumsum(counts)])  # below[b]: unselected impostors in cells < b
    g = gen.astype(dtype, copy=False)
    left = np.searchsorted(sel, g, "left")
    right = np.searchsorted(sel, g, "right")
    twice_u = int((2 * (below[b_gen] + left) + (right - left)).sum())
    return twice_u / (2.0 * m * n)
