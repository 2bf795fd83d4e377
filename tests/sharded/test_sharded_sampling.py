"""Negative-class sampling (head.sample_rate): which classes are kept, and the loss on them is exact.

The reference is computed independently: the replicated NormLinearHead holding only the kept columns,
labels renumbered into them, and the replicated loss on the concatenated batch (float64).
"""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gbcosface.heads import NormLinearHead
from gbcosface.losses import get_loss
from gbcosface.sharded import get_sharded_head, get_sharded_loss
from gbcosface.sharded.sampling import sample_columns, sample_seed

WORKER = Path(__file__).with_name("sampling_dist_worker.py")
_spec = importlib.util.spec_from_file_location("sampling_dist_worker", WORKER)
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


def _reference(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, kept: torch.Tensor):
    """Loss, dL/dx and dL/dW of the replicated head restricted to the `kept` (sorted) classes."""
    head = NormLinearHead(w.shape[0], kept.numel()).double()
    with torch.no_grad():
        head.weight.copy_(w[:, kept])
    xr = x.clone().requires_grad_(True)
    labels = torch.searchsorted(kept, y)
    assert torch.equal(kept[labels], y), "a positive class was not kept"
    terms = get_loss("gb_cosface")(head(xr), labels)
    terms["loss"].backward()
    w_grad = torch.zeros_like(w)
    w_grad[:, kept] = head.weight.grad
    return terms, xr.grad, w_grad


def test_sampled_columns_keep_every_positive_and_the_rate():
    labels = torch.tensor([3, 3, 17, 40, 41, 99])  # classes of the global batch; this shard owns [10, 60)
    cols = sample_columns(labels, 10, 60, 0.2, seed=5)
    assert cols.numel() == math.ceil(0.2 * 50) and torch.equal(cols, cols.sort().values)
    assert {7, 30, 31} <= set(cols.tolist())  # 17, 40, 41 in local numbering
    assert torch.equal(cols, sample_columns(labels, 10, 60, 0.2, seed=5))  # a function of the seed
    assert not torch.equal(cols, sample_columns(labels, 10, 60, 0.2, seed=sample_seed(0, 1, 10)))
    many = torch.arange(10, 60)
    assert torch.equal(sample_columns(many, 10, 60, 0.2, seed=5), torch.arange(50))  # positives beyond k
    with pytest.raises(ValueError, match=r"head.sample_rate must be in \(0, 1\]"):
        sample_columns(labels, 10, 60, 0.0, seed=5)


def test_sampled_loss_is_the_loss_over_the_kept_classes_at_world_1():
    w, x, y = W.data()
    head = get_sharded_head("linear", W.D, W.C, seed=W.SEED).double()
    head.load_full_weight(w)
    xs = x.clone().requires_grad_(True)
    terms = get_sharded_loss("gb_cosface")(head(xs, y, sample_rate=W.RATE, step=W.STEP))
    terms["loss"].backward()
    kept = sample_columns(y, 0, W.C, W.RATE, sample_seed(W.SEED, W.STEP, 0))
    assert kept.numel() == max(len(set(y.tolist())), math.ceil(W.RATE * W.C)) < W.C
    ref, x_grad, w_grad = _reference(w, x, y, kept)
    torch.testing.assert_close(terms["loss"], ref["loss"].detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms["cos_neg"], ref["cos_neg"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xs.grad, x_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(head.weight.grad, w_grad, rtol=1e-10, atol=1e-12)  # zero outside the kept


def test_rate_1_is_the_unsampled_loss_and_a_rate_that_keeps_all_classes_equals_it():
    w, x, y = W.data()
    head = get_sharded_head("linear", W.D, W.C).double()
    head.load_full_weight(w)
    loss = get_sharded_loss("gb_cosface").eval()
    full = loss(head(x, y))["loss"]
    assert torch.equal(loss(head(x, y, sample_rate=1.0, step=3))["loss"], full)
    all_kept = loss(head(x, y, sample_rate=1.0 - 1e-9, step=3))["loss"]  # ceil(rate C) = C: through the sampler
    torch.testing.assert_close(all_kept, full, rtol=1e-12, atol=1e-12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_two_ranks_sample_their_own_shards_and_the_loss_is_exact(tmp_path: Path):
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / f"r{rank}.pt")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    r = [torch.load(tmp_path / f"r{k}.pt") for k in range(2)]
    kept = torch.cat([r[0]["kept"], r[1]["kept"]])
    assert r[1]["start"] == 12 and (r[0]["kept"] < 12).all() and (r[1]["kept"] >= 12).all()  # 12 + 11 classes
    for k, (lo, hi) in enumerate(((0, 12), (12, 23))):  # k = max(owned positives, ceil(rate x local))
        owned = len({c for c in W.data()[2].tolist() if lo <= c < hi})
        assert r[k]["kept"].numel() == max(owned, math.ceil(W.RATE * (hi - lo)))
    w, x, y = W.data()
    ref, x_grad, w_grad = _reference(w, x, y, kept)
    for k in range(2):
        torch.testing.assert_close(r[k]["loss"], ref["loss"].detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r[k]["cos_v"], ref["cos_v"], rtol=1e-12, atol=1e-12)
        a = sum(W.SIZES[:k])
        torch.testing.assert_close(r[k]["x_grad"], x_grad[a:a + W.SIZES[k]], rtol=1e-10, atol=1e-12)
        lo = r[k]["start"]
        torch.testing.assert_close(r[k]["w_grad"], w_grad[:, lo:lo + r[k]["w_grad"].shape[1]], rtol=1e-10, atol=1e-12)
