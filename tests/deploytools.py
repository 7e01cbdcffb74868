"""Shared by the deployment-artefact tests (deploy/, issue 15): where deploy/ is, and the
tools that check it (kubectl, promtool, systemd-analyze), installed by `make system-deps`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def require_tool(name: str) -> str:
    """The tool's path. Without it: skip, but in CI (CI=true) fail, as for PostgreSQL, so a
    missing tool cannot leave CI green."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (make system-deps)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
