"""One rank of the two-process sampling test: sampled sharded head + GB-CosFace under gloo, in float64.

Run by tests/sharded/test_sharded_sampling.py with RANK/WORLD_SIZE/MASTER_ADDR/PORT set; it saves the
loss, the global ids of the classes this rank kept, dL/dx of its local rows and dL/dW of its shard.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

D, C, RATE, STEP, SEED = 6, 23, 0.4, 5, 11
SIZES = (4, 6)


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(D, C, generator=g, dtype=torch.float64)
    x = torch.randn(sum(SIZES), D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (sum(SIZES),), generator=g)
    return w, x, y


def main(out: str) -> None:
    from gbcosface.sharded import get_sharded_head, get_sharded_loss
    from gbcosface.sharded.sampling import sample_columns, sample_seed

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    w, x, y = data()
    start = sum(SIZES[:rank])
    head = get_sharded_head("linear", D, C, rank, world, seed=SEED).double()
    head.load_full_weight(w)
    loss = get_sharded_loss("gb_cosface")
    xl = x[start:start + SIZES[rank]].clone().requires_grad_(True)
    terms = loss(head(xl, y[start:start + SIZES[rank]], sample_rate=RATE, step=STEP))
    terms["loss"].backward()
    cols = sample_columns(y, head.class_start, head.class_stop, RATE, sample_seed(SEED, STEP, head.class_start))
    torch.save({"loss": terms["loss"].detach(), "cos_v": terms["cos_v"], "kept": cols + head.class_start,
                "x_grad": xl.grad, "w_grad": head.weight.grad, "start": head.class_start}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1])
