"""Fixtures for the launch tests: the vendored PyTorchJob CRD schema and a small rendered job."""

from __future__ import annotations

import pytest
from fake_kube_api import FakeApiServer
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


@pytest.fixture()
def api():
    """The fake Kubernetes API server (tests/launch/fake_kube_api.py): the one mock, as no API server runs here."""
    with FakeApiServer() as server:
        yield server
