"""The built image keeps its contract: non-root uid/gid 1000 with a writable HOME, the KFP launcher
paths owned by that user, python/python3/torchrun/gbcosface on PATH from /opt/venv, the tested torch."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.image, pytest.mark.integration]

PROBE = r"""
import json, os, shutil, sys, tempfile
import torch, torchvision, onnxruntime, onnxscript, docker, kfp, gbcosface
home = os.environ["HOME"]
tempfile.NamedTemporaryFile(dir=home).close()
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "home": home, "prefix": sys.prefix,
    "tools": {t: shutil.which(t) for t in ("python", "python3", "torchrun", "gbcosface", "sh")},
    "writable": {p: os.access(p, os.W_OK) for p in ("/gcs", "/minio", "/s3", "/data", "/tmp", home)},
    "torch": torch.__version__, "torchvision": torchvision.__version__, "version": gbcosface.__version__,
}))
"""


def test_the_image_runs_as_its_non_root_user_with_the_tested_torch(engine, image):
    out = engine.containers.run(image, ["python3", "-c", PROBE], remove=True, labels={"io.gbcosface.session": "image-tests"})
    info = json.loads(out.decode().strip().splitlines()[-1])
    assert (info["uid"], info["gid"]) == (1000, 1000)
    assert info["home"] == "/home/gbcosface" and info["prefix"] == "/opt/venv"
    for tool, path in info["tools"].items():
        assert path, f"{tool} is not on PATH"
    assert all(info["tools"][t].startswith("/opt/venv/bin/") for t in ("python", "python3", "torchrun", "gbcosface"))
    assert all(info["writable"].values()), info["writable"]
    assert info["torch"].split("+")[0] == "2.14.1" and info["torchvision"].split("+")[0] == "0.29.1"


def test_the_image_has_no_entrypoint_so_kfp_and_kubernetes_commands_run_as_given(engine, image):
    config = engine.images.get(image).attrs["Config"]
    assert not config.get("Entrypoint")
    assert config.get("User") == "1000:1000"
