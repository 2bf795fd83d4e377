"""Which classes each rank owns, and moving a class-sharded tensor between its shards and its full form.

Why contiguous ranges: the full head weight is (D, C) with one column per class (the layout of
`gbcosface.heads.NormLinearHead` and of the official GB-CosFace head). Giving rank r the columns
[start_r, stop_r) makes a shard a plain slice, so a checkpoint that stores the FULL weight can be
resharded for any world size by slicing, and the shards concatenate back in rank order. When C is not
divisible by the world size the first C % world ranks hold one class more (sizes differ by at most 1).

Why a chunked, seeded initialisation: every rank initialises only its own columns, but if the trainer
seeds all ranks identically, a plain `normal_()` on each shard would give class j of shard 0 the same
centre as class j of shard 1. Drawing columns in fixed chunks of classes, each from a generator seeded
by (seed, chunk index), makes the initial full weight a function of the seed alone: identical for any
world size, and different for every class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

INIT_STD = 0.01  # as NormLinearHead: only directions matter, a small isotropic normal is uniform on the sphere
INIT_CHUNK = 4096  # classes per seeded chunk; a constant, so the init does not depend on the world size


def class_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of the classes that `rank` owns; sizes differ by at most one, earlier ranks larger."""
    if world_size < 1:
        raise ValueError(f"sharded head: world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"sharded head: rank must be in [0, {world_size}), got {rank}")
    if num_classes < world_size:
        raise ValueError(f"sharded head: {num_classes} classes cannot be split over {world_size} ranks "
                         "(every rank must own at least one class)")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_full_weight(full: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s columns of a full (..., C) tensor (the head weight or its momentum buffer), a copy."""
    start, stop = class_range(full.shape[-1], rank, world_size)
    return full[..., start:stop].clone()


def assemble_full_weight(shards: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate the shards of ranks 0..world-1 (offline, e.g. per-rank files) into the full tensor."""
    if not shards:
        raise ValueError("assemble_full_weight: no shards given")
    world_size = len(shards)
    num_classes = sum(s.shape[-1] for s in shards)
    for rank, shard in enumerate(shards):
        start, stop = class_range(num_classes, rank, world_size)
        if shard.shape[-1] != stop - start or shard.shape[:-1] != shards[0].shape[:-1]:
            raise ValueError(f"assemble_full_weight: shard {rank} has shape {tuple(shard.shape)}, expected "
                             f"{(*shards[0].shape[:-1], stop - start)} for {num_classes} classes on {world_size} ranks")
    return torch.cat(list(shards), dim=-1)


def gather_full_weight(
    shard: torch.Tensor, num_classes: int, rank: int, world_size: int, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """The full (..., C) tensor on every rank, from each rank's (..., C_local) shard (a collective).

    Every rank of the group must call it. Uneven shards are padded to the largest for the all-gather
    (NCCL and gloo need equal sizes) and trimmed after. With world_size 1 it returns a copy.
    """
    start, stop = class_range(num_classes, rank, world_size)
    if shard.shape[-1] != stop - start:
        raise ValueError(f"gather_full_weight: rank {rank} shard has {shard.shape[-1]} classes, expected {stop - start}")
    if world_size == 1:
        return shard.detach().clone()
    widths = [b - a for a, b in (class_range(num_classes, r, world_size) for r in range(world_size))]
    padded = shard.detach().new_zeros((*shard.shape[:-1], max(widths)))
    padded[..., : shard.shape[-1]] = shard.detach()
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[..., :w] for part, w in zip(parts, widths, strict=True)], dim=-1)


def init_weight_columns(embedding_size: int, start: int, stop: int, seed: int,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Columns [start, stop) of the seeded initial full weight, N(0, INIT_STD), drawn on the CPU.

    Column c comes from chunk c // INIT_CHUNK, drawn whole from a generator seeded by (seed, chunk),
    so the values of a column do not depend on which range asked for it. The pair is mixed by numpy's
    SeedSequence into 32 bits: torch's CPU generator (mt19937) keeps only the low 32 bits of a seed.
    """
    if not 0 <= start < stop:
        raise ValueError(f"init_weight_columns: bad range [{start}, {stop})")
    if seed < 0:
        raise ValueError(f"init_weight_columns: seed must be >= 0, got {seed}")
    out = torch.empty(embedding_size, stop - start, dtype=dtype)
    for chunk in range(start // INIT_CHUNK, (stop - 1) // INIT_CHUNK + 1):
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0]))
        block = torch.randn(embedding_size, INIT_CHUNK, generator=gen, dtype=torch.float64) * INIT_STD
        lo, hi = max(start, chunk * INIT_CHUNK), min(stop, (chunk + 1) * INIT_CHUNK)
        out[:, lo - start: hi - start] = block[:, lo - chunk * INIT_CHUNK: hi - chunk * INIT_CHUNK].to(dtype)
    return out


def init_full_weight(embedding_size: int, num_classes: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The whole seeded initial weight (D, C): what the shards of any world size assemble to."""
    return init_weight_columns(embedding_size, 0, num_classes, seed, dtype)
