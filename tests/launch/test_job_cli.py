"""`gbcosface job ...` end to end: render to a file, run the emulator, and submit/wait/delete
against the fake API server (tests/launch/fake_kube_api.py: no real API server can run here)
through a kubeconfig, as a person would."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from fake_kube_api import FakeApiServer, condition
from launch_helpers import CRD_FILE

from gbcosface.cli import main
from gbcosface.config import from_dict
from gbcosface.launch.names import job_name_for_run
from gbcosface.launch.validate import job_errors, load_crd_schema


def test_render_writes_configmap_and_job(tmp_path):
    out = tmp_path / "job.yaml"
    code = main(["job", "render", "--config", "paper", "--name", "gbc-cli", "--image", "img:1", "--nnodes", "2",
                 "--nproc-per-node", "8", "--gpus-per-node", "8", "--gpu-toleration", "--s3-secret", "gbcosface-s3",
                 "--crd", str(CRD_FILE), "-o", str(out), "run.seed=5", "data.batch_size=32"])
    assert code == 0
    cm, job = yaml.safe_load_all(out.read_text())
    assert cm["kind"] == "ConfigMap" and job["kind"] == "PyTorchJob"
    cfg = from_dict(yaml.safe_load(cm["data"]["config.yaml"]))
    assert cfg.run.seed == 5 and cfg.data.batch_size == 32
    assert job_errors(job, load_crd_schema(CRD_FILE)) == []
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_render_names_the_job_from_a_run_id(capsys):
    assert main(["job", "render", "--config", "demo", "--run-id", "Run 42", "--image", "img:1"]) == 0
    _, job = yaml.safe_load_all(capsys.readouterr().out)
    assert job["metadata"]["name"] == job_name_for_run("Run 42")
    assert job["metadata"]["labels"]["gbcosface/run-id"] == "Run-42"


def test_render_reports_bad_input_without_a_traceback(capsys):
    assert main(["job", "render", "--config", "demo", "--name", "gbc-x", "--image", "i", "--nnodes", "0"]) == 3
    assert "nnodes must be >= 1" in capsys.readouterr().err
    assert main(["job", "render", "--config", "demo", "--name", "gbc-x", "--image", "i", "nope.key=1"]) == 3
    assert "unknown key" in capsys.readouterr().err


@pytest.mark.integration  # starts real processes
def test_local_runs_a_command_per_replica(tmp_path, capsys):
    script = tmp_path / "s.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        print("node", os.environ["PET_NODE_RANK"], "of", os.environ["PET_NNODES"])
        sys.exit(int(os.environ.get("FAIL_CODE", "0")))
    """))
    assert main(["job", "local", "--replicas", "2", "--command", f"python {script}", "--log-dir", str(tmp_path / "l")]) == 0
    out = capsys.readouterr().out
    assert "[worker-0] node 1 of 2" in out and "Succeeded" in out
    code = main(["job", "local", "--replicas", "1", "--command", f"python {script}", "--env", "FAIL_CODE=4",
                 "--max-restarts", "1", "--log-dir", str(tmp_path / "m")])
    assert code == 1
    out = capsys.readouterr().out
    assert out.count("master-0 exited with 4") == 2 and "Failed" in out


@pytest.fixture()
def kubeconfig(tmp_path):
    with FakeApiServer() as api:
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
            "users": [{"name": "u", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "ns1"}}],
        }))
        yield api, str(path)


def test_submit_wait_delete_through_a_kubeconfig(kubeconfig, capsys):
    api, path = kubeconfig
    api.cluster.script = lambda job, n: [condition("Created"), condition("Running")] + (
        [condition("Succeeded")] if n >= 2 else [])
    base = ["--kubeconfig", path, "--namespace", "ns1"]
    code = main(["job", "submit", "--config", "demo", "--name", "gbc-sub", "--image", "img:1", *base,
                 "--wait", "--timeout", "60", "--poll", "0.05"])
    assert code == 0
    assert "ns1/gbc-sub: Succeeded" in capsys.readouterr().out
    assert main(["job", "wait", "gbc-sub", *base, "--timeout", "10", "--poll", "0.05"]) == 0
    assert main(["job", "delete", "gbc-sub", *base]) == 0
    assert "deleted gbc-sub" in capsys.readouterr().out
    assert not api.cluster.jobs and not api.cluster.configmaps
    assert main(["job", "wait", "gbc-sub", *base, "--timeout", "5", "--poll", "0.05"]) == 1
    assert "no longer exists" in capsys.readouterr().err


TRAINJOB_CRD = CRD_FILE.parent / "trainer.kubeflow.org_trainjobs.yaml"


def test_render_a_trainjob_with_the_same_flags(tmp_path):
    out = tmp_path / "tj.yaml"
    profile = tmp_path / "profile.yaml"
    profile.write_text("image_pull_secrets: [regcred]\nnccl_socket_ifname: eth0\n")
    code = main(["job", "render", "--kind", "trainjob", "--config", "paper", "--name", "gbc-cli", "--image", "img:1",
                 "--nnodes", "2", "--nproc-per-node", "8", "--gpus-per-node", "8", "--cluster-profile", str(profile),
                 "--crd", str(TRAINJOB_CRD), "-o", str(out), "run.seed=5"])
    assert code == 0
    cm, job = yaml.safe_load_all(out.read_text())
    assert cm["kind"] == "ConfigMap" and job["kind"] == "TrainJob" and job["spec"]["trainer"]["numNodes"] == 2
    assert from_dict(yaml.safe_load(cm["data"]["config.yaml"])).run.seed == 5
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    # A setting a TrainJob cannot express is an error naming it, and the CRD check uses the kind's CRD.
    assert main(["job", "render", "--kind", "trainjob", "--config", "demo", "--name", "gbc-x", "--image", "i",
                 "--elastic-min", "1", "--elastic-max", "2"]) == 3
    assert main(["job", "render", "--kind", "trainjob", "--config", "demo", "--name", "gbc-x", "--image", "i",
                 "--env", "PET_NNODES=3"]) == 3


@pytest.mark.integration  # starts real processes
def test_local_runs_a_rendered_trainjob_manifest(tmp_path, capsys):
    out = tmp_path / "tj.yaml"
    assert main(["job", "render", "--kind", "trainjob", "--config", "demo", "--name", "gbc-man", "--image", "img:1",
                 "--nnodes", "2", "--env", "MARK=from-manifest", "-o", str(out)]) == 0
    cm, job = yaml.safe_load_all(out.read_text())
    script = tmp_path / "s.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        cfg = sys.argv[sys.argv.index("--config") + 1]
        print("node", os.environ["PET_NODE_RANK"], "of", os.environ["PET_NNODES"], os.environ["MARK"],
              "config", os.path.isfile(cfg))
    """))
    job["spec"]["trainer"]["command"] = ["python", str(script), "--config", "/etc/gbcosface/config.yaml"]
    out.write_text(yaml.safe_dump_all([cm, job]))
    capsys.readouterr()
    assert main(["job", "local", "--job", str(out), "--log-dir", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert "[node-0-1] node 1 of 2 from-manifest config True" in text and "gbc-man: Succeeded" in text
    assert (tmp_path / "run" / "logs" / "gbc-man-node-0-0.log").is_file()
    out.write_text(yaml.safe_dump(job))  # no ConfigMap: a clear error, no traceback
    assert main(["job", "local", "--job", str(out)]) == 2
    assert "expected one ConfigMap" in capsys.readouterr().err


def test_submit_and_delete_a_trainjob_through_a_kubeconfig(kubeconfig, capsys):
    api, path = kubeconfig
    api.cluster.script = lambda job, n: [condition("Complete")]
    code = main(["job", "submit", "--kind", "trainjob", "--config", "demo", "--name", "gbc-tj", "--image", "img:1",
                 "--kubeconfig", path, "--wait", "--timeout", "60", "--poll", "0.05"])
    assert code == 0
    assert "TrainJob ns1/gbc-tj: Complete" in capsys.readouterr().out  # ns1: the kubeconfig context's namespace
    assert main(["job", "delete", "--kind", "trainjob", "gbc-tj", "--kubeconfig", path]) == 0
    assert not api.cluster.trainjobs and not api.cluster.configmaps
