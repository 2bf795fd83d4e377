"""The sharded head + losses on two real gloo ranks against one process with the full head.

The reference is computed here, in the test process, with gbcosface.heads and gbcosface.losses (the
replicated modules, no process group) on the concatenated global batch. Compared in float64: every
loss output, dL/dx for each rank's local embeddings, dL/dW for each rank's weight shard, cos_v; and
three SGD steps of DDP(linear backbone) + sharded head against the single-process training.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gbcosface.heads import get_head
from gbcosface.losses import get_loss
from gbcosface.sharded import class_range, init_full_weight

WORKER = Path(__file__).with_name("sharded_dist_worker.py")
WORLD = 2
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def load_worker():
    spec = importlib.util.spec_from_file_location("sharded_dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


W = load_worker()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Run both ranks once for the whole module; their saved results."""
    out = tmp_path_factory.mktemp("sharded")
    port = free_port()
    procs = []
    for rank in range(WORLD):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out / f"rank{rank}.pt")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, p in enumerate(procs):
        assert p.returncode == 0, f"rank {rank} failed:\n{logs[rank]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def reference_head_and_loss(name: str) -> list[dict]:
    """The replicated head and loss on the concatenated batch, one process."""
    head = get_head(W.head_type(name), W.D, W.C).double()
    with torch.no_grad():
        head.weight.copy_(W.full_weight())
    loss = get_loss(name, **W.LOSS_PARAMS[name]).train()
    steps = []
    for step in range(W.STEPS):
        parts = [W.batch(r, step) for r in range(WORLD)]
        x = torch.cat([p[0] for p in parts]).requires_grad_(True)
        labels = torch.cat([p[1] for p in parts])
        head.zero_grad()
        out = head(x)
        cos, norms = out if isinstance(out, tuple) else (out, None)
        res = loss(cos, labels, norms)
        res["loss"].backward()
        record = {k: v.item() for k, v in res.items()}
        record["grad_x"] = list(x.grad.split(list(W.SIZES)))
        record["grad_w"] = head.weight.grad.clone()
        record["cos_v_after"] = loss.cos_v.item() if hasattr(loss, "cos_v") else None
        record["labels"] = labels
        steps.append(record)
    return steps


@pytest.mark.integration
@pytest.mark.parametrize("name", list(W.LOSS_PARAMS))
def test_loss_and_gradients_equal_the_full_head(ranks, name):
    ref = reference_head_and_loss(name)
    for step, r in enumerate(ref):
        owners = {0 if int(y) < class_range(W.C, 0, WORLD)[1] else 1 for y in r["labels"]}
        assert owners == {0, 1}, "the batch must have positives on both shards"
        assert r["grad_w"].abs().max() > 1e-4 and all(g.abs().max() > 1e-6 for g in r["grad_x"])
        for rank in range(WORLD):
            got = ranks[rank]["head_and_loss"][name][step]
            scalars = {k for k, v in r.items() if isinstance(v, float)}
            assert scalars == {k for k, v in got.items() if isinstance(v, float)}
            for key in scalars:
                assert got[key] == pytest.approx(r[key], rel=1e-10, abs=1e-12), (name, step, rank, key)
            torch.testing.assert_close(got["grad_x"], r["grad_x"][rank], **TIGHT)
            start, stop = class_range(W.C, rank, WORLD)
            torch.testing.assert_close(got["grad_w"], r["grad_w"][:, start:stop], **TIGHT)
        # every rank computes the same global loss, bit for bit (cos_v needs no all-reduce)
        a, b = (ranks[k]["head_and_loss"][name][step] for k in range(WORLD))
        assert {k: v for k, v in a.items() if not isinstance(v, torch.Tensor)} == \
               {k: v for k, v in b.items() if not isinstance(v, torch.Tensor)}


@pytest.mark.integration
def test_cos_v_moves_inside_the_clamp_range(ranks):
    """Guards the test data: the GB boundary is initialised and updated, not pinned at a clamp bound."""
    values = [s["cos_v_after"] for s in ranks[0]["head_and_loss"]["gb_cosface"]]
    assert all(0.5 < v < 0.8 for v in values) and len(set(values)) == len(values)


def reference_sgd(name: str) -> dict:
    model = W.backbone()
    head = get_head("linear", W.D, W.C).double()
    with torch.no_grad():
        head.weight.copy_(init_full_weight(W.D, W.C, W.WEIGHT_SEED))  # float32, as the sharded head
    loss = get_loss(name, **W.LOSS_PARAMS[name]).train()
    opt = torch.optim.SGD([{"params": model.parameters()}, {"params": head.parameters()}], **W.SGD)
    losses = []
    for step in range(W.STEPS):
        parts = [W.sgd_batch(r, step) for r in range(WORLD)]
        value = loss(head(model(torch.cat([p[0] for p in parts]))), torch.cat([p[1] for p in parts]))["loss"]
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    return {"losses": losses, "backbone": model.state_dict(), "head_full": head.weight.detach()}


@pytest.mark.integration
@pytest.mark.parametrize("name", W.SGD_LOSSES)
def test_ddp_backbone_with_sharded_head_trains_like_one_process(ranks, name):
    ref = reference_sgd(name)
    for rank in range(WORLD):
        got = ranks[rank]["sgd"][name]
        assert got["losses"] == pytest.approx(ref["losses"], rel=1e-10)
        for key, value in ref["backbone"].items():
            torch.testing.assert_close(got["backbone"][key], value, **TIGHT)
        torch.testing.assert_close(got["head_full"], ref["head_full"], **TIGHT)
    # the grad_scale = world_size compensation is what makes it equal: without it the backbone lags
    start = W.backbone().weight.detach()
    unscaled = ranks[0]["sgd_unscaled"][name]["backbone"]["weight"]
    moved, moved_unscaled = (ref["backbone"]["weight"] - start).norm(), (unscaled - start).norm()
    assert moved > 1e-3
    assert (unscaled - ref["backbone"]["weight"]).norm() > 0.1 * moved
    assert moved_unscaled < moved


@pytest.mark.integration
def test_full_weight_gathered_from_uneven_shards(ranks):
    full = torch.arange(W.D * W.C, dtype=torch.float64).reshape(W.D, W.C)
    for rank in range(WORLD):
        torch.testing.assert_close(ranks[rank]["gathered"], full, rtol=0, atol=0)
