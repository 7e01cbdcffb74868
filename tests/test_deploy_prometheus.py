"""deploy/prometheus (issue 15): `promtool check rules` accepts the rules, `promtool test
rules` passes, and every alert has a unit test in which it fires and one in which it stays
silent. Whether the series they read are exported: conformance/test_deploy_metrics.py,
against a live /metrics."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from tests.deploytools import DEPLOY, require_tool

PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "vcc-pki-rules.yml"
TESTS = PROMETHEUS / "vcc-pki-rules.test.yml"


def promtool(*args: str) -> str:
    result = subprocess.run([require_tool("promtool"), *args], cwd=PROMETHEUS,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    assert "SUCCESS" in promtool("check", "rules", RULES.name)


def test_promtool_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", TESTS.name)


def test_every_alert_is_tested_firing_and_silent() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert {"VccPkiIssuanceFailures", "VccPkiOcspLatencyHigh", "VccPkiCrlNotRenewed",
            "VccPkiCaCertificateExpiring", "VccPkiSigningErrors",
            "VccPkiAuditChainBroken"} <= alerts
    firing: set[str] = set()
    silent: set[str] = set()
    for test in yaml.safe_load(TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else silent).add(case["alertname"])
    assert alerts - firing == set(), "alerts never seen firing"
    assert alerts - silent == set(), "alerts never seen silent"


def test_every_alert_has_severity_and_text() -> None:
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
