"""Hash chain of the audit log (shared by both store backends).

Each entry's hash is SHA-256 over the canonical JSON of the entry: its sequence number, id,
time, the event fields, and the previous entry's hash. Changing a row breaks its own hash;
deleting or reordering rows breaks the link to the previous hash or the sequence; deleting
the tail is caught by the separately stored head (seq and hash of the last entry).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

from ca_core.records import AuditEntry, AuditEvent, AuditHead

GENESIS_HASH = "0" * 64


# The canonical form: json.dumps(document, sort_keys=True, separators=(",", ":"),
# ensure_ascii=False). It is written here piece by piece (the document's keys in sorted
# order, each value by the json module's own encoders), so that the event data, which the
# store also keeps, is serialised once for both; tests/test_audit_chain.py holds the two
# forms byte-identical over awkward values.
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_TEMPLATE = (
    '{"action":%s,"actor_id":%s,"actor_type":%s,"audit_id":%s,"category":%s,"data":%s,'
    '"event_type":%s,"org_id":%s,"previous_hash":%s,"resource_id":%s,"resource_type":%s,'
    '"seq":%s,"status":%s,"timestamp":%s}'
)


def data_json(data: dict[str, Any]) -> str:
    """The event data as the chain hashes it (sorted keys, compact, UTF-8 text); the stores
    keep this very text, so hashing an entry and storing it serialise the data once."""
    text: str = _ENCODE(data)
    return text


def _value(value: object) -> str:
    """One value as json.dumps writes it (str and int by the encoder's own functions)."""
    text: str
    if value is None:
        text = "null"
    elif type(value) is str:
        text = encode_basestring(value)
    elif type(value) is int:
        text = int.__repr__(value)
    else:
        text = _ENCODE(value)
    return text


def _utc_text(timestamp: dt.datetime) -> str:
    if timestamp.tzinfo is not dt.UTC:
        timestamp = timestamp.astimezone(dt.UTC)
    if timestamp.year < 1000:  # isoformat pads the year to four digits; strftime does not
        return timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return timestamp.isoformat(timespec="microseconds")[:26] + "Z"


def canonical_entry(
    seq: int, audit_id: str, timestamp: dt.datetime, event: AuditEvent, previous_hash: str,
    data_text: str | None = None,
) -> bytes:
    """The bytes an entry's hash is taken over. ``data_text``: ``data_json(event.data)``
    when the caller has it already."""
    if data_text is None:
        data_text = data_json(event.data)
    return (_TEMPLATE % (
        _value(event.action), _value(event.actor_id), _value(event.actor_type),
        _value(audit_id), _value(event.category), data_text, _value(event.event_type),
        _value(event.org_id), _value(previous_hash), _value(event.resource_id),
        _value(event.resource_type), _value(seq), _value(event.status),
        _value(_utc_text(timestamp)),
    )).encode()


def chain_hash(
    seq: int, audit_id: str, timestamp: dt.datetime, event: AuditEvent, previous_hash: str,
    data_text: str | None = None,
) -> str:
    return hashlib.sha256(
        canonical_entry(seq, audit_id, timestamp, event, previous_hash, data_text)
    ).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainProblem:
    seq: int
    problem: str


def verify_chain(entries: list[AuditEntry], head: AuditHead | None) -> list[ChainProblem]:
    """Every break in the chain; an empty list means the log is intact."""
    walk = ChainWalk()
    walk.feed(entries)
    return walk.finish(head)


@dataclass
class ChainWalk:
    """verify_chain in pieces: entries fed in seq order, batch by batch, only the last link
    kept, so a log too large for memory is verified in memory of one batch (the gateway's
    hourly pki_audit_chain_intact check)."""

    problems: list[ChainProblem] = field(default_factory=list)
    entries: int = 0
    last_seq: int = 0
    previous_hash: str = GENESIS_HASH

    def feed(self, entries: Iterable[AuditEntry]) -> None:
        for entry in entries:
            expected_seq = self.last_seq + 1
            if entry.seq != expected_seq:
                self.problems.append(
                    ChainProblem(entry.seq, f"sequence gap: expected {expected_seq}")
                )
            if entry.previous_hash != self.previous_hash:
                self.problems.append(
                    ChainProblem(entry.seq, "previous hash does not match the chain"))
            recomputed = chain_hash(
                entry.seq, entry.audit_id, entry.timestamp, entry.event, entry.previous_hash
            )
            if recomputed != entry.audit_hash:
                self.problems.append(
                    ChainProblem(entry.seq, "entry was changed (hash mismatch)"))
            self.previous_hash = entry.audit_hash
            self.last_seq = entry.seq
            self.entries += 1

    def finish(self, head: AuditHead | None) -> list[ChainProblem]:
        """The problems found, with the head's: it must name the last entry fed."""
        problems = list(self.problems)
        if head is None:
            if self.entries:
                problems.append(ChainProblem(self.last_seq, "chain head is missing"))
        elif head.seq != self.last_seq or head.audit_hash != self.previous_hash:
            problems.append(ChainProblem(
                head.seq, f"head says seq {head.seq} but the log ends at {self.last_seq}"))
        return problems
