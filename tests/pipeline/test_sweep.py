"""The sweep DAG (pipelines/sweep.py) and its steps (gbcosface.steps.sweep), without training.

The DAG is checked on the IR that KFP's compiler writes, against the same backend rules as the main
pipeline (gbcosface.pipeline_rules); the backend facts it relies on were read at the release tags:
- kubeflow/pipelines@2.4.1:backend/src/v2/driver/driver.go (`GetParameterExpressionSelector`,
  `expr.Select`) with @2.4.1:backend/src/v2/expression/expression.go `parseJson`: a loop item's field
  (`it.run_id`) reaches the task through a parameterExpressionSelector, resolved per iteration (the same
  in 2.5.0 driver.go and 2.15.0 / 2.17.0 backend/src/v2/driver/resolve.go);
- @2.5.0:backend/src/v2/compiler/argocompiler/dag.go: iteratorPolicy.parallelismLimit becomes the Argo
  loop's `parallelism`;
- `dsl.Collected` fan-in reached the backend only with kubeflow/pipelines#11725 (first in 2.14.0:
  backend/src/v2/driver/resolve.go `CollectInputs`), so the compare step must not use it.
"""

# (No `from __future__ import annotations`: nothing here defines components, but keep the pipeline tests alike.)

import json
import logging
import sys

import pytest
import yaml

from gbcosface.pipeline_backends import NEWEST, SUPPORTED, get_backend
from gbcosface.pipeline_cli import compile_pipeline
from gbcosface.pipeline_rules import problems
from gbcosface.steps import sweep
from gbcosface.steps.runs import RUN_ID_ENV
from gbcosface.storage import Manifest, ManifestEntry, write_manifest

RUN_ID = "{{$.pipeline_job_uuid}}"
ITEM = "pipelinechannel--plan-sweep-Output-loop-item"


def _ir(tmp_path, backend=NEWEST, **kw):
    out = compile_pipeline(tmp_path / "sweep.yaml", pipeline="sweep", backend=backend, **kw)
    return list(yaml.safe_load_all(out.read_text()))


@pytest.mark.parametrize("backend", SUPPORTED)
def test_the_sweep_compiles_for_every_supported_backend_within_its_rules(tmp_path, backend):
    """The same backend matrix as train_eval (gbcosface.pipeline_backends): below 2.5 the run id comes
    from the pod label (an empty input plus the env var), the Secret and tolerations are compiled in."""
    ir, platform = _ir(tmp_path, backend=backend)
    assert problems(ir, backend=backend, platform=platform) == []
    target = get_backend(backend)
    inner = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    run_id = inner["plan-sweep"]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    env_from_label = [e["name"] for e in executors["exec-plan-sweep"].get("fieldPathAsEnv", [])]
    params = set(ir["root"]["inputDefinitions"]["parameters"])
    if target.has("run_placeholders"):
        assert run_id == RUN_ID and RUN_ID_ENV not in env_from_label
        assert {"image_pull_secret", "eval_tolerations"} <= params
    else:
        assert run_id == "" and RUN_ID_ENV in env_from_label
        assert not {"image_pull_secret", "eval_tolerations"} & params
    assert ("pipelineConfig" in platform["platforms"]["kubernetes"]) is target.has("pipeline_ttl")


def test_the_sweep_compiles_follows_the_backend_rules_and_fans_out_over_the_plan(tmp_path):
    ir, platform = _ir(tmp_path)
    assert ir["pipelineInfo"]["name"] == "gbcosface-sweep"
    assert problems(ir, backend=NEWEST, platform=platform) == []
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert {"variants", "seeds", "baseline", "recipe", "overrides", "confidence"} <= set(params)
    assert [v["name"] for v in params["variants"]["defaultValue"]] == ["gb_cosface", "cosface", "arcface"]
    assert params["seeds"]["defaultValue"] == [0, 1, 2]
    # The exit handler cleans every iteration's job; inside it: stage once, plan, the loop, compare.
    root = ir["root"]["dag"]["tasks"]
    assert root["cleanup-sweep-jobs"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    inner = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert set(inner) == {"stage-data", "plan-sweep", "for-loop-2", "compare-sweep"}
    loop = inner["for-loop-2"]
    assert loop["parameterIterator"] == {"itemInput": ITEM, "items": {"inputParameter": "pipelinechannel--plan-sweep-Output"}}
    assert "iteratorPolicy" not in loop  # parallelism 0: every iteration at once on a cluster
    # compare waits for the whole loop and reads what the iterations published (no dsl.Collected).
    assert set(inner["compare-sweep"]["dependentTasks"]) == {"for-loop-2", "plan-sweep"}
    # The run's unique id reaches the sweep-level steps whole ...
    for name in ("stage-data", "plan-sweep", "compare-sweep"):
        assert inner[name]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == RUN_ID, name
    assert root["cleanup-sweep-jobs"]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == RUN_ID
    # ... and each iteration's steps get the iteration's run id whole, from the loop item.
    body = ir["components"]["comp-for-loop-2"]["dag"]["tasks"]
    assert set(body) == {"train-model", "evaluate-model", "evaluate-other-targets", "publish"}
    for name in ("train-model", "evaluate-model", "publish"):
        assert body[name]["inputs"]["parameters"]["run_id"] == {
            "componentInputParameter": ITEM, "parameterExpressionSelector": 'parseJson(string_value)["run_id"]'}, name
    assert body["train-model"]["inputs"]["parameters"]["overrides"]["parameterExpressionSelector"] == \
        'parseJson(string_value)["overrides"]'
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-stage-data", "exec-plan-sweep", "exec-train-model", "exec-evaluate-model", "exec-publish",
                 "exec-compare-sweep", "exec-cleanup-sweep-jobs"):
        assert int(executors[name]["activeDeadlineSeconds"]) > 0, name
    for name in ("exec-plan-sweep", "exec-train-model", "exec-publish", "exec-compare-sweep"):
        ref = executors[name]["secretAsEnv"][0]["secretNameParameter"]
        assert ref == {"componentInputParameter": "pipelinechannel--s3_secret"}, name
    for name, executor in ir["deploymentSpec"]["executors"].items():
        assert executor["container"]["image"] == "{{$.inputs.parameters['pipelinechannel--pipeline_image']}}", name


def test_parallelism_is_set_at_compile_time_and_must_not_be_negative(tmp_path):
    ir, _ = _ir(tmp_path, parallelism=3)
    loop = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]["for-loop-2"]
    assert loop["iteratorPolicy"] == {"parallelismLimit": 3}
    with pytest.raises(ValueError, match="parallelism must be >= 0"):
        compile_pipeline(tmp_path / "bad.yaml", pipeline="sweep", parallelism=-1)
    with pytest.raises(ValueError, match="pipeline must be one of"):
        compile_pipeline(tmp_path / "bad.yaml", pipeline="sweeep")


def test_iterations_cover_every_variant_and_seed_with_run_scoped_ids_and_ordered_overrides():
    plan = sweep.plan_iterations(run_id="8c1f-uuid", variants=sweep.default_variants()[:2], seeds=[0, 1.0],
                                 overrides=["schedule.max_steps=50"])
    # Seed-major: a sweep stopped early has compared every variant on its first seeds.
    assert [it["name"] for it in plan] == ["gb_cosface-s0", "cosface-s0", "gb_cosface-s1", "cosface-s1"]
    assert [it["run_id"] for it in plan] == ["8c1f-uuid-gb_cosface-s0", "8c1f-uuid-cosface-s0",
                                             "8c1f-uuid-gb_cosface-s1", "8c1f-uuid-cosface-s1"]
    assert plan[3]["seed"] == 1 and isinstance(plan[3]["seed"], int)
    assert plan[1]["overrides"] == ["schedule.max_steps=50", "loss.name=cosface", 'loss.params={"s": 64.0, "m": 0.35}',
                                    "run.seed=0"]
    # An unsubstituted placeholder never names a run.
    with pytest.raises(ValueError, match="not a resolved run id"):
        sweep.plan_iterations(run_id=RUN_ID, variants=sweep.default_variants(), seeds=[0])


def test_default_variants_resolve_to_the_papers_losses():
    from gbcosface.config import load_config

    got = {v["name"]: load_config("demo", v["overrides"]).loss for v in sweep.default_variants()}
    assert (got["cosface"].name, got["cosface"].params) == ("cosface", {"s": 64.0, "m": 0.35})
    assert (got["arcface"].name, got["arcface"].params) == ("arcface", {"s": 64.0, "m": 0.5})
    paper = load_config("paper").loss
    assert (got["gb_cosface"].name, got["gb_cosface"].params) == ("gb_cosface", paper.params)
    assert paper.params["margin"] == 0.16 and paper.params["s"] == 32.0


@pytest.mark.parametrize(("seeds", "match"), [([], "non-empty"), ([1.5], r"seeds\[0\]"), (["1"], r"seeds\[0\]"),
                                               ([True], r"seeds\[0\]"), ([-1], r"seeds\[0\]"), ([2, 2.0], "distinct")])
def test_bad_seeds_are_refused(seeds, match):
    with pytest.raises(ValueError, match=match):
        sweep.check_seeds(seeds)


def test_bad_variants_are_all_reported_at_once():
    with pytest.raises(ValueError) as err:
        sweep.check_variants([{"name": "Cos-Face", "overrides": []}, {"name": "a", "overrides": "loss.name=x"},
                              {"name": "b"}, {"name": "b", "overrides": []}, {"nom": "c"}])
    text = str(err.value)
    assert "variants[0]: name 'Cos-Face'" in text and "variants[1] (a): overrides must be a list" in text
    assert "repeated: ['b']" in text and "variants[4]: expected {name, overrides}" in text


def test_a_typo_in_one_variant_fails_the_plan_naming_it(tmp_path):
    manifest = _manifest(tmp_path)
    bad = [{"name": "cosface", "overrides": ["loss.name=cosface"]}, {"name": "typo", "overrides": ["loss.nme=x"]}]
    with pytest.raises(ValueError, match=r"typo-s0: .*unknown key 'loss.nme'"):
        sweep.plan_sweep(dataset_manifest=str(manifest), run_id="r1", output_uri=str(tmp_path / "out"),
                         variants=bad, seeds=[0], recipe="demo")
    assert not (tmp_path / "out").exists()  # nothing written before the plan is valid


def _manifest(tmp_path):
    m = Manifest(source="s3://b/data", entries=[ManifestEntry(key="train/train.rec", size=3, sha256="ab" * 32)])
    path = tmp_path / "manifest.json"
    write_manifest(m, path)
    return path


def test_plan_pins_the_dataset_under_every_iteration_and_records_the_plan(tmp_path):
    manifest = _manifest(tmp_path)
    out = tmp_path / "out"
    plan = sweep.plan_sweep(dataset_manifest=str(manifest), run_id="r1", output_uri=str(out),
                            variants=sweep.default_variants(), seeds=[0, 1], recipe="demo")
    assert len(plan) == 6
    for it in plan:
        assert (out / "runs" / it["run_id"] / "dataset" / "manifest.json").read_bytes() == \
            (tmp_path / "manifest.json").read_bytes()
    record = json.loads((out / "runs" / "r1" / "plan.json").read_text())
    assert record["iterations"] == plan and record["recipe"] == "demo"


def test_cleanup_rebuilds_the_plan_and_cleans_every_iteration(tmp_path):
    text = sweep.cleanup_sweep_jobs(run_id="r1", variants=sweep.default_variants(), seeds=[0, 1], launcher="local")
    lines = text.splitlines()
    assert len(lines) == 6 and all("local launcher: nothing left to delete" in line for line in lines)
    from gbcosface.launch.names import job_name_for_run

    assert lines[0].endswith(job_name_for_run("r1-gb_cosface-s0"))


def _fake_metrics(tar: float) -> dict:
    cells = [{"far": 1e-4, "tar": tar, "reason": None}]
    return {"target": "IJBC", "flags": {"flip": False}, "tar_at_far": {"nearest": cells, "strict": cells},
            "auc": 0.9 + tar / 10, "roc": {"fpr": [0, 1e-4, 1.0], "tpr": [0, tar, 1.0], "thresholds": [1, 0.5, 0]},
            "lineage": {"config_hash": "h"}}


def _published(tmp_path, tars: dict[tuple[str, int], float]):
    out = tmp_path / "out"
    plan = sweep.plan_iterations(run_id="r1", variants=[{"name": v, "overrides": []} for v in ("gb", "cos")],
                                 seeds=[0, 1])
    for it in plan:
        path = out / "runs" / it["run_id"] / "eval" / "IJBC" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_fake_metrics(tars[(it["variant"], it["seed"])])))
    return out, plan


TARS = {("gb", 0): 0.8, ("gb", 1): 0.9, ("cos", 0): 0.7, ("cos", 1): 0.75}


def test_compare_reads_the_published_iterations_and_publishes_the_table_beside_them(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out, plan = _published(tmp_path, TARS)
    res = sweep.compare_sweep(plan=plan, run_id="r1", output_uri=str(out), target="ijbc", baseline="cos",
                              out_dir=str(tmp_path / "art"))
    assert res["uri"] == str(out / "runs" / "r1" / "compare" / "IJBC") and res["mlflow_run_id"] is None
    published = out / "runs" / "r1" / "compare" / "IJBC"
    assert {p.name for p in published.iterdir()} == {"comparison.json", "comparison.md", "report.html", "roc.png"}
    table = json.loads((published / "comparison.json").read_text())
    d = table["diffs"]["gb"]["tar@1e-4/nearest"]
    assert d["mean"] == pytest.approx(((0.8 - 0.7) + (0.9 - 0.75)) / 2, rel=1e-14) and d["n"] == 2
    assert table["runs"][0]["uri"] == str(out / "runs" / "r1-gb-s0")
    assert (tmp_path / "art" / "comparison.md").read_text() == res["markdown"]


def test_compare_skips_mlflow_cleanly_without_a_tracking_uri_or_without_mlflow(tmp_path, monkeypatch, caplog):
    out, plan = _published(tmp_path, TARS)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path / 'mlruns'}")
    # `import mlflow` (and its submodules, which an earlier test may have imported) raises ImportError.
    for name in ["mlflow", *(m for m in sys.modules if m.startswith("mlflow."))]:
        monkeypatch.setitem(sys.modules, name, None)
    with caplog.at_level(logging.WARNING, logger="gbcosface.steps.sweep"):
        res = sweep.compare_sweep(plan=plan, run_id="r1", output_uri=str(out), target="IJBC", baseline="cos",
                                  out_dir=str(tmp_path / "art"))
    assert res["mlflow_run_id"] is None and "mlflow is not installed" in caplog.text
    assert not (tmp_path / "mlruns").exists()


def test_compare_logs_a_parent_run_with_one_nested_run_per_iteration_to_mlflow(tmp_path, monkeypatch):
    """Real MLflow (its file store, opted in as MLflow 3 requires) as the tracking backend."""
    from mlflow.tracking import MlflowClient

    out, plan = _published(tmp_path, TARS)
    uri = f"file://{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "sweeps")
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(key, raising=False)
    res = sweep.compare_sweep(plan=plan, run_id="r1", output_uri=str(out), target="IJBC", baseline="cos",
                              out_dir=str(tmp_path / "art"))
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(res["mlflow_run_id"])
    assert parent.info.run_name == "sweep-r1" and parent.info.status == "FINISHED"
    assert parent.data.params["baseline"] == "cos" and parent.data.params["variants"] == "gb,cos"
    assert parent.data.metrics["delta/gb/tar_at_1e-4/nearest"] == pytest.approx(0.125, rel=1e-12)
    assert parent.data.metrics["gb/tar_at_1e-4/nearest/mean"] == pytest.approx(0.85, rel=1e-12)
    assert {f.path for f in client.list_artifacts(parent.info.run_id, "compare")} >= {
        "compare/comparison.json", "compare/comparison.md", "compare/report.html", "compare/roc.png"}
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["cos-s0", "cos-s1", "gb-s0", "gb-s1"]
    child = next(c for c in children if c.info.run_name == "gb-s1")
    assert child.data.params["run_id"] == "r1-gb-s1" and child.data.metrics["tar_at_1e-4/nearest"] == 0.9


def test_demo_sweep_flags_reach_the_sweep_demo(monkeypatch, tmp_path):
    """`gbcosface demo --sweep` is a small branch of the demo verb: its flags reach run_sweep_demo (the run
    itself is tests/e2e/test_local_sweep.py)."""
    import gbcosface.sweep_demo
    from gbcosface.cli import main

    seen = {}
    monkeypatch.setattr(gbcosface.sweep_demo, "run_sweep_demo", lambda out, **kw: seen.update(out=out, **kw))
    assert main(["demo", "--sweep", "--seeds", "4,7", "--variants", "arcface,cosface", "--steps", "30",
                 "--baseline", "arcface", "--out", str(tmp_path / "o")]) == 0
    assert seen["out"] == tmp_path / "o" and seen["seeds"] == (4, 7) and seen["variants"] == ["arcface", "cosface"]
    assert seen["steps"] == 30 and seen["baseline"] == "arcface" and seen["replicas"] == 2
    seen.clear()
    assert main(["demo", "--sweep"]) == 0
    assert str(seen["out"]) == "compare-out" and seen["seeds"] == (0, 1, 2) and seen["variants"] is None


def test_compare_names_the_iteration_whose_evaluation_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out, plan = _published(tmp_path, TARS)
    (out / "runs" / "r1-cos-s1" / "eval" / "IJBC" / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"iteration cos-s1 published no IJBC evaluation: .*r1-cos-s1"):
        sweep.compare_sweep(plan=plan, run_id="r1", output_uri=str(out), target="IJBC", baseline="cos",
                            out_dir=str(tmp_path / "art"))
