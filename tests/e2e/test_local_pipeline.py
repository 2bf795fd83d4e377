"""The whole DAG under KFP's local runner, on tiny synthetic data, against a real S3 API server.

Real parts: KFP's compiler and local SubprocessRunner, moto's S3 server on loopback, the synthetic
world in the real formats, the PyTorchJob emulator running `torchrun -m gbcosface train` in 2
replicas with gloo, the IJB evaluation. Two runs take the gate's two branches.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from gbcosface import s3_env
from gbcosface.data.synthetic.world import WorldSpec, generate_world
from gbcosface.pipeline_cli import local_run_id, run_local
from gbcosface.storage import get_bytes, list_uri, read_manifest, upload
from gbcosface.storage.local_server import LocalS3Server

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

RUN_IDS: list[str] = []  # the run ids seen by this module's runs, in order
TRAIN_SUMMARIES: list[dict] = []
JOB_NAMES: list[str] = []


def _first_job_name() -> str:
    return JOB_NAMES[0] if JOB_NAMES else ""

LINEAGE = {"run_id", "config_hash", "dataset_manifest_hash", "code_version", "image", "seed"}
TINY_TRAINING = [
    "model.width=8", "model.embedding_size=32", "data.batch_size=16", "data.num_workers=0",
    "schedule.max_steps=12", "schedule.epochs=5", "schedule.milestones=[]", "run.checkpoint_every=6",
    "run.log_every=4", "run.metrics_port=0",
]


@pytest.fixture(scope="module")
def s3_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    spec = WorldSpec(seed=3, identities=24, images_per_identity=6, eval_identities=16, templates_per_identity=3,
                     pairs=40, bin_identities=8, impostor_pairs=2_000, crop_min=120, crop_max=140)
    generate_world(root / "world", spec, workers=1)
    _add_ijbb_copy(root / "world")
    saved = dict(os.environ)
    for name in s3_env.LAUNCHER_AWS_ENV:  # the steps reach the store through GBCOSFACE_S3_* alone
        os.environ.pop(name, None)
    with LocalS3Server(log_path=root / "s3.log") as server:
        os.environ.update(server.env())
        server.create_bucket("e2e")
        upload(root / "world", "s3://e2e/datasets/tiny", endpoint_url=server.endpoint_url)
        yield {"root": root, "endpoint": server.endpoint_url, "data_uri": "s3://e2e/datasets/tiny"}
    os.environ.clear()
    os.environ.update(saved)


def _add_ijbb_copy(world):
    """A second IJB target (the IJB-C-like crops under IJB-B's names), so that the DAG evaluates two."""
    src, dst = world / "IJBC", world / "IJBB"
    shutil.copytree(src / "loose_crop", dst / "loose_crop")
    (dst / "meta").mkdir(parents=True)
    for name in ("face_tid_mid", "name_5pts_score", "template_pair_label"):
        shutil.copy(src / "meta" / f"ijbc_{name}.txt", dst / "meta" / f"ijbb_{name}.txt")


def _params(s3_data, name: str, min_tar: float, job_kind: str = "pytorchjob") -> dict:
    return {"job_kind": job_kind,
        "data_uri": s3_data["data_uri"], "output_uri": f"s3://e2e/{name}", "recipe": "demo",
        "overrides": TINY_TRAINING, "endpoint_url": s3_data["endpoint"], "launcher": "local", "nnodes": 2,
        "nproc_per_node": 1, "gpus_per_node": 0, "work_dir": str(s3_data["root"] / f"work-{name}"),
        "ijb_target": "IJBC", "gate_far": 1e-2, "gate_min_tar": min_tar, "export_onnx": True,
    }


def _executor_outputs(run_dir, task):
    return json.loads((run_dir / task / "executor_output.json").read_text())


def test_gate_passes_and_everything_is_published_with_lineage(s3_data):
    run_dir = run_local(_params(s3_data, "pass", min_tar=0.0), s3_data["root"] / "kfp-pass")
    run_id = local_run_id(run_dir)
    RUN_IDS.append(run_id)
    prefix = f"s3://e2e/pass/runs/{run_id}"
    keys = set(list_uri(prefix))
    for key in ("config.yaml", "dataset/manifest.json", "model/backbone.pt", "model/backbone.json",
                "model/backbone.onnx", "model/metadata.json", "eval/IJBC/scores.npy", "eval/IJBC/metrics.json",
                "eval/IJBC/roc.png", "eval/IJBC/report.html", "summary.json", "train/model/backbone.pt",
                "eval/IJBB/metrics.json", "eval/IJBB/report.html",
                "train/train_summary.json"):
        assert key in keys, f"{key} missing from {prefix}: {sorted(keys)}"
    assert any(k.startswith("train/checkpoints/step-") for k in keys)
    assert "gate.json" not in keys

    # The manifest pins what was staged, and the run summary ties everything to it.
    manifest_text = get_bytes(f"{prefix}/dataset/manifest.json").decode()
    manifest_path = s3_data["root"] / "manifest.json"
    manifest_path.write_text(manifest_text)
    manifest = read_manifest(manifest_path)
    assert manifest.source == s3_data["data_uri"]
    assert any(e.key == "train/train.rec" for e in manifest.entries)
    summary = json.loads(get_bytes(f"{prefix}/summary.json"))
    assert summary["run_id"] == run_id
    assert set(summary["lineage"]) == LINEAGE
    assert summary["lineage"]["dataset_manifest_hash"] == manifest.hash
    assert summary["dataset"]["manifest_hash"] == manifest.hash
    metadata = json.loads(get_bytes(f"{prefix}/model/metadata.json"))
    assert metadata["config_hash"] == summary["lineage"]["config_hash"]
    assert metadata["onnx"]["max_abs_diff"] < 1e-3
    metrics = json.loads(get_bytes(f"{prefix}/eval/IJBC/metrics.json"))
    assert metrics["lineage"] == summary["lineage"]
    assert metrics["flags"] == {"flip": False, "norm_score": True, "detector_score": True}
    # The other IJB target was evaluated beside the gate's and published with it.
    ijbb = json.loads(get_bytes(f"{prefix}/eval/IJBB/metrics.json"))
    assert ijbb["target"] == "IJBB" and ijbb["lineage"] == summary["lineage"]
    assert set(summary["other_evaluations"]) == {"IJBB"}
    assert _executor_outputs(run_dir, "evaluate-other-targets")["parameterValues"]["Output"] == "IJBB"

    # Trained by the 2-replica emulated PyTorchJob.
    train_summary = json.loads(get_bytes(f"{prefix}/train/train_summary.json"))
    assert train_summary["world_size"] == 2
    assert train_summary["steps"] == 12
    TRAIN_SUMMARIES.append(train_summary)
    JOB_NAMES.append(_executor_outputs(run_dir, "train-model")["artifacts"]["model"]["artifacts"][0]["metadata"]["job_name"])

    # Every KFP artifact of the model and the evaluation carries the lineage in its metadata.
    model_art = _executor_outputs(run_dir, "train-model")["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert LINEAGE <= set(model_art) and model_art["run_id"] == run_id
    eval_out = _executor_outputs(run_dir, "evaluate-model")["artifacts"]
    for name in ("metrics", "roc", "report", "table", "results"):
        meta = eval_out[name]["artifacts"][0]["metadata"]
        assert LINEAGE <= set(meta), name
    roc = eval_out["roc"]["artifacts"][0]["metadata"]["confidenceMetrics"]
    assert len(roc) > 2
    assert (run_dir / "gate" / "executor_output.json").is_file()


def test_gate_fails_and_nothing_is_published(s3_data):
    """This run trains in an emulated TrainJob: same config, seed and data as the PyTorchJob run above."""
    run_dir = run_local(_params(s3_data, "fail", min_tar=1.01, job_kind="trainjob"), s3_data["root"] / "kfp-fail")
    run_id = local_run_id(run_dir)
    # The run prefix comes from the run's unique id: a second run never lands in the first one's.
    assert run_id and "{{" not in run_id and run_id not in RUN_IDS and run_id != run_dir.name
    prefix = f"s3://e2e/fail/runs/{run_id}"
    keys = set(list_uri(prefix))
    assert "gate.json" in keys
    gate = json.loads(get_bytes(f"{prefix}/gate.json"))
    assert gate["decision"] == "fail" and gate["min_tar"] == 1.01
    assert not any(k.startswith("model/") for k in keys)
    assert "summary.json" not in keys
    assert not any(k.startswith("eval/") for k in keys)  # evaluation results are published only past the gate

    # The TrainJob trained exactly like the PyTorchJob of the first run: the same final loss terms.
    train_summary = json.loads(get_bytes(f"{prefix}/train/train_summary.json"))
    assert train_summary["world_size"] == 2 and train_summary["steps"] == 12
    assert TRAIN_SUMMARIES, "the PyTorchJob run of this module must run first"
    assert train_summary["final_loss_terms"] == TRAIN_SUMMARIES[0]["final_loss_terms"]
    job = _executor_outputs(run_dir, "train-model")["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert job["job_name"] != _first_job_name(), "each run names its own job"
