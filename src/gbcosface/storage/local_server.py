"""A local S3 API server (moto) on 127.0.0.1, for the demo, the tests and the benchmarks.

Why a subprocess and not moto's in-process server: the server then has its own interpreter (no GIL
contention with the client being measured or tested), and killing it is a clean way to simulate an
outage. Why moto: it is the most faithful S3 emulation that installs from PyPI (multipart ETags,
part-size limits, pagination, versioning, conditional requests). It binds only to loopback.

    with LocalS3Server() as server:
        os.environ.update(server.env())
        server.create_bucket("data")
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gbcosface import s3_env
from gbcosface.storage.errors import StorageError

LOOPBACK = "127.0.0.1"
# Dummy credentials: moto accepts any; real stores never see these. Under the project's own names
# only (gbcosface.s3_env): what the demo hands its steps and replicas is what a cluster's Secret gives.
DUMMY_CREDENTIALS = {
    s3_env.ACCESS_KEY_ID: "testing",
    s3_env.SECRET_ACCESS_KEY: "testing",
    s3_env.REGION: "us-east-1",
}


# Runs moto's server, but first asks Linux to SIGTERM it when its parent dies (prctl
# PR_SET_PDEATHSIG), so that a test run or demo killed with SIGKILL does not leak servers.
_LAUNCHER = """
import os, signal, sys
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(sys.argv[1]):
        sys.exit(0)
from moto.server import main
main(sys.argv[2:])
"""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the caller retries if another process takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalS3Server:
    """Start/stop `moto.server` on 127.0.0.1 and wait until it answers HTTP.

    On Linux the server also stops when the thread that started it exits (PR_SET_PDEATHSIG), so
    start it from a long-lived thread (the main thread in tests, the demo and benchmarks).
    """

    def __init__(
        self, port: int = 0, *, startup_timeout: float = 30.0, log_path: str | Path | None = None
    ) -> None:
        if importlib.util.find_spec("moto") is None:
            raise StorageError("the local S3 server needs moto: pip install 'moto[server]'")
        self.host = LOOPBACK
        self.requested_port = port
        self.port = port
        self.startup_timeout = startup_timeout
        self._log_path = Path(log_path) if log_path else None
        self._own_log = False
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point gbcosface's S3 client at this server with dummy credentials.

        Only GBCOSFACE_S3_* names, never AWS_*: in a KFP step those would also steer KFP's launcher
        (gbcosface.s3_env), and the local runs must hand steps and replicas what a cluster does."""
        return {**DUMMY_CREDENTIALS, s3_env.ENDPOINT_URL: self.endpoint_url}

    def aws_tool_env(self) -> dict[str, str]:
        """The same settings under the standard AWS names, for tools that know no others (the aws CLI
        in bench/). Never for a pipeline step or a replica: there they would steer KFP's launcher."""
        return {
            "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS[s3_env.ACCESS_KEY_ID],
            "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS[s3_env.SECRET_ACCESS_KEY],
            "AWS_DEFAULT_REGION": DUMMY_CREDENTIALS[s3_env.REGION],
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def start(self) -> LocalS3Server:
        if self._proc is not None:
            return self
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="moto-server-", suffix=".log")
            os.close(fd)
            self._log_path, self._own_log = Path(name), True
        tries = 3 if self.requested_port == 0 else 1
        last = ""
        for _ in range(tries):
            self.port = self.requested_port or free_port()
            with open(self._log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        _LAUNCHER,
                        str(os.getpid()),
                        "-H",
                        self.host,
                        "-p",
                        str(self.port),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            try:
                self._wait_ready()
                return self
            except StorageError as exc:
                last = str(exc)
                self.stop(keep_log=True)
        raise StorageError(f"the local S3 server did not start: {last}")

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise StorageError(f"moto exited with code {self._proc.returncode}; log: {self._log_tail()}")
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
                conn.request("GET", "/moto-api/")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.05)
        raise StorageError(f"moto did not answer on {self.endpoint_url} within {self.startup_timeout} s")

    def _log_tail(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-2000:] if self._log_path else ""
        except OSError:
            return ""

    def stop(self, keep_log: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if not keep_log and self._own_log and self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._log_path, self._own_log = None, False

    def wait(self) -> int:
        """Block until the server process exits (the foreground `gbcosface s3-server`); its exit code."""
        if self._proc is None:
            return 0
        return int(self._proc.wait() or 0)

    def create_bucket(self, name: str, *, versioned: bool = False) -> None:
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server with dummy credentials (independent of the environment)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session(
            aws_access_key_id=DUMMY_CREDENTIALS[s3_env.ACCESS_KEY_ID],
            aws_secret_access_key=DUMMY_CREDENTIALS[s3_env.SECRET_ACCESS_KEY],
            region_name=DUMMY_CREDENTIALS[s3_env.REGION],
        ).client(
            "s3", endpoint_url=self.endpoint_url, config=Config(s3={"addressing_style": "path"}, **config)
        )

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        # A forgotten server must not outlive its owner.
        with contextlib.suppress(Exception):
            self.stop()
