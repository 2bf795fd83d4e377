"""The publish step's code, ONNX export included, run inside the built image against a real S3 API
(moto on loopback); the exported graph is then checked here against the PyTorch backbone."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from gbcosface.config import load_config
from gbcosface.launch.containers import SESSION_LABEL, grant, step_container_args
from gbcosface.models import backbone_from_config, save_backbone
from gbcosface.storage import get_bytes, list_objects
from gbcosface.storage.local_server import LocalS3Server

pytestmark = [pytest.mark.image, pytest.mark.integration]

RUN = r"""
import json, sys
from gbcosface.steps.publish import publish
print("RESULT " + json.dumps(publish(**json.load(open(sys.argv[1])))))
"""
LINEAGE = {"run_id": "image-test", "config_hash": "c" * 64, "dataset_manifest_hash": "d" * 64,
           "code_version": "test", "image": "under-test", "seed": 0}


def test_publish_exports_onnx_inside_the_image(engine, image, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = backbone_from_config(load_config("demo").model).eval()
    work = tmp_path / "work"
    (work / "model").mkdir(parents=True)
    (work / "results").mkdir()
    save_backbone(model, work / "model" / "backbone.pt")
    (work / "model" / "metadata.json").write_text(json.dumps(LINEAGE))
    (work / "results" / "metrics.json").write_text(json.dumps({"target": "IJBC", "tar_at_far": {"1e-3": 0.5}}))
    for path in [work, *work.rglob("*")]:  # as if an earlier step (the image's user) had written them
        if path.is_dir():
            grant(path, 1000)
        elif os.geteuid() == 0:
            os.chown(path, 1000, 1000)
        else:
            path.chmod(0o644)
    with LocalS3Server() as server:
        server.create_bucket("bucket")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        run_uri = "s3://bucket/out/runs/image-test"
        args = {"model_dir": str(work / "model"), "model_metadata": LINEAGE, "results_dir": str(work / "results"),
                "dataset_metadata": {"source": "s3://bucket/data"}, "run_uri": run_uri,
                "endpoint_url": server.endpoint_url, "export_onnx": True, "summary_out": str(work / "summary.json")}
        (work / "args.json").write_text(json.dumps(args))
        run_args = step_container_args(session="image-tests", writable=[work], environment=server.env(),
                                       docker_host="")
        container = engine.containers.run(image, ["python", "-c", RUN, str(work / "args.json")], detach=True,
                                          **run_args)
        try:
            code = container.wait()["StatusCode"]
            logs = container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)
        assert code == 0, logs
        assert run_args["labels"] == {SESSION_LABEL: "image-tests"}
        keys = {obj.key for obj in list_objects(run_uri, endpoint_url=server.endpoint_url)}
        assert {"model/backbone.pt", "model/backbone.json", "model/backbone.onnx", "model/metadata.json",
                "eval/IJBC/metrics.json", "summary.json"} <= keys, keys
        metadata = json.loads(get_bytes(f"{run_uri}/model/metadata.json", endpoint_url=server.endpoint_url))
        onnx_bytes = get_bytes(f"{run_uri}/model/backbone.onnx", endpoint_url=server.endpoint_url)

    assert metadata["onnx"]["max_abs_diff"] < 1e-3  # the in-image parity check ran
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).uniform(-1, 1, size=(2, 3, 112, 112)).astype(np.float32)
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
