"""Mixed precision stops at the embedding: the final FC + BatchNorm1d compute in float32 under autocast."""

from __future__ import annotations

import pytest
import torch

from gbcosface.models import get_backbone, load_backbone, save_backbone


def tiny(name):
    if name == "mobilefacenet":
        return get_backbone(name, embedding_size=16, width=8, layers=[1, 1, 1, 1, 1])
    return get_backbone(name, embedding_size=16, width=8, layers=[1, 1, 1, 1], stem_stride=2)


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_embedding_leaves_the_backbone_in_float32_under_autocast(name, dtype):
    model = tiny(name).eval()
    fc, bn = (model.fc, model.features) if name != "mobilefacenet" else (model.linear, model.bn)
    seen = {}
    fc.register_forward_hook(lambda m, i, o: seen.update(fc_in=i[0].dtype, fc_out=o.dtype))
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = model(x)
    assert out.dtype == torch.float32
    assert seen["fc_in"] == torch.float32 and seen["fc_out"] == torch.float32
    # the FC + BN on the trunk's (low-precision) output, recomputed here in float32
    trunk = {}
    hook = model.dropout.register_forward_hook(lambda m, i, o: trunk.update(x=o))
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        model(x)
    hook.remove()
    assert trunk["x"].dtype == dtype  # the trunk did run in low precision
    with torch.no_grad():
        expected = bn(fc(trunk["x"].float()))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_training_step_under_bf16_autocast_gives_float32_embedding_gradients():
    model = tiny("iresnet18").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(4, 3, 112, 112))
    assert out.dtype == torch.float32
    out.square().mean().backward()
    assert model.fc.weight.grad.dtype == torch.float32 and model.conv1.weight.grad is not None


def test_embedding_scale_fixed_by_default_and_trainable_on_request():
    fixed = get_backbone("iresnet18", width=8)
    trained = get_backbone("iresnet18", width=8, train_embedding_scale=True)
    assert not fixed.features.weight.requires_grad and trained.features.weight.requires_grad
    out = trained(torch.randn(2, 3, 112, 112))
    out.square().mean().backward()
    assert trained.features.weight.grad is not None
    assert trained.arch["train_embedding_scale"] is True


def test_sidecar_fp16_does_not_change_evaluation_precision(tmp_path):
    """A backbone saved with fp16: true is evaluated in float32 unless fp16 is asked for."""
    model = get_backbone("iresnet18", embedding_size=16, width=8, layers=[1, 1, 1, 1], stem_stride=2, fp16=True)
    path = save_backbone(model, tmp_path / "backbone.pt")
    assert '"fp16": true' in path.with_suffix(".json").read_text()
    plain = load_backbone(path)
    assert plain.fp16 is False
    asked = load_backbone(path, fp16=True)
    assert asked.fp16 is True
    x = torch.randn(2, 3, 112, 112)
    reference = get_backbone("iresnet18", embedding_size=16, width=8, layers=[1, 1, 1, 1], stem_stride=2).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), reference(x), rtol=0, atol=0)
        assert (asked(x) - reference(x)).abs().max().item() > 0  # the trunk really ran in bf16 there


def test_fixed_embedding_scale_pins_the_batch_mean_of_the_squared_norm():
    """With gamma = 1 a training-mode BatchNorm1d output has mean |x|^2 = D var/(var + eps) + |beta|^2,
    whatever the trunk does: MagFace-style norms cannot spread from sqrt(D) unless beta grows. A
    trained gamma lifts that pin (why train_embedding_scale resolves to True for magnitude-aware losses)."""
    torch.manual_seed(0)
    kw = dict(embedding_size=64, width=8, layers=[1, 1, 1, 1], stem_stride=2)
    fixed = get_backbone("iresnet18", **kw).train()
    with torch.no_grad():
        fixed.features.bias.copy_(torch.linspace(-0.5, 0.5, 64))
        out = fixed(torch.randn(16, 3, 112, 112))
    beta_sq = fixed.features.bias.square().sum().item()
    assert out.square().sum(dim=1).mean().item() == pytest.approx(64 + beta_sq, rel=1e-3)
    trained = get_backbone("iresnet18", train_embedding_scale=True, **kw).train()
    with torch.no_grad():
        trained.features.weight.fill_(3.0)
        out = trained(torch.randn(16, 3, 112, 112))
    assert out.square().sum(dim=1).mean().item() == pytest.approx(9 * 64, rel=1e-3)
