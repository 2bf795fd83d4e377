"""The PrometheusRule: valid for promtool, every alert unit-tested, and the tests bite."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from gbcosface.monitoring import TrainingMetrics
from gbcosface.monitoring.prometheus_local import extract_rule_groups, write_rules_file

from .prom import PROMETHEUS_RULE, REPO, promtool

ALERTS_TEST = Path(__file__).with_name("alerts_test.yml")
DASHBOARD = REPO / "k8s" / "monitoring" / "dashboards" / "gbcosface-training.json"
PHASE_GUARDED = {
    "GbcosfaceGpuUnderutilized",
    "GbcosfaceGpuUnderutilizedNvml",
    "GbcosfaceTrainingStalled",
    "GbcosfaceDataStarved",
}


def alert_rules(groups: dict) -> dict[str, dict]:
    return {r["alert"]: r for g in groups["groups"] for r in g["rules"] if "alert" in r}


def write_unit_test(rules: dict, workdir: Path) -> Path:
    """rules.yml + alerts_test.yml in ``workdir``, each expected alert given its rule's description."""
    (workdir / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    descriptions = {name: r["annotations"]["description"] for name, r in alert_rules(rules).items()}
    test = yaml.safe_load(ALERTS_TEST.read_text())
    for group in test["tests"]:
        for case in group.get("alert_rule_test", []):
            for exp in case["exp_alerts"]:
                exp.setdefault("exp_annotations", {})["description"] = descriptions[case["alertname"]]
    path = workdir / "alerts_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    return path


@pytest.mark.integration
def test_promtool_check_rules(tmp_path):
    rules = write_rules_file(PROMETHEUS_RULE, tmp_path / "rules.yml")
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr
    n_rules = sum(len(g["rules"]) for g in extract_rule_groups(PROMETHEUS_RULE)["groups"])
    assert f"SUCCESS: {n_rules} rules found" in result.stdout


@pytest.mark.integration
def test_alert_unit_tests_pass(tmp_path):
    path = write_unit_test(extract_rule_groups(PROMETHEUS_RULE), tmp_path)
    result = promtool("test", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case():
    alerts = alert_rules(extract_rule_groups(PROMETHEUS_RULE))
    cases = [
        c for g in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for c in g.get("alert_rule_test", [])
    ]
    for name in alerts:
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no case where it stays quiet"


def test_every_alert_is_actionable():
    for name, rule in alert_rules(extract_rule_groups(PROMETHEUS_RULE)).items():
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: needs a `for` duration"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"].strip(), name
        description = rule["annotations"]["description"]
        assert len(description) > 150, f"{name}: the description should say what to do"
        # test_alert_unit_tests_pass copies descriptions verbatim, which is exact only without templates.
        assert "{{" not in description, f"{name}: keep templates in the summary"


def _mutated_run(tmp_path: Path, name: str, mutate) -> int:
    rules = extract_rule_groups(PROMETHEUS_RULE)
    rule = alert_rules(rules)[name]
    rule["expr"] = mutate(rule["expr"])
    workdir = tmp_path / name
    workdir.mkdir()
    return promtool("test", "rules", write_unit_test(rules, workdir)).returncode


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(alert_rules(extract_rule_groups(PROMETHEUS_RULE))))
def test_unit_tests_notice_an_alert_that_never_fires(tmp_path, name):
    assert _mutated_run(tmp_path, name, lambda expr: "vector(1) == 2") != 0


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(PHASE_GUARDED))
def test_unit_tests_notice_a_missing_training_phase_guard(tmp_path, name):
    def drop_guard(expr: str) -> str:
        assert 'phase="training"' in expr
        return expr.replace('phase="training"', 'phase=~".+"')  # any phase whose gauge is 1

    assert _mutated_run(tmp_path, name, drop_guard) != 0


def _exported_names() -> set[str]:
    """Every series name the exporter can produce (GPU gauges have no samples without a GPU)."""
    m = TrainingMetrics(1, "j", 0, 0, "n")  # never started: only its registry is read
    m.observe_step(1, 0, 1, 0.1, 0.0, {"loss": 1.0}, cos_v=0.1, lr=0.1)
    m.set_validation("lfw", 0.9, xnorm=1.0)
    names = set()
    for family in m.registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_rules_and_dashboard_only_use_exported_metrics():
    exported = _exported_names()
    recorded = {
        r["record"]
        for g in extract_rule_groups(PROMETHEUS_RULE)["groups"]
        for r in g["rules"]
        if "record" in r
    }
    for source in (PROMETHEUS_RULE, DASHBOARD):
        used = set(re.findall(r"\bgbcosface[a-z_:]*", source.read_text()))
        used -= {"gbcosface", "gbcosface-training"}
        unknown = {n for n in used if n not in exported and n not in recorded and not n.endswith(":")}
        assert not unknown, f"{source.name} uses metrics nobody exports: {sorted(unknown)}"


def test_promtool_is_required_not_skipped(monkeypatch):
    """Without promtool on PATH the helper fails the test with the install hint."""
    monkeypatch.setenv("PATH", "")
    assert shutil.which("promtool") is None
    with pytest.raises(pytest.fail.Exception, match="make prometheus"):
        promtool("--version")
