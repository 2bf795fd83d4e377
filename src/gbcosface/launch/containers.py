"""The emulated PyTorchJob with its replicas as containers of the job's image (launcher `local-containers`).

Why a second way to start a replica: the process emulator (`launch.local`) runs the trainer of the
venv it is called from, so the image, its non-root user, its PATH and the job's mounts are never
exercised before a cluster run. Here each replica is a container of the rendered job's image
started through a Docker-compatible API (Docker, or `podman system service`), with what the pod
gets: the job's command (`torchrun -m gbcosface train --config /etc/gbcosface/config.yaml`), the
operator's environment (`contract.operator_env`, master on 127.0.0.1 since the replicas share the
host's network), the pod's uid/gid, all capabilities dropped and no privilege escalation, a sized
/dev/shm, and the job's ConfigMap (the file the plan wrote) bind-mounted read-only at
`contract.CONFIG_PATH`. Everything else about the job (restarts as a set, backoff, deadline, logs)
is `launch.local.run_local_job`'s, with `ContainerRuntime` as its `runtime`.

Paths: bind-mount sources are resolved by the container engine on ITS host. When this code itself
runs in a container (a KFP step under DockerRunner), the job's work dir must be mounted there at
the same path as on the host, which is how `pipeline_cli.run_local(runner="docker")` mounts it.
Exit codes of containers killed by a signal are 128 + the signal (the engine's convention), not
negative as for the process emulator.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from gbcosface import s3_env

from . import contract

log = logging.getLogger(__name__)

#: Label on every container this module starts (value: the replica's pod name).
LABEL = "io.gbcosface.launch"
#: Label naming the session (a demo or test run) that started a container, so that the session can
#: remove whatever it left, and nothing of other sessions sharing the engine. Containers started by a
#: step inherit it from the step's environment variable SESSION_ENV.
SESSION_LABEL = "io.gbcosface.session"
SESSION_ENV = "GBCOSFACE_CONTAINER_SESSION"
#: /dev/shm for a replica whose job has no `dshm` volume (the container default, 64 MiB, is too small
#: for DataLoader workers).
DEFAULT_SHM = "1Gi"
#: Variables a cluster pod gets from the job's S3 Secret (or its profile's env), passed from the
#: caller's environment: the project's own names only, never AWS_* (gbcosface.s3_env).
SECRET_ENV_NAMES = s3_env.ALL
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


class ContainerError(RuntimeError):
    """The container engine refused or lost a replica (no such image, a failed mount, no API)."""


class ReplicaHandle(Protocol):
    """One started replica, as `launch.local.run_local_job` drives it (`local._Replica` for processes)."""

    def exit_code(self) -> int | None: ...

    def signal_group(self, sig: int) -> None: ...

    def finish(self) -> int: ...


class ReplicaRuntime(Protocol):
    """How `run_local_job` starts a replica: `argv` maps the job's command, `start` runs it."""

    def argv(self, command: Sequence[str]) -> list[str]: ...

    def start(self, name: str, short: str, argv: list[str], env: dict[str, str], cwd: str | None,
              log_path: Path, attempt: int, echo: IO[str] | None) -> ReplicaHandle: ...


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("16Gi", "512M", "1000") in bytes."""
    match = re.fullmatch(r"(\d+)([KMGT]i?)?", quantity.strip())
    if not match:
        raise ValueError(f"memory quantity {quantity!r}: expected digits and an optional K/M/G/T(i) suffix")
    return int(match.group(1)) * _UNITS[match.group(2) or ""]


def docker_client(base_url: str | None = None, timeout: float | None = 60) -> Any:
    """A Docker SDK client for DOCKER_HOST (or `base_url`), with a clear error when there is no API.
    `timeout` bounds every read, so a log stream needs a client with None (a quiet replica is fine)."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - the [containers] extra is missing
        raise ContainerError("the Docker SDK is not installed: pip install 'gbcosface[containers]'") from exc
    try:
        client = (docker.DockerClient(base_url=base_url, timeout=timeout) if base_url
                  else docker.from_env(timeout=timeout))
        client.ping()
    except Exception as exc:
        where = base_url or os.environ.get("DOCKER_HOST", "the default socket")
        raise ContainerError(f"no Docker-compatible API at {where}: {exc}") from exc
    return client


def secret_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a pod would get from the job's S3 Secret: those variables of the caller's environment."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in SECRET_ENV_NAMES if k in env}


@dataclass
class ContainerRuntime:
    """Start replicas as containers of `image`; `files` maps host files to where the pod mounts them."""

    image: str
    files: dict[str, str] = field(default_factory=dict)
    shm_size: str = DEFAULT_SHM
    user: str | None = None  # "uid:gid"; None: the image's USER
    network_mode: str = "host"
    labels: dict[str, str] = field(default_factory=dict)
    client: Any = None
    stream_client: Any = None  # for log streams: no read timeout (default: `client` if given, else a new one)

    def __post_init__(self) -> None:
        if self.client is None:
            self.client = docker_client()
            self.stream_client = self.stream_client or docker_client(timeout=None)
        self.stream_client = self.stream_client or self.client
        import docker

        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound as exc:
            raise ContainerError(f"image {self.image} is not in the container engine: build it first "
                                 "(make build-images ENGINE=podman)") from exc
        for src in self.files:
            if not Path(src).is_file():
                raise ContainerError(f"file to mount {src} does not exist")

    def argv(self, command: Sequence[str]) -> list[str]:
        """The job's command as the pod runs it: only the mounted files' paths are the pod's."""
        by_host = {str(Path(src).resolve()): dst for src, dst in self.files.items()}
        return [by_host.get(arg, arg) for arg in command]

    def start(self, name: str, short: str, argv: list[str], env: dict[str, str], cwd: str | None,
              log_path: Path, attempt: int, echo: IO[str] | None) -> ContainerReplica:
        return ContainerReplica(self, name, short, argv, env, cwd, log_path, attempt, echo)


class ContainerReplica:
    """One replica container: logs copied to `log_path` (and `echo`), removed in `finish()`."""

    def __init__(self, runtime: ContainerRuntime, name: str, short: str, argv: list[str], env: dict[str, str],
                 cwd: str | None, log_path: Path, attempt: int, echo: IO[str] | None):
        import docker
        from docker.types import Mount

        self.name, self.short = name, short
        self._errors = docker.errors
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "a", encoding="utf-8")  # closed in finish()
        self._log.write(f"===== attempt {attempt}: {runtime.image} {' '.join(argv)}\n")
        self._log.flush()
        self._echo = echo
        self._code: int | None = None
        mounts = [Mount(target=dst, source=str(Path(src).resolve()), type="bind", read_only=True)
                  for src, dst in runtime.files.items()]
        try:
            # entrypoint + command = the pod's `command:`, which replaces the image's ENTRYPOINT.
            self.container = runtime.client.containers.run(
                runtime.image, entrypoint=argv[:1], command=argv[1:], name=f"{name}-{secrets.token_hex(3)}",
                environment=env, working_dir=cwd, user=runtime.user, network_mode=runtime.network_mode,
                shm_size=quantity_bytes(runtime.shm_size), mounts=mounts, cap_drop=["ALL"],
                security_opt=["no-new-privileges"], labels={LABEL: name, **runtime.labels},
                detach=True, stdin_open=False,
            )
        except docker.errors.APIError as exc:
            self._log.close()
            raise ContainerError(f"replica {name}: the engine did not start a container of {runtime.image}: "
                                 f"{exc.explanation or exc}") from exc
        self._stream_client = runtime.stream_client
        self._pump = threading.Thread(target=self._copy, name=f"log-{short}", daemon=True)
        self._pump.start()

    def _copy(self) -> None:
        pending = b""
        try:
            for chunk in self._stream_client.api.logs(self.container.id, stream=True, follow=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._write(raw.decode("utf-8", errors="replace") + "\n")
        except Exception:  # noqa: BLE001 - the container was removed, or the engine went away
            pass
        if pending:
            self._write(pending.decode("utf-8", errors="replace") + "\n")

    def _write(self, line: str) -> None:
        self._log.write(line)
        self._log.flush()
        if self._echo is not None:
            self._echo.write(f"[{self.short}] {line}")
            self._echo.flush()

    def exit_code(self) -> int | None:
        """The container's exit status once it has exited, else None."""
        if self._code is None:
            self.container.reload()
            state = self.container.attrs.get("State", {})
            if state.get("Status") in ("exited", "dead", "stopped"):
                self._code = int(state.get("ExitCode", -1))
        return self._code

    def signal_group(self, sig: int) -> None:
        if self.exit_code() is not None:
            return
        try:
            self.container.kill(signal=int(sig))
        except self._errors.APIError:
            pass  # exited meanwhile

    def finish(self) -> int:
        self.signal_group(9)
        code = int(self.container.wait().get("StatusCode", -1))
        self._pump.join(timeout=10)
        try:
            self.container.remove(force=True)
        except self._errors.APIError as exc:
            log.warning("could not remove container of %s: %s", self.name, exc)
        self._log.write(f"===== exit code {code}\n")
        self._log.close()
        return code


def runtime_for_job(job: Mapping, config_file: str | Path, *, client: Any = None,
                    labels: Mapping[str, str] | None = None) -> ContainerRuntime:
    """A ContainerRuntime that starts what the rendered job's Master pod runs: its image, its
    runAsUser/runAsGroup, its /dev/shm size, and `config_file` where the ConfigMap is mounted."""
    template = job["spec"]["pytorchReplicaSpecs"][contract.MASTER]["template"]["spec"]
    (container,) = [c for c in template["containers"] if c["name"] == contract.CONTAINER_NAME]
    security = template.get("securityContext") or {}
    user = None
    if "runAsUser" in security:
        user = f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"
    shm = DEFAULT_SHM
    for volume in template.get("volumes") or []:
        if volume.get("name") == "dshm" and (volume.get("emptyDir") or {}).get("sizeLimit"):
            shm = volume["emptyDir"]["sizeLimit"]
    all_labels = dict(labels or {})
    if os.environ.get(SESSION_ENV):
        all_labels.setdefault(SESSION_LABEL, os.environ[SESSION_ENV])
    return ContainerRuntime(image=container["image"], files={str(Path(config_file).resolve()): contract.CONFIG_PATH},
                            shm_size=shm, user=user, labels=all_labels, client=client)


def remove_labelled(client: Any, label: str = LABEL, value: str | None = None) -> int:
    """Force-remove the containers carrying `label` (`=value`); returns how many."""
    selector = label if value is None else f"{label}={value}"
    removed = 0
    for container in client.containers.list(all=True, filters={"label": selector}):
        try:
            container.remove(force=True)
            removed += 1
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort, and says so
            log.warning("could not remove container %s: %s", container.name, exc)
    return removed


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies, so that a killed demo or test (SIGKILL, or a
    SIGTERM that skips `__exit__`) does not leave the service running (Linux PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: __exit__ remains the only stop


class PodmanService:
    """`podman system service` on a private socket, for as long as the `with` block runs.

    Why: KFP's DockerRunner and the Docker SDK speak the Docker API, which podman serves on demand
    (no daemon). The socket lies in a fresh 0700 directory, so only root on the host reaches it; it is
    chowned to `socket_owner` (the image's uid), for steps that get it bind-mounted to start their
    sibling containers. On exit every container labelled `cleanup_label` is removed, then the
    service is stopped.
    """

    def __init__(self, *, socket_owner: int | None = 1000, cleanup_label: str | None = None,
                 podman: str = "podman", log_path: str | Path | None = None, start_timeout_s: float = 30.0):
        self.socket_owner = socket_owner
        self.cleanup_label = cleanup_label
        self.podman = podman
        self.log_path = Path(log_path) if log_path else None
        self.start_timeout_s = start_timeout_s
        self._dir: Path | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        assert self._dir is not None, "service not started"
        return self._dir / "podman.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def __enter__(self) -> PodmanService:
        exe = shutil.which(self.podman)
        if exe is None:
            raise ContainerError(f"{self.podman} is not installed (make container-tools)")
        self._dir = Path(tempfile.mkdtemp(prefix="gbcosface-podman-"))
        os.chmod(self._dir, 0o700)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen([exe, "system", "service", "--time=0", self.url],
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        try:
            self._wait_ready()
            if self.socket_owner is not None:
                os.chown(self.socket, self.socket_owner, self.socket_owner)
        except BaseException:
            self._stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ContainerError(f"podman system service exited with {self._proc.returncode}"
                                     + (f" (log: {self.log_path})" if self.log_path else ""))
            if self.socket.exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    try:
                        sock.connect(str(self.socket))
                        sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                        if b"OK" in sock.recv(1024):
                            return
                    except OSError:
                        pass
            time.sleep(0.1)
        raise ContainerError(f"podman system service did not answer on {self.socket} within {self.start_timeout_s} s")

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        try:
            if self.cleanup_label and self._proc is not None and self._proc.poll() is None:
                try:
                    n = remove_labelled(docker_client(self.url), self.cleanup_label)
                    if n:
                        log.info("removed %d leftover container(s) labelled %s", n, self.cleanup_label)
                except ContainerError as exc:
                    log.warning("could not clean up containers: %s", exc)
        finally:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)


#: Where a step container finds the Docker API socket (DOCKER_HOST inside the step).
STEP_SOCKET = "/run/docker.sock"


def grant(path: str | Path, uid: int) -> None:
    """Make `path` (created if missing) writable by the containers' `uid`: chown when we are root,
    else mode 0777. Why: bind-mounted folders keep their host owner, and a step running as the
    image's user cannot write into a root-owned 0755 folder (its outputs would silently be missing)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, uid, uid)
    elif path.stat().st_uid != uid:
        os.chmod(path, 0o777)


def step_container_args(*, session: str, writable: Sequence[str | Path], environment: Mapping[str, str],
                        docker_host: str | None = None, shm_size: str = DEFAULT_SHM) -> dict[str, Any]:
    """`containers.run` arguments for KFP's DockerRunner (KFP itself mounts the pipeline root).

    The step shares the host's network (it reaches the local S3 server on 127.0.0.1), gets
    `environment` (what a cluster step gets from the S3 Secret), the `writable` folders at their host
    paths (so that paths it hands to sibling containers mean the same on the host), the engine's socket
    at STEP_SOCKET with DOCKER_HOST pointing there, and the session's label (inherited by the replica
    containers it starts)."""
    from docker.types import Mount

    mounts = [Mount(target=str(Path(p).resolve()), source=str(Path(p).resolve()), type="bind") for p in writable]
    env = {**environment, SESSION_ENV: session}
    host = docker_host if docker_host is not None else os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        mounts.append(Mount(target=STEP_SOCKET, source=host[len("unix://"):], type="bind"))
        env["DOCKER_HOST"] = f"unix://{STEP_SOCKET}"
    return {"network_mode": "host", "environment": env, "mounts": mounts, "shm_size": quantity_bytes(shm_size),
            "labels": {SESSION_LABEL: session}}


@contextmanager
def step_session(*, writable: Sequence[str | Path], environment: Mapping[str, str], uid: int = 1000,
                 pipeline_root: str | Path | None = None,
                 log_path: str | Path | None = None) -> Iterator[dict[str, Any]]:
    """A Docker API for a run of the DAG in containers, and DockerRunner's arguments for it.

    `writable` folders are mounted into the steps at their host paths; they and `pipeline_root`
    (which DockerRunner mounts itself) are granted to `uid`.

    Uses DOCKER_HOST when set, else starts a podman service for the block (DOCKER_HOST points at it
    meanwhile). On exit, success or failure, every container of the session (steps and replicas) is
    removed and the service it started is stopped."""
    session = secrets.token_hex(6)
    previous = os.environ.get("DOCKER_HOST")
    with ExitStack() as stack:
        if previous:
            stack.callback(remove_labelled, docker_client(previous), SESSION_LABEL, session)
        else:
            service = stack.enter_context(PodmanService(socket_owner=uid, log_path=log_path,
                                                        cleanup_label=f"{SESSION_LABEL}={session}"))
            os.environ["DOCKER_HOST"] = service.url
            stack.callback(os.environ.pop, "DOCKER_HOST", None)
        for path in [*writable, *([pipeline_root] if pipeline_root else [])]:
            grant(path, uid)
        stack.enter_context(podman_not_found_as_404())
        yield step_container_args(session=session, writable=writable, environment=environment)


@contextmanager
def podman_not_found_as_404() -> Iterator[None]:
    """Make the Docker SDK see podman's "no such container" answers as NotFound, as Docker's are.

    Why: podman 4.3's Docker API answers 500 ("... does not exist in database: no such container")
    where Docker answers 404 for a container removed meanwhile. KFP's DockerRunner runs its steps
    with auto_remove and catches NotFound when a quick step is gone before it asks for the logs; the
    500 instead fails the run. Patched for the block only, in this process.
    """
    import docker
    import docker.api.client as api

    original = api.APIClient._raise_for_status

    def raise_for_status(self: Any, response: Any) -> None:
        try:
            original(self, response)
        except docker.errors.APIError as exc:
            text = str(exc.explanation or "")
            if exc.status_code == 500 and ("no such container" in text or "does not exist in database" in text):
                raise docker.errors.NotFound(str(exc), response=response, explanation=exc.explanation) from exc
            raise

    api.APIClient._raise_for_status = raise_for_status
    try:
        yield
    finally:
        api.APIClient._raise_for_status = original
