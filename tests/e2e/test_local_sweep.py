"""The sweep DAG end to end under KFP's local runner: 2 variants x 1 seed of a few steps, then the table.

Real parts, as in test_local_pipeline.py: KFP's compiler and local runner (ParallelFor over the plan
step's output, the loop item's fields, `.after` on the loop), moto's S3 server, the synthetic world,
the emulated PyTorchJob, the IJB evaluation; and `gbcosface demo --sweep`'s own code path, which
prints the table.
"""

from __future__ import annotations

import builtins
import json
import os

import pytest
import yaml

from gbcosface.config import load_config
from gbcosface.launch.names import job_name_for_run
from gbcosface.sweep_demo import run_sweep_demo

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

TINY_WORLD = dict(identities=24, images_per_identity=6, eval_identities=16, templates_per_identity=3, pairs=40,
                  bin_identities=8, impostor_pairs=2_000, crop_min=120, crop_max=140)
TINY_TRAINING = ["model.width=8", "model.embedding_size=32", "data.batch_size=16", "data.num_workers=0",
                 "schedule.epochs=5", "schedule.milestones=[]", "run.checkpoint_every=6", "run.log_every=4"]


def test_two_variants_one_seed_train_evaluate_publish_and_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    out = tmp_path / "out"
    real_print = builtins.print
    # Both iterations side by side (the local runner's most), through `gbcosface demo --sweep`'s code.
    summary = run_sweep_demo(out, seed=3, seeds=(5,), variants=["gb_cosface", "cosface"], steps=6, replicas=1,
                             baseline="cosface", parallelism=2, world_overrides=TINY_WORLD,
                             recipe_overrides=TINY_TRAINING)
    assert "AWS_ENDPOINT_URL" not in os.environ  # the stopped server's address does not leak to the caller
    # KFP's threaded iterations swap builtins.print out of order; the run puts the real one back.
    assert builtins.print is real_print
    table = summary["table"]
    assert table["variants"] == ["gb_cosface", "cosface"] and table["baseline"] == "cosface"
    assert table["seeds"] == {"gb_cosface": [5], "cosface": [5]}
    assert table["target"] == "IJBC"
    # Each iteration is a run of its own, named from the sweep's run id, the variant and the seed.
    sweep_id = table["context"]["sweep run id"]
    ids = [f"{sweep_id}-gb_cosface-s5", f"{sweep_id}-cosface-s5"]
    assert [r["run_id"] for r in table["runs"]] == ids
    assert summary["compare_uri"] == f"s3://gbcosface-demo/sweep/runs/{sweep_id}/compare/IJBC"
    # One seed: means, no spread, and the difference says it has no interval.
    tar = table["stats"]["gb_cosface"]["tar@1e-2/nearest"]
    assert tar["n"] == 1 and tar["sd"] is None and 0.0 <= tar["mean"] <= 1.0
    diff = table["diffs"]["gb_cosface"]["tar@1e-2/nearest"]
    assert diff["n"] == 1 and diff["low"] is None and diff["note"].startswith("n=1")
    assert diff["mean"] == tar["mean"] - table["stats"]["cosface"]["tar@1e-2/nearest"]["mean"]
    assert "auc" in table["metrics"] and any(k.startswith("rank1/") for k in table["metrics"])
    # The table is printed, and written as Markdown, JSON and an HTML report with the overlaid ROC curves.
    printed = capsys.readouterr().out
    assert "TAR@FAR=1e-4 (nearest)" in printed and "no interval" in printed and "wall time" in printed
    compare_dir = out / "compare"
    assert {"comparison.json", "comparison.md", "report.html", "roc.png"} <= {p.name for p in compare_dir.iterdir()}
    assert "| TAR@FAR=1e-4 (nearest) |" in (compare_dir / "comparison.md").read_text()
    assert 'alt="ROC curves"' in (compare_dir / "report.html").read_text()

    # Published: the sweep's prefix (pinned dataset, plan, comparison) beside one full run per iteration.
    pub = out / "published"
    assert (pub / sweep_id / "plan.json").is_file() and (pub / sweep_id / "dataset" / "manifest.json").is_file()
    plan = json.loads((pub / sweep_id / "plan.json").read_text())
    assert [it["run_id"] for it in plan["iterations"]] == ids
    manifest = (pub / sweep_id / "dataset" / "manifest.json").read_bytes()
    for it in plan["iterations"]:
        run = pub / it["run_id"]
        for key in ("config.yaml", "model/backbone.pt", "eval/IJBC/metrics.json", "eval/IJBC/report.html",
                    "summary.json", "train/train_summary.json"):
            assert (run / key).is_file(), (run, key)
        assert (run / "dataset" / "manifest.json").read_bytes() == manifest  # the same pinned data
        run_summary = json.loads((run / "summary.json").read_text())
        assert run_summary["run_id"] == it["run_id"] and run_summary["lineage"]["seed"] == 5
        assert json.loads((run / "train" / "train_summary.json").read_text())["steps"] == 6
        # The iteration trained its variant's loss with the sweep's seed, at the sweep's budget.
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["loss"]["name"] == it["variant"] and cfg["run"]["seed"] == 5
        assert cfg["schedule"]["max_steps"] == 6 and cfg["model"]["width"] == 8
        assert cfg["loss"]["params"] == {"gb_cosface": load_config("paper").loss.params,
                                         "cosface": {"s": 64.0, "m": 0.35}}[it["variant"]]
    # One training job per iteration, with distinct run-scoped names.
    jobs = sorted(p.name for p in (out / "work" / "jobs").iterdir())
    assert jobs == sorted(job_name_for_run(i) for i in ids) and len(set(jobs)) == 2
