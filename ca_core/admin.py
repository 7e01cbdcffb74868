"""The admin service: what operators do to certificates, tokens, organizations and the audit
log, for the CLI (``vcc-pki token|org|audit|cert ...``) and the REST API (``/api/v1``) alike,
so that the two cannot drift.

Every call takes the acting Principal. Permission checks (``Principal.can``) and tenant
scoping live here and nowhere else: a caller scoped to an organization has that scope
passed into the store query itself (``org_id`` filters), never applied to an unscoped
result afterwards. A refusal is audited (``<resource>.denied``) and raised as Forbidden
(403), or as NotFound (404) where existence must not leak (another organization's
certificate, token or organization).

Who may do what (the seed RBAC matrix, ``ca_core.principal``):

- certificates: ``cert:read`` to list and fetch (``cert:read_own``: only those it requested),
  ``cert:renew`` to renew; issuing and revoking are the Authority's.
- tokens: ``token:create`` to create, list and revoke tokens of one's organization (a super
  admin: of any).
- organizations: ``organization:*`` (super admin) to list all, create, update and disable;
  an organization's ``pki_admin`` (``ca:read``) reads its own.
- templates: see the templates section of AdminService.
- audit: ``audit:read`` (the auditor of an organization: its entries; a super admin: all)
  or ``audit:read_own_org`` (pki_admin) to query and export; the chain verification result
  needs ``audit:read``.

Lists are pages: ``Page.items`` and an opaque ``Page.next`` cursor (base64url of the sort
key of the last item) or None.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as dt
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_core import mtls
from ca_core.authority import (
    Authority,
    CreatedToken,
    IssuedCertificate,
    issuing_ca_name,
    serial_display,
)
from ca_core.cross import alternate_chains
from ca_core.enrollment_admin import EnrollmentAdmin
from ca_core.errors import BadRequest, Conflict, NotFound
from ca_core.est import EstService
from ca_core.hierarchy import (
    activate_issuing_ca,
    create_intermediate_ca,
    ensure_organization,
    rollover_issuing_ca,
)
from ca_core.keys import KeySpec
from ca_core.org_policy import (
    ISOLATION_LEVELS,
    ORG_STATUSES,
    OrgPolicy,
    isolation_of,
    parse_partners,
    partners_of,
)
from ca_core.principal import ROLES, Principal
from ca_core.profiles import Profile
from ca_core.records import (
    AcmeAccount,
    ApiToken,
    AuditEntry,
    AuditEvent,
    AuditHead,
    AuditQuery,
    CARecord,
    CertificateQuery,
    CertificateRecord,
    EabKey,
    Organization,
    ServiceAccount,
    TemplateRecord,
)
from ca_core.scep import ScepService
from ca_core.storage import StoreConflict, StoreInvalid
from ca_core.templates import BUILTIN_NAMES, Template, TemplateSpec, narrow

T = TypeVar("T")

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
CERTIFICATE_STATUSES = ("active", "revoked", "expired")
MAX_TOKEN_DAYS = 3650
MAX_CA_VALIDITY_DAYS = 36525  # a century: the parent's end caps it anyway
CA_CREATION_TYPES = ("issuing", "intermediate")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next: str | None


@dataclass(frozen=True, slots=True)
class CertificateFilters:
    status: str | None = None
    expiring_before: dt.datetime | None = None
    profile: str | None = None
    organization: str | None = None  # slug
    text: str | None = None


@dataclass(frozen=True, slots=True)
class AuditFilters:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    actor: str | None = None
    action: str | None = None
    resource: str | None = None


@dataclass(frozen=True, slots=True)
class CaCreation:
    """What ``AdminService.create_ca`` is asked to make (see there)."""

    ca_type: str = "issuing"
    organization: str | None = None  # slug or id
    name: str | None = None  # intermediates only
    parent: str | None = None  # the intermediate signing an issuing CA
    key: KeySpec | None = None
    validity_days: int | None = None  # intermediates only


@dataclass(frozen=True, slots=True)
class ActivatedCA:
    record: CARecord
    retired: str  # the name of the CA it replaces


@dataclass(frozen=True, slots=True)
class ChainProblemView:
    seq: int
    problem: str


@dataclass(frozen=True, slots=True)
class AuditVerification:
    intact: bool
    entries: int
    head_seq: int
    problems: tuple[ChainProblemView, ...]


@dataclass(frozen=True, slots=True)
class OrganizationChange:
    """A PATCH: the fields given (None: unchanged)."""

    name: str | None = None
    status: str | None = None
    isolation: str | None = None
    policy: dict[str, Any] | None = None
    partners: list[str] | None = None  # slugs; replaces the list ([] clears it)


# The chain verifier (db.audit_chain.verify_chain): entries and head -> (seq, problem) pairs.
# Declared here and handed in, because the hash is the store's.
ChainVerifier = Callable[[list[AuditEntry], AuditHead | None], Sequence[Any]]


def encode_cursor(*key: Any) -> str:
    text = json.dumps([k.isoformat() if isinstance(k, dt.datetime) else k for k in key],
                      separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: a cursor of many nested arrays (a 500 before; issue 16)
        raise BadRequest("invalid cursor") from None
    if not isinstance(value, list):
        raise BadRequest("invalid cursor")
    return value


def time_id_cursor(cursor: str | None) -> tuple[dt.datetime, str] | None:
    if cursor is None:
        return None
    value = _decode(cursor)
    try:
        when, ident = value
        parsed = dt.datetime.fromisoformat(when)
    except (TypeError, ValueError):
        raise BadRequest("invalid cursor") from None
    if parsed.tzinfo is None or not isinstance(ident, str):
        raise BadRequest("invalid cursor")
    try:
        return parsed.astimezone(dt.UTC), ident
    except OverflowError:
        raise BadRequest("invalid cursor") from None


def seq_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    value = _decode(cursor)
    if len(value) != 1 or not isinstance(value[0], int) or isinstance(value[0], bool) \
            or not 0 <= value[0] < 2**62:
        raise BadRequest("invalid cursor")
    return value[0]


def page_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


class AdminService:
    """See the module docstring."""

    def __init__(self, authority: Authority, verify_chain: ChainVerifier,
                 est: EstService | None = None, scep: ScepService | None = None) -> None:
        self.authority = authority
        self.store = authority.store
        self._verify_chain = verify_chain
        # EST secrets and SCEP challenges, and their approval queues (issue 17): a module
        # of its own (ca_core.enrollment_admin), under the same rules as the rest here.
        self.enrollment = EnrollmentAdmin(
            authority, est or EstService(authority), scep or ScepService(authority),
            self._visible_org, self._keyset_page)

    async def _keyset_page(self, fetch: Callable[[tuple[dt.datetime, str] | None, int],
                                                 Awaitable[list[T]]],
                           key: Callable[[T], tuple[dt.datetime | None, str]],
                           cursor: str | None, limit: int | None) -> Page[T]:
        """One page of a list read by (created_at, id): ``fetch(after, size)`` asks the
        store for one more than the page, ``key`` is an item's sort key."""
        size = page_limit(limit)
        found = await fetch(time_id_cursor(cursor), size + 1)
        if len(found) <= size:
            return Page(found, None)
        when, ident = key(found[size - 1])
        return Page(found[:size], encode_cursor(when or dt.datetime.min.replace(tzinfo=dt.UTC),
                                                ident))

    async def _deny(self, principal: Principal, action: str, resource_type: str,
                    resource_id: str | None, message: str, *, hide: bool = False) -> NoReturn:
        await self.authority.refuse(principal, action, resource_type, resource_id, message,
                                    hide=hide)

    async def _require(self, principal: Principal, action: str, resource_type: str) -> None:
        if not principal.can(action):
            await self._deny(principal, action, resource_type, None,
                             f"this credential may not do {action}")

    # ------------------------------------------------------------------ certificates
    async def list_certificates(self, principal: Principal, filters: CertificateFilters,
                                cursor: str | None = None, limit: int | None = None
                                ) -> Page[CertificateRecord]:
        await self._require(principal, "cert:read", "certificate")
        size = page_limit(limit)
        if filters.status is not None and filters.status not in CERTIFICATE_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(CERTIFICATE_STATUSES)}")
        # Scoped in the query to the organizations the caller may read (its own and those
        # that share with it); the ``organization`` filter may name any of them.
        readable = await self.authority.readable_orgs(principal)
        org_id = None
        if filters.organization is not None:
            org = await self._org(filters.organization)
            if org is None or (readable is not None and org.org_id not in readable):
                await self._deny(principal, "cert:read", "organization",
                                 filters.organization[:80],
                                 f"no organization {filters.organization[:80]!r}", hide=True)
            org_id = org.org_id
        query = CertificateQuery(
            now=self.authority.clock(), org_id=org_id, org_ids=readable,
            requester=principal.requester_scope("cert:read"), status=filters.status,
            expiring_before=filters.expiring_before, profile=filters.profile,
            text=filters.text or None, before=time_id_cursor(cursor), limit=size + 1)
        found = await self.store.list_certificates(query)
        last = found[size - 1] if len(found) > size else None
        return Page(found[:size], None if last is None else
                    encode_cursor(last.created_at, last.cert_id))

    async def get_certificate(self, principal: Principal, serial: str) -> CertificateRecord:
        return await self.authority.find_certificate(serial, principal)

    async def renew_certificate(self, principal: Principal, serial: str, csr: bytes = b"",
                                validity_days: int | None = None) -> IssuedCertificate:
        return await self.authority.renew(serial, principal, csr, validity_days)

    async def certificate_chain(self, record: CertificateRecord, alternate: bool = False
                                ) -> tuple[Any, ...]:
        """The issuing CA's chain (issuer first, below the root) of a certificate; with
        ``alternate``, the first chain through a cross-certificate (``vcc-pki ca chains``;
        ACME's rel="alternate"), NotFound when there is none."""
        issuer = await self.authority.ca_by_id(record.issuer_ca_id)
        if not alternate:
            return issuer.chain
        chains = await alternate_chains(self.authority, issuer)
        if not chains:
            raise NotFound("this certificate has no alternate chain")
        return chains[0]

    # ------------------------------------------------------------------ tokens
    async def create_token(self, principal: Principal, organization: str, role: str,
                           name: str = "", expires_in_days: int | None = None
                           ) -> CreatedToken:
        if expires_in_days is not None and not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
            raise BadRequest(f"expires_in_days must be between 1 and {MAX_TOKEN_DAYS}")
        if not principal.can("token:create"):
            await self._deny(principal, "token:create", "api_token", None,
                             "this credential may not create tokens")
        await self._visible_org(principal, organization, "token:create")
        expires = None if expires_in_days is None else \
            self.authority.clock() + dt.timedelta(days=expires_in_days)
        return await self.authority.create_token(organization, role, name,
                                                 principal=principal, expires_at=expires)

    async def list_tokens(self, principal: Principal, organization: str | None = None,
                          cursor: str | None = None, limit: int | None = None
                          ) -> Page[ApiToken]:
        await self._require(principal, "token:create", "api_token")
        size = page_limit(limit)
        org_id = principal.org_id
        if organization is not None:
            org_id = (await self._visible_org(principal, organization, "token:create")).org_id
        found = await self.store.list_tokens(org_id, time_id_cursor(cursor), size + 1)
        last = found[size - 1] if len(found) > size else None
        return Page(found[:size], None if last is None else
                    encode_cursor(last.created_at, last.token_id))

    async def revoke_token(self, principal: Principal, token_id: str) -> ApiToken:
        """Revoke a token of the caller's organization (any, for a super admin). Another
        organization's token is NotFound; an already revoked one is NotFound too."""
        await self._require(principal, "token:create", "api_token")
        event = AuditEvent(
            event_type="token.revoked", category="authentication", action="revoke_token",
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            org_id=principal.org_id, resource_type="api_token", resource_id=token_id[:80])
        try:
            revoked = await self.store.revoke_token(token_id, principal.org_id, event)
        except StoreInvalid:
            revoked = None
        if revoked is None:
            await self._deny(principal, "token:revoke", "api_token", token_id[:80],
                             "no such token", hide=True)
        return revoked

    # ------------------------------------------------------------------ service accounts
    # Client certificates bound to an organization's credential (mTLS on the EST listener,
    # ``Authority.authenticate_certificate``), managed as tokens are (``token:create``: an
    # organization's pki_admin for its own, a super admin for any).
    async def create_service_account(self, principal: Principal, organization: str,
                                     name: str, certificate: bytes,
                                     role: str | None = None) -> ServiceAccount:
        """Bind a client certificate (PEM or DER; any CA's: it is pinned by its SHA-256
        fingerprint) to a new service account of ``organization`` with ``role`` (default
        ``service_account``; any organization-scoped role). BadRequest for a certificate
        that is no client's (``mtls.check_bindable``) or was revoked here; Conflict when
        the certificate is bound already (to one live service account at most)."""
        await self._require(principal, "token:create", "service_account")
        role = role or "service_account"
        if role not in ROLES or role == "pki_super_admin":
            raise BadRequest("role must be one of "
                             + ", ".join(r for r in ROLES if r != "pki_super_admin"))
        name = name.strip()
        if not 1 <= len(name) <= 200:
            raise BadRequest("name must be 1 to 200 characters")
        org = await self._visible_org(principal, organization, "token:create")
        parsed = mtls.load_certificate(certificate)
        now = self.authority.clock()
        mtls.check_bindable(parsed, now)
        der = parsed.public_bytes(serialization.Encoding.DER)
        if await self.authority.revoked_here(der, parsed.serial_number):
            raise BadRequest("the certificate is revoked")
        subject, issuer, serial = mtls.describe(parsed)
        account = ServiceAccount(
            account_id=f"sa-{secrets.token_hex(8)}", org_id=org.org_id, role=role,
            name=name, fingerprint=mtls.fingerprint(der), subject_dn=subject,
            issuer_dn=issuer, serial_hex=serial, not_after=parsed.not_valid_after_utc,
            created_at=now)
        try:
            await self.store.add_service_account(account, AuditEvent(
                event_type="service_account.created", category="authentication",
                action="create_service_account", actor_type=principal.actor_type,
                actor_id=principal.actor_id, org_id=org.org_id,
                resource_type="service_account", resource_id=account.account_id,
                data={"name": name, "role": role, "fingerprint": account.fingerprint,
                      "subject": subject, "issuer": issuer}))
        except StoreConflict:
            raise Conflict("this certificate is bound to a service account already: revoke "
                           "that one first") from None
        return account

    async def list_service_accounts(self, principal: Principal,
                                    organization: str | None = None,
                                    cursor: str | None = None, limit: int | None = None
                                    ) -> Page[ServiceAccount]:
        await self._require(principal, "token:create", "service_account")
        size = page_limit(limit)
        org_id = principal.org_id
        if organization is not None:
            org_id = (await self._visible_org(principal, organization, "token:create")).org_id
        found = await self.store.list_service_accounts(org_id, time_id_cursor(cursor),
                                                       size + 1)
        last = found[size - 1] if len(found) > size else None
        return Page(found[:size], None if last is None else
                    encode_cursor(last.created_at, last.account_id))

    async def revoke_service_account(self, principal: Principal, account_id: str
                                     ) -> ServiceAccount:
        """Revoke a binding of the caller's organization (any, for a super admin): its
        certificate stops authenticating at once, in every process. Unknown, another
        organization's or already revoked: NotFound (audited)."""
        await self._require(principal, "token:create", "service_account")
        try:
            found = await self.store.get_service_account(account_id)
        except StoreInvalid:
            found = None
        updated = None
        if found is not None and principal.sees_org(found.org_id):
            updated = await self.store.revoke_service_account(
                account_id, principal.org_id, AuditEvent(
                    event_type="service_account.revoked", category="authentication",
                    action="revoke_service_account", actor_type=principal.actor_type,
                    actor_id=principal.actor_id, org_id=found.org_id,
                    resource_type="service_account", resource_id=account_id,
                    data={"name": found.name, "fingerprint": found.fingerprint}))
        if updated is None:
            await self._deny(principal, "service_account:revoke", "service_account",
                             account_id[:80], "no such live service account", hide=True)
        return updated

    # ------------------------------------------------------------------ ACME EAB, accounts
    # EAB keys are credentials that bind an ACME account to an organization, and accounts
    # are what they made: both are managed as tokens are (``token:create``: an
    # organization's pki_admin for its own, a super admin for any).
    async def create_eab_key(self, principal: Principal, organization: str) -> EabKey:
        """A new EAB key id and HMAC key (RFC 8555 7.3.4) for an organization; the key is
        returned here once and never listed."""
        await self._require(principal, "token:create", "acme_eab_key")
        org = await self._visible_org(principal, organization, "token:create")
        key = EabKey(kid=f"kid-{secrets.token_hex(8)}", org_id=org.org_id,
                     hmac_key=secrets.token_bytes(32), created_at=self.authority.clock())
        await self.store.add_eab_key(key, AuditEvent(
            event_type="acme.eab_created", category="acme", action="eab_created",
            actor_type=principal.actor_type, actor_id=principal.actor_id, org_id=org.org_id,
            resource_type="acme_eab_key", resource_id=key.kid, data={"org": org.slug}))
        return key

    async def list_eab_keys(self, principal: Principal, organization: str | None = None,
                            cursor: str | None = None, limit: int | None = None
                            ) -> Page[EabKey]:
        await self._require(principal, "token:create", "acme_eab_key")
        size = page_limit(limit)
        org_id = principal.org_id
        if organization is not None:
            org_id = (await self._visible_org(principal, organization, "token:create")).org_id
        found = await self.store.list_eab_keys(org_id, time_id_cursor(cursor), size + 1)
        last = found[size - 1] if len(found) > size else None
        return Page(found[:size], None if last is None else
                    encode_cursor(last.created_at, last.kid))

    async def revoke_eab_key(self, principal: Principal, kid: str) -> EabKey:
        """Delete an unused EAB key of the caller's organization (any, for a super admin).
        Unknown or another organization's: NotFound (audited); one already bound to an
        account: Conflict (deactivate the account instead)."""
        await self._require(principal, "token:create", "acme_eab_key")
        event = AuditEvent(
            event_type="acme.eab_revoked", category="acme", action="eab_revoked",
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            org_id=principal.org_id, resource_type="acme_eab_key", resource_id=kid[:80])
        try:
            deleted = await self.store.delete_eab_key(kid, principal.org_id, event)
        except StoreInvalid:
            deleted = None
        if deleted is not None:
            return deleted
        try:
            found = await self.store.get_eab_key(kid)
        except StoreInvalid:
            found = None
        if found is not None and principal.sees_org(found.org_id) and \
                found.account_id is not None:
            raise Conflict(f"EAB key {kid} is bound to account {found.account_id}: "
                           "deactivate the account")
        await self._deny(principal, "acme_eab:revoke", "acme_eab_key", kid[:80],
                         "no such EAB key", hide=True)

    async def list_acme_accounts(self, principal: Principal, organization: str | None = None,
                                 cursor: str | None = None, limit: int | None = None
                                 ) -> Page[AcmeAccount]:
        await self._require(principal, "token:create", "acme_account")
        size = page_limit(limit)
        org_id = principal.org_id
        if organization is not None:
            org_id = (await self._visible_org(principal, organization, "token:create")).org_id
        found = await self.store.list_acme_accounts(org_id, time_id_cursor(cursor), size + 1)
        last = found[size - 1] if len(found) > size else None
        return Page(found[:size], None if last is None or last.created_at is None else
                    encode_cursor(last.created_at, last.account_id))

    async def deactivate_acme_account(self, principal: Principal, account_id: str
                                      ) -> AcmeAccount:
        """RFC 8555 7.3.6 done by an operator: the account is refused from its next request
        on. Another organization's, unknown or not valid: NotFound (audited)."""
        await self._require(principal, "token:create", "acme_account")
        event = AuditEvent(
            event_type="acme.account_deactivated", category="acme",
            action="account_deactivated", actor_type=principal.actor_type,
            actor_id=principal.actor_id, org_id=principal.org_id,
            resource_type="acme_account", resource_id=account_id[:80])
        try:
            updated = await self.store.deactivate_acme_account(account_id, principal.org_id,
                                                               event)
        except StoreInvalid:
            updated = None
        if updated is None:
            await self._deny(principal, "acme_account:deactivate", "acme_account",
                             account_id[:80], "no such valid account", hide=True)
        return updated

    # ------------------------------------------------------------------ CAs
    async def list_cas(self, principal: Principal, cursor: str | None = None,
                       limit: int | None = None) -> Page[CARecord]:
        """The CAs a principal's scope covers: its organization's issuing CAs and the
        shared hierarchy (``ca:read``: pki_admin; a super admin: all)."""
        await self._require(principal, "ca:read", "certificate_authority")
        size = page_limit(limit)
        found = await self.store.list_cas_page(principal.org_id, time_id_cursor(cursor),
                                               size + 1)
        last = found[size - 1] if len(found) > size else None
        return Page(found[:size], None if last is None or last.created_at is None else
                    encode_cursor(last.created_at, last.ca_id))

    async def _visible_ca(self, principal: Principal, name: str, action: str) -> CARecord:
        try:
            record = await self.store.get_ca(name)
        except StoreInvalid:
            record = None
        if record is None or (record.org_id is not None
                              and not principal.sees_org(record.org_id)):
            await self._deny(principal, action, "certificate_authority", name[:80],
                             f"no CA named {name[:80]!r}", hide=True)
        return record

    async def ca_chain(self, principal: Principal, name: str) -> tuple[x509.Certificate, ...]:
        """A CA's certificate, the CAs above it and the root (the root last)."""
        await self._require(principal, "ca:read", "certificate_authority")
        record = await self._visible_ca(principal, name, "ca:read")
        ca = await self.authority.ca(record.name)
        return await self.authority.chain_with_root(ca)

    async def create_ca(self, principal: Principal, request: CaCreation) -> CARecord:
        """``POST /api/v1/cas`` and ``vcc-pki ca create|rollover``.

        - ``issuing``: an organization's first issuing CA or, when it has one, the
          rollover's successor in status "next" (issues once activated), signed by
          ``parent`` (a shared or the organization's own intermediate; default: the current
          CA's). Super admin only (``ca:create``): it decides who issues.
        - ``intermediate``: a CA under the root, the organization's own (``ca:
          create_intermediate``: the seed gives it to an organization's pki_admin) or, with
          no organization, shared (super admin only).
        """
        if request.ca_type not in CA_CREATION_TYPES:
            raise BadRequest(f"type must be one of {', '.join(CA_CREATION_TYPES)}")
        if request.validity_days is not None and \
                not 1 <= request.validity_days <= MAX_CA_VALIDITY_DAYS:
            raise BadRequest(f"validity_days must be between 1 and {MAX_CA_VALIDITY_DAYS}")
        if request.ca_type == "intermediate":
            return await self._create_intermediate(principal, request)
        await self._require(principal, "ca:create", "certificate_authority")
        if request.organization is None:
            raise BadRequest("an issuing CA needs an organization")
        if request.name is not None or request.validity_days is not None:
            raise BadRequest("an issuing CA's name and validity follow from its organization "
                             "and the settings")
        org = await self._visible_org(principal, request.organization, "ca:create")
        as_system = Principal.system(principal.actor_id)
        if await self.store.get_ca(issuing_ca_name(org.slug)) is None:
            await ensure_organization(self.authority, org.slug, org.name, as_system,
                                      request.key, request.parent)
            name = issuing_ca_name(org.slug)
        else:
            name = (await rollover_issuing_ca(self.authority, org.slug, as_system,
                                              request.key, request.parent)).name
        return await self._created(name)

    async def _create_intermediate(self, principal: Principal, request: CaCreation
                                   ) -> CARecord:
        await self._require(principal, "ca:create_intermediate", "certificate_authority")
        if request.parent not in (None, "root"):
            raise BadRequest("an intermediate CA is signed by the root")
        org = None
        if request.organization is not None:
            org = await self._visible_org(principal, request.organization,
                                          "ca:create_intermediate")
        elif principal.org_id is not None:
            await self._deny(principal, "ca:create_intermediate", "certificate_authority",
                             request.name, "only a super admin creates a shared intermediate: "
                             "name your organization")
        name = request.name or (f"{org.slug}-intermediate" if org is not None else None)
        if name is None:
            raise BadRequest("a shared intermediate CA needs a name")
        await create_intermediate_ca(self.authority, name, org,
                                     Principal.system(principal.actor_id), request.key,
                                     request.validity_days)
        return await self._created(name)

    async def _created(self, name: str) -> CARecord:
        created = await self.store.get_ca(name)
        if created is None:  # the store lost what it committed: not the caller's fault
            raise NotFound(f"no CA named {name!r}")
        return created

    async def activate_ca(self, principal: Principal, name: str) -> ActivatedCA:
        """``vcc-pki ca activate``: a rollover's "next" issuing CA issues from now on."""
        await self._require(principal, "ca:create", "certificate_authority")
        await self._visible_ca(principal, name, "ca:create")
        retired = await activate_issuing_ca(self.authority, name,
                                            Principal.system(principal.actor_id))
        return ActivatedCA(await self._created(name), retired)

    # ------------------------------------------------------------------ templates
    # Reading needs ``template:read`` (cert_manager, auditor) or ``template:manage``
    # (pki_admin: its organization's templates; a super admin's ``template:*``: global ones
    # and any organization's). Another organization's template is NotFound (audited), as if
    # it did not exist. Built-ins are code: a write naming one is Conflict (409), not 403:
    # the caller may manage templates, it is the resource that cannot change (create a
    # template with the built-in as its base instead).
    def _may_read_templates(self, principal: Principal) -> bool:
        return principal.can("template:read") or principal.can("template:manage")

    async def _template_scope(self, principal: Principal, organization: str | None,
                              action: str) -> Organization | None:
        """The organization a call names (None: the caller's own; for a super admin:
        global). Another organization is NotFound (audited)."""
        if organization is not None:
            return await self._visible_org(principal, organization, action)
        if principal.org_id is None:
            return None
        return await self.authority.organization_by_id(principal.org_id)

    def _view(self, record: TemplateRecord) -> Template:
        builtin = record.base is None
        profile = self.authority.profile(record.slug) if builtin and \
            record.slug in BUILTIN_NAMES else Profile.from_definition(record.definition)
        return Template(profile, record.org_id, builtin, record.status, record.template_id,
                        record.created_by, record.created_at, record.updated_at)

    async def list_templates(self, principal: Principal, organization: str | None = None,
                             cursor: str | None = None, limit: int | None = None
                             ) -> Page[Template]:
        """The built-ins, the global templates and the organization's (a super admin
        without ``organization``: every organization's), oldest first."""
        if not self._may_read_templates(principal):
            await self._deny(principal, "template:read", "certificate_template", None,
                             "this credential may not read templates")
        size = page_limit(limit)
        org = await self._template_scope(principal, organization, "template:read")
        found = await self.store.list_templates_page(
            None if org is None else org.org_id, time_id_cursor(cursor), size + 1)
        items = []
        for record in found[:size]:
            try:
                items.append(self._view(record))
            except (TypeError, ValueError):  # a corrupt row hides, it does not fail a list
                continue
        last = found[size - 1] if len(found) > size else None
        return Page(items, None if last is None or last.created_at is None else
                    encode_cursor(last.created_at, last.template_id))

    async def _find_template(self, principal: Principal, name: str,
                             org: Organization | None, action: str) -> TemplateRecord:
        """What ``name`` resolves to for ``org`` (its template, a global one, a built-in);
        for a super admin without an organization, global and built-ins only."""
        try:
            record = None
            if org is not None:
                record = await self.store.get_template(name, org.org_id)
            if record is None:
                record = await self.store.get_template(name, None)
        except StoreInvalid:
            record = None
        if record is None:
            await self._deny(principal, action, "certificate_template", name[:80],
                             f"no template {name[:80]!r}", hide=True)
        return record

    async def get_template(self, principal: Principal, name: str,
                           organization: str | None = None) -> Template:
        if not self._may_read_templates(principal):
            await self._deny(principal, "template:read", "certificate_template", name[:80],
                             "this credential may not read templates")
        org = await self._template_scope(principal, organization, "template:read")
        return self._view(await self._find_template(principal, name, org, "template:read"))

    async def _require_manage(self, principal: Principal, name: str | None) -> None:
        if not principal.can("template:manage"):
            await self._deny(principal, "template:manage", "certificate_template",
                             None if name is None else name[:80],
                             "this credential may not manage templates")

    async def _writable(self, principal: Principal, name: str, organization: str | None,
                        action: str) -> tuple[TemplateRecord, Organization | None]:
        """The operator template ``name`` a write acts on, in the scope the caller names:
        a built-in is Conflict; a global one written by an organization's admin is
        Forbidden (audited)."""
        await self._require_manage(principal, name)
        org = await self._template_scope(principal, organization, action)
        record = await self._find_template(principal, name, org, action)
        if record.base is None:
            raise Conflict(f"{name} is a built-in profile and read-only: create a template "
                           "with it as the base instead")
        if record.org_id is None and principal.org_id is not None:
            await self._deny(principal, action, "certificate_template", record.template_id,
                             "only a super admin changes global templates")
        return record, org

    def _template_event(self, principal: Principal, kind: str, record: TemplateRecord
                        ) -> AuditEvent:
        return AuditEvent(
            event_type=f"template.{kind}", category="configuration",
            action={"created": "create_template", "updated": "update_template",
                    "deleted": "delete_template"}[kind], actor_type=principal.actor_type,
            actor_id=principal.actor_id, org_id=record.org_id,
            resource_type="certificate_template", resource_id=record.template_id,
            data={"name": record.slug, "base": record.base, "status": record.status,
                  "definition": record.definition})

    async def create_template(self, principal: Principal, name: str, spec: TemplateSpec,
                              organization: str | None = None) -> Template:
        """A template for ``organization`` (an organization's admin: its own, the
        default; a super admin: None makes a global one). TemplateInvalid (400) for what
        does not narrow the base and the organization's policy; Conflict when the scope
        has that name."""
        await self._require_manage(principal, name)
        org = await self._template_scope(principal, organization, "template:manage")
        policy = OrgPolicy() if org is None else OrgPolicy.of(org.config)
        profile = narrow(name, spec, policy)
        now = self.authority.clock()
        record = TemplateRecord(
            slug=name, name=name, purpose=profile.purpose, definition=profile.to_definition(),
            org_id=None if org is None else org.org_id, template_id=str(uuid.uuid4()),
            base=profile.base, description=profile.description,
            status=spec.status or "active", created_by=principal.actor_id, created_at=now,
            updated_at=now)
        try:
            await self.store.add_template(record, self._template_event(principal, "created",
                                                                       record))
        except StoreConflict:
            raise Conflict(f"template {name} exists "
                           f"{'globally' if org is None else 'in ' + org.slug}") from None
        return self._view(record)

    async def update_template(self, principal: Principal, name: str, spec: TemplateSpec,
                              organization: str | None = None) -> Template:
        """Replace what ``spec`` names (the rest is kept), validated as at creation."""
        current, _ = await self._writable(principal, name, organization, "template:manage")
        org = None if current.org_id is None else \
            await self.authority.organization_by_id(current.org_id)
        policy = OrgPolicy() if org is None else OrgPolicy.of(org.config)
        profile = narrow(name, spec.over(Profile.from_definition(current.definition)),
                         policy)
        changed = dataclasses.replace(
            current, purpose=profile.purpose, definition=profile.to_definition(),
            base=profile.base, description=profile.description,
            status=spec.status or current.status, updated_at=self.authority.clock())
        updated = await self.store.update_template(
            changed, self._template_event(principal, "updated", changed))
        if updated is None:  # deleted meanwhile
            raise NotFound(f"no template {name[:80]!r}")
        return self._view(updated)

    async def delete_template(self, principal: Principal, name: str,
                              organization: str | None = None) -> Template:
        """Delete a template: requests naming it fail from now on, in every process.
        Certificates issued from it keep its name as their profile (renewing one then
        needs a template or profile of that name again)."""
        current, _ = await self._writable(principal, name, organization, "template:manage")
        if not await self.store.delete_template(
                current.template_id, self._template_event(principal, "deleted", current)):
            raise NotFound(f"no template {name[:80]!r}")
        return self._view(current)

    # ------------------------------------------------------------------ organizations
    async def _org(self, ident: str) -> Organization | None:
        """By slug, else by id; None for text the store cannot hold."""
        try:
            return (await self.store.get_organization(ident)
                    or await self.store.get_organization_by_id(ident))
        except StoreInvalid:
            return None

    async def _visible_org(self, principal: Principal, ident: str, action: str
                           ) -> Organization:
        """An organization the principal's scope covers; another one is 404 (audited)."""
        org = await self._org(ident)
        if org is None or not principal.sees_org(org.org_id):
            await self._deny(principal, action, "organization", ident[:80],
                             f"no organization {ident[:80]!r}", hide=True)
        return org

    async def list_organizations(self, principal: Principal, cursor: str | None = None,
                                 limit: int | None = None) -> Page[Organization]:
        if not (principal.can("organization:read") or principal.can("ca:read")):
            await self._deny(principal, "organization:read", "organization", None,
                             "this credential may not read organizations")
        size = page_limit(limit)
        found = await self.store.list_organizations(principal.org_id, time_id_cursor(cursor),
                                                    size + 1)
        last = found[size - 1] if len(found) > size else None
        return Page(found[:size], None if last is None or last.created_at is None else
                    encode_cursor(last.created_at, last.org_id))

    async def get_organization(self, principal: Principal, ident: str) -> Organization:
        if not (principal.can("organization:read") or principal.can("ca:read")):
            await self._deny(principal, "organization:read", "organization", ident[:80],
                             "this credential may not read organizations")
        return await self._visible_org(principal, ident, "organization:read")

    async def create_organization(self, principal: Principal, slug: str, name: str | None,
                                  change: OrganizationChange | None = None,
                                  key: KeySpec | None = None) -> Organization:
        """A new organization and its issuing CA (Conflict if the slug exists)."""
        await self._require(principal, "organization:create", "organization")
        if await self._org(slug) is not None:
            raise Conflict(f"organization {slug} exists")
        config = self._config({}, change) if change is not None else {}
        await self._check_partners(slug, partners_of(config))
        # The new CA's own certificates (its OCSP responder) are issued by the CA itself:
        # as the system, on behalf of the (checked) caller, whom the audit events name.
        await ensure_organization(self.authority, slug, name,
                                  Principal.system(principal.actor_id), key)
        org = await self.authority.organization(slug)
        if config:
            org = await self._store_update(principal, org, org.name, org.status, config)
        return org

    async def update_organization(self, principal: Principal, ident: str,
                                  change: OrganizationChange) -> Organization:
        await self._require(principal, "organization:update", "organization")
        org = await self._visible_org(principal, ident, "organization:update")
        if change.status is not None and change.status not in ORG_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(ORG_STATUSES)}")
        if change.name is not None and not 1 <= len(change.name.strip()) <= 200:
            raise BadRequest("name must be 1 to 200 characters")
        if change.status == "disabled" and org.org_id == await self._own_org(principal):
            raise Conflict("a token cannot disable its own organization (it would stop "
                           "working itself)")
        config = self._config(org.config, change)
        if change.partners is not None:
            await self._check_partners(org.slug, partners_of(config))
        return await self._store_update(
            principal, org, change.name.strip() if change.name else org.name,
            change.status or org.status, config)

    async def _check_partners(self, slug: str, partners: tuple[str, ...]) -> None:
        """Each partner an active organization other than ``slug`` (BadRequest otherwise);
        one disabled later is ignored by ``readable_org_ids``, not removed."""
        for name in partners:
            if name == slug:
                raise BadRequest("partners: an organization cannot be its own partner")
            try:
                partner = await self.store.get_organization(name)
            except StoreInvalid:
                partner = None
            if partner is None:
                raise BadRequest(f"partners: no organization {name[:80]!r}")
            if partner.status != "active":
                raise BadRequest(f"partners: organization {name} is disabled")

    async def disable_organization(self, principal: Principal, ident: str) -> Organization:
        return await self.update_organization(principal, ident,
                                              OrganizationChange(status="disabled"))

    async def _own_org(self, principal: Principal) -> str | None:
        """The organization a token principal's record belongs to."""
        if not principal.actor_id.startswith("token:"):
            return None
        token = await self.store.get_token(principal.actor_id.removeprefix("token:"))
        return None if token is None else token.org_id

    @staticmethod
    def _config(config: dict[str, Any], change: OrganizationChange) -> dict[str, Any]:
        updated = dict(config)
        if change.isolation is not None:
            if change.isolation not in ISOLATION_LEVELS:
                raise BadRequest(f"isolation must be one of {', '.join(ISOLATION_LEVELS)}")
            updated["isolation"] = change.isolation
        if change.partners is not None:
            updated["partners"] = list(parse_partners(change.partners))
        if change.policy is not None:
            current = OrgPolicy.parse(config.get("policy")).to_json()
            merged = {k: v for k, v in {**current, **change.policy}.items() if v is not None}
            updated["policy"] = OrgPolicy.parse(merged).to_json()
        return updated

    async def _store_update(self, principal: Principal, org: Organization, name: str,
                            status: str, config: dict[str, Any]) -> Organization:
        event = AuditEvent(
            event_type="organization.updated", category="configuration",
            action="disable_organization" if status == "disabled" != org.status
            else "update_organization",
            actor_type=principal.actor_type, actor_id=principal.actor_id, org_id=org.org_id,
            resource_type="organization", resource_id=org.org_id,
            data={"name": name, "status": status, "config": config})
        updated = await self.store.update_organization(org.org_id, name, status, config, event)
        if updated is None:
            raise NotFound(f"no organization {org.slug!r}")
        self.authority.forget_organization(org.slug)
        return updated

    # ------------------------------------------------------------------ audit
    async def _audit_scope(self, principal: Principal) -> str | None:
        if principal.can("audit:read") or principal.can("audit:read_own_org"):
            return principal.org_id
        await self._deny(principal, "audit:read", "audit_log", None,
                         "this credential may not read the audit log")

    def _audit_query(self, scope: str | None, filters: AuditFilters, after: int,
                     limit: int) -> AuditQuery:
        return AuditQuery(org_id=scope, since=filters.since, until=filters.until,
                          actor_id=filters.actor, action=filters.action,
                          resource_id=filters.resource, after_seq=after, limit=limit)

    async def query_audit(self, principal: Principal, filters: AuditFilters,
                          cursor: str | None = None, limit: int | None = None
                          ) -> Page[AuditEntry]:
        scope = await self._audit_scope(principal)
        size = page_limit(limit)
        found = await self.store.query_audit(
            self._audit_query(scope, filters, seq_cursor(cursor), size + 1))
        last = found[size - 1] if len(found) > size else None
        return Page(found[:size], None if last is None else encode_cursor(last.seq))

    async def export_audit(self, principal: Principal, filters: AuditFilters
                           ) -> AsyncIterator[AuditEntry]:
        """Every matching entry in chain order, read page by page (for streaming)."""
        scope = await self._audit_scope(principal)
        return self._pages(lambda after: self.store.query_audit(
            self._audit_query(scope, filters, after, 1000)))

    @staticmethod
    async def _pages(fetch: Callable[[int], Awaitable[list[AuditEntry]]]
                     ) -> AsyncIterator[AuditEntry]:
        after = 0
        while True:
            batch = await fetch(after)
            for entry in batch:
                yield entry
            if len(batch) < 1000:
                return
            after = batch[-1].seq

    async def verify_audit(self, principal: Principal) -> AuditVerification:
        """The whole chain verified (it is one chain across organizations)."""
        if not principal.can("audit:read"):
            await self._deny(principal, "audit:verify", "audit_log", None,
                             "this credential may not verify the audit log")
        entries: list[AuditEntry] = []
        after = 0
        while True:
            batch = await self.store.audit_entries(after_seq=after, limit=10_000)
            if not batch:
                break
            entries.extend(batch)
            after = batch[-1].seq
        head = await self.store.audit_head()
        # Hashing every entry takes seconds on a large log: off the event loop, so GET
        # /audit/verify does not stall OCSP and the other requests meanwhile.
        found = await asyncio.to_thread(self._verify_chain, entries, head)
        problems = tuple(ChainProblemView(p.seq, p.problem) for p in found)
        return AuditVerification(not problems, len(entries), 0 if head is None else head.seq,
                                 problems)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def audit_document(entry: AuditEntry) -> dict[str, Any]:
    """An audit entry as JSON (one line of an export, one item of a query), the same for
    the CLI and the REST API; with its hashes, so an export can be re-verified."""
    event = entry.event
    return {
        "seq": entry.seq, "id": entry.audit_id, "timestamp": _iso(entry.timestamp),
        "event_type": event.event_type, "category": event.category, "action": event.action,
        "actor_type": event.actor_type, "actor_id": event.actor_id,
        "organization_id": event.org_id, "resource_type": event.resource_type,
        "resource_id": event.resource_id, "status": event.status, "data": event.data,
        "previous_hash": entry.previous_hash, "hash": entry.audit_hash,
    }


def token_document(token: ApiToken) -> dict[str, Any]:
    """A token as listed (never its secret or hash)."""
    return {"id": token.token_id, "organization_id": token.org_id, "role": token.role,
            "name": token.name, "created_at": _iso(token.created_at),
            "expires_at": _iso(token.expires_at), "revoked": token.revoked}


def service_account_document(account: ServiceAccount) -> dict[str, Any]:
    """A service account binding as listed (the certificate's identity, not the
    certificate)."""
    return {"id": account.account_id, "organization_id": account.org_id,
            "role": account.role, "name": account.name, "fingerprint": account.fingerprint,
            "subject": account.subject_dn, "issuer": account.issuer_dn,
            "serial": serial_display(account.serial_hex), "not_after": _iso(account.not_after),
            "created_at": _iso(account.created_at), "revoked": account.revoked}


def organization_document(org: Organization) -> dict[str, Any]:
    return {"id": org.org_id, "slug": org.slug, "name": org.name, "status": org.status,
            "isolation": isolation_of(org.config), "partners": list(partners_of(org.config)),
            "policy": OrgPolicy.of(org.config).to_json(), "created_at": _iso(org.created_at)}


def eab_key_document(key: EabKey) -> dict[str, Any]:
    """An EAB key as listed (never its HMAC key)."""
    return {"kid": key.kid, "organization_id": key.org_id, "created_at": _iso(key.created_at),
            "account_id": key.account_id, "used": key.account_id is not None}


def acme_account_document(account: AcmeAccount) -> dict[str, Any]:
    return {"id": account.account_id, "organization_id": account.org_id,
            "status": account.status, "contact": list(account.contact),
            "eab_kid": account.eab_kid, "key_thumbprint": account.key_thumbprint,
            "created_at": _iso(account.created_at)}


def ca_document(record: CARecord) -> dict[str, Any]:
    return {"name": record.name, "id": record.ca_id, "type": record.ca_type,
            "organization_id": record.org_id, "parent_id": record.parent_ca_id,
            "status": record.status, "subject": record.subject_dn, "serial": record.serial_hex,
            "key": f"{record.key_algorithm}-{record.key_size}",
            "key_backend": record.key_backend, "not_before": _iso(record.not_before),
            "not_after": _iso(record.not_after), "created_at": _iso(record.created_at)}


def template_document(template: Template) -> dict[str, Any]:
    """A template as the API and the CLI show it: its resolved profile (a built-in's
    ``base`` is ""), its scope and whether it can be changed."""
    definition = template.profile.to_definition()
    return {**{k: list(v) if isinstance(v, tuple) else v for k, v in definition.items()},
            "organization_id": template.org_id, "builtin": template.builtin,
            "read_only": template.builtin, "status": template.status,
            "created_by": template.created_by, "created_at": _iso(template.created_at),
            "updated_at": _iso(template.updated_at)}
