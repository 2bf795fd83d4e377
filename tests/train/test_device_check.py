"""bench/device_check.sh parses and its CPU smoke mode runs every check to "ok" and prints the table.

The GPU mode cannot run here (no CUDA device); this keeps the prepared script from rotting between
the sessions that are lent a GPU: the same code paths run, with tiny sizes, on the CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, child_env

pytestmark = pytest.mark.integration

CHECKS = ("train-r100-eager", "sharded-head", "synthetic-world", "ijb-embed", "nvml", "trainer-cuda", "eval-cuda")


def test_device_check_script_parses() -> None:
    proc = subprocess.run(["bash", "-n", str(REPO / "bench" / "device_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_device_check_cpu_smoke_mode_runs_every_check(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(REPO / "bench" / "device_check.sh"), "--cpu", "--workdir", str(tmp_path)],
                          cwd=REPO, env=child_env(PYTHON=sys.executable, DEVICE_WHEELS=str(tmp_path / "none")),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-6000:]}"
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in proc.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| check")}
    assert set(rows) == set(CHECKS), proc.stdout
    assert all(status == "ok" for status in rows.values()), proc.stdout
