"""MobileFaceNet in the official release's layout: strict load, identical outputs, legacy keys, init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gbcosface.models import get_backbone, load_backbone, save_backbone

# The release's network, written out from its description: (name, cin, cout, hidden, stride, residual).
# conv_23/conv_34/conv_45 are the width/stride transitions; conv_3/4/5.model.K the residual groups.
BLOCKS = (
    [("conv_23", 64, 64, 128, 2, False)]
    + [(f"conv_3.model.{k}", 64, 64, 128, 1, True) for k in range(4)]
    + [("conv_34", 64, 128, 256, 2, False)]
    + [(f"conv_4.model.{k}", 128, 128, 256, 1, True) for k in range(6)]
    + [("conv_45", 128, 128, 512, 2, False)]
    + [(f"conv_5.model.{k}", 128, 128, 256, 1, True) for k in range(2)]
)


def official_layout(emb: int = 512) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}

    def bn(name, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[f"{name}.{k}"] = (c,)
        out[f"{name}.num_batches_tracked"] = ()

    def unit(name, cout, cin_per_group, k, act=True):
        out[f"{name}.conv.weight"] = (cout, cin_per_group, k, k)
        bn(f"{name}.bn", cout)
        if act:
            out[f"{name}.prelu.weight"] = (cout,)

    unit("conv1", 64, 3, 3)
    unit("conv2_dw", 64, 1, 3)
    for name, cin, cout, hidden, _, _ in BLOCKS:
        unit(f"{name}.conv", hidden, cin, 1)
        unit(f"{name}.conv_dw", hidden, 1, 3)
        unit(f"{name}.project", cout, hidden, 1, act=False)
    unit("conv_6_sep", 512, 128, 1)
    unit("conv_6_dw", 512, 1, 7, act=False)
    out["linear.weight"] = (emb, 512)
    bn("bn", emb)
    return out


def random_official_state(emb: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_layout(emb).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(3)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(".conv.weight") or key == "linear.weight":
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.1 + (1.0 if key.endswith("bn.weight") else 0.0)
    return state


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The release's forward pass in torch.nn.functional, from the state dict alone (eval mode)."""

    def unit(x, name, stride=1, groups=1, padding=0, act=True):
        x = F.conv2d(x, state[f"{name}.conv.weight"], stride=stride, padding=padding, groups=groups)
        x = F.batch_norm(x, state[f"{name}.bn.running_mean"], state[f"{name}.bn.running_var"],
                         state[f"{name}.bn.weight"], state[f"{name}.bn.bias"], training=False, eps=1e-5)
        return F.prelu(x, state[f"{name}.prelu.weight"]) if act else x

    x = unit(x, "conv1", stride=2, padding=1)
    x = unit(x, "conv2_dw", padding=1, groups=64)
    for name, _, _, hidden, stride, residual in BLOCKS:
        y = unit(x, f"{name}.conv")
        y = unit(y, f"{name}.conv_dw", stride=stride, padding=1, groups=hidden)
        y = unit(y, f"{name}.project", act=False)
        x = x + y if residual else y
    x = unit(x, "conv_6_sep")
    x = unit(x, "conv_6_dw", groups=512, act=False).flatten(1)
    x = F.linear(x, state["linear.weight"])
    return F.batch_norm(x, state["bn.running_mean"], state["bn.running_var"], state["bn.weight"], state["bn.bias"],
                        training=False, eps=1e-5)


def test_state_dict_is_the_release_layout_in_order():
    model = get_backbone("mobilefacenet", embedding_size=512)
    state = model.state_dict()
    layout = official_layout(512)
    assert list(state) == list(layout)
    assert {k: tuple(v.shape) for k, v in state.items()} == layout


def test_release_checkpoint_loads_strictly_with_identical_outputs(tmp_path):
    state = random_official_state(128)
    model = get_backbone("mobilefacenet", embedding_size=128).eval()
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = model(x), reference_forward(state, x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # and through load_backbone, as a released .pth without sidecar plus a backbone name
    path = tmp_path / "mobilefacenet.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    loaded = load_backbone(path, name="mobilefacenet", embedding_size=128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours, rtol=0, atol=0)


def test_earlier_project_layout_still_loads_strictly(tmp_path):
    """Exports made before the rename (conv1.0.weight, blocks.N.layers.K.J, gdc, fc, features)."""
    from gbcosface.models.mobilefacenet import Bottleneck

    model = get_backbone("mobilefacenet", embedding_size=16, width=8).eval()
    blocks = [name for name, m in model.named_modules() if isinstance(m, Bottleneck)]
    part_index = {"conv": 0, "conv_dw": 1, "project": 2}
    unit_index = {"conv": 0, "bn": 1, "prelu": 2}
    top = {"conv1": "conv1", "conv2_dw": "conv2_dw", "conv_6_sep": "conv_sep", "conv_6_dw": "gdc"}
    legacy = {}
    for key, value in model.state_dict().items():
        block = next((b for b in blocks if key.startswith(b + ".")), None)
        if block is not None:
            part, unit, tail = key[len(block) + 1:].split(".", 2)
            old = f"blocks.{blocks.index(block)}.layers.{part_index[part]}.{unit_index[unit]}.{tail}"
        elif key.split(".")[0] in top:
            head, unit, tail = key.split(".", 2)
            old = f"{top[head]}.{unit_index[unit]}.{tail}"
        elif key.startswith("linear."):
            old = "fc." + key[len("linear."):]
        else:
            old = "features." + key[len("bn."):]
        legacy[old] = value
    assert {"conv1.0.weight", "gdc.0.weight", "blocks.0.layers.0.0.weight", "fc.weight"} <= set(legacy)
    path = save_backbone(model, tmp_path / "mfn.pt")
    torch.save(legacy, path)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(load_backbone(path)(x), model(x), rtol=0, atol=0)


def test_init_is_pytorch_default_and_embedding_scale_is_trained_as_in_the_release():
    model = get_backbone("mobilefacenet", embedding_size=64)
    for name, p in model.named_parameters():
        if name.endswith("conv.weight"):
            bound = 1.0 / math.sqrt(math.prod(p.shape[1:]))  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), ..)
            assert p.abs().max().item() <= bound + 1e-7, name
    assert model.bn.weight.requires_grad
    assert not get_backbone("mobilefacenet", train_embedding_scale=False).bn.weight.requires_grad


def test_transition_repeat_counts_must_stay_one():
    with pytest.raises(ValueError, match="2nd and 4th"):
        get_backbone("mobilefacenet", layers=[5, 2, 6, 1, 2])
    small = get_backbone("mobilefacenet", layers=[1, 1, 1, 1, 1], width=8)
    assert small.group_names == ["conv_23", "conv_34", "conv_4", "conv_45", "conv_5"]
