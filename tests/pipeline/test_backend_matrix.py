"""The DAG is built for one KFP backend version, and the rules of each version are checked on its IR.

Why: the KFP SDK emits features older backends do not have, and those backends drop them without
an error (or, for an unknown platform-document field, drop every Kubernetes setting at once). The
rules come from the backend source at the tag where each behaviour changed (gbcosface.pipeline_rules
cites them); here every supported version compiles clean, and each rule is shown to catch its
construct on a version below its minimum.
"""

# (No `from __future__ import annotations`: KFP reads the component annotations as real types.)

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl, kubernetes

from gbcosface import pipeline_backends
from gbcosface.pipeline_backends import OLDEST, SUPPORTED, BackendError, get_backend
from gbcosface.pipeline_cli import check_params, compile_pipeline
from gbcosface.pipeline_rules import RULES, problems
from gbcosface.steps.runs import RUN_ID_ENV, check_run_id

ROOT = Path(__file__).resolve().parents[2]
RUN_STEPS = ("exec-stage-data", "exec-train-model", "exec-evaluate-model", "exec-publish",
             "exec-record-rejection", "exec-cleanup-job")
EVAL_STEPS = ("exec-evaluate-model", "exec-evaluate-other-targets")


def _docs(path: Path) -> tuple[dict, dict]:
    ir, platform = yaml.safe_load_all(path.read_text())
    return ir, platform


def _executors(platform: dict) -> dict:
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _rule_names(found: list[str]) -> set[str]:
    return {re.match(r"\[([^;]+);", line).group(1) for line in found}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    out = tmp_path_factory.mktemp("ir")
    return {v: _docs(compile_pipeline(out / f"{v}.yaml", image_pull_secrets=("regcred",), backend=v))
            for v in SUPPORTED}


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_supported_backend_gets_ir_that_follows_its_rules(compiled, version):
    ir, platform = compiled[version]
    assert problems(ir, backend=version, platform=platform) == []
    backend = get_backend(version)
    executors = _executors(platform)
    k8s = platform["platforms"]["kubernetes"]
    # The run's TTL only where the API server knows the field (2.17).
    assert ("pipelineConfig" in k8s) == backend.has("pipeline_ttl")
    inner = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    run_id = inner["train-model"]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"]
    for name in ("exec-stage-data", "exec-train-model", "exec-publish"):
        secret = executors[name]["secretAsEnv"][0]
        keys = {k["secretKey"] for k in secret["keyToEnv"]}
        if backend.has("optional_secret_env"):
            assert secret["optional"] is True and "GBCOSFACE_S3_ENDPOINT_URL" in keys
        else:  # every mapped key is required: only the two credentials, never the endpoint
            assert not secret.get("optional") and keys == {"GBCOSFACE_S3_ACCESS_KEY_ID", "GBCOSFACE_S3_SECRET_ACCESS_KEY"}
        if backend.has("param_secret_names"):
            assert secret["secretNameParameter"] == {"componentInputParameter": "pipelinechannel--s3_secret"}
        else:
            assert secret["secretName"] == "gbcosface-s3"
    if backend.has("run_placeholders"):
        assert run_id == "{{$.pipeline_job_uuid}}"
        assert not any("fieldPathAsEnv" in executors[n] for n in RUN_STEPS)
    else:  # 2.4: the run id comes from the pod's pipeline/runid label, the same id
        assert run_id == ""
        for name in RUN_STEPS:
            assert executors[name]["fieldPathAsEnv"] == [
                {"name": RUN_ID_ENV, "fieldPath": "metadata.labels['pipeline/runid']"}], name
    # Deadlines (2.1+), /dev/shm (2.3+) and the image from a parameter (2.4+) everywhere.
    assert all(int(ex["activeDeadlineSeconds"]) > 0 for ex in executors.values())
    assert executors["exec-evaluate-model"]["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    assert {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()} == {
        "{{$.inputs.parameters['pipelinechannel--pipeline_image']}}"}


@pytest.mark.parametrize("version", [v for v in SUPPORTED if get_backend(v).has("param_secret_names")])
def test_pull_secret_and_gpu_toleration_are_run_parameters_where_the_backend_resolves_them(compiled, version):
    ir, platform = compiled[version]
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert params["image_pull_secret"]["defaultValue"] == "regcred"  # the compile-time name is the default
    assert params["eval_tolerations"]["defaultValue"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    executors = _executors(platform)
    for name, ex in executors.items():  # (a root-DAG task names the parameter without the channel prefix)
        [entry] = ex["imagePullSecret"]
        assert list(entry) == ["secretNameParameter"], name
        assert entry["secretNameParameter"]["componentInputParameter"].endswith("image_pull_secret"), name
    for name in EVAL_STEPS:
        assert executors[name]["tolerations"] == [
            {"tolerationJson": {"componentInputParameter": "pipelinechannel--eval_tolerations"}}], name


def test_below_2_5_they_are_compiled_in_and_not_offered_as_run_parameters(compiled, tmp_path):
    ir, platform = compiled["2.4"]
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert "image_pull_secret" not in params and "eval_tolerations" not in params
    executors = _executors(platform)
    for name, ex in executors.items():
        assert ex["imagePullSecret"][0]["secretName"] == "regcred", name
    for name in EVAL_STEPS:
        assert executors[name]["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}], name
    # `pipeline submit` refuses them rather than letting the user believe they took effect.
    package = tmp_path / "p.yaml"
    package.write_text(yaml.safe_dump_all([ir, platform]))
    with pytest.raises(SystemExit, match="image_pull_secret"):
        check_params(package, {"image_pull_secret": "regcred2", "data_uri": "s3://b/d"})
    check_params(package, {"data_uri": "s3://b/d", "s3_secret": "other"})


def test_the_newest_ir_breaks_exactly_the_rules_of_each_older_backend(compiled):
    ir, platform = compiled["2.17"]
    expected = {
        "2.16": {"pipeline TTL needs 2.17"},
        "2.15": {"pipeline TTL needs 2.17"},
        "2.14": {"pipeline TTL needs 2.17", "optional secret env needs 2.15"},
        "2.5": {"pipeline TTL needs 2.17", "optional secret env needs 2.15"},
        "2.4": {"pipeline TTL needs 2.17", "optional secret env needs 2.15", "run placeholders need 2.5",
                "secret names from parameters need 2.5", "tolerations from parameters need 2.5"},
    }
    for version, rules in expected.items():
        assert _rule_names(problems(ir, backend=version, platform=platform)) == rules, version
    found = problems(ir, backend="2.16", platform=platform)
    assert len(found) == 1 and "resourceTtlOnCompletion" in found[0] and "whole platform document" in found[0]
    found = problems(ir, backend="2.4", platform=platform)
    assert any("{{$.pipeline_job_uuid}}" in line for line in found)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _echo(text: str) -> str:
    return text


def _ir(pipeline, tmp_path) -> tuple[dict, dict]:
    path = tmp_path / "ir.yaml"
    compiler.Compiler().compile(pipeline, package_path=str(path))
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], docs[1] if len(docs) > 1 else {}


def test_each_older_feature_is_caught_below_its_own_minimum(tmp_path):
    """Step timeouts arrived in 2.1, emptyDir mounts in 2.3, images from a parameter in 2.4."""

    @dsl.pipeline(name="features")
    def features(image: str = "python:3.11"):
        task = _echo(text="x").set_container_image(image)
        kubernetes.set_timeout(task, 60)
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
        kubernetes.use_field_path_as_env(task, env_name="POD", field_path="metadata.name")

    ir, platform = _ir(features, tmp_path)
    assert _rule_names(problems(ir, backend="2.0", platform=platform)) == {
        "step timeouts need 2.1", "emptyDir mounts need 2.3", "image from a parameter needs 2.4",
        "field-path env needs 2.1"}
    assert _rule_names(problems(ir, backend="2.2", platform=platform)) == {
        "emptyDir mounts need 2.3", "image from a parameter needs 2.4"}
    assert _rule_names(problems(ir, backend="2.3", platform=platform)) == {"image from a parameter needs 2.4"}
    assert problems(ir, backend="2.4", platform=platform) == []


def test_a_secret_named_by_a_parameter_is_caught_on_2_4_and_a_literal_one_is_not(tmp_path):
    @dsl.pipeline(name="secrets")
    def secrets(name: str = "s"):
        kubernetes.use_secret_as_env(_echo(text="a"), secret_name=name, secret_key_to_env={"k": "K"})
        kubernetes.use_secret_as_env(_echo(text="b"), secret_name="fixed", secret_key_to_env={"k": "K"})
        kubernetes.set_image_pull_secrets(_echo(text="c"), [name])

    ir, platform = _ir(secrets, tmp_path)
    found = problems(ir, backend="2.4", platform=platform)
    assert len(found) == 2 and all("empty Secret name" in line for line in found), found
    assert {"secretAsEnv[0]", "imagePullSecret[0]"} == {re.search(r"(\w+\[0\])", x).group(1) for x in found}
    assert problems(ir, backend="2.5", platform=platform) == []


def test_every_rule_cites_the_upstream_file_at_a_tag():
    for rule in RULES:
        assert re.search(r"kubeflow/pipelines@2\.\d+\.\d+:(backend|api|kubernetes_platform)/\S+", rule.citation), rule
        assert rule.min_version <= rule.max_version


def test_a_run_id_left_empty_comes_from_the_pod_label_env(monkeypatch):
    monkeypatch.setenv(RUN_ID_ENV, "3f6c1d0e-1b2a-4c5d-9e8f-0a1b2c3d4e5f")
    assert check_run_id("") == "3f6c1d0e-1b2a-4c5d-9e8f-0a1b2c3d4e5f"
    assert check_run_id("given") == "given"
    monkeypatch.delenv(RUN_ID_ENV)
    with pytest.raises(ValueError, match="pipeline/runid"):
        check_run_id("")


def test_versions_parse_to_release_lines_and_unsupported_ones_are_refused():
    assert get_backend("2.4.1").name == "2.4" and get_backend("v2.17.0").name == "2.17"
    assert get_backend(None).name == OLDEST
    for bad in ("2.6", "2.3", "3.0", "2", "two.five"):
        with pytest.raises(BackendError):
            get_backend(bad)
    assert get_backend("2.3", supported_only=False).version == (2, 3)


def test_make_compile_and_the_cli_default_to_the_oldest_supported_backend(tmp_path):
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "print-kfp-backend"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == OLDEST == "2.4"
    out = subprocess.run(["make", "-n", "-C", str(ROOT), "compile", "VENV=/nonexistent"], capture_output=True,
                         text=True)
    assert f"--kfp-backend {OLDEST}" in out.stdout, out.stdout
    import argparse

    from gbcosface.pipeline_cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["pipeline", "compile"]).kfp_backend == OLDEST
    assert parser.parse_args(["pipeline", "submit", "--host", "h"]).kfp_backend == OLDEST
    assert parser.parse_args(["pipeline", "compile", "--kfp-backend", "2.15.0"]).kfp_backend == "2.15"
    # The default build is the IR for the oldest backend, and that backend accepts it.
    ir, platform = _docs(compile_pipeline(tmp_path / "default.yaml"))
    assert problems(ir, backend=OLDEST, platform=platform) == []
    assert "pipelineConfig" not in platform["platforms"]["kubernetes"]


def test_compile_pipeline_leaves_nothing_behind_when_a_rule_is_broken(tmp_path):
    @dsl.pipeline(name="uuid-on-2-4")
    def uuid_on_old():
        _echo(text=dsl.PIPELINE_JOB_ID_PLACEHOLDER)

    out = tmp_path / "p.yaml"
    with pytest.raises(BackendError, match="run placeholders need 2.5"):
        pipeline_backends.compile_pipeline(uuid_on_old, out, "2.4")
    assert list(tmp_path.iterdir()) == []
    assert pipeline_backends.compile_pipeline(uuid_on_old, out, "2.5") == out and out.is_file()


def test_the_reusable_helpers_build_any_dag_for_a_backend(tmp_path):
    """What a second DAG (e.g. a sweep) uses: the run id per backend, and run parameters left out."""

    def build(version: str):
        backend = get_backend(version)

        def sweep(tag: str, extra: str = "x"):
            task = _echo(text=pipeline_backends.run_id_argument(backend))
            pipeline_backends.set_run_id_env(task, backend)
            _echo(text=extra)

        func = sweep if backend.has("param_secret_names") else pipeline_backends.without_parameters(sweep, ("extra",))
        return dsl.pipeline(name="sweep")(func)

    old = _docs(pipeline_backends.compile_pipeline(build("2.4"), tmp_path / "old.yaml", "2.4"))
    new = yaml.safe_load(pipeline_backends.compile_pipeline(build("2.17"), tmp_path / "new.yaml", "2.17").read_text())
    assert set(old[0]["root"]["inputDefinitions"]["parameters"]) == {"tag"}
    assert set(new["root"]["inputDefinitions"]["parameters"]) == {"tag", "extra"}
    assert _executors(old[1])["exec-echo"]["fieldPathAsEnv"][0]["name"] == RUN_ID_ENV
    tasks = new["root"]["dag"]["tasks"]
    assert tasks["echo"]["inputs"]["parameters"]["text"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert tasks["echo-2"]["inputs"]["parameters"]["text"]["componentInputParameter"] == "extra"


def test_the_docs_carry_the_matrix_and_every_run_parameter(compiled):
    text = (ROOT / "docs" / "pipeline.md").read_text()
    section = text.split("## Supported backends", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip().split(" ")[0] for line in section.splitlines() if line.startswith("| ")}
    assert set(SUPPORTED) <= rows, rows
    for rule in RULES:  # every version-bound rule's minimum is in the matrix or the note under it
        if rule.max_version[0] < 99:
            minimum = f"{rule.max_version[0]}.{rule.max_version[1] + 1}"
            assert minimum in section, (rule.name, minimum)
    params = text.split("## Run parameters", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(\w+)`", "\n".join(line.split("|")[1] for line in params.splitlines()
                                                      if line.startswith("| "))))
    ir, _ = compiled[SUPPORTED[-1]]
    assert set(ir["root"]["inputDefinitions"]["parameters"]) <= documented
