"""Values no Kubernetes API server (or container runtime) takes are refused at render, by field,
for both job kinds: env names with spaces, images with ';', label / node selector / toleration
values with newlines. Rules: kubernetes apimachinery pkg/util/validation (IsEnvVarName,
IsQualifiedName, IsValidLabelValue, whose Go `$` matches only at the end of the text) and
distribution/reference's image grammar."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from gbcosface.config import load_config
from gbcosface.launch.kinds import get_job_kind
from gbcosface.launch.spec import JobSpec, is_quantity
from gbcosface.launch.validate import is_image_reference, is_label_value, job_errors

GOOD = JobSpec(name="gbc-values", image="registry.example:5000/team/gbcosface:v1.2")

BAD = {
    "env name with a space": ({"env": {"MY VAR": "1"}}, r"env: 'MY VAR' is not a valid environment variable name"),
    "env name with '='": ({"env": {"A=B": "1"}}, r"'A=B' is not a valid environment variable name"),
    "nccl env name": ({"nccl_env": {"1NCCL": "x"}}, r"nccl_env: '1NCCL' is not a valid environment"),
    "image with ';'": ({"image": "gbcosface:dev;rm -rf /"}, r"image 'gbcosface:dev;rm -rf /' is not an image reference"),
    "image with a space": ({"image": "gbcosface dev"}, r"is not an image reference"),
    "label value with a newline": ({"labels": {"team": "vision\n"}}, r"labels: the value 'vision\\n' of 'team'"),
    "node selector value with a newline": (
        {"node_selector": {"gpu": "h100\n"}}, r"node_selector: the value 'h100\\n' of 'gpu'"),
    "node selector key with a newline": ({"node_selector": {"gpu\n": "h100"}}, r"node_selector: 'gpu\\n' is not"),
    "toleration value with a newline": (
        {"tolerations": [{"key": "k", "operator": "Equal", "value": "v\n", "effect": "NoSchedule"}]},
        r"tolerations\[0\]\.value: 'v\\n' is not a valid label value"),
    "toleration effect": ({"tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedul"}]},
                          r"tolerations\[0\]\.effect: 'NoSchedul'"),
    "quantity with a newline": ({"memory_request": "8Gi\n"}, r"memory_request '8Gi\\n' is not a Kubernetes quantity"),
}


@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
def test_a_good_spec_renders_for_both_kinds(kind):
    rendered = get_job_kind(kind).render(GOOD, load_config("demo"))
    assert rendered.job["metadata"]["name"] == "gbc-values"


@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_values_kubernetes_refuses_are_refused_at_render(kind, case):
    changes, message = BAD[case]
    spec = dataclasses.replace(GOOD, **changes)
    with pytest.raises(ValueError, match=message):
        get_job_kind(kind).render(spec, load_config("demo"))


def test_label_values_with_a_trailing_newline_fail_the_rendered_job_check_too():
    job = get_job_kind("pytorchjob").render(GOOD, load_config("demo")).job
    job["metadata"]["labels"]["team"] = "vision\n"
    assert any("label 'team' has an invalid value" in e for e in job_errors(job))


@pytest.mark.parametrize("image", [
    "gbcosface", "localhost/gbcosface:dev", "registry.example:5000/a/b-c_d:1.0",
    "docker.io/pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime", "r.example/x@sha256:" + "a" * 64,
])
def test_ordinary_image_references_pass(image):
    assert is_image_reference(image)


def test_label_values_and_quantities_use_whole_string_matches():
    assert is_label_value("") and is_label_value("a.b-c_d") and not is_label_value("a" * 64)
    assert not is_label_value("ok\n") and not is_label_value("-a")
    assert is_quantity("16Gi") and not is_quantity("16Gi\n")


def test_job_render_cli_refuses_an_env_name_with_a_space_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gbcosface", "job", "render", "--config", "demo", "--image", "gbcosface:dev",
         "--run-id", "r1", "--env", "MY VAR=1", "--namespace", "default"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'MY VAR' is not a valid environment variable name" in lines[0], proc.stderr


@pytest.mark.parametrize("kind", ["pytorchjob", "trainjob"])
def test_rendering_needs_no_test_only_package(kind):
    """The image's train step renders the job (steps/train.py) with the runtime dependencies only:
    jsonschema is a test extra, so rendering must not import it (it once did, and the image's train
    step failed with ModuleNotFoundError while every test here passed)."""
    code = (
        "import sys\n"
        "for name in ('jsonschema', 'kubernetes_validate'):\n"
        "    sys.modules[name] = None  # any import of it raises ImportError\n"
        "from gbcosface.config import load_config\n"
        "from gbcosface.launch.kinds import get_job_kind\n"
        "from gbcosface.launch.spec import JobSpec\n"
        f"job = get_job_kind({kind!r}).render(JobSpec(name='gbc-deps', image='gbcosface:1'), load_config('demo'))\n"
        "print('rendered', type(job).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rendered" in proc.stdout
