"""One rank of the two-process sharded-head tests: run the sharded head + losses under gloo, save results.

Run as a script by tests/sharded/test_sharded_distributed.py with RANK/WORLD_SIZE/MASTER_ADDR/PORT set;
the test imports the data helpers below to compute the single-process reference itself.
Everything is float64. Local batches have different sizes (3 and 5) and C = 7 splits unevenly (4 + 3).
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

D, C, IN = 5, 7, 6
SIZES = (3, 5)
STEPS = 3
WEIGHT_SEED = 3
LOSS_PARAMS: dict[str, dict[str, float]] = {
    "gb_cosface": {"update_rate": 0.3, "max_cos_v": 0.8},
    "gb_magface": {"update_rate": 0.3, "max_cos_v": 0.8},
    "cosface": {"s": 16.0, "m": 0.3},
    "arcface": {"s": 16.0, "m": 0.4},
    "magface": {"s": 16.0},
}
SGD_LOSSES = ("gb_cosface", "arcface")
SGD = {"lr": 0.5, "momentum": 0.9, "weight_decay": 5e-4}


def head_type(loss_name: str) -> str:
    return "mag" if loss_name in ("gb_magface", "magface") else "linear"


def full_weight() -> torch.Tensor:
    from gbcosface.sharded import init_full_weight

    return init_full_weight(D, C, WEIGHT_SEED, torch.float64)


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings near their class centres (so p, n, v are realistic) with norms in [15, 100]."""
    gen = torch.Generator().manual_seed(100 * step + rank)
    b = SIZES[rank]
    labels = torch.randint(0, C, (b,), generator=gen)
    centres = F.normalize(full_weight(), dim=0)[:, labels].T
    direction = F.normalize(centres + 0.5 * torch.randn(b, D, generator=gen, dtype=torch.float64), dim=1)
    return direction * (15.0 + 85.0 * torch.rand(b, 1, generator=gen, dtype=torch.float64)), labels


def sgd_batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7000 + 100 * step + rank)
    return torch.randn(SIZES[rank], IN, generator=gen, dtype=torch.float64), torch.randint(0, C, (SIZES[rank],), generator=gen)


def backbone() -> nn.Linear:
    """A tiny linear "backbone", identically initialised everywhere."""
    torch.manual_seed(11)
    return nn.Linear(IN, D).double()


def run_head_and_loss(rank: int, world: int) -> dict[str, list[dict[str, object]]]:
    """Per loss and step: every output, dL/dx_local, dL/dW_shard, cos_v after the step."""
    from gbcosface.sharded import get_sharded_head, get_sharded_loss

    results: dict[str, list[dict[str, object]]] = {}
    for name, params in LOSS_PARAMS.items():
        head = get_sharded_head(head_type(name), D, C, rank, world).double()
        head.load_full_weight(full_weight())
        loss = get_sharded_loss(name, **params).train()
        steps = []
        for step in range(STEPS):
            x, labels = batch(rank, step)
            x.requires_grad_(True)
            head.zero_grad()
            out = loss(head(x, labels))
            out["loss"].backward()
            record: dict[str, object] = {k: v.item() for k, v in out.items()}
            record["grad_x"] = x.grad.clone()
            record["grad_w"] = head.weight.grad.clone()
            record["cos_v_after"] = loss.cos_v.item() if hasattr(loss, "cos_v") else None
            steps.append(record)
        results[name] = steps
    return results


def run_sgd(rank: int, world: int, grad_scale: float) -> dict[str, dict[str, object]]:
    """STEPS SGD steps of DDP(backbone) + sharded head; the final parameters and the per-step losses."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gbcosface.sharded import ShardedNormLinearHead, get_sharded_loss

    out: dict[str, dict[str, object]] = {}
    for name in SGD_LOSSES:
        model = DDP(backbone())
        head = ShardedNormLinearHead(D, C, rank, world, seed=WEIGHT_SEED).double()
        loss = get_sharded_loss(name, **LOSS_PARAMS[name]).train()
        opt = torch.optim.SGD([{"params": model.parameters()}, {"params": head.parameters()}], **SGD)
        losses = []
        for step in range(STEPS):
            images, labels = sgd_batch(rank, step)
            value = loss(head(model(images), labels, grad_scale=grad_scale))["loss"]
            opt.zero_grad()
            value.backward()
            opt.step()
            losses.append(value.item())
        out[name] = {"losses": losses, "backbone": {k: v.detach().clone() for k, v in model.module.state_dict().items()},
                     "head_full": head.full_weight()}
    return out


def main(out_path: str) -> None:
    from gbcosface.sharded import gather_full_weight, shard_full_weight

    dist.init_process_group("gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {"head_and_loss": run_head_and_loss(rank, world),
              "sgd": run_sgd(rank, world, grad_scale=float(world)),
              "sgd_unscaled": run_sgd(rank, world, grad_scale=1.0)}
    # a (D, C) tensor sharded by class, e.g. the momentum buffer, gathered back
    full = torch.arange(D * C, dtype=torch.float64).reshape(D, C)
    result["gathered"] = gather_full_weight(shard_full_weight(full, rank, world), C, rank, world)
    dist.barrier()
    dist.destroy_process_group()
    torch.save(result, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
