"""RFC 3161 time-stamping authority (TSA), with RFC 5816's ESSCertIDv2: decisions and tokens.

The protocol front-end (``protocols/tsa``) decodes a TimeStampReq into a ``TimeStampQuery``;
``TimeStampAuthority.timestamp`` checks it against the policy (hash algorithms, imprint
length, requested policy, extensions, nonce size, clock state), builds the TSTInfo
(RFC 3161 2.4.2) and, through ``ca_core.cms``, the CMS SignedData around it (RFC 5652 5;
RFC 3161 2.4.2: signed attributes contentType, messageDigest, signingTime and
signingCertificateV2 from RFC 5816, optionally the legacy signingCertificate), signed
through the TSA's ``Signer`` (so a PKCS#11 key never leaves its token), records the token
in the store and only then returns it.

The TSA is a CA-like record (``certificate_authorities.ca_type = 'tsa'``, named
``tsa-<UTC time of creation>``) whose certificate comes from the ``timestamp_authority``
profile, issued by the default organization's issuing CA, so its chain is
TSA -> issuing -> intermediate -> root. ``ensure_tsa`` creates it (``vcc-pki init``) and
renews it before expiry (init and serve start); ``TimeStampAuthority.open`` refuses a
certificate that ``openssl ts -verify`` would reject.

Errors: every rejection is a CAError whose ``kind`` names the PKIFailureInfo bit the
protocol answers with (RFC 3161 2.4.2); the front-end maps kinds in one place.

    CAError
    ├── BadRequest
    │   └── TimeStampRejected          PKIStatus rejection
    │       ├── BadAlg                 badAlg: hash algorithm unknown or not allowed
    │       ├── BadDataFormat          badDataFormat: undecodable, wrong version or length
    │       ├── BadTimeStampRequest    badRequest: e.g. an oversized nonce
    │       ├── UnacceptedPolicy       unacceptedPolicy: policy not in the allow-list
    │       └── UnacceptedExtension    unacceptedExtension: any request extension
    ├── Unavailable                    systemFailure (store, key backend, expired certificate)
    │   └── TimeNotAvailable           timeNotAvailable: the clock is not synchronised
    └── TsaCertificateRejected         the TSA certificate is unusable: refuse to start
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import logging
import os
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from asn1crypto import core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca_core import cms as cms_core
from ca_core import der, x509build
from ca_core.authority import (
    Authority,
    IssuanceRequest,
    LoadedCA,
    parse_serial,
    serial_display,
    serial_hex,
)
from ca_core.errors import BadRequest, CAError, NotFound, Unavailable
from ca_core.keys import KeyAlgorithm, KeySpec
from ca_core.principal import Principal
from ca_core.records import AuditEvent, CARecord, TimeStampRecord
from ca_core.signing import Purpose, SigningKey
from ca_core.storage import CaStore, StoreConflict, StoreError, TimestampStore
from ca_core.tracing import traced

log = logging.getLogger(__name__)

# A private-enterprise-arc placeholder: operators replace it with their organisation's own
# TSA policy OID (RFC 3161 2.4.2 "policy"; ETSI EN 319 421 has 0.4.0.2023.1.1 for its BTSP).
DEFAULT_POLICY_OID = "1.3.6.1.4.1.55555.1.1"
TSA_PROFILE = "timestamp_authority"
TSA_CA_TYPE = "tsa"
# Renew the TSA certificate this long before it expires: tokens are checked against the
# certificate's validity, so a fresh certificate must be in place well before the old ends.
RENEW_BEFORE = dt.timedelta(days=90)
# RFC 3161 sets no limit; 128 octets (1024 bits) is far above any client's 64-160 bits and
# keeps a token from carrying arbitrary client data.
MAX_NONCE_OCTETS = 128
_MAX_SERIAL_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class HashAlgorithm:
    name: str  # hashlib and asn1crypto name
    oid: str
    length: int  # digest octets


HASH_ALGORITHMS: dict[str, HashAlgorithm] = {
    h.name: h
    for h in (
        HashAlgorithm("sha1", "1.3.14.3.2.26", 20),
        HashAlgorithm("sha224", "2.16.840.1.101.3.4.2.4", 28),
        HashAlgorithm("sha256", "2.16.840.1.101.3.4.2.1", 32),
        HashAlgorithm("sha384", "2.16.840.1.101.3.4.2.2", 48),
        HashAlgorithm("sha512", "2.16.840.1.101.3.4.2.3", 64),
        HashAlgorithm("sha3_256", "2.16.840.1.101.3.4.2.8", 32),
        HashAlgorithm("sha3_384", "2.16.840.1.101.3.4.2.9", 48),
        HashAlgorithm("sha3_512", "2.16.840.1.101.3.4.2.10", 64),
    )
}
_HASH_SPELLINGS = {h.name.replace("_", ""): h for h in HASH_ALGORITHMS.values()}
# Never configurable: collisions are practical, so a token over them proves nothing.
_BROKEN_HASHES = {"md2", "md4", "md5"}
_NULL = b"\x05\x00"


# ---------------------------------------------------------------------------- errors


class TimeStampRejected(BadRequest):
    """The request cannot be granted; ``kind`` names the PKIFailureInfo bit."""

    kind = "bad_request"


class BadAlg(TimeStampRejected):
    kind = "bad_alg"


class BadDataFormat(TimeStampRejected):
    kind = "bad_data_format"


class BadTimeStampRequest(TimeStampRejected):
    kind = "bad_request"


class UnacceptedPolicy(TimeStampRejected):
    kind = "unaccepted_policy"


class UnacceptedExtension(TimeStampRejected):
    kind = "unaccepted_extensions"


class TimeNotAvailable(Unavailable):
    kind = "time_not_available"


class TsaCertificateRejected(CAError):
    kind = "tsa_certificate"


# ---------------------------------------------------------------------------- settings


def _check_oid(text: str) -> str:
    """The dotted OID as asn1crypto encodes and reads it back (it refuses 1.40.5 and the
    like); at least two arcs."""
    try:
        dotted: str = core.ObjectIdentifier.load(
            core.ObjectIdentifier(text.strip()).dump()).dotted
    except (ValueError, TypeError):
        dotted = ""
    if dotted.count(".") < 1:
        raise ValueError(f"not an object identifier: {text!r}")
    return dotted


def hash_algorithm(name: str) -> HashAlgorithm:
    """The hash named like ``sha256``, ``SHA-384`` or ``sha3-256``; ValueError otherwise."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key in _BROKEN_HASHES:
        raise ValueError(f"{name} is broken and never accepted for time-stamps")
    try:
        return _HASH_SPELLINGS[key]
    except KeyError:
        raise ValueError(
            f"unknown hash algorithm {name!r}; use some of {', '.join(HASH_ALGORITHMS)}"
        ) from None


@dataclass(frozen=True, slots=True)
class TsaSettings:
    """What the TSA needs from configuration (``VCC_PKI_TSA_*``)."""

    policy_oid: str = DEFAULT_POLICY_OID
    accepted_policies: tuple[str, ...] = ()  # besides policy_oid
    accuracy_ms: int = 1000  # 0: no accuracy field
    hash_algorithms: tuple[str, ...] = ("sha256", "sha384", "sha512")
    include_tsa_name: bool = False
    legacy_ess_cert_id: bool = False  # also the SHA-1 signingCertificate (RFC 2634)
    clock_check: str = ""  # "" | "adjtimex" | "file:/path" (exists = unsynchronised)
    key: KeySpec = field(default_factory=lambda: KeySpec.parse("ec-p256"))

    def __post_init__(self) -> None:
        _check_oid(self.policy_oid)
        for oid in self.accepted_policies:
            _check_oid(oid)
        if not self.hash_algorithms:
            raise ValueError("at least one time-stamp hash algorithm must be allowed")
        for name in self.hash_algorithms:
            hash_algorithm(name)
        if not 0 <= self.accuracy_ms <= 3_600_000:
            raise ValueError("the TSA accuracy must be 0..3600000 ms")
        if self.key.algorithm is KeyAlgorithm.ED25519:
            # openssl ts (PKCS#7 underneath) cannot verify Ed25519 signer infos.
            raise ValueError("the TSA key must be RSA or ECDSA")
        make_clock_check(self.clock_check)

    @property
    def policies(self) -> frozenset[str]:
        return frozenset(_check_oid(p) for p in (self.policy_oid, *self.accepted_policies))

    @property
    def hashes(self) -> dict[str, HashAlgorithm]:
        """Allowed hashes by OID."""
        return {h.oid: h for h in (hash_algorithm(n) for n in self.hash_algorithms)}


# ---------------------------------------------------------------------------- clock check

ClockCheck = Callable[[], bool]  # True when the clock is known to be synchronised

_TIME_ERROR = 5  # adjtimex(2): "clock not synchronized" (STA_UNSYNC or STA_CLOCKERR set)


def _adjtimex_check() -> ClockCheck:
    libc = ctypes.CDLL(None, use_errno=True)
    adjtimex = getattr(libc, "adjtimex", None)
    if adjtimex is None:
        raise ValueError("tsa_clock_check 'adjtimex' needs Linux (adjtimex(2))")

    def synchronised() -> bool:
        # struct timex is 208 bytes on 64-bit Linux; modes = 0 (the zeroed first field)
        # only reads the kernel's state, which needs no privilege. The return value is the
        # clock state, TIME_ERROR while NTP (chrony, systemd-timesyncd, ntpd) has not
        # synchronised the clock.
        buffer = ctypes.create_string_buffer(512)
        state = int(adjtimex(buffer))
        return 0 <= state != _TIME_ERROR

    synchronised()  # fails here, at configuration, where adjtimex cannot be called
    return synchronised


def make_clock_check(spec: str) -> ClockCheck | None:
    """The check named by ``tsa_clock_check``; None when the clock is trusted as it is."""
    spec = spec.strip()
    if spec in ("", "none"):
        return None
    if spec == "adjtimex":
        return _adjtimex_check()
    if spec.startswith("file:") and len(spec) > 5:
        # A flag file that an NTP monitor (or an operator) creates while time is not
        # trustworthy: cheap to test (one stat per stamp) and easy to drive in tests.
        path = spec.removeprefix("file:")
        return lambda: not os.path.exists(path)
    raise ValueError(f"tsa_clock_check must be '', 'adjtimex' or 'file:/path', not {spec!r}")


# ---------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class TimeStampQuery:
    """A decoded TimeStampReq (RFC 3161 2.4.1)."""

    hash_oid: str
    hashed_message: bytes
    version: int = 1
    hash_parameters: bytes | None = None  # DER of the AlgorithmIdentifier parameters
    policy: str | None = None
    nonce: bytes | None = None  # DER of the nonce INTEGER: echoed bit-exact
    cert_req: bool = False
    extensions: tuple[str, ...] = ()  # OIDs of the request's extensions


@dataclass(frozen=True, slots=True)
class IssuedTimeStamp:
    record: TimeStampRecord
    token: bytes  # DER TimeStampToken: ContentInfo(SignedData(TSTInfo))

    @property
    def serial(self) -> str:
        return serial_display(self.record.serial_hex)


@dataclass(frozen=True, slots=True)
class CreatedTsa:
    name: str
    subject: str
    renewed: str | None  # the name of the TSA record it replaces


# ---------------------------------------------------------------------------- certificate


def check_tsa_certificate(
    certificate: x509.Certificate,
    public_key: object,
    now: dt.datetime,
    issuer: x509.Certificate | None = None,
) -> None:
    """Raise TsaCertificateRejected unless ``openssl ts -verify`` would accept the TSA
    certificate (OpenSSL's check_purpose_timestamp_sign, RFC 3161 2.3) for this key now."""
    problems: list[str] = []
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
        problems.append(
            f"not valid now (valid {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)")
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        if list(eku.value) != [ExtendedKeyUsageOID.TIME_STAMPING]:
            problems.append("extended key usage must be timeStamping only")
        if not eku.critical:
            problems.append("the extended key usage extension must be critical")
    except x509.ExtensionNotFound:
        problems.append("no extended key usage (timeStamping, critical) extension")
    try:
        ku = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        others = (ku.key_encipherment or ku.data_encipherment or ku.key_agreement
                  or ku.key_cert_sign or ku.crl_sign)
        if others or not (ku.digital_signature or ku.content_commitment):
            problems.append("key usage must be digitalSignature and/or nonRepudiation only")
    except x509.ExtensionNotFound:
        pass  # optional for OpenSSL; the profile always sets it
    try:
        if certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            problems.append("a CA certificate cannot be a TSA certificate")
    except x509.ExtensionNotFound:
        pass
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or \
            certificate.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            public_key.public_bytes(serialization.Encoding.DER, spki):
        problems.append("the certificate does not match the TSA key (RSA or ECDSA)")
    if issuer is not None:
        try:
            certificate.verify_directly_issued_by(issuer)
        except Exception:  # InvalidSignature, or ValueError/TypeError for mismatched names/keys
            problems.append(f"not issued by {issuer.subject.rfc4514_string()}")
    if problems:
        raise TsaCertificateRejected(
            f"TSA certificate {certificate.subject.rfc4514_string()} serial "
            f"{format(certificate.serial_number, 'X')}: " + "; ".join(problems)
        )


def current_tsa(records: Iterable[CARecord], now: dt.datetime) -> CARecord | None:
    """The TSA record in use: active, valid now, the most recently issued."""
    valid = [r for r in records if r.ca_type == TSA_CA_TYPE and r.status == "active"
             and r.not_before <= now < r.not_after]
    return max(valid, key=lambda r: (r.not_before, r.not_after), default=None)


async def ensure_tsa(authority: Authority, settings: TsaSettings | None = None
                     ) -> CreatedTsa | None:
    """Create the TSA (key, certificate, record) when there is none valid, or renew it within
    RENEW_BEFORE of expiry; None when the current one stays. Needs the default organization's
    issuing CA (the active one: after a rollover the retired CA certifies no new TSA)."""
    settings = settings or TsaSettings()
    now = authority.clock()
    issuer = await authority.issuing_ca(
        await authority.organization(authority.settings.default_org))
    current = current_tsa(await authority.store.list_cas(), now)
    if current is not None:
        if current.not_after - now > RENEW_BEFORE:
            return None
        if issuer.certificate.not_valid_after_utc <= current.not_after + dt.timedelta(days=1):
            # The issuer ends first: a new certificate could not outlive this one.
            log.warning("TSA certificate %s expires %s and its issuer as well; renew the "
                        "issuing CA", current.name, current.not_after)
            return None
    return await _create_tsa(authority, settings, issuer, now, current)


async def _create_tsa(authority: Authority, settings: TsaSettings, issuer: LoadedCA,
                      now: dt.datetime, replaces: CARecord | None) -> CreatedTsa:
    name = f"tsa-{now:%Y%m%d%H%M%S}"
    principal = Principal.system("vcc-pki tsa")
    signer = await asyncio.to_thread(
        authority.keys.generate, settings.key, f"vcc-{name}-{secrets.token_hex(4)}")
    subject = x509build.name(f"{authority.settings.organization_name} Time-Stamping Authority")
    csr_builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    # The CSR proves possession like any other request; for a token key it is signed in the
    # token too (builder_key() calls into it), so Authority.issue checks and records the
    # certificate exactly as it does every certificate.
    csr = await signer.run(lambda: csr_builder.sign(
        signer.builder_key(), signer.key_spec.hash_algorithm))  # type: ignore[arg-type]
    org = await authority.organization_by_id(issuer.record.org_id or "")
    issued = await authority.issue(
        IssuanceRequest(csr=csr.public_bytes(serialization.Encoding.PEM), profile=TSA_PROFILE,
                        org=org.slug, ca=issuer.record.name),
        principal,
    )
    certificate = issued.certificate
    check_tsa_certificate(certificate, signer.public_key, now, issuer.certificate)
    spec = signer.key_spec
    record = CARecord(
        ca_id=str(uuid.uuid4()), name=name, ca_type=TSA_CA_TYPE, org_id=issuer.record.org_id,
        parent_ca_id=issuer.record.ca_id, subject_dn=certificate.subject.rfc4514_string(),
        serial_hex=serial_hex(certificate.serial_number),
        certificate_der=certificate.public_bytes(serialization.Encoding.DER),
        key_ref=signer.key_ref, key_backend=authority.keys.name,
        key_algorithm=spec.algorithm.value, key_size=spec.size,
        not_before=certificate.not_valid_before_utc, not_after=certificate.not_valid_after_utc,
        created_at=now,
    )
    event = AuditEvent(
        event_type="tsa.renewed" if replaces else "tsa.created", category="ca",
        action="create_tsa", actor_type=principal.actor_type, actor_id=principal.actor_id,
        org_id=record.org_id, resource_type="certificate_authority", resource_id=record.ca_id,
        data={"name": name, "type": TSA_CA_TYPE, "subject": record.subject_dn,
              "serial": record.serial_hex, "key": str(spec),
              "key_backend": authority.keys.name, "not_after": record.not_after.isoformat(),
              "replaces": None if replaces is None else replaces.name},
    )
    await authority.store.add_ca(record, event)
    return CreatedTsa(name, record.subject_dn, None if replaces is None else replaces.name)


# ---------------------------------------------------------------------------- tokens


class GenTimeEncoder:
    """genTime as asn1crypto encodes it (``core.GeneralizedTime(value).dump()``), from the
    text its GeneralizedTime.set writes for an aware datetime: UTC, YYYYMMDDHHMMSS, the
    fraction without trailing zeros, Z. The seconds part is formatted once per second
    (asn1crypto's strftime and time-zone conversion per value were ~7% of a stamp); the
    DER is still asn1crypto's."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[dt.datetime, str] = (dt.datetime.min, "")

    def __call__(self, value: dt.datetime) -> bytes:
        if value.tzinfo is not dt.UTC:
            if value.tzinfo is None:
                raise ValueError("genTime must be timezone aware")
            value = value.astimezone(dt.UTC)
        second = value.replace(microsecond=0)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, second.strftime("%Y%m%d%H%M%S"))
        fraction = f".{value.microsecond:06d}".rstrip("0") if value.microsecond else ""
        encoded: bytes = core.GeneralizedTime(cached[1] + fraction + "Z").dump()
        return encoded


class _TokenSigner:
    """One TSA key and certificate. The CMS layer (ca_core.cms) encodes the SignedData parts
    that never change once (certificates, signer id, algorithms, the ESS attributes); the
    TSTInfo parts that never change (policy OIDs, accuracy, the TSA name) are encoded once
    here, and each token adds only its own values."""

    def __init__(self, loaded: LoadedCA, settings: TsaSettings) -> None:
        self.loaded = loaded
        self.signer = loaded.signer
        self.ca_id = loaded.record.ca_id
        self.name = loaded.record.name
        self.not_before = loaded.certificate.not_valid_before_utc
        self.not_after = loaded.certificate.not_valid_after_utc
        spec = self.signer.key_spec
        if spec.hash_algorithm is None or spec.algorithm is KeyAlgorithm.ED25519:
            raise TsaCertificateRejected("the TSA key must be RSA or ECDSA")
        # RFC 5816: ESSCertIDv2 (SHA-256, the DEFAULT); ESSCertID (RFC 2634 5.4.1, SHA-1 by
        # definition) only for old verifiers.
        ess = [cms_core.signing_certificate_v2(loaded.certificate)]
        if settings.legacy_ess_cert_id:
            ess.append(cms_core.signing_certificate(loaded.certificate))
        # Signer id issuerAndSerialNumber (SignerInfo v1): OpenSSL reads tokens as PKCS#7,
        # which knows no subjectKeyIdentifier signer ids. certReq: the TSA certificate and
        # its CAs up to, not including, the root, so that a verifier needs only the root as
        # trust anchor (RFC 3161 2.4.1).
        self.signed_data = cms_core.SignedDataSigner(
            self.signer, loaded.certificate, certificates=loaded.chain, signed_attrs=ess,
            signer_id="issuer_and_serial_number")
        accuracy: dict[str, int] = {}
        seconds, millis = divmod(settings.accuracy_ms, 1000)
        if seconds:
            accuracy["seconds"] = seconds
        if millis:
            accuracy["millis"] = millis
        self.accuracy = tsp.Accuracy(accuracy).dump() if accuracy else None
        subject = asn1_x509.Certificate.load(loaded.record.certificate_der).subject
        self.tsa_name = der.explicit(0, asn1_x509.GeneralName(
            {"directory_name": subject}).dump()) if settings.include_tsa_name else None
        self.policies = {oid: core.ObjectIdentifier(oid).dump() for oid in settings.policies}
        self.imprint_algorithms: dict[tuple[str, bytes | None], bytes] = {}
        self.v1 = tsp.Version(1).dump()
        self._gen_time = GenTimeEncoder()
        self.signing_key = SigningKey(self.name, self.signer, loaded.certificate)

    def _imprint_algorithm(self, oid: str, parameters: bytes | None) -> bytes:
        # Only allowed hashes with absent or NULL parameters get here: a handful of keys.
        key = (oid, parameters)
        algorithm = self.imprint_algorithms.get(key)
        if algorithm is None:
            # Encoded by hand: asn1crypto's DigestAlgorithm adds NULL parameters to a known
            # hash whose request left them absent, and RFC 3161 2.4.2 wants the request's
            # own value.
            algorithm = self.imprint_algorithms[key] = der.sequence(
                core.ObjectIdentifier(oid).dump(), parameters)
        return algorithm

    def tst_info(self, query: TimeStampQuery, nonce: core.Integer | None, policy: str,
                 serial: int, gen_time: dt.datetime) -> bytes:
        """The DER TSTInfo (RFC 3161 2.4.2), its fields in the declaration's order."""
        imprint = der.sequence(
            # RFC 3161 2.4.2: the same value as in the request.
            self._imprint_algorithm(query.hash_oid, query.hash_parameters),
            der.octet_string(query.hashed_message),
        )
        return der.sequence(
            self.v1,
            self.policies[policy],
            imprint,
            core.Integer(serial).dump(),
            self._gen_time(gen_time),
            self.accuracy,
            None,  # ordering: FALSE is the DEFAULT, so it is absent (DER)
            # The request's own encoding: a client compares the nonce it sent bit for bit.
            None if nonce is None else nonce.dump(),
            self.tsa_name,
        )

    async def sign(self, tst_info: bytes, signing_time: dt.datetime, cert_req: bool) -> bytes:
        """The DER TimeStampToken: ContentInfo(SignedData) around ``tst_info`` (RFC 3161
        2.4.2; signed attributes contentType, messageDigest, signingTime and the ESS
        signing certificate), signed through the TSA's Signer."""
        return await self.signing_key.signing(Purpose.TIMESTAMP, lambda: self.signed_data.sign(
            tst_info, "tst_info", signing_time=signing_time, include_certificates=cert_req))


class TsaStore(TimestampStore, CaStore, Protocol):
    """What the TSA reads and writes: its issued tokens, and the TSA certificates."""


class TimeStampAuthority:
    """Grants time-stamps: checks a query, signs its token through the TSA key, records it."""

    def __init__(
        self,
        authority: Authority,
        settings: TsaSettings | None = None,
        clock_check: ClockCheck | None = None,
    ) -> None:
        self.authority = authority
        self.store: TsaStore = authority.store
        self.settings = settings or TsaSettings()
        self.clock = authority.clock
        self._clock_check = clock_check if clock_check is not None else make_clock_check(
            self.settings.clock_check)
        self._hashes = self.settings.hashes
        self._policies = self.settings.policies
        self._default_policy = _check_oid(self.settings.policy_oid)
        self._unit: _TokenSigner | None = None

    async def open(self) -> None:
        """Load the current TSA key and certificate; TsaCertificateRejected when there is
        none usable (then the gateway must not start: `vcc-pki init` creates or renews it)."""
        now = self.clock()
        record = current_tsa(await self.store.list_cas(), now)
        if record is None:
            raise TsaCertificateRejected(
                "no valid TSA certificate: run `vcc-pki init` (it creates and renews it)")
        loaded = await self.authority.ca(record.name)
        issuer = loaded.chain[1] if len(loaded.chain) > 1 else None
        check_tsa_certificate(loaded.certificate, loaded.signer.public_key, now, issuer)
        self._unit = _TokenSigner(loaded, self.settings)
        if loaded.certificate.not_valid_after_utc - now < RENEW_BEFORE:
            log.warning("TSA certificate %s expires %s; `vcc-pki init` or a restart renews it",
                        record.name, loaded.certificate.not_valid_after_utc)

    @property
    def loaded(self) -> LoadedCA:
        if self._unit is None:
            raise Unavailable("the time-stamping authority is not open")
        return self._unit.loaded

    def chain_pem(self) -> bytes:
        """The TSA certificate and its CAs up to, not including, the root (PEM)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.loaded.chain)

    def check(self, query: TimeStampQuery) -> tuple[HashAlgorithm, core.Integer | None]:
        """Reject what the policy does not allow (before any key is used); returns the hash
        and the nonce to echo."""
        if query.version != 1:
            raise BadDataFormat(f"unsupported TimeStampReq version {query.version}")
        algorithm = self._hashes.get(query.hash_oid)
        if algorithm is None:
            known = next((h for h in HASH_ALGORITHMS.values() if h.oid == query.hash_oid), None)
            label = known.name if known else query.hash_oid
            raise BadAlg(f"hash algorithm {label} is not accepted; use one of "
                         f"{', '.join(h.name for h in self._hashes.values())}")
        if query.hash_parameters not in (None, _NULL):  # e.g. a NULL with content octets
            raise BadDataFormat(f"{algorithm.name} takes no parameters, or a DER NULL")
        if len(query.hashed_message) != algorithm.length:
            raise BadDataFormat(f"a {algorithm.name} imprint has {algorithm.length} octets, "
                                f"not {len(query.hashed_message)}")
        if query.policy is not None and query.policy not in self._policies:
            raise UnacceptedPolicy(f"policy {query.policy} is not offered by this TSA")
        if query.extensions:
            # RFC 3161 2.4.1: an extension the TSA does not recognise means no token.
            raise UnacceptedExtension(f"unsupported extension {query.extensions[0]}")
        nonce = None
        if query.nonce is not None:
            try:
                loaded = core.Integer.load(query.nonce, strict=True)
                # DER INTEGERs are minimal (X.690 8.3.2): echoing "02 00" or "02 03 00 00 01"
                # would make a token that `openssl ts` refuses to read.
                contents: bytes = loaded.contents or b""
                minimal = bool(contents) and core.Integer(loaded.native).dump() == query.nonce
            except ValueError:
                minimal = False
            if not minimal:
                raise BadDataFormat("the nonce is not a DER INTEGER")
            nonce = loaded
            if len(contents) > MAX_NONCE_OCTETS:
                raise BadTimeStampRequest(f"the nonce is longer than {MAX_NONCE_OCTETS} octets")
        return algorithm, nonce

    def _synchronised(self) -> bool:
        check = self._clock_check
        if check is None:
            return True
        try:
            return check()
        except Exception as exc:  # a check that cannot tell means "not known to be right"
            log.error("TSA clock check failed: %s", exc)
            return False

    @traced("ca.timestamp")
    async def timestamp(self, query: TimeStampQuery) -> IssuedTimeStamp:
        unit = self._unit
        if unit is None:
            raise Unavailable("the time-stamping authority is not open")
        algorithm, nonce = self.check(query)
        policy = query.policy or self._default_policy
        if not self._synchronised():
            raise TimeNotAvailable("the TSA clock is not synchronised; try again later")
        for _attempt in range(_MAX_SERIAL_ATTEMPTS):
            now = self.clock()
            if not unit.not_before <= now < unit.not_after:
                log.error("TSA certificate %s is not valid at %s", unit.name, now)
                raise Unavailable("the TSA certificate is not valid now")
            # Millisecond precision, trailing zeros dropped by the encoder (RFC 3161 2.4.2).
            gen_time = now.replace(microsecond=now.microsecond // 1000 * 1000)
            serial = x509.random_serial_number()  # 159 CSPRNG bits: positive, < 2**160
            tst_info = unit.tst_info(query, nonce, policy, serial, gen_time)
            try:
                token = await unit.sign(tst_info, now.replace(microsecond=0), query.cert_req)
            except Exception as exc:
                log.error("signing a time-stamp with %s failed: %s", unit.name, exc)
                raise Unavailable("the TSA key is not available") from exc
            record = TimeStampRecord(
                serial_hex=serial_hex(serial), tsa_ca_id=unit.ca_id, policy_oid=policy,
                hash_algorithm=algorithm.name, message_imprint=query.hashed_message,
                gen_time=gen_time, has_nonce=query.nonce is not None, cert_req=query.cert_req,
            )
            try:
                await self.store.add_timestamp(record)
            except StoreConflict:
                log.warning("time-stamp serial collision; drawing a new serial")
                continue
            except StoreError as exc:
                log.error("recording a time-stamp failed: %s", exc)
                raise Unavailable("the time-stamp store is not available") from exc
            return IssuedTimeStamp(record, token)
        raise Unavailable("could not allocate a unique serial number")


async def find_timestamp(authority: Authority, serial: str) -> TimeStampRecord:
    """The recorded token with this serial (hex, as ``openssl ts -reply -text`` prints it)."""
    wanted = parse_serial(serial)
    record = await authority.store.get_timestamp(wanted)
    if record is None:
        raise NotFound(f"no time-stamp with serial {serial_display(wanted)}")
    return record
