"""Lineage: what every artifact records about how it was made.

Why: "same inputs, same config, same images -> same artifacts" is only checkable if each artifact
names its inputs. Every step attaches the same record (config hash, dataset manifest hash, code
version, image reference, seed, run id) to its outputs, and the publish step ties them together.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gbcosface


@dataclass(frozen=True)
class Lineage:
    run_id: str
    config_hash: str
    dataset_manifest_hash: str
    code_version: str
    image: str
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def code_version() -> str:
    """Package version plus the git commit: baked into images as GBCOSFACE_GIT_COMMIT, else read from
    the checkout this package was imported from (editable installs), else the version alone."""
    commit = os.environ.get("GBCOSFACE_GIT_COMMIT", "").strip()
    if not commit:
        root = Path(gbcosface.__file__).resolve().parents[2]
        if (root / ".git").exists():
            try:
                commit = subprocess.run(
                    ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                    capture_output=True, text=True, timeout=5, check=True,
                ).stdout.strip()
                dirty = subprocess.run(
                    ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                    capture_output=True, text=True, timeout=5, check=True,
                ).stdout.strip()
                if dirty:
                    commit += "-dirty"
            except (OSError, subprocess.SubprocessError):
                commit = ""
    return f"{gbcosface.__version__}+{commit}" if commit else gbcosface.__version__
