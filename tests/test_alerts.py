"""The alert rules (compose/prometheus/alerts.yml): checked and unit-tested by promtool."""

from __future__ import annotations

import yaml

from ._promtool import PROMETHEUS, metric_names, promtool
from .test_prometheus import exported_metric_names


def _rules() -> list[dict[str, str]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == firing
    assert {
        "TwotierHitRatioLow",
        "TwotierBreakerOpen",
        "TwotierInvalidationLagHigh",
        "TwotierOutboxGrowing",
        "TwotierResyncStorm",
        "TwotierInstanceDown",
    } <= alerts


def test_the_rules_read_only_metrics_the_exporter_exports() -> None:
    exported = exported_metric_names() | {"up"}
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    for rule in _rules():
        unknown = metric_names(rule["expr"]) - exported - recorded
        assert not unknown, (rule.get("alert") or rule.get("record"), unknown)
