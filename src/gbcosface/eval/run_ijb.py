"""`evaluate_ijb`: one IJB-B/IJB-C evaluation (1:1, 1:N or both) from a backbone file to a result directory.

Images are embedded once and aggregated into template features once; each protocol (`IJBProtocol`:
`ijb_11.Verification11`, `ijb_1n.Identification1N`) then scores those. Writes into `result_dir`:
- 1:1: `scores.npy` (float64 as the official script's, one score per line of the pair file, NaN for
  pairs left out), `roc.png`, and in `metrics.json` the top-level keys `tar_at_far` (both
  conventions), `auc`, `roc` (a few hundred ROC points up to FPR ~ the largest FAR), `counts`.
- 1:N: `cmc.png`, `det.png` and the `identification` section of `metrics.json` (CMC and TPIR@FPIR per
  gallery, their mean, both conventions; curves for the plots).
- Always: `metrics.json` (flags, model sha256 and path, the meta files' sha256, image and template
  counts, timings) and `report.html`; each file atomically, metrics.json last. Optionally the N/D/F
  flag table (`flag_sets`): 1:1 TAR for each flag combination from the same extraction.

Pairs left out: with --skip-missing, a template whose images are all missing has no feature; its
pairs are not scored (NaN in scores.npy) and are counted in `counts.pairs_excluded`; such probe or
gallery templates are left out of 1:N and counted.
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
from gbcosface.eval.identification import DEFAULT_FPIRS, DEFAULT_RANKS
from gbcosface.eval.ijb import IJBProtocol, image_weights, template_features
from gbcosface.eval.ijb_1n import Identification1N
from gbcosface.eval.ijb_11 import Verification11
from gbcosface.eval.roc import DEFAULT_FARS

PROTOCOL_CHOICES = {"11": ("11",), "1N": ("1N",), "both": ("11", "1N")}
ALL_FLAG_SETS = tuple((n, d, f) for n in (True, False) for d in (True, False) for f in (True, False))


def get_protocols(names: str | Sequence[str], ranks: Sequence[int] = DEFAULT_RANKS) -> list[IJBProtocol]:
    """Protocol objects for "11" | "1N" | "both" (or a list of "11"/"1N"); unknown names are refused."""
    if isinstance(names, str):
        key = {"1n": "1N", "11": "11", "both": "both", "1:1": "11", "1:n": "1N"}.get(names.strip().lower())
        if key is None:
            raise ValueError(f"protocol must be one of 11, 1N, both; got {names!r}")
        names = PROTOCOL_CHOICES[key]
    table = {"11": Verification11, "1N": lambda: Identification1N(ranks)}
    bad = [n for n in names if n not in table]
    if bad or not names:
        raise ValueError(f"protocols must be a non-empty subset of 11, 1N; got {list(names)}")
    return [table[n]() for n in dict.fromkeys(names)]


def flag_name(norm_score: bool, detector_score: bool, flip: bool) -> str:
    """insightface's name of a flag combination, e.g. N1D1F0."""
    return f"N{int(norm_score)}D{int(detector_score)}F{int(flip)}"

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
    **extract_options: Any,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """({view: features}, status per image, info) from a features file, the cache, or the model.

    Views are "image" and, with `flip`, "flip" (the flip test adds them)."""
    n = len(meta.images)
    info: dict[str, Any] = {"cache": {}}
    if features_path is not None:
        if flip:
            raise ValueError("--flip needs the model: a features file holds one view only")
        feats = fx.load_features_file(features_path, n, str(list_path))
        return {"image": feats}, np.zeros(n, np.int8), {"source": str(features_path)}
    if model_path is None:
        raise ValueError("a model path (or a features file) is needed")
    views = ["image", "flip"] if flip else ["image"]
    model_sha = fx.file_sha256(model_path)
    cache = fx.FeatureCache(cache_dir) if cache_dir else None
    variant = {k: extract_options[k] for k in ("bf16", "decode") if extract_options.get(k) not in (None, False, "cv2")}
    idents = {v: fx.FeatureCache.identity(model_sha, _arch_of(model_path, backbone_type), fx.file_sha256(list_path),
                                          image_path, v, fp16, variant) for v in views}
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
        from gbcosface.eval.export import OnnxBackbone, load_model_file

        backbone = load_model_file(model_path, backbone_type)
        if isinstance(backbone, OnnxBackbone):  # onnxruntime runs the graph: no torch-side layout or casts
            extract_options = {**extract_options, "channels_last": False, "compile": False, "bf16": False}
            fp16 = False
        log.info("embedding %d images (%s) with %s", n, "+".join(todo), model_path)
        res = fx.extract_features(backbone, image_path, meta.images, meta.landmarks, views=todo,
                                  batch_size=batch_size, device=device, fp16=fp16, workers=workers,
                                  skip=missing if missing.any() else None, progress=_progress_logger(),
                                  **extract_options)
        info["extract"] = {"seconds": res.seconds, **res.info}
        for v in todo:
            got[v] = res.views[v]
            info["cache"][v] = "miss"
            if cache is not None:
                cache.save(idents[v], res.views[v], res.status)
        status = res.status if status is None else np.maximum(status, res.status)
    info["model_sha256"] = model_sha
    return got, status, info


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
    protocols: str | Sequence[str] = "11",
    ranks: Sequence[int] = DEFAULT_RANKS,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    flag_sets: Sequence[tuple[bool, bool, bool]] | None = None,
    **extract_options: Any,
) -> dict[str, Any]:
    """Evaluate a backbone on IJB-B or IJB-C (`protocols`: "11", "1N" or "both"); returns metrics (also metrics.json).

    `flag_sets`: (norm_score, detector_score, flip) combinations for the 1:1 flag table (ALL_FLAG_SETS for
    insightface's eight); they need the flip view whenever one has flip on. `extract_options` go to
    `features.extract_features` (e.g. bf16, channels_last, compile, gpu_decode).
    """
    from gbcosface import __version__

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    tname = normalize_target(target)
    protos = get_protocols(protocols, ranks)
    names = [p.name for p in protos]
    if flag_sets and "11" not in names:
        raise ValueError("the flag table (--flags all) is a 1:1 table: it needs --protocol 11 or both")
    tid_path, pts_path, _ = meta_paths(image_path, tname)
    t = time.perf_counter()
    meta = read_ijb_meta(image_path, tname, pairs="11" in names)
    pmeta = {p.name: p.read_meta(image_path, tname, meta) for p in protos}  # bad meta fails before embedding
    timings["read_meta"] = time.perf_counter() - t

    need_flip = flip or any(fs[2] for fs in flag_sets or ())
    t = time.perf_counter()
    views, status, finfo = image_features(
        model_path, image_path, meta, pts_path, backbone_type=backbone_type, flip=need_flip,
        skip_missing=skip_missing, batch_size=batch_size, device=device, workers=workers, fp16=fp16,
        cache_dir=cache_dir, features_path=features_path, **extract_options)
    timings["features"] = time.perf_counter() - t
    if not skip_missing and (status != fx.OK).any():
        i = int(np.flatnonzero(status != fx.OK)[0])
        what = "not found" if status[i] == fx.MISSING else "could not be decoded"
        raise DataFormatError(f"{Path(image_path) / 'loose_crop' / meta.images[i]}: IJB image {what} "
                              f"({int((status != fx.OK).sum()):,} such images; --skip-missing leaves them out)")
    include = status == fx.OK

    def aggregate(n: bool, d: bool, f: bool) -> tuple[np.ndarray, np.ndarray]:
        feats = views["image"] + views["flip"] if f else views["image"]
        weights = image_weights(feats, meta.det_scores, norm_score=n, detector_score=d)
        return template_features(feats, meta.templates, meta.medias, weights=weights,
                                 include=None if include.all() else include)

    t = time.perf_counter()
    tfeats, utemplates = aggregate(norm_score, detector_score, flip)
    timings["aggregate"] = time.perf_counter() - t
    empty = ~np.any(tfeats != 0, axis=1)

    label = tname.upper()
    n_missing = int((status == fx.MISSING).sum())
    n_unreadable = int((status == fx.UNREADABLE).sum())
    meta_files = [tid_path, pts_path] + [f for p in protos for f in p.meta_files(image_path, tname)]
    metrics: dict[str, Any] = {
        "target": label,
        "protocols": names,
        "flags": {"flip": bool(flip), "norm_score": bool(norm_score), "detector_score": bool(detector_score)},
        "model": {"path": str(model_path) if model_path else None, "sha256": finfo.get("model_sha256"),
                  "backbone_type": backbone_type, "features_file": str(features_path) if features_path else None},
        "data": {"image_path": str(image_path), "meta_sha256": {p.name: fx.file_sha256(p) for p in meta_files}},
        "counts": {"images": len(meta.images), "images_missing": n_missing + n_unreadable,
                   "images_not_found": n_missing, "images_unreadable": n_unreadable,
                   "templates": int(utemplates.size), "templates_without_features": int(empty.sum())},
    }
    scores11 = curve = None
    for proto in protos:
        t = time.perf_counter()
        scores = proto.score(tfeats, utemplates, pmeta[proto.name])
        timings[f"score_{proto.name}"] = time.perf_counter() - t
        t = time.perf_counter()
        if proto.name == "11":
            scores11 = scores
            m11 = proto.metrics(scores, fars)
            curve = m11.pop("_curve")
            metrics["counts"].update(m11.pop("counts"))
            metrics.update(m11)
            metrics["fars"] = [float(f) for f in fars]
        else:
            metrics["identification"] = proto.metrics(scores, fpirs)
        timings[f"metrics_{proto.name}"] = time.perf_counter() - t
    if flag_sets:
        t = time.perf_counter()
        metrics["flags_table"] = flags_table(aggregate, pmeta["11"], flag_sets, fars)
        timings["flags_table"] = time.perf_counter() - t
    metrics["features"] = {k: v for k, v in finfo.items() if k != "model_sha256"}
    metrics["version"] = __version__

    # Everything is rendered before the first file is replaced, so a failure leaves old results whole;
    # metrics.json, which says what the others are, goes last.
    pngs: dict[str, bytes] = {}
    if curve is not None:
        pngs["roc.png"] = report.roc_png({label: (curve.fpr, curve.tpr, metrics["auc"])},
                                         f"ROC on {label} ({report.flags_text(metrics['flags'])})")
    if "identification" in metrics:
        pngs["cmc.png"], pngs["det.png"] = report.identification_pngs(metrics)
    html = report.render_html(metrics, pngs.get("roc.png"), extra_pngs=pngs).encode("utf-8")
    timings["total"] = time.perf_counter() - t_start
    metrics["timings"] = timings
    doc = (json.dumps(metrics, indent=2) + "\n").encode("utf-8")
    out = Path(result_dir)
    out.mkdir(parents=True, exist_ok=True)
    if scores11 is not None:
        report.atomic_write_bytes(out / "scores.npy", lambda fh: np.save(fh, scores11.scores))
    for name, data in pngs.items():
        report.atomic_write_bytes(out / name, data)
    report.atomic_write_bytes(out / "report.html", html)
    report.atomic_write_bytes(out / "metrics.json", doc)
    if not quiet:
        if "tar_at_far" in metrics:
            print(report.format_table(metrics))
        if "identification" in metrics:
            print(report.format_identification_table(metrics))
        if "flags_table" in metrics:
            print(report.format_flags_table(metrics))
        if metrics["counts"]["images_missing"]:
            print(f"skipped {n_missing:,} missing and {n_unreadable:,} unreadable images "
                  f"(zero features, left out of their templates)")
        print(f"results in {out}")
    return metrics


def flags_table(aggregate, pairs, flag_sets: Sequence[tuple[bool, bool, bool]], fars: Sequence[float]
                ) -> dict[str, Any]:
    """1:1 TAR (both conventions) and AUC for each (norm, detector, flip) combination, from the same features."""
    proto = Verification11()
    rows = {}
    for n, d, f in flag_sets:
        tf, ut = aggregate(n, d, f)
        m = proto.metrics(proto.score(tf, ut, pairs), fars)
        rows[flag_name(n, d, f)] = {"flags": {"norm_score": n, "detector_score": d, "flip": f},
                                    "tar_at_far": m["tar_at_far"], "auc": m["auc"]}
    return rows
