"""Fixtures for the tests that run the built image (`-m image`, run by `make image-test`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gbcosface.launch.containers import (
    SESSION_LABEL,
    ContainerError,
    PodmanService,
    docker_client,
    remove_labelled,
)

IMAGE_ENV = "GBCOSFACE_IMAGE"


@pytest.fixture(scope="session")
def image() -> str:
    """The image under test: GBCOSFACE_IMAGE, which `make image-test` sets to what it built."""
    name = os.environ.get(IMAGE_ENV)
    if not name:
        pytest.fail(f"{IMAGE_ENV} is not set: run `make image-test` (it builds the image and sets it)")
    return name


@pytest.fixture(scope="session")
def engine(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Docker SDK client: DOCKER_HOST if set, else a podman service for the session (stopped after)."""
    session = "image-tests"
    if os.environ.get("DOCKER_HOST"):
        client = docker_client()
        yield client
        remove_labelled(client, SESSION_LABEL, session)
        return
    log_path = Path(tmp_path_factory.mktemp("podman")) / "service.log"
    with PodmanService(cleanup_label=f"{SESSION_LABEL}={session}", log_path=log_path) as service:
        os.environ["DOCKER_HOST"] = service.url
        try:
            client = docker_client(service.url)
            try:
                client.images.get(image)
            except Exception as exc:  # noqa: BLE001 - any lookup failure means the same thing here
                raise ContainerError(f"image {image} not found: run `make build-images ENGINE=podman`") from exc
            yield client
        finally:
            os.environ.pop("DOCKER_HOST", None)
