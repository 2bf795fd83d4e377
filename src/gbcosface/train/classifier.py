"""The trained classifier: backbone + head + loss, replicated on every rank or with the classes sharded.

Why one interface with two implementations: the trainer only needs "the loss terms of this batch",
"clip the gradient", "the full state" and "load a full state"; whether the (D, C) head lives whole on
every rank (DDP over backbone + head) or is split by classes across ranks (DDP over the backbone only,
`gbcosface.sharded`) is decided once, here, by `head.sharded`.

Why the checkpoint holds the FULL head either way: the `head` entry is a `NormLinearHead` state dict
(key `weight`, (D, C)) and the head's momentum in the optimizer state is the full (D, C) buffer too.
The sharded classifier gathers its shards to rank 0 when saving and slices its own columns when
loading, so a checkpoint resumes at any world size (uneven shards included) and can switch between
the two paths. (insightface's Partial FC writes one file per rank, which pins the GPU count.)

Why the sharded head starts from the replicated head's initial matrix: the replicated head is built
with the same global RNG stream (`run.seed`) and sliced, so a sharded run starts from exactly the
classifier a replicated run starts from, whatever initialisation `gbcosface.heads` uses.
Host memory: each rank materialises the full matrix once at start (C x D x 4 bytes).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from gbcosface.train.distributed import DistEnv
from gbcosface.train.model import FaceModel


class Classifier(Protocol):
    """What the trainer uses of the model: see the module docstring."""

    backbone: nn.Module
    head: nn.Module
    loss: nn.Module
    sharded: bool

    def train(self) -> None: ...

    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]: ...

    def buffers(self) -> list[torch.Tensor]: ...

    def clip_grad_norm_(self, max_norm: float) -> float: ...

    def full_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None: ...

    def load_full_state(self, state: dict[str, Any], optimizer: torch.optim.Optimizer, where: str) -> None: ...


def _cpu(obj: Any) -> Any:
    """Detached CPU copies of every tensor in a nested structure (saving never holds device memory)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _head_param_indices(optimizer: torch.optim.Optimizer, head: nn.Module) -> dict[str, int]:
    """{head parameter name: its index in optimizer.state_dict()} (indices count over all groups)."""
    ids = {id(p): name for name, p in head.named_parameters()}
    out: dict[str, int] = {}
    index = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in ids:
                out[ids[id(p)]] = index
            index += 1
    return out


def _check_full(where: str, name: str, tensor: Any, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
        got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{where}: {name} must be a full head tensor of shape {shape}, got {got}")
    return tensor


class ReplicatedClassifier:
    """Today's path: one DDP around backbone + head, every rank holds the whole head."""

    sharded = False

    def __init__(self, backbone: nn.Module, head: nn.Module, loss: nn.Module, amp: str, env: DistEnv) -> None:
        self.env = env
        self.model = FaceModel(backbone, head, amp).to(env.device)
        self.backbone, self.head = self.model.backbone, self.model.head
        self.loss = loss.to(env.device)
        self.ddp: nn.Module = self.model

    def wrap(self) -> None:
        """Put the DDP wrapper on (after resume and compile, as the trainer did before)."""
        if self.env.distributed:
            dev = self.env.device
            self.ddp = DDP(self.model, device_ids=[dev.index] if dev.type == "cuda" else None,
                           broadcast_buffers=True, gradient_as_bucket_view=True)

    def train(self) -> None:
        self.ddp.train()
        self.loss.train()

    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        cos, norms = self.ddp(images)
        return self.loss(cos, labels, norms=norms)

    def buffers(self) -> list[torch.Tensor]:
        return [*self.model.buffers(), *self.loss.buffers()]

    def clip_grad_norm_(self, max_norm: float) -> float:
        return float(nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))

    def full_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        if not self.env.is_main:
            return None
        return {"backbone": _cpu(self.backbone.state_dict()), "head": _cpu(self.head.state_dict()),
                "loss": _cpu(self.loss.state_dict()), "optimizer": _cpu(optimizer.state_dict())}

    def load_full_state(self, state: dict[str, Any], optimizer: torch.optim.Optimizer, where: str) -> None:
        self.backbone.load_state_dict(state["backbone"], strict=True)
        self.head.load_state_dict(state["head"], strict=True)
        self.loss.load_state_dict(state["loss"], strict=True)
        optimizer.load_state_dict(state["optimizer"])


class ShardedClassifier:
    """Classes split across ranks: DDP over the backbone only, the head and loss from `gbcosface.sharded`.

    The head receives `grad_scale=world_size` so that DDP's averaging of the backbone gradient yields
    the gradient of the global-batch loss (docs/losses.md, "Sharded classifier").
    """

    sharded = True

    def __init__(self, backbone: nn.Module, head: nn.Module, loss: nn.Module, amp: str, env: DistEnv,
                 sample_rate: float = 1.0) -> None:
        self.env = env
        self.sample_rate = float(sample_rate)
        # the backbone under FaceModel's autocast rules; Identity returns the float32 embeddings
        self.model = FaceModel(backbone, nn.Identity(), amp).to(env.device)
        self.backbone = self.model.backbone
        self.head = head.to(env.device)
        self.loss = loss.to(env.device)
        self.ddp: nn.Module = self.model
        self.grad_scale = float(env.world_size)

    def wrap(self) -> None:
        if self.env.distributed:
            dev = self.env.device
            self.ddp = DDP(self.model, device_ids=[dev.index] if dev.type == "cuda" else None,
                           broadcast_buffers=True, gradient_as_bucket_view=True)

    def train(self) -> None:
        self.ddp.train()
        self.head.train()
        self.loss.train()

    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        """`step` seeds the negative-class sampling (head.sample_rate < 1), so a resume redraws the same classes."""
        emb, _ = self.ddp(images)
        sc = self.head(emb, labels, grad_scale=self.grad_scale, sample_rate=self.sample_rate, step=step)
        return self.loss(sc)

    def buffers(self) -> list[torch.Tensor]:
        return [*self.model.buffers(), *self.head.buffers(), *self.loss.buffers()]

    def clip_grad_norm_(self, max_norm: float) -> float:
        """torch's clip_grad_norm_ over the GLOBAL parameter set: backbone (same on every rank) + all shards.

        Every rank computes the same total norm (one all-reduce of the shards' squared norms), so all
        ranks clip by the same factor and their backbones stay identical.
        """
        def sq(params: Any) -> torch.Tensor:
            grads = [p.grad.detach().double() for p in params if p.grad is not None]
            total = torch.zeros((), dtype=torch.float64, device=self.env.device)
            for g in grads:
                total = total + g.pow(2).sum()
            return total

        shard_sq = sq(self.head.parameters())
        if self.env.distributed:
            dist.all_reduce(shard_sq, op=dist.ReduceOp.SUM)
        total = math.sqrt(float(sq(self.model.parameters()) + shard_sq))
        coef = max_norm / (total + 1e-6)
        if coef < 1.0:
            for p in (*self.model.parameters(), *self.head.parameters()):
                if p.grad is not None:
                    p.grad.detach().mul_(coef)
        return total

    # -- checkpoint state -------------------------------------------------------------------------
    def _gather_to_main(self, shard: torch.Tensor) -> torch.Tensor | None:
        """The full (D, C) tensor on rank 0 (None elsewhere) from every rank's columns: a collective."""
        from gbcosface.sharded import class_range

        env, head = self.env, self.head
        if not env.distributed:
            return shard.detach().clone()
        widths = [b - a for a, b in (class_range(head.num_classes, r, env.world_size) for r in range(env.world_size))]
        padded = shard.detach().new_zeros((*shard.shape[:-1], max(widths)))
        padded[..., : shard.shape[-1]] = shard.detach()
        parts = [torch.empty_like(padded) for _ in widths] if env.is_main else None
        dist.gather(padded, parts, dst=0)
        if not env.is_main:
            return None
        assert parts is not None
        return torch.cat([p[..., :w].cpu() for p, w in zip(parts, widths, strict=True)], dim=-1)

    def full_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Backbone, FULL head weight, loss buffers and optimizer state with the FULL head momentum.

        A collective (every rank calls it); rank 0 gets the dict, the others None.
        """
        head_idx = _head_param_indices(optimizer, self.head)
        params = dict(self.head.named_parameters())
        full_head = {name: self._gather_to_main(p) for name, p in params.items()}
        full_momentum: dict[int, torch.Tensor | None] = {}
        for name, idx in head_idx.items():
            buf = optimizer.state.get(params[name], {}).get("momentum_buffer")
            # every rank took the same steps, so all agree on whether the buffer exists yet
            full_momentum[idx] = None if buf is None else self._gather_to_main(buf)
        if not self.env.is_main:
            return None
        opt = _cpu(optimizer.state_dict())
        for idx, full in full_momentum.items():
            if full is not None:
                opt["state"][idx]["momentum_buffer"] = full
        return {"backbone": _cpu(self.backbone.state_dict()), "head": full_head,
                "loss": _cpu(self.loss.state_dict()), "optimizer": opt}

    def load_full_state(self, state: dict[str, Any], optimizer: torch.optim.Optimizer, where: str) -> None:
        """Load a full state (of any world size, sharded or replicated) and keep this rank's columns."""
        head = self.head
        full_shape = (head.embedding_size, head.num_classes)
        start, stop = head.class_start, head.class_stop
        self.backbone.load_state_dict(state["backbone"], strict=True)
        head_state = state["head"]
        if set(head_state) != {"weight"}:
            raise ValueError(f"{where}: head state has keys {sorted(head_state)}, expected ['weight']")
        head.load_full_weight(_check_full(where, "head.weight", head_state["weight"], full_shape))
        self.loss.load_state_dict(state["loss"], strict=True)
        opt = dict(state["optimizer"])
        opt["state"] = dict(opt["state"])
        for name, idx in _head_param_indices(optimizer, head).items():
            entry = opt["state"].get(idx)
            if entry is not None and entry.get("momentum_buffer") is not None:
                full = _check_full(where, f"optimizer momentum of head.{name}", entry["momentum_buffer"], full_shape)
                opt["state"][idx] = {**entry, "momentum_buffer": full[:, start:stop].clone()}
        optimizer.load_state_dict(opt)


def build_classifier(cfg: Any, env: DistEnv, backbone: nn.Module, num_classes: int) -> ReplicatedClassifier | ShardedClassifier:
    """The classifier `cfg.head.sharded` asks for; the head initialised from the current global RNG.

    Call right after building the backbone from `run.seed`: the replicated head is always created (it
    consumes the RNG exactly as in a replicated run) and, when sharded, sliced into this rank's shard.
    """
    from gbcosface.heads import get_head
    from gbcosface.losses import get_loss

    full_head = get_head(cfg.head.type, cfg.model.embedding_size, num_classes, init=cfg.head.init)
    if cfg.head.sample_rate < 1.0 and not cfg.head.sharded:
        raise ValueError(f"head.sample_rate={cfg.head.sample_rate} needs head.sharded: true")
    if not cfg.head.sharded:
        return ReplicatedClassifier(backbone, full_head, get_loss(cfg.loss.name, **cfg.loss.params), cfg.run.amp, env)
    from gbcosface.sharded import get_sharded_head, get_sharded_loss

    head = get_sharded_head(cfg.head.type, cfg.model.embedding_size, num_classes, env.rank, env.world_size,
                            seed=cfg.run.seed)
    head.load_full_weight(full_head.weight.detach())
    del full_head
    return ShardedClassifier(backbone, head, get_sharded_loss(cfg.loss.name, **cfg.loss.params), cfg.run.amp, env,
                             sample_rate=cfg.head.sample_rate)
