"""train/classifier.py in one process: both classifiers compute the same loss, gradients, clipping and state.

The two paths are compared in float64 (the `float64` fixture sets torch's default dtype, and every
module of the classifier follows it): they differ only in the order of reductions, which in float32
left them ~1e-4 relative apart with the unit-norm head init (cancellation in the gradient), a
tolerance that depends on the CPU's kernels. In float64 the same rounding is ~1e-13, so TIGHT
(rtol 1e-9) holds on any machine, and a wrong shard, scale or sync (off by O(1)) still fails.
The multi-rank behaviour (exactness on 2 gloo ranks, resharding on resume) is in test_sharded_training.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from gbcosface.config import from_dict
from gbcosface.train.classifier import ReplicatedClassifier, ShardedClassifier, build_classifier
from gbcosface.train.distributed import DistEnv
from gbcosface.train.optim import build_optimizer

ENV = DistEnv(0, 0, 1, 1, torch.device("cpu"), None)
D, C, B = 6, 11, 5
TIGHT = {"rtol": 1e-9, "atol": 1e-12}


@pytest.fixture
def float64():
    """torch's default dtype float64 for one test (restored after)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _cfg(sharded: bool, loss: str = "gb_cosface", head: str = "linear"):
    return from_dict({"model": {"embedding_size": D}, "head": {"type": head, "sharded": sharded},
                      "loss": {"name": loss}, "run": {"amp": "none"}})


def _pair(loss: str = "gb_cosface", head: str = "linear"):
    """The same backbone and seeded head, built once replicated and once sharded."""
    out = []
    for sharded in (False, True):
        torch.manual_seed(7)
        backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, D))
        out.append(build_classifier(_cfg(sharded, loss, head), ENV, backbone, C))
    return out


def _opt(clf):
    cfg = _cfg(clf.sharded).optim
    return build_optimizer(clf.backbone, clf.head, cfg, 0.1, 0.1)


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 3, 2, 2, generator=g), torch.randint(0, C, (B,), generator=g)


def test_sharded_head_starts_from_the_replicated_heads_matrix():
    rep, sh = _pair()
    assert isinstance(rep, ReplicatedClassifier) and isinstance(sh, ShardedClassifier)
    assert torch.equal(rep.head.weight, sh.head.weight)
    assert torch.equal(rep.backbone[1].weight, sh.backbone[1].weight)


@pytest.mark.parametrize(("loss", "head"), [("gb_cosface", "linear"), ("cosface", "linear"),
                                            ("arcface", "linear"), ("magface", "mag"), ("gb_magface", "mag")])
def test_both_classifiers_give_the_same_loss_and_gradients(loss, head, float64):
    rep, sh = _pair(loss, head)
    x, y = _batch()
    grads = []
    for clf in (rep, sh):
        clf.train()
        terms = clf.loss_terms(x, y)
        terms["loss"].backward()
        grads.append((terms["loss"].detach(), clf.head.weight.grad.clone(), clf.backbone[1].weight.grad.clone()))
    for a, b in zip(grads[0], grads[1], strict=True):
        assert a.dtype == b.dtype == torch.float64
        torch.testing.assert_close(a, b, **TIGHT)


def test_sharded_clipping_equals_torchs_clip_grad_norm(float64):
    rep, sh = _pair()
    x, y = _batch()
    norms = []
    for clf in (rep, sh):
        clf.loss_terms(x, y)["loss"].backward()
        norms.append(clf.clip_grad_norm_(1e-3))  # far below the norm: the clip is active
    torch.testing.assert_close(torch.tensor(norms[0]), torch.tensor(norms[1]), **TIGHT)
    assert norms[0] > 1e-3
    torch.testing.assert_close(rep.head.weight.grad, sh.head.weight.grad, **TIGHT)
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in (*sh.backbone.parameters(), sh.head.weight)))
    torch.testing.assert_close(total, torch.tensor(1e-3), rtol=1e-6, atol=0)  # torch clips to max_norm/(norm+1e-6)


def test_full_state_moves_between_the_two_paths(float64):
    rep, sh = _pair()
    x, y = _batch()
    opts = []
    for clf in (rep, sh):
        opt = _opt(clf)
        for _ in range(2):  # momentum buffers exist after the first step
            opt.zero_grad()
            clf.loss_terms(x, y)["loss"].backward()
            opt.step()
        opts.append(opt)
    s_rep, s_sh = rep.full_state(opts[0]), sh.full_state(opts[1])
    assert set(s_sh) == set(s_rep) == {"backbone", "head", "loss", "optimizer"}
    assert s_sh["head"]["weight"].shape == (D, C)
    torch.testing.assert_close(s_sh["head"]["weight"], s_rep["head"]["weight"], **TIGHT)
    torch.testing.assert_close(s_sh["optimizer"]["state"][2]["momentum_buffer"],
                               s_rep["optimizer"]["state"][2]["momentum_buffer"], **TIGHT)
    # cross-load: the replicated state into the sharded classifier and back
    fresh_rep, fresh_sh = _pair()
    o_rep, o_sh = _opt(fresh_rep), _opt(fresh_sh)
    fresh_sh.load_full_state(copy.deepcopy(s_rep), o_sh, "ckpt")
    fresh_rep.load_full_state(copy.deepcopy(s_sh), o_rep, "ckpt")
    assert torch.equal(fresh_sh.head.weight, s_rep["head"]["weight"])
    assert torch.equal(o_sh.state[fresh_sh.head.weight]["momentum_buffer"],
                       s_rep["optimizer"]["state"][2]["momentum_buffer"])
    assert torch.equal(fresh_rep.head.weight, s_sh["head"]["weight"])


def test_load_full_state_names_the_checkpoint_and_the_bad_tensor():
    rep, sh = _pair()
    state = rep.full_state(_opt(rep))
    state["head"]["weight"] = state["head"]["weight"][:, :5]
    with pytest.raises(ValueError, match=r"s3://b/step-0000007: head.weight must be a full head tensor of shape \(6, 11\)"):
        sh.load_full_state(state, _opt(sh), "s3://b/step-0000007")


def test_sample_rate_needs_the_sharded_head():
    from gbcosface.config import ConfigError

    with pytest.raises(ConfigError, match="head.sample_rate < 1 needs head.sharded: true"):
        from_dict({"head": {"sample_rate": 0.5}})
    with pytest.raises(ConfigError, match=r"head.sample_rate must be in \(0, 1\]"):
        from_dict({"head": {"sharded": True, "sample_rate": 1.5}})


def test_a_sampled_run_resumes_bitwise_because_the_draw_is_a_function_of_the_step(tmp_path, tiny_trainset):
    """head.sample_rate in the trainer (one process): 6 steps straight vs 3 + resume + 3, bitwise equal."""
    import shutil

    from gbcosface.train import checkpoint
    from gbcosface.train.trainer import Trainer

    from .conftest import tiny_config

    def train(name: str, steps: int) -> dict:
        cfg = tiny_config(tiny_trainset, str(tmp_path / name), head={"type": "linear", "sharded": True,
                                                                     "sample_rate": 0.3},
                          run={"checkpoint_every": 3}, schedule={"max_steps": steps})
        summary = Trainer(from_dict(cfg), ENV).run()
        assert summary["steps"] == steps and math.isfinite(summary["final_loss_terms"]["loss"])
        return checkpoint.read_file(checkpoint.latest_complete(str(tmp_path / name)), checkpoint.STATE_FILE)

    straight = train("straight", 6)
    train("first", 3)
    shutil.copytree(tmp_path / "first" / "checkpoints", tmp_path / "resumed" / "checkpoints")
    resumed = train("resumed", 6)
    for part in ("backbone", "head"):
        for k, t in straight[part].items():
            assert torch.equal(t, resumed[part][k]), f"{part}.{k}"
    momentum = straight["optimizer"]["state"]
    for idx, entry in momentum.items():
        assert torch.equal(entry["momentum_buffer"], resumed["optimizer"]["state"][idx]["momentum_buffer"])


def test_the_classifier_keeps_float64_from_the_batch_to_the_loss(float64):
    """What makes the float64 comparisons above (and test_sharded_training's float64 runs) mean float64:
    the batch, both heads' weights, the cosines and the loss follow the default dtype instead of
    being cast to float32 on the way (FaceModel's `.float()` and the sharded head's float32 init did)."""
    from gbcosface.data.train_set import prepare_batch

    x = prepare_batch(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "cpu", 0, 0)
    assert x.dtype == torch.float64
    for clf in _pair():
        assert clf.head.weight.dtype == torch.float64, type(clf).__name__
        seen: list = []
        handle = clf.loss.register_forward_hook(lambda m, args, out, seen=seen: seen.append(args[0]))
        terms = clf.loss_terms(*_batch())
        handle.remove()
        cos = seen[0] if isinstance(seen[0], torch.Tensor) else seen[0].cos  # ShardedCosines
        assert cos.dtype == torch.float64 and terms["loss"].dtype == torch.float64, type(clf).__name__
