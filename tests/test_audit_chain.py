"""The audit hash chain (DESIGN: tamper-evident audit log): what verify_chain reports for
each kind of break, and that every part of an entry is in its hash. Pure functions over
entries built here; the stores' own chains are checked in test_store_contract.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

import pytest

from ca_core.records import AuditEntry, AuditEvent, AuditHead
from db.audit_chain import GENESIS_HASH, ChainProblem, canonical_entry, chain_hash, verify_chain

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 6789, tzinfo=dt.UTC)


def _chain(count: int) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    previous = GENESIS_HASH
    for seq in range(1, count + 1):
        event = AuditEvent(event_type="certificate.issued", category="certificate",
                           action="issue", actor_id=f"actor-{seq}", data={"n": seq})
        when = T0 + dt.timedelta(seconds=seq)
        digest = chain_hash(seq, f"id-{seq}", when, event, previous)
        entries.append(AuditEntry(seq, f"id-{seq}", when, event, previous, digest))
        previous = digest
    return entries


def test_an_intact_chain_has_no_problems() -> None:
    entries = _chain(3)
    assert verify_chain(entries, AuditHead(3, entries[-1].audit_hash)) == []
    assert verify_chain([], None) == []
    assert verify_chain([], AuditHead(0, GENESIS_HASH)) == []


def test_each_break_is_reported_with_its_seq() -> None:
    entries = _chain(3)
    head = AuditHead(3, entries[-1].audit_hash)
    gap = [entries[0], entries[2]]
    assert verify_chain(gap, head) == [
        ChainProblem(3, "sequence gap: expected 2"),
        ChainProblem(3, "previous hash does not match the chain")]
    changed = [entries[0], dataclasses.replace(
        entries[1], event=dataclasses.replace(entries[1].event, actor_id="mallory")),
        entries[2]]
    assert verify_chain(changed, head) == [ChainProblem(2, "entry was changed (hash mismatch)")]
    relinked = [entries[0], dataclasses.replace(entries[1], previous_hash=GENESIS_HASH),
                entries[2]]
    assert verify_chain(relinked, head) == [
        ChainProblem(2, "previous hash does not match the chain"),
        ChainProblem(2, "entry was changed (hash mismatch)")]
    assert verify_chain(entries, None) == [ChainProblem(3, "chain head is missing")]
    # the head must name the last entry by seq and by hash; either alone is a break
    assert verify_chain(entries[:2], head) == [
        ChainProblem(3, "head says seq 3 but the log ends at 2")]
    assert verify_chain(entries, AuditHead(3, entries[1].audit_hash)) == [
        ChainProblem(3, "head says seq 3 but the log ends at 3")]
    assert verify_chain(entries, AuditHead(2, entries[2].audit_hash)) == [
        ChainProblem(2, "head says seq 2 but the log ends at 3")]


def test_the_canonical_time_is_utc_on_any_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose local time is not UTC hashes the same entry to the same value."""
    event = AuditEvent(event_type="e", category="c", action="a")
    expected = chain_hash(1, "id", T0, event, GENESIS_HASH)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert chain_hash(1, "id", T0, event, GENESIS_HASH) == expected
        assert b'"timestamp":"2026-01-02T03:04:05.006789Z"' in canonical_entry(
            1, "id", T0.astimezone(dt.timezone(dt.timedelta(hours=-5))), event, GENESIS_HASH)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_every_field_is_in_the_hash() -> None:
    (entry,) = _chain(1)
    event = AuditEvent(event_type="e", category="c", action="a", actor_type="user",
                       actor_id="u", org_id="o", resource_type="r", resource_id="i",
                       status="failure", data={"k": "v"})
    base = chain_hash(7, "id", T0, event, GENESIS_HASH)
    changed_events = [dataclasses.replace(event, **{f.name: "x"}) for f in
                      dataclasses.fields(AuditEvent) if f.name != "data"]
    changed_events.append(dataclasses.replace(event, data={"k": "w"}))
    others = {chain_hash(7, "id", T0, e, GENESIS_HASH) for e in changed_events}
    others |= {chain_hash(8, "id", T0, event, GENESIS_HASH),
               chain_hash(7, "id2", T0, event, GENESIS_HASH),
               chain_hash(7, "id", T0 + dt.timedelta(microseconds=1), event, GENESIS_HASH),
               chain_hash(7, "id", T0, event, "1" * 64)}
    assert base not in others and len(others) == len(changed_events) + 4
    # The canonical form is fixed: sorted keys, no spaces, UTC with microseconds, UTF-8.
    local = T0.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert canonical_entry(7, "id", local, dataclasses.replace(event, data={"ü": 1}),
                           GENESIS_HASH) == (
        '{"action":"a","actor_id":"u","actor_type":"user","audit_id":"id","category":"c",'
        '"data":{"ü":1},"event_type":"e","org_id":"o","previous_hash":"' + GENESIS_HASH +
        '","resource_id":"i","resource_type":"r","seq":7,"status":"failure",'
        '"timestamp":"2026-01-02T03:04:05.006789Z"}').encode()
    assert entry.audit_hash == chain_hash(1, "id-1", entry.timestamp, entry.event,
                                          GENESIS_HASH)
