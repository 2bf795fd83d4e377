"""Learning-rate schedules: exact values at epoch boundaries, warmup shapes, batch scaling."""

from __future__ import annotations

import math

import pytest
import torch

from gbcosface.config import OptimConfig, ScheduleConfig
from gbcosface.train.optim import apply_config, build_optimizer
from gbcosface.train.schedule import EpochLR, base_lrs, lr_factor


def _lrs_per_step(cfg: ScheduleConfig, spe: int, steps: int) -> list[float]:
    return [lr_factor(cfg, s // spe, s % spe, spe) for s in range(steps)]


def test_paper_step_schedule_changes_on_first_step_of_milestone_epochs() -> None:
    cfg = ScheduleConfig(type="step", epochs=24, milestones=[4, 9, 14, 19], gamma=0.1)
    spe = 7
    lrs = _lrs_per_step(cfg, spe, 24 * spe)
    for epoch in range(24):
        expected = 0.1 ** sum(1 for m in (4, 9, 14, 19) if epoch >= m)
        for s in range(epoch * spe, (epoch + 1) * spe):
            assert lrs[s] == pytest.approx(expected, rel=1e-12), (epoch, s)
    for m in (4, 9, 14, 19):  # last step of epoch m-1 keeps the old lr; the first step of m has the new one
        assert lrs[m * spe - 1] == pytest.approx(10 * lrs[m * spe])


def test_warmup_is_linear_and_reaches_one() -> None:
    cfg = ScheduleConfig(type="warmup_cosine", epochs=10, warmup_epochs=2)
    spe = 5
    lrs = _lrs_per_step(cfg, spe, 10 * spe)
    warm = lrs[: 2 * spe]
    assert warm == pytest.approx([(i + 1) / (2 * spe) for i in range(2 * spe)])
    assert lrs[2 * spe] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[2 * spe:], lrs[2 * spe + 1:], strict=False))  # monotone decay
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * (49 / 5 - 2) / 8)))


def test_warmup_poly_values() -> None:
    cfg = ScheduleConfig(type="warmup_poly", epochs=5, warmup_epochs=1, power=2.0)
    assert lr_factor(cfg, 3, 0, 10) == pytest.approx((1 - (3 - 1) / 4) ** 2)
    assert lr_factor(cfg, 0, 4, 10) == pytest.approx(0.5)
    assert lr_factor(cfg, 7, 0, 10) == 0.0  # past the end: clamped, never negative


def test_step_schedule_with_warmup_multiplies() -> None:
    cfg = ScheduleConfig(type="step", epochs=4, milestones=[1], warmup_epochs=2)
    assert lr_factor(cfg, 1, 0, 4) == pytest.approx(0.1 * 5 / 8)


def test_fractional_position_matches_integer_schedule() -> None:
    """After a resume at another world size the position is fractional; it interpolates consistently."""
    cfg = ScheduleConfig(type="warmup_cosine", epochs=4, warmup_epochs=0)
    assert lr_factor(cfg, 1, 2.5, 5.0) == pytest.approx(lr_factor(cfg, 1, 5, 10))


def test_epoch_lr_sets_each_group_from_its_base() -> None:
    backbone, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)
    optim = OptimConfig(lr=0.1, head_lr=0.5, weight_decay=5e-4, head_weight_decay=0.0)
    bb_lr, head_lr = base_lrs(optim, 64)
    opt = build_optimizer(backbone, head, optim, bb_lr, head_lr)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    sched = EpochLR(opt, ScheduleConfig(type="step", milestones=[1]), batches_per_epoch=4)
    sched.apply(1, 0)
    assert sched.last_lrs() == pytest.approx([0.01, 0.05])
    state = sched.state_dict()
    assert state["last_factor"] == pytest.approx(0.1)


def test_lr_scale_with_batch_and_apply_config() -> None:
    optim = OptimConfig(lr=0.1, lr_scale_with_batch=True)
    assert base_lrs(optim, 1024) == pytest.approx((0.2, 0.2))
    backbone, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)
    opt = build_optimizer(backbone, head, optim, 0.2, 0.2)
    apply_config(opt, OptimConfig(lr=0.1, momentum=0.5, weight_decay=0.0, head_weight_decay=1e-3), 0.05, 0.07)
    assert [g["base_lr"] for g in opt.param_groups] == [0.05, 0.07]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 1e-3]
    assert all(g["momentum"] == 0.5 for g in opt.param_groups)


def test_only_sgd_is_accepted() -> None:
    with pytest.raises(ValueError, match="only sgd"):
        build_optimizer(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), OptimConfig(name="adam"), 0.1, 0.1)
