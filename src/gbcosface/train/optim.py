"""SGD with two parameter groups: backbone and head.

Why two groups: the head (one weight row per identity, 85,742 x 512 for MS1MV2) may want its own lr or
weight decay (`optim.head_lr`, `optim.head_weight_decay`), as insightface's partial-FC recipes do.
Weight decay: the official GB-CosFace recipe applies weight decay 5e-4 to every parameter, BatchNorm
and PReLU included, and that is the default here too (so the paper's numbers are reproduced); we do not
silently exempt norms and biases.
"""

from __future__ import annotations

import torch
from torch import nn

from gbcosface.config import OptimConfig


def build_optimizer(
    backbone: nn.Module, head: nn.Module, cfg: OptimConfig, backbone_lr: float, head_lr: float
) -> torch.optim.Optimizer:
    """SGD over [backbone group, head group]; each group remembers its `base_lr` for the schedule."""
    if cfg.name != "sgd":
        raise ValueError(f"optim.name {cfg.name!r} is not supported (only sgd, the paper's optimiser)")
    head_wd = cfg.head_weight_decay if cfg.head_weight_decay is not None else cfg.weight_decay
    groups = [
        {"params": [p for p in backbone.parameters() if p.requires_grad], "lr": backbone_lr,
         "weight_decay": cfg.weight_decay, "base_lr": backbone_lr, "name": "backbone"},
        {"params": [p for p in head.parameters() if p.requires_grad], "lr": head_lr,
         "weight_decay": head_wd, "base_lr": head_lr, "name": "head"},
    ]
    return torch.optim.SGD(groups, lr=backbone_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def apply_config(optimizer: torch.optim.Optimizer, cfg: OptimConfig, backbone_lr: float, head_lr: float) -> None:
    """Make the configuration authoritative after loading a checkpoint's optimizer state.

    Why: `load_state_dict` also restores the saved hyper-parameters; a resume at another world size
    (lr_scale_with_batch) or with an edited config must use the current values, and only the
    momentum buffers come from the checkpoint.
    """
    head_wd = cfg.head_weight_decay if cfg.head_weight_decay is not None else cfg.weight_decay
    for group, lr, wd in zip(optimizer.param_groups, (backbone_lr, head_lr), (cfg.weight_decay, head_wd), strict=True):
        group["base_lr"] = lr
        group["weight_decay"] = wd
        group["momentum"] = cfg.momentum
