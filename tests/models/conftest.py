"""Fixtures for the backbone tests: an independent listing of the official iresnet layout."""

from __future__ import annotations

import pytest


def _official_layout(blocks, width=64, emb=512, spatial=7) -> dict[str, tuple[int, ...]]:
    """Every state-dict entry of insightface's iresnet, written out from its description.

    Stem conv1/bn1/prelu; stages layer1..4 of width w, 2w, 4w, 8w, each block bn1, conv1 (3x3),
    bn2, prelu, conv2 (3x3), bn3, and in the first block of a stage downsample.0 (1x1 conv) and
    downsample.1 (BN); then bn2, fc (8w*7*7 -> emb, with bias), features (BatchNorm1d).
    """
    out: dict[str, tuple[int, ...]] = {}

    def bn(name, c):
        out[f"{name}.weight"] = (c,)
        out[f"{name}.bias"] = (c,)
        out[f"{name}.running_mean"] = (c,)
        out[f"{name}.running_var"] = (c,)
        out[f"{name}.num_batches_tracked"] = ()

    out["conv1.weight"] = (width, 3, 3, 3)
    bn("bn1", width)
    out["prelu.weight"] = (width,)
    previous = width
    for stage in range(4):
        channels = width * 2**stage
        for index in range(blocks[stage]):
            name = f"layer{stage + 1}.{index}"
            cin = previous if index == 0 else channels
            bn(f"{name}.bn1", cin)
            out[f"{name}.conv1.weight"] = (channels, cin, 3, 3)
            bn(f"{name}.bn2", channels)
            out[f"{name}.prelu.weight"] = (channels,)
            out[f"{name}.conv2.weight"] = (channels, channels, 3, 3)
            bn(f"{name}.bn3", channels)
            if index == 0:
                out[f"{name}.downsample.0.weight"] = (channels, cin, 1, 1)
                bn(f"{name}.downsample.1", channels)
        previous = channels
    bn("bn2", 8 * width)
    out["fc.weight"] = (emb, 8 * width * spatial * spatial)
    out["fc.bias"] = (emb,)
    bn("features", emb)
    return out


def _learnable_count(layout: dict[str, tuple[int, ...]]) -> int:
    total = 0
    for name, shape in layout.items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


@pytest.fixture
def official_layout():
    return _official_layout


@pytest.fixture
def learnable_count():
    return _learnable_count
