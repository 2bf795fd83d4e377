"""`gbcosface eval-ijb --protocol 1N|both` end to end on a tiny IJB directory, against independent loops."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gbcosface.cli import main
from gbcosface.data.ijb import write_ijb_1n_meta
from gbcosface.eval.run_ijb import ALL_FLAG_SETS, evaluate_ijb, get_protocols

from .test_eval_ijb import by_hand
from .test_identification import insightface_by_loops, open_set_by_sweep


def subject_of(template: int, per: int = 4) -> int:
    return (template - 103) // 3 // per  # conftest.write_tiny_ijb numbers templates 103, 106, ...


def write_1n(root, fields, per=4):
    """Subjects 0-2 enrol in G1, 3-4 in G2 with their first template; every other template is a probe."""
    uniq = sorted(set(fields["templates"].tolist()))
    firsts = {}
    for t in uniq:
        firsts.setdefault(subject_of(t, per), t)
    gal = {g: (np.array([firsts[s] for s in subs]), np.array(subs) + 1) for g, subs in (("G1", [0, 1, 2]), ("G2", [3, 4]))}
    probes = [t for t in uniq if t not in firsts.values()]
    write_ijb_1n_meta(root, "IJBC", gal, (np.array(probes), np.array([subject_of(t, per) + 1 for t in probes])))
    return gal, probes


def template_feats_by_hand(model, root, fields):
    """Template features from the by-hand embedding of test_eval_ijb (loops), as {template: vector}."""
    import cv2
    import torch

    from gbcosface.data.align import align_face
    from gbcosface.models import load_backbone

    net = load_backbone(model)
    feats = []
    with torch.no_grad():
        for name, lm in zip(fields["images"], fields["landmarks"], strict=True):
            face = align_face(cv2.imread(str(root / "loose_crop" / name)), lm)
            x = ((torch.from_numpy(face.transpose(2, 0, 1).copy()).float()[None] / 255) - 0.5) / 0.5
            feats.append(net(x)[0].double().numpy())
    feats = np.array(feats) * fields["det_scores"][:, None]
    out = {}
    for t in sorted(set(fields["templates"].tolist())):
        total = sum(feats[(fields["templates"] == t) & (fields["medias"] == m)].mean(0)
                    for m in sorted(set(fields["medias"][fields["templates"] == t].tolist())))
        out[t] = total / np.linalg.norm(total)
    return out


@pytest.fixture
def ijb1n(tmp_path, make_ijb):
    root = tmp_path / "IJBC"
    fields = make_ijb(root, n_subjects=5, templates_per_subject=4)
    gal, probes = write_1n(root, fields)
    return root, fields, gal, probes


def test_both_protocols_from_one_extraction_match_independent_loops(tmp_path, ijb1n, tiny_backbone, capsys):
    root, fields, gal, probes = ijb1n
    out = tmp_path / "out"
    argv = ["eval-ijb", "--model-prefix", str(tiny_backbone), "--image-path", str(root), "--result-dir", str(out),
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--no-cache", "--protocol", "both",
            "--ranks", "1,2,5", "--fpirs", "0.1,0.5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "IJBC 1:N identification" in printed and "IJBC 1:1 verification" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocols"] == ["11", "1N"] and "tar_at_far" in m and "auc" in m  # 1:1 keys stay where they were
    np.testing.assert_allclose(np.load(out / "scores.npy"), by_hand(tiny_backbone, root, fields, False, True, True),
                               atol=2e-5)
    ident = m["identification"]
    tf = template_feats_by_hand(tiny_backbone, root, fields)
    pf = np.array([tf[t] for t in probes])
    pids = np.array([subject_of(t) + 1 for t in probes])
    ranks, fpirs = (1, 2, 5), (0.1, 0.5)
    for g, (gt, gs) in gal.items():
        gf = np.array([tf[t] for t in gt])
        want_i = insightface_by_loops(pf, pids, gf, gs, ranks, fpirs)
        want_o = open_set_by_sweep(pf, pids, gf, gs, ranks, fpirs)
        for conv, want in (("insightface", want_i), ("open_set", want_o)):
            got = ident[conv][g]
            assert got["cmc"] == pytest.approx({str(k): v for k, v in want["cmc"].items()}, abs=1e-12), (conv, g)
            assert [c["value"] for c in got["tpir_at_fpir"]] == pytest.approx(
                [want["tpir_at_fpir"][f] for f in fpirs], abs=1e-12), (conv, g)
        assert ident["counts"]["galleries"][g]["mated_probes"] == int(np.isin(pids, gs).sum())
    union_t = np.concatenate([gal["G1"][0], gal["G2"][0]])
    union_s = np.concatenate([gal["G1"][1], gal["G2"][1]])
    want = insightface_by_loops(pf, pids, np.array([tf[t] for t in union_t]), union_s, ranks, fpirs)
    assert ident["combined"] == "G1+G2"
    assert ident["insightface"]["G1+G2"]["cmc"] == pytest.approx({str(k): v for k, v in want["cmc"].items()})
    assert "G1+G2" not in ident["open_set"]  # every probe is mated in the union: no open-set search there
    for conv in ("insightface", "open_set"):
        mean = ident[conv]["mean"]
        assert mean["cmc"]["1"] == pytest.approx((ident[conv]["G1"]["cmc"]["1"] + ident[conv]["G2"]["cmc"]["1"]) / 2)
    for name in ("cmc.png", "det.png", "roc.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    html = (out / "report.html").read_text()
    assert "1:N identification" in html and html.count("data:image/png;base64,") == 3

    # What the evaluate step hands the DAG: the 1:1 scalars stay, the 1:N ones join them.
    from gbcosface.eval.report import format_identification_markdown, identification_rows
    from gbcosface.steps.evaluate import kfp_metrics

    k = kfp_metrics(m)
    assert "auc" in k and any(name.startswith("tar_at_far_") for name in k)
    assert k["ident_insightface_union_rank1"] == ident["insightface"]["G1+G2"]["cmc"]["1"]
    assert k["ident_open_set_mean_rank5"] == ident["open_set"]["mean"]["cmc"]["5"]
    rows = identification_rows(m)
    assert [(r["convention"], r["gallery"]) for r in rows] == [
        ("insightface", "G1"), ("insightface", "G2"), ("insightface", "mean"), ("insightface", "G1+G2"),
        ("open_set", "G1"), ("open_set", "G2"), ("open_set", "mean")]
    md = format_identification_markdown(m)
    assert f"| insightface (ijb_1n.py) | G1+G2 | {100 * ident['insightface']['G1+G2']['cmc']['1']:.2f} |" in md


def test_1n_only_uses_no_pair_file_and_checks_1n_meta_before_embedding(tmp_path, ijb1n, tiny_backbone, capsys):
    root, fields, _, _ = ijb1n
    (root / "meta" / "ijbc_template_pair_label.txt").unlink()  # not needed for 1:N
    m = evaluate_ijb(str(tiny_backbone), str(root), "IJBC", str(tmp_path / "a"), device="cpu", workers=0,
                     protocols="1N", quiet=True)
    assert "tar_at_far" not in m and m["identification"]["galleries"] == ["G1", "G2"]
    assert not (tmp_path / "a" / "scores.npy").exists() and (tmp_path / "a" / "cmc.png").exists()
    probe = root / "meta" / "ijbc_1N_probe_mixed.csv"
    probe.write_text(probe.read_text() + "999999,1,x.jpg,,,,,\n")
    n_lines = len(probe.read_text().splitlines())
    rc = main(["eval-ijb", "--model-prefix", str(tiny_backbone), "--image-path", str(root), "--protocol", "1N",
               "--result-dir", str(tmp_path / "b"), "--no-cache", "--workers", "0"])
    assert rc == 4
    err = capsys.readouterr().err
    assert f"{probe}:{n_lines}: template 999999 has no image" in err


def test_flag_table_from_one_extraction(tmp_path, ijb1n, tiny_backbone, capsys):
    root, fields, _, _ = ijb1n
    m = evaluate_ijb(str(tiny_backbone), str(root), "IJBC", str(tmp_path / "a"), device="cpu", workers=0,
                     flag_sets=ALL_FLAG_SETS)
    printed = capsys.readouterr().out
    table = m["flags_table"]
    assert sorted(table) == sorted(f"N{n}D{d}F{f}" for n in (0, 1) for d in (0, 1) for f in (0, 1))
    labels = fields["pair_label"]
    from sklearn.metrics import roc_auc_score

    for (n, d, f) in [(True, True, False), (False, False, True)]:
        ref = by_hand(tiny_backbone, root, fields, f, n, d)
        assert table[f"N{int(n)}D{int(d)}F{int(f)}"]["auc"] == pytest.approx(roc_auc_score(labels, ref), abs=1e-9)
    assert table["N1D1F0"]["auc"] == m["auc"]  # the run's own flags are one row of the table
    assert "by flags" in printed and "N0D0F1" in printed
    with pytest.raises(ValueError, match="1:1 table"):
        evaluate_ijb(str(tiny_backbone), str(root), "IJBC", str(tmp_path / "b"), protocols="1N", flag_sets=ALL_FLAG_SETS)


def test_protocol_names():
    assert [p.name for p in get_protocols("both")] == ["11", "1N"]
    assert [p.name for p in get_protocols("1n")] == ["1N"]
    with pytest.raises(ValueError, match="one of 11, 1N, both"):
        get_protocols("2N")
    with pytest.raises(ValueError, match="CMC ranks must be positive integers"):
        get_protocols("1N", ranks=(0, 5))


def test_onnx_model_evaluates_like_the_torch_backbone(tmp_path, ijb1n, tiny_backbone):
    """insightface's onnx_ijbc.py path: the exported graph through onnxruntime, same scores."""
    from gbcosface.eval.export import export_onnx

    root, _, _, _ = ijb1n
    onnx = tmp_path / "backbone.onnx"
    export_onnx(tiny_backbone, onnx, check=False)  # parity itself is test_export.py's
    kw = dict(image_path=str(root), target="IJBC", device="cpu", workers=0, quiet=True, protocols="both")
    a = evaluate_ijb(str(tiny_backbone), result_dir=str(tmp_path / "pt"), **kw)
    b = evaluate_ijb(str(onnx), result_dir=str(tmp_path / "onnx"), **kw)
    np.testing.assert_allclose(np.load(tmp_path / "onnx" / "scores.npy"), np.load(tmp_path / "pt" / "scores.npy"),
                               atol=1e-5)
    assert b["identification"]["insightface"]["G1"]["cmc"] == a["identification"]["insightface"]["G1"]["cmc"]
    assert b["model"]["path"] == str(onnx)
