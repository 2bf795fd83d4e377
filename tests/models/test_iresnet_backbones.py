"""Backbones: official key layout, parameter counts (independently counted), shapes, knobs."""

from __future__ import annotations

import pytest
import torch

from gbcosface.config import load_config
from gbcosface.models import BACKBONE_NAMES, backbone_from_config, get_backbone

BLOCKS = {
    "iresnet18": [2, 2, 2, 2],
    "iresnet34": [3, 4, 6, 3],
    "iresnet50": [3, 4, 14, 3],
    "iresnet100": [3, 13, 30, 3],
    "iresnet200": [6, 26, 60, 6],
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_full_size_layout_and_parameter_count(name, official_layout, learnable_count):
    model = get_backbone(name)
    layout = official_layout(BLOCKS[name])
    state = model.state_dict()
    assert list(state) == list(layout)  # same names, same order as the official modules
    assert {k: tuple(v.shape) for k, v in state.items()} == layout
    count = sum(p.numel() for p in model.parameters())
    assert count == learnable_count(layout)
    print(f"{name}: {count:,} parameters")


def test_published_parameter_counts(official_layout, learnable_count):
    """The published figures: iresnet100 ~65.2M, iresnet50 ~43.6M (512-d embedding)."""
    assert round(learnable_count(official_layout(BLOCKS["iresnet100"])) / 1e6, 1) == 65.2
    assert round(learnable_count(official_layout(BLOCKS["iresnet50"])) / 1e6, 1) == 43.6
    assert round(sum(p.numel() for p in get_backbone("iresnet100").parameters()) / 1e6, 1) == 65.2


def test_features_bn_weight_is_fixed_at_one():
    model = get_backbone("iresnet18", width=8)
    assert not model.features.weight.requires_grad
    assert torch.equal(model.features.weight, torch.ones(512))
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "features.weight")


@pytest.mark.parametrize("name", list(BACKBONE_NAMES))
def test_forward_shapes_at_tiny_width(name):
    model = get_backbone(name, embedding_size=32, width=4 if name != "mobilefacenet" else 8).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_iresnet18_full_width_forward_and_backward():
    model = get_backbone("iresnet18")
    out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 512)
    out.square().mean().backward()
    assert model.conv1.weight.grad is not None and model.features.weight.grad is None


def test_stem_stride_two_and_custom_layers():
    model = get_backbone("iresnet18", embedding_size=128, width=16, layers=[1, 1, 1, 1], stem_stride=2)
    assert model.fc.in_features == 8 * 16 * 4 * 4  # 112 -> 56 -> 28 -> 14 -> 7 -> 4
    assert [len(getattr(model, f"layer{k}")) for k in range(1, 5)] == [1, 1, 1, 1]
    assert model.conv1.stride == (2, 2)
    assert get_backbone("iresnet50", width=4).fc.in_features == 8 * 4 * 7 * 7
    out = model.eval()(torch.randn(3, 3, 112, 112))
    assert out.shape == (3, 128)


def test_channels_last_gives_the_same_embedding():
    model = get_backbone("iresnet18", width=8, layers=[1, 1, 1, 1]).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_fp16_flag_autocasts_the_trunk_only():
    model = get_backbone("iresnet18", width=8, layers=[1, 1, 1, 1], fp16=True).eval()
    seen = {}
    model.layer1.register_forward_hook(lambda m, i, o: seen.update(trunk=o.dtype))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert seen["trunk"] == torch.bfloat16  # the CPU autocast dtype (float16 on CUDA)
    assert out.dtype == torch.float32  # fc and features run in float32, as insightface does


def test_fp16_off_leaves_outer_autocast_alone():
    model = get_backbone("iresnet18", width=8, layers=[1, 1, 1, 1]).eval()
    seen = {}
    model.layer1.register_forward_hook(lambda m, i, o: seen.update(trunk=o.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(1, 3, 112, 112))
    assert seen["trunk"] == torch.bfloat16


def test_mobilefacenet_size_and_knobs():
    paper = get_backbone("mobilefacenet", embedding_size=128)
    count = sum(p.numel() for p in paper.parameters())
    print(f"mobilefacenet (128-d): {count:,} parameters")
    assert 0.95e6 < count < 1.05e6  # the paper: 0.99M
    assert paper.spatial_size == 7 and paper.conv_6_dw.conv.kernel_size == (7, 7)
    with pytest.raises(ValueError, match="stem_stride"):
        get_backbone("mobilefacenet", stem_stride=2)
    with pytest.raises(ValueError, match="5 positive"):
        get_backbone("mobilefacenet", layers=[1, 1, 1, 1])


def test_bad_names_and_knobs_are_clear_errors():
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'"):
        get_backbone("resnet50")
    with pytest.raises(ValueError, match="4 positive block counts"):
        get_backbone("iresnet18", layers=[1, 1, 1])
    with pytest.raises(ValueError, match="stem_stride"):
        get_backbone("iresnet18", stem_stride=3)


def test_backbone_from_the_demo_config():
    cfg = load_config("demo")
    model = backbone_from_config(cfg.model)
    assert model.arch["name"] == cfg.model.name
    assert model.fc.out_features == cfg.model.embedding_size
    assert model.conv1.out_channels == cfg.model.width
