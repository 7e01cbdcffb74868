"""The whole-suite audit watch (tests/audit_watch.py) under pytest-xdist: a worker's
figures and broken chains reach the controller, which reports them and fails the run."""

from __future__ import annotations

import types

import pytest

from tests import audit_watch


def test_a_workers_findings_reach_the_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_watch, "_problems", [])
    monkeypatch.setattr(audit_watch, "_counts", dict.fromkeys(audit_watch._counts, 0))
    worker = types.SimpleNamespace(workeroutput={"audit_watch": {
        "counts": {"verified": 2, "entries": 40, "unreadable": 1, "tampered": 0},
        "problems": ["tests/test_x.py::test_y: seq 3: hash mismatch"]}})
    audit_watch.pytest_testnodedown(worker, None)
    audit_watch.pytest_testnodedown(types.SimpleNamespace(workeroutput={}), "crashed")
    assert audit_watch._counts == {"verified": 2, "entries": 40, "unreadable": 1,
                                   "tampered": 0}
    assert audit_watch._problems == ["tests/test_x.py::test_y: seq 3: hash mismatch"]
