"""Class ranges, shard/gather/assemble round trips and the world-size independent initialisation."""

from __future__ import annotations

import pytest
import torch

from gbcosface.sharded import (
    ShardedNormLinearHead,
    assemble_full_weight,
    class_range,
    gather_full_weight,
    init_full_weight,
    init_weight_columns,
    shard_full_weight,
)
from gbcosface.sharded import partition as partition_module


def test_uneven_split_of_seven_classes_on_two_ranks():
    assert class_range(7, 0, 2) == (0, 4)
    assert class_range(7, 1, 2) == (4, 7)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("classes", [7, 10, 85742 % 97 + 7])
def test_ranges_tile_the_classes_contiguously(world, classes):
    ranges = [class_range(classes, r, world) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == classes
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("args", [(3, 0, 4), (7, 2, 2), (7, -1, 2), (7, 0, 0)])
def test_bad_ranges_are_refused(args):
    with pytest.raises(ValueError):
        class_range(*args)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shard_then_assemble_is_the_identity(world):
    full = torch.randn(4, 7, dtype=torch.float64)
    shards = [shard_full_weight(full, r, world) for r in range(world)]
    assert torch.equal(assemble_full_weight(shards), full)
    # momentum-like tensors with leading dims work the same way
    extra = torch.randn(2, 4, 7)
    assert torch.equal(assemble_full_weight([shard_full_weight(extra, r, world) for r in range(world)]), extra)


def test_assemble_refuses_shards_in_the_wrong_order():
    full = torch.randn(4, 7)
    shards = [shard_full_weight(full, r, 2) for r in range(2)]
    with pytest.raises(ValueError, match="shard 0"):
        assemble_full_weight(shards[::-1])


def test_reshard_from_two_to_three_ranks():
    full = torch.randn(4, 7)
    two = [shard_full_weight(full, r, 2) for r in range(2)]
    three = [shard_full_weight(assemble_full_weight(two), r, 3) for r in range(3)]
    assert [t.shape[1] for t in three] == [3, 2, 2]
    assert torch.equal(assemble_full_weight(three), full)


def test_gather_full_weight_without_a_process_group():
    shard = torch.randn(3, 5)
    assert torch.equal(gather_full_weight(shard, 5, 0, 1), shard)
    with pytest.raises(ValueError):
        gather_full_weight(shard, 6, 0, 1)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_initial_weight_does_not_depend_on_the_world_size(monkeypatch, world):
    monkeypatch.setattr(partition_module, "INIT_CHUNK", 3)  # so shards straddle chunk boundaries
    full = init_full_weight(4, 8, seed=5)
    heads = [ShardedNormLinearHead(4, 8, r, world, seed=5) for r in range(world)]
    assert torch.equal(assemble_full_weight([h.weight.detach() for h in heads]), full)
    assert torch.equal(init_weight_columns(4, 2, 7, seed=5), full[:, 2:7])


def test_initial_columns_are_distinct_and_seeded():
    full = init_full_weight(8, 5000, seed=1)  # crosses the default chunk boundary at 4096
    assert torch.unique(full, dim=1).shape[1] == 5000
    assert not torch.equal(full[:, :4096], full[:, 904:])
    assert not torch.equal(full, init_full_weight(8, 5000, seed=2))
    assert torch.equal(full, init_full_weight(8, 5000, seed=1))
    assert 0.009 < float(full.std()) < 0.011


def test_head_loads_its_columns_from_a_full_weight():
    full = torch.randn(4, 7)
    head = ShardedNormLinearHead(4, 7, rank=1, world_size=2)
    head.load_full_weight(full)
    assert (head.class_start, head.class_stop, head.num_local_classes) == (4, 7, 3)
    assert torch.equal(head.weight.detach(), full[:, 4:])
    with pytest.raises(ValueError):
        head.load_full_weight(torch.randn(4, 8))
