"""Periodic verification on .bin sets (LFW, CFP-FP, AgeDB-30, ...) during training, on rank 0.

Why rank 0 only: the sets are small (12-14k images each) and the result is for logging and for
keeping the best backbone so far; the other ranks wait at a barrier. The score that decides "best"
is the mean accuracy over the configured targets, so adding a set does not favour any single one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class ValResult:
    step: int
    per_target: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        accs = [r["accuracy"] for r in self.per_target.values()]
        return sum(accs) / len(accs) if accs else float("nan")


class Validator:
    """Loads the .bin sets once; `run(backbone, step)` evaluates them in eval mode."""

    def __init__(self, val_dir: str, targets: list[str], image_size: int, device: torch.device,
                 batch_size: int = 128, flip: bool = True) -> None:
        from gbcosface.data.bin_sets import load_bin

        self.device = device
        self.batch_size = batch_size
        self.flip = flip
        self.sets: dict[str, Any] = {}
        for target in targets:
            path = Path(val_dir) / f"{target}.bin"
            if not path.is_file():
                raise FileNotFoundError(f"validation set {path} not found (data.val_dir / data.val_targets)")
            self.sets[target] = load_bin(path, image_size=image_size)
        log.info("validation sets: %s", ", ".join(f"{t} ({len(s.issame)} pairs)" for t, s in self.sets.items()))

    def run(self, backbone: nn.Module, step: int) -> ValResult:
        from gbcosface.eval.verification import evaluate_bin

        was_training = backbone.training
        backbone.eval()
        result = ValResult(step)
        try:
            with torch.no_grad():
                for target, binset in self.sets.items():
                    res = evaluate_bin(backbone, binset, batch_size=self.batch_size, device=self.device, flip=self.flip)
                    result.per_target[target] = {k: float(v) for k, v in res.items()}
        finally:
            backbone.train(was_training)
        return result
