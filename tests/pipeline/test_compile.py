"""The DAG compiles with KFP's own compiler and the IR loads back with KFP."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from kfp import components

from gbcosface.images import DEFAULT_IMAGE, image_ref
from gbcosface.pipeline_cli import compile_pipeline


def _docs(path):
    return list(yaml.safe_load_all(path.read_text()))


def test_pipeline_compiles_and_loads_back(tmp_path):
    """Built for the newest backend (every feature); the per-version IR is in test_backend_matrix.py."""
    out = compile_pipeline(tmp_path / "p.yaml", backend="2.17")
    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "gbcosface-train-eval"
    inputs = set(loaded.component_spec.inputs)
    assert {"data_uri", "output_uri", "recipe", "launcher", "gate_far", "gate_min_tar"} <= inputs

    ir, platform = _docs(out)
    root_tasks = ir["root"]["dag"]["tasks"]
    # The exit handler wraps the whole run and cleanup runs on exit whatever happened.
    assert root_tasks["cleanup-job"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    inner = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert {"stage-data", "train-model", "evaluate-model", "evaluate-other-targets", "gate"} <= set(inner)
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
    # Run-scoped names come from the run's unique id, passed whole (see test_backend_rules.py).
    assert inner["train-model"]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-evaluate-model"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    for name in ("exec-stage-data", "exec-train-model", "exec-publish"):
        # The S3 secret's name is a run parameter, not a compile-time constant.
        ref = executors[name]["secretAsEnv"][0]["secretNameParameter"]
        assert ref == {"componentInputParameter": "pipelinechannel--s3_secret"}, name
    # Every step pod has a deadline, and the finished run's workflow a TTL.
    for name in ("exec-stage-data", "exec-train-model", "exec-evaluate-model", "exec-gate", "exec-publish",
                 "exec-cleanup-job", "exec-record-rejection"):
        assert int(executors[name]["activeDeadlineSeconds"]) > 0, name
    assert platform["platforms"]["kubernetes"]["pipelineConfig"]["resourceTtlOnCompletion"] > 0
    # Images come from the run's `pipeline_image` parameter, whose default is what `make compile` named.
    for name, executor in ir["deploymentSpec"]["executors"].items():
        assert executor["container"]["image"] == "{{$.inputs.parameters['pipelinechannel--pipeline_image']}}", name
    defaults = ir["root"]["inputDefinitions"]["parameters"]
    assert defaults["pipeline_image"]["defaultValue"] == DEFAULT_IMAGE
    assert defaults["trainer_image"]["defaultValue"] == DEFAULT_IMAGE
    assert defaults["namespace"]["defaultValue"] == ""  # "": the namespace the step's pod runs in


def test_compile_takes_the_image_and_pull_secrets(tmp_path):
    out = compile_pipeline(tmp_path / "p.yaml", image="registry.example/team/gbcosface:9.9",
                           image_pull_secrets=("regcred",))  # the default backend: the oldest, 2.4
    ir, platform = _docs(out)
    assert ir["root"]["inputDefinitions"]["parameters"]["pipeline_image"]["defaultValue"] == \
        "registry.example/team/gbcosface:9.9"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-stage-data", "exec-train-model", "exec-gate", "exec-cleanup-job"):
        assert executors[name]["imagePullSecret"][0]["secretName"] == "regcred", name


def test_make_compile_and_build_images_name_the_same_image():
    """One source of truth: the Makefile's defaults give gbcosface.images.DEFAULT_IMAGE."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(["make", "-s", "-C", str(root), "print-image"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == DEFAULT_IMAGE
    out = subprocess.run(["make", "-s", "-C", str(root), "print-image", "REGISTRY=r.example/x", "TAG=7"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == image_ref("r.example/x", "7")


def test_the_manifests_run_the_one_image_that_is_built():
    """Every container image in k8s/ (jobs, runtimes, overlays) is gbcosface.images.DEFAULT_IMAGE."""
    root = Path(__file__).resolve().parents[2]
    found = {}
    for path in sorted((root / "k8s").rglob("*.yaml")):
        for line in path.read_text().splitlines():
            stripped = line.split("#", 1)[0].strip()
            if stripped.startswith("image:"):
                found[f"{path.relative_to(root)}: {stripped}"] = stripped.split(":", 1)[1].strip()
    assert found and set(found.values()) == {DEFAULT_IMAGE}, found
