"""Fixtures for the launch tests: the vendored PyTorchJob CRD schema and a small rendered job."""

from __future__ import annotations

import pytest
from launch_helpers import CRD_FILE

from gbcosface.config import load_config
from gbcosface.launch.pytorchjob import JobSpec, render_job
from gbcosface.launch.validate import load_crd_schema


@pytest.fixture(scope="session")
def crd_schema() -> dict:
    return load_crd_schema(CRD_FILE)


@pytest.fixture()
def demo_job():
    spec = JobSpec(name="gbc-test", image="registry.example/gbcosface-trainer:0.1.0", namespace="ns1")
    return render_job(spec, load_config("demo"))
