"""Records the store keeps. Plain frozen dataclasses: no behaviour, no SQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Organization:
    org_id: str
    slug: str
    name: str
    status: str = "active"
    config: dict[str, Any] = field(default_factory=dict)
    created_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class CARecord:
    ca_id: str
    name: str
    ca_type: str  # root | intermediate | issuing | tsa
    org_id: str | None
    parent_ca_id: str | None
    subject_dn: str
    serial_hex: str
    certificate_der: bytes
    key_ref: str
    key_backend: str
    key_algorithm: str
    key_size: int
    not_before: dt.datetime
    not_after: dt.datetime
    status: str = "active"
    created_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    cert_id: str
    issuer_ca_id: str
    org_id: str
    serial_hex: str
    subject_dn: str
    common_name: str
    profile: str
    certificate_der: bytes
    key_algorithm: str
    key_size: int
    san: dict[str, list[str]]
    not_before: dt.datetime
    not_after: dt.datetime
    requester: str
    status: str = "active"  # active | revoked
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None
    invalidity_date: dt.datetime | None = None
    created_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Revocation:
    ca_id: str
    serial_hex: str
    cert_id: str
    revoked_at: dt.datetime
    reason: str
    invalidity_date: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ApiToken:
    token_id: str
    org_id: str
    role: str
    secret_hash: str
    name: str
    created_at: dt.datetime
    expires_at: dt.datetime | None = None
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    slug: str
    name: str
    purpose: str
    definition: dict[str, Any]
    org_id: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An event before it is chained: what happened, to what, by whom."""

    event_type: str  # e.g. certificate.issued
    category: str  # certificate | ca | authentication | configuration | ...
    action: str
    actor_type: str = "system"  # user | service | system | api
    actor_id: str | None = None
    org_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    status: str = "success"
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A chained audit row as stored."""

    seq: int
    audit_id: str
    timestamp: dt.datetime
    event: AuditEvent
    previous_hash: str
    audit_hash: str


@dataclass(frozen=True, slots=True)
class AuditHead:
    seq: int
    audit_hash: str
