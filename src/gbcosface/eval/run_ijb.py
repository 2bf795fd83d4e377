"""`evaluate_ijb`: one IJB-B/IJB-C 1:1 evaluation from a backbone file to a result directory.

Writes into `result_dir`: `scores.npy` (float64 as the official script's, one score per line of the
pair file, NaN for pairs left out), `metrics.json` (both TAR conventions, AUC, flags, model sha256
and path, the meta files' sha256, counts, and `roc`: a few hundred ROC points up to FPR ~ the
largest FAR, as the official plot), `roc.png` and `report.html`; each file atomically. Prints the
TAR@FAR table with the flags used.

Pairs left out: with --skip-missing, a template whose images are all missing has no feature; its
pairs are not scored (NaN in scores.npy) and are counted in `counts.pairs_excluded`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gbcosface.data.errors import DataFormatError
from gbcosface.data.ijb import meta_paths, normalize_target, read_ijb_meta
from gbcosface.eval import features as fx
from gbcosface.eval import report
from gbcosface.eval.ijb import (
    UnknownTemplateError,
    image_weights,
    pair_scores,
    template_features,
    template_rows,
)
from gbcosface.eval.roc import DEFAULT_FARS, ScoreSet

log = logging.getLogger(__name__)


def _arch_of(model_path: str, backbone_type: str | None) -> dict[str, Any]:
    """What identifies the architecture for the cache: the sidecar JSON (if any) and the override."""
    from gbcosface.models import sidecar_path

    side = sidecar_path(model_path)
    arch: dict[str, Any] = {}
    if side.is_file() and side != Path(model_path):
        try:
            arch = json.loads(side.read_text())
        except ValueError:
            arch = {"sidecar_sha256": fx.file_sha256(side)}
    return {"sidecar": arch, "backbone_type": backbone_type}


def _progress_logger(step: float = 0.1):
    """A progress callback that logs about every `step` of the images, with the rate so far."""
    start = time.perf_counter()
    state = {"next": step}

    def report(done: int, total: int) -> None:
        if total and (done / total >= state["next"] or done == total):
            state["next"] = (int(done / total / step) + 1) * step
            rate = done / max(time.perf_counter() - start, 1e-9)
            log.info("embedded %d/%d images (%.0f images/s)", done, total, rate)

    return report


def image_features(
    model_path: str | None,
    image_path: str,
    meta,
    list_path: Path,
    *,
    backbone_type: str | None,
    flip: bool,
    skip_missing: bool,
    batch_size: int,
    device,
    workers: int | None,
    fp16: bool,
    cache_dir: str | None,
    features_path: str | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(image features f or f + f_flip, status per image, info) from a features file, the cache, or the model."""
    n = len(meta.images)
    info: dict[str, Any] = {"cache": {}}
    if features_path is not None:
        if flip:
            raise ValueError("--flip needs the model: a features file holds one view only")
        return fx.load_features_file(features_path, n, str(list_path)), np.zeros(n, np.int8), {"source": str(features_path)}
    if model_path is None:
        raise ValueError("a model path (or a features file) is needed")
    views = ["image", "flip"] if flip else ["image"]
    model_sha = fx.file_sha256(model_path)
    cache = fx.FeatureCache(cache_dir) if cache_dir else None
    idents = {v: fx.FeatureCache.identity(model_sha, _arch_of(model_path, backbone_type), fx.file_sha256(list_path),
                                          image_path, v, fp16) for v in views}
    got: dict[str, np.ndarray] = {}
    status = None
    if cache is not None:
        for v in views:
            hit = cache.load(idents[v], n, str(list_path))
            if hit is not None:
                got[v], st = hit
                status = st if status is None else np.maximum(status, st)
                info["cache"][v] = "hit"
    todo = [v for v in views if v not in got]
    if todo:
        missing = fx.find_missing(image_path, meta.images)
        if missing.any() and not skip_missing:
            i = int(np.flatnonzero(missing)[0])
            raise DataFormatError(
                f"{Path(image_path) / 'loose_crop' / meta.images[i]}: IJB image {meta.images[i]!r} not found "
                f"({int(missing.sum()):,} of {n:,} listed in {list_path} are missing; --skip-missing leaves them out)"
            )
        from gbcosface.models import load_backbone

        backbone = load_backbone(model_path, name=backbone_type)
        log.info("embedding %d images (%s) with %s", n, "+".join(todo), model_path)
        res = fx.extract_features(backbone, image_path, meta.images, meta.landmarks, views=todo,
                                  batch_size=batch_size, device=device, fp16=fp16, workers=workers,
                                  skip=missing if missing.any() else None, progress=_progress_logger())
        info["extract"] = {"seconds": res.seconds, **res.info}
        for v in todo:
            got[v] = res.views[v]
            info["cache"][v] = "miss"
            if cache is not None:
                cache.save(idents[v], res.views[v], res.status)
        status = res.status if status is None else np.maximum(status, res.status)
    feats = got["image"] if not flip else got["image"] + got["flip"]
    info["model_sha256"] = model_sha
    return feats, status, info


def evaluate_ijb(
    model_path: str | None,
    image_path: str,
    target: str,
    result_dir: str,
    backbone_type: str | None = None,
    batch_size: int = 128,
    flip: bool = False,
    norm_score: bool = True,
    detector_score: bool = True,
    skip_missing: bool = False,
    device=None,
    workers: int | None = None,
    fp16: bool = False,
    cache_dir: str | None = None,
    features_path: str | None = None,
    fars: Sequence[float] = DEFAULT_FARS,
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate a backbone on IJB-B or IJB-C 1:1 verification; returns the metrics dict (also metrics.json)."""
    from gbcosface import __version__

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    tname = normalize_target(target)
    tid_path, pts_path, pair_path = meta_paths(image_path, tname)
    t = time.perf_counter()
    meta = read_ijb_meta(image_path, tname)
    timings["read_meta"] = time.perf_counter() - t

    t = time.perf_counter()
    feats, status, finfo = image_features(
        model_path, image_path, meta, pts_path, backbone_type=backbone_type, flip=flip, skip_missing=skip_missing,
        batch_size=batch_size, device=device, workers=workers, fp16=fp16, cache_dir=cache_dir,
        features_path=features_path)
    timings["features"] = time.perf_counter() - t
    if not skip_missing and (status != fx.OK).any():
        i = int(np.flatnonzero(status != fx.OK)[0])
        what = "not found" if status[i] == fx.MISSING else "could not be decoded"
        raise DataFormatError(f"{Path(image_path) / 'loose_crop' / meta.images[i]}: IJB image {what} "
                              f"({int((status != fx.OK).sum()):,} such images; --skip-missing leaves them out)")

    t = time.perf_counter()
    include = status == fx.OK
    weights = image_weights(feats, meta.det_scores, norm_score=norm_score, detector_score=detector_score)
    tfeats, utemplates = template_features(feats, meta.templates, meta.medias, weights=weights,
                                           include=None if include.all() else include)
    timings["aggregate"] = time.perf_counter() - t

    t = time.perf_counter()
    try:
        scores = pair_scores(tfeats, utemplates, meta.pair_t1, meta.pair_t2)
    except UnknownTemplateError as exc:
        raise DataFormatError(f"{pair_path}:{exc.index + 1}: {exc}") from None
    empty = ~np.any(tfeats != 0, axis=1)
    valid = np.ones(scores.size, dtype=bool)
    if empty.any():
        valid = ~(empty[template_rows(utemplates, meta.pair_t1)] | empty[template_rows(utemplates, meta.pair_t2)])
        scores[~valid] = np.nan
    timings["score"] = time.perf_counter() - t

    t = time.perf_counter()
    labels = meta.pair_label[valid]
    try:
        ss = ScoreSet(labels, scores[valid])
    except ValueError as exc:
        raise DataFormatError(f"{pair_path}: cannot compute a ROC: {exc}") from None
    ss.top_impostors(ss.k_for(max(fars)))
    cells = {conv: [ss.cell(f, conv).to_dict() for f in fars] for conv in ("nearest", "strict")}
    auc = ss.auc()
    curve = ss.curve(max(fars))
    timings["tar_at_far"] = time.perf_counter() - t

    label = tname.upper()
    n_missing = int((status == fx.MISSING).sum())
    n_unreadable = int((status == fx.UNREADABLE).sum())
    metrics: dict[str, Any] = {
        "target": label,
        "flags": {"flip": bool(flip), "norm_score": bool(norm_score), "detector_score": bool(detector_score)},
        "model": {"path": str(model_path) if model_path else None, "sha256": finfo.get("model_sha256"),
                  "backbone_type": backbone_type, "features_file": str(features_path) if features_path else None},
        "data": {"image_path": str(image_path),
                 "meta_sha256": {p.name: fx.file_sha256(p) for p in (tid_path, pts_path, pair_path)}},
        "counts": {"images": len(meta.images), "images_missing": n_missing + n_unreadable,
                   "images_not_found": n_missing, "images_unreadable": n_unreadable,
                   "templates": int(utemplates.size), "templates_without_features": int(empty.sum()),
                   "pairs": int(scores.size), "pairs_excluded": int((~valid).sum()),
                   "pairs_scored": int(valid.sum()), "genuine": ss.n_pos, "impostor": ss.n_neg},
        "tar_at_far": cells,
        "auc": auc,
        "separated": ss.separated,
        "roc": report.downsample_curve(curve.fpr, curve.tpr, curve.thresholds),
        "features": finfo,
        "fars": [float(f) for f in fars],
        "version": __version__,
    }

    # Everything is rendered before the first file is replaced, so a failure leaves old results whole;
    # metrics.json, which says what the others are, goes last.
    png = report.roc_png({label: (curve.fpr, curve.tpr, auc)}, f"ROC on {label} ({report.flags_text(metrics['flags'])})")
    html = report.render_html(metrics, png).encode("utf-8")
    timings["total"] = time.perf_counter() - t_start
    metrics["timings"] = timings
    doc = (json.dumps(metrics, indent=2) + "\n").encode("utf-8")
    out = Path(result_dir)
    out.mkdir(parents=True, exist_ok=True)
    report.atomic_write_bytes(out / "scores.npy", lambda fh: np.save(fh, scores))
    report.atomic_write_bytes(out / "roc.png", png)
    report.atomic_write_bytes(out / "report.html", html)
    report.atomic_write_bytes(out / "metrics.json", doc)
    if not quiet:
        print(report.format_table(metrics))
        if metrics["counts"]["images_missing"]:
            print(f"skipped {n_missing:,} missing and {n_unreadable:,} unreadable images "
                  f"(zero features, left out of their templates)")
        print(f"results in {out}")
    return metrics
