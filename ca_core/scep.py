"""SCEP (RFC 8894) decisions: the RA certificate of each issuing CA, capabilities, challenge
passwords, PKCSReq, RenewalReq, GetCert and GetCRL, transactions and the CertRep (CertPoll
and PENDING: not yet, a FAILURE badRequest).

``protocols/scep`` decodes HTTP (operation, message in a query or body) into the calls
below and sends their bytes back; every rule lives here, every record in the store
(``ca_core.storage.ScepStore``), every certificate comes from ``Authority.issue``.

A pkiMessage (3.2) is a SignedData whose signer is the requester (its self-signed
certificate, or for RenewalReq the certificate being renewed) and whose content is an
EnvelopedData (the pkcsPKIEnvelope, 3.2.2) encrypted to the RA certificate: its key
lives in the issuing CA's key backend (in the token with PKCS#11), generated to decrypt.
The CertRep (3.3.2) is signed by the RA key; SUCCESS carries a certs-only SignedData of
the new certificate encrypted to the requester's certificate in the request's cipher
(single DES is never used in a reply: AES-256 instead), FAILURE a failInfo:

    badAlg            an algorithm (digest, signature, key transport, cipher) not supported
    badMessageCheck   the signature does not verify, or the envelope does not decrypt with
                      the RA key (encrypted to another certificate, or damaged)
    badRequest        not a PKCS#10 request, a wrong/used/expired challenge (a RenewalReq
                      signed by a live certificate of the endpoint's CA and organization
                      needs none), a request the
                      profile refuses, a transactionID that is another key's, an operation
                      this server does not perform
    badCertId         GetCert or GetCRL naming no certificate of the endpoint's CA and
                      organization

Faults below SCEP (a message that is not CMS at all, an unknown organization or profile)
are ``BadRequest``/``NotFound`` for the front-end to answer with a 4xx; a failing store or
key backend is ``Unavailable``. Nothing is issued on any failure.

Transactions: a transactionID is bound to the key that signed its first message. The same
request (same transactionID, signer certificate and PKCS#10) sent again gets the
certificate issued for it (a RenewalReq signed by that certificate is a new request); the
same transactionID from another key is refused (badRequest). A challenge is spent in the
same store transaction as the certificate's INSERT. RenewalReq (3.3.1.2) signed by a live
certificate that the endpoint's CA issued to its organization needs no challenge.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AttributeOID

from ca_core import scep_attributes as attrs
from ca_core import x509build
from ca_core.authority import (
    BACKDATE,
    Authority,
    Clock,
    IssuanceRequest,
    LoadedCA,
    hash_secret,
    issuing_ca_name,
    parse_csr,
    serial_hex,
)
from ca_core.cms import (
    BadSignature,
    CmsError,
    DecryptFailed,
    NoRecipient,
    Opened,
    SignedContent,
    SignedDataSigner,
    UnsupportedAlgorithm,
    certs_only,
    encrypt_enveloped,
    open_enveloped,
    unverified_signed_attributes,
    verify_signed,
)
from ca_core.errors import BadRequest, CAError, Conflict, Forbidden, NotFound
from ca_core.keys import KeyAlgorithm, KeySpec
from ca_core.principal import Principal
from ca_core.records import AuditEvent, CertificateRecord
from ca_core.scep_attributes import FailInfo, MessageType, PkiStatus
from ca_core.signers.base import Signer
from ca_core.storage import ScepStore

log = logging.getLogger(__name__)

ScepRecorded = Literal["recorded", "challenge_spent", "transaction_taken"]

# ---------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ScepRaRecord:
    """The RA certificate of one issuing CA (also a row of ``certificates``) and the
    reference to its key, in the CA's key backend."""

    ra_id: str
    ca_id: str
    cert_id: str
    key_ref: str
    key_backend: str
    certificate_der: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    created_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ScepChallenge:
    """A one-time challenge password (stored as its hash) for one organization and
    profile."""

    challenge_id: str
    org_id: str
    profile: str
    secret_hash: str
    expires_at: dt.datetime
    used_at: dt.datetime | None = None
    created_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ScepTransaction:
    """What a transactionID got (RFC 8894 3.2.1.1), bound to the key that signed it."""

    transaction_id: str
    key_fingerprint: str  # SHA-256 of the signer's SubjectPublicKeyInfo
    request_fingerprint: str  # SHA-256 of the PKCS#10 request and the signer certificate
    org_id: str
    status: str  # "success" (pending, failure: not recorded yet)
    cert_id: str | None = None
    fail_info: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class CreatedChallenge:
    challenge_id: str
    password: str  # shown once
    record: ScepChallenge


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class ScepSettings:
    # The static challenge of the default organization and profile ("" : none).
    static_challenge: str = ""
    default_profile: str = "external_integration"
    ra_key: KeySpec = field(default_factory=lambda: KeySpec.parse("rsa-2048"))
    ra_validity_days: int = 365
    default_challenge_lifetime: dt.timedelta = dt.timedelta(hours=1)
    max_challenge_lifetime: dt.timedelta = dt.timedelta(days=30)
    # Read requests encrypted with single DES (micromdm's scepclient 2.1 sends nothing
    # else, whatever GetCACaps says). Never offered, never used in a reply.
    accept_single_des: bool = False


CAPABILITIES = ("POSTPKIOperation", "SHA-256", "SHA-512", "AES", "SCEPStandard", "Renewal")


# ---------------------------------------------------------------------------- errors


class ScepFailure(BadRequest):
    """A request answered with a FAILURE CertRep carrying ``fail_info``."""

    kind = "scep_failure"

    def __init__(self, fail_info: FailInfo, detail: str) -> None:
        super().__init__(detail)
        self.fail_info = fail_info


# ---------------------------------------------------------------------------- the service


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What ``/scep`` or ``/scep/{org}/{profile}`` names."""

    org_id: str
    org_slug: str
    profile: str
    ca_name: str
    is_default: bool


@dataclass(frozen=True, slots=True)
class _Ra:
    record: ScepRaRecord
    certificate: x509.Certificate
    signer: Signer
    cms: SignedDataSigner


@dataclass(frozen=True, slots=True)
class _Request:
    """A pkiMessage's signed attributes (RFC 8894 3.2.1)."""

    message_type: str
    transaction_id: str
    sender_nonce: bytes


class ScepService:
    """The SCEP registration authority over the Authority; see the module docstring."""

    def __init__(self, authority: Authority, store: ScepStore | None = None,
                 settings: ScepSettings | None = None, clock: Clock | None = None) -> None:
        self.authority = authority
        self.store: ScepStore = store if store is not None else authority.store
        self.settings = settings or ScepSettings()
        self.clock: Clock = clock or authority.clock
        self._ras: dict[str, _Ra] = {}
        self._ra_locks: dict[str, asyncio.Lock] = {}
        self._older: dict[str, tuple[x509.Certificate, Signer]] = {}  # by ra_id

    # --- wire operations (protocols/scep calls these) ---------------------------------

    async def endpoint(self, org: str | None = None, profile: str | None = None) -> Endpoint:
        """The organization (slug; None: the default) and profile (None: the default SCEP
        profile) a path names; NotFound when either is unknown or internal."""
        default_org = self.authority.settings.default_org
        slug = org if org is not None else default_org
        name = profile if profile is not None else self.settings.default_profile
        try:
            found = self.authority.profile(name)
        except CAError:
            raise NotFound(f"no SCEP profile {name[:64]!r}") from None
        if found.internal_only:
            raise NotFound(f"no SCEP profile {name[:64]!r}")
        organization = await self.authority.organization(slug)
        return Endpoint(organization.org_id, organization.slug, found.name,
                        issuing_ca_name(organization.slug),
                        slug == default_org and name == self.settings.default_profile)

    def capabilities(self) -> tuple[str, ...]:
        """GetCACaps (RFC 8894 3.5.2); never single DES."""
        return CAPABILITIES

    async def ca_certificates(self, endpoint: Endpoint) -> bytes:
        """GetCACert (RFC 8894 4.2.1.2): a certs-only SignedData of the RA certificate, the
        issuing CA and its chain up to the root."""
        ca = await self.authority.ca(endpoint.ca_name)
        ra = await self._ra(ca)
        top = ca
        while top.record.parent_ca_id is not None:
            top = await self.authority.ca_by_id(top.record.parent_ca_id)
        chain = ca.chain if top.certificate in ca.chain else (*ca.chain, top.certificate)
        return certs_only([ra.certificate, *chain])

    async def ra_certificate(self, endpoint: Endpoint) -> x509.Certificate:
        return (await self._ra(await self.authority.ca(endpoint.ca_name))).certificate

    async def pki_operation(self, endpoint: Endpoint, message: bytes) -> bytes:
        """PKIOperation (RFC 8894 4.3): the DER CertRep. BadRequest when the message cannot
        be answered in SCEP at all (not a SignedData, no transactionID or senderNonce)."""
        ca = await self.authority.ca(endpoint.ca_name)
        ra = await self._ra(ca)
        try:
            signed = verify_signed(message)
        except (UnsupportedAlgorithm, BadSignature) as exc:
            request = self._request_attributes(unverified_signed_attributes(message))
            fail = FailInfo.BAD_ALG if isinstance(exc, UnsupportedAlgorithm) \
                else FailInfo.BAD_MESSAGE_CHECK
            log.info("SCEP %s: %s", request.transaction_id[:64], exc)
            return await self._failure(ra, request, fail)
        except CmsError as exc:
            raise BadRequest(f"not a SCEP pkiMessage: {exc}") from None
        request = self._request_attributes(signed.signed_attrs)
        try:
            if request.message_type in (MessageType.PKCS_REQ, MessageType.RENEWAL_REQ):
                return await self._enroll(endpoint, ra, signed, request)
            if request.message_type in (MessageType.GET_CERT, MessageType.GET_CRL):
                return await self._get(endpoint, ra, signed, request)
            raise ScepFailure(FailInfo.BAD_REQUEST,
                              f"messageType {request.message_type[:8]!r} is not supported")
        except ScepFailure as failure:
            log.info("SCEP %s: FAILURE %s: %s", request.transaction_id[:64],
                     failure.fail_info.name, failure)
            return await self._failure(ra, request, failure.fail_info)

    # --- operators ----------------------------------------------------------------------

    async def create_challenge(self, org: str, profile: str | None,
                               lifetime: dt.timedelta | None, principal: Principal
                               ) -> CreatedChallenge:
        """``vcc-pki scep challenge create``: a one-time challenge password for ``org``
        (slug) and ``profile`` (None: the default SCEP profile); audited."""
        endpoint = await self.endpoint(org, profile)
        if principal.role not in ("pki_super_admin", "pki_admin") or \
                not principal.sees_org(endpoint.org_id):
            raise Forbidden("only an administrator of the organization creates challenges")
        lifetime = lifetime if lifetime is not None else \
            self.settings.default_challenge_lifetime
        if not dt.timedelta(0) < lifetime <= self.settings.max_challenge_lifetime:
            raise BadRequest("a challenge's lifetime must be positive and at most "
                             f"{self.settings.max_challenge_lifetime.days} days")
        now = self.clock()
        # Hex: a PrintableString whatever the client's encoder (challengePassword).
        password = secrets.token_hex(32)
        record = ScepChallenge(
            challenge_id=f"scep-{secrets.token_hex(8)}", org_id=endpoint.org_id,
            profile=endpoint.profile, secret_hash=hash_secret(password),
            expires_at=now + lifetime, created_at=now)
        await self.store.add_scep_challenge(record, AuditEvent(
            event_type="scep.challenge_created", category="authentication",
            action="create_challenge", actor_type=principal.actor_type,
            actor_id=principal.actor_id, org_id=endpoint.org_id,
            resource_type="scep_challenge", resource_id=record.challenge_id,
            data={"profile": endpoint.profile, "expires_at": record.expires_at.isoformat()}))
        return CreatedChallenge(record.challenge_id, password, record)

    # --- the rules ----------------------------------------------------------------------

    @staticmethod
    def _request_attributes(signed_attrs: Any) -> _Request:
        transaction_id = attrs.read_text(signed_attrs, attrs.TRANSACTION_ID)
        nonce = attrs.read_octets(signed_attrs, attrs.SENDER_NONCE)
        message_type = attrs.read_text(signed_attrs, attrs.MESSAGE_TYPE)
        # Without these no CertRep can be addressed to the request (3.3.2).
        if not transaction_id or nonce is None or message_type is None:
            raise BadRequest("a pkiMessage needs transactionID, senderNonce and messageType")
        if len(transaction_id) > 128 or len(nonce) > 64:
            raise BadRequest("transactionID or senderNonce is too long")
        return _Request(message_type, transaction_id, nonce)

    async def _enroll(self, endpoint: Endpoint, ra: _Ra, signed: SignedContent,
                      request: _Request) -> bytes:
        opened = await self._open(ra, signed.content)
        try:
            csr = parse_csr(opened.content)
        except CAError as exc:
            raise ScepFailure(FailInfo.BAD_REQUEST, f"not a PKCS#10 request: {exc}") from None
        requester_key = signed.signer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        transaction = ScepTransaction(
            transaction_id=request.transaction_id,
            key_fingerprint=hashlib.sha256(requester_key).hexdigest(),
            # The same request is the same PKCS#10 under the same signer certificate: a
            # RenewalReq of the certificate this transaction got is a new request.
            request_fingerprint=hashlib.sha256(
                opened.content + signed.signer.public_bytes(serialization.Encoding.DER)
            ).hexdigest(),
            org_id=endpoint.org_id, status="success")
        again = await self._answered(transaction)
        if again is not None:  # the same request sent again: the same certificate
            return await self._success(ra, request, signed.signer, opened, again)
        renewing = None
        if request.message_type == MessageType.RENEWAL_REQ:
            renewing = await self._renewable(endpoint, signed.signer)
        if renewing is not None:  # signed by a live certificate of ours: no challenge
            consume, requester = None, f"certificate:{renewing.serial_hex}"
        else:
            consume, requester = await self._authenticate(endpoint, csr, request, signed)
        store = self.store
        principal = Principal("service", f"scep:{requester}", endpoint.org_id,
                              "service_account")

        async def record_with(cert: CertificateRecord, audit: AuditEvent) -> None:
            now = self.clock()
            outcome = await store.add_certificate_for_scep(
                cert, audit, _with_cert(transaction, cert.cert_id, now), consume)
            if outcome == "challenge_spent":
                raise ScepFailure(FailInfo.BAD_REQUEST, "the challenge is used or expired")
            if outcome == "transaction_taken":
                raise Conflict("the transaction was recorded meanwhile")

        try:
            issued = await self.authority.issue(
                IssuanceRequest(csr=csr, profile=endpoint.profile, org=endpoint.org_slug),
                principal, record_with=record_with)
        except ScepFailure:
            raise
        except Conflict:
            again = await self._answered(transaction)
            if again is None:
                raise ScepFailure(FailInfo.BAD_REQUEST,
                                  "the transactionID is another request's") from None
            return await self._success(ra, request, signed.signer, opened, again)
        except (BadRequest, Forbidden, NotFound) as exc:
            raise ScepFailure(FailInfo.BAD_REQUEST, str(exc)) from None
        return await self._success(ra, request, signed.signer, opened, issued.certificate)

    async def _get(self, endpoint: Endpoint, ra: _Ra, signed: SignedContent,
                   request: _Request) -> bytes:
        """GetCert (3.3.3): the certificate an IssuerAndSerialNumber names; GetCRL
        (3.3.4): the full CRL of the CA that issued it. Both are public information, as on
        /ca and /crl; the reply is encrypted to the requester all the same (3.3.2)."""
        opened = await self._open(ra, signed.content)
        try:
            wanted = asn1_cms.IssuerAndSerialNumber.load(opened.content, strict=True)
            issuer, serial = wanted["issuer"], wanted["serial_number"].native
        except Exception:  # asn1crypto reports malformed input in many types
            raise ScepFailure(FailInfo.BAD_REQUEST,
                              "not an IssuerAndSerialNumber") from None
        ca = await self.authority.ca(endpoint.ca_name)
        ca_name = asn1_x509.Name.load(
            ca.certificate.subject.public_bytes(serialization.Encoding.DER))
        record = None
        if issuer == ca_name and isinstance(serial, int) and serial > 0:
            record = await self.authority.store.get_certificate(ca.record.ca_id,
                                                                serial_hex(serial))
        if record is None or record.org_id != endpoint.org_id:
            raise ScepFailure(FailInfo.BAD_CERT_ID, "no such certificate of this CA")
        if request.message_type == MessageType.GET_CERT:
            content = certs_only([x509.load_der_x509_certificate(record.certificate_der)])
        else:
            crl = await self.authority.store.get_crl(ca.record.ca_id)
            if crl is None:
                raise ScepFailure(FailInfo.BAD_REQUEST, "no CRL is published yet")
            content = certs_only([], [x509.load_der_x509_crl(crl.crl_der)])
        return await self._envelope_reply(ra, request, signed.signer, opened, content)

    async def _answered(self, transaction: ScepTransaction) -> x509.Certificate | None:
        """The certificate a transaction got for this very request; None when it is new;
        ScepFailure when the transactionID belongs to another key."""
        found = await self.store.get_scep_transaction(transaction.transaction_id)
        if found is None:
            return None
        if not hmac.compare_digest(found.key_fingerprint, transaction.key_fingerprint):
            raise ScepFailure(FailInfo.BAD_REQUEST,
                              "the transactionID was used with another key")
        if found.request_fingerprint != transaction.request_fingerprint or \
                found.status != "success" or found.cert_id is None:
            return None
        record = await self.authority.store.get_certificate_by_id(found.cert_id)
        if record is None:
            return None
        return x509.load_der_x509_certificate(record.certificate_der)

    async def _renewable(self, endpoint: Endpoint, signer: x509.Certificate
                         ) -> CertificateRecord | None:
        """RenewalReq (RFC 8894 3.3.1.2): the record of the signer certificate when this
        endpoint's CA issued it (the stored DER is the presented one) to this organization
        and it is neither revoked nor expired; None otherwise (a challenge is then needed,
        as for PKCSReq)."""
        ca = await self.authority.ca(endpoint.ca_name)
        if signer.issuer != ca.certificate.subject:
            return None
        record = await self.authority.store.get_certificate(
            ca.record.ca_id, serial_hex(signer.serial_number))
        der = signer.public_bytes(serialization.Encoding.DER)
        now = self.clock()
        if record is None or record.certificate_der != der or \
                record.org_id != endpoint.org_id or record.status == "revoked" or \
                not record.not_before - BACKDATE <= now < record.not_after:
            return None
        return record

    async def _authenticate(self, endpoint: Endpoint, csr: x509.CertificateSigningRequest,
                            request: _Request, signed: SignedContent
                            ) -> tuple[tuple[str, dt.datetime, AuditEvent] | None, str]:
        """The challenge to spend (None for the static one) and who the requester is."""
        password = _challenge_password(csr)
        if password is None:
            raise ScepFailure(FailInfo.BAD_REQUEST, "the request has no challengePassword")
        static = self.settings.static_challenge
        if static and endpoint.is_default and \
                hmac.compare_digest(password.encode(), static.encode()):
            return None, "static"
        challenge = await self.store.find_scep_challenge(hash_secret(password))
        now = self.clock()
        if challenge is None or challenge.org_id != endpoint.org_id or \
                challenge.profile != endpoint.profile:
            raise ScepFailure(FailInfo.BAD_REQUEST, "wrong challenge password")
        if challenge.used_at is not None:
            raise ScepFailure(FailInfo.BAD_REQUEST, "the challenge was used already")
        if challenge.expires_at <= now:
            raise ScepFailure(FailInfo.BAD_REQUEST, "the challenge has expired")
        requester = f"challenge:{challenge.challenge_id}"
        event = AuditEvent(
            event_type="scep.challenge_used", category="authentication",
            action="use_challenge", actor_type="service", actor_id=f"scep:{requester}",
            org_id=endpoint.org_id, resource_type="scep_challenge",
            resource_id=challenge.challenge_id,
            data={"transaction_id": request.transaction_id, "profile": endpoint.profile})
        return (challenge.challenge_id, now, event), requester

    async def _open(self, ra: _Ra, content: bytes) -> Opened:
        """The envelope decrypted by the current RA key, or by an older RA certificate of
        the CA that is still valid (a client that fetched GetCACert before a renewal)."""
        try:
            try:
                return await open_enveloped(content, ra.signer, ra.certificate,
                                            allow_des=self.settings.accept_single_des)
            except NoRecipient:
                for older, signer in await self._older_ras(ra):
                    try:
                        return await open_enveloped(
                            content, signer, older,
                            allow_des=self.settings.accept_single_des)
                    except NoRecipient:
                        continue
                raise
        except UnsupportedAlgorithm as exc:
            raise ScepFailure(FailInfo.BAD_ALG, str(exc)) from None
        except (NoRecipient, DecryptFailed, CmsError) as exc:
            raise ScepFailure(FailInfo.BAD_MESSAGE_CHECK, str(exc)) from None

    async def _older_ras(self, ra: _Ra) -> list[tuple[x509.Certificate, Signer]]:
        backend = self.authority.keys
        now = self.clock()
        found = []
        for record in await self.store.list_scep_ra(ra.record.ca_id):
            if record.ra_id == ra.record.ra_id or record.key_backend != backend.name or \
                    record.not_after <= now:
                continue
            loaded = self._older.get(record.ra_id)
            if loaded is None:
                signer = await asyncio.to_thread(backend.load, record.key_ref)
                loaded = self._older[record.ra_id] = (
                    x509.load_der_x509_certificate(record.certificate_der), signer)
            found.append(loaded)
        return found

    async def _success(self, ra: _Ra, request: _Request, requester: x509.Certificate,
                       opened: Opened, certificate: x509.Certificate) -> bytes:
        return await self._envelope_reply(ra, request, requester, opened,
                                          certs_only([certificate]))

    async def _envelope_reply(self, ra: _Ra, request: _Request, requester: x509.Certificate,
                              opened: Opened, degenerate: bytes) -> bytes:
        """SUCCESS: ``degenerate`` (a certs-only SignedData) encrypted to the requester.
        Replies use the request's cipher; single DES never (AES-256 instead)."""
        cipher: Any = opened.cipher if opened.cipher in (
            "aes128_cbc", "aes192_cbc", "aes256_cbc", "tripledes_3key") else "aes256_cbc"
        try:
            envelope = encrypt_enveloped(degenerate, [requester],
                                         key_transport=opened.key_transport, cipher=cipher)
        except UnsupportedAlgorithm:  # a non-RSA signer certificate: nothing to encrypt to
            return await self._failure(ra, request, FailInfo.BAD_ALG)
        return await self._reply(ra, request, PkiStatus.SUCCESS, envelope)

    async def _failure(self, ra: _Ra, request: _Request, fail: FailInfo) -> bytes:
        return await self._reply(ra, request, PkiStatus.FAILURE, b"", fail)

    async def _reply(self, ra: _Ra, request: _Request, status: PkiStatus, content: bytes,
                     fail: FailInfo | None = None) -> bytes:
        """A CertRep (3.3.2) signed by the RA key."""
        signed_attrs = [
            attrs.printable(attrs.TRANSACTION_ID, request.transaction_id),
            attrs.printable(attrs.MESSAGE_TYPE, MessageType.CERT_REP),
            attrs.printable(attrs.PKI_STATUS, status),
            attrs.octets(attrs.SENDER_NONCE, secrets.token_bytes(16)),
            attrs.octets(attrs.RECIPIENT_NONCE, request.sender_nonce),
        ]
        if fail is not None:
            signed_attrs.append(attrs.printable(attrs.FAIL_INFO, fail))
        # FAILURE and PENDING carry no pkcsPKIEnvelope (3.3.2): no eContent.
        return await ra.cms.sign(content, "data", signed_attrs=signed_attrs,
                                 detached=not content)

    # --- the RA certificate -------------------------------------------------------------

    async def _ra(self, ca: LoadedCA) -> _Ra:
        """The RA of an issuing CA: made (a new RSA key generated to decrypt, in the CA's
        key backend, and a certificate of profile scep_ra) when it has none valid for
        longer than a third of its validity, as OCSP responders are renewed."""
        if ca.record.ca_type != "issuing" or ca.record.org_id is None:
            raise NotFound(f"CA {ca.record.name} is not an issuing CA")
        ca_id = ca.record.ca_id
        renew_before = dt.timedelta(days=max(1.0, self.settings.ra_validity_days / 3))
        cached = self._ras.get(ca_id)
        if cached is not None and cached.record.not_after - self.clock() > renew_before:
            return cached
        lock = self._ra_locks.setdefault(ca_id, asyncio.Lock())
        async with lock:
            cached = self._ras.get(ca_id)
            now = self.clock()
            if cached is not None and cached.record.not_after - now > renew_before:
                return cached
            backend = self.authority.keys
            current = [r for r in await self.store.list_scep_ra(ca_id)
                       if r.key_backend == backend.name]
            if current and current[0].not_after - now > renew_before:
                record = current[0]
                signer = await asyncio.to_thread(backend.load, record.key_ref)
            else:
                record, signer = await self._new_ra(ca)
            certificate = x509.load_der_x509_certificate(record.certificate_der)
            ra = _Ra(record, certificate, signer,
                     SignedDataSigner(signer, certificate, certificates=[certificate]))
            self._ras[ca_id] = ra
            return ra

    async def _new_ra(self, ca: LoadedCA) -> tuple[ScepRaRecord, Signer]:
        spec = self.settings.ra_key
        if spec.algorithm is not KeyAlgorithm.RSA:
            raise ValueError("the SCEP RA key must be RSA (clients encrypt to it)")
        principal = Principal.system("vcc-pki scep")
        backend = self.authority.keys
        label = f"vcc-scep-ra-{ca.record.name}-{secrets.token_hex(4)}"[:100]
        signer = await asyncio.to_thread(backend.generate, spec, label, decrypt=True)
        subject = x509build.name(
            f"{self.authority.settings.organization_name} SCEP RA {ca.record.name}")
        builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
        csr = await signer.run(lambda: builder.sign(
            signer.builder_key(), spec.hash_algorithm))  # type: ignore[arg-type]
        assert ca.record.org_id is not None
        org = await self.authority.organization_by_id(ca.record.org_id)
        issued = await self.authority.issue(
            IssuanceRequest(csr=csr.public_bytes(serialization.Encoding.DER),
                            profile="scep_ra", org=org.slug,
                            validity_days=self.settings.ra_validity_days,
                            ca=ca.record.name),
            principal)
        record = ScepRaRecord(
            ra_id=str(uuid.uuid4()), ca_id=ca.record.ca_id, cert_id=issued.record.cert_id,
            key_ref=signer.key_ref, key_backend=backend.name,
            certificate_der=issued.record.certificate_der,
            not_before=issued.record.not_before, not_after=issued.record.not_after,
            created_at=self.clock())
        await self.store.add_scep_ra(record, AuditEvent(
            event_type="scep_ra.created", category="ca", action="create_scep_ra",
            actor_type=principal.actor_type, actor_id=principal.actor_id, org_id=org.org_id,
            resource_type="scep_ra", resource_id=record.ra_id,
            data={"ca": ca.record.name, "serial": issued.record.serial_hex,
                  "key": str(spec), "key_backend": backend.name,
                  "not_after": record.not_after.isoformat()}))
        return record, signer


def _with_cert(transaction: ScepTransaction, cert_id: str, now: dt.datetime
               ) -> ScepTransaction:
    return ScepTransaction(
        transaction_id=transaction.transaction_id,
        key_fingerprint=transaction.key_fingerprint,
        request_fingerprint=transaction.request_fingerprint, org_id=transaction.org_id,
        status="success", cert_id=cert_id, created_at=now, updated_at=now)


def _challenge_password(csr: x509.CertificateSigningRequest) -> str | None:
    """The request's challengePassword (RFC 2985 5.4.1) as text."""
    try:
        value = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
    except (x509.AttributeNotFound, ValueError):
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None
