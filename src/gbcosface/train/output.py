"""The run's output location (`run.output`: a local directory or an s3:// prefix).

Why one helper: the trainer writes the same files (config.yaml, train_summary.json, the exported
backbone) whether the output is local (the demo) or S3 (a cluster run). Every write is atomic: a
local file goes through a temporary name and a rename, an S3 object is one PUT. Backbones are saved
with `save_backbone` into a local temporary directory and then uploaded, so both files (weights and
the .json architecture) come from the models package's own writer.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from gbcosface.storage import join_uri, parse_uri, put_bytes


class RunOutput:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.is_s3 = parse_uri(uri).is_s3

    def join(self, *parts: str) -> str:
        return join_uri(self.uri, *parts)

    def write_bytes(self, rel: str, data: bytes) -> str:
        target = self.join(rel)
        if not self.is_s3:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        put_bytes(target, data)
        return target

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def save_backbone(self, backbone: nn.Module, rel_dir: str, arch: dict[str, Any]) -> str:
        """`<rel_dir>/backbone.pt` + `<rel_dir>/backbone.json` via the models package's writer."""
        from gbcosface.models import save_backbone

        if not self.is_s3:
            path = Path(self.join(rel_dir, "backbone.pt"))
            save_backbone(backbone, path, arch)
            return str(path)
        with tempfile.TemporaryDirectory(prefix="gbcosface-backbone-") as tmp:
            local = Path(tmp) / "backbone.pt"
            save_backbone(backbone, local, arch)
            for name in ("backbone.json", "backbone.pt"):  # weights last: their presence means both are there
                put_bytes(self.join(rel_dir, name), (Path(tmp) / name).read_bytes())
        return self.join(rel_dir, "backbone.pt")
