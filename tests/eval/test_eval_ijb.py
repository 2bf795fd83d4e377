"""`gbcosface eval-ijb` end to end on a tiny IJB directory, checked against a by-hand recomputation."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from gbcosface.cli import main
from gbcosface.data.align import align_face
from gbcosface.data.errors import DataFormatError
from gbcosface.eval import features as fx
from gbcosface.eval.run_ijb import evaluate_ijb
from gbcosface.models import load_backbone

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def by_hand(model_path, root, fields, flip, norm_score, detector_score):
    """Embed each image alone, then the template and score definitions with loops, then sklearn."""
    model = load_backbone(model_path)
    feats = []
    with torch.no_grad():
        for name, lm in zip(fields["images"], fields["landmarks"], strict=True):
            face = align_face(cv2.imread(str(root / "loose_crop" / name)), lm)
            x = ((torch.from_numpy(face.transpose(2, 0, 1).copy()).float()[None] / 255) - 0.5) / 0.5
            f = model(x)[0].double()
            if flip:
                f = f + model(torch.flip(x, dims=[3]))[0].double()
            feats.append(f.numpy())
    feats = np.array(feats)
    if not norm_score:
        feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    if detector_score:
        feats = feats * fields["det_scores"][:, None]
    tfeat = {}
    for t in sorted(set(fields["templates"].tolist())):
        total = np.zeros(feats.shape[1])
        for m in sorted(set(fields["medias"][fields["templates"] == t].tolist())):
            rows = (fields["templates"] == t) & (fields["medias"] == m)
            total += feats[rows].mean(0)
        tfeat[t] = total / np.linalg.norm(total)
    scores = np.array([tfeat[a] @ tfeat[b] for a, b in zip(fields["pair_t1"], fields["pair_t2"], strict=True)])
    return scores


def official_nearest(labels, scores, far):
    fpr, tpr, _ = roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, i = min(zip(abs(fpr - far), range(len(fpr)), strict=True))
    return tpr[i]


@pytest.fixture
def ijb(tmp_path, make_ijb):
    root = tmp_path / "IJBC"
    return root, make_ijb(root)


@pytest.mark.parametrize("flip, norm_score, detector_score, workers",
                         [(False, True, True, 0), (True, False, False, 1)])
def test_eval_ijb_cli_end_to_end(tmp_path, ijb, tiny_backbone, capsys, flip, norm_score, detector_score, workers):
    """Defaults as the official evaluation, and the other flags with a loader worker process."""
    root, fields = ijb
    out = tmp_path / "out"
    argv = ["eval-ijb", "--model-prefix", str(tiny_backbone), "--image-path", str(root), "--result-dir", str(out),
            "--batch-size", "4", "--target", "IJBC", "--workers", str(workers), "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache")]
    argv += ["--flip"] if flip else []
    argv += [] if norm_score else ["--no-norm-score"]
    argv += [] if detector_score else ["--no-detector-score"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    flags = f"flip {'on' if flip else 'off'}, norm score {'on' if norm_score else 'off'}, " \
            f"detector score {'on' if detector_score else 'off'}"
    assert flags in printed and "n/a (too few impostors)" in printed

    scores = np.load(out / "scores.npy")
    ref = by_hand(tiny_backbone, root, fields, flip, norm_score, detector_score)
    assert scores.dtype == np.float64 and scores.shape == ref.shape
    np.testing.assert_allclose(scores, ref, atol=2e-5)

    m = json.loads((out / "metrics.json").read_text())
    labels = fields["pair_label"]
    assert m["flags"] == {"flip": flip, "norm_score": norm_score, "detector_score": detector_score}
    assert m["counts"]["pairs"] == len(labels) and m["counts"]["genuine"] == int(labels.sum())
    assert m["counts"]["images"] == len(fields["images"]) and m["counts"]["images_missing"] == 0
    assert m["model"]["sha256"] == fx.file_sha256(tiny_backbone) and m["model"]["path"] == str(tiny_backbone)
    assert set(m["data"]["meta_sha256"]) == {"ijbc_face_tid_mid.txt", "ijbc_name_5pts_score.txt",
                                             "ijbc_template_pair_label.txt"}
    n_imp = int((labels == 0).sum())
    for cell, far in zip(m["tar_at_far"]["nearest"], FARS, strict=True):
        assert cell["value"] == official_nearest(labels, scores, far)
        assert (cell["tar"] is None) == (n_imp < 1 / far or cell["reason"] is not None)
    assert m["tar_at_far"]["nearest"][0]["reason"] == "too few impostors"
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and flags in html and "n/a (too few impostors)" in html
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp"))  # no temporary files left behind


def test_rescoring_with_other_flags_reuses_cached_features(tmp_path, ijb, tiny_backbone, monkeypatch):
    root, _ = ijb
    cache = tmp_path / "cache"
    common = dict(model_path=str(tiny_backbone), image_path=str(root), target="ijbc", batch_size=8,
                  device="cpu", workers=0, cache_dir=str(cache), quiet=True)
    first = evaluate_ijb(result_dir=str(tmp_path / "a"), **common)
    assert first["features"]["cache"] == {"image": "miss"}

    def no_embedding(*args, **kwargs):
        raise AssertionError("features should have come from the cache")

    monkeypatch.setattr(fx, "extract_features", no_embedding)
    second = evaluate_ijb(result_dir=str(tmp_path / "b"), norm_score=False, detector_score=False, **common)
    assert second["features"]["cache"] == {"image": "hit"}
    assert second["auc"] != first["auc"]  # the flags did change the scores
    with pytest.raises(AssertionError, match="cache"):  # the flip view is not cached yet
        evaluate_ijb(result_dir=str(tmp_path / "c"), flip=True, **common)
    from gbcosface.models import save_backbone

    from .conftest import make_tiny_backbone

    save_backbone(make_tiny_backbone(seed=5), tiny_backbone)  # other weights, same path
    with pytest.raises(AssertionError, match="cache"):  # keyed by the file's sha256, not its name
        evaluate_ijb(result_dir=str(tmp_path / "d"), **common)


def test_cached_features_of_the_wrong_length_are_a_clear_error(tmp_path, ijb, tiny_backbone):
    root, fields = ijb
    cache = tmp_path / "cache"
    kw = dict(model_path=str(tiny_backbone), image_path=str(root), target="IJBC", device="cpu", workers=0,
              cache_dir=str(cache), quiet=True)
    evaluate_ijb(result_dir=str(tmp_path / "a"), **kw)
    (npy,) = cache.glob("*.npy")
    np.save(npy, np.zeros((len(fields["images"]) - 1, 16), np.float32))
    with pytest.raises(DataFormatError, match=rf"{npy.name}: {len(fields['images']) - 1} feature rows but "
                                              rf".*ijbc_name_5pts_score.txt lists {len(fields['images'])} images"):
        evaluate_ijb(result_dir=str(tmp_path / "b"), **kw)


def test_features_file_count_mismatch_via_cli(tmp_path, ijb, capsys):
    root, fields = ijb
    n = len(fields["images"])
    good = tmp_path / "feats.npy"
    np.save(good, np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32))
    assert main(["eval-ijb", "--features", str(good), "--image-path", str(root), "--result-dir",
                 str(tmp_path / "ok"), "--no-cache"]) == 0
    bad = tmp_path / "short.npy"
    np.save(bad, np.zeros((n + 3, 8), np.float32))
    capsys.readouterr()
    assert main(["eval-ijb", "--features", str(bad), "--image-path", str(root), "--result-dir",
                 str(tmp_path / "bad"), "--no-cache"]) == 4
    err = capsys.readouterr().err
    assert f"short.npy: {n + 3} feature rows but" in err and f"lists {n} images" in err


def test_malformed_meta_line_names_file_and_line(tmp_path, ijb, tiny_backbone, capsys):
    root, _ = ijb
    tid = root / "meta" / "ijbc_face_tid_mid.txt"
    lines = tid.read_text().splitlines()
    lines[4] = lines[4].split()[0] + " 17"  # one field short
    tid.write_text("\n".join(lines) + "\n")
    rc = main(["eval-ijb", "--model-prefix", str(tiny_backbone), "--image-path", str(root), "--result-dir",
               str(tmp_path / "out"), "--no-cache", "--workers", "0"])
    assert rc == 4
    assert f"{tid}:5:" in capsys.readouterr().err


def test_pair_naming_unknown_template_is_a_clear_error(tmp_path, ijb, tiny_backbone, capsys):
    root, _ = ijb
    pairs = root / "meta" / "ijbc_template_pair_label.txt"
    lines = pairs.read_text().splitlines()
    lines[2] = "999999 " + lines[2].split()[1] + " 0"
    pairs.write_text("\n".join(lines) + "\n")
    rc = main(["eval-ijb", "--model-prefix", str(tiny_backbone), "--image-path", str(root), "--result-dir",
               str(tmp_path / "out"), "--no-cache", "--workers", "0"])
    assert rc == 4
    err = capsys.readouterr().err
    assert f"{pairs}:3:" in err and "999999" in err


def test_missing_image_fails_unless_skipped(tmp_path, make_ijb, tiny_backbone, capsys):
    root = tmp_path / "IJBB"
    fields = make_ijb(root, target="IJBB")
    # Remove one image of a multi-image template, and every image of another template.
    t = fields["templates"]
    multi = next(x for x in np.unique(t) if (t == x).sum() >= 2)
    single = next(x for x in np.unique(t) if x != multi)
    gone = [int(np.flatnonzero(t == multi)[0])] + np.flatnonzero(t == single).tolist()
    for i in gone:
        (root / "loose_crop" / fields["images"][i]).unlink()
    # An undecodable file is "unreadable", also left out only with --skip-missing.
    other = next(i for i in range(len(t)) if i not in gone and t[i] not in (multi, single))
    (root / "loose_crop" / fields["images"][other]).write_bytes(b"not a jpeg")
    args = ["eval-ijb", "--model-prefix", str(tiny_backbone), "--image-path", str(root), "--target", "IJBB",
            "--no-cache", "--workers", "0", "--batch-size", "5"]
    rc = main(args + ["--result-dir", str(tmp_path / "strict")])
    assert rc == 4
    err = capsys.readouterr().err
    assert str(root / "loose_crop" / fields["images"][gone[0]]) in err and f"{len(gone)} of" in err
    assert not (tmp_path / "strict" / "metrics.json").exists()

    rc = main(args + ["--result-dir", str(tmp_path / "skip"), "--skip-missing"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"skipped {len(gone)} missing and 1 unreadable images" in printed
    m = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert m["counts"]["images_not_found"] == len(gone) and m["counts"]["images_unreadable"] == 1
    assert m["counts"]["templates_without_features"] == 1
    involved = (fields["pair_t1"] == single) | (fields["pair_t2"] == single)
    assert m["counts"]["pairs_excluded"] == int(involved.sum())
    assert m["counts"]["pairs_scored"] == len(involved) - int(involved.sum())
    scores = np.load(tmp_path / "skip" / "scores.npy")
    assert np.isnan(scores[involved]).all() and np.isfinite(scores[~involved]).all()
    # The multi-image template's feature comes from its remaining images only.
    keep = np.ones(len(t), bool)
    keep[gone + [other]] = False
    sub = {k: (v[keep] if isinstance(v, np.ndarray) and v.shape[0] == len(t) else v) for k, v in fields.items()}
    sub["images"] = [n for n, k in zip(fields["images"], keep, strict=True) if k]
    sub["pair_t1"], sub["pair_t2"] = fields["pair_t1"][~involved], fields["pair_t2"][~involved]
    ref = by_hand(tiny_backbone, root, sub, False, True, True)
    np.testing.assert_allclose(scores[~involved], ref, atol=2e-5)


def test_unknown_target_and_flip_with_features_file(tmp_path, ijb):
    root, fields = ijb
    with pytest.raises(ValueError, match="ijbb, ijbc"):
        evaluate_ijb(None, str(root), "IJBA", str(tmp_path / "o"))
    feats = tmp_path / "f.npy"
    np.save(feats, np.ones((len(fields["images"]), 4), np.float32))
    with pytest.raises(ValueError, match="flip"):
        evaluate_ijb(None, str(root), "IJBC", str(tmp_path / "o"), features_path=str(feats), flip=True)


def test_official_flag_spellings(tmp_path, ijb):
    root, fields = ijb
    feats = tmp_path / "f.npy"
    np.save(feats, np.random.default_rng(1).standard_normal((len(fields["images"]), 4)).astype(np.float32))
    out = tmp_path / "res"
    rc = main(["eval-ijb", "--features", str(feats), "--image_path", str(root), "--result_dir", str(out),
               "--job", "insightface", "--use_norm_score", "0", "--use_detector_score", "False", "--no-cache"])
    assert rc == 0
    m = json.loads((out / "insightface" / "metrics.json").read_text())
    assert m["flags"] == {"flip": False, "norm_score": False, "detector_score": False}
    assert math.isfinite(m["auc"])


def test_scores_are_written_atomically(tmp_path, ijb, monkeypatch):
    """A failure while writing leaves the previous results intact."""
    root, fields = ijb
    feats = tmp_path / "f.npy"
    np.save(feats, np.random.default_rng(1).standard_normal((len(fields["images"]), 4)).astype(np.float32))
    out = tmp_path / "res"
    evaluate_ijb(None, str(root), "IJBC", str(out), features_path=str(feats), quiet=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    import gbcosface.eval.report as report

    monkeypatch.setattr(report, "render_html", broken)
    with pytest.raises(OSError):
        evaluate_ijb(None, str(root), "IJBC", str(out), features_path=str(feats), quiet=True, detector_score=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(before) == ["metrics.json", "report.html", "roc.png", "scores.npy"]
