"""The audit hash chain (DESIGN: tamper-evident audit log): what verify_chain reports for
each kind of break, and that every part of an entry is in its hash. Pure functions over
entries built here; the stores' own chains are checked in test_store_contract.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
import time

import pytest

from ca_core.records import AuditEntry, AuditEvent, AuditHead
from db.audit_chain import (
    GENESIS_HASH,
    ChainProblem,
    canonical_entry,
    chain_hash,
    data_json,
    verify_chain,
)
from db.reports_sql import _RENEWS

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


def _reference_canonical(seq: int, audit_id: str, timestamp: dt.datetime, event: AuditEvent,
                         previous_hash: str) -> bytes:
    """The canonical form as first written (one json.dumps of the whole document): every
    chain already stored was hashed over this, so the built-up form must match it byte for
    byte."""
    document = {
        "seq": seq, "audit_id": audit_id,
        "timestamp": timestamp.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event_type": event.event_type, "category": event.category, "action": event.action,
        "actor_type": event.actor_type, "actor_id": event.actor_id, "org_id": event.org_id,
        "resource_type": event.resource_type, "resource_id": event.resource_id,
        "status": event.status, "data": event.data, "previous_hash": previous_hash,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


AWKWARD = AuditEvent(
    event_type="certificate.issued", category="certificate", action="issue",
    actor_type="api", actor_id='token:"q"\\/', org_id=None, resource_type="certificate",
    resource_id="ü\u2028\x00\t😀", status="success",
    data={"z": [1, 2.5, -0.0, 1e300, True, False, None], "a": {"y": "é", "b": "\x7f\u0085"},
          "serial": "00ff", "n": 10**30})


def test_the_canonical_form_is_the_one_stored_chains_were_hashed_over() -> None:
    """Hashes of rows written before the form was built up piece by piece still verify."""
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    # Pinned: computed by the first implementation (one json.dumps of the document).
    assert chain_hash(42, "3b8c6c36-1b4b-4d4c-9d3e-1c0f0f0f0f0f",
                      dt.datetime(2026, 12, 7, 1, 2, 3, 0, tzinfo=ist), AWKWARD, "ab" * 32) == (
        "756f2a1139d64178919a27ba3dc5a68516de0eb01c0f2551c78c76d2b0f19063")
    events = [AWKWARD, AuditEvent(event_type="e", category="c", action="a"),
              dataclasses.replace(AWKWARD, data={}),
              dataclasses.replace(AWKWARD, data={"k": {"nested": [{"b": 1, "a": [None]}]}}),
              dataclasses.replace(AWKWARD, actor_id="", org_id="o", status="\\u00e9")]
    times = [T0, T0.replace(microsecond=0), T0.astimezone(ist), T0.replace(tzinfo=None),
             dt.datetime(999, 1, 1, tzinfo=dt.UTC), dt.datetime(9999, 12, 31, 23, 59, 59,
                                                                999999, tzinfo=dt.UTC)]
    for event in events:
        for when in times:
            for seq in (1, 10**12):
                expected = _reference_canonical(seq, "id", when, event, GENESIS_HASH)
                assert canonical_entry(seq, "id", when, event, GENESIS_HASH) == expected
                assert canonical_entry(seq, "id", when, event, GENESIS_HASH,
                                       data_json(event.data)) == expected


def test_the_stored_data_text_parses_back_to_the_data_and_renewals_still_match() -> None:
    text = data_json(AWKWARD.data)
    assert json.loads(text) == AWKWARD.data
    # The reports count renewals by a LIKE over the stored text: rows stored before
    # (json.dumps' default spacing) and after (the compact chain text) both match.
    db = sqlite3.connect(":memory:")
    rows = [json.dumps({"renews": "ab", "serial": "cd"}, sort_keys=True),
            data_json({"renews": "ab", "serial": "cd"}), data_json({"serial": "cd"}),
            data_json({"note": '"renews": x'})]
    matched = [db.execute("SELECT ? LIKE ?", (row, _RENEWS)).fetchone()[0] for row in rows]
    assert matched == [1, 1, 0, 0]
