"""The whole-suite secret watch (tests/secret_watch.py) itself: it finds a handed-out
secret in a log line, as a whole token or its secret part, and nothing else."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from ca_core.authority import CreatedToken
from ca_core.records import ApiToken
from tests import secret_watch


def test_the_watch_finds_a_logged_secret(tmp_path: Path) -> None:
    token = CreatedToken("vcc.0123456789abcdef.Zy2iQLkf_h1NLysTnJMlSTnsIvEY14y-12qGWT9Sxr0",
                         ApiToken.__new__(ApiToken))
    assert secret_watch._SECRETS[token.token] == "API token"  # recorded when made
    log = tmp_path / "log.txt"
    log.write_text("INFO a: token id 0123456789abcdef created\n"
                   "WARNING b: bad header 'Bearer Zy2iQLkf_h1NLysTnJMlSTnsIvEY14y-12qGWT9Sxr0'\n"
                   f"ERROR c: {token.token}\n")
    found = secret_watch.leaks(log)
    assert [line.split(" in: ")[1][:9] for line in found] == ["WARNING b", "ERROR c: "]


def test_a_workers_findings_reach_the_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under pytest-xdist each worker watches its own process; what it reports when it
    goes down is added to the controller's figures, which fail the run."""
    monkeypatch.setattr(secret_watch, "_worker_secrets", [])
    monkeypatch.setattr(secret_watch, "_worker_found", [])
    worker = types.SimpleNamespace(workeroutput={"secret_watch": {
        "secrets": 3, "found": ["API token in: ERROR c: vcc.x"]}})
    secret_watch.pytest_testnodedown(worker, None)
    secret_watch.pytest_testnodedown(types.SimpleNamespace(workeroutput={}), "crashed")
    assert secret_watch._worker_secrets == [3]
    assert secret_watch._worker_found == ["API token in: ERROR c: vcc.x"]
