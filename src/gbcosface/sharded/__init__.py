"""Model-parallel (class-sharded) classifier head and losses, for tens or hundreds of thousands of classes.

Each rank holds a contiguous slice of the classes; embeddings of the global batch are all-gathered and
the losses are combined with all-reduces, giving the exact gradients of the global-batch loss. Usage,
the gradient scaling under DDP and checkpointing: docs/losses.md, section "Sharded classifier".
"""

from __future__ import annotations

from .functional import (
    gather_rows,
    logsumexp_over_shards,
    positive_and_soft_negative_sharded,
    scale_grad,
    sum_over_shards,
)
from .head import ShardedCosines, ShardedMagHead, ShardedNormLinearHead, get_sharded_head
from .losses import (
    SHARDED_LOSSES,
    ShardedArcFace,
    ShardedCosFace,
    ShardedGBCosFace,
    ShardedGBMagFace,
    ShardedMagFace,
    get_sharded_loss,
)
from .partition import (
    assemble_full_weight,
    class_range,
    gather_full_weight,
    init_full_weight,
    init_weight_columns,
    shard_full_weight,
)

__all__ = [
    "SHARDED_LOSSES",
    "ShardedArcFace",
    "ShardedCosFace",
    "ShardedCosines",
    "ShardedGBCosFace",
    "ShardedGBMagFace",
    "ShardedMagFace",
    "ShardedMagHead",
    "ShardedNormLinearHead",
    "assemble_full_weight",
    "class_range",
    "gather_full_weight",
    "gather_rows",
    "get_sharded_head",
    "get_sharded_loss",
    "init_full_weight",
    "init_weight_columns",
    "logsumexp_over_shards",
    "positive_and_soft_negative_sharded",
    "scale_grad",
    "shard_full_weight",
    "sum_over_shards",
]
