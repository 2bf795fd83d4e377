"""Negative-class sampling for the sharded head (the idea of insightface's Partial FC; our own code).

Why: at millions of classes the (global batch x C/G) cosines, their exp and their gradient dominate a
rank's memory and time. Each step, each rank keeps only a subset of its classes:
- every positive class of the global batch that it owns (so p_i is exact, never sampled away);
- uniformly chosen other classes of its shard, up to k = ceil(rate x C_local) in all (more when the
  positives alone exceed it).
The sampled classes are used by every sample of the global batch: they are the step's negatives,
shared by all ranks' samples (the embeddings are gathered). Which classes are chosen is a function of
(run seed, step, shard start): a resumed run at the same world size draws exactly the same classes, so
the sampler's only state is the step, which the checkpoint holds.

What it changes (docs/losses.md, "Negative-class sampling"): the soft negative n_i = logsumexp_j(s cos_ij)/s
runs over the sampled negatives only, so it is lower than the full one; when the negatives' exp terms
are alike, by about log(rate)/s (-0.036 for rate 0.1, s = 64); GB-CosFace's V (the mean of (p + n)/2)
follows n. The gradient reaches only the sampled columns (weight decay and momentum still move all).

The sampled columns form a "virtual" class-sharded problem: rank r's k_r sampled classes are virtual
classes [v_r, v_r + k_r) (v_r the sum of the earlier ranks' k), and the labels are remapped to them
(one all-reduce: only the owner rank writes a label). The sharded losses then run unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from .functional import gather_sizes


def sample_seed(seed: int, step: int, class_start: int) -> int:
    """A 32-bit seed from (run seed, step, shard start), mixed by numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(seed), int(step), int(class_start)]).generate_state(1)[0])


def sample_columns(labels: torch.Tensor, class_start: int, class_stop: int, rate: float, seed: int) -> torch.Tensor:
    """Sorted local column indices to keep: every owned positive of `labels`, then random others.

    `labels` are global class ids of the global batch. Drawn on the CPU from `seed`, so the choice does
    not depend on the device.
    """
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"head.sample_rate must be in (0, 1], got {rate}")
    local = class_stop - class_start
    owned = labels[(labels >= class_start) & (labels < class_stop)].to("cpu") - class_start
    positives = torch.unique(owned)
    k = min(local, max(int(positives.numel()), math.ceil(rate * local)))
    score = torch.rand(local, generator=torch.Generator().manual_seed(seed))
    score[positives] = 2.0  # above every uniform draw: positives are always kept
    return torch.topk(score, k, sorted=False).indices.sort().values


def virtual_labels(labels: torch.Tensor, columns: torch.Tensor, class_start: int, class_stop: int,
                   world_size: int, group: dist.ProcessGroup | None) -> tuple[torch.Tensor, int, int]:
    """(labels in the virtual class space, this rank's virtual start, total virtual classes): collectives."""
    sizes = gather_sizes(int(columns.numel()), labels.device, world_size, group)
    rank = 0 if world_size == 1 else dist.get_rank(group)
    v_start = sum(sizes[:rank])
    owned = (labels >= class_start) & (labels < class_stop)
    cols = columns.to(labels.device)
    pos = torch.searchsorted(cols, (labels - class_start).clamp(0, class_stop - class_start - 1))
    mapped = torch.where(owned, pos + v_start, torch.zeros_like(labels))
    if world_size > 1:
        dist.all_reduce(mapped, op=dist.ReduceOp.SUM, group=group)  # exactly one rank owns each label
    return mapped, v_start, sum(sizes)
