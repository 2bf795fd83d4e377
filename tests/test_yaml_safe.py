"""One bounded YAML loader: alias bombs, recursive aliases, oversized and non-UTF-8 input are refused
with an error naming the source, in every place that reads YAML a user or a pipeline hands us."""

from __future__ import annotations

import pytest

from gbcosface.config import ConfigError, load_config, parse_override
from gbcosface.launch.profile import ProfileError, parse_cluster_profile
from gbcosface.yaml_safe import MAX_YAML_NODES, YAMLInputError, load_yaml, load_yaml_all, read_yaml_file


def bomb(levels: int = 9, width: int = 10) -> str:
    """A "billion laughs" document: `width ** levels` leaves from a few hundred bytes."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_anything_walks_it():
    with pytest.raises(YAMLInputError, match=r"bomb\.yaml: the document expands to more than 1,000,000 nodes"):
        load_yaml(bomb(), "bomb.yaml")


def test_aliases_within_the_bound_still_load_and_share_nothing_surprising():
    data = load_yaml("base: &b {x: 1}\nother: *b\nlist: [*b, *b]\n", "ok.yaml")
    assert data == {"base": {"x": 1}, "other": {"x": 1}, "list": [{"x": 1}, {"x": 1}]}
    # A document just under the bound loads; one node more is refused (the bound is exact, not a guess).
    assert load_yaml(bomb(levels=5, width=10), "b.yaml")["a5"][0][0][0][0][0] == "lol"


def test_the_node_bound_counts_expanded_nodes_exactly():
    # levels=2, width=3: a0 scalar (1) ; a1 = seq of 3 a0 (4) ; a2 = seq of 3 a1 (13); mapping of 3 keys+values.
    text = bomb(levels=2, width=3)
    total = 1 + (1 + 1) + (1 + 4) + (1 + 13)  # the mapping, then key+value per entry
    assert load_yaml(text, "x", max_nodes=total) is not None
    with pytest.raises(YAMLInputError, match="expands to more than"):
        load_yaml(text, "x", max_nodes=total - 1)
    assert MAX_YAML_NODES == 1_000_000


def test_a_recursive_alias_is_refused():
    with pytest.raises(YAMLInputError, match=r"loop\.yaml:1: a YAML alias refers to itself"):
        load_yaml("&a [1, *a]\n", "loop.yaml")


def test_oversized_and_non_utf8_input_is_refused_naming_the_file(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("x: " + "y" * 2000 + "\n")
    with pytest.raises(YAMLInputError, match=r"big\.yaml: more than 1,000 bytes of YAML"):
        read_yaml_file(big, max_bytes=1000)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(YAMLInputError, match=r"latin\.yaml: not UTF-8 text \(byte 16\)"):
        read_yaml_file(latin)


def test_multi_document_streams_are_bounded_per_document():
    assert load_yaml_all("a: 1\n---\nb: 2\n", "m.yaml") == [{"a": 1}, {"b": 2}]
    with pytest.raises(YAMLInputError, match=r"m\.yaml: the document expands"):
        load_yaml_all("a: 1\n---\n" + bomb(), "m.yaml")


def test_a_training_config_with_a_bomb_in_loss_params_is_refused(tmp_path):
    path = tmp_path / "bomb.yaml"
    inner = bomb().replace("\n", "\n  ")
    path.write_text("loss:\n  name: gb_cosface\n  params:\n    " + inner.replace("\n  ", "\n    ") + "\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml: the document expands to more than"):
        load_config(path)


def test_a_non_utf8_config_names_the_file(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml: not UTF-8 text"):
        load_config(path)


def test_an_override_with_a_bomb_is_refused():
    with pytest.raises(ConfigError, match=r"override .*expands to more than"):
        parse_override("loss.params=" + "{" + bomb().strip().replace("\n", ", ") + "}")


def test_a_cluster_profile_with_a_bomb_in_toleration_values_is_refused():
    profile = bomb() + "tolerations:\n  - key: x\n    operator: Equal\n    value: *a9\n"
    with pytest.raises(ProfileError, match=r"cluster profile is not valid YAML: cluster profile: the document expands to more than"):
        parse_cluster_profile(profile)
