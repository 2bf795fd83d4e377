"""`gbcosface data pack` / `gbcosface data inspect`."""

from __future__ import annotations

import json

import cv2
import numpy as np
import torch

from gbcosface.cli import main
from gbcosface.data.recordio import IndexedRecordWriter, IRHeader, pack, write_property
from gbcosface.data.train_set import RecordFaceDataset


def _folder(root, make_jpeg):
    counts = {"alice": 3, "bob": 1, "carol": 2}
    k = 0
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for j in range(n):
            (root / name / f"{j}.jpg").write_bytes(make_jpeg(k))
            k += 1
    png = cv2.imdecode(np.frombuffer(make_jpeg(99, quality=100), np.uint8), cv2.IMREAD_COLOR)  # smooth content
    cv2.imwrite(str(root / "bob" / "z.png"), png)
    (root / "empty").mkdir()
    (root / "carol" / "notes.txt").write_text("ignored")
    return png


def test_pack_then_read_and_inspect(tmp_path, make_jpeg, capsys):
    png = _folder(tmp_path / "src", make_jpeg)
    out = tmp_path / "out"
    assert main(["data", "pack", "--src", str(tmp_path / "src"), "--out", str(out)]) == 0
    assert "packed 7 images of 3 identities" in capsys.readouterr().out
    ds = RecordFaceDataset(out)
    assert len(ds) == 7 and ds.num_classes == 3
    assert [ds[i][1] for i in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    # JPEG bytes are stored untouched; the PNG was re-encoded as JPEG (quality 95)
    first = cv2.imdecode(np.frombuffer(make_jpeg(0), np.uint8), cv2.IMREAD_COLOR)
    assert torch.equal(ds[0][0], torch.from_numpy(first[:, :, ::-1].transpose(2, 0, 1).copy()))
    bob_png = ds[4][0].permute(1, 2, 0).numpy()[:, :, ::-1]
    assert np.abs(bob_png.astype(int) - png.astype(int)).mean() < 3

    grid = tmp_path / "grid.png"
    assert main(["data", "inspect", str(out), "--json", "--sample-out", str(grid), "--samples", "5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 7 and summary["identities_property"] == 3 and summary["identities_header"] == 3
    assert summary["has_header"] and summary["image_size"] == [112, 112]
    assert summary["images_per_identity"] == {"min": 2, "median": 2.0, "mean": 2.333, "max": 3}
    img = cv2.imread(str(grid))
    assert img.shape == (112, 5 * 112, 3)
    assert main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "images:          7" in text and "min 2  median 2.0  mean 2.333  max 3" in text


def test_pack_rejects_wrong_size_and_keeps_nothing(tmp_path, make_jpeg, capsys):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "0.jpg").write_bytes(make_jpeg(0))
    (src / "a" / "1.jpg").write_bytes(make_jpeg(1, size=100))
    out = tmp_path / "out"
    assert main(["data", "pack", "--src", str(src), "--out", str(out)]) == 4
    assert "a/1.jpg: image is 100x100, expected 112x112" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_inspect_without_header(tmp_path, make_jpeg, capsys):
    with IndexedRecordWriter(tmp_path / "train.idx", tmp_path / "train.rec") as w:
        for k, label in enumerate([0, 1, 1, 1, 3]):
            w.write(k, pack(IRHeader(0, float(label), k, 0), make_jpeg(k)))
    write_property(tmp_path, 4, 112, 112)
    assert main(["data", "inspect", str(tmp_path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert not s["has_header"] and s["images"] == 5 and s["identities_with_images"] == 3
    assert s["images_per_identity"] == {"min": 0, "median": 1.0, "mean": 1.25, "max": 3}


def test_inspect_bad_set_reports_file(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path)]) == 4
    assert "property file not found" in capsys.readouterr().err
