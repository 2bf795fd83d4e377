"""save_backbone / load_backbone: round trip, official-layout checkpoints, clear errors."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from gbcosface.models import BackboneLoadError, get_backbone, load_backbone, save_backbone


def tiny(**kw):
    args = dict(embedding_size=16, width=4, layers=[1, 1, 1, 1], stem_stride=2)
    args.update(kw)
    return get_backbone("iresnet18", **args)


def perturb_running_stats(model):
    """Make BN buffers non-default so a round trip that lost them would show."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.num_batches_tracked.fill_(7)


def test_round_trip_with_sidecar(tmp_path):
    model = tiny()
    perturb_running_stats(model)
    path = save_backbone(model, tmp_path / "model" / "backbone.pt")
    side = tmp_path / "model" / "backbone.json"
    assert json.loads(side.read_text()) == {
        "name": "iresnet18", "embedding_size": 16, "dropout": 0.0, "width": 4,
        "layers": [1, 1, 1, 1], "stem_stride": 2, "fp16": False, "train_embedding_scale": None,
    }
    # only tensors inside: loadable with weights_only=True
    raw = torch.load(path, weights_only=True)
    assert set(raw) == set(model.state_dict()) and all(isinstance(v, torch.Tensor) for v in raw.values())
    loaded = load_backbone(path)
    assert not loaded.training
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    assert loaded.layer1[0].bn1.num_batches_tracked.item() == 7
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["backbone.json", "backbone.pt"]  # no temp files


def test_overwrite_is_atomic_replace(tmp_path):
    path = tmp_path / "backbone.pt"
    save_backbone(tiny(), path)
    second = tiny()
    with torch.no_grad():
        second.fc.weight.fill_(0.5)
    save_backbone(second, path)
    assert torch.all(load_backbone(path).fc.weight == 0.5)


@pytest.fixture
def official_checkpoint(official_layout):
    """A random checkpoint in the official key layout (names/shapes from the plain listing)."""
    return lambda blocks, width, emb, spatial: _random_state(official_layout(blocks, width, emb, spatial))


def _random_state(layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in layout.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(100, dtype=torch.long)
        else:
            state[name] = torch.randn(shape, generator=gen)
    return state


def test_official_layout_checkpoint_loads_strictly_with_ddp_prefix_and_nesting(tmp_path, official_checkpoint):
    state = official_checkpoint([2, 2, 2, 2], width=64, emb=512, spatial=7)
    path = tmp_path / "backbone_paper.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = load_backbone(path, name="iresnet18")
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_official_checkpoint_without_sidecar_or_name_is_inferred(tmp_path, official_checkpoint):
    state = official_checkpoint([3, 4, 14, 3], width=4, emb=32, spatial=4)
    path = tmp_path / "r50_tiny.pth"
    torch.save(state, path)
    model = load_backbone(path)
    assert model.arch == {"name": "iresnet50", "embedding_size": 32, "dropout": 0.0, "width": 4,
                          "layers": None, "stem_stride": 2, "fp16": False, "train_embedding_scale": None}


def test_checkpoint_without_num_batches_tracked_still_loads(tmp_path, official_checkpoint):
    """Older insightface checkpoints lack num_batches_tracked; BatchNorm fills it in."""
    state = {k: v for k, v in official_checkpoint([1, 1, 1, 1], 4, 16, 4).items() if "num_batches" not in k}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    load_backbone(path, name="iresnet18", width=4, layers=[1, 1, 1, 1], embedding_size=16, stem_stride=2)


def test_mismatch_names_the_file_and_keys(tmp_path):
    path = tmp_path / "backbone.pt"
    save_backbone(tiny(), path)
    with pytest.raises(BackboneLoadError, match=r"backbone\.pt.*(does not fit|missing)"):
        load_backbone(path, layers=[2, 1, 1, 1])  # sidecar overridden: layer1.1.* missing
    state = torch.load(path, weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "extra.pt"
    torch.save(state, bad)
    with pytest.raises(BackboneLoadError, match=r"extra\.pt.*unexpected keys \['extra\.weight'\]"):
        load_backbone(bad, name="iresnet18", embedding_size=16, width=4, layers=[1, 1, 1, 1], stem_stride=2)
    with pytest.raises(BackboneLoadError, match="size mismatch"):
        load_backbone(path, embedding_size=8)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(BackboneLoadError, match="no such backbone file"):
        load_backbone(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneLoadError, match="junk.pt"):
        load_backbone(junk, name="iresnet18")
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as fh:
        # A reference to a module-level callable (never called): unpickling it needs code. Not
        # `print`, which KFP's local runner may have swapped for a closure that cannot be pickled.
        pickle.dump({"fc.weight": torch.zeros(1), "hook": json.dumps}, fh)
    with pytest.raises(BackboneLoadError, match="weights_only"):
        load_backbone(evil, name="iresnet18")
    unknown = tmp_path / "unknown.pt"
    torch.save({"a.weight": torch.zeros(2)}, unknown)
    with pytest.raises(BackboneLoadError, match="not an iresnet layout"):
        load_backbone(unknown)
    with pytest.raises(ValueError, match="no arch"):
        save_backbone(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_mobilefacenet_round_trip(tmp_path):
    model = get_backbone("mobilefacenet", embedding_size=16, width=8)
    perturb_running_stats(model)
    path = save_backbone(model, tmp_path / "mfn.pt")
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(load_backbone(path)(x), model.eval()(x), rtol=0, atol=0)
