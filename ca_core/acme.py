"""ACME registration authority (RFC 8555): the rules behind the ACME front-end.

The front-end (protocols/acme) verifies JWS signatures, nonces and URLs and hands this
module verified facts: "the holder of this key asks for ...". Here live the decisions:
accounts and their organization (directory or External Account Binding), identifier
policy per organization, orders and authorizations with their state machine, challenge
validation in the background, finalization through ``Authority.issue``, revocation, and
ARI renewal windows (RFC 9773). Storage goes through the Store; signing through Authority.

Errors are ``AcmeProblem`` with an RFC 8555 error type (``urn:ietf:params:acme:error:*``
without the prefix), optional subproblems per identifier, and an HTTP status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import josepy
from asn1crypto import pem
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from josepy import json_util

from ca_core import x509build
from ca_core.acme_validation import ValidationFailed, Validator
from ca_core.authority import Authority, IssuanceRequest, chain_pem, parse_csr, serial_hex
from ca_core.cross import alternate_chains
from ca_core.errors import BadCSR, BadRequest, CAError, NotFound, PolicyViolation
from ca_core.principal import Principal
from db.acme_state import AcmeState, StateUnavailable
from db.records import (
    AcmeAccount,
    AcmeAuthorization,
    AcmeChallenge,
    AcmeOrder,
    AuditEvent,
    EabKey,
    Organization,
)
from db.store import StoreConflict, StoreError

log = logging.getLogger(__name__)

CHALLENGE_TYPES_DNS = ("http-01", "dns-01", "tls-alpn-01")
CHALLENGE_TYPES_WILDCARD = ("dns-01",)
CHALLENGE_TYPES_IP = ("http-01", "tls-alpn-01")  # RFC 8738 section 7
MAX_IDENTIFIERS = 100
# A validation still "processing" this long after it began lost its process (a restart, a
# crash): the next read of its authorization starts it again.
STALE_VALIDATION = dt.timedelta(seconds=60)


class AcmeProblem(CAError):
    """An RFC 8555 problem: ``acme_type`` is the part after ``urn:ietf:params:acme:error:``."""

    def __init__(self, acme_type: str, detail: str, status: int = 400,
                 subproblems: Sequence[dict[str, Any]] = (),
                 retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.acme_type = acme_type
        self.status = status
        self.subproblems = list(subproblems)
        self.retry_after = retry_after

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": f"urn:ietf:params:acme:error:{self.acme_type}",
                               "detail": self.detail, "status": self.status}
        if self.subproblems:
            doc["subproblems"] = self.subproblems
        return doc


def problem_document(acme_type: str, detail: str, identifier: tuple[str, str] | None = None
                     ) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": f"urn:ietf:params:acme:error:{acme_type}", "detail": detail}
    if identifier is not None:
        doc["identifier"] = {"type": identifier[0], "value": identifier[1]}
    return doc


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of the key itself: RSA and EC keys through
    josepy, which re-encodes the members from the key, so two spellings of one key (a
    leading zero octet in ``n``, say) have one thumbprint and so one account. josepy has no
    OKP keys: Ed25519's ``x`` is decoded and encoded again for the same reason."""
    kty = jwk.get("kty") if isinstance(jwk, dict) else None
    required = {"RSA": ("e", "n"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x")}.get(str(kty))
    if required is None or any(not isinstance(jwk.get(m), str) for m in required):
        raise AcmeProblem("badPublicKey", "unsupported or incomplete JWK")
    if kty == "OKP":
        canonical = json.dumps(
            {"crv": jwk["crv"], "kty": "OKP", "x": b64url(b64url_decode(jwk["x"], "the JWK's x"))},
            separators=(",", ":"), sort_keys=True)
        return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())
    try:
        key: josepy.jwk.JWK = josepy.jwk.JWK.from_json(  # type: ignore[assignment]
            {m: jwk[m] for m in ("kty", *required)})
        return b64url(key.thumbprint())
    except (josepy.errors.DeserializationError, ValueError, TypeError, KeyError,
            AttributeError):
        raise AcmeProblem("badPublicKey", "the JWK cannot be read") from None


def key_authorization(token: str, jwk: dict[str, Any]) -> str:
    return f"{token}.{jwk_thumbprint(jwk)}"


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 2), as josepy writes it."""
    text: str = json_util.encode_b64jose(data)
    return text


def b64url_decode(text: Any, what: str) -> bytes:
    """Strict base64url without padding (RFC 7515 2): josepy's decoder accepts padding and
    drops characters outside the alphabet, which an ACME server must refuse (malformed)."""
    if not isinstance(text, str) or "=" in text or "+" in text or "/" in text:
        raise AcmeProblem("malformed", f"{what} is not base64url without padding")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise AcmeProblem("malformed", f"{what} is not base64url") from None


def ari_cert_id(certificate: x509.Certificate) -> str:
    """RFC 9773 4.1: base64url(AKI keyIdentifier) '.' base64url(serial DER content)."""
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    serial = certificate.serial_number
    raw = serial.to_bytes((serial.bit_length() + 8) // 8, "big")  # DER: leading 0 if high bit
    return f"{b64url(aki.key_identifier or b'')}.{b64url(raw)}"


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


def normalize_identifier(kind: Any, value: Any) -> tuple[str, str]:
    """The canonical (type, value) of an identifier, or AcmeProblem."""
    if kind == "dns" and isinstance(value, str):
        name = value.strip().lower().rstrip(".")
        if not x509build.valid_dns_name(name, allow_wildcard=True) or "." not in name \
                or name.count("*") > 1 or ("*" in name and not name.startswith("*.")):
            raise AcmeProblem("rejectedIdentifier", f"{value!r} is not a valid DNS name",
                              subproblems=[problem_document(
                                  "rejectedIdentifier", "not a valid DNS name",
                                  ("dns", str(value)))])
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return "dns", name
        raise AcmeProblem("malformed", f"{value} is an IP address: use type ip")
    if kind == "ip" and isinstance(value, str):
        try:
            address = ipaddress.ip_address(value.strip())
        except ValueError:
            raise AcmeProblem("malformed", f"{value!r} is not an IP address") from None
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise AcmeProblem("malformed", "an IP identifier has no zone (RFC 8738)")
        return "ip", str(address)
    if kind in ("dns", "ip"):
        raise AcmeProblem("malformed", f"the value of a {kind} identifier is a string")
    raise AcmeProblem("unsupportedIdentifier", f"identifiers of type {kind!r} are not supported")


class AcmeService:
    """The ACME RA: accounts, orders, authorizations, validation, issuance."""

    def __init__(self, authority: Authority, state: AcmeState, validator: Validator,
                 settings: AcmeSettings) -> None:
        self.authority = authority
        self.store = authority.store
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
        return self.authority.profile(self._profiles[name]).description

    # ------------------------------------------------------------------ helpers
    async def organization(self, slug: str) -> Organization:
        try:
            return await self.authority.organization(slug)
        except NotFound:
            raise AcmeProblem("malformed", f"no ACME directory for {slug!r}", 404) from None

    def _now(self) -> dt.datetime:
        return self.authority.clock()

    async def _rate(self, key: str, limit: int, what: str) -> None:
        try:
            retry = await self.state.hit(key, limit, 3600)
        except StateUnavailable as exc:
            log.warning("ACME rate limiter unavailable: %s", exc)
            return  # fail open: the limit protects capacity, not security
        if retry is not None:
            raise AcmeProblem("rateLimited", f"too many {what}; retry later", 429,
                              retry_after=retry)

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
            raise AcmeProblem("serverInternal", "nonces are unavailable", 503) from exc

    async def use_nonce(self, nonce: str) -> None:
        try:
            ok = await self.state.consume_nonce(nonce)
        except StateUnavailable as exc:
            raise AcmeProblem("serverInternal", "nonces are unavailable", 503) from exc
        if not ok:
            raise AcmeProblem("badNonce", "the nonce is unknown, used or expired")

    # ------------------------------------------------------------------ EAB
    async def create_eab_key(self, org_slug: str, actor: str = "vcc-pki cli") -> EabKey:
        org = await self.authority.organization(org_slug)
        key = EabKey(kid=f"kid-{secrets.token_hex(8)}", org_id=org.org_id,
                     hmac_key=secrets.token_bytes(32), created_at=self._now())
        await self.store.add_eab_key(key, AuditEvent(
            event_type="acme.eab_created", category="acme", action="eab_created",
            actor_type="system", actor_id=actor, org_id=org.org_id,
            resource_type="acme_eab_key", resource_id=key.kid, data={"org": org.slug}))
        return key

    async def eab_key(self, kid: str, org: Organization) -> EabKey:
        key = await self.store.get_eab_key(kid)
        if key is None or key.account_id is not None:
            raise AcmeProblem("unauthorized", "unknown or already used EAB key id", 401)
        default = org.slug == self.authority.settings.default_org
        if key.org_id != org.org_id and not default:
            raise AcmeProblem("unauthorized", "the EAB key belongs to another organization",
                              401)
        return key

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
    async def find_account(self, jwk: dict[str, Any]) -> AcmeAccount | None:
        return await self.store.find_acme_account(jwk_thumbprint(jwk))

    async def account(self, account_id: str) -> AcmeAccount:
        account = await self.store.get_acme_account(account_id)
        if account is None:
            raise AcmeProblem("accountDoesNotExist", "no such account", 400)
        if account.status != "valid":
            raise AcmeProblem("unauthorized", f"the account is {account.status}", 401)
        return account

    async def new_account(self, org: Organization, jwk: dict[str, Any],
                          contact: Sequence[str], tos_agreed: bool,
                          eab: EabKey | None) -> tuple[AcmeAccount, bool]:
        existing = await self.find_account(jwk)
        if existing is not None:
            return existing, False
        if self.settings.eab_required and eab is None:
            raise AcmeProblem("externalAccountRequired",
                              "this server requires External Account Binding")
        if self.settings.terms_of_service and not tos_agreed:
            raise AcmeProblem("userActionRequired", "agree to the terms of service", 403)
        checked = self._check_contact(contact)
        org_id = eab.org_id if eab is not None else org.org_id
        await self._rate(f"accounts:{org_id}", self.settings.accounts_per_org_per_hour,
                         "new accounts for this organization")
        account = AcmeAccount(
            account_id=secrets.token_urlsafe(12), org_id=org_id,
            key_thumbprint=jwk_thumbprint(jwk), jwk=dict(jwk), contact=checked,
            tos_agreed=tos_agreed, eab_kid=None if eab is None else eab.kid,
            created_at=self._now())
        try:
            await self.store.add_acme_account(account, self._audit(
                "account_created", account, eab_kid=account.eab_kid, contact=list(checked)))
        except StoreConflict:
            again = await self.find_account(jwk)
            if again is not None:  # the same key registered concurrently
                return again, False
            raise AcmeProblem("unauthorized", "the EAB key was used meanwhile", 401) from None
        return account, True

    @staticmethod
    def _check_contact(contact: Sequence[Any]) -> tuple[str, ...]:
        checked = []
        for item in contact:
            if not isinstance(item, str) or not item.startswith("mailto:"):
                raise AcmeProblem("unsupportedContact", "only mailto: contacts are supported")
            address = item[len("mailto:"):]
            if "," in address or "?" in address or "@" not in address or len(address) > 254:
                raise AcmeProblem("invalidContact", f"{item!r} is not a valid contact")
            checked.append(item)
        if len(checked) > 10:
            raise AcmeProblem("malformed", "at most 10 contacts")
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

    async def change_key(self, account: AcmeAccount, new_jwk: dict[str, Any]) -> AcmeAccount:
        thumbprint = jwk_thumbprint(new_jwk)
        other = await self.store.find_acme_account(thumbprint)
        if other is not None:
            raise AcmeProblem("conflict", "the new key is another account's", 409)
        updated = replace(account, jwk=dict(new_jwk), key_thumbprint=thumbprint)
        try:
            await self.store.update_acme_account(updated, self._audit(
                "account_key_changed", updated, old=account.key_thumbprint, new=thumbprint))
        except StoreConflict:
            raise AcmeProblem("conflict", "the new key is another account's", 409) from None
        return updated

    # ------------------------------------------------------------------ orders
    async def new_order(self, account: AcmeAccount, identifiers: Any,
                        not_before: dt.datetime | None, not_after: dt.datetime | None,
                        profile: str | None, replaces: str | None
                        ) -> tuple[AcmeOrder, list[AcmeAuthorization]]:
        if not isinstance(identifiers, list) or not identifiers:
            raise AcmeProblem("malformed", "an order needs identifiers")
        if len(identifiers) > MAX_IDENTIFIERS:
            raise AcmeProblem("rejectedIdentifier", f"at most {MAX_IDENTIFIERS} identifiers")
        wanted: list[tuple[str, str]] = []
        for item in identifiers:
            if not isinstance(item, dict):
                raise AcmeProblem("malformed", "an identifier is an object")
            pair = normalize_identifier(item.get("type"), item.get("value"))
            if pair not in wanted:
                wanted.append(pair)
        # From the store, not the Authority's cache: `vcc-pki acme policy` in another process
        # applies to the next order.
        org = await self.store.get_organization_by_id(account.org_id)
        if org is None:
            raise AcmeProblem("unauthorized", "the account's organization is gone", 403)
        policy = IdentifierPolicy.of(org, self.authority.settings.default_org)
        refused = [problem_document("rejectedIdentifier",
                                    f"{value} is not allowed for organization {org.slug}",
                                    (kind, value))
                   for kind, value in wanted if not policy.allows(kind, value)]
        if refused:
            raise AcmeProblem("rejectedIdentifier",
                              "the organization's policy forbids some identifiers",
                              subproblems=refused)
        profile_name = profile or self.profile_names[0]
        if profile_name not in self._profiles:
            raise AcmeProblem("invalidProfile", f"unknown profile {profile_name!r}; "
                              f"offered: {', '.join(self.profile_names)}")
        ca_profile = self.authority.profile(self._profiles[profile_name])
        now = self._now()
        try:
            self.authority.check_requested_validity(ca_profile, not_before, not_after)
        except CAError as exc:
            raise AcmeProblem("malformed", exc.detail) from None
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
                    challenges=tuple(AcmeChallenge(t, b64url(secrets.token_bytes(32)))
                                     for t in types),
                    created_at=now)
            new_authzs.append(authz)
            authz_ids.append(authz.authz_id)
        order = AcmeOrder(
            order_id=secrets.token_urlsafe(12), account_id=account.account_id,
            org_id=account.org_id, status="pending", expires=expires,
            identifiers=tuple(wanted), authz_ids=tuple(authz_ids), profile=profile_name,
            not_before=not_before, not_after=not_after, replaces=replaces, created_at=now)
        await self.store.add_acme_order(order, new_authzs)
        by_id = {a.authz_id: a for a in (*reused, *new_authzs)}
        return await self._refresh_order(order, [by_id[i] for i in authz_ids])

    async def _check_replaces(self, account: AcmeAccount, cert_id: str) -> None:
        record = await self._certificate_by_ari_id(cert_id)
        if record is None:
            raise AcmeProblem("malformed", "replaces names no certificate of this CA")
        order = await self.store.find_acme_order_by_cert(record.cert_id)
        if order is None or order.account_id != account.account_id:
            raise AcmeProblem("unauthorized", "replaces names a certificate of another account",
                              403)

    async def _refresh_order(self, order: AcmeOrder,
                             authzs: list[AcmeAuthorization] | None = None
                             ) -> tuple[AcmeOrder, list[AcmeAuthorization]]:
        """The order with its status brought up to date from its authorizations (read from
        the store unless the caller has them). Only a pending order's status depends on
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
            status, error = "invalid", problem_document("malformed", "the order expired")
        elif status == "pending":
            if any(a.status in ("invalid", "deactivated", "expired", "revoked") for a in authzs):
                failed = next(a for a in authzs if a.status != "valid" and a.status != "pending")
                status = "invalid"
                error = next((c.error for c in failed.challenges if c.error), None) or \
                    problem_document("unauthorized", f"authorization {failed.status}")
            elif authzs and all(a.status == "valid" for a in authzs):
                status = "ready"
        if status != order.status:
            updated = replace(order, status=status, error=error)
            if await self.store.update_acme_order(updated, order.status):
                order = updated
            else:
                order = await self.store.get_acme_order(order.order_id) or order
        return order, authzs

    async def order(self, account: AcmeAccount, order_id: str
                    ) -> tuple[AcmeOrder, list[AcmeAuthorization]]:
        order = await self.store.get_acme_order(order_id)
        if order is None or order.account_id != account.account_id:
            raise AcmeProblem("malformed", "no such order", 404)
        return await self._refresh_order(order)

    # ------------------------------------------------------------------ authorizations
    async def authorization(self, account: AcmeAccount, authz_id: str) -> AcmeAuthorization:
        found = await self.store.get_acme_authorizations([authz_id])
        if not found or found[0].account_id != account.account_id:
            raise AcmeProblem("malformed", "no such authorization", 404)
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
            raise AcmeProblem("malformed", f"the authorization is {authz.status}", 400)
        updated = replace(authz, status="deactivated")
        if not await self.store.update_acme_authorization(updated, authz.status):
            raise AcmeProblem("malformed", "the authorization changed meanwhile", 409)
        return updated

    async def respond_to_challenge(self, account: AcmeAccount, authz_id: str,
                                   challenge_type: str) -> tuple[AcmeAuthorization,
                                                                 AcmeChallenge]:
        authz = await self.authorization(account, authz_id)
        challenge = next((c for c in authz.challenges if c.type == challenge_type), None)
        if challenge is None:
            raise AcmeProblem("malformed", "no such challenge", 404)
        if authz.status != "pending" or challenge.status != "pending":
            return authz, challenge  # RFC 8555 7.5.1: answering again changes nothing
        processing = replace(challenge, status="processing", started=self._now())
        updated = replace(authz, challenges=tuple(
            processing if c.type == challenge_type else c for c in authz.challenges))
        if not await self.store.update_acme_authorization(updated, "pending"):
            fresh = await self.authorization(account, authz_id)
            return fresh, next(c for c in fresh.challenges if c.type == challenge_type)
        # Later requests see "processing" until the validator decides.
        self._start_validation(account, updated, processing)
        return updated, processing

    def _start_validation(self, account: AcmeAccount, authz: AcmeAuthorization,
                          challenge: AcmeChallenge) -> None:
        key = (authz.authz_id, challenge.type)
        self._validating.add(key)
        task = self._tasks.spawn(self._validate(account, authz, challenge))
        task.add_done_callback(lambda _: self._validating.discard(key))

    async def _validate(self, account: AcmeAccount, authz: AcmeAuthorization,
                        challenge: AcmeChallenge) -> None:
        identifier = (authz.identifier_type, authz.identifier_value)
        key_auth = key_authorization(challenge.token, account.jwk)
        error: dict[str, Any] | None = None
        for attempt in range(self.settings.validation_attempts):
            try:
                await self.validator.validate(challenge.type, authz.identifier_type,
                                              authz.identifier_value, challenge.token, key_auth)
                error = None
                break
            except ValidationFailed as exc:
                error = problem_document(exc.acme_type, exc.detail, identifier)
                log.info("ACME %s for %s failed (attempt %d): %s", challenge.type,
                         authz.identifier_value, attempt + 1, exc.detail)
            except Exception:
                log.exception("ACME validation of %s crashed", authz.identifier_value)
                error = problem_document("serverInternal", "validation failed", identifier)
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
            await self.store.update_acme_authorization(final, "pending")
        except StoreError:
            log.exception("storing the validation of %s failed", authz.authz_id)

    # ------------------------------------------------------------------ finalize
    async def finalize(self, account: AcmeAccount, order_id: str, csr_der: bytes
                       ) -> AcmeOrder:
        order, _ = await self.order(account, order_id)
        if order.status != "ready":
            raise AcmeProblem("orderNotReady", f"the order is {order.status}, not ready", 403)
        try:
            csr = parse_csr(csr_der)
        except BadCSR as exc:
            raise AcmeProblem("badCSR", exc.detail) from None
        self._check_csr_identifiers(csr, order)
        processing = replace(order, status="processing")
        if not await self.store.update_acme_order(processing, "ready"):
            raise AcmeProblem("orderNotReady", "the order is being finalized already", 403)
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
        except PolicyViolation as exc:
            raise AcmeProblem("badCSR", exc.detail) from None
        if sans.email or sans.uri:
            raise AcmeProblem("badCSR", "the CSR names email or URI SANs the order does not")
        asked = {("dns", d.lower()) for d in sans.dns} | \
            {("ip", str(ipaddress.ip_address(i))) for i in sans.ip}
        cns = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        for cn in cns:
            value = str(cn.value).lower()
            try:
                value = str(ipaddress.ip_address(value))
                asked.add(("ip", value))
            except ValueError:
                asked.add(("dns", value))
        if asked != set(order.identifiers):
            raise AcmeProblem("badCSR", "the CSR must name exactly the order's identifiers")

    async def _issue(self, order: AcmeOrder, csr: x509.CertificateSigningRequest) -> AcmeOrder:
        org = await self.authority.organization_by_id(order.org_id)
        principal = Principal("service", f"acme:{order.account_id}", org.org_id,
                              "cert_manager")
        try:
            issued = await self.authority.issue(IssuanceRequest(
                csr=csr, profile=self._profiles[order.profile], org=org.slug,
                not_before=order.not_before, not_after=order.not_after,
                requested_at=order.created_at), principal)
        except CAError as exc:
            # The CSR or its key broke a rule of the profile (400); anything else is ours:
            # 503 while the store or a key is unavailable, as everywhere else, not a 400.
            bad_csr = exc.kind.startswith("bad") or exc.kind in (
                "policy_violation", "validity_too_long")
            kind = "badCSR" if bad_csr else "serverInternal"
            status = 400 if bad_csr else 503 if exc.kind == "unavailable" else 500
            failed = replace(order, status="invalid", error=problem_document(kind, exc.detail))
            await self.store.update_acme_order(failed, "processing")
            raise AcmeProblem(kind, exc.detail, status) from None
        except Exception:
            log.exception("ACME issuance for order %s failed", order.order_id)
            failed = replace(order, status="invalid", error=problem_document(
                "serverInternal", "issuance failed"))
            await self.store.update_acme_order(failed, "processing")
            raise AcmeProblem("serverInternal", "issuance failed", 500) from None
        valid = replace(order, status="valid", cert_id=issued.record.cert_id)
        if not await self.store.update_acme_order(valid, "processing"):
            log.error("order %s changed while it was being finalized", order.order_id)
        return valid

    # ------------------------------------------------------------------ certificates
    async def certificate_chains(self, account: AcmeAccount, cert_id: str
                                 ) -> tuple[list[bytes], str]:
        """The PEM chains of a certificate (leaf, then CAs below the root): the issuer's own
        chain first, then one per cross-certificate (RFC 8555 7.4.2 rel="alternate"); and
        the issuer's caIssuers URL (for ``Link: rel="up"``)."""
        order = await self.store.find_acme_order_by_cert(cert_id)
        if order is None or order.account_id != account.account_id:
            raise AcmeProblem("malformed", "no such certificate", 404)
        record = await self.store.get_certificate_by_id(cert_id)
        if record is None:
            raise AcmeProblem("malformed", "no such certificate", 404)
        issuer = await self.authority.ca_by_id(record.issuer_ca_id)
        leaf = pem.armor("CERTIFICATE", record.certificate_der)
        chains = [issuer.chain, *await alternate_chains(self.authority, issuer)]
        return ([leaf + chain_pem(chain).encode() for chain in chains],
                self.authority.settings.ca_issuers_url(issuer.record.name))

    async def revoke(self, certificate_der: bytes, reason: int | None,
                     account: AcmeAccount | None, jwk_public_key: PublicKeyTypes | None) -> None:
        """Revoke by the account that ordered it, or by the holder of its private key."""
        try:
            certificate = x509.load_der_x509_certificate(certificate_der)
        except ValueError:
            raise AcmeProblem("malformed", "not a DER certificate") from None
        candidates = await self.store.find_certificates_by_serial(
            serial_hex(certificate.serial_number))
        record = next((r for r in candidates if r.certificate_der == certificate_der), None)
        if record is None:
            raise AcmeProblem("malformed", "this CA did not issue that certificate", 404)
        if account is not None:
            order = await self.store.find_acme_order_by_cert(record.cert_id)
            if order is None or order.account_id != account.account_id:
                raise AcmeProblem("unauthorized",
                                  "the account did not order this certificate", 403)
        elif jwk_public_key is None or jwk_public_key != certificate.public_key():
            raise AcmeProblem("unauthorized", "the JWS key is not the certificate's key", 403)
        reasons = {0: "unspecified", 1: "key_compromise", 3: "affiliation_changed",
                   4: "superseded", 5: "cessation_of_operation", 9: "privilege_withdrawn"}
        code = 0 if reason is None else reason
        if code not in reasons:
            raise AcmeProblem("badRevocationReason", f"reason code {code} is not allowed")
        if record.status == "revoked":
            raise AcmeProblem("alreadyRevoked", "the certificate is revoked already")
        principal = Principal.system(
            f"acme:{account.account_id}" if account else "acme:certificate-key")
        try:
            await self.authority.revoke(record.serial_hex, reasons[code], principal)
        except CAError as exc:
            if exc.kind == "conflict":
                raise AcmeProblem("alreadyRevoked", exc.detail) from None
            raise

    # ------------------------------------------------------------------ ARI (RFC 9773)
    async def _certificate_by_ari_id(self, cert_id: str) -> Any:
        try:
            aki_text, serial_text = cert_id.split(".")
            aki = b64url_decode(aki_text, "the key identifier")
            serial = int.from_bytes(b64url_decode(serial_text, "the serial"), "big")
        except (ValueError, AcmeProblem):
            raise AcmeProblem("malformed", "not an ARI certificate identifier") from None
        for record in await self.store.find_certificates_by_serial(serial_hex(serial)):
            try:
                issuer = await self.authority.ca_by_id(record.issuer_ca_id)
            except CAError:
                continue
            ski = issuer.certificate.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier).value.digest
            if ski == aki:
                return record
        return None

    async def renewal_info(self, cert_id: str) -> RenewalWindow:
        record = await self._certificate_by_ari_id(cert_id)
        if record is None:
            raise AcmeProblem("malformed", "no certificate with that identifier", 404)
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

