"""Class-sharded (model-parallel) cosine heads: each rank holds the weight columns of its own classes.

Why: MS1MV2 has 85,742 classes and Glint360K 360,232; a replicated (D, C) head costs C x D x 4 bytes
(plus gradient and momentum) on every GPU, and its gradient all-reduce dominates the communication.
Here rank r keeps only W[:, start_r:stop_r] (`partition.class_range`). Each step the ranks all-gather
the normalised embeddings (and labels) of the whole global batch, and each computes the cosines of
the global batch against its own classes. The losses (`gbcosface.sharded.losses`) combine the shards
with all-reduces. The gradient reaching the local embeddings is the exact derivative of the
global-batch loss (`functional` explains why); `grad_scale` exists for DDP's averaging (see
docs/losses.md, "Sharded classifier").

The head must NOT be inside DistributedDataParallel: its parameters differ per rank (with an even
split DDP would even accept them and average different classes' gradients together).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .functional import gather_rows, gather_rows_no_grad, gather_sizes
from .partition import class_range, gather_full_weight, init_weight_columns

SHARDED_HEAD_TYPES = ("linear", "mag")


@dataclass(frozen=True)
class ShardedCosines:
    """What a sharded head hands to a sharded loss.

    cos: (N, C_local) clamped cosines of the GLOBAL batch (N = sum of the local batch sizes, in rank
    order) against this rank's classes [class_start, class_start + C_local); labels: (N,) global class
    ids; norms: (N,) feature norms (mag head) or None.
    """

    cos: torch.Tensor
    labels: torch.Tensor
    class_start: int
    num_classes: int
    world_size: int
    group: dist.ProcessGroup | None = None
    norms: torch.Tensor | None = None


class ShardedNormLinearHead(nn.Module):
    """Rank `rank`'s slice of NormLinearHead: weight (D, C_local) = columns [class_start, class_stop).

    `forward(x_local, labels_local, grad_scale=1.0) -> ShardedCosines` is a collective: every rank of
    the group calls it every step. With world_size 1 no process group is needed and `cos` equals
    NormLinearHead's output. `seed` fixes the initial weight independently of the world size.
    """

    returns_norms = False

    def __init__(self, embedding_size: int, num_classes: int, rank: int = 0, world_size: int = 1,
                 group: dist.ProcessGroup | None = None, seed: int = 0) -> None:
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"sharded head: embedding_size must be positive, got {embedding_size}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.rank = rank
        self.world_size = world_size
        self.group = group
        self.seed = seed
        self.class_start, self.class_stop = class_range(num_classes, rank, world_size)
        self.weight = nn.Parameter(init_weight_columns(embedding_size, self.class_start, self.class_stop, seed,
                                                       dtype=torch.get_default_dtype()))  # as NormLinearHead's

    @property
    def num_local_classes(self) -> int:
        return self.class_stop - self.class_start

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, rank={self.rank}, "
                f"world_size={self.world_size}, classes=[{self.class_start}, {self.class_stop})")

    def _check_group(self) -> None:
        if self.world_size == 1:
            return
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f"sharded head: world_size={self.world_size} needs an initialised process group")
        actual = (dist.get_rank(self.group), dist.get_world_size(self.group))
        if actual != (self.rank, self.world_size):
            raise RuntimeError(f"sharded head: built for rank {self.rank} of {self.world_size}, but the process "
                               f"group says rank {actual[0]} of {actual[1]}")

    def _check(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.embedding_size:
            raise ValueError(f"sharded head: expected embeddings of shape (B, {self.embedding_size}), got {tuple(x.shape)}")
        if not isinstance(labels, torch.Tensor) or labels.shape != (x.shape[0],):
            raise ValueError(f"sharded head: labels must have shape ({x.shape[0]},), "
                             f"got {tuple(getattr(labels, 'shape', ()))}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"sharded head: labels must be integers, got {labels.dtype}")

    def forward(self, x: torch.Tensor, labels: torch.Tensor, grad_scale: float = 1.0, sample_rate: float = 1.0,
                step: int = 0) -> ShardedCosines:
        """Gather the global batch; cosines against this shard. `grad_scale` multiplies dL/dx_local.

        `sample_rate` < 1: only the sampled columns of this shard (`gbcosface.sharded.sampling`, chosen
        from (seed, step, shard)); the result then describes the virtual sampled class space.
        """
        self._check(x, labels)
        self._check_group()
        sizes = gather_sizes(x.shape[0], x.device, self.world_size, self.group)
        global_labels = gather_rows_no_grad(labels.to(device=x.device, dtype=torch.long), sizes, self.group)
        # checked after the gather, so every rank sees the same labels and raises together (no hang)
        bad = (global_labels < 0) | (global_labels >= self.num_classes)
        if bool(bad.any()):
            raise ValueError(f"sharded head: labels out of range [0, {self.num_classes}): "
                             f"{global_labels[bad][:5].tolist()}")
        x_all = gather_rows(F.normalize(x, dim=1), sizes, self.rank, self.group,
                            reduce_grad=True, grad_scale=grad_scale)
        norms = self._norms(x, sizes, grad_scale)
        if sample_rate < 1.0:
            from .sampling import sample_columns, sample_seed, virtual_labels

            cols = sample_columns(global_labels, self.class_start, self.class_stop, sample_rate,
                                  sample_seed(self.seed, step, self.class_start)).to(x.device)
            w = F.normalize(self.weight[:, cols], dim=0).to(x_all.dtype)
            vlabels, v_start, v_total = virtual_labels(global_labels, cols, self.class_start, self.class_stop,
                                                       self.world_size, self.group)
            cos = (x_all @ w).clamp(-1.0, 1.0)
            return ShardedCosines(cos, vlabels, v_start, v_total, self.world_size, self.group, norms)
        w = F.normalize(self.weight, dim=0).to(x_all.dtype)
        cos = (x_all @ w).clamp(-1.0, 1.0)
        return ShardedCosines(cos, global_labels, self.class_start, self.num_classes, self.world_size,
                              self.group, norms)

    def _norms(self, x: torch.Tensor, sizes: list[int], grad_scale: float) -> torch.Tensor | None:
        return None

    def full_weight(self) -> torch.Tensor:
        """The full (D, C) weight on every rank (a collective): what a checkpoint should store."""
        return gather_full_weight(self.weight, self.num_classes, self.rank, self.world_size, self.group)

    @torch.no_grad()
    def load_full_weight(self, full: torch.Tensor) -> None:
        """Take this rank's columns from a full (D, C) weight (a checkpoint of any world size)."""
        if tuple(full.shape) != (self.embedding_size, self.num_classes):
            raise ValueError(f"sharded head: full weight must be {(self.embedding_size, self.num_classes)}, "
                             f"got {tuple(full.shape)}")
        self.weight.copy_(full[:, self.class_start: self.class_stop])


class ShardedMagHead(ShardedNormLinearHead):
    """Also returns the global batch's feature norms |x_i| (before normalisation), as MagHead."""

    returns_norms = True

    def _norms(self, x: torch.Tensor, sizes: list[int], grad_scale: float) -> torch.Tensor:
        # the losses use norms only in replicated computations: every rank holds the full dL/dnorms
        return gather_rows(torch.linalg.vector_norm(x, dim=1), sizes, self.rank, self.group,
                           reduce_grad=False, grad_scale=grad_scale)


def get_sharded_head(type: str, embedding_size: int, num_classes: int, rank: int = 0, world_size: int = 1,
                     group: dist.ProcessGroup | None = None, seed: int = 0) -> ShardedNormLinearHead:
    """`linear` -> ShardedNormLinearHead, `mag` -> ShardedMagHead (as gbcosface.heads.get_head)."""
    if type == "linear":
        return ShardedNormLinearHead(embedding_size, num_classes, rank, world_size, group, seed)
    if type == "mag":
        return ShardedMagHead(embedding_size, num_classes, rank, world_size, group, seed)
    raise ValueError(f"unknown sharded head type {type!r} (known: {', '.join(SHARDED_HEAD_TYPES)})")
