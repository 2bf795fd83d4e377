"""Autograd-aware collectives for a class-sharded classifier, and the distributed (p, n) of every loss.

The gradient bookkeeping (why it is exact). Every rank computes the SAME global loss L: its inputs are
the global batch (gathered) and a few sums over the class shards (all-reduced), and everything after
those sums is replicated, identical on every rank. Rank k's own parameters (its weight shard W_k)
influence L only through its local cosines cos_k. So:

* `sum_over_shards` (all-reduce SUM) has an IDENTITY backward: the gradient arriving at the sum is
  dL/dS, identical on every rank, and dS/dt_k = 1, so rank k's true partial derivative dL/dt_k is that
  gradient itself. (torch.distributed.nn's all_reduce would all-reduce it again and count L once per
  rank, i.e. world_size times.)
* `gather_rows(..., reduce_grad=True)` is for tensors that feed rank-specific computations (the
  normalised embeddings feed cos_k): rank k's backward yields only the part of dL/dX that flows through
  cos_k, so the parts are SUMMED over ranks (all-reduce) and each rank keeps its own rows.
* `gather_rows(..., reduce_grad=False)` is for tensors whose consumers are all replicated (the feature
  norms of MagFace-type losses): every rank already holds the full dL/dX, so each keeps its own rows;
  summing would count it world_size times.

The result: rank r's local embeddings receive exactly dL/dx_r, and W_k exactly dL/dW_k, with L the
mean over the GLOBAL batch. See docs/losses.md ("Sharded classifier") for how DDP's averaging of the
backbone gradient must be compensated (`grad_scale`).

With world_size 1 no collective is called and no process group is needed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist


def gather_sizes(n: int, device: torch.device, world_size: int, group: dist.ProcessGroup | None) -> list[int]:
    """Every rank's local batch size (ranks may differ, e.g. the last batch of an epoch)."""
    if world_size == 1:
        return [n]
    mine = torch.tensor([n], dtype=torch.long, device=device)
    parts = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(parts, mine, group=group)
    return [int(p.item()) for p in parts]


def _all_gather_padded(x: torch.Tensor, sizes: list[int], group: dist.ProcessGroup | None) -> torch.Tensor:
    """Concatenation over ranks of (sizes[r], ...) tensors; pads to the largest for the collective."""
    rows = max(sizes)
    padded = x.contiguous()
    if x.shape[0] != rows:
        padded = x.new_zeros((rows, *x.shape[1:]))
        padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


def gather_rows_no_grad(x: torch.Tensor, sizes: list[int], group: dist.ProcessGroup | None) -> torch.Tensor:
    """All-gather along dim 0 without autograd (labels)."""
    if len(sizes) == 1:
        return x
    with torch.no_grad():
        return _all_gather_padded(x, sizes, group)


class _GatherRows(torch.autograd.Function):
    """Forward: all-gather along dim 0. Backward: own rows of the (summed or replicated) gradient, scaled."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: list[int], rank: int, group: dist.ProcessGroup | None,
                reduce_grad: bool, grad_scale: float) -> torch.Tensor:
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        ctx.group, ctx.reduce_grad, ctx.grad_scale = group, reduce_grad, grad_scale
        return _all_gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.reduce_grad:
            grad = grad.contiguous().clone()
            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        own = grad[ctx.start: ctx.stop]
        if ctx.grad_scale != 1.0:
            own = own * ctx.grad_scale
        return own, None, None, None, None, None


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a constant."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x in the forward pass; its gradient times `factor` in the backward pass."""
    return x if factor == 1.0 else _ScaleGrad.apply(x, float(factor))


def gather_rows(x: torch.Tensor, sizes: list[int], rank: int, group: dist.ProcessGroup | None = None,
                reduce_grad: bool = True, grad_scale: float = 1.0) -> torch.Tensor:
    """The global batch (sum(sizes), ...) from each rank's (sizes[rank], ...) rows, differentiable.

    `reduce_grad`: True when the consumers are rank-specific (sum the ranks' partial gradients), False
    when they are replicated (each rank already has the whole gradient). `grad_scale` multiplies the
    gradient that reaches `x` (see docs: compensation of DDP's averaging). See the module docstring.
    """
    if x.shape[0] != sizes[rank]:
        raise ValueError(f"gather_rows: rank {rank} has {x.shape[0]} rows, sizes say {sizes[rank]}")
    if len(sizes) == 1:
        return scale_grad(x, grad_scale)
    return _GatherRows.apply(x, sizes, rank, group, reduce_grad, float(grad_scale))


class _SumOverShards(torch.autograd.Function):
    """Forward: all-reduce SUM. Backward: identity (the downstream loss is replicated on every rank)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        out = t.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def sum_over_shards(t: torch.Tensor, world_size: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum of each rank's contribution `t`; differentiable with the identity backward explained above."""
    return t if world_size == 1 else _SumOverShards.apply(t, group)


def max_over_shards(t: torch.Tensor, world_size: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Elementwise maximum over ranks, without gradient (only used as a logsumexp shift)."""
    out = t.detach().clone()
    if world_size > 1:
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=group)
    return out


def logsumexp_over_shards(z: torch.Tensor, world_size: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """logsumexp over dim 1 of the class-sharded (N, C_local) `z`, over all ranks' classes.

    M = max over ranks of the per-shard row maxima (no gradient: log sum exp(z - M) + M has the same
    value and derivative for any constant M; M only keeps exp() in range); then the ranks' sums of
    exp(z - M) are summed. Entries may be -inf (masked); every row needs one finite entry on some
    rank (the callers guarantee it: at least 2 classes, only the positive is masked).
    """
    shift = max_over_shards(z.detach().amax(dim=1), world_size, group)
    total = sum_over_shards(torch.exp(z - shift[:, None]).sum(dim=1), world_size, group)
    return torch.log(total) + shift


def positive_and_soft_negative_sharded(
    cos: torch.Tensor, labels: torch.Tensor, class_start: int, s: float, world_size: int,
    group: dist.ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """p_i = cos[i, y_i] and n_i = logsumexp_{j != y_i}(s cos[i, j]) / s over the global classes.

    `cos` is (N, C_local): the global batch against this rank's classes [class_start, class_start +
    C_local); `labels` are global class ids. Only the owner shard of y_i contributes p_i (others add 0,
    and receive no gradient); the positive is masked with -inf in its owner's shard for n.
    """
    local = cos.shape[1]
    owned = (labels >= class_start) & (labels < class_start + local)
    col = (labels - class_start).clamp(0, local - 1)
    picked = cos.gather(1, col[:, None]).squeeze(1)
    p = sum_over_shards(torch.where(owned, picked, torch.zeros_like(picked)), world_size, group)
    positive = torch.zeros_like(cos, dtype=torch.bool)
    positive[owned.nonzero().squeeze(1), col[owned]] = True
    n = logsumexp_over_shards((s * cos).masked_fill(positive, -math.inf), world_size, group) / s
    return p, n
