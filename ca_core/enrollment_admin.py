"""Enrollment credentials and queues for operators (issue 17): EST one-time secrets and
requests awaiting approval (RFC 7030, ``ca_core.est``), SCEP one-time challenge passwords
and requests awaiting approval (RFC 8894, ``ca_core.scep``), for the CLI (``vcc-pki est
secret|pending``, ``vcc-pki scep challenge|pending``) and the REST API
(``/api/v1/est/...``, ``/api/v1/scep/...``) alike. ``AdminService.enrollment`` is the one
instance; the rules of issuing stay in the EST and SCEP services, which this calls.

Who may: the seed has no EST or SCEP permissions, so enrollment credentials are managed as
the other enrollment credentials (API tokens, ACME EAB keys) are, with ``token:create``:
an organization's ``pki_admin`` for its own organization, a super admin for any; deciding
a queued request is the same administrators' (``Principal.administers``, which the EST
and SCEP services check again). Scoping is in the store query (``org_id`` in the WHERE of
every list, lookup and delete); another organization's secret, challenge or request is
NotFound (404) and a missing permission Forbidden (403), both audited as
``<resource>.denied``. A secret or challenge is shown once, when it is created, and never
listed; revoking deletes an unused one (the audit log keeps its record), as an unused EAB
key is deleted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from cryptography import x509

from ca_core.authority import Authority, serial_display
from ca_core.errors import BadRequest, Conflict
from ca_core.est import CreatedSecret, EnrollmentSecretRecord, EstService, PendingEnrollment
from ca_core.principal import Principal
from ca_core.records import AuditEvent, Organization
from ca_core.scep import CreatedChallenge, ScepChallenge, ScepService, ScepTransaction
from ca_core.storage import StoreInvalid

if TYPE_CHECKING:
    from ca_core.admin import Page

# The seed's permission for enrollment credentials (see the module docstring).
ENROLLMENT_PERMISSION = "token:create"
# The longest lifetime an API caller may ask for, in minutes; each service caps it again
# by its own maximum (EstSettings.max_secret_lifetime, 90 days; ScepSettings.
# max_challenge_lifetime, 30 days).
MAX_LIFETIME_MINUTES = 90 * 24 * 60


R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Decided(Generic[R]):
    """A decided request and, when approved, the serial (hex, colons) it was issued."""

    request: R
    serial: str | None


class EnrollmentAdmin:
    """See the module docstring. ``page`` builds a ``Page`` from a store read (it is
    ``ca_core.admin``'s, handed in to keep the import one way)."""

    def __init__(self, authority: Authority, est: EstService, scep: ScepService,
                 visible_org: Callable[[Principal, str, str], Awaitable[Organization]],
                 page: Callable[..., Awaitable[Page[Any]]]) -> None:
        self.authority = authority
        self.store = authority.store
        self.est = est
        self.scep = scep
        self._visible_org = visible_org
        self._page = page

    async def _deny(self, principal: Principal, action: str, resource_type: str,
                    resource_id: str | None, message: str, *, hide: bool = False) -> NoReturn:
        await self.authority.refuse(principal, action, resource_type, resource_id, message,
                                    hide=hide)

    async def _require(self, principal: Principal, action: str, resource_type: str) -> None:
        if not principal.can(ENROLLMENT_PERMISSION):
            await self._deny(principal, action, resource_type, None,
                             f"this credential may not do {action}")

    async def _scope(self, principal: Principal, organization: str | None, action: str
                     ) -> str | None:
        """The org_id a list is limited to: the named organization (one the caller sees;
        another is 404, audited), else the caller's (None: a super admin's, all)."""
        if organization is None:
            return principal.org_id
        return (await self._visible_org(principal, organization, action)).org_id

    @staticmethod
    def _lifetime(minutes: int | None) -> dt.timedelta | None:
        if minutes is None:
            return None
        if not 1 <= minutes <= MAX_LIFETIME_MINUTES:
            raise BadRequest(f"expires_in_minutes must be between 1 and "
                             f"{MAX_LIFETIME_MINUTES}")
        return dt.timedelta(minutes=minutes)

    async def issued_serial(self, cert_id: str | None) -> str | None:
        """The serial (hex, colons) of an approved request's certificate."""
        if not cert_id:
            return None
        record = await self.store.get_certificate_by_id(cert_id)
        return serial_display(record.serial_hex) if record else cert_id

    # ------------------------------------------------------------------ EST secrets
    async def create_est_secret(self, principal: Principal, organization: str,
                                label: str = "", subject: str | None = None,
                                lifetime: dt.timedelta | int | None = None) -> CreatedSecret:
        """A one-time secret (HTTP Basic user and password) for ``organization`` (slug or
        id), any of its labels (``label`` "") or one, optionally pinned to a subject; the
        password is in the answer only. ``lifetime``: a duration or minutes (default and
        maximum: the EST settings')."""
        await self._require(principal, "est_secret:create", "est_secret")
        org = await self._visible_org(principal, organization, "est_secret:create")
        if not isinstance(lifetime, dt.timedelta):
            lifetime = self._lifetime(lifetime)
        return await self.est.create_secret(org.slug, label, subject, lifetime, principal)

    async def list_est_secrets(self, principal: Principal, organization: str | None = None,
                               cursor: str | None = None, limit: int | None = None
                               ) -> Page[EnrollmentSecretRecord]:
        """Secrets by creation, whatever their state (metadata only: never the password,
        never its hash)."""
        await self._require(principal, "est_secret:read", "est_secret")
        org_id = await self._scope(principal, organization, "est_secret:read")
        return await self._page(
            lambda after, size: self.store.list_enrollment_secrets(org_id, after, size),
            lambda s: (s.created_at, s.secret_id), cursor, limit)

    async def revoke_est_secret(self, principal: Principal, secret_id: str
                                ) -> EnrollmentSecretRecord:
        """Delete an unused secret of the caller's organization (any, for a super admin):
        it authenticates nothing from now on. Unknown or another organization's: NotFound
        (audited); used already: Conflict."""
        await self._require(principal, "est_secret:revoke", "est_secret")
        try:  # scoped in the query: another organization's row is not even read
            found = await self.store.get_enrollment_secret(secret_id, principal.org_id)
        except StoreInvalid:
            found = None
        if found is None:
            await self._deny(principal, "est_secret:revoke", "est_secret", secret_id[:80],
                             "no such EST secret", hide=True)
        if found.used_at is not None:
            raise Conflict("this secret was used already: revoke the certificate instead")
        deleted = await self.store.delete_enrollment_secret(
            secret_id, principal.org_id, AuditEvent(
                event_type="est.secret_revoked", category="authentication",
                action="revoke_secret", actor_type=principal.actor_type,
                actor_id=principal.actor_id, org_id=found.org_id, resource_type="est_secret",
                resource_id=secret_id, data={"label": found.label}))
        if deleted is None:
            raise Conflict("this secret was used meanwhile: revoke the certificate instead")
        return deleted

    # ------------------------------------------------------------------ EST pending
    async def list_est_pending(self, principal: Principal, organization: str | None = None,
                               cursor: str | None = None, limit: int | None = None
                               ) -> Page[PendingEnrollment]:
        """Requests waiting for approval, oldest first."""
        await self._require(principal, "est_request:read", "est_request")
        org_id = await self._scope(principal, organization, "est_request:read")
        return await self._page(
            lambda after, size: self.store.list_pending_enrollments(
                org_id, "pending", after, size),
            lambda p: (p.created_at, p.request_id), cursor, limit)

    async def decide_est_request(self, principal: Principal, request_id: str,
                                 approve: bool) -> Decided[PendingEnrollment]:
        """Approve (issue the certificate, which the client's next identical request
        receives) or reject a queued request; another organization's is NotFound
        (audited), one decided already Conflict."""
        action = "est_request:approve" if approve else "est_request:reject"
        await self._require(principal, action, "est_request")
        try:
            found = await self.store.get_pending_enrollment(request_id, principal.org_id)
        except StoreInvalid:
            found = None
        if found is None:
            await self._deny(principal, action, "est_request", request_id[:80],
                             f"no pending EST request {request_id[:64]!r}", hide=True)
        decided = await self.est.decide(request_id, approve, principal)
        return Decided(decided, await self.issued_serial(decided.cert_id))

    # ------------------------------------------------------------------ SCEP challenges
    async def create_scep_challenge(self, principal: Principal, organization: str,
                                    profile: str | None = None,
                                    lifetime: dt.timedelta | int | None = None
                                    ) -> CreatedChallenge:
        """A one-time challenge password for the endpoint ``/scep/{org}/{profile}``
        (``profile`` None: the default SCEP profile); the password is in the answer only.
        ``lifetime``: a duration or minutes (default and maximum: the SCEP settings')."""
        await self._require(principal, "scep_challenge:create", "scep_challenge")
        org = await self._visible_org(principal, organization, "scep_challenge:create")
        if not isinstance(lifetime, dt.timedelta):
            lifetime = self._lifetime(lifetime)
        return await self.scep.create_challenge(org.slug, profile, lifetime, principal)

    async def list_scep_challenges(self, principal: Principal,
                                   organization: str | None = None,
                                   cursor: str | None = None, limit: int | None = None
                                   ) -> Page[ScepChallenge]:
        await self._require(principal, "scep_challenge:read", "scep_challenge")
        org_id = await self._scope(principal, organization, "scep_challenge:read")
        return await self._page(
            lambda after, size: self.store.list_scep_challenges(org_id, after, size),
            lambda c: (c.created_at, c.challenge_id), cursor, limit)

    async def revoke_scep_challenge(self, principal: Principal, challenge_id: str
                                    ) -> ScepChallenge:
        """Delete an unused challenge (as ``revoke_est_secret``)."""
        await self._require(principal, "scep_challenge:revoke", "scep_challenge")
        try:  # scoped in the query: another organization's row is not even read
            found = await self.store.get_scep_challenge(challenge_id, principal.org_id)
        except StoreInvalid:
            found = None
        if found is None:
            await self._deny(principal, "scep_challenge:revoke", "scep_challenge",
                             challenge_id[:80], "no such SCEP challenge", hide=True)
        if found.used_at is not None:
            raise Conflict("this challenge was used already: revoke the certificate instead")
        deleted = await self.store.delete_scep_challenge(
            challenge_id, principal.org_id, AuditEvent(
                event_type="scep.challenge_revoked", category="authentication",
                action="revoke_challenge", actor_type=principal.actor_type,
                actor_id=principal.actor_id, org_id=found.org_id,
                resource_type="scep_challenge", resource_id=challenge_id,
                data={"profile": found.profile}))
        if deleted is None:
            raise Conflict("this challenge was used meanwhile: revoke the certificate "
                           "instead")
        return deleted

    # ------------------------------------------------------------------ SCEP pending
    async def list_scep_pending(self, principal: Principal, organization: str | None = None,
                                cursor: str | None = None, limit: int | None = None
                                ) -> Page[ScepTransaction]:
        """Requests waiting for approval, oldest first."""
        await self._require(principal, "scep_request:read", "scep_transaction")
        org_id = await self._scope(principal, organization, "scep_request:read")
        return await self._page(
            lambda after, size: self.store.list_scep_transactions(
                org_id, "pending", after, size),
            lambda t: (t.created_at, t.transaction_id), cursor, limit)

    async def decide_scep_request(self, principal: Principal, transaction_id: str,
                                  approve: bool) -> Decided[ScepTransaction]:
        """Approve (the client gets the certificate on its next CertPoll) or reject (its
        polls get FAILURE badRequest) a queued request; as ``decide_est_request``."""
        action = "scep_request:approve" if approve else "scep_request:reject"
        await self._require(principal, action, "scep_transaction")
        try:
            found = await self.store.get_scep_transaction(transaction_id, principal.org_id)
        except StoreInvalid:
            found = None
        if found is None:
            await self._deny(principal, action, "scep_transaction", transaction_id[:80],
                             f"no pending SCEP request {transaction_id[:64]!r}", hide=True)
        decided = await self.scep.decide(transaction_id, approve, principal)
        return Decided(decided, await self.issued_serial(decided.cert_id))


# ---------------------------------------------------------------------- documents

def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def csr_subject(csr_der: bytes | None) -> str:
    """A queued request's subject for a listing (its DER was checked when it came)."""
    try:
        return x509.load_der_x509_csr(csr_der or b"").subject.rfc4514_string()
    except ValueError:
        return "(unreadable)"


def _state(used_at: dt.datetime | None, expires_at: dt.datetime, now: dt.datetime) -> str:
    return "used" if used_at is not None else "expired" if expires_at <= now else "unused"


def est_secret_document(secret: EnrollmentSecretRecord, now: dt.datetime) -> dict[str, Any]:
    """An EST secret as listed: never the password or its hash."""
    return {"id": secret.secret_id, "organization_id": secret.org_id, "label": secret.label,
            "subject": secret.subject, "expires_at": _iso(secret.expires_at),
            "used_at": _iso(secret.used_at), "created_at": _iso(secret.created_at),
            "status": _state(secret.used_at, secret.expires_at, now)}


def est_request_document(request: PendingEnrollment, serial: str | None = None
                         ) -> dict[str, Any]:
    return {"id": request.request_id, "organization_id": request.org_id,
            "label": request.label, "subject": csr_subject(request.csr_der),
            "requester": request.requester, "status": request.status,
            "created_at": _iso(request.created_at), "decided_at": _iso(request.decided_at),
            "serial": serial}


def scep_challenge_document(challenge: ScepChallenge, now: dt.datetime) -> dict[str, Any]:
    """A SCEP challenge as listed: never the password or its hash."""
    return {"id": challenge.challenge_id, "organization_id": challenge.org_id,
            "profile": challenge.profile, "expires_at": _iso(challenge.expires_at),
            "used_at": _iso(challenge.used_at), "created_at": _iso(challenge.created_at),
            "status": _state(challenge.used_at, challenge.expires_at, now)}


def scep_request_document(transaction: ScepTransaction, serial: str | None = None
                          ) -> dict[str, Any]:
    return {"id": transaction.transaction_id, "organization_id": transaction.org_id,
            "profile": transaction.profile, "subject": csr_subject(transaction.csr_der),
            "requester": transaction.requester, "status": transaction.status,
            "created_at": _iso(transaction.created_at),
            "decided_at": _iso(transaction.decided_at), "serial": serial}
