"""The typed config: strict validation with errors that name the key, overrides, a stable hash."""

from __future__ import annotations

import pytest

from gbcosface.config import ConfigError, config_hash, from_dict, load_config, recipe_names, to_dict, to_yaml


def test_shipped_recipes_load_and_match_the_paper():
    assert {"demo", "paper"} <= set(recipe_names())
    paper = load_config("paper")
    assert paper.model.name == "iresnet100"
    assert paper.loss.name == "gb_cosface"
    assert paper.loss.params == {"s": 32.0, "margin": 0.16, "alpha": 0.15, "update_rate": 0.01,
                                 "min_cos_v": 0.5, "max_cos_v": 0.7}
    assert (paper.optim.lr, paper.optim.momentum, paper.optim.weight_decay) == (0.1, 0.9, 5e-4)
    assert (paper.schedule.epochs, paper.schedule.milestones, paper.data.batch_size) == (24, [4, 9, 14, 19], 64)
    assert paper.head.num_classes == 85742
    demo = load_config("demo")
    assert demo.model.stem_stride == 2 and demo.run.amp == "none"


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name: iresnet50\n  width: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(path)


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.1\n  momentun: 0.9\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'optim\.momentun'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key 'trainer'"):
        from_dict({"trainer": {}})


@pytest.mark.parametrize(("data", "where"), [
    ({"optim": {"lr": "fast"}}, "optim.lr: expected a number"),
    ({"data": {"batch_size": 6.5}}, "data.batch_size: expected an integer"),
    ({"run": {"compile": "yes"}}, "run.compile: expected true/false"),
    ({"model": {"layers": [1, "x", 1, 1]}}, r"model.layers\[1\]: expected an integer"),
    ({"data": {"val_targets": "lfw"}}, "data.val_targets: expected a list"),
    ({"model": 3}, "model: expected a mapping"),
])
def test_wrong_type_is_named(data, where):
    with pytest.raises(ConfigError, match=where):
        from_dict(data)


def test_semantic_checks():
    with pytest.raises(ConfigError, match="run.amp must be"):
        from_dict({"run": {"amp": "fp8"}})
    with pytest.raises(ConfigError, match="data.batch_size must be positive"):
        from_dict({"data": {"batch_size": 0}})


def test_overrides_parse_as_yaml_and_are_validated():
    cfg = load_config("demo", ["optim.lr=0.05", "model.layers=[2,2,2,2]", "run.compile=true", "data.train_dir=/x"])
    assert cfg.optim.lr == 0.05 and cfg.model.layers == [2, 2, 2, 2] and cfg.run.compile is True
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        load_config("demo", ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config("demo", ["optim.lr"])


def test_hash_is_stable_and_sensitive(tmp_path):
    cfg = load_config("paper")
    # The hash depends on values, not on key order or YAML layout: a round trip keeps it.
    path = tmp_path / "again.yaml"
    path.write_text(to_yaml(cfg))
    assert config_hash(load_config(path)) == config_hash(cfg)
    reordered = dict(reversed(list(to_dict(cfg).items())))
    assert config_hash(from_dict(reordered)) == config_hash(cfg)
    assert config_hash(load_config("paper", ["run.seed=1"])) != config_hash(cfg)
    assert len(config_hash(cfg)) == 64


def test_paper_recipe_is_the_official_float32_run_and_the_amp_recipes_differ_only_in_amp():
    paper = load_config("paper")
    assert paper.run.amp == "none"  # the official run is float32 (was bf16)
    assert paper.head.init == "unit" and paper.model.train_embedding_scale is False
    for amp in ("bf16", "fp16"):
        mixed = to_dict(load_config(f"paper_{amp}"))
        assert mixed["run"].pop("amp") == amp
        assert mixed["run"].pop("output") != paper.run.output
        expected = to_dict(paper)
        del expected["run"]["amp"], expected["run"]["output"]
        assert mixed == expected


def test_defaults_follow_the_official_release():
    from gbcosface.config import TrainConfig

    cfg = TrainConfig()
    assert cfg.run.amp == "none"  # was bf16
    assert cfg.head.init == "unit"  # the official BaseHead (insightface's N(0, 0.01) is head.init=normal)
    with pytest.raises(ConfigError, match="head.init must be unit or normal"):
        from_dict({"head": {"init": "xavier"}})


def test_embedding_scale_is_trained_for_magnitude_aware_losses_and_mobilefacenet():
    from gbcosface.config import MAGNITUDE_AWARE_LOSSES
    from gbcosface.losses import LOSSES

    assert set(MAGNITUDE_AWARE_LOSSES) == {name for name, cls in LOSSES.items() if cls.requires_norms}
    assert from_dict({}).model.train_embedding_scale is False  # iresnet100 + gb_cosface: fixed, as the release
    for loss in MAGNITUDE_AWARE_LOSSES:
        assert from_dict({"loss": {"name": loss}, "head": {"type": "mag"}}).model.train_embedding_scale is True
    assert from_dict({"model": {"name": "mobilefacenet"}}).model.train_embedding_scale is True
    explicit = {"loss": {"name": "magface"}, "model": {"train_embedding_scale": False}}
    assert from_dict(explicit).model.train_embedding_scale is False
