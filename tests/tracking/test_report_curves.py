"""The HTML report's training curves, drawn from the run's TensorBoard event files (local and on S3)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from gbcosface.tracking.curves import add_to_report, curves_png, read_scalars
from gbcosface.tracking.tensorboard import TensorBoardLog


def _write_run(output: str) -> dict[str, list[tuple[int, float]]]:
    tb = TensorBoardLog(output)
    expected: dict[str, list[tuple[int, float]]] = {}
    for step in range(5, 101, 5):
        values = {"train/loss": 10 * math.exp(-step / 40), "train/cos_v": 0.1 + step / 200,
                  "train/lr": 0.1 if step < 60 else 0.01}
        if step % 50 == 0:
            values["val/lfw/accuracy"] = 0.5 + step / 250
        tb.scalars(values, step)
        for k, v in values.items():
            expected.setdefault(k, []).append((step, float(np.float32(v))))
    tb.close()
    return expected


def test_event_files_round_trip_exactly_and_draw_four_panels(tmp_path: Path) -> None:
    expected = _write_run(str(tmp_path / "train"))
    scalars = read_scalars(str(tmp_path / "train" / "tensorboard"))
    assert scalars == expected
    png = curves_png(scalars)
    assert png is not None and png.startswith(b"\x89PNG")
    assert curves_png({"train/samples_per_s": [(1, 3.0)]}) is None  # nothing of the four panels


def test_report_gains_the_curves_section(tmp_path: Path) -> None:
    _write_run(str(tmp_path / "train"))
    metrics = {"target": "IJBC", "flags": {"flip": False, "norm_score": True, "detector_score": True},
               "model": {"path": "m.pt", "sha256": "ab" * 32, "backbone_type": None},
               "data": {"image_path": "IJB", "meta_sha256": {}}, "counts": {"pairs": 10}, "version": "0.1.0"}
    result = tmp_path / "eval"
    result.mkdir()
    assert add_to_report(result, metrics, str(tmp_path / "train" / "tensorboard"))
    html = (result / "report.html").read_text()
    assert "<h2>Training curves</h2>" in html and 'alt="training curves"' in html
    assert (result / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert not add_to_report(tmp_path / "eval2", metrics, str(tmp_path / "nowhere"))


@pytest.mark.integration
def test_curves_come_from_s3_event_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gbcosface.storage import list_uri
    from gbcosface.storage.local_server import LocalS3Server

    with LocalS3Server() as server:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        server.create_bucket("tb-bucket")
        expected = _write_run("s3://tb-bucket/runs/r1/train")
        assert [k for k in list_uri("s3://tb-bucket/runs/r1/train/tensorboard") if "tfevents" in k]
        assert read_scalars("s3://tb-bucket/runs/r1/train/tensorboard", server.endpoint_url) == expected
