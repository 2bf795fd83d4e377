"""The train step with the local launcher, as the pipeline calls it, for both job kinds: the same
recipe, overrides and seed train to the same final loss whether the emulated job is a PyTorchJob or
a TrainJob. Real parts: moto's S3 server on loopback, the synthetic world in the real formats, the
stage step, the emulator running `torchrun -m gbcosface train` in 2 nodes with gloo."""

from __future__ import annotations

import json
import os

import pytest

from gbcosface.data.synthetic.world import WorldSpec, generate_world
from gbcosface.launch.names import job_name_for_run
from gbcosface.steps.runs import run_uri
from gbcosface.steps.stage import stage_dataset
from gbcosface.steps.train import train_model
from gbcosface.storage import get_bytes, upload
from gbcosface.storage.local_server import LocalS3Server

pytestmark = pytest.mark.integration

TINY = ["model.width=8", "model.embedding_size=32", "data.batch_size=16", "data.num_workers=0",
        "schedule.max_steps=8", "schedule.epochs=5", "schedule.milestones=[]", "run.checkpoint_every=4",
        "run.log_every=4", "run.metrics_port=0"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    root = tmp_path_factory.mktemp("step")
    spec = WorldSpec(seed=3, identities=16, images_per_identity=6, eval_identities=8, templates_per_identity=3,
                     pairs=20, bin_identities=4, impostor_pairs=200, crop_min=120, crop_max=140)
    generate_world(root / "world", spec, workers=1)
    saved = dict(os.environ)
    with LocalS3Server(log_path=root / "s3.log") as server:
        os.environ.update(server.env())
        server.create_bucket("step")
        upload(root / "world", "s3://step/data", endpoint_url=server.endpoint_url)
        yield root, server.endpoint_url
    os.environ.clear()
    os.environ.update(saved)


def test_both_kinds_train_to_the_same_final_loss_through_the_step(s3):
    root, endpoint = s3
    work = root / "work"
    results = {}
    for kind, run_id in (("pytorchjob", "11111111-1111-4111-8111-111111111111"),
                         ("trainjob", "22222222-2222-4222-8222-222222222222")):
        prefix = run_uri("s3://step/out", run_id)
        manifest = root / f"manifest-{kind}.json"
        stage_dataset(data_uri="s3://step/data", run_uri=prefix, work_dir=str(work), endpoint_url=endpoint,
                      manifest_out=str(manifest))
        out = train_model(dataset_manifest=str(manifest), recipe="demo", overrides=TINY, run_id=run_id,
                          output_uri="s3://step/out", work_dir=str(work), endpoint_url=endpoint, launcher="local",
                          job_kind=kind, nnodes=2, nproc_per_node=1, namespace="team-a",
                          cluster_profile="nccl_env: {NCCL_DEBUG: INFO}\n", model_dir=str(root / f"model-{kind}"))
        assert out["job_kind"] == kind and out["namespace"] == "team-a" and out["run_uri"] == prefix
        assert out["job_name"] == job_name_for_run(run_id)
        job_yaml = (work / "jobs" / out["job_name"] / "job.yaml").read_text()
        assert ("kind: TrainJob" if kind == "trainjob" else "kind: PyTorchJob") in job_yaml
        assert "NCCL_DEBUG" in job_yaml and "INFO" in job_yaml  # the cluster profile reached the job
        meta = json.loads((root / f"model-{kind}" / "metadata.json").read_text())
        assert meta["job_kind"] == kind and (root / f"model-{kind}" / "backbone.pt").is_file()
        summary = json.loads(get_bytes(f"{prefix}/train/train_summary.json", endpoint_url=endpoint))
        assert summary == out["summary"] and summary["world_size"] == 2 and summary["steps"] == 8
        results[kind] = summary
    assert results["pytorchjob"]["final_loss_terms"] == results["trainjob"]["final_loss_terms"]


def test_the_step_refuses_bad_choices_before_any_work(tmp_path):
    common = dict(dataset_manifest=str(tmp_path / "missing.json"), recipe="demo", overrides=[],
                  output_uri="s3://b/o", work_dir=str(tmp_path), model_dir=str(tmp_path / "m"))
    with pytest.raises(ValueError, match="launcher must be one of"):
        train_model(**common, run_id="r1", launcher="slurm")
    with pytest.raises(ValueError, match="job_kind must be one of"):
        train_model(**common, run_id="r1", launcher="local", job_kind="mpijob")
    with pytest.raises(ValueError, match="unknown key 'gpu'"):
        train_model(**common, run_id="r1", launcher="local", cluster_profile="gpu: 8")
    with pytest.raises(ValueError, match="placeholder"):
        train_model(**common, launcher="local", run_id="{{$.pipeline_job_uuid}}")
