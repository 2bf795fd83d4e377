"""What a checkpoint holds, and how it is put back: the training state as plain tensors and dicts.

Why a separate module: the trainer decides *when* to checkpoint, `checkpoint.py` decides *how* bytes
reach storage, and this module decides *what* must be captured so that a resumed run continues
bitwise where an uninterrupted one would be:
- backbone, head and loss module states (the loss's cos_v buffer and its `initialised` flag); the
  head always whole (a `NormLinearHead` state dict), also when the classes are sharded;
- optimizer state (momentum buffers, the head's whole) and param-group hyper-parameters;
- the lr schedule's last factor (the lr itself is recomputed from the data position);
- the fp16 grad scaler's scale and growth tracker;
- the data position: epoch and global samples consumed in it (not the sampler's own iteration
  state, which runs ahead of training because the DataLoader prefetches);
- counters (step, samples seen, non-finite steps skipped), the best validation score so far;
- the RNG states of every rank (`rng.pt`, gathered to rank 0 by the trainer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

FORMAT_VERSION = 1


@dataclass
class Progress:
    """Where training is; saved in every checkpoint."""

    step: int = 0  # optimizer steps done (skipped non-finite steps included)
    epoch: int = 0  # current epoch (0-indexed)
    samples_in_epoch: int = 0  # global samples consumed in `epoch`
    samples_seen: int = 0  # global samples consumed since the start of training
    bad_steps: int = 0  # non-finite steps skipped so far
    best_score: float = -math.inf  # best mean validation accuracy
    best_step: int = -1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def collect(
    *,
    model_state: dict[str, Any],
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    progress: Progress,
    world_size: int,
    global_batch: int,
    config_hash: str,
) -> dict[str, Any]:
    """The checkpoint dict; `model_state` is the classifier's full state (backbone, head, loss, optimizer)."""
    return {
        "format": FORMAT_VERSION,
        "progress": progress.to_dict(),
        "world_size": int(world_size),
        "global_batch": int(global_batch),
        "config_hash": config_hash,
        "backbone": model_state["backbone"],
        "head": model_state["head"],
        "loss": model_state["loss"],
        "optimizer": model_state["optimizer"],
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
    }


def restore(
    state: dict[str, Any],
    *,
    classifier: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    where: str,
) -> Progress:
    """Load every component strictly (the classifier reshards its head); returns the saved progress."""
    fmt = state.get("format")
    if fmt != FORMAT_VERSION:
        raise ValueError(f"{where}: checkpoint format {fmt!r}, expected {FORMAT_VERSION}")
    classifier.load_full_state(state, optimizer, where)
    scheduler.load_state_dict(state["scheduler"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return Progress.from_dict(state["progress"])


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _misfits(part: str, saved: Any, model: dict[str, tuple[int, ...] | None]) -> list[str]:
    """Tensors of `part` whose saved shape differs from the model's, or that only one side has."""
    if not isinstance(saved, dict):
        return [f"{part} (saved as {type(saved).__name__}, not a state dict)"]
    out = []
    for key, shape in model.items():
        if key not in saved:
            out.append(f"{part}.{key} missing from the checkpoint")
        elif _shape(saved[key]) != shape:
            out.append(f"{part}.{key} saved {list(_shape(saved[key]) or ())} vs model {list(shape or ())}")
    out += [f"{part}.{key} not in the model" for key in saved if key not in model]
    return out


def check_fits(state: dict[str, Any], *, classifier: Any, config_hash: str, where: str) -> None:
    """Refuse, in one line, a checkpoint whose tensors do not fit the current model, before any load.

    Why here and not in load_state_dict's error: that error is a traceback of every mismatched tensor
    (120 lines for another backbone width) and says neither which checkpoint nor why. The usual cause
    is a config changed under the same run.output, so the message gives both config hashes. The head
    is compared as the whole (D, C) matrix the checkpoint always holds, also when the classes are sharded.
    """
    from gbcosface.train.checkpoint import CheckpointConfigError  # state.py stays free of storage imports

    head = classifier.head
    problems = _misfits("backbone", state.get("backbone"),
                        {k: _shape(v) for k, v in classifier.backbone.state_dict().items()})
    problems += _misfits("head", state.get("head"), {"weight": (head.embedding_size, head.num_classes)})
    problems += _misfits("loss", state.get("loss"), {k: _shape(v) for k, v in classifier.loss.state_dict().items()})
    if not problems:
        return
    saved_hash = str(state.get("config_hash"))
    if saved_hash != config_hash:
        why = f"the config changed: the checkpoint was written under config {saved_hash}, the current config is {config_hash}"
    else:
        why = f"the config is unchanged ({config_hash}), so the data's class count or the model code changed"
    shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
    raise CheckpointConfigError(
        f"{where}: does not fit the current model, {len(problems)} tensor(s) differ ({shown}); {why}; "
        "resume with the checkpoint's config, or give this config a new run.output"
    )
