"""`make demo` with every step in the built image: KFP's DockerRunner through podman's Docker API,
the PyTorchJob's two replicas as sibling containers of the image (launcher local-containers).

Why the outputs are checked one by one: DockerRunner reports a task SUCCESS even when it wrote no
outputs (e.g. a pipeline root its user cannot write), so success alone proves nothing.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from gbcosface.demo import run_demo
from gbcosface.eval.report import format_comparison
from gbcosface.launch.local import free_port

pytestmark = [pytest.mark.image, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
STEPS_ENV = "IMAGE_TEST_STEPS"  # training steps (the demo recipe has 600)
PUBLISHED = ("dataset/manifest.json", "config.yaml", "model/backbone.pt", "model/backbone.json",
             "model/backbone.onnx", "model/metadata.json", "eval/IJBC/metrics.json", "eval/IJBC/report.html",
             "eval/IJBC/roc.png", "eval/IJBC/scores.npy", "summary.json")


def free_port_pair() -> int:
    """A port p with p and p + 1 free: the two replicas' metrics ports (other demos may hold 9400)."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


@pytest.mark.timeout(3600)
def test_demo_runs_every_step_and_replica_in_the_image(engine, image, capsys):
    # Under build/ (not a temp dir) so that a rerun reuses the synthetic world, as `make demo` does.
    out = REPO / "build" / "image-test"
    # What is under test is the images, not the model (the process demo checks that): a short training
    # and a gate that always passes, so that publish (and its ONNX export) runs in every image test.
    steps = int(os.environ.get(STEPS_ENV, "60"))
    summary = run_demo(out, runner="docker", image=image, steps=steps, gate_min_tar=0.0,
                       recipe_overrides=[f"run.metrics_port={free_port_pair()}"])
    with capsys.disabled():
        print("\n" + format_comparison({"untrained": summary["untrained"], "trained": summary["trained"]}))
        print(f"image-test: pipeline {summary['timings']['pipeline_s']:.0f} s, total {summary['timings']['total_s']:.0f} s")

    # What the run published to S3 (the demo copies the run prefix down before the server stops).
    published = out / "published"
    missing = [p for p in PUBLISHED if not (published / p).is_file() or (published / p).stat().st_size == 0]
    assert not missing, f"not published: {missing}"
    metadata = json.loads((published / "model" / "metadata.json").read_text())
    assert metadata["onnx"]["max_abs_diff"] < 1e-3
    assert metadata["launcher"] == "local-containers" and metadata["nnodes"] == 2
    assert image in metadata["image"]
    trained, untrained = summary["trained"], summary["untrained"]
    assert trained["tar_at_far"] != untrained["tar_at_far"]

    # The replicas ran as containers of the image, the job's command with the mounted ConfigMap.
    (job_dir,) = (out / "work" / "jobs").iterdir()
    logs = sorted((job_dir / "logs").glob("*.log"))
    assert [p.stem.rsplit("-", 2)[-2:] for p in logs] == [["master", "0"], ["worker", "0"]]
    for log in logs:
        text = log.read_text()
        assert f"===== attempt 0: {image} torchrun -m gbcosface train --config /etc/gbcosface/config.yaml" in text
        assert text.rstrip().endswith("===== exit code 0"), text[-2000:]

    # Each KFP task wrote its outputs (into the pipeline root, as the image's user).
    run_dir = Path(summary["out"]) / "kfp"
    (run,) = [p for p in run_dir.iterdir() if p.is_dir()]
    assert (run / "train-model" / "model" / "backbone.pt").is_file()
    assert (run / "publish" / "summary").is_file()
    assert all(p.stat().st_uid == 1000 for p in (run / "train-model" / "model").iterdir())
