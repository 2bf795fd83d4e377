"""Process-group setup from the launcher's environment: one process per device.

Why read the environment (not flags): the same command runs as a bare process, under `torchrun`, and
inside a PyTorchJob pod whose operator injects MASTER_ADDR/PORT, WORLD_SIZE and RANK for `torchrun` to
turn into per-process RANK / LOCAL_RANK / WORLD_SIZE. The official release read only `--local_rank`,
so under torchrun every rank used cuda:0; here every process binds to cuda:LOCAL_RANK.
A bare process (no WORLD_SIZE) is world 1 with no process group at all, so single-process training and
tests do not need a rendezvous.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, and the device it owns."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    backend: str | None  # None when no process group is used (world 1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def node(self) -> str:
        return os.environ.get("NODE_NAME") or socket.gethostname()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def read_env() -> tuple[int, int, int, int]:
    """(rank, local_rank, world_size, local_world_size) from torchrun's variables (defaults: world 1)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world if world > 0 else 1)
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise ValueError(
            f"inconsistent launcher environment: RANK={rank} LOCAL_RANK={local_rank} "
            f"WORLD_SIZE={world} LOCAL_WORLD_SIZE={local_world}"
        )
    return rank, local_rank, world, local_world


def set_cpu_threads(local_world_size: int) -> int:
    """Share the cores between the processes of one node unless OMP_NUM_THREADS says otherwise.

    Why: N processes each using every core oversubscribe the CPU and run slower than one.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        threads = max(1, _env_int("OMP_NUM_THREADS", 1))
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        threads = max(1, cores // max(1, local_world_size))
    torch.set_num_threads(threads)
    return threads


def init_distributed(timeout_minutes: float = 30.0) -> DistEnv:
    """Bind this process to its device and join the process group (when WORLD_SIZE > 1).

    CUDA present: device cuda:LOCAL_RANK and NCCL. Otherwise: CPU and gloo.
    """
    rank, local_rank, world, local_world = read_env()
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
        set_cpu_threads(local_world)
    if world == 1:
        return DistEnv(rank, local_rank, 1, 1, device, None)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(minutes=timeout_minutes)}
        if backend == "nccl":
            kwargs["device_id"] = device  # eager NCCL init bound to our device
        dist.init_process_group(**kwargs)
    log.debug("rank %d/%d local %d on %s (%s)", rank, world, local_rank, device, backend)
    return DistEnv(rank, local_rank, world, local_world, device, backend)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        if env.backend == "nccl":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def all_gather_object(env: DistEnv, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (just `[obj]` without a process group)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(env: DistEnv, obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum_(env: DistEnv, tensor: torch.Tensor) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
