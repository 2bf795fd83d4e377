"""Test helpers around the real Prometheus tools (``prometheus``, ``promtool``).

Why fail rather than skip when they are missing: the monitoring tests are the only evidence that
the rules and the exporter work with Prometheus; a silent skip would let `make test` pass on a
machine that checked nothing. `make prometheus` (part of `make test`) installs both.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from gbcosface.monitoring.prometheus_local import (
    PrometheusNotInstalled,
    PrometheusServer,
    find_binary,
)

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_RULE = REPO / "k8s" / "monitoring" / "prometheusrule.yaml"


def require(name: str) -> str:
    """Path of a Prometheus tool, or fail the test saying how to install it."""
    try:
        return find_binary(name)
    except PrometheusNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; the caller asserts on returncode and output."""
    cmd = [require("promtool"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)


@contextmanager
def prometheus_server(
    targets: Sequence[str], workdir: Path, *, rules_from: Path | None = PROMETHEUS_RULE
) -> Iterator[PrometheusServer]:
    """A real Prometheus on 127.0.0.1 (free port, 1 s scrapes, storage under ``workdir``)."""
    require("prometheus")
    server = PrometheusServer(targets, workdir, scrape_interval="1s", rules_from=rules_from)
    server.start()
    try:
        yield server
    finally:
        server.stop()
