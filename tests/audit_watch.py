"""Issue 13: the audit chain verifies after the whole suite.

Loaded for every pytest run (the root conftest.py). Every SQL store the suite opens in this
process (SQLite files and throwaway PostgreSQL databases alike) has its whole audit chain
verified (``db.audit_chain.verify_chain``, as ``vcc-pki audit verify`` does) when it is
closed, after whatever the test did through every protocol. A broken chain fails the run,
naming the test. Tests that break a chain on purpose (tamper tests) carry the marker
``tampers_audit``; a store that cannot be read at close (a fault test took its database
away) is counted, not judged.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

_problems: list[str] = []
_counts = {"verified": 0, "entries": 0, "unreadable": 0, "tampered": 0}
_current: pytest.Item | None = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    global _current
    _current = item
    try:
        return (yield)
    finally:
        _current = None


def _tampering() -> bool:
    return _current is not None and _current.get_closest_marker("tampers_audit") is not None


async def _verify(store: Any) -> None:
    from db.audit_chain import verify_chain

    if _tampering():
        _counts["tampered"] += 1
        return
    try:
        entries: list[Any] = []
        after = 0
        while batch := await store.audit_entries(after_seq=after, limit=10_000):
            entries += batch
            after = batch[-1].seq
        head = await store.audit_head()
    except Exception:  # a database the test stopped or dropped: nothing to judge
        _counts["unreadable"] += 1
        return
    problems = verify_chain(entries, head)
    _counts["verified"] += 1
    _counts["entries"] += len(entries)
    if problems:
        where = _current.nodeid if _current is not None else "(outside a test)"
        _problems.append(f"{where}: " + "; ".join(f"seq {p.seq}: {p.problem}"
                                                  for p in problems[:5]))


def pytest_configure(config: pytest.Config) -> None:
    from db.sql import SqlStore

    config.addinivalue_line("markers", "tampers_audit: the test breaks an audit chain on "
                            "purpose (the audit watch does not judge its stores)")
    original = SqlStore.close

    @functools.wraps(original)
    async def close(self: SqlStore) -> None:
        if self._open:
            await _verify(self)
        await original(self)

    SqlStore.close = close  # type: ignore[method-assign]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist (make test runs two workers): a worker's figures and broken chains
    join the controller's, which reports them and fails the run."""
    found = getattr(node, "workeroutput", {}).get("audit_watch")
    if found:
        for key, value in found["counts"].items():
            _counts[key] += value
        _problems.extend(found["problems"])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    output = getattr(session.config, "workeroutput", None)
    if output is not None:  # a pytest-xdist worker: the controller reports (above)
        output["audit_watch"] = {"counts": dict(_counts), "problems": list(_problems)}
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"audit watch: {_counts['verified']} stores' chains verified at close "
            f"({_counts['entries']} entries), {len(_problems)} broken, "
            f"{_counts['unreadable']} unreadable, {_counts['tampered']} tampered on purpose")
        for line in _problems[:20]:
            reporter.write_line(f"BROKEN AUDIT CHAIN: {line}", red=True)
    if _problems:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
