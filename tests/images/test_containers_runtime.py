"""launch.containers without an engine: what a replica container gets from the rendered job, and
what a step container gets for DockerRunner. (Running them is test_image_demo's job.)"""

from __future__ import annotations

import os

import docker
import pytest

from gbcosface.config import load_config
from gbcosface.launch import contract
from gbcosface.launch.containers import (
    SESSION_ENV,
    SESSION_LABEL,
    STEP_SOCKET,
    ContainerError,
    ContainerRuntime,
    grant,
    quantity_bytes,
    runtime_for_job,
    step_container_args,
)
from gbcosface.launch.local import plan_from_job
from gbcosface.launch.pytorchjob import JobSpec, render_job


class FakeImages:
    def __init__(self, known: set[str]):
        self.known = known

    def get(self, name: str) -> object:
        if name not in self.known:
            raise docker.errors.ImageNotFound(f"no such image: {name}")
        return object()


class FakeClient:
    def __init__(self, *known: str):
        self.images = FakeImages(set(known))


def rendered(shm_size: str | None = "2Gi"):
    spec = JobSpec(name="gbcosface-run-1", image="registry.example/gbcosface:9.9", nnodes=2, shm_size=shm_size)
    return render_job(spec, load_config("demo"))


def test_a_replica_container_gets_the_pods_image_user_shm_and_config_mount(tmp_path):
    job = rendered()
    plan = plan_from_job(job.job, job.configmap, tmp_path)
    config_file = tmp_path / contract.CONFIG_KEY
    runtime = runtime_for_job(job.job, config_file, client=FakeClient("registry.example/gbcosface:9.9"))
    assert runtime.image == "registry.example/gbcosface:9.9"
    assert runtime.user == "1000:1000"
    assert runtime.shm_size == "2Gi"
    assert runtime.files == {str(config_file.resolve()): contract.CONFIG_PATH}
    # The plan points the command at the file it wrote; the container sees the ConfigMap's path.
    assert str(config_file.resolve()) in plan.command
    assert runtime.argv(plan.command) == job.job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
        "containers"][0]["command"]
    assert runtime.argv(plan.command)[0] == "torchrun"  # not mapped to this venv's interpreter


def test_a_job_without_a_dshm_volume_still_gets_a_sized_dev_shm(tmp_path):
    job = rendered(shm_size=None)
    plan_from_job(job.job, job.configmap, tmp_path)
    runtime = runtime_for_job(job.job, tmp_path / contract.CONFIG_KEY, client=FakeClient("registry.example/gbcosface:9.9"))
    assert quantity_bytes(runtime.shm_size) >= 2**30


def test_a_missing_image_or_mount_source_is_an_error_naming_it(tmp_path):
    with pytest.raises(ContainerError, match="nope:1 is not in the container engine"):
        ContainerRuntime(image="nope:1", client=FakeClient())
    with pytest.raises(ContainerError, match="absent.yaml does not exist"):
        ContainerRuntime(image="x:1", files={str(tmp_path / "absent.yaml"): "/etc/x"}, client=FakeClient("x:1"))


@pytest.mark.parametrize(("text", "value"), [("16Gi", 16 * 2**30), ("512M", 512 * 10**6), ("1000", 1000)])
def test_quantities(text, value):
    assert quantity_bytes(text) == value


def test_a_bad_quantity_names_it():
    with pytest.raises(ValueError, match="'1.5Gi'"):
        quantity_bytes("1.5Gi")


def test_step_containers_share_paths_network_and_the_engine_socket(tmp_path):
    args = step_container_args(session="s1", writable=[tmp_path], environment={"AWS_ACCESS_KEY_ID": "k"},
                               docker_host="unix:///tmp/x/podman.sock")
    mounts = {(m["Source"], m["Target"]) for m in args["mounts"]}
    assert mounts == {(str(tmp_path.resolve()), str(tmp_path.resolve())), ("/tmp/x/podman.sock", STEP_SOCKET)}
    assert args["environment"] == {"AWS_ACCESS_KEY_ID": "k", SESSION_ENV: "s1", "DOCKER_HOST": f"unix://{STEP_SOCKET}"}
    assert args["network_mode"] == "host" and args["labels"] == {SESSION_LABEL: "s1"}
    # A TCP engine is reached as it is: nothing to mount.
    tcp = step_container_args(session="s1", writable=[], environment={}, docker_host="tcp://10.0.0.1:2375")
    assert tcp["mounts"] == [] and "DOCKER_HOST" not in tcp["environment"]


def test_replicas_inherit_the_session_label_from_the_step(tmp_path, monkeypatch):
    job = rendered()
    plan_from_job(job.job, job.configmap, tmp_path)
    monkeypatch.setenv(SESSION_ENV, "s2")
    runtime = runtime_for_job(job.job, tmp_path / contract.CONFIG_KEY, client=FakeClient("registry.example/gbcosface:9.9"))
    assert runtime.labels == {SESSION_LABEL: "s2"}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root; non-root gets mode 0777 instead")
def test_grant_makes_a_folder_the_containers_users(tmp_path):
    grant(tmp_path / "work", 1000)
    assert (tmp_path / "work").stat().st_uid == 1000


def test_podmans_500_for_a_removed_container_reads_as_docker_404():
    import requests

    from gbcosface.launch.containers import podman_not_found_as_404

    def answer(status: int, text: str) -> requests.Response:
        response = requests.Response()
        response.status_code, response._content, response.url = status, text.encode(), "http+docker://x/json"
        return response

    api = docker.APIClient.__new__(docker.APIClient)
    gone = answer(500, "container abc does not exist in database: no such container")
    with podman_not_found_as_404():
        with pytest.raises(docker.errors.NotFound):
            api._raise_for_status(gone)
        with pytest.raises(docker.errors.APIError) as other:
            api._raise_for_status(answer(500, "disk full"))
        assert not isinstance(other.value, docker.errors.NotFound)
    with pytest.raises(docker.errors.APIError) as outside:
        api._raise_for_status(gone)
    assert not isinstance(outside.value, docker.errors.NotFound)
