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

from ca_core.records import AuditEntry, AuditEvent, AuditHead

GENESIS_HASH = "0" * 64


def canonical_entry(
    seq: int, audit_id: str, timestamp: dt.datetime, event: AuditEvent, previous_hash: str
) -> bytes:
    document = {
        "seq": seq,
        "audit_id": audit_id,
        "timestamp": timestamp.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event_type": event.event_type,
        "category": event.category,
        "action": event.action,
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "org_id": event.org_id,
        "resource_type": event.resource_type,
        "resource_id": event.resource_id,
        "status": event.status,
        "data": event.data,
        "previous_hash": previous_hash,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(
    seq: int, audit_id: str, timestamp: dt.datetime, event: AuditEvent, previous_hash: str
) -> str:
    return hashlib.sha256(
        canonical_entry(seq, audit_id, timestamp, event, previous_hash)
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
