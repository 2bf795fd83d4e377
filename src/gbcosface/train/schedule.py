"""Learning-rate schedules, applied at every iteration as a function of progress in epochs.

Why progress in epochs (epoch + batches done / batches per epoch) rather than a bare step count:
the paper's schedule is defined in epochs ("x0.1 at the start of 0-indexed epochs 4, 9, 14, 19"),
and a run resumed with a different world size has a different number of steps per epoch. Defined on
progress, the learning rate at any point of the data stream is the same whatever the world size. For a
fixed world this is exactly a per-iteration LambdaLR with lambda(step) = factor(step / steps_per_epoch).

Schedules (`schedule.type`):
- `step`: gamma ** (number of milestones <= current epoch); the change happens on the first
  iteration of a milestone epoch, not at the end of the previous one.
- `warmup_poly`: linear warmup over `warmup_epochs`, then (1 - t) ** power, t in [0, 1] over the
  remaining epochs.
- `warmup_cosine`: linear warmup, then 0.5 * (1 + cos(pi * t)).
`warmup_epochs > 0` also adds the linear warmup in front of `step`. `max_steps` only stops training
early; it does not compress the schedule (so a short run trains with the same lr as the long one).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gbcosface.config import OptimConfig, ScheduleConfig

REFERENCE_BATCH = 512  # lr_scale_with_batch: lr * global_batch / 512 (the paper's 8 x 64)


def lr_factor(cfg: ScheduleConfig, epoch: int, batch: float, batches_per_epoch: float) -> float:
    """Multiplier of the base lr for iteration `batch` (0-indexed) of `epoch` (0-indexed).

    `batch` and `batches_per_epoch` may be fractional: after a resume at another world size the
    position within the epoch is (global samples done) / (global batch), not a whole iteration count.
    """
    if batches_per_epoch <= 0:
        raise ValueError("batches_per_epoch must be positive")
    done = epoch * batches_per_epoch + batch  # iterations completed before this one
    warm_iters = cfg.warmup_epochs * batches_per_epoch
    warm = 1.0
    if warm_iters > 0 and done < warm_iters:
        warm = (done + 1) / warm_iters
    progress = epoch + batch / batches_per_epoch
    if cfg.type == "step":
        return warm * cfg.gamma ** sum(1 for m in cfg.milestones if m <= epoch)
    span = cfg.epochs - cfg.warmup_epochs
    t = 1.0 if span <= 0 else min(1.0, max(0.0, (progress - cfg.warmup_epochs) / span))
    if cfg.type == "warmup_poly":
        return warm * (1.0 - t) ** cfg.power
    if cfg.type == "warmup_cosine":
        return warm * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule.type {cfg.type!r}")


def base_lrs(optim: OptimConfig, global_batch: int) -> tuple[float, float]:
    """(backbone lr, head lr) after the optional linear scaling with the global batch."""
    scale = global_batch / REFERENCE_BATCH if optim.lr_scale_with_batch else 1.0
    head = optim.head_lr if optim.head_lr is not None else optim.lr
    return optim.lr * scale, head * scale


class EpochLR:
    """Sets each param group's lr to base_lr x lr_factor before every optimiser step.

    Each group carries its own base lr in `group["base_lr"]` (backbone and head may differ).
    The state is tiny and plain (so it loads with weights_only=True): the last factor and lrs, kept
    for logging and for checking a resume.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, batches_per_epoch: float) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.batches_per_epoch = batches_per_epoch
        self.last_factor = 1.0
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])

    def apply(self, epoch: int, batch: float) -> float:
        """Set the lr for iteration (epoch, batch); returns the backbone group's lr."""
        self.last_factor = lr_factor(self.cfg, epoch, batch, self.batches_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * self.last_factor
        return self.optimizer.param_groups[0]["lr"]

    def last_lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_factor": float(self.last_factor), "last_lrs": self.last_lrs()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_factor = float(state["last_factor"])
