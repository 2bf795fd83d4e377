"""`gbcosface export`: ONNX with a dynamic batch axis, checked with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gbcosface.cli import main
from gbcosface.models import load_backbone

ort = pytest.importorskip("onnxruntime")


def test_export_cli_parity_and_dynamic_batch(tmp_path, tiny_backbone, capsys):
    out = tmp_path / "onnx" / "backbone.onnx"
    assert main(["export", "--model-prefix", str(tiny_backbone), "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and "dynamic batch" in printed
    assert [p.name for p in out.parent.iterdir()] == ["backbone.onnx"]  # no temporary or external-data files

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "input" and not isinstance(inp.shape[0], int)  # a symbolic batch dimension
    model = load_backbone(tiny_backbone)
    for batch in (1, 5):
        x = torch.rand(batch, 3, 112, 112) * 2 - 1
        got = sess.run(["embedding"], {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x).numpy()
        assert got.shape == (batch, 16)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    # The check can fail: another model's outputs do not match this file.
    from gbcosface.eval.export import ExportParityError, check_parity

    from .conftest import make_tiny_backbone

    with pytest.raises(ExportParityError, match="differs from PyTorch"):
        check_parity(make_tiny_backbone(seed=7), out)


def test_export_of_a_bad_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "backbone.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export", "--model-prefix", str(bad), "--onnx", str(tmp_path / "x.onnx"),
                 "--backbone_type", "iresnet18"]) == 4
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
