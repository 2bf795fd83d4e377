"""Hostile backbone files: a pickle that names code is refused as unsafe (in our words, never torch's
advice to set weights_only=False), and an architecture sidecar asking for terabytes is refused
before anything is allocated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from gbcosface.models import BackboneLoadError, get_backbone, load_backbone, save_backbone


class _Evil:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def test_a_pickle_that_names_code_is_refused_as_unsafe_without_torchs_advice(tmp_path):
    path = tmp_path / "backbone.pt"
    torch.save({"conv1.weight": _Evil()}, path)
    with pytest.raises(BackboneLoadError) as info:
        load_backbone(path, name="iresnet18")
    message = str(info.value)
    assert message.startswith(f"{path}: refused as unsafe") and "system" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


def _tiny_saved(tmp_path):
    model = get_backbone("iresnet18", embedding_size=8, width=4, layers=[1, 1, 1, 1], stem_stride=2)
    return save_backbone(model, tmp_path / "backbone.pt")


@pytest.mark.parametrize(("change", "message"), [
    ({"embedding_size": 10**12}, r"'embedding_size' must be an integer in 1\.\.65536"),
    ({"layers": [10**9, 1, 1, 1]}, r"'layers' must be at most 16 block counts"),
    ({"width": True}, r"'width' must be an integer"),
    ({"embedding_size": 65536, "width": 4096}, r"parameters \(.* GB in float32\), more than .* can hold"),
])
def test_a_sidecar_asking_for_terabytes_is_refused_before_building(tmp_path, change, message):
    path = _tiny_saved(tmp_path)
    side = path.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), **change}))
    with pytest.raises(BackboneLoadError, match=r"backbone\.json: .*" + message):
        load_backbone(path)


def test_the_cli_says_unsafe_in_one_line(tmp_path):
    path = tmp_path / "backbone.pt"
    torch.save({"conv1.weight": _Evil()}, path)
    proc = subprocess.run(
        [sys.executable, "-m", "gbcosface", "export", "--model-prefix", str(path), "--onnx", str(tmp_path / "x.onnx"),
         "--backbone_type", "iresnet18"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: refused as unsafe"), proc.stderr
