"""EST (RFC 7030, RFC 8951) decisions: labels, enrollment secrets, client-certificate checks,
enroll, re-enroll, server key generation, CSR attributes and manual approval.

``protocols/est`` decodes the wire (base64, PKCS#10, TLS client certificate, Basic auth)
into the calls below and encodes their results; every rule lives here, every record in the
store (``ca_core.storage.EnrollmentStore``), every certificate comes from
``Authority.issue``.

Errors (all ``CAError`` kinds, which the EST front-end maps to 4xx with a plain-text reason
and to 401 with ``WWW-Authenticate: Basic`` for ``Unauthorized``)::

    Unauthorized   no credential, an unknown/used/expired secret, an untrusted, revoked or
                   expired client certificate, a method the label does not accept
    NotFound       an unknown label (or pending request)
    BadRequest     a CSR that does not parse or verify (BadCSR...), breaks the profile
                   (PolicyViolation...) or a secret's subject pin, a re-enroll whose
                   subject or SAN differs when the label does not allow it, a missing or
                   wrong channel binding (and binding required on TLS 1.3), a key
                   encryption request that cannot be met
    Forbidden      a credential of another organization (or label) than the label's, a
                   request an operator rejected, serverkeygen on a label with approval
    Conflict       (operators) a pending request decided already
    Unavailable    the store or key backend failed; a secret is then left unused

Channel binding is checked whenever the session has a tls-unique value and the CSR carries
a challengePassword, and required on labels that say so. A queued request's retry is not
checked again (its new TLS session has a new tls-unique; the binding was checked when it
was queued). ``reenroll`` is authenticated by a certificate issued here only (not Basic,
not the label's ``accept``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import enum
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from asn1crypto import core, parser
from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca_core import der, x509build
from ca_core.authority import (
    BACKDATE,
    Authority,
    Clock,
    IssuanceRequest,
    IssuedCertificate,
    hash_secret,
    parse_csr,
    serial_hex,
)
from ca_core.cms import SignedDataSigner, encrypt_enveloped
from ca_core.errors import (
    BadCSR,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
)
from ca_core.keys import KeySpec
from ca_core.principal import Principal
from ca_core.records import AuditEvent, CARecord, CertificateRecord
from ca_core.signers.base import SoftwareSigner
from ca_core.signers.software import generate_private_key
from ca_core.storage import EnrollmentStore, StoreConflict

# API of this module (the EST work is built in two halves against it: this core with its
# store, and the wire front-end with its listener).

DEFAULT_LABEL = ""  # the unlabelled /.well-known/est/ paths
# How long an issuer name that is none of this PKI's CAs is believed to stay so (a CA
# another process creates is found after at most this long), and how many such names are
# remembered.
UNKNOWN_ISSUER_TTL = 60.0
_UNKNOWN_ISSUERS_KEPT = 1024


class AuthMethod(enum.StrEnum):
    BASIC = "basic"  # HTTP Basic with a one-time enrollment secret
    CERTIFICATE = "certificate"  # TLS client certificate (or a trusted proxy's header)


@dataclass(frozen=True, slots=True)
class EstLabel:
    """What a label (``/.well-known/est/{label}/``) maps to, and its policy."""

    label: str  # "" for the default paths
    org_id: str
    profile: str
    accept: frozenset[AuthMethod] = frozenset({AuthMethod.BASIC, AuthMethod.CERTIFICATE})
    require_both: bool = False  # Basic and a client certificate on the same request
    require_channel_binding: bool = False  # tls-unique in challengePassword (TLS 1.2 only)
    require_approval: bool = False  # 202 + Retry-After until an operator approves
    allow_subject_change: bool = False  # on simplereenroll
    # simplereenroll with a new key revokes the renewed certificate (reason superseded) in
    # the transaction that records the new one
    supersede_on_reenroll: bool = False
    key_type: str = "ec-p256"  # csrattrs and serverkeygen
    created_at: dt.datetime | None = None

    def policy(self) -> dict[str, Any]:
        """The policy fields as the store keeps them (one JSON document)."""
        return {
            "accept": sorted(m.value for m in self.accept),
            "require_both": self.require_both,
            "require_channel_binding": self.require_channel_binding,
            "require_approval": self.require_approval,
            "allow_subject_change": self.allow_subject_change,
            "supersede_on_reenroll": self.supersede_on_reenroll,
            "key_type": self.key_type,
        }

    @classmethod
    def from_policy(cls, label: str, org_id: str, profile: str, policy: dict[str, Any],
                    created_at: dt.datetime | None = None) -> EstLabel:
        """The inverse of ``policy``; absent fields take their defaults."""
        defaults = cls(label, org_id, profile)
        return cls(
            label=label, org_id=org_id, profile=profile,
            accept=frozenset(AuthMethod(m) for m in policy.get("accept", defaults.accept)),
            require_both=bool(policy.get("require_both", False)),
            require_channel_binding=bool(policy.get("require_channel_binding", False)),
            require_approval=bool(policy.get("require_approval", False)),
            allow_subject_change=bool(policy.get("allow_subject_change", False)),
            supersede_on_reenroll=bool(policy.get("supersede_on_reenroll", False)),
            key_type=str(policy.get("key_type", defaults.key_type)),
            created_at=created_at,
        )


@dataclass(frozen=True, slots=True)
class EnrollmentSecretRecord:
    """A one-time enrollment secret: stored hashed, single use, expiring."""

    secret_id: str  # the Basic user name
    org_id: str
    label: str
    secret_hash: str
    expires_at: dt.datetime
    subject: str | None = None  # when set, the CSR's subject must be exactly this
    used_at: dt.datetime | None = None
    created_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class CreatedSecret:
    user: str
    password: str  # shown once, never stored
    record: EnrollmentSecretRecord


@dataclass(frozen=True, slots=True)
class PendingEnrollment:
    """A request waiting for an operator (a label with ``require_approval``)."""

    request_id: str
    label: str
    org_id: str
    csr_der: bytes
    requester: str  # who asked: "secret:<id>" or "certificate:<SHA-256 of it>"
    status: str  # pending | rejected | issued
    cert_id: str | None = None
    created_at: dt.datetime | None = None
    decided_at: dt.datetime | None = None
    # SHA-256 (hex) of the CSR's DER: the same request (with the same requester) finds it
    csr_fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class EstCredentials:
    """What the front-end saw of the client, undecoded beyond parsing."""

    basic_user: str | None = None
    basic_password: str | None = None
    client_certificate: x509.Certificate | None = None  # the TLS peer's (or the proxy's)
    client_chain: tuple[x509.Certificate, ...] = ()
    tls_unique: bytes | None = None  # RFC 7030 3.5 (RFC 5929); TLS 1.2 only
    tls_exporter: bytes | None = None  # RFC 9266 tls-exporter; TLS 1.3 only
    remote: str = ""

    @property
    def channel_binding(self) -> bytes | None:
        """The session's channel binding value: tls-unique (TLS 1.2) or tls-exporter (TLS
        1.3), whichever the front-end could get."""
        return self.tls_unique if self.tls_unique is not None else self.tls_exporter


@dataclass(frozen=True, slots=True)
class EnrollmentResult:
    """Issued: ``certificate`` and its chain. Pending: ``retry_after`` seconds (202)."""

    certificate: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    retry_after: int | None = None
    private_key_pkcs8: bytes | None = None  # serverkeygen only, never stored
    encrypted_key: bytes | None = None  # serverkeygen with a key-encryption request (CMS)
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EstSettings:
    """Gateway-wide EST settings (``VCC_PKI_EST_*``); per-label policy is in ``EstLabel``."""

    trust_store: tuple[x509.Certificate, ...] = ()  # manufacturer / bootstrap CAs
    trusted_proxies: tuple[str, ...] = ()  # addresses whose client-certificate header counts
    max_body_bytes: int = 64 * 1024
    approval_retry_after: int = 60  # seconds, the 202's Retry-After
    default_secret_lifetime: dt.timedelta = dt.timedelta(hours=24)
    max_secret_lifetime: dt.timedelta = dt.timedelta(days=90)
    default_profile: str = "vcc_service"  # of the default label when none is configured


# Operation names (RFC 7030 3.2.2) cannot be labels: /.well-known/est/cacerts is the
# operation, never the label "cacerts".
OPERATIONS = frozenset({"cacerts", "simpleenroll", "simplereenroll", "csrattrs",
                        "serverkeygen", "fullcmc"})
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")  # \Z: "$" lets a final "\n" in

# PKCS#9 challengePassword; RFC 7030 4.4.1.1 / 4.4.1.2 key-encryption requests (RFC 5652 /
# RFC 7030 3.x attribute OIDs, id-aa-decryptKeyID and id-aa-asymmDecryptKeyID).
CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"
DECRYPT_KEY_ID = "1.2.840.113549.1.9.16.2.37"
ASYMM_DECRYPT_KEY_ID = "1.2.840.113549.1.9.16.2.54"
EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
SUBJECT_ALT_NAME = "2.5.29.17"
# RFC 5958 3 / RFC 6032: the content type of an AsymmetricKeyPackage (id-ct-KP-aKeyPackage)
A_KEY_PACKAGE = "2.16.840.1.101.2.1.2.78.5"
_KEY_OIDS = {  # csrattrs: the public key algorithm (and curve) a CSR must use
    "ec-p256": ("1.2.840.10045.2.1", "1.2.840.10045.3.1.7", "1.2.840.10045.4.3.2"),
    "ec-p384": ("1.2.840.10045.2.1", "1.3.132.0.34", "1.2.840.10045.4.3.3"),
    "ed25519": ("1.3.101.112", None, None),
}
_RSA = ("1.2.840.113549.1.1.1", None, "1.2.840.113549.1.1.11")  # rsaEncryption, sha256WithRSA


def _oid(dotted: str) -> bytes:
    encoded: bytes = core.ObjectIdentifier(dotted).dump()
    return encoded


def _attribute(dotted: str, *values: bytes) -> bytes:
    """RFC 7030 4.5.2 Attribute in CsrAttrs: SEQUENCE { type, SET OF values }."""
    return der.sequence(_oid(dotted), der.set_of(values))


@dataclass(frozen=True, slots=True)
class _Caller:
    """Who an authenticated request comes from."""

    requester: str  # "secret:<id>" or "certificate:<sha256>"
    secret: EnrollmentSecretRecord | None = None  # checked, not yet spent
    secret_password: str | None = None
    certificate: CertificateRecord | None = None  # a certificate this PKI issued

    def principal(self, org_id: str) -> Principal:
        return Principal.enrollee("est", self.requester, org_id)


def _csr_attributes(csr_der: bytes) -> dict[str, list[bytes]]:
    """The CSR's attributes (RFC 2986 4.1) by dotted OID, each value still encoded. Read
    with asn1crypto's parser, not its typed specs or cryptography, neither of which reads
    every value type (the key-encryption attributes hold OCTET STRINGs)."""
    try:
        request = asn1_csr.CertificationRequest.load(csr_der)
        attributes = request["certification_request_info"]["attributes"]
        found: dict[str, list[bytes]] = {}
        for attribute in der.elements(attributes.contents or b""):
            kind, values = der.elements(parser.parse(attribute)[4])
            oid = core.ObjectIdentifier.load(kind).dotted
            found.setdefault(oid, []).extend(der.elements(parser.parse(values)[4]))
        return found
    except (ValueError, TypeError, KeyError) as exc:
        raise BadCSR(f"the CSR's attributes do not parse: {type(exc).__name__}") from None


def _text(value: bytes) -> str | None:
    """A challengePassword value (DirectoryString: PrintableString, UTF8String...) as
    text; None for anything else."""
    try:
        tag_class, _, tag, _, contents, _ = parser.parse(value)
    except ValueError:
        return None
    if tag_class != 0 or tag not in (12, 19, 20, 22, 26, 28, 30):
        return None
    raw = bytes(contents)
    if tag == 30:  # BMPString
        return raw.decode("utf-16-be", errors="replace")
    if tag == 28:  # UniversalString
        return raw.decode("utf-32-be", errors="replace")
    return raw.decode("utf-8", errors="replace")


def _normalized_sans(sans: dict[str, list[str]]) -> dict[str, list[str]]:
    return {kind: sorted(values) for kind, values in sans.items() if values}


class EstService:
    """The EST registration authority over the Authority; see the module docstring.

    Signatures are the contract between ``ca_core`` and ``protocols/est``.

    Secrets and issuance: a request's secret is checked (hash, unused, unexpired, its
    organization, label and subject pin) before anything is signed, and spent by the same
    transaction that records the certificate (``Authority.issue(record_with=...)``, store
    ``add_certificate_consuming_secret``) or the pending request. So a refusal (policy,
    CSR) spends nothing, a server failure (store unavailable at the write, key backend)
    leaves the secret unused for the client's retry, and of two requests with one secret
    the second's write finds it spent and its certificate is neither recorded nor
    returned (it gets Unauthorized).
    """

    def __init__(self, authority: Authority, store: EnrollmentStore | None = None,
                 settings: EstSettings | None = None, clock: Clock | None = None) -> None:
        self.authority = authority
        self.store: EnrollmentStore = store if store is not None else authority.store
        self.settings = settings or EstSettings()
        self.clock: Clock = clock or authority.clock
        self._trust_store: verification.Store | None = None  # built on first use
        self._issuers: dict[str, tuple[CARecord, ...]] = {}  # see _issuing_cas
        self._issuers_loaded = -1
        self._unknown_issuers: dict[str, float] = {}

    # --- wire operations (protocols/est calls these) ----------------------------------

    async def resolve_label(self, label: str) -> EstLabel:
        """The label's mapping and policy; NotFound for an unknown label. ``""`` is the
        default label (the unlabelled paths), which always exists (the default
        organization, profile ``vcc_service``) unless configured otherwise."""
        if label and (not _LABEL.match(label) or label in OPERATIONS):
            raise NotFound(f"no EST label {label[:64]!r}")
        found = await self.store.get_est_label(label)
        if found is not None:
            return found
        if label:
            raise NotFound(f"no EST label {label!r}")
        org = await self.authority.organization(self.authority.settings.default_org)
        return EstLabel("", org.org_id, self.settings.default_profile)

    async def ca_certificates(self, label: str) -> tuple[x509.Certificate, ...]:
        """/cacerts (RFC 7030 4.1): the label's issuing CA (the active one after a rollover:
        the one that signs what this label enrolls), its chain and the root."""
        found = await self.resolve_label(label)
        org = await self.authority.organization_by_id(found.org_id)
        ca = await self.authority.issuing_ca(org)
        # RFC 7030 4.1.3: the current root CA certificate is included.
        return await self.authority.chain_with_root(ca)

    async def csr_attributes(self, label: str) -> bytes:
        """/csrattrs (RFC 7030 4.5): DER CsrAttrs naming the profile's required attributes
        and the key type (RFC 8951 / RFC 9908 style, as openssl asn1parse shows it)."""
        found = await self.resolve_label(label)
        profile = await self.authority.resolve_profile(found.profile, found.org_id)
        # CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID (an OID, or an Attribute)
        items: list[bytes] = []
        if found.require_channel_binding:
            items.append(_oid(CHALLENGE_PASSWORD))
        algorithm, curve, signature = _KEY_OIDS.get(found.key_type, _RSA)
        if curve is not None:  # RFC 7030 4.5.2's example: id-ecPublicKey with the curve
            items.append(_attribute(algorithm, _oid(curve)))
        else:
            items.append(_oid(algorithm))
        if profile.require_san:  # the profile needs a subjectAltName in the request
            items.append(_attribute(EXTENSION_REQUEST, _oid(SUBJECT_ALT_NAME)))
        if signature is not None:
            items.append(_oid(signature))
        encoded = der.sequence(*items)
        return encoded

    async def enroll(self, label: str, csr_der: bytes, credentials: EstCredentials
                     ) -> EnrollmentResult:
        """/simpleenroll (RFC 7030 4.2.1): authenticate per the label's policy (a used
        secret is consumed in the same transaction as the issuance or the pending
        request), check proof of possession and channel binding, then issue or queue."""
        found = await self.resolve_label(label)
        csr = parse_csr(csr_der)
        caller = await self._authenticate(found, credentials)
        return await self._enroll(found, csr_der, csr, caller, credentials)

    async def reenroll(self, label: str, csr_der: bytes, credentials: EstCredentials
                       ) -> EnrollmentResult:
        """/simplereenroll (RFC 7030 4.2.2): authenticated by the certificate being renewed
        (issued here, neither revoked nor expired); subject and SAN must match it unless
        the label allows changes; a new key is allowed (re-key)."""
        found = await self.resolve_label(label)
        csr = parse_csr(csr_der)
        presented = credentials.client_certificate
        if presented is None:
            raise Unauthorized("re-enrollment is authenticated by the certificate being "
                               "renewed: present it as the TLS client certificate")
        record = await self._issued_here(presented)
        if record is None:
            raise Unauthorized("the client certificate was not issued by this PKI: only a "
                               "certificate issued here can be re-enrolled")
        self._check_live(record)
        if record.org_id != found.org_id:
            raise Forbidden("the certificate belongs to another organization than the label")
        await self.authority.credential_org(found.org_id)
        if not found.allow_subject_change:
            await self._check_same_identity(csr, record, found)
        caller = _Caller(requester=f"certificate:{_fingerprint(presented)}",
                         certificate=record)
        if not found.supersede_on_reenroll or found.require_approval or \
                _same_key(csr, presented):
            return await self._enroll(found, csr_der, csr, caller, credentials)
        # Re-key on a label that supersedes: the renewed certificate is revoked
        # (superseded) by the transaction that records the new one, so there is never a
        # moment with both or neither; two re-keys of one certificate at once yield one.
        self._check_binding(found, _csr_attributes(csr_der), credentials)
        revocation, revoke_event = self.authority.revocation_of(
            record, "superseded", caller.principal(found.org_id))
        store = self.authority.store
        superseded: list[CertificateRecord] = []

        async def record_with(cert: CertificateRecord, audit: AuditEvent) -> None:
            revoked = await store.add_certificate_superseding(cert, audit, revocation,
                                                              revoke_event)
            if revoked is None:
                raise Unauthorized("the client certificate is revoked")
            superseded.append(revoked)

        org = await self.authority.organization_by_id(found.org_id)
        issued = await self.authority.issue(
            IssuanceRequest(csr=csr, profile=found.profile, org=org.slug),
            caller.principal(found.org_id), record_with=record_with)
        for revoked in superseded:
            await self.authority.announce_revoked(revoked)
        return EnrollmentResult(certificate=issued.certificate, chain=issued.chain)

    async def server_keygen(self, label: str, csr_der: bytes, credentials: EstCredentials
                            ) -> EnrollmentResult:
        """/serverkeygen (RFC 7030 4.4): a software key of the label's key type (never a
        CA key), never stored; the certificate for the CSR's subject with that key; the
        key as PKCS#8, or encrypted to the client (CMS EnvelopedData) when asked."""
        found = await self.resolve_label(label)
        csr = parse_csr(csr_der)
        caller = await self._authenticate(found, credentials)
        if found.require_approval:
            raise Forbidden("server key generation is not offered on a label that requires "
                            "approval: the key would have to be kept until then, and keys "
                            "made here are never stored")
        attributes = _csr_attributes(csr_der)
        self._check_binding(found, attributes, credentials)
        self._check_secret(caller, found, csr)
        recipient = self._key_recipient(attributes, credentials)
        spec = KeySpec.parse(found.key_type)
        if recipient is not None and spec.hash_algorithm is None:
            raise BadRequest(f"an encrypted server-generated key is signed with itself "
                             f"(RFC 7030 4.4.2), which CMS here cannot do with {spec} keys: "
                             "ask without encryption, or on a label with EC or RSA keys")
        key = await asyncio.to_thread(generate_private_key, spec)
        request = await asyncio.to_thread(_request_for_key, csr, key)
        issued = await self._issue(found, request, caller)
        pkcs8 = key.private_bytes(serialization.Encoding.DER,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
        if recipient is None:
            return EnrollmentResult(certificate=issued.certificate, chain=issued.chain,
                                    private_key_pkcs8=pkcs8)
        encrypted = await _key_package(key, spec, pkcs8, issued, recipient)
        return EnrollmentResult(certificate=issued.certificate, chain=issued.chain,
                                encrypted_key=encrypted)

    # --- operator operations (the CLI calls these) -------------------------------------

    async def set_label(self, label: EstLabel, principal: Principal) -> None:
        """Create or replace a label (``vcc-pki est label set``); audited."""
        if label.label and (not _LABEL.match(label.label) or label.label in OPERATIONS):
            raise BadRequest(
                "a label is 1-63 letters, digits, '.', '_' or '-' (starting with a letter or "
                f"digit) and not an operation name ({', '.join(sorted(OPERATIONS))})")
        if not principal.administers(label.org_id):
            raise Forbidden("only an administrator of the organization sets EST labels")
        org = await self.authority.organization_by_id(label.org_id)
        profile = await self.authority.resolve_profile(label.profile, label.org_id)
        if profile.internal_only:
            raise BadRequest(f"profile {profile.name} is issued by the CA itself only")
        try:
            spec = KeySpec.parse(label.key_type)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if not profile.allows_key(spec):
            raise BadRequest(f"profile {profile.name} does not allow {spec} keys "
                             f"(allowed: {', '.join(profile.allowed_keys)})")
        if not label.accept:
            raise BadRequest("a label accepts at least one authentication method")
        if label.require_both and label.accept != frozenset(AuthMethod):
            raise BadRequest("require_both needs both methods accepted (basic,certificate)")
        stored = replace(label, key_type=str(spec), created_at=self.clock())
        await self.store.set_est_label(stored, AuditEvent(
            event_type="est.label_set", category="est", action="set_label",
            actor_type=principal.actor_type, actor_id=principal.actor_id, org_id=org.org_id,
            resource_type="est_label", resource_id=label.label,
            data={"profile": label.profile, "org": org.slug, **stored.policy()}))

    async def list_labels(self) -> list[EstLabel]:
        return await self.store.list_est_labels()

    async def create_secret(self, org: str, label: str, subject: str | None,
                            lifetime: dt.timedelta | None, principal: Principal
                            ) -> CreatedSecret:
        """``vcc-pki est secret create``: a user and a one-time password; audited.
        ``org`` is the organization's slug; ``label`` "" makes a secret for any label of
        the organization; ``subject`` (RFC 4514) pins the CSR's subject."""
        organization = await self.authority.organization(org)
        if not principal.administers(organization.org_id):
            raise Forbidden("only an administrator of the organization creates EST secrets")
        if label:
            found = await self.resolve_label(label)
            if found.org_id != organization.org_id:
                raise BadRequest(f"label {label!r} belongs to another organization")
        pinned = None
        if subject is not None:
            try:
                pinned = x509.Name.from_rfc4514_string(subject).rfc4514_string()
            except ValueError:
                raise BadRequest(f"not an RFC 4514 subject: {subject[:80]!r}") from None
        lifetime = lifetime if lifetime is not None else self.settings.default_secret_lifetime
        if not dt.timedelta(0) < lifetime <= self.settings.max_secret_lifetime:
            raise BadRequest("a secret's lifetime must be positive and at most "
                             f"{self.settings.max_secret_lifetime.days} days")
        now = self.clock()
        password = secrets.token_urlsafe(32)
        record = EnrollmentSecretRecord(
            secret_id=f"est-{secrets.token_hex(8)}", org_id=organization.org_id, label=label,
            secret_hash=hash_secret(password), expires_at=now + lifetime, subject=pinned,
            created_at=now)
        await self.store.add_enrollment_secret(record, AuditEvent(
            event_type="est.secret_created", category="authentication",
            action="create_secret", actor_type=principal.actor_type,
            actor_id=principal.actor_id, org_id=organization.org_id,
            resource_type="est_secret", resource_id=record.secret_id,
            data={"label": label, "subject": pinned,
                  "expires_at": record.expires_at.isoformat()}))
        return CreatedSecret(record.secret_id, password, record)

    async def pending(self, org: str | None = None) -> list[PendingEnrollment]:
        """Requests waiting for approval (of one organization, by slug)."""
        org_id = None if org is None else (await self.authority.organization(org)).org_id
        return await self.store.list_pending_enrollments(org_id)

    async def decide(self, request_id: str, approve: bool, principal: Principal
                     ) -> PendingEnrollment:
        """``vcc-pki est pending approve|reject``: approving issues the certificate, which
        the client's next identical request receives; audited."""
        found = await self.store.get_pending_enrollment(request_id)
        if found is None or not principal.sees_org(found.org_id):
            raise NotFound(f"no pending EST request {request_id[:64]!r}")
        if not principal.administers(found.org_id):
            raise Forbidden("only an administrator of the organization decides EST requests")
        if found.status != "pending":
            raise Conflict(f"request {request_id} is {found.status} already")
        now = self.clock()
        event = AuditEvent(
            event_type="est.request_approved" if approve else "est.request_rejected",
            category="est", action="approve" if approve else "reject",
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            org_id=found.org_id, resource_type="est_request", resource_id=request_id,
            data={"label": found.label, "requester": found.requester})
        if not approve:
            rejected = await self.store.reject_pending_enrollment(request_id, now, event)
            if rejected is None:
                raise Conflict(f"request {request_id} was decided meanwhile")
            return rejected
        label = await self.resolve_label(found.label)
        store = self.store

        async def record_with(cert: CertificateRecord, audit: AuditEvent) -> None:
            if not await store.add_certificate_for_pending(cert, audit, request_id, now,
                                                           event):
                raise Conflict(f"request {request_id} was decided meanwhile")

        # The label's profile as it is now (an operator decides under today's policy), for
        # the organization the request was made in.
        issued = await self.authority.issue(
            IssuanceRequest(csr=parse_csr(found.csr_der), profile=label.profile,
                            org=(await self.authority.organization_by_id(found.org_id)).slug),
            Principal.enrollee("est", found.requester, found.org_id), record_with=record_with)
        return replace(found, status="issued", cert_id=issued.record.cert_id, decided_at=now)

    # --- the rules --------------------------------------------------------------------

    async def _enroll(self, label: EstLabel, csr_der: bytes,
                      csr: x509.CertificateSigningRequest, caller: _Caller,
                      credentials: EstCredentials) -> EnrollmentResult:
        fingerprint = hashlib.sha256(csr_der).hexdigest()
        if label.require_approval:
            # A retry of a queued request: the credential was checked (a secret's hash;
            # it was spent when the request was queued) and the CSR is the same, so the
            # channel binding was checked then (a new TLS session has a new tls-unique).
            existing = await self.store.find_pending_enrollment(fingerprint, caller.requester)
            if existing is not None:
                return await self._pending_result(existing)
        self._check_binding(label, _csr_attributes(csr_der), credentials)
        self._check_secret(caller, label, csr)
        if label.require_approval:
            return await self._queue(label, csr_der, fingerprint, caller)
        issued = await self._issue(label, csr, caller)
        return EnrollmentResult(certificate=issued.certificate, chain=issued.chain)

    async def _queue(self, label: EstLabel, csr_der: bytes, fingerprint: str,
                     caller: _Caller) -> EnrollmentResult:
        now = self.clock()
        pending = PendingEnrollment(
            request_id=secrets.token_hex(8), label=label.label, org_id=label.org_id,
            csr_der=csr_der, requester=caller.requester, status="pending", created_at=now,
            csr_fingerprint=fingerprint)
        event = self._event(caller, label, "est.request_pending", "queue", "est_request",
                            pending.request_id, {"label": label.label})
        consume = None
        if caller.secret is not None:
            consume = (caller.secret.secret_id, now, self._secret_event(caller, label))
        try:
            queued = await self.store.add_pending_enrollment(pending, event, consume)
        except StoreConflict:  # the same request arrived twice at once: one row, its state
            existing = await self.store.find_pending_enrollment(fingerprint, caller.requester)
            if existing is None:
                raise
            return await self._pending_result(existing)
        if not queued:
            raise Unauthorized("the enrollment secret is used or expired")
        return EnrollmentResult(retry_after=self.settings.approval_retry_after,
                                extra={"request_id": pending.request_id})

    async def _pending_result(self, pending: PendingEnrollment) -> EnrollmentResult:
        if pending.status == "rejected":
            raise Forbidden("an operator rejected this enrollment request")
        if pending.status != "issued" or pending.cert_id is None:
            return EnrollmentResult(retry_after=self.settings.approval_retry_after,
                                    extra={"request_id": pending.request_id})
        record = await self.authority.store.get_certificate_by_id(pending.cert_id)
        if record is None:  # the store lost a row it committed: not the client's fault
            raise Unavailable("the issued certificate cannot be read")
        ca = await self.authority.ca_by_id(record.issuer_ca_id)
        return EnrollmentResult(
            certificate=x509.load_der_x509_certificate(record.certificate_der),
            chain=ca.chain, extra={"request_id": pending.request_id})

    async def _issue(self, label: EstLabel, csr: x509.CertificateSigningRequest,
                     caller: _Caller) -> IssuedCertificate:
        org = await self.authority.organization_by_id(label.org_id)
        request = IssuanceRequest(csr=csr, profile=label.profile, org=org.slug)
        secret = caller.secret
        if secret is None:
            return await self.authority.issue(request, caller.principal(label.org_id))
        store = self.store
        now = self.clock()
        secret_event = self._secret_event(caller, label)

        async def record_with(cert: CertificateRecord, audit: AuditEvent) -> None:
            if not await store.add_certificate_consuming_secret(
                    cert, audit, secret.secret_id, now, secret_event):
                raise Unauthorized("the enrollment secret is used or expired")

        return await self.authority.issue(request, caller.principal(label.org_id),
                                          record_with=record_with)

    async def _authenticate(self, label: EstLabel, credentials: EstCredentials) -> _Caller:
        """The caller per the label's policy: Unauthorized without an accepted credential
        (or without both when both are required), Forbidden for another organization's.
        A secret is checked here by its hash only: whether it is still usable is decided
        by ``_check_secret`` (a queued request's retry comes with its spent secret)."""
        # The label's organization as stored now (a secret or certificate must be of
        # that organization): a disabled one's credentials stop at once, in every process.
        await self.authority.credential_org(label.org_id)
        has_basic = credentials.basic_user is not None
        has_certificate = credentials.client_certificate is not None
        if not has_basic and not has_certificate:
            raise Unauthorized("authentication required: HTTP Basic with an enrollment "
                               "secret, or a TLS client certificate")
        use_basic = has_basic and AuthMethod.BASIC in label.accept
        use_certificate = has_certificate and AuthMethod.CERTIFICATE in label.accept
        if label.require_both and not (use_basic and use_certificate):
            raise Unauthorized("this label requires both an enrollment secret (HTTP Basic) "
                               "and a TLS client certificate")
        if not use_basic and not use_certificate:
            accepted = " or ".join(sorted(m.value for m in label.accept))
            raise Unauthorized(f"this label accepts only {accepted} authentication")
        secret = None
        record = None
        requester = ""
        if use_certificate:
            assert credentials.client_certificate is not None
            record = await self._check_client_certificate(credentials)
            if record is not None and record.org_id != label.org_id:
                raise Forbidden("the client certificate belongs to another organization")
            requester = f"certificate:{_fingerprint(credentials.client_certificate)}"
        if use_basic:
            secret = await self._check_password(credentials.basic_user or "",
                                                credentials.basic_password or "")
            if secret.org_id != label.org_id or secret.label not in ("", label.label):
                raise Forbidden("the enrollment secret is for another organization or label")
            requester = f"secret:{secret.secret_id}"
        return _Caller(requester=requester, secret=secret, certificate=record)

    async def _check_password(self, user: str, password: str) -> EnrollmentSecretRecord:
        secret = await self.store.get_enrollment_secret(user) if user else None
        offered = hash_secret(password)
        if secret is None or not hmac.compare_digest(secret.secret_hash, offered):
            raise Unauthorized("unknown enrollment secret")
        return secret

    def _check_secret(self, caller: _Caller, label: EstLabel,
                      csr: x509.CertificateSigningRequest) -> None:
        """The secret is unused, unexpired and its subject pin (if any) is the CSR's."""
        secret = caller.secret
        if secret is None:
            return
        if secret.used_at is not None:
            raise Unauthorized("the enrollment secret was used already")
        if secret.expires_at <= self.clock():
            raise Unauthorized("the enrollment secret has expired")
        if secret.subject is not None and (
                x509.Name.from_rfc4514_string(secret.subject) != csr.subject):
            raise BadRequest(f"this enrollment secret is for the subject {secret.subject}, "
                             f"the CSR asks for {csr.subject.rfc4514_string()!r}")

    async def _check_client_certificate(self, credentials: EstCredentials
                                        ) -> CertificateRecord | None:
        """A certificate issued here (its record; live) or one chaining to the trust store
        (None); Unauthorized otherwise."""
        certificate = credentials.client_certificate
        assert certificate is not None
        record = await self._issued_here(certificate)
        if record is not None:
            self._check_live(record)
            return record
        if self._issuers.get(certificate.issuer.rfc4514_string()):
            raise Unauthorized("the client certificate names an issuing CA of this PKI as "
                               "its issuer but is not a certificate it issued")
        self._check_trusted(certificate, credentials.client_chain)
        return None

    async def _issued_here(self, certificate: x509.Certificate) -> CertificateRecord | None:
        """The record of a certificate this PKI issued: found by issuer and serial, and
        the stored DER is the presented one (a forged certificate naming our issuer and a
        real serial is not ours)."""
        issuer = certificate.issuer.rfc4514_string()
        der = certificate.public_bytes(serialization.Encoding.DER)
        for ca in await self._issuing_cas(issuer):
            record = await self.authority.store.get_certificate(
                ca.ca_id, serial_hex(certificate.serial_number))
            if record is not None and record.certificate_der == der:
                return record
        return None

    async def _issuing_cas(self, subject_dn: str) -> tuple[CARecord, ...]:
        """This PKI's issuing CAs named ``subject_dn``, from a map rebuilt when the
        Authority loads another CA; a name not in it is looked up in the store (a CA
        created since, by another process) at most once per ``UNKNOWN_ISSUER_TTL``, so a
        trust-store certificate's enrollment does not list the CAs each time."""
        loaded = self.authority.loaded_cas()
        if len(loaded) != self._issuers_loaded:
            self._issuers = _by_subject(ca.record for ca in loaded)
            self._issuers_loaded = len(loaded)
            self._unknown_issuers.clear()
        found = self._issuers.get(subject_dn)
        if found is not None:
            return found
        now = time.monotonic()
        checked = self._unknown_issuers.get(subject_dn)
        if checked is not None and now - checked < UNKNOWN_ISSUER_TTL:
            return ()
        listed = _by_subject(await self.authority.store.list_cas())
        self._issuers = {**self._issuers, **listed}
        if len(self._unknown_issuers) >= _UNKNOWN_ISSUERS_KEPT:
            self._unknown_issuers.clear()  # bounded: any client picks the issuer name
        self._unknown_issuers[subject_dn] = now
        return self._issuers.get(subject_dn, ())

    def _check_live(self, record: CertificateRecord) -> None:
        if record.status == "revoked":
            raise Unauthorized("the client certificate is revoked")
        now = self.clock()
        if not record.not_before - BACKDATE <= now < record.not_after:
            raise Unauthorized("the client certificate is expired or not yet valid")

    def _check_trusted(self, certificate: x509.Certificate,
                       presented: tuple[x509.Certificate, ...]) -> None:
        """Path to a trust-store certificate (manufacturer or bootstrap CAs) by
        cryptography's RFC 5280 path validation: each signature verifies, each certificate
        is within its validity at the core's clock, each issuer is a CA (basicConstraints,
        path length, name constraints). Not the Web PKI's extension profile (device
        certificates often lack an authorityKeyIdentifier, manufacturer CAs a keyUsage);
        instead a keyUsage or extendedKeyUsage present must allow TLS client use."""
        anchors = self.settings.trust_store
        if not anchors:
            raise Unauthorized("the client certificate was not issued by this PKI, and no "
                               "other CA is trusted for EST (VCC_PKI_EST_TRUST_STORE)")
        now = self.clock()
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise Unauthorized("the client certificate is expired or not yet valid")
        try:
            self._verifier(now).verify(certificate, list(presented))
        except verification.VerificationError as exc:
            raise Unauthorized(f"the client certificate does not chain to a trusted CA "
                               f"({_verification_reason(exc)})") from None
        _check_client_use(certificate)

    def _verifier(self, now: dt.datetime) -> verification.ClientVerifier:
        store = self._trust_store
        if store is None:
            store = self._trust_store = verification.Store(list(self.settings.trust_store))
        ca_policy = verification.ExtensionPolicy.permit_all().require_present(
            x509.BasicConstraints, verification.Criticality.AGNOSTIC, None)
        return (verification.PolicyBuilder().store(store).time(now).max_chain_depth(8)
                .extension_policies(ca_policy=ca_policy,
                                    ee_policy=verification.ExtensionPolicy.permit_all())
                .build_client_verifier())

    def _check_binding(self, label: EstLabel, attributes: dict[str, list[bytes]],
                       credentials: EstCredentials) -> None:
        """RFC 7030 3.5: the challengePassword holds base64 of this session's channel
        binding: tls-unique on TLS 1.2, tls-exporter (RFC 9266) on TLS 1.3. Required by
        the label; checked whenever the CSR carries one and the session has a value."""
        values = attributes.get(CHALLENGE_PASSWORD, [])
        password = _text(values[0]) if values else None
        if values and password is None:
            raise BadCSR("the CSR's challengePassword is not text")
        binding = credentials.channel_binding
        if label.require_channel_binding:
            if binding is None:
                raise BadRequest(
                    "this label requires channel binding (RFC 7030 3.5), and this TLS "
                    "session has no binding value: connect with TLS 1.2 (tls-unique) or "
                    "TLS 1.3 (tls-exporter, RFC 9266) directly to the EST listener")
            if password is None:
                raise BadRequest("this label requires channel binding: the CSR's "
                                 "challengePassword must hold base64 of the TLS session's "
                                 f"{_binding_name(credentials)} value (RFC 7030 3.5)")
        if password is not None and binding is not None:
            expected = base64.b64encode(binding).decode()
            if not hmac.compare_digest(password.strip().encode(), expected.encode()):
                raise BadRequest("the CSR's challengePassword is not this TLS session's "
                                 f"{_binding_name(credentials)} value (RFC 7030 3.5)")

    async def _check_same_identity(self, csr: x509.CertificateSigningRequest,
                             record: CertificateRecord, label: EstLabel) -> None:
        """RFC 7030 4.2.2: subject and subjectAltName as in the certificate being renewed.
        The CSR's subject may repeat the certificate's or name only its common name (the
        Authority takes only the CN), never anything the certificate does not have."""
        current = x509.load_der_x509_certificate(record.certificate_der)
        asked = {(a.oid, a.value) for a in csr.subject}
        held = {(a.oid, a.value) for a in current.subject}
        cn = NameOID.COMMON_NAME
        if not asked <= held or [a.value for a in csr.subject.get_attributes_for_oid(cn)] \
                != [a.value for a in current.subject.get_attributes_for_oid(cn)]:
            raise BadRequest(
                f"the CSR's subject {csr.subject.rfc4514_string()!r} differs from the "
                f"certificate being renewed ({current.subject.rfc4514_string()!r})")
        sans = x509build.sans_from_csr(csr)
        if not sans and (await self.authority.resolve_profile(label.profile, label.org_id)
                         ).require_san:
            named = x509build.common_name_identifier(record.common_name)
            if named is not None:  # the Authority carries a CN-only name into the SAN
                sans = x509build.SubjectAltNames(dns=(named[1],)) if named[0] == "dns" \
                    else x509build.SubjectAltNames(ip=(named[1],))
        if _normalized_sans(sans.as_dict()) != _normalized_sans(record.san):
            raise BadRequest("the CSR's subjectAltName differs from the certificate being "
                             "renewed")

    def _key_recipient(self, attributes: dict[str, list[bytes]],
                       credentials: EstCredentials) -> _Recipient | None:
        """RFC 7030 4.4.1.2: asymmetric key encryption goes to the key the
        AsymmetricDecryptKeyIdentifier names, which must be the TLS client certificate's
        (the one certificate of the client this server knows; an RSA key: CMS key
        transport). Symmetric (4.4.1.1) needs a shared key this server does not hold."""
        if DECRYPT_KEY_ID in attributes:
            raise BadRequest("symmetric encryption of the server-generated key "
                             "(DecryptKeyIdentifier, RFC 7030 4.4.1.1) is not supported: "
                             "ask for asymmetric encryption (4.4.1.2) or none")
        if ASYMM_DECRYPT_KEY_ID not in attributes:
            return None
        recipient = credentials.client_certificate
        if recipient is None:
            raise BadRequest("asymmetric encryption of the server-generated key (RFC 7030 "
                             "4.4.1.2) needs the client's certificate (TLS client "
                             "authentication)")
        if not isinstance(recipient.public_key(), rsa.RSAPublicKey):
            raise BadRequest("the server-generated key is encrypted to the client "
                             "certificate's key, which must be RSA (CMS key transport)")
        wanted = _octet_string(attributes[ASYMM_DECRYPT_KEY_ID][0])
        try:
            stated: bytes | None = recipient.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            stated = None
        computed = x509.SubjectKeyIdentifier.from_public_key(recipient.public_key()).digest
        if wanted not in (stated, computed):
            raise BadRequest("the AsymmetricDecryptKeyIdentifier (RFC 7030 4.4.1.2) names "
                             "another key than the TLS client certificate's: the "
                             "server-generated key is encrypted only to that certificate")
        # RFC 7030 4.4.2: the rid is the identifier asked for when the certificate states
        # it, else the certificate's issuerAndSerialNumber
        return _Recipient(recipient, by_key_identifier=wanted == stated)

    def _event(self, caller: _Caller, label: EstLabel, event_type: str, action: str,
               resource_type: str, resource_id: str, data: dict[str, Any]) -> AuditEvent:
        principal = caller.principal(label.org_id)
        return AuditEvent(
            event_type=event_type, category="est", action=action,
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            org_id=label.org_id, resource_type=resource_type, resource_id=resource_id,
            data=data)

    def _secret_event(self, caller: _Caller, label: EstLabel) -> AuditEvent:
        assert caller.secret is not None
        return self._event(caller, label, "est.secret_used", "use_secret", "est_secret",
                           caller.secret.secret_id, {"label": label.label})


@dataclass(frozen=True, slots=True)
class _Recipient:
    certificate: x509.Certificate
    by_key_identifier: bool


def _octet_string(value: bytes) -> bytes:
    """An attribute value that must be an OCTET STRING (AsymmetricDecryptKeyIdentifier)."""
    try:
        return bytes(core.OctetString.load(value).native)
    except (ValueError, TypeError):
        raise BadCSR("the AsymmetricDecryptKeyIdentifier is not an OCTET STRING") from None


async def _key_package(key: CertificateIssuerPrivateKeyTypes, spec: KeySpec, pkcs8: bytes,
                       issued: IssuedCertificate, recipient: _Recipient) -> bytes:
    """RFC 7030 4.4.2 with RFC 5958 4: the AsymmetricKeyPackage (a SEQUENCE OF one
    OneAsymmetricKey, PKCS#8 v1) in a SignedData, that in an EnvelopedData to the client.

    The SignedData is signed with the generated key itself under the certificate just
    issued for it (carried with its chain): no CA key signs anything but certificates,
    CRLs and OCSP responses here, and the gateway has no EST signing key of its own. The
    signature shows the package and the certificate belong together, and the certificate
    chains to the CA of /cacerts; the TLS session authenticated the server."""
    package = der.sequence(pkcs8)
    signer = SoftwareSigner(key, spec, "est-serverkeygen")
    signed_info = await SignedDataSigner(
        signer, issued.certificate, certificates=[issued.certificate, *issued.chain]
    ).sign(package, A_KEY_PACKAGE)
    # The EnvelopedData's content is the SignedData value, not its ContentInfo (RFC 5652
    # 6.1: encryptedContentInfo names the type).
    _, explicit = der.elements(parser.parse(signed_info)[4])
    signed_data = parser.parse(explicit)[4]
    return encrypt_enveloped(signed_data, [recipient.certificate], content_type="signed_data",
                             by_key_identifier=recipient.by_key_identifier)


def _same_key(csr: x509.CertificateSigningRequest, certificate: x509.Certificate) -> bool:
    """Whether the request is for the certificate's own key (a renewal, not a re-key)."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(csr.public_key().public_bytes(serialization.Encoding.DER, spki)
                == certificate.public_key().public_bytes(serialization.Encoding.DER, spki))


def _binding_name(credentials: EstCredentials) -> str:
    return "tls-unique" if credentials.tls_unique is not None else "tls-exporter (RFC 9266)"


def _fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def _by_subject(cas: Iterable[CARecord]) -> dict[str, tuple[CARecord, ...]]:
    """Issuing CAs by subject DN (RFC 4514)."""
    found: dict[str, tuple[CARecord, ...]] = {}
    for ca in cas:
        if ca.ca_type == "issuing":
            found[ca.subject_dn] = (*found.get(ca.subject_dn, ()), ca)
    return found


def _verification_reason(error: verification.VerificationError) -> str:
    """cryptography's reason without the certificate repr it appends."""
    reason = str(error).split(" (encountered processing", 1)[0]
    reason = reason.removeprefix("validation failed: ")
    if "no interior errors" in reason:  # no certificate at all named the issuer
        return "no trusted CA, and no CA in the chain sent, issued it"
    return reason[:200]


def _check_client_use(certificate: x509.Certificate) -> None:
    """A keyUsage present allows digitalSignature (the TLS CertificateVerify), an
    extendedKeyUsage present allows clientAuth (RFC 5280 4.2.1.3, 4.2.1.12)."""
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            raise Unauthorized("the client certificate's keyUsage does not allow "
                               "digitalSignature")
    except x509.ExtensionNotFound:
        pass
    try:
        purposes = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if not {ExtendedKeyUsageOID.CLIENT_AUTH,
                ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(purposes):
            raise Unauthorized("the client certificate's extendedKeyUsage does not allow "
                               "TLS client authentication")
    except x509.ExtensionNotFound:
        pass


def _request_for_key(csr: x509.CertificateSigningRequest,
                     key: CertificateIssuerPrivateKeyTypes) -> x509.CertificateSigningRequest:
    """The client's request with the server-made key: its subject and subjectAltName (the
    rest of a request the Authority does not read)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(csr.subject)
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        builder = builder.add_extension(san.value, critical=san.critical)
    except x509.ExtensionNotFound:
        pass
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)
