"""Every error a person sees is one line that names the thing, with an exit code per error class and
the traceback only under -v (the CLI run as `python -m gbcosface` in a subprocess)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gbcosface.errors import EXIT_CODES, MAX_MESSAGE_CHARS, exit_code_for, one_line

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gbcosface", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _bomb() -> str:
    lines = ['a0: &a0 "lol"']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n    ".join(lines)


@pytest.mark.parametrize(("module", "name"), sorted(EXIT_CODES))
def test_every_class_in_the_table_exists_and_its_subclasses_share_its_code(module, name):
    cls = getattr(importlib.import_module(module), name)
    sub = type("Sub" + name, (cls,), {})
    assert exit_code_for(sub.__new__(sub)) == EXIT_CODES[(module, name)]


def test_the_docs_table_lists_the_same_codes_as_the_code():
    text = (REPO / "docs" / "architecture.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` .*\| (\d+) \|$", text, flags=re.M))
    assert rows, "docs/architecture.md has no exit-code table"
    for (_, name), code in EXIT_CODES.items():
        assert rows.get(name) == str(code), name


def test_unknown_errors_are_bugs_and_messages_are_one_bounded_line():
    assert exit_code_for(RuntimeError("x")) is None
    assert one_line(ValueError("invalid PyTorchJob:\n  a: bad\n  b: worse")) == "invalid PyTorchJob:; a: bad; b: worse"
    long = one_line(ValueError("x" * 10_000))
    assert len(long) < MAX_MESSAGE_CHARS + 50 and long.endswith("(8,000 more characters)")


def test_a_non_utf8_config_is_one_line_naming_the_file_in_job_render_and_train(tmp_path):
    config = tmp_path / "latin.yaml"
    config.write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    render = _cli("job", "render", "--config", str(config), "--image", "gbcosface:dev", "--run-id", "r1",
                  "--namespace", "default", cwd=tmp_path)
    assert render.returncode == 3
    assert render.stderr.strip().splitlines() == [
        f"gbcosface job render: {config}: not UTF-8 text (byte 16); YAML must be UTF-8"]
    train = _cli("train", "--config", str(config), cwd=tmp_path)
    assert train.returncode == 3
    assert train.stderr.strip().splitlines() == [f"error: {config}: not UTF-8 text (byte 16); YAML must be UTF-8"]


def test_job_render_of_a_config_with_an_alias_bomb_is_refused_in_one_line(tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text("loss:\n  name: gb_cosface\n  params:\n    " + _bomb() + "\n")
    proc = _cli("job", "render", "--config", str(config), "--image", "gbcosface:dev", "--run-id", "r1",
                "--namespace", "default", cwd=tmp_path)
    assert proc.returncode == 3
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"gbcosface job render: {config}: the document expands to more than 1,000,000 nodes "
                           "through YAML aliases (near line "), line


def test_the_traceback_comes_only_with_verbose(tmp_path):
    quiet = _cli("data", "inspect", str(tmp_path), cwd=tmp_path)
    assert quiet.returncode == 4
    assert quiet.stderr.strip().splitlines() == [f"error: {tmp_path / 'property'}: property file not found "
                                                 "(expected 'num_classes,height,width')"]
    loud = _cli("-v", "data", "inspect", str(tmp_path), cwd=tmp_path)
    assert loud.returncode == 4
    assert "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip()
