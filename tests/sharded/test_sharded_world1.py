"""World size 1, no process group: the sharded head + losses equal gbcosface.heads + gbcosface.losses."""

from __future__ import annotations

import math

import pytest
import torch

from gbcosface.heads import get_head
from gbcosface.losses import get_loss
from gbcosface.sharded import (
    ShardedNormLinearHead,
    get_sharded_head,
    get_sharded_loss,
    logsumexp_over_shards,
)

D, C, B = 6, 9, 10
PARAMS = {
    "gb_cosface": {"update_rate": 0.2},
    "gb_magface": {"update_rate": 0.2, "margin_type": "angular", "l_m": 0.2, "u_m": 0.4},
    "cosface": {"s": 16.0},
    "arcface": {"s": 16.0},
    "magface": {"s": 16.0},
}


def head_type(name: str) -> str:
    return "mag" if name in ("gb_magface", "magface") else "linear"


def batch(step: int, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    labels = torch.randint(0, C, (B,), generator=gen)
    centres = torch.nn.functional.normalize(weight, dim=0)[:, labels].T
    x = centres + 0.4 * torch.randn(B, D, generator=gen, dtype=torch.float64)
    return x * (5.0 + 20.0 * torch.rand(B, 1, generator=gen, dtype=torch.float64)), labels


@pytest.mark.parametrize("name", list(PARAMS))
def test_equal_to_the_replicated_head_and_loss(name):
    plain_head = get_head(head_type(name), D, C).double()
    head = get_sharded_head(head_type(name), D, C).double()
    head.load_full_weight(plain_head.weight.detach())
    plain_loss, loss = get_loss(name, **PARAMS[name]), get_sharded_loss(name, **PARAMS[name])
    assert list(plain_loss.state_dict()) == list(loss.state_dict())
    for step in range(4):
        if step == 3:  # the last step in eval mode: buffers read, not written
            plain_loss.eval()
            loss.eval()
        x, labels = batch(step, plain_head.weight.detach())
        x_ref = x.clone().requires_grad_(True)
        x.requires_grad_(True)
        plain_head.zero_grad()
        head.zero_grad()
        out = plain_head(x_ref)
        cos, norms = out if isinstance(out, tuple) else (out, None)
        ref = plain_loss(cos, labels, norms)
        got = loss(head(x, labels))
        ref["loss"].backward()
        got["loss"].backward()
        assert set(got) == set(ref)
        for key in ref:
            assert got[key].item() == pytest.approx(ref[key].item(), rel=1e-11, abs=1e-13), (step, key)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(head.weight.grad, plain_head.weight.grad, rtol=1e-10, atol=1e-13)
        for key, value in plain_loss.state_dict().items():
            assert torch.equal(loss.state_dict()[key], value), (step, key)


def test_grad_scale_scales_only_the_embedding_gradient():
    head = ShardedNormLinearHead(D, C).double()
    loss = get_sharded_loss("cosface")
    grads = []
    for scale in (1.0, 3.0):
        x, labels = batch(0, head.weight.detach())
        x.requires_grad_(True)
        head.zero_grad()
        loss(head(x, labels, grad_scale=scale))["loss"].backward()
        grads.append((x.grad.clone(), head.weight.grad.clone()))
    torch.testing.assert_close(grads[1][0], 3.0 * grads[0][0], rtol=1e-14, atol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=0, atol=0)


def test_logsumexp_with_masked_entries():
    z = torch.randn(4, 5, dtype=torch.float64) * 30
    z[0, :4] = -math.inf
    torch.testing.assert_close(logsumexp_over_shards(z, 1), torch.logsumexp(z, dim=1), rtol=1e-14, atol=0)


def test_world_size_two_without_a_process_group_is_an_error():
    head = ShardedNormLinearHead(D, C, rank=0, world_size=2)
    with pytest.raises(RuntimeError, match="process group"):
        head(torch.randn(3, D), torch.tensor([0, 1, 2]))


def test_bad_inputs_are_refused():
    head = ShardedNormLinearHead(D, C)
    with pytest.raises(ValueError, match="out of range"):
        head(torch.randn(2, D), torch.tensor([0, C]))
    with pytest.raises(ValueError, match="shape"):
        head(torch.randn(2, D + 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integers"):
        head(torch.randn(2, D), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="ShardedCosines"):
        get_sharded_loss("gb_cosface")(torch.rand(2, C))
    with pytest.raises(ValueError, match="unknown loss"):
        get_sharded_loss("softmax")
    with pytest.raises(ValueError, match="unknown parameters"):
        get_sharded_loss("cosface", margin=0.1)
    with pytest.raises(ValueError, match="unknown sharded head"):
        get_sharded_head("conv", D, C)


def test_loss_state_moves_between_sharded_and_replicated():
    loss = get_sharded_loss("gb_cosface")
    head = ShardedNormLinearHead(D, C).double()
    x, labels = batch(0, head.weight.detach())
    loss(head(x, labels))
    plain = get_loss("gb_cosface")
    plain.load_state_dict(loss.state_dict())
    assert bool(plain.initialised) and plain.cos_v.item() == loss.cos_v.item()
