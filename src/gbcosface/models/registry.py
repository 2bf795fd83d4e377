"""Backbones by name: the single place that turns a name (+ knobs) into a module.

Why a recorded `arch` dict: the exported backbone must be rebuildable from a small JSON sidecar,
so every module built here remembers the exact `get_backbone` kwargs it came from (`model.arch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .iresnet import IRESNET_LAYERS, IResNet
from .mobilefacenet import MobileFaceNet

BACKBONE_NAMES: tuple[str, ...] = (*IRESNET_LAYERS, "mobilefacenet")


def get_backbone(
    name: str,
    embedding_size: int = 512,
    dropout: float = 0.0,
    width: int | None = None,
    layers: Sequence[int] | None = None,
    stem_stride: int = 1,
    fp16: bool = False,
    train_embedding_scale: bool | None = None,
) -> nn.Module:
    """Build a backbone. Input (B,3,112,112) in [-1,1] RGB; output (B, embedding_size), unnormalised.

    `width`: channels of the first stage (later iresnet stages double; default 64, the published
    size). `layers`: blocks per stage (iresnet: 4 numbers; mobilefacenet: 5 bottleneck repeats).
    `stem_stride=2` (iresnet only) downsamples to 56 px in the stem. `fp16`: autocast the trunk.
    `train_embedding_scale`: train the embedding BatchNorm1d's weight; None = the release's choice
    (iresnet: fixed at 1, mobilefacenet: trained).
    """
    key = name.lower()
    if key not in BACKBONE_NAMES:
        raise ValueError(f"unknown backbone {name!r} (known: {', '.join(BACKBONE_NAMES)})")
    w = 64 if width is None else int(width)
    model: nn.Module
    if key in IRESNET_LAYERS:
        model = IResNet(
            IRESNET_LAYERS[key] if layers is None else layers,
            embedding_size=embedding_size,
            dropout=dropout,
            width=w,
            stem_stride=stem_stride,
            fp16=fp16,
            train_embedding_scale=bool(train_embedding_scale),
        )
    else:
        model = MobileFaceNet(
            embedding_size=embedding_size, dropout=dropout, width=w, layers=layers, stem_stride=stem_stride, fp16=fp16,
            train_embedding_scale=True if train_embedding_scale is None else bool(train_embedding_scale),
        )
    model.arch = {  # type: ignore[assignment]
        "name": key,
        "embedding_size": int(embedding_size),
        "dropout": float(dropout),
        "width": None if width is None else int(width),
        "layers": None if layers is None else [int(n) for n in layers],
        "stem_stride": int(stem_stride),
        "fp16": bool(fp16),
        "train_embedding_scale": None if train_embedding_scale is None else bool(train_embedding_scale),
    }
    return model


def backbone_from_config(model_cfg: Any) -> nn.Module:
    """Build the backbone described by a `gbcosface.config.ModelConfig`."""
    return get_backbone(
        model_cfg.name,
        embedding_size=model_cfg.embedding_size,
        dropout=model_cfg.dropout,
        width=model_cfg.width,
        layers=model_cfg.layers,
        stem_stride=model_cfg.stem_stride,
        fp16=model_cfg.fp16,
        train_embedding_scale=model_cfg.train_embedding_scale,
    )
