"""The Store contract: one async repository, two implementations (SQLite, PostgreSQL).

Every state change takes the audit event that describes it and appends that event to the
hash-chained audit log in the same transaction, so a change and its audit row are never
apart. The chain hash itself is computed by ``db.audit_chain`` (shared by both backends).

Errors: ``StoreConflict`` when a uniqueness rule is hit (the caller decides whether to retry,
e.g. with a fresh serial), ``StoreUnavailable`` when the database cannot be reached.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Sequence
from typing import Any

from ca_core.records import (
    AcmeAccount,
    AcmeAuthorization,
    AcmeOrder,
    ApiToken,
    AuditEntry,
    AuditEvent,
    AuditHead,
    CARecord,
    CertificateRecord,
    CertificateStatusRecord,
    CrlHead,
    CrlRecord,
    CrossCertificateRecord,
    EabKey,
    OcspResponderRecord,
    Organization,
    Revocation,
    RevocationEvent,
    TemplateRecord,
    TimeStampRecord,
)


class Store(abc.ABC):
    """Async repository of the gateway's state."""

    backend: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> dict[str, object]:
        """Run a trivial query; returns details such as pool size. Raises StoreUnavailable."""

    # organizations
    @abc.abstractmethod
    async def add_organization(self, org: Organization, audit: AuditEvent) -> None: ...

    @abc.abstractmethod
    async def get_organization(self, slug: str) -> Organization | None: ...

    @abc.abstractmethod
    async def get_organization_by_id(self, org_id: str) -> Organization | None: ...

    @abc.abstractmethod
    async def list_organizations(self) -> list[Organization]: ...

    # certificate authorities
    @abc.abstractmethod
    async def add_ca(self, ca: CARecord, audit: AuditEvent) -> None: ...

    @abc.abstractmethod
    async def get_ca(self, name: str) -> CARecord | None: ...

    @abc.abstractmethod
    async def get_ca_by_id(self, ca_id: str) -> CARecord | None: ...

    @abc.abstractmethod
    async def list_cas(self) -> list[CARecord]: ...

    # certificates
    @abc.abstractmethod
    async def add_certificate(self, cert: CertificateRecord, audit: AuditEvent) -> None:
        """Record an issued certificate; StoreConflict if (issuer, serial) exists."""

    @abc.abstractmethod
    async def get_certificate(self, issuer_ca_id: str, serial_hex: str) -> CertificateRecord | None:
        ...

    @abc.abstractmethod
    async def get_certificate_by_id(self, cert_id: str) -> CertificateRecord | None: ...

    @abc.abstractmethod
    async def find_certificates_by_serial(self, serial_hex: str) -> list[CertificateRecord]:
        """All certificates with this serial, across issuers (serials are random, so
        normally one)."""

    @abc.abstractmethod
    async def revoke_certificate(
        self, revocation: Revocation, audit: AuditEvent
    ) -> CertificateRecord | None:
        """Mark revoked and add the CRL entry. Returns the updated record, or None when
        the certificate is unknown or already revoked (nothing changes then)."""

    @abc.abstractmethod
    async def list_revocations(
        self, ca_id: str, crl_partition: int | None = None
    ) -> list[Revocation]:
        """CRL entries of a CA (or of one CRL partition of it), oldest first."""

    @abc.abstractmethod
    async def count_active_certificates(self, now: dt.datetime) -> list[tuple[str, str, int]]:
        """(org_id, profile, count) of unrevoked, unexpired certificates."""

    # templates (profiles)
    @abc.abstractmethod
    async def upsert_template(self, template: TemplateRecord) -> None: ...

    @abc.abstractmethod
    async def list_templates(self) -> list[TemplateRecord]: ...

    # API tokens
    @abc.abstractmethod
    async def add_token(self, token: ApiToken, audit: AuditEvent) -> None: ...

    @abc.abstractmethod
    async def get_token(self, token_id: str) -> ApiToken | None: ...

    # audit log
    @abc.abstractmethod
    async def append_audit(self, audit: AuditEvent) -> AuditEntry:
        """Append an event that changes no other table (e.g. a failed login)."""

    @abc.abstractmethod
    async def audit_entries(self, after_seq: int = 0, limit: int = 10_000) -> list[AuditEntry]:
        """Entries in chain order (by seq), for verification and export."""

    @abc.abstractmethod
    async def audit_head(self) -> AuditHead | None:
        """The last seq and hash, kept apart from the rows so that a deleted tail shows."""

    # Cross-certificates: alternate chains of our CAs under other roots
    @abc.abstractmethod
    async def add_cross_certificate(self, cross: CrossCertificateRecord,
                                    audit: AuditEvent) -> None:
        """Record a cross-certificate chain; StoreConflict when that cross-certificate is
        recorded already."""

    @abc.abstractmethod
    async def list_cross_certificates(
        self, ca_ids: Sequence[str] | None = None
    ) -> list[CrossCertificateRecord]:
        """Cross-certificates of these CAs (or of all), oldest first."""

    # OCSP responders, revocation order, CRLs, job leases (OCSP/CRL, RFC 6960 and 5280)
    @abc.abstractmethod
    async def add_ocsp_responder(self, responder: OcspResponderRecord, audit: AuditEvent) -> None:
        """Record a delegated OCSP signing certificate (already stored in ``certificates``)."""

    @abc.abstractmethod
    async def list_ocsp_responders(self, ca_id: str | None = None) -> list[OcspResponderRecord]:
        """Responders of one CA (or all), the longest-lived first (by not_after)."""

    @abc.abstractmethod
    async def revocation_generation(self, ca_id: str | None = None) -> int:
        """Generation of the newest revocation (of one CA, or of any); 0 when there is none."""

    @abc.abstractmethod
    async def revocations_since(self, generation: int, limit: int = 1000) -> list[RevocationEvent]:
        """Revocations with a generation above ``generation``, in generation order."""

    @abc.abstractmethod
    async def certificate_statuses(
        self, issuer_ca_id: str, serial_hexes: Sequence[str]
    ) -> list[CertificateStatusRecord]:
        """Status of the given certificates of one issuer (unknown serials are left out)."""

    @abc.abstractmethod
    async def list_certificate_statuses(
        self, issuer_ca_id: str, valid_at: dt.datetime, after_serial_hex: str = "",
        limit: int = 1000,
    ) -> list[CertificateStatusRecord]:
        """One page of the issuer's certificates not expired at ``valid_at``, ordered by
        serial_hex (byte order) after ``after_serial_hex``."""

    @abc.abstractmethod
    async def save_crl(self, crl: CrlRecord, audit: AuditEvent) -> bool:
        """Keep ``crl`` as the newest of its (CA, partition) if its CRL number is higher than
        the stored one's; False (and nothing changes) otherwise."""

    @abc.abstractmethod
    async def get_crl(self, ca_id: str, partition: int = 0) -> CrlRecord | None: ...

    @abc.abstractmethod
    async def get_crl_head(self, ca_id: str, partition: int = 0) -> CrlHead | None:
        """The head of one stored CRL, without the DER (a cheap freshness check)."""

    @abc.abstractmethod
    async def list_crl_heads(self) -> list[CrlHead]:
        """Number, times and source generation of every stored CRL (without the DER)."""

    @abc.abstractmethod
    async def try_lock(self, name: str, holder: str, ttl_seconds: float) -> bool:
        """Take (or, for its holder, extend) the lease ``name`` for ``ttl_seconds``; False
        while another holder's lease has not expired."""

    @abc.abstractmethod
    async def release_lock(self, name: str, holder: str) -> None:
        """End the lease if ``holder`` holds it."""

    # RFC 3161 time-stamp tokens
    @abc.abstractmethod
    async def add_timestamp(self, record: TimeStampRecord) -> None:
        """Record an issued time-stamp token; StoreConflict if its serial exists. No audit
        event per token: this table is the TSA's record of issued tokens (see README)."""

    @abc.abstractmethod
    async def get_timestamp(self, serial_hex: str) -> TimeStampRecord | None: ...

    # Organizations' own settings (e.g. the ACME identifier policy)
    @abc.abstractmethod
    async def update_organization_config(
        self, org_id: str, config: dict[str, Any], audit: AuditEvent
    ) -> None:
        """Replace the organization's config document; StoreConflict if it does not exist."""

    # ACME (RFC 8555): accounts, EAB keys, orders and authorizations
    @abc.abstractmethod
    async def add_acme_account(self, account: AcmeAccount, audit: AuditEvent) -> None:
        """StoreConflict if the key is already an account's, or if ``account.eab_kid`` names
        a key that is unknown or bound already (it is bound to this account atomically)."""

    @abc.abstractmethod
    async def get_acme_account(self, account_id: str) -> AcmeAccount | None: ...

    @abc.abstractmethod
    async def find_acme_account(self, key_thumbprint: str) -> AcmeAccount | None: ...

    @abc.abstractmethod
    async def update_acme_account(self, account: AcmeAccount, audit: AuditEvent) -> None:
        """Contact, status, key (StoreConflict if the new key is another account's)."""

    @abc.abstractmethod
    async def add_eab_key(self, key: EabKey, audit: AuditEvent) -> None: ...

    @abc.abstractmethod
    async def get_eab_key(self, kid: str) -> EabKey | None: ...

    @abc.abstractmethod
    async def add_acme_order(
        self, order: AcmeOrder, new_authorizations: Sequence[AcmeAuthorization]
    ) -> None: ...

    @abc.abstractmethod
    async def get_acme_order(self, order_id: str) -> AcmeOrder | None: ...

    @abc.abstractmethod
    async def update_acme_order(self, order: AcmeOrder, expect_status: str) -> bool:
        """Store ``order`` if the stored one still has ``expect_status``; False otherwise."""

    @abc.abstractmethod
    async def find_acme_order_by_cert(self, cert_id: str) -> AcmeOrder | None: ...

    @abc.abstractmethod
    async def get_acme_authorizations(
        self, authz_ids: Sequence[str]
    ) -> list[AcmeAuthorization]:
        """The authorizations that exist among ``authz_ids``, in that order."""

    @abc.abstractmethod
    async def update_acme_authorization(
        self, authz: AcmeAuthorization, expect_status: str
    ) -> bool:
        """Store ``authz`` if the stored one still has ``expect_status``; False otherwise."""

    @abc.abstractmethod
    async def find_valid_acme_authorization(
        self, account_id: str, identifier_type: str, identifier_value: str, wildcard: bool,
        valid_at: dt.datetime,
    ) -> AcmeAuthorization | None:
        """A valid authorization of the account for the identifier, unexpired at
        ``valid_at`` (the one that expires last), for reuse in new orders."""
