"""The Authority: the one place where certificates are decided, signed and recorded.

Protocol front-ends hand it a decoded request and a Principal; it checks the request
against the profile and the caller's rights, builds the certificate (``x509build``), signs
it through the CA's Signer, stores it (with its audit event, in one transaction) and only
then returns it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID
from prometheus_client import Counter, Histogram

from ca_core import mtls, x509build
from ca_core.errors import (
    BadCSR,
    BadCSRSignature,
    BadPublicKey,
    BadRequest,
    CAError,
    Conflict,
    Forbidden,
    NotFound,
    PolicyViolation,
    Unauthorized,
    Unavailable,
    UnknownProfile,
    ValidityTooLong,
)
from ca_core.keys import KeyAlgorithm, KeySpec, spec_of
from ca_core.metrics import (
    CERT_ISSUANCE_DURATION,
    CERT_REQUESTS_TOTAL,
    CERT_REVOCATIONS_TOTAL,
)
from ca_core.org_policy import OrgPolicy, readable_org_ids
from ca_core.principal import ROLES, Principal
from ca_core.profiles import BUILTIN_PROFILES, Profile
from ca_core.records import (
    ApiToken,
    AuditEvent,
    CARecord,
    CertificateRecord,
    Organization,
    Revocation,
    ServiceAccount,
    TemplateRecord,
)
from ca_core.signers.base import KeyBackend, KeyBackendError, Signer
from ca_core.signing import Purpose, SigningKey
from ca_core.storage import (
    Store,
    StoreConflict,
    StoreError,
    StoreInvalid,
    StoreOrganizationInactive,
)
from ca_core.tracing import traced
from ca_core.weak_keys import WeakKeys

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
# Writes an issued certificate and its audit event (by default Store.add_certificate); a
# caller may put its own state change into the same transaction (EST spends a secret).
RecordCertificate = Callable[[CertificateRecord, AuditEvent], Awaitable[None]]

# What a request that names no profile (REST, CLI) gets, and a revocation that names no
# reason: decided here once, not by each front-end.
DEFAULT_PROFILE = "vcc_service"
DEFAULT_REVOCATION_REASON = "unspecified"

# RFC 5280 5.3.1 reason codes, by the names operators type (snake_case) and the RFC's.

REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "ca_compromise": x509.ReasonFlags.ca_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "certificate_hold": x509.ReasonFlags.certificate_hold,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aa_compromise": x509.ReasonFlags.aa_compromise,
}
_REASON_ALIASES = {flag.value.lower(): name for name, flag in REVOCATION_REASONS.items()}

# Clients' clocks run a little behind ours; backdating notBefore keeps fresh certificates
# valid for them (Let's Encrypt backdates an hour; a few minutes suffice on a LAN).
BACKDATE = dt.timedelta(minutes=5)
# How far a requested notBefore may lie in the past (client clocks run behind) or the future.
MAX_REQUESTED_BACKDATE = dt.timedelta(hours=1)
MAX_REQUESTED_POSTDATE = dt.timedelta(days=90)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def serial_hex(serial: int) -> str:
    """Canonical store form of a serial: lowercase hex, no leading zeros."""
    return format(serial, "x")


def serial_display(serial_hex_value: str) -> str:
    """The form ``openssl x509 -serial`` prints: uppercase, even length."""
    text = serial_hex_value.upper()
    return text if len(text) % 2 == 0 else "0" + text


def parse_serial(text: str) -> str:
    """Accept ``0A:1B``, ``0a1b``, ``0x0A1B`` or ``serial=0A1B``; return the store form."""
    cleaned = text.strip().removeprefix("serial=").replace(":", "").lower().removeprefix("0x")
    if not cleaned or len(cleaned) > 64 or any(c not in "0123456789abcdef" for c in cleaned):
        raise BadRequest(f"not a hexadecimal serial number: {text[:80]!r}")
    value = int(cleaned, 16)
    if value <= 0:
        raise BadRequest("serial numbers are positive")
    return serial_hex(value)


def parse_reason(text: str | None) -> str:
    """A revocation reason by its name (RFC 5280 names or ours); none given: unspecified."""
    if not text:
        return DEFAULT_REVOCATION_REASON
    key = text.strip().lower().replace("-", "_")
    if key in REVOCATION_REASONS:
        return key
    alias = _REASON_ALIASES.get(text.strip().lower())
    if alias is not None:
        return alias
    if key == "remove_from_crl":
        raise BadRequest("removeFromCRL is only meaningful in delta CRLs")
    raise BadRequest(
        f"unknown revocation reason {text[:40]!r}; use one of {', '.join(REVOCATION_REASONS)}"
    )


@dataclass(frozen=True, slots=True)
class CASettings:
    """What the CA core needs from configuration."""

    public_http_url: str = "http://127.0.0.1:8080"
    root_key: KeySpec = field(default_factory=lambda: KeySpec.parse("ec-p384"))
    intermediate_key: KeySpec = field(default_factory=lambda: KeySpec.parse("ec-p384"))
    issuing_key: KeySpec = field(default_factory=lambda: KeySpec.parse("ec-p256"))
    root_validity_days: int = 7305
    intermediate_validity_days: int = 3652
    issuing_validity_days: int = 1826
    organization_name: str = "VCC-PKI"
    country: str = "DE"
    default_org: str = "default"
    crl_partitions: int = 0  # >0: each new certificate names one of that many CRL partitions
    weak_keys: WeakKeys = field(default_factory=WeakKeys)  # refused subject keys (Debian)

    def crl_url(self, ca_name: str, partition: int = 0) -> str:
        """The full CRL of a CA (partition 0), or one of its partitioned CRLs."""
        base = f"{self.public_http_url.rstrip('/')}/crl/{ca_name}"
        return f"{base}.crl" if partition == 0 else f"{base}/{partition}.crl"

    def crl_partition_of(self, serial: int) -> int:
        """The CRL partition a new certificate is put in: by serial, which is random, so the
        partitions fill evenly; fixed at issuance (stored, and named in its CDP)."""
        return 0 if self.crl_partitions == 0 else serial % self.crl_partitions + 1

    def ca_issuers_url(self, ca_name: str) -> str:
        return f"{self.public_http_url.rstrip('/')}/ca/{ca_name}.der"

    @property
    def ocsp_url(self) -> str:
        return f"{self.public_http_url.rstrip('/')}/ocsp"


@dataclass(frozen=True, slots=True)
class IssuanceRequest:
    # PEM or DER PKCS#10, or a request parse_csr returned (checked; not parsed again)
    csr: bytes | x509.CertificateSigningRequest
    profile: str = DEFAULT_PROFILE  # a profile or template name
    org: str | None = None  # organization slug; None: the principal's own
    validity_days: int | None = None
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    ca: str | None = None  # issuing CA name; None: the organization's
    # When not_before/not_after were asked for (an ACME order's creation); None: now
    requested_at: dt.datetime | None = None
    # The certificate this one renews (same organization; with an empty csr, same key and
    # names)
    renews: CertificateRecord | None = None


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    record: CertificateRecord
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # issuer first, up to but not including the root

    @property
    def serial(self) -> str:
        return serial_display(self.record.serial_hex)

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def chain_pem(self) -> str:
        return chain_pem(self.chain)


@functools.lru_cache(maxsize=64)
def chain_pem(chain: tuple[x509.Certificate, ...]) -> str:
    # The same few CA chains for every certificate: encode each once.
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    status: str  # good | revoked | unknown
    record: CertificateRecord | None = None


@dataclass(slots=True)
class LoadedCA:
    record: CARecord
    certificate: x509.Certificate
    signer: Signer
    chain: tuple[x509.Certificate, ...]  # this CA first, up to but not including the root
    _context: x509build.IssuerContext | None = None
    _signing_key: SigningKey | None = None

    @property
    def signing_key(self) -> SigningKey:
        """The one signing path of this CA's key (ca_core.signing)."""
        if self._signing_key is None:
            self._signing_key = SigningKey(self.record.name, self.signer, self.certificate)
        return self._signing_key

    def issuer_context(self, settings: CASettings) -> x509build.IssuerContext:
        if self._context is None:
            self._context = x509build.IssuerContext.create(
                name=self.certificate.subject,
                public_key=self.signer.public_key,
                key_spec=self.signer.key_spec,
                not_after=self.certificate.not_valid_after_utc,
                crl_urls=[settings.crl_url(self.record.name, p)
                          for p in range(settings.crl_partitions + 1)],
                ocsp_url=settings.ocsp_url,
                ca_issuers_url=settings.ca_issuers_url(self.record.name),
            )
        return self._context


class CertificateListener(Protocol):
    """Told of every issuance and revocation after it is stored (OCSP precompute, CRLs).

    ``certificate_revoked`` is awaited before ``revoke`` returns, so a listener can make the
    revocation visible (e.g. re-sign the OCSP response) before the caller hears of it.
    Listener errors are logged and never undo or fail the stored change.
    """

    async def certificate_issued(self, issued: IssuedCertificate) -> None: ...

    async def certificate_revoked(self, record: CertificateRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class CreatedToken:
    token: str  # shown once, never stored
    record: ApiToken


def issuing_ca_name(org_slug: str) -> str:
    """The name of an organization's first issuing CA (a rollover successor has its own
    name: ``Authority.issuing_ca`` finds the active one)."""
    return f"{org_slug}-issuing"


# How long a process keeps which issuing CA of an organization is active (and which one is
# "next"): `vcc-pki ca activate` in another process reaches every replica within this.
ISSUING_CA_REFRESH_SECONDS = 2.0
# How long an issuance may use an organization's policy as this process last read it. Its
# status is not a matter of this: the certificate's write checks it (db.sql).
ORG_POLICY_REFRESH_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class IssuingCas:
    """An organization's issuing CAs by status, as ``Authority.issuing_cas`` reads them."""

    active: str  # the name of the CA that issues
    next: str | None  # a rollover successor not yet activated (GetNextCACert)
    all: tuple[str, ...]  # active, retired and next: whose certificates are the org's


class Authority:
    """Issuance, revocation, status and tokens over one Store and one KeyBackend."""

    def __init__(
        self,
        store: Store,
        keys: KeyBackend,
        settings: CASettings | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.keys = keys
        self.settings = settings or CASettings()
        self.clock = clock
        self._cas: dict[str, LoadedCA] = {}
        self._ca_lock = asyncio.Lock()
        self._profiles: dict[str, Profile] = {p.name: p for p in BUILTIN_PROFILES}
        self._orgs: dict[str, Organization] = {}
        self._listeners: list[CertificateListener] = []
        self._issuing: dict[str, tuple[float, IssuingCas]] = {}  # by org_id
        self._org_read: dict[str, float] = {}  # org_id -> when its policy is read again
        # The metric children of issued certificates by (org slug, purpose): ``labels()``
        # looks them up by string each time, about 2 µs per call on every issuance. Bounded
        # by organizations x built-in profiles (templates count as one purpose).
        self._issued_metrics: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def add_listener(self, listener: CertificateListener) -> None:
        self._listeners.append(listener)

    # ------------------------------------------------------------------ loading
    async def load(self) -> None:
        """Read the built-in profiles as published in the store (falling back to the code's)
        and open CA keys. Operator templates are not kept here: ``resolve_profile`` reads
        them at issuance, so one created or deleted in another process applies at once."""
        for template in await self.store.list_templates():
            if template.base is not None or template.org_id is not None \
                    or template.slug not in self._profiles:
                continue
            try:
                self._profiles[template.slug] = Profile.from_definition(template.definition)
            except (TypeError, ValueError) as exc:
                log.warning("ignoring invalid template %s: %s", template.slug, exc)
        for record in await self.store.list_cas():
            await self._load_ca(record)

    async def _load_ca(self, record: CARecord) -> LoadedCA:
        loaded = self._cas.get(record.name)
        if loaded is not None:
            return loaded
        parent = None
        if record.parent_ca_id is not None:
            parent = await self.ca_by_id(record.parent_ca_id)
        async with self._ca_lock:
            loaded = self._cas.get(record.name)
            if loaded is not None:
                return loaded
            try:
                signer = await asyncio.to_thread(self.keys.load, record.key_ref)
            except KeyBackendError as exc:
                log.error("cannot open the key of CA %s: %s", record.name, exc)
                raise Unavailable(f"the key of CA {record.name} is not available") from exc
            certificate = x509.load_der_x509_certificate(record.certificate_der)
            # Chains stop below the root: relying parties have the root as a trust anchor.
            chain: tuple[x509.Certificate, ...] = (certificate,)
            if parent is not None and parent.record.ca_type != "root":
                chain = (certificate, *parent.chain)
            loaded = LoadedCA(record, certificate, signer, chain)
            self._cas[record.name] = loaded
            return loaded

    def _ca_by_id(self, ca_id: str | None) -> LoadedCA | None:
        for loaded in self._cas.values():
            if loaded.record.ca_id == ca_id:
                return loaded
        return None

    async def ca(self, name: str) -> LoadedCA:
        loaded = self._cas.get(name)
        if loaded is not None:
            return loaded
        try:
            record = await self.store.get_ca(name)
        except StoreInvalid:  # a name the store cannot hold (a NUL) names no CA
            record = None
        if record is None:
            raise NotFound(f"no CA named {name!r}")
        return await self._load_ca(record)

    async def ca_by_id(self, ca_id: str) -> LoadedCA:
        loaded = self._ca_by_id(ca_id)
        if loaded is not None:
            return loaded
        record = await self.store.get_ca_by_id(ca_id)
        if record is None:
            raise NotFound("unknown CA")
        return await self._load_ca(record)

    async def chain_with_root(self, ca: LoadedCA) -> tuple[x509.Certificate, ...]:
        """``ca``'s certificate and the CAs above it, ending with the root (a chain kept for
        issued certificates stops below it): what EST /cacerts, SCEP GetCACert and the
        admin API's chain export hand out."""
        top = ca
        while top.record.parent_ca_id is not None:
            top = await self.ca_by_id(top.record.parent_ca_id)
        return ca.chain if top.certificate in ca.chain else (*ca.chain, top.certificate)

    async def issuing_cas(self, org: Organization) -> IssuingCas:
        """The organization's issuing CAs: the active one (``{slug}-issuing`` until a
        rollover successor is activated), the "next" one, and all; read again from the
        store every ISSUING_CA_REFRESH_SECONDS."""
        now = time.monotonic()
        cached = self._issuing.get(org.org_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        records = [r for r in await self.store.list_cas()
                   if r.org_id == org.org_id and r.ca_type == "issuing"]  # oldest first
        active = [r.name for r in records if r.status == "active"]
        waiting = [r.name for r in records if r.status == "next"]
        found = IssuingCas(active=active[-1] if active else issuing_ca_name(org.slug),
                           next=waiting[-1] if waiting else None,
                           all=tuple(r.name for r in records))
        self._issuing[org.org_id] = (now + ISSUING_CA_REFRESH_SECONDS, found)
        return found

    async def issuing_ca(self, org: Organization) -> LoadedCA:
        """The CA that issues the organization's certificates."""
        return await self.ca((await self.issuing_cas(org)).active)

    def forget_issuing_cas(self, org_id: str) -> None:
        """After a rollover or an activation in this process: read them again."""
        self._issuing.pop(org_id, None)

    def loaded_cas(self) -> list[LoadedCA]:
        return list(self._cas.values())

    def profile(self, name: str) -> Profile:
        """A built-in profile (ones the CA issues itself: OCSP responders, SCEP RAs, the
        TSA). What a requester names goes through ``resolve_profile``."""
        try:
            return self._profiles[name]
        except KeyError:
            raise UnknownProfile(
                f"unknown profile {name[:64]!r}; built-in: {', '.join(sorted(self._profiles))}"
            ) from None

    def profiles(self) -> list[Profile]:
        return sorted(self._profiles.values(), key=lambda p: p.name)

    async def resolve_profile(self, name: str, org_id: str) -> Profile:
        """THE resolution of a profile name for an organization, for every front-end (REST,
        CLI, EST labels, SCEP endpoints, ACME profiles): the organization's template, else
        a global template, else a built-in. Built-ins are answered from memory (a template
        never shadows one); a template is one indexed read, so a template created, changed
        or deleted in another worker process applies to the next request here."""
        builtin = self._profiles.get(name)
        if builtin is not None:
            return builtin
        try:
            record = await self.store.resolve_template(name, org_id)
        except StoreInvalid:  # a name the store cannot hold (a NUL) names no template
            record = None
        if record is not None:
            try:
                return Profile.from_definition(record.definition)
            except (TypeError, ValueError) as exc:
                log.error("template %s (%s) is invalid: %s", record.slug,
                          record.template_id, exc)
        raise UnknownProfile(
            f"unknown profile or template {name[:64]!r}; built-in: "
            f"{', '.join(sorted(self._profiles))}")

    async def organization(self, slug: str) -> Organization:
        org = self._orgs.get(slug)
        if org is None:
            org = await self.store.get_organization(slug)
            if org is None:
                raise NotFound(f"no organization {slug!r}")
            self._orgs[slug] = org
        return org

    async def organization_by_id(self, org_id: str) -> Organization:
        for org in self._orgs.values():
            if org.org_id == org_id:
                return org
        found = await self.store.get_organization_by_id(org_id)
        if found is None:
            raise NotFound("unknown organization")
        self._orgs[found.slug] = found
        return found

    # ------------------------------------------------------------------ issuance
    @traced("ca.issue")
    async def issue(self, request: IssuanceRequest, principal: Principal,
                    record_with: RecordCertificate | None = None) -> IssuedCertificate:
        """Check, sign, record (through ``record_with`` when given: it raises a CAError
        that is not a StoreError to refuse, and the certificate is then never returned),
        tell the listeners, return."""
        started = time.perf_counter()
        # Metrics label: a built-in's name; operator-chosen template names would grow the
        # label set without bound, so an issued template is "template" (a refused unknown
        # name: "unknown").
        purpose = request.profile if request.profile in self._profiles else "unknown"
        org_label = request.org or "unknown"
        try:
            issued = await self._issue(request, principal, record_with or
                                       self.store.add_certificate)
        except CAError:
            CERT_REQUESTS_TOTAL.labels(org_label, purpose, "rejected").inc()
            raise
        except Exception:
            CERT_REQUESTS_TOTAL.labels(org_label, purpose, "error").inc()
            raise
        org = (await self.organization_by_id(issued.record.org_id)).slug
        purpose = purpose if purpose != "unknown" else "template"
        children = self._issued_metrics.get((org, purpose))
        if children is None:
            children = self._issued_metrics[(org, purpose)] = (
                CERT_REQUESTS_TOTAL.labels(org, purpose, "issued"),
                CERT_ISSUANCE_DURATION.labels(org, purpose))
        children[0].inc()
        children[1].observe(time.perf_counter() - started)
        for listener in self._listeners:
            try:
                await listener.certificate_issued(issued)
            except Exception:
                log.exception("certificate listener failed after issuing %s", issued.serial)
        return issued

    async def _issue(self, request: IssuanceRequest, principal: Principal,
                     record_with: RecordCertificate) -> IssuedCertificate:
        requested_org = await self._org_for(request.org, principal)
        profile = await self.resolve_profile(request.profile, requested_org.org_id)
        if not profile.allows_role(principal.role, principal.can("cert:request")):
            await self._refused(principal, profile, request.org)
        org = await self._active_org(requested_org)
        if profile.internal_only and principal.actor_type != "system":
            raise Forbidden(f"profile {profile.name} is issued by the CA itself only")
        if request.renews is not None and not request.csr:
            # A renewal without a CSR certifies the same key for the same names again.
            old = x509.load_der_x509_certificate(request.renews.certificate_der)
            public_key = old.public_key()
            subject_key = check_subject_key(public_key, profile, self.settings.weak_keys)
            sans = x509build.SubjectAltNames(**{k: tuple(v) for k, v in
                                                request.renews.san.items()})
            common_name = request.renews.common_name
        else:
            # ``csr.subject`` and ``csr.public_key()`` build new objects on every call: the
            # ones parse_csr forced are used, not made again.
            if isinstance(request.csr, x509.CertificateSigningRequest):
                csr = request.csr
                csr_subject, public_key = csr.subject, csr.public_key()
            else:
                csr, csr_subject, public_key = _parse_csr(request.csr)
            subject_key = check_subject_key(public_key, profile, self.settings.weak_keys)
            sans = x509build.sans_from_csr(csr)
            reject_control_characters(csr_subject, sans)
            common_name = _common_name(csr_subject)
        named = x509build.common_name_identifier(common_name) \
            if common_name and not sans and profile.require_san else None
        if named is not None:
            # Many clients still put the host name (or address) only in the CN; carry it
            # into the SAN of its kind, as ACME finalization reads it.
            sans = x509build.SubjectAltNames(dns=(named[1],)) if named[0] == "dns" \
                else x509build.SubjectAltNames(ip=(named[1],))
        x509build.check_sans(sans, profile)
        if not common_name:
            common_name = (sans.dns or sans.ip or sans.email or sans.uri or ("",))[0]
        if not common_name and not sans:
            raise PolicyViolation("the request names no subject: give a CN or a SAN")

        ca = await self.issuing_ca(org) if request.ca is None else await self.ca(request.ca)
        if ca.record.ca_type != "issuing":
            raise Forbidden(f"CA {ca.record.name} does not issue end-entity certificates")
        if ca.record.org_id != org.org_id and principal.org_id is not None:
            raise Forbidden("that CA belongs to another organization")
        policy = OrgPolicy.of(org.config)
        if policy.max_validity_days is not None and request.validity_days is None \
                and request.not_after is None:
            # The default validity, like the profile's, stays within the organization's.
            request = dataclasses.replace(request, validity_days=min(
                profile.default_validity_days, policy.max_validity_days))
        # A rollover successor ("next") issues only the CA's own certificates (its OCSP
        # responder, its SCEP RA) until it is activated; a retired CA, only those too.
        if request.ca is not None and principal.actor_type != "system" and \
                ca.record.org_id == org.org_id and \
                ca.record.name != (await self.issuing_cas(org)).active:
            raise Forbidden(f"CA {ca.record.name} is not the organization's active CA")
        not_before, not_after = self._validity(request, profile, ca)
        policy.check(profile.name, sans.dns, sans.ip, not_before, not_after, profile.base)
        subject = x509build.name(common_name, org.name)
        subject_dn = subject.rfc4514_string()
        issuer = ca.issuer_context(self.settings)
        for _attempt in range(3):
            serial = x509.random_serial_number()
            template = x509build.LeafTemplate(
                subject=subject, public_key=public_key, subject_key=subject_key,
                sans=sans, not_before=not_before, not_after=not_after, serial=serial,
                profile=profile, crl_partition=self.settings.crl_partition_of(serial),
            )
            builder = x509build.leaf_builder(template, issuer)
            certificate = await self._sign_certificate(ca, builder)
            record = CertificateRecord(
                cert_id=str(uuid.uuid4()), issuer_ca_id=ca.record.ca_id, org_id=org.org_id,
                # The subject we built is the one signed: no need to parse it back.
                serial_hex=serial_hex(serial), subject_dn=subject_dn,
                common_name=common_name, profile=profile.name,
                certificate_der=certificate.public_bytes(serialization.Encoding.DER),
                key_algorithm=subject_key.algorithm.value, key_size=subject_key.size,
                san=sans.as_dict(), not_before=not_before, not_after=not_after,
                requester=principal.actor_id, created_at=self.clock(),
                crl_partition=template.crl_partition,
            )
            event = AuditEvent(
                event_type="certificate.issued", category="certificate", action="issue",
                actor_type=principal.actor_type, actor_id=principal.actor_id,
                org_id=org.org_id, resource_type="certificate", resource_id=record.cert_id,
                data={"serial": record.serial_hex, "ca": ca.record.name,
                      "profile": profile.name, "subject": record.subject_dn,
                      "san": record.san, "not_after": not_after.isoformat(),
                      **({} if request.renews is None
                         else {"renews": request.renews.serial_hex})},
            )
            try:
                await record_with(record, event)
            except StoreConflict:
                log.warning("serial collision on CA %s; drawing a new serial", ca.record.name)
                continue
            except StoreOrganizationInactive:
                self.forget_organization(org.slug)
                raise Forbidden(f"organization {org.slug} is disabled") from None
            except StoreError as exc:
                log.error("storing an issued certificate failed: %s", exc)
                raise Unavailable("the certificate store is not available") from exc
            return IssuedCertificate(record, certificate, ca.chain)
        raise Unavailable("could not allocate a unique serial number")

    def check_requested_validity(self, profile: Profile, not_before: dt.datetime | None,
                                 not_after: dt.datetime | None,
                                 requested_at: dt.datetime | None = None) -> None:
        """A requested notBefore/notAfter (ACME orders, API callers): BadRequest unless
        notBefore lies between an hour before the request and 90 days after it, and before
        notAfter; ValidityTooLong beyond the profile's maximum. Checked before anything is
        stored, so no backdated certificate and no date the store or encoder cannot hold."""
        now = min(requested_at, self.clock()) if requested_at is not None else self.clock()
        if not_before is not None and not (
                now - MAX_REQUESTED_BACKDATE <= not_before <= now + MAX_REQUESTED_POSTDATE):
            raise BadRequest("notBefore must lie between an hour ago and 90 days from now")
        start = not_before or now
        if not_after is not None:
            if not_after <= start:
                raise BadRequest("notAfter must be after notBefore")
            if not_after - start > dt.timedelta(days=profile.max_validity_days):
                raise ValidityTooLong(
                    f"profile {profile.name} allows at most {profile.max_validity_days} days")

    def _validity(
        self, request: IssuanceRequest, profile: Profile, ca: LoadedCA
    ) -> tuple[dt.datetime, dt.datetime]:
        self.check_requested_validity(profile, request.not_before, request.not_after,
                                      request.requested_at)
        now = self.clock().replace(microsecond=0)
        not_before = request.not_before or now - BACKDATE
        if request.not_after is not None:
            not_after = request.not_after
        else:
            days = request.validity_days or profile.default_validity_days
            if days <= 0:
                raise BadRequest("validity_days must be positive")
            if days > profile.max_validity_days:
                raise ValidityTooLong(
                    f"profile {profile.name} allows at most {profile.max_validity_days} days"
                )
            not_after = now + dt.timedelta(days=days)
        if not_after - max(not_before, now - BACKDATE) > dt.timedelta(
            days=profile.max_validity_days) + BACKDATE:
            raise ValidityTooLong(
                f"profile {profile.name} allows at most {profile.max_validity_days} days"
            )
        if not_after <= now:
            raise BadRequest("notAfter lies in the past")
        # Never outlive the issuer: cap rather than refuse (RFC 5280 path validation).
        not_after = min(not_after, ca.certificate.not_valid_after_utc)
        return not_before, not_after

    async def _sign_certificate(
        self, ca: LoadedCA, builder: x509.CertificateBuilder
    ) -> x509.Certificate:
        signer = ca.signer
        return await ca.signing_key.sign(
            Purpose.CERTIFICATE,
            lambda: x509build.sign(builder, signer.builder_key(), signer.key_spec))

    async def _refused(self, principal: Principal, profile: Profile, org: str | None) -> NoReturn:
        """A profile the principal's role may not request: audited, then 403."""
        await self.store.append_audit(AuditEvent(
            event_type="certificate.refused", category="certificate", action="issue",
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            org_id=principal.org_id, resource_type="profile", resource_id=profile.name,
            status="denied", data={"role": principal.role, "organization": org}))
        if principal.can("cert:request") or profile.allowed_roles:
            raise Forbidden(f"role {principal.role} may not request profile {profile.name}")
        raise Forbidden("this credential may not request certificates")

    async def _org_for(self, slug: str | None, principal: Principal,
                       action: str = "cert:request") -> Organization:
        """The organization a request names (or the principal's own); another tenant's is
        Forbidden, and audited."""
        if slug is None:
            if principal.org_id is not None:
                return await self.organization_by_id(principal.org_id)
            slug = self.settings.default_org
        try:
            org = await self.organization(slug)
        except NotFound:
            if principal.org_id is not None:
                await self.denied(principal, action, "organization", slug[:80])
                raise Forbidden("not permitted for that organization") from None
            raise
        if not principal.sees_org(org.org_id):
            await self.denied(principal, action, "organization", org.org_id)
            raise Forbidden("not permitted for that organization")
        return org

    async def _active_org(self, org: Organization) -> Organization:
        """The organization an issuance goes by: its policy as read at most
        ORG_POLICY_REFRESH_SECONDS ago (by this process; at once after a change made here).
        That it is active is checked again, authoritatively, by the certificate's write
        (StoreOrganizationInactive), so a disabled organization issues nothing from the
        moment it is disabled, in every process, without a read per issuance."""
        now = time.monotonic()
        cached = self._orgs.get(org.slug)
        if cached is not None and cached.org_id == org.org_id and cached.status == "active" \
                and self._org_read.get(org.org_id, 0.0) > now:
            return cached
        fresh = await self.store.get_organization_by_id(org.org_id)
        if fresh is None:
            raise NotFound("unknown organization")
        self._orgs[fresh.slug] = fresh
        self._org_read[fresh.org_id] = now + ORG_POLICY_REFRESH_SECONDS
        if fresh.status != "active":
            raise Forbidden(f"organization {fresh.slug} is disabled")
        return fresh

    async def credential_org(self, org_id: str) -> Organization:
        """The organization a credential (an EST secret or label, a SCEP challenge or
        static secret, an ACME account) resolved to, as stored now: Unauthorized when it is
        disabled or gone. Read fresh, as ``authenticate`` reads a token's, so a disabled
        organization's credentials stop at once in every process, and before anything
        is queued or spent (issuance checks it again in ``_active_org``)."""
        return self.credential_org_read(await self.store.get_organization_by_id(org_id))

    def credential_org_read(self, fresh: Organization | None) -> Organization:
        """``credential_org`` of an organization the caller has just read from the store
        itself, with the credential in one read (an ACME account: a JOIN), so as fresh."""
        if fresh is None or fresh.status != "active":
            raise Unauthorized("the organization is disabled")
        self._orgs[fresh.slug] = fresh
        return fresh

    def forget_organization(self, slug: str) -> None:
        """Drop the cached copy (after an update in this process)."""
        forgotten = self._orgs.pop(slug, None)
        if forgotten is not None:
            self._org_read.pop(forgotten.org_id, None)

    async def denied(self, principal: Principal, action: str, resource_type: str,
                     resource_id: str | None, detail: dict[str, object] | None = None) -> None:
        """Audit a refused action (403, or 404 where existence must not leak)."""
        await self.store.append_audit(AuditEvent(
            event_type=f"{resource_type}.denied", category="authorization", action=action,
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            org_id=principal.org_id, resource_type=resource_type, resource_id=resource_id,
            status="denied", data={"role": principal.role, **(detail or {})}))

    async def refuse(self, principal: Principal, action: str, resource_type: str,
                     resource_id: str | None, message: str, *, hide: bool = False
                     ) -> NoReturn:
        """Audit a refused action, then raise: NotFound where existence must not leak
        (``hide``), else Forbidden. The admin services' one way to say no."""
        await self.denied(principal, action, resource_type, resource_id)
        if hide:
            raise NotFound(message)
        raise Forbidden(message)

    # ------------------------------------------------------------------ lookup, revocation
    async def readable_orgs(self, principal: Principal) -> frozenset[str] | None:
        """The organizations whose certificates ``principal`` may read (None: every one, a
        super admin's): its own, and those that share with it by their isolation level
        (``org_policy.readable_org_ids``). Read fresh on every call (one read of the
        organizations, a small table), so that a change of isolation level or partners, or
        a disabling, takes effect at once in every process, as disabling does for tokens.
        ``cert:read_own`` never crosses: it is about the requester's own certificates."""
        if principal.org_id is None:
            return None
        if principal.only_own("cert:read") or not principal.can("cert:read"):
            return frozenset({principal.org_id})
        organizations: list[Organization] = []
        after: tuple[dt.datetime, str] | None = None
        while True:
            batch = await self.store.list_organizations(after=after, limit=1000)
            organizations += batch
            last = batch[-1] if batch else None
            if len(batch) < 1000 or last is None or last.created_at is None:
                break
            after = (last.created_at, last.org_id)
        return readable_org_ids(principal.org_id, organizations)

    async def find_certificate(self, serial: str, principal: Principal,
                               action: str = "cert:read") -> CertificateRecord:
        """The caller's certificate with this serial; NotFound also for other tenants' (the
        scope is part of the query, and the refusal is audited). Reading (``cert:read``)
        also finds those of organizations that share with the caller's
        (``readable_orgs``); any other action finds the caller's own only."""
        if not principal.can(action):
            await self.denied(principal, action, "certificate", serial[:80])
            raise Forbidden("this credential may not read certificates")
        wanted = parse_serial(serial)
        if action == "cert:read":  # reading may cross to organizations that share
            found = await self.store.find_certificates_by_serial(
                wanted, requester=principal.requester_scope(action),
                org_ids=await self.readable_orgs(principal))
        else:  # acting never crosses
            found = await self.store.find_certificates_by_serial(
                wanted, principal.org_id, principal.requester_scope(action))
        if found:
            return found[0]
        if principal.org_id is not None:
            await self.denied(principal, action, "certificate", wanted, {"serial": wanted})
        raise NotFound(f"no certificate with serial {serial_display(wanted)}")

    @traced("ca.revoke")
    async def revoke(
        self,
        serial: str,
        reason: str | None,
        principal: Principal,
        invalidity_date: dt.datetime | None = None,
    ) -> CertificateRecord:
        if not principal.can("cert:revoke"):
            await self.denied(principal, "cert:revoke", "certificate", serial[:80])
            raise Forbidden("this credential may not revoke certificates")
        reason_name = parse_reason(reason)
        wanted = parse_serial(serial)
        candidates = await self.store.find_certificates_by_serial(
            wanted, principal.org_id, principal.requester_scope("cert:revoke"))
        if not candidates:
            if principal.org_id is not None:
                await self.denied(principal, "cert:revoke", "certificate", wanted,
                                  {"serial": wanted})
            raise NotFound(f"no certificate with serial {serial_display(wanted)}")
        if len(candidates) > 1:
            raise Conflict("several issuers used this serial; revoke through the issuer")
        target = candidates[0]
        if target.status == "revoked":
            raise Conflict(f"certificate {serial_display(wanted)} is already revoked")
        now = self.clock()
        if invalidity_date is not None and invalidity_date > now:
            raise BadRequest("the invalidity date lies in the future")
        revocation, event = self.revocation_of(target, reason_name, principal,
                                               invalidity_date)
        updated = await self.store.revoke_certificate(revocation, event)
        if updated is None:
            raise Conflict(f"certificate {serial_display(wanted)} is already revoked")
        await self.announce_revoked(updated)
        return updated

    def revocation_of(self, target: CertificateRecord, reason: str, principal: Principal,
                      invalidity_date: dt.datetime | None = None
                      ) -> tuple[Revocation, AuditEvent]:
        """The revocation of ``target`` now (``reason`` a CRL reason name) and its audit
        event, for the store to write; ``announce_revoked`` once written. ``revoke`` uses
        it, and a registrar that revokes as part of another write (EST re-key superseding
        the renewed certificate) decides who may, and uses it too."""
        revocation = Revocation(
            ca_id=target.issuer_ca_id, serial_hex=target.serial_hex, cert_id=target.cert_id,
            revoked_at=self.clock().replace(microsecond=0), reason=reason,
            invalidity_date=invalidity_date, crl_partition=target.crl_partition,
        )
        event = AuditEvent(
            event_type="certificate.revoked", category="certificate", action="revoke",
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            org_id=target.org_id, resource_type="certificate", resource_id=target.cert_id,
            data={"serial": target.serial_hex, "reason": reason},
        )
        return revocation, event

    async def announce_revoked(self, updated: CertificateRecord) -> None:
        """After the store revoked ``updated``: metrics, then the listeners (the OCSP
        responses and the CRL), awaited so that OCSP shows it when this returns."""
        org = await self.organization_by_id(updated.org_id)
        CERT_REVOCATIONS_TOTAL.labels(org.slug, updated.revocation_reason or "unspecified"
                                      ).inc()
        for listener in self._listeners:
            try:
                await listener.certificate_revoked(updated)
            except Exception:
                log.exception("certificate listener failed after revoking %s",
                              serial_display(updated.serial_hex))

    async def renew(self, serial: str, principal: Principal, csr: bytes = b"",
                    validity_days: int | None = None) -> IssuedCertificate:
        """A new certificate for the one with this serial (the caller's, by the scope of
        ``cert:renew``): same organization and profile; the same key and names unless a
        CSR brings new ones. A revoked certificate is not renewed: its key may be the
        compromised one, and its names may be the ones taken away."""
        old = await self.find_certificate(serial, principal, action="cert:renew")
        if old.status == "revoked":
            raise Conflict(f"certificate {serial_display(old.serial_hex)} is revoked: "
                           "request a new one instead of renewing it")
        org = await self.organization_by_id(old.org_id)
        return await self.issue(IssuanceRequest(
            csr=csr, profile=old.profile, org=org.slug, validity_days=validity_days,
            renews=old), principal)

    async def status(self, issuer_ca_id: str, serial: int) -> CertificateStatus:
        record = await self.store.get_certificate(issuer_ca_id, serial_hex(serial))
        if record is None:
            return CertificateStatus("unknown")
        return CertificateStatus("revoked" if record.status == "revoked" else "good", record)

    # ------------------------------------------------------------------ API tokens
    async def create_token(
        self, org_slug: str, role: str, name: str = "", *, principal: Principal,
        expires_at: dt.datetime | None = None,
    ) -> CreatedToken:
        """A bearer token for ``role`` in an organization, made by ``principal``: who acts is
        always named by the caller (it is checked and audited), never assumed."""
        if role not in ROLES:
            raise BadRequest(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        if not principal.can("token:create"):
            raise Forbidden("this credential may not create tokens")
        org = await self._org_for(org_slug, principal, "token:create")
        if role == "pki_super_admin" and principal.org_id is not None:
            raise Forbidden("only a super admin creates super-admin tokens")
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        record = ApiToken(
            token_id=token_id, org_id=org.org_id, role=role,
            secret_hash=hash_secret(secret), name=name or f"{role}@{org.slug}",
            created_at=self.clock(), expires_at=expires_at,
        )
        event = AuditEvent(
            event_type="token.created", category="authentication", action="create_token",
            actor_type=principal.actor_type, actor_id=principal.actor_id, org_id=org.org_id,
            resource_type="api_token", resource_id=token_id,
            data={"role": role, "name": record.name},
        )
        await self.store.add_token(record, event)
        return CreatedToken(f"vcc.{token_id}.{secret}", record)

    async def authenticate(self, token: str) -> Principal:
        """The Principal of a bearer token; Unauthorized for anything not a live token.

        Not cached: one keyed read (the token joined with its organization) per request, so
        that a revoked token, or a disabled organization's, stops working at once in every
        process."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "vcc" or not parts[1] or not parts[2]:
            raise Unauthorized("malformed bearer token")
        record = await self.store.get_token(parts[1])
        if record is None or not hmac.compare_digest(
            record.secret_hash, hash_secret(parts[2])
        ):
            raise Unauthorized("unknown bearer token")
        if record.revoked or (record.expires_at is not None and record.expires_at <= self.clock()):
            raise Unauthorized("bearer token expired or revoked")
        if record.org_status != "active":
            raise Unauthorized("the token's organization is disabled")
        # super admins of the default organization act across all organizations
        org_scope = None if record.role == "pki_super_admin" else record.org_id
        return Principal("api", f"token:{record.token_id}", org_scope, record.role)

    # ------------------------------------------------------------------ mTLS service accounts
    async def revoked_here(self, certificate_der: bytes, serial: int) -> bool:
        """Whether this PKI issued exactly this certificate and has revoked it (found by
        serial, compared by DER: a certificate of another CA, or a forgery naming one of
        our serials, is not ours)."""
        for record in await self.store.find_certificates_by_serial(serial_hex(serial)):
            if record.certificate_der == certificate_der:
                return record.status == "revoked"
        return False

    async def authenticate_certificate(self, chain_der: Sequence[bytes]) -> Principal:
        """The Principal of a TLS client certificate (``chain_der[0]``; the rest is the
        chain the client sent, unused: the binding pins the certificate itself) bound to a
        service account; Unauthorized otherwise, audited as ``authentication.failed``.

        Read per request, not cached, as ``authenticate`` reads a token: a revoked binding,
        a certificate revoked here or a disabled organization stops working at once in
        every process. The TLS handshake proved possession of the certificate's key."""
        leaf = chain_der[0] if chain_der else b""
        digest = mtls.fingerprint(leaf)
        binding: ServiceAccount | None = None
        try:
            try:
                certificate = x509.load_der_x509_certificate(leaf)
            except ValueError:
                raise Unauthorized("the TLS client certificate does not parse") from None
            binding = await self.store.find_service_account(digest)
            if binding is None:
                raise Unauthorized("no service account is bound to this client certificate")
            now = self.clock()
            if not (certificate.not_valid_before_utc <= now
                    < certificate.not_valid_after_utc):
                raise Unauthorized("the client certificate is expired or not yet valid")
            if await self.revoked_here(leaf, certificate.serial_number):
                raise Unauthorized("the client certificate is revoked")
            if binding.org_status != "active":
                raise Unauthorized("the service account's organization is disabled")
        except Unauthorized as refused:
            await self._authentication_failed(digest, binding, refused.detail)
            raise
        return Principal("service", f"mtls:{binding.account_id}", binding.org_id,
                         binding.role)

    async def _authentication_failed(self, digest: str, binding: ServiceAccount | None,
                                     reason: str) -> None:
        await self.store.append_audit(AuditEvent(
            event_type="authentication.failed", category="authentication",
            action="authenticate_certificate", actor_type="service",
            actor_id=None if binding is None else f"mtls:{binding.account_id}",
            org_id=None if binding is None else binding.org_id,
            resource_type="service_account",
            resource_id=None if binding is None else binding.account_id, status="failed",
            data={"reason": reason, "fingerprint": digest}))

    # ------------------------------------------------------------------ templates
    async def publish_profiles(self) -> None:
        for profile in BUILTIN_PROFILES:
            await self.store.upsert_template(TemplateRecord(
                slug=profile.name, name=profile.name, purpose=profile.name,
                definition=profile.to_definition(),
            ))


def hash_secret(secret: str) -> str:
    """The stored form of a generated secret (API tokens, EST enrollment secrets). The
    secret is 256 random bits (``secrets.token_urlsafe(32)``): a fast unsalted hash is
    enough, as there is no dictionary to attack and no two secrets share a hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


NOT_A_CSR = "not a PEM or DER PKCS#10 certificate request"
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")


# Unicode category Cc: C0 controls, DEL and C1 controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def reject_control_characters(subject: x509.Name, sans: x509build.SubjectAltNames) -> None:
    """Control characters (C0, DEL, C1) in any subject attribute or SAN are refused before
    anything is signed: RFC 5280 names have no place for them, and a NUL truncates the
    name in C-string consumers (the null-prefix attack, ``good.test\\0.evil``)."""
    for value in (*(a.value for a in subject), *sans.dns, *sans.email, *sans.uri):
        if isinstance(value, str) and _CONTROL.search(value):
            raise BadCSR(f"a name in the CSR holds a control character: {value!r}")


def parse_csr(data: bytes) -> x509.CertificateSigningRequest:
    """The request, checked; BadCSR in words a requester can act on. The parser's own text
    (Rust ParseError structures, "Valid PEM but no BEGIN ...") is logged, never returned."""
    return _parse_csr(data)[0]


def _parse_csr(data: bytes) -> tuple[x509.CertificateSigningRequest, x509.Name,
                                     CertificatePublicKeyTypes]:
    """parse_csr, and the subject and public key it parsed on the way."""
    if len(data) > 64 * 1024:
        raise BadCSR("the CSR is larger than 64 KiB")
    try:
        if b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
        # Force the lazy parts so malformed input fails here, not later.
        subject = csr.subject
        subject.rfc4514_string()
        _ = csr.extensions
        public_key = csr.public_key()
    except x509.DuplicateExtension as exc:
        raise BadCSR(f"the CSR has the extension {exc.oid.dotted_string} twice") from None
    except x509.UnsupportedGeneralNameType:
        raise BadCSR("the CSR has a subjectAltName of an unsupported type") from None
    except x509.InvalidVersion:  # not a ValueError: a version other than v1 (0)
        raise BadCSR("the CSR's version is not v1 (PKCS#10 knows no other)") from None
    except UnsupportedAlgorithm:
        # The key cannot even be read (an unknown algorithm or curve OID): the request is
        # broken as a whole, not merely a key type the profile refuses.
        raise BadCSR("the CSR's public key is of an unsupported algorithm "
                     "(use RSA, ECDSA P-256/P-384 or Ed25519)") from None
    except (ValueError, TypeError) as exc:
        log.debug("unparseable CSR: %s", exc)
        label = _PEM_LABEL.search(data)
        if label is not None and label.group(1) not in (b"CERTIFICATE REQUEST",
                                                         b"NEW CERTIFICATE REQUEST"):
            raise BadCSR(f"{NOT_A_CSR} (its PEM label is {label.group(1).decode()})"
                         ) from None
        raise BadCSR(NOT_A_CSR) from None
    try:
        signature_ok = csr.is_signature_valid
    except Exception:  # any failure to verify means "does not verify"
        signature_ok = False
    if not signature_ok:
        raise BadCSRSignature("the CSR signature does not verify")
    return csr, subject, public_key


def check_subject_key(public_key: CertificatePublicKeyTypes, profile: Profile,
                      weak_keys: WeakKeys | None = None) -> KeySpec:
    if weak_keys is not None and weak_keys.is_weak(public_key):
        raise BadPublicKey("this key is on the list of known-weak keys (Debian OpenSSL, "
                           "CVE-2008-0166): make a new one")
    try:
        spec = spec_of(public_key)
    except ValueError as exc:
        raise BadPublicKey(str(exc)) from None
    if spec.algorithm is KeyAlgorithm.RSA and spec.size < 2048:
        raise BadPublicKey(f"RSA keys must have at least 2048 bits (got {spec.size})")
    if spec.algorithm is KeyAlgorithm.RSA and spec.size not in (2048, 3072, 4096):
        raise BadPublicKey(f"RSA key size {spec.size} is not allowed (2048, 3072, 4096)")
    if not profile.allows_key(spec):
        raise BadPublicKey(
            f"profile {profile.name} does not allow {spec} keys "
            f"(allowed: {', '.join(profile.allowed_keys)})"
        )
    return spec


def _common_name(subject: x509.Name) -> str:
    values = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        return ""
    value = values[0].value
    return value if isinstance(value, str) else value.decode(errors="replace")
