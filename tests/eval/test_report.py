"""Tables, the comparison view, ROC downsampling and the self-contained HTML report."""

from __future__ import annotations

import base64
import re

import numpy as np

from gbcosface.eval.report import (
    downsample_curve,
    format_comparison,
    format_markdown,
    format_table,
    render_html,
    roc_png,
)
from gbcosface.eval.roc import ScoreSet


def _metrics(seed=0, flags=None, target="IJBB<x>"):
    rng = np.random.default_rng(seed)
    labels = (rng.random(5000) < 0.2).astype(int)
    scores = (rng.standard_normal(5000) + 2 * labels).astype(np.float32)
    ss = ScoreSet(labels, scores)
    fars = (1e-4, 1e-3, 1e-2, 1e-1)
    curve = ss.curve()
    return {
        "target": target,
        "flags": flags or {"flip": False, "norm_score": True, "detector_score": True},
        "model": {"path": "/m/backbone.pt", "sha256": "ab" * 32, "backbone_type": None},
        "data": {"image_path": "IJB", "meta_sha256": {"ijbb_face_tid_mid.txt": "cd" * 32}},
        "counts": {"pairs": 5000, "pairs_scored": 5000, "pairs_excluded": 0, "genuine": ss.n_pos,
                   "impostor": ss.n_neg, "images_missing": 0},
        "tar_at_far": {c: [ss.cell(f, c).to_dict() for f in fars] for c in ("nearest", "strict")},
        "auc": ss.auc(),
        "version": "0.1.0",
    }, curve


def test_table_prints_flags_both_conventions_and_na():
    m, _ = _metrics()
    text = format_table(m)
    assert "[flip off, norm score on, detector score on]" in text
    assert "nearest (published)" in text and "strict (FPR <= FAR)" in text
    rows = {line.split()[0]: line for line in text.splitlines() if re.match(r"\s+1e-", line)}
    assert "n/a (too few impostors)" in rows["1e-4"] and "n/a" not in rows["1e-1"]
    assert f"{100 * m['tar_at_far']['nearest'][3]['tar']:.2f}" in rows["1e-1"]
    md = format_markdown(m)
    assert "| 1e-4 | n/a (too few impostors) | n/a (too few impostors) |" in md


def test_comparison_has_one_column_per_model():
    a, _ = _metrics(0)
    b, _ = _metrics(1)
    text = format_comparison({"untrained": a, "trained": b})
    head = text.splitlines()[1]
    assert "untrained" in head and "trained" in head
    assert "n/a: 1e-4: too few impostors" in text  # ~4,000 impostors: 1e-3 is resolvable (1/FAR rule)
    assert f"{100 * b['auc']:.4f}" in text.splitlines()[-2]


def test_downsample_keeps_ends_and_order():
    rng = np.random.default_rng(0)
    fpr = np.concatenate([[0.0], np.sort(rng.random(10_000)), [1.0]])
    tpr = np.sort(rng.random(fpr.size))
    thr = np.concatenate([[np.inf], np.sort(rng.random(fpr.size - 1))[::-1]])
    d = downsample_curve(fpr, tpr, thr, points=50)
    assert len(d["fpr"]) <= 52 and d["fpr"][-1] == 1.0 and d["fpr"] == sorted(d["fpr"])
    assert all(np.isfinite(d["thresholds"]))


def test_html_is_self_contained_and_escaped():
    m, curve = _metrics()
    png = roc_png({"IJBB": (curve.fpr, curve.tpr, m["auc"])}, "ROC")
    html = render_html(m, png)
    assert "IJBB&lt;x&gt;" in html and "IJBB<x>" not in html
    src = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(src) == png and png[:4] == b"\x89PNG"
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing fetched from elsewhere
    assert "flip off, norm score on, detector score on" in html and "n/a (too few impostors)" in html
