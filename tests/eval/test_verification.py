"""10-fold .bin verification against a plain re-implementation, and `gbcosface eval-bin` end to end."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold

from gbcosface.data.bin_sets import BinSet, load_bin, write_bin
from gbcosface.eval.verification import (
    evaluate_bin,
    evaluate_embeddings,
    fold_slices,
    l2_normalize,
    pair_distances,
)

from .conftest import face_image, make_tiny_backbone


def plain_verification(emb, issame, nfolds=10):
    """The protocol with loops: normalise, squared distances, per fold pick the best of 400 thresholds."""
    emb = np.asarray(emb, np.float64)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = [float(np.sum((emb[2 * i] - emb[2 * i + 1]) ** 2)) for i in range(len(issame))]
    thresholds = [k / 100 for k in range(400)]

    def acc(t, idx):
        return sum(1 for i in idx if (dist[i] < t) == bool(issame[i])) / len(idx)

    accs, thrs = [], []
    for train, test in KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(issame))):
        train_acc = [acc(t, train) for t in thresholds]
        best = thresholds[train_acc.index(max(train_acc))]  # the first best
        thrs.append(best)
        accs.append(acc(best, test))
    return float(np.mean(accs)), float(np.std(accs)), float(np.mean(thrs))


@pytest.mark.parametrize("pairs", [20, 157, 600])
def test_evaluate_embeddings_against_plain_loops(pairs):
    rng = np.random.default_rng(pairs)
    issame = rng.random(pairs) < 0.5
    a = rng.standard_normal((pairs, 12))
    b = np.where(issame[:, None], a + rng.normal(0, 0.9, a.shape), rng.standard_normal(a.shape))
    emb = np.empty((2 * pairs, 12), np.float32)
    emb[0::2], emb[1::2] = a * rng.uniform(1, 30, (pairs, 1)), b
    res = evaluate_embeddings(emb, issame)
    acc, std, thr = plain_verification(emb, issame)
    assert res["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert res["std"] == pytest.approx(std, abs=1e-12)
    assert res["threshold"] == pytest.approx(thr, abs=1e-12)
    assert 0.5 < res["accuracy"] < 1.0  # neither trivial nor perfect: the test can tell


def test_normalisation_and_distances_are_float64_as_insightface():
    """sklearn.preprocessing.normalize works in float64; float32 rounding moved a pair in 36 hard sets."""
    rng = np.random.default_rng(5)
    emb = (rng.standard_normal((400, 512)) * rng.uniform(1, 80, (400, 1))).astype(np.float32)
    assert l2_normalize(emb).dtype == np.float64
    e = emb.astype(np.float64)
    e /= np.sqrt((e * e).sum(axis=1, keepdims=True))
    expected = np.array([np.dot(e[2 * i] - e[2 * i + 1], e[2 * i] - e[2 * i + 1]) for i in range(200)])
    dist = pair_distances(emb)
    assert dist.dtype == np.float64
    np.testing.assert_allclose(dist, expected, rtol=0, atol=1e-13)  # float32 normalisation errs by ~1e-7


def test_flip_defaults_agree_between_api_and_cli():
    """Both off, as the official training callback (flip_test=False); was on in the API."""
    import argparse
    import inspect

    from gbcosface.eval import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["eval-bin", "--model-prefix", "m.pt", "--data-dir", "d"])
    assert inspect.signature(evaluate_bin).parameters["flip"].default is False
    assert args.flip is False and args.fp16 is False
    assert parser.parse_args(["eval-ijb", "--image-path", "x"]).flip is False


def test_folds_are_in_order_like_kfold():
    for n in (10, 23, 6000, 7001):
        ours = [(s.start, s.stop) for s in fold_slices(n)]
        ref = [(int(t[0]), int(t[-1]) + 1) for _, t in KFold(10).split(np.arange(n))]
        assert ours == ref
    with pytest.raises(ValueError, match="at least"):
        fold_slices(5)


def test_evaluate_embeddings_shape_error():
    with pytest.raises(ValueError, match="2 per pair"):
        evaluate_embeddings(np.zeros((5, 3)), np.zeros(3, bool))


def _binset(pairs=40, seed=0):
    rng = np.random.default_rng(seed)
    imgs, issame = [], []
    for p in range(pairs):
        same = bool(p % 2)
        s1 = int(rng.integers(0, 1000))
        s2 = s1 if same else s1 + 1
        imgs += [face_image(s1, 2 * p, 112)[:, :, ::-1], face_image(s2, 2 * p + 1, 112)[:, :, ::-1]]
        issame.append(same)
    images = torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).copy())
    return BinSet(images=images, issame=np.array(issame))


@pytest.mark.parametrize("flip", [False, True])
def test_evaluate_bin_against_manual_embedding(flip):
    model = make_tiny_backbone(1)
    binset = _binset()
    model.train()
    res = evaluate_bin(model, binset, batch_size=7, device="cpu", flip=flip)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        x = ((binset.images.float() / 255) - 0.5) / 0.5
        f = model(x)
        norms = [float(v) for v in torch.linalg.vector_norm(f, dim=1)]
        if flip:
            ff = model(torch.flip(x, dims=[3]))
            norms += [float(v) for v in torch.linalg.vector_norm(ff, dim=1)]
            f = f + ff
    acc, std, thr = plain_verification(f.numpy(), binset.issame)
    assert set(res) == {"accuracy", "std", "xnorm", "threshold"}
    assert res["accuracy"] == pytest.approx(acc, abs=1e-9) and res["std"] == pytest.approx(std, abs=1e-9)
    assert res["threshold"] == pytest.approx(thr, abs=1e-9)
    assert res["xnorm"] == pytest.approx(sum(norms) / len(norms), rel=1e-5)


def test_eval_bin_cli(tmp_path, tiny_backbone, capsys):
    from gbcosface.cli import main

    data = tmp_path / "val"
    data.mkdir()
    binset = _binset(pairs=30, seed=3)
    bufs = [cv2.imencode(".png", img.permute(1, 2, 0).numpy()[:, :, ::-1].copy())[1].tobytes() for img in binset.images]
    write_bin(data / "lfw.bin", bufs, binset.issame.tolist())
    write_bin(data / "agedb_30.bin", bufs[:40], binset.issame[:20].tolist())
    out = tmp_path / "res.json"
    rc = main(["eval-bin", "--model-prefix", str(tiny_backbone), "--data-dir", str(data), "--targets", "lfw,agedb_30",
               "--flip", "--batch-size", "8", "--device", "cpu", "--output", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "[lfw] accuracy" in text and "[agedb_30] accuracy" in text and "flip on" in text
    doc = json.loads(out.read_text())
    from gbcosface.models import load_backbone

    expected = evaluate_bin(load_backbone(tiny_backbone), load_bin(data / "lfw.bin"), 8, "cpu", True)
    assert doc["results"]["lfw"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert doc["results"]["agedb_30"]["pairs"] == 20 and math.isfinite(doc["results"]["lfw"]["xnorm"])


def test_eval_bin_cli_missing_set_is_a_clear_error(tmp_path, tiny_backbone, capsys):
    from gbcosface.cli import main

    rc = main(["eval-bin", "--model-prefix", str(tiny_backbone), "--data-dir", str(tmp_path), "--targets", "cfp_fp"])
    assert rc == 4  # DataFormatError (gbcosface.errors)
    assert "cfp_fp.bin" in capsys.readouterr().err
