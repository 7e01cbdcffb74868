"""The service registry (issue 14): an organization's services (Clara, Covina, Argus,
Veritas, VPB, ...), the one certificate each uses now, their heartbeats and their renewal
state; and the seed's service-to-service policy matrix, served as data.

Who may do what (``ca_core.principal``, the seed RBAC matrix):

- ``service:*`` (pki_admin in its organization, a super admin in any): everything.
- ``service:read`` (cert_manager, auditor): list and read the organization's services.
- a ``service_account`` (token or mTLS certificate) acts for its own service only
  (``service:register_self``, ``service:update_self``, ``service:read_own``): it registers
  one service and becomes a principal of it; every certificate issued for the service is
  bound as a service account too, so the service's certificate authenticates as the
  service on the mTLS port. Another service, of its organization or another, is NotFound.

Every refusal is audited (``service.denied``): 403 for a missing permission, 404 where
existence must not leak (another organization's service, another service). A service has at
most one active certificate (``ServiceRecord.active_cert_id``); issuing or renewing one
moves the link, and the old certificate stays valid until it is revoked or expires.

Renewal state of a service: ``none`` (no certificate, or the active one is revoked),
``expired``, ``due`` (ends within the window, default 30 days) or ``ok``; the store's
``services_due`` query is the one behind the state, ``vcc-pki service renew --due`` and the
``pki_certificates_expiring`` gauge.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import ipaddress
import json
import re
import secrets
import tomllib
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_core import mtls
from ca_core.admin import Page, encode_cursor, page_limit, time_id_cursor
from ca_core.authority import Authority, IssuanceRequest, IssuedCertificate, serial_display
from ca_core.errors import BadRequest, Conflict, Forbidden, NotFound
from ca_core.principal import Principal
from ca_core.records import (
    AuditEvent,
    CertificateRecord,
    Organization,
    ServiceAccount,
    ServiceRecord,
)
from ca_core.storage import StoreConflict, StoreInvalid

SERVICE_TYPES = ("api", "orchestrator", "processor", "ui", "gateway")
HEALTH_STATUSES = ("healthy", "degraded", "unhealthy", "unknown")
RENEWAL_STATES = ("ok", "due", "expired", "none")
SERVICE_PROFILE = "mtls_service"
DEFAULT_DUE_DAYS = 30
EXPIRY_WINDOWS = (7, 30, 90)  # pki_certificates_expiring's days label
# Slugs name directories (bootstrap) and URL segments; "policy" is the matrix's path.
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ENVIRONMENT = re.compile(r"^[A-Za-z0-9_.-]{1,50}$")
RESERVED_SLUGS = frozenset({"policy"})
MAX_ENDPOINTS = 50
MAX_METADATA_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A service to register (REST ``POST /api/v1/services``, the bootstrap file)."""

    name: str
    slug: str
    service_type: str = "api"
    organization: str | None = None  # slug; None: the caller's own
    endpoints: tuple[str, ...] = ()
    health_check_url: str | None = None
    version: str | None = None
    environment: str = "production"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServiceChange:
    """A PATCH: the fields given (None: unchanged)."""

    name: str | None = None
    service_type: str | None = None
    endpoints: tuple[str, ...] | None = None
    health_check_url: str | None = None
    version: str | None = None
    environment: str | None = None
    metadata: dict[str, Any] | None = None
    status: str | None = None  # active | inactive


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """A key and CSR made for a service by the bootstrap (the key never leaves the caller
    that writes it to the service's directory)."""

    key_pem: bytes
    csr: x509.CertificateSigningRequest


def renewal_state(record: ServiceRecord, now: dt.datetime, due_days: int) -> str:
    """ok / due / expired / none, by the predicate of ``services_due`` (ends before
    ``now + due_days``)."""
    if record.active_cert_id is None or record.cert_status != "active" \
            or record.cert_not_after is None:
        return "none"
    if record.cert_not_after <= now:
        return "expired"
    if record.cert_not_after < now + dt.timedelta(days=due_days):
        return "due"
    return "ok"


def _text(value: str | None, name: str, limit: int, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise BadRequest(f"{name} is required")
        return None
    value = value.strip()
    if not 1 <= len(value) <= limit or any(ord(c) < 32 or 0xD800 <= ord(c) < 0xE000
                                           for c in value):
        raise BadRequest(f"{name} must be 1 to {limit} printable characters")
    return value


def _url(value: str | None, name: str) -> str | None:
    value = _text(value, name, 500)
    if value is not None and not re.match(r"^https?://[^\s/]+", value):
        raise BadRequest(f"{name} must be an http:// or https:// URL")
    return value


def _endpoints(values: tuple[str, ...]) -> list[str]:
    if len(values) > MAX_ENDPOINTS:
        raise BadRequest(f"endpoints: at most {MAX_ENDPOINTS}")
    out = []
    for value in values:
        if not isinstance(value, str):
            raise BadRequest("endpoints must be a list of URLs")
        out.append(_url(value, "each endpoint") or "")
    return out


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest("metadata must be a JSON object")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode()  # a lone surrogate from a \ud800 escape
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        raise BadRequest("metadata must be plain JSON (no NaN or Infinity)") from None
    if "\\u0000" in text:  # PostgreSQL's JSONB holds no NUL character
        raise BadRequest("metadata must not hold a NUL character")
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise BadRequest(f"metadata: at most {MAX_METADATA_BYTES} bytes of JSON")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _type(value: str) -> str:
    if value not in SERVICE_TYPES:
        raise BadRequest(f"type must be one of {', '.join(SERVICE_TYPES)}")
    return value


def _environment(value: str) -> str:
    if not _ENVIRONMENT.match(value):
        raise BadRequest("environment must be 1 to 50 letters, digits, '.', '_' or '-'")
    return value


def check_slug(slug: str) -> str:
    if not _SLUG.match(slug) or slug in RESERVED_SLUGS:
        raise BadRequest("slug must be 1 to 63 lowercase letters, digits or '-' (starting "
                         "with a letter or digit), and not 'policy'")
    return slug


def new_service_key(common_name: str, dns: tuple[str, ...], ips: tuple[str, ...] = ()
                    ) -> ServiceKey:
    """An EC P-256 key and a CSR for it naming the service (CN and SANs), for the
    bootstrap: the key is made where it is written, never stored here."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    try:
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    except ValueError:
        raise BadRequest("an IP SAN does not parse") from None
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ServiceKey(key_pem, csr)


@functools.cache
def communication_policy() -> dict[str, Any]:
    """The seed's service_communication_policies (which service may call which over mTLS),
    from ``ca_core/service_policy.toml``, for the services' own authorization checks."""
    text = resources.files("ca_core").joinpath("service_policy.toml").read_text()
    policy: dict[str, Any] = tomllib.loads(text)
    return policy


class ServiceRegistry:
    """See the module docstring. One instance per process, shared by the CLI and REST."""

    def __init__(self, authority: Authority, due_days: int = DEFAULT_DUE_DAYS) -> None:
        self.authority = authority
        self.store = authority.store
        self.due_days = due_days

    # ------------------------------------------------------------------ authorization
    @staticmethod
    def _grant(principal: Principal, action: str) -> str | None:
        """Either "all" (the permission or its area's *), "self" (the ``_self``/``_own``
        form: the principal's own service only) or None."""
        permissions = principal.permissions
        if action in permissions or "service:*" in permissions:
            return "all"
        if f"{action}_self" in permissions or f"{action}_own" in permissions:
            return "self"
        return None

    async def _deny(self, principal: Principal, action: str, resource_id: str | None,
                    message: str, *, hide: bool = False) -> NoReturn:
        await self.authority.denied(principal, action, "service", resource_id)
        if hide:
            raise NotFound(message)
        raise Forbidden(message)

    async def _require(self, principal: Principal, action: str) -> str:
        grant = self._grant(principal, action)
        if grant is None:
            await self._deny(principal, action, None, f"this credential may not do {action}")
        return grant

    async def _org(self, principal: Principal, ident: str | None, action: str
                   ) -> Organization:
        """The organization named (slug), or the caller's own; another one is 404."""
        if ident is None:
            if principal.org_id is None:
                raise BadRequest("organization is required")
            return await self.authority.organization_by_id(principal.org_id)
        try:
            org = await self.store.get_organization(ident)
        except StoreInvalid:
            org = None
        if org is None or not principal.sees_org(org.org_id):
            await self._deny(principal, action, ident[:80], f"no organization {ident[:80]!r}",
                             hide=True)
        return org

    async def _service(self, principal: Principal, slug: str, action: str,
                       organization: str | None = None) -> ServiceRecord:
        """The service ``slug`` of the caller's organization (or of ``organization``),
        which the caller may do ``action`` on; NotFound (audited) otherwise."""
        grant = await self._require(principal, action)
        org = await self._org(principal, organization, action)
        try:
            found = await self.store.get_service(org.org_id, slug)
        except StoreInvalid:
            found = None
        if found is not None and grant == "self" and \
                await self.store.service_of_actor(principal.actor_id) != found.service_id:
            found = None
        if found is None:
            await self._deny(principal, action, slug[:80], f"no service {slug[:80]!r}",
                             hide=True)
        return found

    # ------------------------------------------------------------------ registry
    async def list_services(self, principal: Principal, organization: str | None = None,
                   cursor: str | None = None, limit: int | None = None
                   ) -> Page[ServiceRecord]:
        grant = await self._require(principal, "service:read")
        size = page_limit(limit)
        org_id = principal.org_id
        if organization is not None:
            org_id = (await self._org(principal, organization, "service:read")).org_id
        after = time_id_cursor(cursor)
        if grant == "self":
            own = await self.store.service_of_actor(principal.actor_id)
            record = None if own is None else await self.store.get_service_by_id(own)
            items = [record] if record is not None and (org_id is None or
                                                        record.org_id == org_id) \
                and (after is None or (record.created_at, record.service_id) > after) else []
            return Page(items, None)
        found = await self.store.list_services(org_id, after, size + 1)
        last = found[size - 1] if len(found) > size else None
        return Page(found[:size], None if last is None else
                    encode_cursor(last.created_at, last.service_id))

    async def get(self, principal: Principal, slug: str, organization: str | None = None
                  ) -> ServiceRecord:
        return await self._service(principal, slug, "service:read", organization)

    async def register(self, principal: Principal, spec: ServiceSpec) -> ServiceRecord:
        """A new service; its registering principal is recorded (``created_by``) and, for a
        service account, becomes the one that acts for it. Conflict for a slug taken in the
        organization, or a service account that has a service already."""
        grant = await self._require(principal, "service:register")
        check_slug(spec.slug)
        org = await self._org(principal, spec.organization, "service:register")
        if grant == "self":
            own = await self.store.service_of_actor(principal.actor_id)
            if own is not None:
                raise Conflict("this credential acts for a registered service already")
        now = self.authority.clock()
        record = ServiceRecord(
            service_id=str(uuid.uuid4()), org_id=org.org_id,
            name=_text(spec.name, "name", 200, required=True) or "", slug=spec.slug,
            service_type=_type(spec.service_type), endpoints=_endpoints(spec.endpoints),
            health_check_url=_url(spec.health_check_url, "health_check_url"),
            version=_text(spec.version, "version", 50),
            environment=_environment(spec.environment), metadata=_metadata(spec.metadata),
            created_by=principal.actor_id, created_at=now, updated_at=now)
        try:
            await self.store.add_service(record, self._event(
                principal, "registered", record, {"name": record.name,
                                                  "type": record.service_type}),
                principal.actor_id if grant == "self" else None)
        except StoreInvalid:
            raise BadRequest("a field holds text the store cannot keep") from None
        except StoreConflict:
            raise Conflict(f"service {spec.slug} exists in organization {org.slug}"
                           ) from None
        return await self._reread(record.service_id)

    async def update(self, principal: Principal, slug: str, change: ServiceChange,
                     organization: str | None = None) -> ServiceRecord:
        current = await self._service(principal, slug, "service:update", organization)
        if change.status is not None and change.status not in ("active", "inactive"):
            raise BadRequest("status must be active or inactive")
        updated = dataclasses.replace(
            current,
            name=_text(change.name, "name", 200) or current.name,
            service_type=current.service_type if change.service_type is None
            else _type(change.service_type),
            endpoints=current.endpoints if change.endpoints is None
            else _endpoints(change.endpoints),
            health_check_url=current.health_check_url if change.health_check_url is None
            else _url(change.health_check_url, "health_check_url"),
            version=current.version if change.version is None
            else _text(change.version, "version", 50),
            environment=current.environment if change.environment is None
            else _environment(change.environment),
            metadata=current.metadata if change.metadata is None
            else _metadata(change.metadata),
            status=change.status or current.status, updated_at=self.authority.clock())
        result = await self.store.update_service(updated, self._event(
            principal, "updated", updated, {
                "name": updated.name, "type": updated.service_type,
                "endpoints": updated.endpoints, "version": updated.version,
                "environment": updated.environment, "status": updated.status}))
        if result is None:
            raise NotFound(f"no service {slug[:80]!r}")
        return result

    async def heartbeat(self, principal: Principal, slug: str, status: str,
                        version: str | None = None, organization: str | None = None
                        ) -> ServiceRecord:
        """Record what the service reports (last_seen now); a change of its reported status
        is audited, a repeated one is not (heartbeats come every few seconds)."""
        if status not in HEALTH_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(HEALTH_STATUSES)}")
        version = _text(version, "version", 50)
        current = await self._service(principal, slug, "service:update", organization)
        event = None
        if current.health_status != status:
            event = self._event(principal, "health_changed", current,
                                {"from": current.health_status, "to": status})
        await self.store.record_heartbeat(current.service_id, self.authority.clock(), status,
                                          version, event)
        return await self._reread(current.service_id)

    # ------------------------------------------------------------------ certificates
    async def certificate(self, principal: Principal, slug: str,
                          organization: str | None = None) -> CertificateRecord:
        service = await self._service(principal, slug, "service:read", organization)
        record = None if service.active_cert_id is None else \
            await self.store.get_certificate_by_id(service.active_cert_id)
        if record is None:
            raise NotFound(f"service {slug} has no certificate")
        return record

    async def _may_issue(self, principal: Principal, slug: str, organization: str | None
                         ) -> ServiceRecord:
        service = await self._service(principal, slug, "service:update", organization)
        if not principal.can("cert:request"):
            await self._deny(principal, "cert:request", slug[:80],
                             "this credential may not request certificates")
        return service

    async def issue_certificate(self, principal: Principal, slug: str,
                                csr: bytes | x509.CertificateSigningRequest,
                                validity_days: int | None = None,
                                organization: str | None = None) -> IssuedCertificate:
        """An ``mtls_service`` certificate for the service from ``csr``; it becomes the
        service's active certificate (the previous one stays valid) and is bound as a
        service account acting for the service."""
        service = await self._may_issue(principal, slug, organization)
        return await self._issue(principal, service, IssuanceRequest(
            csr=csr, profile=SERVICE_PROFILE, org=await self._slug_of(service),
            validity_days=validity_days))

    async def renew_certificate(self, principal: Principal, slug: str,
                                validity_days: int | None = None,
                                organization: str | None = None) -> IssuedCertificate:
        """The active certificate again (same key, names and profile), now."""
        service = await self._may_issue(principal, slug, organization)
        return await self._renew(principal, service, validity_days)

    async def _renew(self, principal: Principal, service: ServiceRecord,
                     validity_days: int | None = None) -> IssuedCertificate:
        old = None if service.active_cert_id is None else \
            await self.store.get_certificate_by_id(service.active_cert_id)
        if old is None:
            raise Conflict(f"service {service.slug} has no certificate to renew: issue one")
        if old.status == "revoked":
            raise Conflict(f"the certificate of service {service.slug} is revoked: issue a "
                           "new one with a new key")
        return await self._issue(principal, service, IssuanceRequest(
            csr=b"", profile=old.profile, org=await self._slug_of(service),
            validity_days=validity_days, renews=old))

    async def _slug_of(self, service: ServiceRecord) -> str:
        return (await self.authority.organization_by_id(service.org_id)).slug

    async def _issue(self, principal: Principal, service: ServiceRecord,
                     request: IssuanceRequest) -> IssuedCertificate:
        async def record(cert: CertificateRecord, event: AuditEvent) -> None:
            await self.store.add_service_certificate(
                service.service_id, cert, event, self._event(
                    principal, "certificate_linked", service,
                    {"cert_id": cert.cert_id, "serial": cert.serial_hex,
                     "previous": service.active_cert_id}))
        issued = await self.authority.issue(request, principal, record)
        await self._bind(principal, service, issued)
        return issued

    async def _bind(self, principal: Principal, service: ServiceRecord,
                    issued: IssuedCertificate) -> None:
        """The new certificate authenticates as the service on the mTLS port: a service
        account bound to it, acting for the service."""
        der = issued.record.certificate_der
        subject, issuer, serial = mtls.describe(issued.certificate)
        account = ServiceAccount(
            account_id=f"sa-{secrets.token_hex(8)}", org_id=service.org_id,
            role="service_account", name=f"service {service.slug}",
            fingerprint=mtls.fingerprint(der), subject_dn=subject, issuer_dn=issuer,
            serial_hex=serial, not_after=issued.record.not_after,
            created_at=self.authority.clock())
        await self.store.add_service_account(account, AuditEvent(
            event_type="service_account.created", category="authentication",
            action="create_service_account", actor_type=principal.actor_type,
            actor_id=principal.actor_id, org_id=service.org_id,
            resource_type="service_account", resource_id=account.account_id,
            data={"name": account.name, "role": account.role,
                  "fingerprint": account.fingerprint, "service": service.slug}))
        await self.store.add_service_principal(
            service.service_id, f"mtls:{account.account_id}", account.created_at,
            self._event(principal, "principal_added", service,
                        {"actor_id": f"mtls:{account.account_id}"}))

    # ------------------------------------------------------------------ expiry
    async def due(self, principal: Principal, days: int, organization: str | None = None
                  ) -> list[ServiceRecord]:
        """Services whose certificate ends within ``days`` (or has ended): ``service renew
        --due``."""
        await self._require(principal, "service:read")
        if not 0 <= days <= 3650:
            raise BadRequest("the window must be 0 to 3650 days")
        org_id = principal.org_id
        if organization is not None:
            org_id = (await self._org(principal, organization, "service:read")).org_id
        now = self.authority.clock()
        return await self.store.services_due(now, now + dt.timedelta(days=days), org_id)

    async def renew_due(self, principal: Principal, days: int,
                        organization: str | None = None
                        ) -> list[tuple[ServiceRecord, IssuedCertificate]]:
        """Renew every due service certificate (an operator's: ``service:update`` on all of
        the organization's services, and ``cert:request``)."""
        if self._grant(principal, "service:update") != "all" or \
                not principal.can("cert:request"):
            await self._deny(principal, "service:update", None,
                             "renewing every due service needs service:* and cert:request")
        return [(service, await self._renew(principal, service))
                for service in await self.due(principal, days, organization)]

    async def expiring(self) -> dict[tuple[str, str, int], int]:
        """(organization slug, service slug, days) -> certificates of the service ending
        within that many days (not yet ended), for ``pki_certificates_expiring``; the same
        query as ``due``."""
        now = self.authority.clock()
        counts: dict[tuple[str, str, int], int] = {}
        slugs: dict[str, str] = {}
        for service in await self.store.services_due(
                now, now + dt.timedelta(days=max(EXPIRY_WINDOWS))):
            if service.cert_not_after is None or service.cert_not_after <= now:
                continue
            if service.org_id not in slugs:
                slugs[service.org_id] = (await self.authority.organization_by_id(
                    service.org_id)).slug
            for days in EXPIRY_WINDOWS:
                key = (slugs[service.org_id], service.slug, days)
                counts[key] = counts.get(key, 0) + (
                    service.cert_not_after < now + dt.timedelta(days=days))
        return counts

    # ------------------------------------------------------------------ policy
    async def policy(self, principal: Principal) -> dict[str, Any]:
        """The communication matrix: for every principal that reads services or acts for
        one (a service checks its callers against it)."""
        if self._grant(principal, "service:read") is None and \
                self._grant(principal, "service:update") is None:
            await self._deny(principal, "service:read", "policy",
                             "this credential may not read the service policy")
        return communication_policy()

    # ------------------------------------------------------------------ helpers
    async def _reread(self, service_id: str) -> ServiceRecord:
        found = await self.store.get_service_by_id(service_id)
        if found is None:
            raise NotFound("the service is gone")
        return found

    @staticmethod
    def _event(principal: Principal, what: str, service: ServiceRecord,
               data: dict[str, Any]) -> AuditEvent:
        return AuditEvent(
            event_type=f"service.{what}", category="configuration", action=f"service_{what}",
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            org_id=service.org_id, resource_type="service", resource_id=service.service_id,
            data={"slug": service.slug, **data})


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def service_document(record: ServiceRecord, now: dt.datetime,
                     due_days: int = DEFAULT_DUE_DAYS) -> dict[str, Any]:
    """A service as the REST API and the CLI show it, with its certificate, the
    certificate's expiry and the renewal state."""
    certificate = None if record.cert_serial_hex is None else {
        "serial": serial_display(record.cert_serial_hex),
        "not_after": _iso(record.cert_not_after), "status": record.cert_status}
    return {
        "id": record.service_id, "organization_id": record.org_id, "name": record.name,
        "slug": record.slug, "type": record.service_type, "endpoints": record.endpoints,
        "health_check_url": record.health_check_url, "version": record.version,
        "environment": record.environment, "metadata": record.metadata,
        "status": record.status, "created_by": record.created_by,
        "created_at": _iso(record.created_at), "updated_at": _iso(record.updated_at),
        "certificate": certificate, "renewal_state": renewal_state(record, now, due_days),
        "last_seen": _iso(record.last_seen), "health_status": record.health_status,
        "reported_version": record.reported_version}
