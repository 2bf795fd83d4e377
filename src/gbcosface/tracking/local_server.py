"""A real MLflow tracking server on 127.0.0.1 (SQLite backend store, artifacts in S3) for the demo and the tests.

Why start()/wait_ready() apart: the server needs ~21 s to answer on 2 cores (ENVIRONMENT.md; most of it is
the SQLite schema migration), so the demo starts it first and does other work (the synthetic world, the
upload) before it waits. The server is `mlflow server` from the `tracking` extra's full `mlflow` package,
run by this interpreter; it stops with `stop()` (or the context manager) on success and on failure, and it
dies with its parent thread on Linux, like the local S3 server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"


class MlflowServerError(RuntimeError):
    """The tracking server did not start; the message names its log file."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _pdeathsig() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setsid()


class LocalMlflowServer:
    def __init__(self, root: str | Path, *, artifacts_destination: str | None = None, port: int = 0,
                 env: dict[str, str] | None = None, startup_timeout: float = 180.0) -> None:
        self.root = Path(root).resolve()
        self.artifacts_destination = artifacts_destination or (self.root / "artifacts").as_uri()
        self.port = port or _free_port()
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.log_path = self.root / "mlflow-server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> LocalMlflowServer:
        """Start the server process and return at once (`wait_ready()` waits for it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", LOOPBACK, "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", self.artifacts_destination, "--workers", "1"]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                      preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def wait_ready(self) -> str:
        """Block until /health answers; the URL. Raises MlflowServerError if the process exits or times out."""
        assert self._proc is not None, "start() first"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MlflowServerError(f"mlflow server exited with {self._proc.returncode}; see {self.log_path}")
            if self.ready():
                return self.url
            time.sleep(0.25)
        raise MlflowServerError(f"mlflow server not ready after {self.startup_timeout:.0f} s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL the server's process group (a tracking server that dies mid-run; tests)."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)  # uvicorn/gunicorn workers too
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(5)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalMlflowServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
