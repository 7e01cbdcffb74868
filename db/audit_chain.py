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
from dataclasses import dataclass

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
    problems: list[ChainProblem] = []
    previous_hash = GENESIS_HASH
    expected_seq = 1
    for entry in entries:
        if entry.seq != expected_seq:
            problems.append(
                ChainProblem(entry.seq, f"sequence gap: expected {expected_seq}")
            )
        if entry.previous_hash != previous_hash:
            problems.append(ChainProblem(entry.seq, "previous hash does not match the chain"))
        recomputed = chain_hash(
            entry.seq, entry.audit_id, entry.timestamp, entry.event, entry.previous_hash
        )
        if recomputed != entry.audit_hash:
            problems.append(ChainProblem(entry.seq, "entry was changed (hash mismatch)"))
        previous_hash = entry.audit_hash
        expected_seq = entry.seq + 1
    last_seq = entries[-1].seq if entries else 0
    if head is None:
        if entries:
            problems.append(ChainProblem(last_seq, "chain head is missing"))
    elif head.seq != last_seq or head.audit_hash != previous_hash:
        problems.append(
            ChainProblem(head.seq, f"head says seq {head.seq} but the log ends at {last_seq}")
        )
    return problems
