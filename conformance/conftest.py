"""Every test under conformance/ drives real clients: mark them so `-m conformance` picks
them; `make test` runs them too."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "conformance" in item.nodeid.split("::")[0]:
            item.add_marker(pytest.mark.conformance)
