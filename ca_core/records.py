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
    crl_partition: int = 0  # 0: the full CRL only; n > 0: also partitioned CRL n


@dataclass(frozen=True, slots=True)
class Revocation:
    ca_id: str
    serial_hex: str
    cert_id: str
    revoked_at: dt.datetime
    reason: str
    invalidity_date: dt.datetime | None = None
    crl_partition: int = 0  # the certificate's, fixed at issuance


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
    # Read with the token (a join), not stored with it: a disabled organization's tokens
    # stop working at the next request, in every process.
    org_status: str = "active"


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A service account binding: an organization's credential pinned to one client
    certificate by the SHA-256 fingerprint of its DER (lowercase hex). Subject, issuer,
    serial and notAfter describe the certificate for operators."""

    account_id: str
    org_id: str
    role: str
    name: str
    fingerprint: str
    subject_dn: str
    issuer_dn: str
    serial_hex: str
    not_after: dt.datetime
    created_at: dt.datetime
    revoked: bool = False
    # Read with the binding (a join), not stored with it, as for tokens: a disabled
    # organization's service accounts stop at the next request, in every process.
    org_status: str = "active"


@dataclass(frozen=True, slots=True)
class CertificateQuery:
    """One page of a certificate listing, newest first. ``org_ids`` (the organizations the
    caller may read) and ``requester`` are the caller's scope, ``org_id`` a filter (None:
    unrestricted); all applied in the query itself."""

    now: dt.datetime
    org_id: str | None = None
    org_ids: frozenset[str] | None = None
    requester: str | None = None
    status: str | None = None  # active (unrevoked, unexpired) | revoked | expired
    expiring_before: dt.datetime | None = None
    profile: str | None = None
    text: str | None = None  # substring of the subject DN or of a SAN, any case
    before: tuple[dt.datetime, str] | None = None  # (created_at, cert_id) of the last row seen
    limit: int = 100


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """One page of the audit log in chain order. ``org_id`` is the caller's scope."""

    org_id: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    actor_id: str | None = None
    action: str | None = None
    resource_id: str | None = None
    after_seq: int = 0
    limit: int = 100


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    """A row of certificate_templates: a built-in profile as published (``base`` None) or
    an operator template, a narrowing of the built-in ``base`` for one organization
    (``org_id``) or for all (``org_id`` None). ``definition`` is the resolved profile
    (``Profile.to_definition``) under the template's own name."""

    slug: str
    name: str
    purpose: str
    definition: dict[str, Any]
    org_id: str | None = None
    template_id: str = ""  # "" for a built-in: the store derives "/{slug}"
    base: str | None = None
    description: str = ""
    status: str = "active"  # active | disabled (a disabled template issues nothing)
    created_by: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


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


# --- OCSP responders and CRLs (RFC 6960, RFC 5280) -----------------------------------------


@dataclass(frozen=True, slots=True)
class CrossCertificateRecord:
    """A cross-certificate of one of our CAs and the certificates above it (PEM, the
    cross-certificate first, up to but not including the other issuer's root)."""

    cross_id: str
    ca_id: str
    fingerprint: str  # SHA-256 of the cross-certificate, hex
    chain_pem: str
    top_issuer: str  # RFC 4514 issuer name of the last certificate: the other root
    not_after: dt.datetime  # the earliest notAfter in the chain
    created_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class OcspResponderRecord:
    """A delegated OCSP signing certificate of one issuing CA (RFC 6960 4.2.2.2).

    The certificate itself is also a row of ``certificates`` (``cert_id``); this row adds the
    reference to its private key, which lives in the same key backend as the CA's.
    """

    responder_id: str
    ca_id: str
    cert_id: str
    key_ref: str
    key_backend: str
    certificate_der: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    created_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class RevocationEvent:
    """A CRL entry with its place in the store's revocation order.

    ``generation`` grows by one per revocation, in commit order, across all CAs and all
    processes: a reader that has seen generation g has seen every revocation up to g.
    """

    generation: int
    revocation: Revocation


@dataclass(frozen=True, slots=True)
class CertificateStatusRecord:
    """What an OCSP response needs to know about one certificate."""

    issuer_ca_id: str
    serial_hex: str
    status: str  # active | revoked
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None


@dataclass(frozen=True, slots=True)
class CrlHead:
    """The newest CRL of one CA (``partition`` 0: the full CRL; 1..N: a partition)."""

    ca_id: str
    partition: int
    crl_number: int
    this_update: dt.datetime
    next_update: dt.datetime
    source_generation: int  # every revocation up to this generation is in it
    entries: int


@dataclass(frozen=True, slots=True)
class CrlRecord:
    head: CrlHead
    crl_der: bytes


@dataclass(frozen=True, slots=True)
class TimeStampRecord:
    """An issued RFC 3161 time-stamp token, as recorded for audit and lookup by serial."""

    serial_hex: str  # TSTInfo serialNumber, lowercase hex (unique across all TSA keys)
    tsa_ca_id: str  # the certificate_authorities row (ca_type 'tsa') whose key signed it
    policy_oid: str
    hash_algorithm: str  # of the message imprint: sha256 | sha384 | sha512 | ...
    message_imprint: bytes  # hashedMessage as the client sent it
    gen_time: dt.datetime
    has_nonce: bool
    cert_req: bool


# --- ACME (RFC 8555) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcmeAccount:
    account_id: str
    org_id: str  # from the directory it registered at, or from its EAB key
    key_thumbprint: str  # RFC 7638 SHA-256 of the account key, base64url: unique
    jwk: dict[str, Any]  # the public key as the client sent it
    status: str = "valid"  # valid | deactivated | revoked
    contact: tuple[str, ...] = ()
    tos_agreed: bool = False
    eab_kid: str | None = None
    created_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class EabKey:
    """An External Account Binding key (RFC 8555 7.3.4): binds one account to an org."""

    kid: str
    org_id: str
    hmac_key: bytes
    created_at: dt.datetime
    account_id: str | None = None  # the account it bound, once used (single use)


@dataclass(frozen=True, slots=True)
class AcmeChallenge:
    type: str  # http-01 | dns-01 | tls-alpn-01
    token: str
    status: str = "pending"  # pending | processing | valid | invalid
    validated: dt.datetime | None = None
    error: dict[str, Any] | None = None  # an RFC 8555 problem document
    started: dt.datetime | None = None  # when validation began (processing)


@dataclass(frozen=True, slots=True)
class AcmeAuthorization:
    authz_id: str
    account_id: str
    identifier_type: str  # dns | ip
    identifier_value: str
    wildcard: bool
    status: str  # pending | valid | invalid | deactivated | expired | revoked
    expires: dt.datetime
    challenges: tuple[AcmeChallenge, ...]
    created_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class AcmeOrder:
    order_id: str
    account_id: str
    org_id: str
    status: str  # pending | ready | processing | valid | invalid
    expires: dt.datetime
    identifiers: tuple[tuple[str, str], ...]  # (type, value), as the client asked
    authz_ids: tuple[str, ...]
    profile: str
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    replaces: str | None = None  # ARI certID of the certificate this order renews
    error: dict[str, Any] | None = None
    cert_id: str | None = None
    created_at: dt.datetime | None = None


# --- code signing (issue 14) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeSignerRecord:
    """An organization's code-signing key: its certificate is a ``certificates`` row
    (profile code_signing), its private key is ``key_ref`` in the key backend."""

    signer_id: str
    org_id: str
    cert_id: str
    key_ref: str
    key_backend: str
    not_before: dt.datetime
    not_after: dt.datetime
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class CodeSignatureRecord:
    """A detached CMS signature over an artifact's hash (the seed's vcc_code_signatures)."""

    signature_id: str
    org_id: str
    cert_id: str  # the code-signing certificate
    artifact_type: str
    artifact_name: str  # the seed's artifact_path
    artifact_hash: str  # lowercase hex
    hash_algorithm: str  # sha256 | sha512
    signature_der: bytes  # DER ContentInfo(SignedData), detached
    signature_algorithm: str  # e.g. ecdsa-with-SHA256
    timestamp_token: bytes | None  # the RFC 3161 token in the unsigned attribute
    tsa_ca_id: str | None
    metadata: dict[str, Any]
    signed_at: dt.datetime
    created_at: dt.datetime
    service_id: str | None = None
    verified_count: int = 0
    last_verified_at: dt.datetime | None = None


# --- service registry (issue 14) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """A registered service (the seed's vcc_services) with what the store joins to it: its
    last heartbeat (service_registry) and its active certificate's validity and status."""

    service_id: str
    org_id: str
    name: str
    slug: str  # unique per organization
    service_type: str  # api | orchestrator | processor | ui | gateway
    endpoints: list[Any]
    health_check_url: str | None
    version: str | None
    environment: str
    metadata: dict[str, Any]
    created_by: str  # the actor_id that registered it
    created_at: dt.datetime
    updated_at: dt.datetime
    status: str = "active"
    active_cert_id: str | None = None
    # joined: the active certificate
    cert_serial_hex: str | None = None
    cert_not_after: dt.datetime | None = None
    cert_status: str | None = None  # active | revoked
    # joined: the last heartbeat
    last_seen: dt.datetime | None = None
    health_status: str | None = None
    reported_version: str | None = None
