"""The PyTorchJob environment contract: one source of truth for the renderer and the local emulator.

Why a module of its own: the rendered PyTorchJob and `gbcosface job local` must start the trainer
with the same command and the same environment, or the demo would test something the cluster
never runs. The renderer cannot set the operator-injected variables (the Kubeflow Training
Operator adds them to each pod it creates), so they are written down here, once, as code:
`operator_env` reproduces what the operator v1.9 (`pkg/controller.v1/pytorch/envvar.go`,
`master.go`) injects for a non-elastic job with one Master, and the emulator uses it verbatim
with the master's service name replaced by the loopback address.

What the operator injects into every container of every replica (non-elastic job with a Master):

| variable            | value                                                            |
| ------------------- | ---------------------------------------------------------------- |
| PYTHONUNBUFFERED    | "1" (unbuffered stdio, so logs reach `kubectl logs` at once)      |
| MASTER_ADDR         | "<job>-master-0" (the master's headless Service)                  |
| PET_MASTER_ADDR     | same as MASTER_ADDR                                               |
| MASTER_PORT         | the Master's container port named "pytorchjob-port" (23456)       |
| PET_MASTER_PORT     | same as MASTER_PORT                                               |
| WORLD_SIZE          | (number of pods) * nprocPerNode                                   |
| RANK                | the pod's node rank: Master 0, Worker i -> i + 1                  |
| PET_NPROC_PER_NODE  | nprocPerNode                                                      |
| PET_NODE_RANK       | same as RANK                                                      |
| PET_NNODES          | number of pods (elastic jobs get "min:max" instead)              |

`torchrun` reads the PET_* variables as defaults for its flags (--nnodes, --nproc-per-node,
--node-rank, --master-addr, --master-port), so each worker process it spawns gets the correct
global RANK, LOCAL_RANK and WORLD_SIZE; the pod-level RANK/WORLD_SIZE above are node-level and
are overwritten by torchrun for its children.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence

#: The container the operator looks for (its webhook rejects a job without it).
CONTAINER_NAME = "pytorch"
#: The container port the operator reads MASTER_PORT from (and adds with 23456 when absent).
MASTER_PORT_NAME = "pytorchjob-port"
DEFAULT_MASTER_PORT = 23456

MASTER = "Master"
WORKER = "Worker"

#: Where the job's ConfigMap (key `config.yaml`) is mounted in every pod.
CONFIG_DIR = "/etc/gbcosface"
CONFIG_KEY = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"

#: The operator's value: kubeflow/trainer@v1.9.4:pkg/controller.v1/pytorch/envvar.go sets "1".
PYTHONUNBUFFERED_VALUE = "1"

#: Names of the variables the operator injects, in the order it appends them.
OPERATOR_ENV_NAMES = (
    "PYTHONUNBUFFERED",
    "MASTER_PORT",
    "PET_MASTER_PORT",
    "MASTER_ADDR",
    "PET_MASTER_ADDR",
    "WORLD_SIZE",
    "RANK",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_NNODES",
)

#: Set on every pod by the renderer (and by the emulator) so that metrics and logs name the job.
JOB_NAME_ENV = "GBCOSFACE_JOB_NAME"


def replica_names(job_name: str, nnodes: int) -> list[str]:
    """Pod names the operator gives the replicas, in node-rank order."""
    return [f"{job_name}-master-0"] + [f"{job_name}-worker-{i}" for i in range(nnodes - 1)]


def node_rank(replica_type: str, index: int) -> int:
    """The operator's rank rule: Master index i -> i, Worker index i -> i + 1."""
    if replica_type == MASTER:
        return index
    if replica_type == WORKER:
        return index + 1
    raise ValueError(f"unknown replica type {replica_type!r} (expected {MASTER} or {WORKER})")


def operator_env(
    job_name: str,
    replica_type: str,
    index: int,
    nnodes: int,
    nproc_per_node: int,
    master_addr: str | None = None,
    master_port: int = DEFAULT_MASTER_PORT,
) -> dict[str, str]:
    """The variables the training operator injects into one replica of a non-elastic job.

    `master_addr` defaults to the master's Service name, as in a cluster; the emulator passes
    the loopback address. `nnodes` counts all pods (Master + Workers).
    """
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nnodes and nproc_per_node must be >= 1, got {nnodes} and {nproc_per_node}")
    rank = node_rank(replica_type, index)
    if not 0 <= rank < nnodes:
        raise ValueError(f"{replica_type} index {index} is outside a job of {nnodes} pods")
    addr = master_addr if master_addr is not None else f"{job_name}-master-0"
    return {
        "PYTHONUNBUFFERED": PYTHONUNBUFFERED_VALUE,
        "MASTER_PORT": str(master_port),
        "PET_MASTER_PORT": str(master_port),
        "MASTER_ADDR": addr,
        "PET_MASTER_ADDR": addr,
        "WORLD_SIZE": str(nnodes * nproc_per_node),
        "RANK": str(rank),
        "PET_NPROC_PER_NODE": str(nproc_per_node),
        "PET_NODE_RANK": str(rank),
        "PET_NNODES": str(nnodes),
    }


#: torchrun's wait for its workers after a SIGTERM before it SIGKILLs them (its default is 30 s).
SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"


def shutdown_timeout_s(termination_grace_s: int) -> int:
    """How long torchrun should let the workers finish a preemption checkpoint: the pod's grace
    period less 15 s for torchrun's own exit, at least torchrun's default 30 s.

    Why: on SIGTERM the trainer finishes its step and writes a checkpoint (docs/training.md,
    "Preemption"; ~60 s to S3 for iresnet100 + 86k classes), but torchrun SIGKILLs its workers 30 s
    after forwarding the signal unless told otherwise, which would lose that checkpoint.
    """
    return max(30, int(termination_grace_s) - 15)


def pod_env(job_name: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Plain-value variables the renderer puts on the container (and the emulator on each replica).

    Secrets (S3 credentials) are not here: they come from a Secret in a cluster and from the
    caller's own environment locally.
    """
    env = {JOB_NAME_ENV: job_name}
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    return env


def trainer_args(config_path: str = CONFIG_PATH, overrides: Sequence[str] = ()) -> list[str]:
    """Arguments to torchrun: `-m gbcosface train --config FILE [key=value ...]`.

    Why `-m`: torchrun's `-m/--module` runs the launch target like `python -m`, so the
    installed package's `__main__` starts in each worker without a script path inside the image.
    """
    return ["-m", "gbcosface", "train", "--config", config_path, *overrides]


def container_command(
    config_path: str = CONFIG_PATH,
    overrides: Sequence[str] = (),
    torchrun_flags: Sequence[str] = (),
) -> list[str]:
    """The `pytorch` container's command. torchrun takes its topology from the PET_* variables;
    `torchrun_flags` is for what the operator does not inject (elastic jobs' --nproc-per-node)."""
    return ["torchrun", *torchrun_flags, *trainer_args(config_path, overrides)]


def local_argv(command: Sequence[str]) -> list[str]:
    """Map a container command to this machine: `torchrun` and `python` become the current venv's.

    Why `python -m torch.distributed.run`: it is what the `torchrun` console script runs, and it
    uses this interpreter even where the venv's bin directory is not on PATH.
    """
    argv = list(command)
    if not argv:
        raise ValueError("empty command")
    head = argv[0]
    if head == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    if head in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    return argv


def split_command(text: str) -> list[str]:
    """A shell-like command string as argv (for `--command`)."""
    return shlex.split(text)
