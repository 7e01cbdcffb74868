"""ACME registration authority (RFC 8555): the rules behind the ACME front-end.

The front-end (protocols/acme) verifies JWS signatures, nonces and URLs and hands this
module verified facts: "the holder of this key (``AccountKey``: JWK and RFC 7638
thumbprint) asks for ...", with wire values decoded (``AriCertId``). Here live the
decisions: accounts and their organization (directory or External Account Binding),
identifier policy per organization, orders and authorizations with their state machine,
challenge validation in the background (through a ``ChallengeValidator``: the network
I/O is the ``va`` package's), finalization through ``Authority.issue``, revocation, and
ARI renewal windows (RFC 9773). Storage goes through the Store; signing through Authority.
An account acts towards the Authority as a caller of its own organization.

Failures are ca_core's typed errors (``ca_core.errors``); protocols/acme turns them into
RFC 8555 problem documents, in one place. A failure kept in an order or a challenge (their
``error`` member) is stored as ``error_record``: the error's kind and detail, rendered by
the front-end the same way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from asn1crypto import pem
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from ca_core import x509build
from ca_core.acme_state import AcmeState, StateUnavailable
from ca_core.authority import Authority, IssuanceRequest, chain_pem, parse_csr, serial_hex
from ca_core.cross import alternate_chains
from ca_core.errors import (
    AccountDoesNotExist,
    AccountKeyInUse,
    AlreadyRevoked,
    BadCSR,
    BadNonce,
    BadRequest,
    BadRevocationReason,
    CAError,
    Conflict,
    ExternalAccountRequired,
    Forbidden,
    InvalidContact,
    NotFound,
    OrderNotReady,
    PolicyViolation,
    RateLimited,
    RejectedIdentifier,
    Unauthorized,
    Unavailable,
    UnknownProfile,
    UnsupportedContact,
    UnsupportedIdentifier,
    UserActionRequired,
    ValidationFailed,
)
from ca_core.principal import Principal
from ca_core.records import (
    AcmeAccount,
    AcmeAuthorization,
    AcmeChallenge,
    AcmeOrder,
    AuditEvent,
    CertificateRecord,
    EabKey,
    Organization,
)
from ca_core.storage import (
    AcmeStore,
    CertificateStore,
    StoreConflict,
    StoreError,
    TenantStore,
)

log = logging.getLogger(__name__)

CHALLENGE_TYPES_DNS = ("http-01", "dns-01", "tls-alpn-01")
CHALLENGE_TYPES_WILDCARD = ("dns-01",)
CHALLENGE_TYPES_IP = ("http-01", "tls-alpn-01")  # RFC 8738 section 7
MAX_IDENTIFIERS = 100
# A validation still "processing" this long after it began lost its process (a restart, a
# crash): the next read of its authorization starts it again.
STALE_VALIDATION = dt.timedelta(seconds=60)


class ChallengeValidator(Protocol):
    """The validation authority the RA asks (RFC 8555 section 8, RFC 8737, RFC 8738): it
    fetches what the applicant published for a challenge and compares it with the key
    authorization. That takes network I/O, so it lives outside ca_core (``va``), as
    Boulder's VA is apart from its RA; tests can hand the RA a fake."""

    async def validate(self, challenge_type: str, identifier_type: str, value: str,
                       token: str, key_authorization: str) -> None:
        """Return when the challenge is met; ValidationFailed (ca_core.errors) when not."""

    async def aclose(self) -> None:
        """Release connections; called once, when the service stops."""


def error_record(error: CAError, identifier: tuple[str, str] | None = None
                 ) -> dict[str, Any]:
    """How a failure is kept in an order or a challenge (RFC 8555 7.1.3, 7.1.5 ``error``):
    the domain kind, the client's message and the identifier it concerns; the front-end
    renders it as a problem document."""
    record: dict[str, Any] = {"kind": error.kind, "detail": error.detail}
    if identifier is not None:
        record["identifier"] = {"type": identifier[0], "value": identifier[1]}
    return record


def key_authorization(token: str, thumbprint: str) -> str:
    """RFC 8555 8.1: what a challenge's response must hold, from the account key's RFC 7638
    thumbprint (the front-end computes it when the key is registered)."""
    return f"{token}.{thumbprint}"


@dataclass(frozen=True, slots=True)
class AccountKey:
    """An account key as the front-end verified it: the public JWK (RFC 7517) and its
    RFC 7638 thumbprint, which names the account."""

    jwk: dict[str, Any]
    thumbprint: str


@dataclass(frozen=True, slots=True)
class AriCertId:
    """A certificate as RFC 9773 4.1 names it (the front-end decodes the text): its
    issuer's key identifier and its serial, and the text as the client wrote it."""

    text: str
    key_identifier: bytes
    serial: int


@dataclass(frozen=True, slots=True)
class AcmeSettings:
    eab_required: bool = False
    terms_of_service: str | None = None
    website: str | None = None
    caa_identities: tuple[str, ...] = ()
    # ACME profile name -> ca_core profile; the first is the default
    profiles: tuple[tuple[str, str], ...] = (("tlsserver", "vcc_service"),
                                             ("mtls", "mtls_service"))
    order_lifetime: dt.timedelta = dt.timedelta(days=7)
    authz_lifetime: dt.timedelta = dt.timedelta(days=30)  # a valid authorization is reused
    validation_attempts: int = 3
    validation_retry_seconds: float = 1.0
    finalize_wait_seconds: float = 5.0  # then the order stays processing (Retry-After)
    # The challenge POST waits this long for its validation (as step-ca validates in the
    # request): a client's first poll then finds the authorization decided, instead of
    # polling while it is processing; a slower validation is answered processing.
    challenge_wait_seconds: float = 2.0
    orders_per_account_per_hour: int = 300
    orders_per_org_per_hour: int = 3000
    accounts_per_org_per_hour: int = 300


@dataclass(frozen=True, slots=True)
class IdentifierPolicy:
    """Which identifiers an organization's accounts may order (its config["acme"])."""

    allow_all: bool = False
    domains: tuple[str, ...] = ()  # suffixes: "example.org" allows it and its subdomains
    ip_ranges: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    prevalidated_domains: tuple[str, ...] = ()  # authorized without a challenge

    @classmethod
    def of(cls, org: Organization, default_org: str) -> IdentifierPolicy:
        config = org.config.get("acme") if isinstance(org.config, dict) else None
        if not isinstance(config, dict):
            # The demo's default organization allows everything; others must say.
            return cls(allow_all=org.slug == default_org)
        return cls(
            allow_all=bool(config.get("allow_all", False)),
            domains=tuple(str(d).lower().lstrip(".") for d in config.get("allowed_domains", [])),
            ip_ranges=tuple(ipaddress.ip_network(r, strict=False)
                            for r in config.get("allowed_ip_ranges", [])),
            prevalidated_domains=tuple(str(d).lower().lstrip(".")
                                       for d in config.get("prevalidated_domains", [])),
        )

    @staticmethod
    def _under(name: str, suffixes: Sequence[str]) -> bool:
        return any(name == s or name.endswith("." + s) for s in suffixes)

    def allows(self, kind: str, value: str) -> bool:
        if self.allow_all:
            return True
        if kind == "dns":
            return self._under(value.removeprefix("*."), self.domains)
        address = ipaddress.ip_address(value)
        return any(address in network for network in self.ip_ranges)

    def prevalidated(self, kind: str, value: str) -> bool:
        return kind == "dns" and self._under(value.removeprefix("*."),
                                             self.prevalidated_domains)


@dataclass(frozen=True, slots=True)
class RenewalWindow:
    start: dt.datetime
    end: dt.datetime
    explanation: str | None = None


@dataclass
class _Tasks:
    """Background work (validations, slow issuance) that outlives the request."""

    running: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        return task


def acting_account(account_id: str, org_id: str) -> Principal:
    """Who an ACME account is to the Authority: a certificate manager of its own
    organization (never the system), so the Authority's tenant checks apply to it."""
    return Principal("service", f"acme:{account_id}", org_id, "cert_manager")


def normalize_identifier(kind: Any, value: Any) -> tuple[str, str]:
    """The canonical (type, value) of an identifier; BadRequest or its kinds if none."""
    if kind == "dns" and isinstance(value, str):
        name = value.strip().lower().rstrip(".")
        if not x509build.valid_dns_name(name, allow_wildcard=True) or "." not in name \
                or name.count("*") > 1 or ("*" in name and not name.startswith("*.")):
            raise RejectedIdentifier(f"{value!r} is not a valid DNS name",
                                     [("dns", str(value), "not a valid DNS name")])
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return "dns", name
        raise BadRequest(f"{value} is an IP address: use type ip")
    if kind == "ip" and isinstance(value, str):
        try:
            address = ipaddress.ip_address(value.strip())
        except ValueError:
            raise BadRequest(f"{value!r} is not an IP address") from None
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise BadRequest("an IP identifier has no zone (RFC 8738)")
        return "ip", str(address)
    if kind in ("dns", "ip"):
        raise BadRequest(f"the value of a {kind} identifier is a string")
    raise UnsupportedIdentifier(f"identifiers of type {kind!r} are not supported")


class AcmeServiceStore(AcmeStore, CertificateStore, TenantStore, Protocol):
    """What the ACME service reads and writes (step-ca's acme/db.go): its accounts, EAB
    keys, orders and authorizations, the certificates orders name, the organization's ACME
    policy."""


class AcmeService:
    """The ACME RA: accounts, orders, authorizations, validation, issuance."""

    def __init__(self, authority: Authority, state: AcmeState, validator: ChallengeValidator,
                 settings: AcmeSettings) -> None:
        self.authority = authority
        self.store: AcmeServiceStore = authority.store
        self.state = state
        self.validator = validator
        self.settings = settings
        self._tasks = _Tasks()
        self._validating: set[tuple[str, str]] = set()  # (authz id, type) in this process
        self._profiles = dict(settings.profiles)

    @property
    def profile_names(self) -> list[str]:
        return [name for name, _ in self.settings.profiles]

    def profile_description(self, name: str) -> str:
        """The directory's description of an ACME profile: its built-in's, or for a
        certificate template (resolved per organization at order time) its name."""
        target = self._profiles[name]
        try:
            return self.authority.profile(target).description
        except UnknownProfile:
            return f"certificate template {target}"

    # ------------------------------------------------------------------ helpers
    async def organization(self, slug: str) -> Organization:
        try:
            return await self.authority.organization(slug)
        except NotFound:
            raise NotFound(f"no ACME directory for {slug!r}") from None

    def _now(self) -> dt.datetime:
        return self.authority.clock()

    async def _rate(self, key: str, limit: int, what: str) -> None:
        try:
            retry = await self.state.hit(key, limit, 3600)
        except StateUnavailable as exc:
            log.warning("ACME rate limiter unavailable: %s", exc)
            return  # fail open: the limit protects capacity, not security
        if retry is not None:
            raise RateLimited(f"too many {what}; retry later", retry_after=retry)

    @staticmethod
    def _order_event(order: AcmeOrder, **data: Any) -> AuditEvent:
        """An order's state change, recorded with it (DESIGN: every state change)."""
        return AuditEvent(
            event_type=f"acme.order.{order.status}", category="acme", action=order.status,
            actor_type="acme_account", actor_id=order.account_id, org_id=order.org_id,
            resource_type="acme_order", resource_id=order.order_id, data=data)

    @staticmethod
    def _authz_event(authz: AcmeAuthorization, org_id: str | None, **data: Any) -> AuditEvent:
        """An authorization's (or its challenge's) state change, recorded with it."""
        return AuditEvent(
            event_type=f"acme.authorization.{authz.status}", category="acme",
            action=authz.status, actor_type="acme_account", actor_id=authz.account_id,
            org_id=org_id, resource_type="acme_authorization", resource_id=authz.authz_id,
            data={"identifier": f"{authz.identifier_type}:{authz.identifier_value}", **data})

    def _audit(self, kind: str, account: AcmeAccount, **data: Any) -> AuditEvent:
        return AuditEvent(
            event_type=f"acme.{kind}", category="acme", action=kind,
            actor_type="acme_account", actor_id=account.account_id, org_id=account.org_id,
            resource_type="acme_account", resource_id=account.account_id, data=data)

    # ------------------------------------------------------------------ nonces
    async def new_nonce(self) -> str:
        try:
            return await self.state.issue_nonce()
        except StateUnavailable as exc:
            raise Unavailable("nonces are unavailable") from exc

    async def use_nonce(self, nonce: str) -> None:
        try:
            ok = await self.state.consume_nonce(nonce)
        except StateUnavailable as exc:
            raise Unavailable("nonces are unavailable") from exc
        if not ok:
            raise BadNonce("the nonce is unknown, used or expired")

    # ------------------------------------------------------------------ EAB
    async def eab_key(self, kid: str, org: Organization) -> EabKey:
        key = await self.store.get_eab_key(kid)
        if key is None or key.account_id is not None:
            raise Unauthorized("unknown or already used EAB key id")
        default = org.slug == self.authority.settings.default_org
        if key.org_id != org.org_id and not default:
            raise Unauthorized("the EAB key belongs to another organization")
        await self._require_active(key.org_id)
        return key

    async def _require_active(self, org_id: str) -> None:
        """A disabled organization registers no accounts, and its existing accounts are
        refused at the account lookup of every JWS request (read fresh: in every process
        at once; issuance checks again)."""
        await self.authority.credential_org(org_id)

    async def set_policy(self, org_slug: str, allow_all: bool | None = None,
                         domains: Sequence[str] | None = None,
                         ip_ranges: Sequence[str] | None = None,
                         prevalidated: Sequence[str] | None = None,
                         actor: str = "vcc-pki cli") -> dict[str, Any]:
        """Change an organization's identifier policy (``None``: leave that part); returns
        the policy now in force. BadRequest for a range or name that is not one."""
        org = await self.store.get_organization(org_slug)
        if org is None:
            raise NotFound(f"no organization {org_slug!r}")
        policy = dict(org.config.get("acme") or {})
        if allow_all is not None:
            policy["allow_all"] = allow_all
        for key, names in (("allowed_domains", domains), ("prevalidated_domains", prevalidated)):
            if names is not None:
                checked = [n.strip().lower().lstrip(".") for n in names if n.strip()]
                for name in checked:
                    if not x509build.valid_dns_name(name, allow_wildcard=False):
                        raise BadRequest(f"{name!r} is not a DNS name")
                policy[key] = checked
        if ip_ranges is not None:
            try:
                policy["allowed_ip_ranges"] = [
                    str(ipaddress.ip_network(r.strip(), strict=False))
                    for r in ip_ranges if r.strip()]
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        if policy != (org.config.get("acme") or {}):
            await self.store.update_organization_config(
                org.org_id, {**org.config, "acme": policy}, AuditEvent(
                    event_type="organization.acme_policy", category="organization",
                    action="update", actor_type="system", actor_id=actor, org_id=org.org_id,
                    resource_type="organization", resource_id=org.org_id,
                    data={"acme": policy}))
        return policy

    # ------------------------------------------------------------------ accounts
    async def find_account(self, thumbprint: str) -> AcmeAccount | None:
        """The account of this key (lookup by jwk: new-account, onlyReturnExisting);
        Unauthorized for an account of a disabled organization, as ``account`` (by kid)."""
        found = await self.store.find_acme_account(thumbprint)
        if found is not None:
            await self._require_active(found.org_id)
        return found

    async def account(self, account_id: str) -> AcmeAccount:
        return (await self.account_and_org(account_id))[0]

    async def account_and_org(self, account_id: str) -> tuple[AcmeAccount, Organization]:
        """The account of a kid-signed request and its (active) organization, read fresh
        on every request in one read: a deactivation, a key rollover or a disabled
        organization applies to the next request in every process."""
        found = await self.store.get_acme_account_with_org(account_id)
        if found is None:
            raise AccountDoesNotExist("no such account")
        account, org = found
        if account.status != "valid":
            raise Unauthorized(f"the account is {account.status}")
        return account, self.authority.credential_org_read(org)

    async def new_account(self, org: Organization, key: AccountKey,
                          contact: Sequence[str], tos_agreed: bool,
                          eab: EabKey | None) -> tuple[AcmeAccount, bool]:
        existing = await self.find_account(key.thumbprint)
        if existing is not None:
            return existing, False
        if self.settings.eab_required and eab is None:
            raise ExternalAccountRequired("this server requires External Account Binding")
        if self.settings.terms_of_service and not tos_agreed:
            raise UserActionRequired("agree to the terms of service")
        checked = self._check_contact(contact)
        org_id = eab.org_id if eab is not None else org.org_id
        await self._require_active(org_id)
        await self._rate(f"accounts:{org_id}", self.settings.accounts_per_org_per_hour,
                         "new accounts for this organization")
        account = AcmeAccount(
            account_id=secrets.token_urlsafe(12), org_id=org_id,
            key_thumbprint=key.thumbprint, jwk=dict(key.jwk), contact=checked,
            tos_agreed=tos_agreed, eab_kid=None if eab is None else eab.kid,
            created_at=self._now())
        try:
            await self.store.add_acme_account(account, self._audit(
                "account_created", account, eab_kid=account.eab_kid, contact=list(checked)))
        except StoreConflict:
            again = await self.find_account(key.thumbprint)
            if again is not None:  # the same key registered concurrently
                return again, False
            raise Unauthorized("the EAB key was used meanwhile") from None
        return account, True

    @staticmethod
    def _check_contact(contact: Sequence[Any]) -> tuple[str, ...]:
        checked = []
        for item in contact:
            if not isinstance(item, str) or not item.startswith("mailto:"):
                raise UnsupportedContact("only mailto: contacts are supported")
            address = item[len("mailto:"):]
            if "," in address or "?" in address or "@" not in address or len(address) > 254:
                raise InvalidContact(f"{item!r} is not a valid contact")
            checked.append(item)
        if len(checked) > 10:
            raise BadRequest("at most 10 contacts")
        return tuple(checked)

    async def update_account(self, account: AcmeAccount, contact: Sequence[str] | None,
                             deactivate: bool) -> AcmeAccount:
        updated = account
        if contact is not None:
            updated = replace(updated, contact=self._check_contact(contact))
        if deactivate:
            updated = replace(updated, status="deactivated")
        if updated != account:
            await self.store.update_acme_account(updated, self._audit(
                "account_deactivated" if deactivate else "account_updated", updated,
                contact=list(updated.contact)))
        return updated

    async def change_key(self, account: AcmeAccount, new_key: AccountKey) -> AcmeAccount:
        thumbprint = new_key.thumbprint
        other = await self.store.find_acme_account(thumbprint)
        if other is not None:
            raise AccountKeyInUse("the new key is another account's")
        updated = replace(account, jwk=dict(new_key.jwk), key_thumbprint=thumbprint)
        try:
            await self.store.update_acme_account(updated, self._audit(
                "account_key_changed", updated, old=account.key_thumbprint, new=thumbprint))
        except StoreConflict:
            raise AccountKeyInUse("the new key is another account's") from None
        return updated

    # ------------------------------------------------------------------ orders
    async def new_order(self, account: AcmeAccount, identifiers: Any,
                        not_before: dt.datetime | None, not_after: dt.datetime | None,
                        profile: str | None, replaces: AriCertId | None,
                        org: Organization | None = None
                        ) -> tuple[AcmeOrder, list[AcmeAuthorization]]:
        """``org``: the account's organization when the caller read it from the store in
        this request (``account_and_org``); else it is read here."""
        if not isinstance(identifiers, list) or not identifiers:
            raise BadRequest("an order needs identifiers")
        if len(identifiers) > MAX_IDENTIFIERS:
            raise RejectedIdentifier(f"at most {MAX_IDENTIFIERS} identifiers")
        wanted: list[tuple[str, str]] = []
        for item in identifiers:
            if not isinstance(item, dict):
                raise BadRequest("an identifier is an object")
            pair = normalize_identifier(item.get("type"), item.get("value"))
            if pair not in wanted:
                wanted.append(pair)
        # From the store, not the Authority's cache: `vcc-pki acme policy` in another process
        # applies to the next order.
        if org is None or org.org_id != account.org_id:
            org = await self.store.get_organization_by_id(account.org_id)
        if org is None:
            raise Forbidden("the account's organization is gone")
        policy = IdentifierPolicy.of(org, self.authority.settings.default_org)
        refused = [(kind, value, f"{value} is not allowed for organization {org.slug}")
                   for kind, value in wanted if not policy.allows(kind, value)]
        if refused:
            raise RejectedIdentifier("the organization's policy forbids some identifiers",
                                     refused)
        profile_name = profile or self.profile_names[0]
        if profile_name not in self._profiles:
            raise UnknownProfile(f"unknown profile {profile_name!r}; "
                                 f"offered: {', '.join(self.profile_names)}")
        ca_profile = await self.authority.resolve_profile(self._profiles[profile_name],
                                                          org.org_id)
        now = self._now()
        self.authority.check_requested_validity(ca_profile, not_before, not_after)
        if replaces is not None:
            await self._check_replaces(account, replaces)
        await self._rate(f"orders:account:{account.account_id}",
                         self.settings.orders_per_account_per_hour, "new orders for this account")
        await self._rate(f"orders:org:{account.org_id}",
                         self.settings.orders_per_org_per_hour,
                         "new orders for this organization")

        authz_ids: list[str] = []
        new_authzs: list[AcmeAuthorization] = []
        reused: list[AcmeAuthorization] = []
        expires = now + self.settings.order_lifetime
        for kind, value in wanted:
            wildcard = value.startswith("*.")
            base = value[2:] if wildcard else value
            reuse = await self.store.find_valid_acme_authorization(
                account.account_id, kind, base, wildcard, now)
            if reuse is not None:
                authz_ids.append(reuse.authz_id)
                reused.append(reuse)
                expires = min(expires, reuse.expires)
                continue
            if policy.prevalidated(kind, value):
                authz = AcmeAuthorization(
                    authz_id=secrets.token_urlsafe(12), account_id=account.account_id,
                    identifier_type=kind, identifier_value=base, wildcard=wildcard,
                    status="valid", expires=now + self.settings.authz_lifetime,
                    challenges=(), created_at=now)
            else:
                types = (CHALLENGE_TYPES_WILDCARD if wildcard else
                         CHALLENGE_TYPES_IP if kind == "ip" else CHALLENGE_TYPES_DNS)
                authz = AcmeAuthorization(
                    authz_id=secrets.token_urlsafe(12), account_id=account.account_id,
                    identifier_type=kind, identifier_value=base, wildcard=wildcard,
                    status="pending", expires=now + self.settings.order_lifetime,
                    challenges=tuple(AcmeChallenge(t, secrets.token_urlsafe(32))
                                     for t in types),
                    created_at=now)
            new_authzs.append(authz)
            authz_ids.append(authz.authz_id)
        order = AcmeOrder(
            order_id=secrets.token_urlsafe(12), account_id=account.account_id,
            org_id=account.org_id, status="pending", expires=expires,
            identifiers=tuple(wanted), authz_ids=tuple(authz_ids), profile=profile_name,
            not_before=not_before, not_after=not_after,
            replaces=None if replaces is None else replaces.text, created_at=now)
        await self.store.add_acme_order(order, new_authzs, self._order_event(
            order, identifiers=[f"{t}:{v}" for t, v in order.identifiers],
            new_authorizations=[a.authz_id for a in new_authzs]))
        by_id = {a.authz_id: a for a in (*reused, *new_authzs)}
        return await self._refresh_order(order, [by_id[i] for i in authz_ids])

    async def _check_replaces(self, account: AcmeAccount, cert_id: AriCertId) -> None:
        record = await self._certificate_by_ari_id(cert_id)
        if record is None:
            raise BadRequest("replaces names no certificate of this CA")
        order = await self.store.find_acme_order_by_cert(record.cert_id)
        if order is None or order.account_id != account.account_id:
            raise Forbidden("replaces names a certificate of another account")

    async def _refresh_order(self, order: AcmeOrder,
                             authzs: list[AcmeAuthorization] | None = None,
                             store: bool = True
                             ) -> tuple[AcmeOrder, list[AcmeAuthorization]]:
        """The order with its status brought up to date from its authorizations (read from
        the store unless the caller has them), and stored when it changed (unless not
        ``store``: then the caller stores it). Only a pending order's status depends on
        them: for any other, they are not read and the list is empty."""
        if authzs is None:
            authzs = await self.store.get_acme_authorizations(order.authz_ids) \
                if order.status == "pending" else []
        now = self._now()
        authzs = [replace(a, status="expired") if a.status in ("pending", "valid")
                  and a.expires <= now else a for a in authzs]
        status = order.status
        error = order.error
        if status in ("pending", "ready", "processing") and order.expires <= now:
            status, error = "invalid", error_record(BadRequest("the order expired"))
        elif status == "pending":
            if any(a.status in ("invalid", "deactivated", "expired", "revoked") for a in authzs):
                failed = next(a for a in authzs if a.status != "valid" and a.status != "pending")
                status = "invalid"
                error = next((c.error for c in failed.challenges if c.error), None) or \
                    error_record(Unauthorized(f"authorization {failed.status}"))
            elif authzs and all(a.status == "valid" for a in authzs):
                status = "ready"
        if status != order.status:
            updated = replace(order, status=status, error=error)
            if not store or status == "ready":
                # "ready" is not stored: it follows from the stored authorizations on every
                # read, and finalize stores it (its event) with "processing" in one write.
                return updated, authzs
            if await self.store.update_acme_order(updated, order.status,
                                                  self._order_event(updated)):
                order = updated
            else:
                order = await self.store.get_acme_order(order.order_id) or order
        return order, authzs

    async def order(self, account: AcmeAccount, order_id: str
                    ) -> tuple[AcmeOrder, list[AcmeAuthorization]]:
        order = await self.store.get_acme_order(order_id)
        if order is None or order.account_id != account.account_id:
            raise NotFound("no such order")
        return await self._refresh_order(order)

    # ------------------------------------------------------------------ authorizations
    async def authorization(self, account: AcmeAccount, authz_id: str) -> AcmeAuthorization:
        found = await self.store.get_acme_authorizations([authz_id])
        if not found or found[0].account_id != account.account_id:
            raise NotFound("no such authorization")
        authz = found[0]
        now = self._now()
        if authz.status in ("pending", "valid") and authz.expires <= now:
            return replace(authz, status="expired")
        if authz.status == "pending":
            for challenge in authz.challenges:
                if challenge.status == "processing" and (
                        authz.authz_id, challenge.type) not in self._validating and (
                        challenge.started is None or now - challenge.started > STALE_VALIDATION):
                    log.info("restarting the %s validation of %s", challenge.type,
                             authz.identifier_value)
                    self._start_validation(account, authz, challenge)
        return authz

    async def deactivate_authorization(self, account: AcmeAccount, authz_id: str
                                       ) -> AcmeAuthorization:
        authz = await self.authorization(account, authz_id)
        if authz.status not in ("pending", "valid"):
            raise BadRequest(f"the authorization is {authz.status}")
        updated = replace(authz, status="deactivated")
        if not await self.store.update_acme_authorization(
                updated, authz.status, self._authz_event(updated, account.org_id)):
            raise Conflict("the authorization changed meanwhile")
        return updated

    async def respond_to_challenge(self, account: AcmeAccount, authz_id: str,
                                   challenge_type: str) -> tuple[AcmeAuthorization,
                                                                 AcmeChallenge]:
        authz = await self.authorization(account, authz_id)
        challenge = next((c for c in authz.challenges if c.type == challenge_type), None)
        if challenge is None:
            raise NotFound("no such challenge")
        if authz.status != "pending" or challenge.status != "pending":
            return authz, challenge  # RFC 8555 7.5.1: answering again changes nothing
        processing = replace(challenge, status="processing", started=self._now())
        updated = replace(authz, challenges=tuple(
            processing if c.type == challenge_type else c for c in authz.challenges))
        if not await self.store.update_acme_authorization(
                updated, "pending", self._authz_event(
                    updated, account.org_id, challenge=challenge_type,
                    challenge_status="processing")):
            fresh = await self.authorization(account, authz_id)
            return fresh, next(c for c in fresh.challenges if c.type == challenge_type)
        # Later requests see "processing" until the validator decides; this one waits a
        # moment for the decision (each poll it saves costs a whole signed request).
        task = self._start_validation(account, updated, processing)
        if self.settings.challenge_wait_seconds > 0:
            try:
                final = await asyncio.wait_for(asyncio.shield(task),
                                               self.settings.challenge_wait_seconds)
            except TimeoutError:
                final = None
            except Exception:  # the task's own failure: later reads restart it (stale)
                log.exception("ACME validation of %s failed", authz.identifier_value)
                final = None
            if final is not None:
                decided = next(c for c in final.challenges if c.type == challenge_type)
                return final, decided
        return updated, processing

    def _start_validation(self, account: AcmeAccount, authz: AcmeAuthorization,
                          challenge: AcmeChallenge) -> asyncio.Task[AcmeAuthorization | None]:
        key = (authz.authz_id, challenge.type)
        self._validating.add(key)
        task = self._tasks.spawn(self._validate(account, authz, challenge))
        task.add_done_callback(lambda _: self._validating.discard(key))
        return task

    async def _validate(self, account: AcmeAccount, authz: AcmeAuthorization,
                        challenge: AcmeChallenge) -> AcmeAuthorization | None:
        """Validate and store the outcome; the authorization as stored, or None when it was
        not stored (changed meanwhile, or the store failed)."""
        identifier = (authz.identifier_type, authz.identifier_value)
        key_auth = key_authorization(challenge.token, account.key_thumbprint)
        error: dict[str, Any] | None = None
        for attempt in range(self.settings.validation_attempts):
            try:
                await self.validator.validate(challenge.type, authz.identifier_type,
                                              authz.identifier_value, challenge.token, key_auth)
                error = None
                break
            except ValidationFailed as exc:
                error = error_record(exc, identifier)
                log.info("ACME %s for %s failed (attempt %d): %s", challenge.type,
                         authz.identifier_value, attempt + 1, exc.detail)
            except Exception:
                log.exception("ACME validation of %s crashed", authz.identifier_value)
                error = error_record(CAError("validation failed"), identifier)
                break
            if attempt + 1 < self.settings.validation_attempts:
                await asyncio.sleep(self.settings.validation_retry_seconds * (attempt + 1))
        now = self._now()
        if error is None:
            done = replace(challenge, status="valid", validated=now)
            final = replace(authz, status="valid", expires=now + self.settings.authz_lifetime)
        else:
            done = replace(challenge, status="invalid", error=error)
            final = replace(authz, status="invalid")
        final = replace(final, challenges=tuple(
            done if c.type == challenge.type else c for c in authz.challenges))
        try:
            if await self.store.update_acme_authorization(final, "pending", self._authz_event(
                    final, account.org_id, challenge=challenge.type)):
                return final
        except StoreError:
            log.exception("storing the validation of %s failed", authz.authz_id)
        return None

    # ------------------------------------------------------------------ finalize
    async def finalize(self, account: AcmeAccount, order_id: str, csr_der: bytes
                       ) -> AcmeOrder:
        stored = await self.store.get_acme_order(order_id)
        if stored is None or stored.account_id != account.account_id:
            raise NotFound("no such order")
        # A pending order whose authorizations are all valid (ready, which reads do not
        # store) goes to processing in one write, its ready event and its processing event
        # with it.
        order, authzs = await self._refresh_order(stored, store=False)
        if order.status != "ready":
            if order.status != stored.status:  # e.g. expired: stored as a read stores it
                order, _ = await self._refresh_order(stored, authzs)
            raise OrderNotReady(f"the order is {order.status}, not ready")
        csr = parse_csr(csr_der)
        self._check_csr_identifiers(csr, order)
        processing = replace(order, status="processing")
        events = [self._order_event(order)] if stored.status != "ready" else []
        events.append(self._order_event(processing))
        if not await self.store.update_acme_order(processing, stored.status, events):
            # Changed meanwhile: "ready" stored (by a version that stored it on reads;
            # then finalize from there), or another finalize got there first.
            if stored.status != "pending" or not await self.store.update_acme_order(
                    processing, "ready", events[-1:]):
                raise OrderNotReady("the order is being finalized already")
        task = self._tasks.spawn(self._issue(processing, csr))
        try:
            result: AcmeOrder = await asyncio.wait_for(asyncio.shield(task),
                                                       self.settings.finalize_wait_seconds)
            return result
        except TimeoutError:
            return processing  # the client polls the order (Retry-After)

    @staticmethod
    def _check_csr_identifiers(csr: x509.CertificateSigningRequest, order: AcmeOrder) -> None:
        try:
            sans = x509build.sans_from_csr(csr)
        except PolicyViolation as exc:  # a SAN of a kind never issued: the CSR is at fault
            raise BadCSR(exc.detail) from None
        if sans.email or sans.uri:
            raise BadCSR("the CSR names email or URI SANs the order does not")
        asked = {("dns", d.lower()) for d in sans.dns} | \
            {("ip", str(ipaddress.ip_address(i))) for i in sans.ip}
        for cn in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
            named = x509build.common_name_identifier(str(cn.value))
            if named is None:
                raise BadCSR("the CSR must name exactly the order's identifiers")
            asked.add(named)
        if asked != set(order.identifiers):
            raise BadCSR("the CSR must name exactly the order's identifiers")

    async def _issue(self, order: AcmeOrder, csr: x509.CertificateSigningRequest) -> AcmeOrder:
        org = await self.authority.organization_by_id(order.org_id)
        principal = acting_account(order.account_id, org.org_id)
        store = self.store

        async def record_with(cert: CertificateRecord, audit: AuditEvent) -> None:
            # The certificate and the order naming it in one transaction: an order that
            # changed meanwhile (expired while processing) gets no certificate recorded.
            valid = replace(order, status="valid", cert_id=cert.cert_id)
            if not await store.add_certificate_for_acme_order(
                    cert, audit, valid, "processing", self._order_event(
                        valid, cert_id=cert.cert_id, serial=cert.serial_hex)):
                raise OrderNotReady("the order changed while it was being finalized")

        try:
            issued = await self.authority.issue(IssuanceRequest(
                csr=csr, profile=self._profiles[order.profile], org=org.slug,
                not_before=order.not_before, not_after=order.not_after,
                requested_at=order.created_at), principal, record_with=record_with)
        except UnknownProfile as exc:  # the ACME profile names no CA profile: ours
            log.error("ACME issuance for order %s: %s", order.order_id, exc.detail)
            error: CAError = CAError("issuance failed")
        except BadRequest as exc:  # the CSR or its key broke a rule of the profile
            error = exc if isinstance(exc, BadCSR) else BadCSR(exc.detail)
        except Unavailable as exc:
            error = exc
        except CAError as exc:  # anything else is ours, not the client's
            log.error("ACME issuance for order %s refused: %s", order.order_id, exc.detail)
            error = CAError("issuance failed")
        except Exception:
            log.exception("ACME issuance for order %s failed", order.order_id)
            error = CAError("issuance failed")
        else:
            return replace(order, status="valid", cert_id=issued.record.cert_id)
        failed = replace(order, status="invalid", error=error_record(error))
        await self.store.update_acme_order(failed, "processing", self._order_event(failed))
        raise error

    # ------------------------------------------------------------------ certificates
    async def certificate_chains(self, account: AcmeAccount, cert_id: str
                                 ) -> tuple[list[bytes], str]:
        """The PEM chains of a certificate (leaf, then CAs below the root): the issuer's own
        chain first, then one per cross-certificate (RFC 8555 7.4.2 rel="alternate"); and
        the issuer's caIssuers URL (for ``Link: rel="up"``)."""
        order = await self.store.find_acme_order_by_cert(cert_id)
        if order is None or order.account_id != account.account_id:
            raise NotFound("no such certificate")
        record = await self.store.get_certificate_by_id(cert_id)
        if record is None:
            raise NotFound("no such certificate")
        issuer = await self.authority.ca_by_id(record.issuer_ca_id)
        leaf = pem.armor("CERTIFICATE", record.certificate_der)
        chains = [issuer.chain, *await alternate_chains(self.authority, issuer)]
        return ([leaf + chain_pem(chain).encode() for chain in chains],
                self.authority.settings.ca_issuers_url(issuer.record.name))

    async def revoke(self, certificate_der: bytes, reason: int | None,
                     account: AcmeAccount | None, jwk_public_key: PublicKeyTypes | None) -> None:
        """Revoke by the account that ordered it, or by the holder of its private key
        (RFC 8555 7.6). Neither is the system: the Authority sees an account as a caller in
        the account's organization, and the key holder as one in the organization of the
        certificate whose key it proved, so its tenant checks apply as to any caller."""
        try:
            certificate = x509.load_der_x509_certificate(certificate_der)
        except ValueError:
            raise BadRequest("not a DER certificate") from None
        candidates = await self.store.find_certificates_by_serial(
            serial_hex(certificate.serial_number))
        record = next((r for r in candidates if r.certificate_der == certificate_der), None)
        if record is None:
            raise NotFound("this CA did not issue that certificate")
        if account is not None:
            order = await self.store.find_acme_order_by_cert(record.cert_id)
            if order is None or order.account_id != account.account_id:
                raise Forbidden("the account did not order this certificate")
        elif jwk_public_key is None or jwk_public_key != certificate.public_key():
            raise Forbidden("the JWS key is not the certificate's key")
        reasons = {0: "unspecified", 1: "key_compromise", 3: "affiliation_changed",
                   4: "superseded", 5: "cessation_of_operation", 9: "privilege_withdrawn"}
        code = 0 if reason is None else reason
        if code not in reasons:
            raise BadRevocationReason(f"reason code {code} is not allowed")
        if record.status == "revoked":
            raise AlreadyRevoked("the certificate is revoked already")
        principal = acting_account(account.account_id, account.org_id) if account else \
            Principal("service", "acme:certificate-key", record.org_id, "cert_manager")
        try:
            await self.authority.revoke(record.serial_hex, reasons[code], principal)
        except NotFound:  # not in the caller's organization: not the caller's to revoke
            raise Forbidden("the account may not revoke this certificate") from None
        except Conflict as exc:  # revoked meanwhile (or, as before, a serial two CAs used)
            raise AlreadyRevoked(exc.detail) from None

    # ------------------------------------------------------------------ ARI (RFC 9773)
    async def _certificate_by_ari_id(self, cert_id: AriCertId) -> Any:
        for record in await self.store.find_certificates_by_serial(serial_hex(cert_id.serial)):
            try:
                issuer = await self.authority.ca_by_id(record.issuer_ca_id)
            except CAError:
                continue
            ski = issuer.certificate.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier).value.digest
            if ski == cert_id.key_identifier:
                return record
        return None

    async def renewal_info(self, cert_id: AriCertId) -> RenewalWindow:
        record = await self._certificate_by_ari_id(cert_id)
        if record is None:
            raise NotFound("no certificate with that identifier")
        now = self._now()
        if record.status == "revoked":
            return RenewalWindow(now - dt.timedelta(hours=1), now - dt.timedelta(minutes=1),
                                 None)
        lifetime = record.not_after - record.not_before
        # Renew in the third quarter of the lifetime (two thirds, like certbot's default,
        # with room to retry before the end).
        start = record.not_before + lifetime * 2 / 3
        end = record.not_before + lifetime * 3 / 4
        return RenewalWindow(start, end)

    async def aclose(self) -> None:
        for task in list(self._tasks.running):
            task.cancel()
        await asyncio.gather(*self._tasks.running, return_exceptions=True)
        await self.validator.aclose()

