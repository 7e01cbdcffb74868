"""The Grafana dashboard and the Prometheus rules in deploy/ (issue 15) read only series
that a gateway started the normal way exports on /metrics: no panel can go blank and no
alert can stay silent because of a misspelt or missing series name."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conformance.gateway import Gateway, running_gateway
from tests.deploytools import DEPLOY, exported_series, promql_series

DASHBOARD = DEPLOY / "grafana" / "vcc-pki-dashboard.json"
RULES = DEPLOY / "prometheus" / "vcc-pki-rules.yml"
# Series that Prometheus itself makes for every scrape target.
SCRAPE_SERIES = {"up"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    data_dir: Path = tmp_path_factory.mktemp("metrics") / "data"
    with running_gateway(data_dir) as gateway:
        yield exported_series(_metrics(gateway))


def _metrics(gateway: Gateway) -> str:
    with urllib.request.urlopen(f"{gateway.http_url}/metrics", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def test_dashboard_series_are_exported(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used: dict[str, set[str]] = {}
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            names = promql_series(target["expr"])
            assert names, f"{panel['title']}: no series in {target['expr']}"
            used.setdefault(panel["title"], set()).update(names)
    assert len(used) >= 15
    missing = {title: names - exported for title, names in used.items() if names - exported}
    assert missing == {}, missing


def test_rule_series_are_exported_or_recorded(exported: set[str]) -> None:
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"]
             for rule in group["rules"]]
    recorded = {rule["record"] for rule in rules if "record" in rule}
    for rule in rules:
        names = promql_series(rule["expr"])
        missing = names - exported - recorded - SCRAPE_SERIES
        assert missing == set(), f"{rule.get('alert') or rule.get('record')}: {missing}"
