"""The DAG compiles with KFP's own compiler and the IR loads back with KFP."""

from __future__ import annotations

import yaml
from kfp import components

from gbcosface.pipeline_cli import compile_pipeline


def _docs(path):
    return list(yaml.safe_load_all(path.read_text()))


def test_pipeline_compiles_and_loads_back(tmp_path):
    out = compile_pipeline(tmp_path / "p.yaml")
    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "gbcosface-train-eval"
    inputs = set(loaded.component_spec.inputs)
    assert {"data_uri", "output_uri", "recipe", "launcher", "gate_far", "gate_min_tar"} <= inputs

    ir, platform = _docs(out)
    root_tasks = ir["root"]["dag"]["tasks"]
    # The exit handler wraps the whole run and cleanup runs on exit whatever happened.
    assert root_tasks["cleanup-job"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    inner = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert {"stage-data", "train-model", "evaluate-model", "gate"} <= set(inner)
    # Side-effecting steps never come from cache.
    for name in ("stage-data", "train-model", "evaluate-model"):
        assert inner[name]["cachingOptions"].get("enableCache", False) is False, name
    # The gate's branches: publish only on pass.
    branches = ir["components"]["comp-condition-branches-2"]["dag"]["tasks"]
    conditions = {name: t["triggerPolicy"]["condition"] for name, t in branches.items()}
    assert conditions["condition-3"] == "inputs.parameter_values['pipelinechannel--gate-Output'] == 'pass'"
    assert conditions["condition-4"].startswith("!(")
    assert "publish" in ir["components"]["comp-condition-3"]["dag"]["tasks"]
    assert "record-rejection" in ir["components"]["comp-condition-4"]["dag"]["tasks"]
    text = out.read_text()
    # Run-scoped names come from the run, not from compile time.
    assert "{{$.pipeline_job_name}}" in text
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-evaluate-model"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    for name in ("exec-stage-data", "exec-train-model", "exec-publish"):
        assert executors[name]["secretAsEnv"][0]["secretName"] == "gbcosface-s3"
