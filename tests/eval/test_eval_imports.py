"""The evaluation modules import one way: data.ijb -> eval.ijb -> ijb_11 / ijb_1n -> run_ijb (STYLE.md 2(c))."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LOWER = {
    "gbcosface.eval.ijb": ["gbcosface.eval.ijb_11", "gbcosface.eval.ijb_1n", "gbcosface.eval.run_ijb"],
    "gbcosface.eval.identification": ["gbcosface.eval.ijb_1n", "gbcosface.eval.run_ijb", "torch"],
    "gbcosface.eval.ijb_1n": ["gbcosface.eval.ijb_11", "gbcosface.eval.run_ijb"],
    "gbcosface.eval.ijb_11": ["gbcosface.eval.ijb_1n", "gbcosface.eval.run_ijb"],
}


@pytest.mark.parametrize("module", sorted(LOWER))
def test_a_lower_module_does_not_pull_in_the_ones_above(module):
    code = f"import sys, json, {module}; print(json.dumps(sorted(m for m in sys.modules if m.startswith(('gbcosface', 'torch')))))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                           text=True).stdout))
    assert not loaded & set(LOWER[module]), loaded & set(LOWER[module])


def test_both_protocols_have_the_interface():
    from gbcosface.eval.ijb import IJBProtocol
    from gbcosface.eval.run_ijb import get_protocols

    wanted = [n for n in vars(IJBProtocol) if not n.startswith("_")] + list(IJBProtocol.__annotations__)
    assert {"score", "metrics", "headline", "name"} <= set(wanted)
    for proto in get_protocols("both"):
        missing = [n for n in wanted if not hasattr(proto, n)]
        assert not missing, (proto.name, missing)
