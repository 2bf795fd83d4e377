"""One rank of the two-process cos_v test: run GB-CosFace under a gloo group, record cos_v.

Run as a script by tests/losses/test_cos_v_distributed.py with RANK/WORLD_SIZE/MASTER_ADDR/PORT set.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.distributed as dist

STEPS = 4
UPDATE_RATE = 0.3


def make_batch(rank: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-dependent batches: rank 0's positives are high, rank 1's low, so their v means differ."""
    rng = np.random.default_rng(1000 * rank + step)
    cos = rng.uniform(-0.5, 0.3, size=(6, 5))
    labels = rng.integers(0, 5, size=6)
    cos[np.arange(6), labels] = (0.95 if rank == 0 else 0.55) + 0.05 * rng.uniform(size=6)
    return cos, labels


def main(out_path: str) -> None:
    from gbcosface.losses import GBCosFace

    dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank()
    loss = GBCosFace(update_rate=UPDATE_RATE)
    loss.train()
    record = {"cos_v_used": [], "cos_v_after": []}
    for step in range(STEPS):
        cos, labels = make_batch(rank, step)
        out = loss(torch.tensor(cos, dtype=torch.float64), torch.tensor(labels))
        record["cos_v_used"].append(out["cos_v"].item())
        record["cos_v_after"].append(loss.cos_v.item())
    dist.barrier()
    dist.destroy_process_group()
    with open(out_path, "w") as fh:
        json.dump(record, fh)


if __name__ == "__main__":
    main(sys.argv[1])
