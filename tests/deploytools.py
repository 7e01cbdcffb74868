"""Shared by the deployment-artefact tests (deploy/, issue 15): where deploy/ is, and the
tools that check it (kubectl, promtool, systemd-analyze), installed by `make system-deps`."""

from __future__ import annotations

import os
import re
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


# PromQL words that are not series names: operators, modifiers (functions are recognised by
# the "(" after them).
_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                 "group_left", "group_right", "inf", "nan"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def promql_series(expr: str) -> set[str]:
    """The series names a PromQL expression reads (label matchers, ranges, grouping
    labels, strings and functions left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("("):
            continue  # a function or aggregation
        if match.group(0).lower() not in _PROMQL_WORDS:
            names.add(match.group(0))
    return names


def exported_series(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition (a /metrics body) declares: those it
    has samples for and, from its TYPE lines, those a labelled family will have once used
    (a counter's _total, a histogram's _bucket, _sum and _count)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("", "_sum", "_count"), "gauge": ("",), "untyped": ("",)}
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            base = name.removesuffix("_total") if kind == "counter" else name
            names |= {base + suffix for suffix in suffixes.get(kind, ("",))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names
