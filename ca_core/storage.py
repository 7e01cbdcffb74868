"""What the CA core needs of storage: its errors, and one small interface per aggregate.

The core declares these; ``db`` implements them (one SQL implementation over a dialect
adapter, ``db.sql``). Each interface lists only the calls its consumer makes, as step-ca's
``acme/db.go`` does for its ACME API.

Store errors are the core's own error kinds, so every protocol front-end maps them to its
wire form like any other ``CAError``, and none of them catches a store error by name. The
client sees only the public detail of the kind; the cause (driver text) is for the log::

    CAError
    └── StoreError          (never raised itself)
        ├── StoreConflict     Conflict: a uniqueness rule was hit (the caller may retry,
        │                     e.g. with a fresh serial)
        ├── StoreInvalid      BadRequest: the database cannot hold a value it was given
        │                     (a lone surrogate, a NUL byte, an integer or date out of range)
        └── StoreUnavailable  Unavailable: the database cannot be reached or refused
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ca_core.errors import BadRequest, CAError, Conflict, Forbidden, Unavailable
from ca_core.records import (
    AcmeAccount,
    AcmeAuthorization,
    AcmeOrder,
    ApiToken,
    AuditEntry,
    AuditEvent,
    AuditHead,
    AuditQuery,
    CARecord,
    CertificateQuery,
    CertificateRecord,
    CertificateStatusRecord,
    CodeSignatureRecord,
    CodeSignerRecord,
    CrlHead,
    CrlRecord,
    CrossCertificateRecord,
    EabKey,
    OcspResponderRecord,
    Organization,
    Revocation,
    RevocationEvent,
    ServiceAccount,
    ServiceRecord,
    TemplateRecord,
    TimeStampRecord,
)

if TYPE_CHECKING:  # ca_core.est and ca_core.scep import this module
    from ca_core.est import EnrollmentSecretRecord, EstLabel, PendingEnrollment
    from ca_core.reports import (
        LifecycleFigures,
        LifecycleQuery,
        ReportRecord,
        SigningKeyRow,
    )
    from ca_core.scep import (
        ScepChallenge,
        ScepEndpointPolicy,
        ScepRaRecord,
        ScepRecorded,
        ScepTransaction,
    )


class StoreError(CAError):
    """A store failure; ``detail`` is what a client may read, ``cause`` what the log gets."""

    public_detail = "the store failed"

    def __init__(self, cause: str = "") -> None:
        super().__init__(self.public_detail)
        self.cause = cause or self.public_detail

    def __str__(self) -> str:
        return self.cause


class StoreConflict(StoreError, Conflict):
    public_detail = "the request conflicts with what is stored"


class StoreInvalid(StoreError, BadRequest):
    public_detail = ("the request holds a value that cannot be stored (invalid text or out "
                     "of range)")


class StoreOrganizationInactive(StoreError, Forbidden):
    """A certificate of an organization that is disabled (or gone) as the write saw it."""

    public_detail = "the organization is disabled"


class StoreUnavailable(StoreError, Unavailable):
    public_detail = "the service is unavailable"


class TenantStore(Protocol):
    """Organizations and their API tokens: the Authority (tenancy, authentication)."""

    async def add_organization(self, org: Organization, audit: AuditEvent) -> None: ...

    async def get_organization(self, slug: str) -> Organization | None: ...

    async def get_organization_by_id(self, org_id: str) -> Organization | None: ...

    async def list_organizations(
        self, org_id: str | None = None, after: tuple[dt.datetime, str] | None = None,
        limit: int = 1000,
    ) -> list[Organization]:
        """Organizations (only ``org_id`` when given) by (created_at, org_id), after
        ``after``."""

    async def update_organization(
        self, org_id: str, name: str, status: str, config: dict[str, Any], audit: AuditEvent
    ) -> Organization | None:
        """Replace name, status and config; the updated row, or None when it does not
        exist (nothing written)."""

    async def update_organization_config(
        self, org_id: str, config: dict[str, Any], audit: AuditEvent
    ) -> None:
        """Replace the organization's config document; StoreConflict if it does not exist."""

    async def add_token(self, token: ApiToken, audit: AuditEvent) -> None: ...

    async def get_token(self, token_id: str) -> ApiToken | None:
        """The token with its organization's status (``org_status``)."""

    async def list_tokens(
        self, org_id: str | None = None, after: tuple[dt.datetime, str] | None = None,
        limit: int = 100,
    ) -> list[ApiToken]:
        """Tokens (of one organization, or all) by (created_at, token_id), after ``after``."""

    async def revoke_token(self, token_id: str, org_id: str | None,
                           audit: AuditEvent) -> ApiToken | None:
        """Mark the token revoked if it exists (in ``org_id`` when given) and is not revoked
        yet; the updated token, or None (nothing written)."""


class ServiceAccountStore(Protocol):
    """Service accounts (client certificates pinned by fingerprint): the Authority
    (authentication) and the AdminService (management)."""

    async def add_service_account(self, account: ServiceAccount, audit: AuditEvent) -> None:
        """StoreConflict when a live binding of the same fingerprint exists or the
        organization does not."""

    async def get_service_account(self, account_id: str) -> ServiceAccount | None:
        """The binding (live or revoked) with its organization's status."""

    async def find_service_account(self, fingerprint: str) -> ServiceAccount | None:
        """The live binding of a certificate fingerprint, with its organization's status."""

    async def list_service_accounts(
        self, org_id: str | None = None, after: tuple[dt.datetime, str] | None = None,
        limit: int = 100,
    ) -> list[ServiceAccount]:
        """Bindings (of one organization, or all) by (created_at, account_id), after
        ``after``."""

    async def revoke_service_account(self, account_id: str, org_id: str | None,
                                     audit: AuditEvent) -> ServiceAccount | None:
        """Mark the binding revoked if it exists (in ``org_id`` when given) and is live; the
        updated binding, or None (nothing written)."""


class CaStore(Protocol):
    """Certificate authorities, their cross-certificates, OCSP responders and profiles: the
    Authority, the hierarchy bootstrap, cross-certification, the TSA."""

    async def add_ca(self, ca: CARecord, audit: AuditEvent) -> None: ...

    async def get_ca(self, name: str) -> CARecord | None: ...

    async def get_ca_by_id(self, ca_id: str) -> CARecord | None: ...

    async def list_cas(self) -> list[CARecord]: ...

    async def list_cas_page(self, org_id: str | None = None,
                            after: tuple[dt.datetime, str] | None = None, limit: int = 100
                            ) -> list[CARecord]:
        """CAs by (created_at, ca_id) after ``after``: with ``org_id``, that organization's
        and the shared ones (root, intermediates, TSA: no organization)."""

    async def activate_issuing_ca(self, org_id: str, ca_id: str, audit: AuditEvent) -> bool:
        """An issuing CA rollover (``ca_core.hierarchy.activate_issuing_ca``): in one
        transaction the CA ``ca_id`` goes from "next" to "active" and the organization's
        other active issuing CAs to "retired"; False (nothing changes) when that CA is not
        the organization's "next" one."""

    async def add_cross_certificate(self, cross: CrossCertificateRecord,
                                        audit: AuditEvent) -> None:
        """Record a cross-certificate chain; StoreConflict when that cross-certificate is
        recorded already (a duplicate fingerprint)."""

    async def list_cross_certificates(
        self, ca_ids: Sequence[str] | None = None
    ) -> list[CrossCertificateRecord]:
        """Cross-certificates of these CAs (or of all), oldest first."""

    async def add_ocsp_responder(self, responder: OcspResponderRecord, audit: AuditEvent) -> None:
        """Record a delegated OCSP signing certificate (already stored in ``certificates``)."""

    async def list_ocsp_responders(self, ca_id: str | None = None) -> list[OcspResponderRecord]:
        """Responders of one CA (or all), the longest-lived first (by not_after)."""

    async def upsert_template(self, template: TemplateRecord) -> None:
        """Publish a built-in profile: insert or replace the row of its (scope, slug)."""

    async def list_templates(self) -> list[TemplateRecord]:
        """Every row (built-ins and all organizations' templates), by slug."""


class TemplateStore(Protocol):
    """Operator certificate templates (``ca_core.templates``): the AdminService writes them,
    the Authority resolves a profile name through them at issuance."""

    async def list_templates_page(
        self, org_id: str | None = None, after: tuple[dt.datetime, str] | None = None,
        limit: int = 100,
    ) -> list[TemplateRecord]:
        """By (created_at, template_id) after ``after``; with ``org_id``, only what that
        organization sees (its own, the global ones and the built-ins)."""

    async def get_template(self, slug: str, org_id: str | None) -> TemplateRecord | None:
        """The row of exactly this scope (None: global or built-in)."""

    async def resolve_template(self, slug: str, org_id: str) -> TemplateRecord | None:
        """The active template an organization issues from: its own, else the global one."""

    async def add_template(self, template: TemplateRecord, audit: AuditEvent) -> None:
        """StoreConflict when the scope has that slug already."""

    async def update_template(self, template: TemplateRecord,
                              audit: AuditEvent) -> TemplateRecord | None:
        """Replace an operator template's base, description, status and definition (by
        template_id); None when there is none."""

    async def delete_template(self, template_id: str, audit: AuditEvent) -> bool:
        """Delete an operator template; False when there is none."""


class CertificateStore(Protocol):
    """Issued certificates and their revocation: the Authority, the OCSP responder (statuses
    and the revocation feed), metrics."""

    async def add_certificate(self, cert: CertificateRecord, audit: AuditEvent) -> None:
        """Record an issued certificate; StoreConflict if (issuer, serial) exists."""

    async def get_certificate(
        self, issuer_ca_id: str, serial_hex: str
    ) -> CertificateRecord | None: ...

    async def get_certificate_by_id(self, cert_id: str) -> CertificateRecord | None: ...

    async def find_certificates_by_serial(
        self, serial_hex: str, org_id: str | None = None, requester: str | None = None,
        org_ids: frozenset[str] | None = None,
    ) -> list[CertificateRecord]:
        """All certificates with this serial, across issuers (serials are random, so
        normally one); only those of ``org_id`` / ``requester`` / one of ``org_ids`` when
        given (the caller's scope, applied in the query)."""

    async def list_certificates(self, query: CertificateQuery) -> list[CertificateRecord]:
        """One page of certificates, newest first (see CertificateQuery)."""

    async def revoke_certificate(
        self, revocation: Revocation, audit: AuditEvent
    ) -> CertificateRecord | None:
        """Mark revoked and add the CRL entry. Returns the updated record, or None when
        the certificate is unknown or already revoked (nothing changes then)."""

    async def add_certificate_superseding(
        self, cert: CertificateRecord, audit: AuditEvent, revocation: Revocation,
        revocation_audit: AuditEvent,
    ) -> CertificateRecord | None:
        """``revoke_certificate`` of the certificate ``cert`` replaces, and
        ``add_certificate``, in one transaction: the revoked record, or None (nothing
        written) when that certificate is unknown or revoked already; StoreConflict
        (nothing written) when (issuer, serial) of ``cert`` exists."""

    async def list_revocations(
        self, ca_id: str, crl_partition: int | None = None
    ) -> list[Revocation]:
        """CRL entries of a CA (or of one CRL partition of it), oldest first."""

    async def count_active_certificates(self, now: dt.datetime) -> list[tuple[str, str, int]]:
        """(org_id, profile, count) of unrevoked, unexpired certificates."""

    async def revocation_generation(self, ca_id: str | None = None) -> int:
        """Generation of the newest revocation (of one CA, or of any); 0 when there is none."""

    async def revocations_since(self, generation: int, limit: int = 1000) -> list[RevocationEvent]:
        """Revocations with a generation above ``generation``, in generation order."""

    async def certificate_statuses(
        self, issuer_ca_id: str, serial_hexes: Sequence[str]
    ) -> list[CertificateStatusRecord]:
        """Status of the given certificates of one issuer (unknown serials are left out)."""

    async def list_certificate_statuses(
        self, issuer_ca_id: str, valid_at: dt.datetime, after_serial_hex: str = "",
        limit: int = 1000,
    ) -> list[CertificateStatusRecord]:
        """One page of the issuer's certificates not expired at ``valid_at``, ordered by
        serial_hex (byte order) after ``after_serial_hex``."""


class CrlStore(Protocol):
    """Published CRLs (RFC 5280): the CRL publisher."""

    async def save_crl(self, crl: CrlRecord, audit: AuditEvent) -> bool:
        """Keep ``crl`` as the newest of its (CA, partition) if its CRL number is higher than
        the stored one's; False (and nothing changes) otherwise."""

    async def get_crl(self, ca_id: str, partition: int = 0) -> CrlRecord | None: ...

    async def get_crl_head(self, ca_id: str, partition: int = 0) -> CrlHead | None:
        """The head of one stored CRL, without the DER (a cheap freshness check)."""

    async def list_crl_heads(self) -> list[CrlHead]:
        """Number, times and source generation of every stored CRL (without the DER)."""


class LeaseStore(Protocol):
    """Job leases, so that a background job runs in one process at a time."""

    async def try_lock(self, name: str, holder: str, ttl_seconds: float) -> bool:
        """Take (or, for its holder, extend) the lease ``name`` for ``ttl_seconds``; False
        while another holder's lease has not expired. Times are the database's clock."""

    async def release_lock(self, name: str, holder: str) -> None:
        """End the lease if ``holder`` holds it."""


class AuditStore(Protocol):
    """The hash-chained audit log: events that change no other table, and reading it back."""

    async def append_audit(self, audit: AuditEvent) -> AuditEntry:
        """Append an event that changes no other table (e.g. a failed login)."""

    async def audit_entries(self, after_seq: int = 0, limit: int = 10_000) -> list[AuditEntry]:
        """Entries in chain order (by seq), for verification and export."""

    async def audit_head(self) -> AuditHead | None:
        """The last seq and hash, kept apart from the rows so that a deleted tail shows."""

    async def query_audit(self, query: AuditQuery) -> list[AuditEntry]:
        """One page of entries matching ``query``, in chain order."""


class TimestampStore(Protocol):
    """Issued RFC 3161 time-stamp tokens: the TSA."""

    async def add_timestamp(self, record: TimeStampRecord) -> None:
        """Record an issued time-stamp token; StoreConflict if its serial exists. No audit
        event per token: this table is the TSA's record of issued tokens (see README)."""

    async def get_timestamp(self, serial_hex: str) -> TimeStampRecord | None: ...


class AcmeStore(Protocol):
    """ACME (RFC 8555) accounts, EAB keys, orders and authorizations: the ACME service."""

    async def add_acme_account(self, account: AcmeAccount, audit: AuditEvent) -> None:
        """StoreConflict if the key is already an account's, or if ``account.eab_kid`` names
        a key that is unknown or bound already (it is bound to this account atomically)."""

    async def get_acme_account(self, account_id: str) -> AcmeAccount | None: ...

    async def get_acme_account_with_org(
        self, account_id: str
    ) -> tuple[AcmeAccount, Organization | None] | None:
        """The account and its organization as stored now, in one read; None for no
        account, (account, None) when its organization is gone."""

    async def find_acme_account(self, key_thumbprint: str) -> AcmeAccount | None: ...

    async def update_acme_account(self, account: AcmeAccount, audit: AuditEvent) -> None:
        """Contact, status, key (StoreConflict if the new key is another account's)."""

    async def add_eab_key(self, key: EabKey, audit: AuditEvent) -> None: ...

    async def get_eab_key(self, kid: str) -> EabKey | None: ...

    async def list_eab_keys(self, org_id: str | None = None,
                            after: tuple[dt.datetime, str] | None = None, limit: int = 100
                            ) -> list[EabKey]:
        """EAB keys (of one organization, or all) by (created_at, kid), after ``after``."""

    async def delete_eab_key(self, kid: str, org_id: str | None, audit: AuditEvent
                             ) -> EabKey | None:
        """Delete an unused key (in ``org_id`` when given); the deleted key, or None
        (nothing written: unknown, another organization's, or bound to an account)."""

    async def list_acme_accounts(self, org_id: str | None = None,
                                 after: tuple[dt.datetime, str] | None = None,
                                 limit: int = 100) -> list[AcmeAccount]:
        """Accounts (of one organization, or all) by (created_at, account_id)."""

    async def deactivate_acme_account(self, account_id: str, org_id: str | None,
                                      audit: AuditEvent) -> AcmeAccount | None:
        """Set a valid account (in ``org_id`` when given) deactivated; the updated account,
        or None (nothing written)."""

    async def add_acme_order(
        self, order: AcmeOrder, new_authorizations: Sequence[AcmeAuthorization],
        audit: AuditEvent | None = None,
    ) -> None: ...

    async def get_acme_order(self, order_id: str) -> AcmeOrder | None: ...

    async def update_acme_order(self, order: AcmeOrder, expect_status: str,
                                audit: AuditEvent | Sequence[AuditEvent] | None = None
                                ) -> bool:
        """Store ``order`` (and append ``audit``: one event, or several in their order) if
        the stored one still has ``expect_status``; False (and nothing changes) otherwise."""

    async def add_certificate_for_acme_order(
        self, cert: CertificateRecord, audit: AuditEvent, order: AcmeOrder,
        expect_status: str, order_audit: AuditEvent,
    ) -> bool:
        """``update_acme_order`` (the order now naming ``cert``) and ``add_certificate`` in
        one transaction: False (nothing written) when the stored order no longer has
        ``expect_status``; StoreConflict or StoreOrganizationInactive (nothing written)
        as ``add_certificate``."""

    async def find_acme_order_by_cert(self, cert_id: str) -> AcmeOrder | None: ...

    async def get_acme_authorizations(
        self, authz_ids: Sequence[str]
    ) -> list[AcmeAuthorization]:
        """The authorizations that exist among ``authz_ids``, in that order."""

    async def update_acme_authorization(
        self, authz: AcmeAuthorization, expect_status: str, audit: AuditEvent | None = None
    ) -> bool:
        """Store ``authz`` (and append ``audit``) if the stored one still has
        ``expect_status``; False (and nothing changes) otherwise."""

    async def find_valid_acme_authorization(
        self, account_id: str, identifier_type: str, identifier_value: str, wildcard: bool,
        valid_at: dt.datetime,
    ) -> AcmeAuthorization | None:
        """A valid authorization of the account for the identifier, unexpired at
        ``valid_at`` (the one that expires last), for reuse in new orders."""


class EnrollmentStore(Protocol):
    """EST (RFC 7030) labels, one-time enrollment secrets and requests waiting for approval:
    the EST service (``ca_core.est``).

    A secret is spent, or a pending request moved to issued, by a conditional UPDATE in the
    same transaction as the certificate's INSERT (``add_certificate_*``): a failed write
    (store unavailable, serial collision) leaves the secret unused, and of two requests
    with one secret at most one certificate is recorded (the other's UPDATE finds
    ``used_at`` set and nothing is written)."""

    async def set_est_label(self, label: EstLabel, audit: AuditEvent) -> None:
        """Create or replace a label (its organization must exist: StoreConflict)."""

    async def get_est_label(self, label: str) -> EstLabel | None: ...

    async def list_est_labels(self) -> list[EstLabel]:
        """Every label, by name."""

    async def add_enrollment_secret(self, secret: EnrollmentSecretRecord,
                                    audit: AuditEvent) -> None:
        """StoreConflict if the id exists or the organization does not."""

    async def get_enrollment_secret(self, secret_id: str, org_id: str | None = None
                                    ) -> EnrollmentSecretRecord | None:
        """The secret (only if it is ``org_id``'s, when given), whatever its state."""

    async def list_enrollment_secrets(self, org_id: str | None = None,
                                      after: tuple[dt.datetime, str] | None = None,
                                      limit: int = 100) -> list[EnrollmentSecretRecord]:
        """Secrets (of one organization, or all) by (created_at, secret_id), after
        ``after``, whatever their state."""

    async def delete_enrollment_secret(self, secret_id: str, org_id: str | None,
                                       audit: AuditEvent) -> EnrollmentSecretRecord | None:
        """Delete an unused secret (in ``org_id`` when given); the deleted record, or None
        (nothing written: unknown, another organization's, or used)."""

    async def consume_secret(self, secret_id: str, now: dt.datetime, audit: AuditEvent
                             ) -> EnrollmentSecretRecord | None:
        """Mark the secret used at ``now`` if it is unused and unexpired at ``now``; the
        used record, or None (and nothing changes, no audit) otherwise."""

    async def add_certificate_consuming_secret(
        self, cert: CertificateRecord, audit: AuditEvent, secret_id: str, now: dt.datetime,
        secret_audit: AuditEvent,
    ) -> bool:
        """``consume_secret`` and ``add_certificate`` in one transaction: False (nothing
        written) when the secret is used or expired; StoreConflict (nothing written, the
        secret unused) when (issuer, serial) exists."""

    async def add_pending_enrollment(
        self, pending: PendingEnrollment, audit: AuditEvent,
        consume: tuple[str, dt.datetime, AuditEvent] | None = None,
    ) -> bool:
        """Record a request waiting for approval, spending the secret ``consume`` names
        (secret id, now, its audit event) in the same transaction: False (nothing written)
        when that secret is used or expired; StoreConflict when a request with the same
        CSR fingerprint and requester exists."""

    async def get_pending_enrollment(self, request_id: str, org_id: str | None = None
                                     ) -> PendingEnrollment | None:
        """The request (only if it is ``org_id``'s, when given), whatever its status."""

    async def find_pending_enrollment(self, csr_fingerprint: str, requester: str
                                      ) -> PendingEnrollment | None:
        """The request with this CSR and requester, whatever its status."""

    async def list_pending_enrollments(
        self, org_id: str | None = None, status: str | None = "pending",
        after: tuple[dt.datetime, str] | None = None, limit: int | None = None,
    ) -> list[PendingEnrollment]:
        """Requests (of one organization, in one status; None: all), oldest first: by
        (created_at, request_id) after ``after``, at most ``limit`` (None: all)."""

    async def add_certificate_for_pending(
        self, cert: CertificateRecord, audit: AuditEvent, request_id: str,
        now: dt.datetime, pending_audit: AuditEvent,
    ) -> bool:
        """Move a pending request to issued (with ``cert``'s id, decided at ``now``) and
        add ``cert`` in one transaction; False (nothing written) when it is not pending."""

    async def reject_pending_enrollment(self, request_id: str, now: dt.datetime,
                                        audit: AuditEvent) -> PendingEnrollment | None:
        """Move a pending request to rejected; the updated request, or None (nothing
        changes) when it is not pending."""


class ScepStore(Protocol):
    """SCEP (RFC 8894): the RA certificates of the issuing CAs, one-time challenge
    passwords and transactions (``ca_core.scep``).

    A challenge is spent, and the transaction recorded, by conditional writes in the same
    transaction as the certificate's INSERT (``add_certificate_for_scep``): a failed write
    leaves the challenge unused, and of two requests with one challenge (or one
    transactionID) at most one certificate is recorded."""

    async def add_scep_ra(self, ra: ScepRaRecord, audit: AuditEvent) -> None:
        """Record an RA certificate (already stored in ``certificates``)."""

    async def list_scep_ra(self, ca_id: str) -> list[ScepRaRecord]:
        """The RA certificates of one CA, the longest-lived first."""

    async def add_scep_challenge(self, challenge: ScepChallenge, audit: AuditEvent) -> None:
        """StoreConflict if the id or hash exists, or the organization does not."""

    async def find_scep_challenge(self, secret_hash: str) -> ScepChallenge | None:
        """The challenge with this password hash, whatever its state."""

    async def get_scep_challenge(self, challenge_id: str, org_id: str | None = None
                                 ) -> ScepChallenge | None:
        """The challenge by id (only if it is ``org_id``'s, when given)."""

    async def list_scep_challenges(self, org_id: str | None = None,
                                   after: tuple[dt.datetime, str] | None = None,
                                   limit: int = 100) -> list[ScepChallenge]:
        """Challenges (of one organization, or all) by (created_at, challenge_id), after
        ``after``, whatever their state."""

    async def delete_scep_challenge(self, challenge_id: str, org_id: str | None,
                                    audit: AuditEvent) -> ScepChallenge | None:
        """Delete an unused challenge (in ``org_id`` when given); the deleted record, or
        None (nothing written: unknown, another organization's, or used)."""

    async def get_scep_transaction(self, transaction_id: str, org_id: str | None = None
                                   ) -> ScepTransaction | None:
        """The transaction (only if it is ``org_id``'s, when given)."""

    async def add_certificate_for_scep(
        self, cert: CertificateRecord, audit: AuditEvent, transaction: ScepTransaction,
        consume: tuple[str, dt.datetime, AuditEvent] | None = None,
    ) -> ScepRecorded:
        """In one transaction: spend the challenge ``consume`` names (id, now, its audit
        event; "challenge_spent" and nothing written when it is used or expired), record
        ``transaction`` (new, or replacing a row of the same transactionID and key for
        another request; "transaction_taken" and nothing written otherwise) and add
        ``cert``. StoreConflict (nothing written) when (issuer, serial) exists."""

    async def record_scep_transaction(
        self, transaction: ScepTransaction, audit: AuditEvent,
        consume: tuple[str, dt.datetime, AuditEvent] | None = None,
    ) -> ScepRecorded:
        """A transaction without a certificate (pending, failure), under the rules of
        ``add_certificate_for_scep`` (the challenge spent, the same transactionID and key
        only, another request than the stored one). A pending row is never replaced, and a
        failure replaces only a failure."""

    async def list_scep_transactions(self, org_id: str | None = None,
                                     status: str | None = "pending",
                                     after: tuple[dt.datetime, str] | None = None,
                                     limit: int | None = None) -> list[ScepTransaction]:
        """Transactions (of one organization, in one status; None: all), oldest first: by
        (created_at, transaction_id) after ``after``, at most ``limit`` (None: all)."""

    async def add_certificate_for_scep_pending(
        self, cert: CertificateRecord, audit: AuditEvent, transaction_id: str,
        request_fingerprint: str, now: dt.datetime, pending_audit: AuditEvent,
    ) -> bool:
        """Move a pending transaction (of this request) to success with ``cert``'s id,
        decided at ``now``, and add ``cert``, in one transaction; False (nothing written)
        when it is not pending (decided meanwhile) or holds another request."""

    async def reject_scep_pending(self, transaction_id: str, fail_info: str,
                                  now: dt.datetime, audit: AuditEvent
                                  ) -> ScepTransaction | None:
        """Move a pending transaction to rejected with ``fail_info``; the updated row, or
        None (nothing changes) when it is not pending."""

    async def get_scep_endpoint(self, org_id: str, profile: str
                                ) -> ScepEndpointPolicy | None: ...

    async def list_scep_endpoints(self) -> list[ScepEndpointPolicy]:
        """Every endpoint an operator configured, by organization and profile."""

    async def set_scep_approval(self, org_id: str, profile: str, require_approval: bool,
                                now: dt.datetime, audit: AuditEvent) -> None:
        """Set an endpoint's manual approval (creating its row; its secret unchanged).
        StoreConflict when the organization does not exist."""

    async def set_scep_secret(self, org_id: str, profile: str, secret_hash: str | None,
                              now: dt.datetime, audit: AuditEvent) -> None:
        """Set (None: clear) an endpoint's static challenge hash (creating its row; its
        approval unchanged). StoreConflict when the organization does not exist."""


class CodeSigningStore(Protocol):
    """Organizations' code-signing keys and the signatures they made (issue 14)."""

    async def add_code_signer(self, signer: CodeSignerRecord, audit: AuditEvent) -> None:
        """Record a code-signing key whose certificate is already stored."""

    async def list_code_signers(self, org_id: str) -> list[CodeSignerRecord]:
        """The organization's signers, the longest-lived first (by not_after)."""

    async def add_code_signature(self, record: CodeSignatureRecord, audit: AuditEvent
                                 ) -> None:
        """Record a signature; StoreConflict when its (artifact_hash, cert_id) exists."""

    async def find_code_signature(self, artifact_hash: str, cert_id: str
                                  ) -> CodeSignatureRecord | None:
        """The signature of this artifact hash by this certificate, if recorded."""

    async def get_code_signature(self, signature_id: str) -> CodeSignatureRecord | None: ...

    async def record_code_verification(self, signature_id: str, when: dt.datetime,
                                       audit: AuditEvent) -> CodeSignatureRecord | None:
        """Count one verification (verified_count + 1, last_verified_at = ``when``); the
        updated record, or None when it does not exist (nothing written)."""


class ServiceRegistryStore(Protocol):
    """Registered services, who acts for them, their certificates and heartbeats (issue 14).
    Every ``ServiceRecord`` read joins its active certificate and its last heartbeat."""

    async def add_service(self, service: ServiceRecord, audit: AuditEvent,
                          acting: str | None = None) -> None:
        """Record a service and (``acting``) a principal that acts for it; StoreConflict
        when the slug exists in the organization, or when that principal acts for another
        service already."""

    async def get_service(self, org_id: str, slug: str) -> ServiceRecord | None: ...

    async def get_service_by_id(self, service_id: str) -> ServiceRecord | None: ...

    async def list_services(self, org_id: str | None = None,
                            after: tuple[dt.datetime, str] | None = None,
                            limit: int = 100) -> list[ServiceRecord]:
        """Services (of one organization, or all) by (created_at, service_id), after
        ``after``."""

    async def update_service(self, service: ServiceRecord, audit: AuditEvent
                             ) -> ServiceRecord | None:
        """Replace the descriptive fields (name, type, endpoints, health-check URL, version,
        environment, metadata, status, updated_at); the updated record or None."""

    async def service_of_actor(self, actor_id: str) -> str | None:
        """The service_id an actor acts for, or None."""

    async def add_service_principal(self, service_id: str, actor_id: str, when: dt.datetime,
                                    audit: AuditEvent) -> None:
        """Let ``actor_id`` act for the service; StoreConflict when it acts for one
        already."""

    async def add_service_certificate(self, service_id: str, cert: CertificateRecord,
                                      audit: AuditEvent, link_audit: AuditEvent) -> None:
        """Record an issued certificate (as ``add_certificate``) and make it the service's
        active certificate, in one transaction (the old one stays valid)."""

    async def record_heartbeat(self, service_id: str, when: dt.datetime, status: str,
                               version: str | None, audit: AuditEvent | None) -> None:
        """Upsert the service's last heartbeat; ``audit`` is appended when given (a change of
        the reported status)."""

    async def services_due(self, now: dt.datetime, before: dt.datetime,
                           org_id: str | None = None) -> list[ServiceRecord]:
        """Services whose active, unrevoked certificate ends before ``before`` (those
        expired already too), the soonest first: the one query behind ``service renew
        --due``, the registry's renewal state and ``pki_certificates_expiring``."""

    async def certificates_without_service(self, org_id: str | None, now: dt.datetime,
                                           limit: int = 100) -> tuple[int, list[str]]:
        """Unrevoked, unexpired end-entity certificates (of ``org_id``, or all) never issued
        for a registered service: their count and up to ``limit`` cert_ids (oldest first)."""


class ReportStore(Protocol):
    """Compliance reports (issue 14): the figures, aggregated in the database (never every
    certificate into Python), and the stored reports."""

    async def lifecycle_figures(self, query: LifecycleQuery) -> LifecycleFigures:
        """The certificate_lifecycle figures of one period and one organization or all."""

    async def signing_keys(self, org_id: str | None) -> list[SigningKeyRow]:
        """Every CA and signer an organization's scope covers (None: all), with the last
        signature the store records of each."""

    async def add_compliance_report(self, report: ReportRecord, audit: AuditEvent) -> None:
        """Store a generated report (and append ``audit``, which carries its hash)."""

    async def list_compliance_reports(
        self, org_id: str | None = None, after: tuple[dt.datetime, str] | None = None,
        limit: int = 1000,
    ) -> list[ReportRecord]:
        """Stored reports (of ``org_id`` when given), oldest first by (generated_at,
        report_id), after ``after``; ``content`` is left empty (b"")."""

    async def get_compliance_report(self, report_id: str) -> ReportRecord | None: ...


class Store(TenantStore, ServiceAccountStore, CaStore, TemplateStore, CertificateStore,
            CrlStore, LeaseStore, AuditStore, TimestampStore, AcmeStore, EnrollmentStore,
            ScepStore, CodeSigningStore, ServiceRegistryStore, ReportStore, Protocol):
    """Every aggregate at once, as the gateway wires it (``db.store`` implements it), plus
    the lifecycle."""

    backend: str

    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> dict[str, object]:
        """Run a trivial query; returns details such as pool size. Raises StoreUnavailable."""
