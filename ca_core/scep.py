"""SCEP (RFC 8894) decisions: the RA certificate of each issuing CA, capabilities, challenge
passwords (one-time, and a static one per endpoint), manual approval (PENDING, CertPoll),
PKCSReq, RenewalReq, GetCert, GetCRL, GetNextCACert, transactions and the CertRep.

``protocols/scep`` decodes HTTP (operation, message in a query or body) into the calls
below and sends their bytes back; every rule lives here, every record in the store
(``ca_core.storage.ScepStore``), every certificate comes from ``Authority.issue``.

An endpoint is an organization and a profile (``/scep/{org}/{profile}``); its CA is the
organization's active issuing CA (``Authority.issuing_ca``: after a rollover, the new
one; certificates of the CAs it replaced still count for GetCert, GetCRL and renewal).
Its policy (``ScepEndpointPolicy``, `vcc-pki scep profile|secret set`): manual approval
and a static challenge password (a scrypt hash; VCC_PKI_SCEP_CHALLENGE sets the default
endpoint's).

A pkiMessage (3.2) is a SignedData whose signer is the requester (its self-signed
certificate, or for a renewal the certificate being renewed) and whose content is an
EnvelopedData (the pkcsPKIEnvelope, 3.2.2) encrypted to the RA certificate: its key
lives in the issuing CA's key backend (in the token with PKCS#11), generated to decrypt.
The CertRep (3.3.2) is signed by the RA key; SUCCESS carries a certs-only SignedData of
the new certificate encrypted to the requester's certificate in the request's cipher
(single DES is never used in a reply: AES-256 instead); PENDING nothing (an endpoint with
manual approval: the client polls with CertPoll, 3.3.3, or sends the request again until
an operator decides with `vcc-pki scep pending approve|reject`); FAILURE a failInfo:

    badAlg            an algorithm (digest, signature, key transport, cipher) not supported
    badMessageCheck   the signature does not verify, or the envelope does not decrypt with
                      the RA key (encrypted to another certificate, or damaged)
    badRequest        not a PKCS#10 request, a wrong/used/expired challenge (a renewal
                      signed by a live certificate of the organization's CAs needs none),
                      a request the profile refuses, a transactionID that is another key's
                      (or waits for an operator with another request), a request an
                      operator rejected, an operation this server does not perform
    badCertId         GetCert or GetCRL naming no certificate of the organization's CAs;
                      CertPoll naming no transaction of the endpoint

Faults below SCEP (a message that is not CMS at all, an unknown organization or profile)
are ``BadRequest``/``NotFound`` for the front-end to answer with a 4xx; a failing store or
key backend is ``Unavailable``. Nothing is issued on any failure.

Transactions: a transactionID is bound to the key that signed its first message, and the
same transactionID from another key is refused (badRequest). The same request (same
transactionID and PKCS#10; for a renewal also the same signer certificate) sent again
gets the same answer: its certificate, PENDING, or the FAILURE it got (a failure is
remembered; it never replaces a certificate or a pending request). A challenge is spent
in the same store transaction as the certificate's INSERT, or as the pending request's.
A renewal (RenewalReq, 3.3.1.2, or a PKCSReq signed by a certificate that is not
self-issued, as sscep sends it) signed by a live certificate that one of the
organization's CAs issued to it needs no challenge.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass, field, replace
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
from ca_core.errors import (
    BadRequest,
    CAError,
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
)
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
    status: str  # success | pending | rejected | failure
    cert_id: str | None = None
    fail_info: str | None = None  # failure, rejected: the FailInfo every retry gets
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    # pending (and kept once decided): what an operator approves, for whom
    profile: str | None = None
    csr_der: bytes | None = None
    requester: str | None = None  # "challenge:<id>", "static", "certificate:<serial>"
    decided_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ScepEndpointPolicy:
    """What an operator set for one endpoint (``/scep/{org}/{profile}``): manual approval
    and a static challenge password (a salted scrypt hash, ``hash_static_secret``)."""

    org_id: str
    profile: str
    require_approval: bool = False
    secret_hash: str | None = None
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
    # Offer DES3 in GetCACaps (legacy clients that pick the strongest cipher offered and
    # know no AES). DES3 requests are read either way, and answered in DES3.
    advertise_des3: bool = False


CAPABILITIES = ("POSTPKIOperation", "SHA-256", "SHA-512", "AES", "SCEPStandard", "Renewal")


# ---------------------------------------------------------------------------- errors


class ScepFailure(BadRequest):
    """A request answered with a FAILURE CertRep carrying ``fail_info``. ``remember``:
    whether the transaction keeps it (False where the transactionID is not the signer's
    to record, or the answer is already a recorded one)."""

    kind = "scep_failure"

    def __init__(self, fail_info: FailInfo, detail: str, remember: bool = True) -> None:
        super().__init__(detail)
        self.fail_info = fail_info
        self.remember = remember


# ---------------------------------------------------------------------------- static secrets

# scrypt (RFC 7914) with a random salt: a static challenge is chosen by an operator and may
# be guessable, unlike the 256-bit generated secrets that ``hash_secret`` hashes fast. The
# cost (16 MiB, some tens of ms) is paid once per secret and process (``_static_ok``).
_SCRYPT = (2**14, 8, 1)
MAX_SECRET_LENGTH = 255  # RFC 2985 5.4.1: challengePassword is at most 255 characters


def hash_static_secret(secret: str) -> str:
    """The stored form of a static challenge password: ``scrypt$N$r$p$salt$hash``."""
    n, r, p = _SCRYPT
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def static_secret_matches(secret: str, stored: str) -> bool:
    """Whether ``secret`` is the one ``stored`` (``hash_static_secret``) was made of."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or (int(n), int(r), int(p)) != _SCRYPT:
            return False
        expected = bytes.fromhex(digest)
        got = hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


# ---------------------------------------------------------------------------- the service


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What ``/scep`` or ``/scep/{org}/{profile}`` names."""

    org_id: str
    org_slug: str
    profile: str
    ca_name: str  # the organization's active issuing CA: it issues, its RA answers
    is_default: bool
    # every issuing CA of the organization (active, retired, next): GetCert, GetCRL and
    # RenewalReq know certificates of a CA retired by a rollover
    ca_names: tuple[str, ...] = ()
    next_ca: str | None = None  # a rollover successor, offered by GetNextCACert


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
        # stored scrypt hash -> SHA-256 of the secret that matched it: each static secret
        # costs one scrypt per process, not one per enrollment
        self._static_ok: dict[str, bytes] = {}

    # --- wire operations (protocols/scep calls these) ---------------------------------

    async def endpoint(self, org: str | None = None, profile: str | None = None) -> Endpoint:
        """The organization (slug; None: the default) and profile (None: the default SCEP
        profile) a path names; NotFound when either is unknown or internal."""
        default_org = self.authority.settings.default_org
        slug = org if org is not None else default_org
        name = profile if profile is not None else self.settings.default_profile
        organization = await self.authority.organization(slug)
        try:
            found = await self.authority.resolve_profile(name, organization.org_id)
        except CAError:
            raise NotFound(f"no SCEP profile {name[:64]!r}") from None
        if found.internal_only:
            raise NotFound(f"no SCEP profile {name[:64]!r}")
        cas = await self.authority.issuing_cas(organization)
        return Endpoint(organization.org_id, organization.slug, found.name, cas.active,
                        slug == default_org and name == self.settings.default_profile,
                        cas.all, cas.next)

    async def capabilities(self, endpoint: Endpoint) -> tuple[str, ...]:
        """GetCACaps (RFC 8894 3.5.2): DES3 where configured, never single DES."""
        caps = list(CAPABILITIES)
        if self.settings.advertise_des3:
            caps.append("DES3")
        if endpoint.next_ca is not None:
            caps.append("GetNextCACert")
        return tuple(caps)

    async def ca_certificates(self, endpoint: Endpoint) -> bytes:
        """GetCACert (RFC 8894 4.2.1.2): a certs-only SignedData of the RA certificate, the
        issuing CA and its chain up to the root."""
        ca = await self.authority.ca(endpoint.ca_name)
        ra = await self._ra(ca)
        return certs_only([ra.certificate, *await self.authority.chain_with_root(ca)])

    async def next_ca_certificates(self, endpoint: Endpoint) -> bytes:
        """GetNextCACert (RFC 8894 4.7): a SignedData signed by the current RA key whose
        content is a certs-only SignedData of the rollover successor and its RA
        certificate; NotFound when the organization has no "next" CA."""
        if endpoint.next_ca is None:
            raise NotFound("no next CA: GetNextCACert is offered during a rollover only")
        current = await self._ra(await self.authority.ca(endpoint.ca_name))
        successor = await self.authority.ca(endpoint.next_ca)
        upcoming = await self._ra(successor)
        content = certs_only([upcoming.certificate, *successor.chain])
        return await current.cms.sign(content, "data")

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
            if request.message_type == MessageType.CERT_POLL:
                return await self._poll(endpoint, ra, signed, request)
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
        if not principal.administers(endpoint.org_id):
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

    async def configure(self, org: str, profile: str | None, principal: Principal, *,
                        require_approval: bool | None = None, secret: str | None = None,
                        clear_secret: bool = False) -> ScepEndpointPolicy:
        """``vcc-pki scep profile set`` and ``scep secret set``: an endpoint's manual
        approval and static challenge password (stored as a scrypt hash); audited."""
        endpoint = await self.endpoint(org, profile)
        self._check_admin(principal, endpoint.org_id)
        now = self.clock()

        def event(event_type: str, data: dict[str, Any]) -> AuditEvent:
            return AuditEvent(
                event_type=event_type, category="configuration", action="configure",
                actor_type=principal.actor_type, actor_id=principal.actor_id,
                org_id=endpoint.org_id, resource_type="scep_endpoint",
                resource_id=f"{endpoint.org_slug}/{endpoint.profile}",
                data={"profile": endpoint.profile, **data})

        if secret is not None or clear_secret:
            if secret is not None and clear_secret:
                raise BadRequest("give a secret or clear it, not both")
            if secret is not None:
                _check_static_secret(secret)
            stored = None if secret is None else \
                await asyncio.to_thread(hash_static_secret, secret)
            await self.store.set_scep_secret(
                endpoint.org_id, endpoint.profile, stored, now,
                event("scep.secret_set" if stored else "scep.secret_cleared", {}))
        if require_approval is not None:
            await self.store.set_scep_approval(
                endpoint.org_id, endpoint.profile, require_approval, now,
                event("scep.endpoint_set", {"require_approval": require_approval}))
        found = await self.store.get_scep_endpoint(endpoint.org_id, endpoint.profile)
        return found or ScepEndpointPolicy(endpoint.org_id, endpoint.profile)

    async def endpoints(self) -> list[ScepEndpointPolicy]:
        """The endpoints an operator configured."""
        return await self.store.list_scep_endpoints()

    async def pending(self, org: str | None = None) -> list[ScepTransaction]:
        """Requests waiting for approval (of one organization, by slug), oldest first."""
        org_id = None if org is None else (await self.authority.organization(org)).org_id
        return await self.store.list_scep_transactions(org_id, "pending")

    async def decide(self, transaction_id: str, approve: bool, principal: Principal
                     ) -> ScepTransaction:
        """``vcc-pki scep pending approve|reject``: approving issues the certificate (under
        the endpoint's profile as it is now), which the client gets on its next CertPoll;
        rejecting makes every poll a FAILURE badRequest; audited."""
        found = await self.store.get_scep_transaction(transaction_id)
        if found is None or not principal.sees_org(found.org_id):
            raise NotFound(f"no pending SCEP request {transaction_id[:64]!r}")
        self._check_admin(principal, found.org_id)
        if found.status != "pending":
            raise Conflict(f"request {transaction_id} is {found.status} already")
        now = self.clock()
        event = AuditEvent(
            event_type="scep.request_approved" if approve else "scep.request_rejected",
            category="scep", action="approve" if approve else "reject",
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            org_id=found.org_id, resource_type="scep_transaction", resource_id=transaction_id,
            data={"profile": found.profile, "requester": found.requester})
        if not approve:
            rejected = await self.store.reject_scep_pending(
                transaction_id, FailInfo.BAD_REQUEST.value, now, event)
            if rejected is None:
                raise Conflict(f"request {transaction_id} was decided meanwhile")
            return rejected
        if found.csr_der is None or found.profile is None:  # written with every pending row
            raise Unavailable(f"request {transaction_id} has no PKCS#10 to issue")
        store = self.store

        async def record_with(cert: CertificateRecord, audit: AuditEvent) -> None:
            if not await store.add_certificate_for_scep_pending(
                    cert, audit, transaction_id, found.request_fingerprint, now, event):
                raise Conflict(f"request {transaction_id} was decided meanwhile")

        org = await self.authority.organization_by_id(found.org_id)
        issued = await self.authority.issue(
            IssuanceRequest(csr=parse_csr(found.csr_der), profile=found.profile, org=org.slug),
            Principal.enrollee("scep", found.requester or "unknown", found.org_id),
            record_with=record_with)
        return replace(found, status="success", cert_id=issued.record.cert_id,
                       decided_at=now, updated_at=now)

    @staticmethod
    def _check_admin(principal: Principal, org_id: str) -> None:
        if not principal.administers(org_id):
            raise Forbidden("only an administrator of the organization configures SCEP")

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
        """PKCSReq, RenewalReq: an answer the transaction has for this very request, or a
        new decision; a FAILURE decided here is remembered with the transaction."""
        opened = await self._open(endpoint, ra, signed.content)
        requester_key = signed.signer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        now = self.clock()
        transaction = ScepTransaction(
            transaction_id=request.transaction_id,
            key_fingerprint=hashlib.sha256(requester_key).hexdigest(),
            request_fingerprint=_request_fingerprint(request, signed, opened),
            org_id=endpoint.org_id, status="success", profile=endpoint.profile,
            created_at=now, updated_at=now)
        known = await self._known(transaction)
        if known is not None:  # the same request sent again: the same answer
            return await self._answer(ra, request, signed.signer, opened, known)
        try:
            return await self._decide(endpoint, ra, signed, request, opened, transaction)
        except ScepFailure as failure:
            if failure.remember:
                await self._remember_failure(transaction, failure, request)
            raise

    async def _decide(self, endpoint: Endpoint, ra: _Ra, signed: SignedContent,
                      request: _Request, opened: Opened, transaction: ScepTransaction
                      ) -> bytes:
        try:
            csr = parse_csr(opened.content)
        except CAError as exc:
            raise ScepFailure(FailInfo.BAD_REQUEST, f"not a PKCS#10 request: {exc}") from None
        policy = await self.store.get_scep_endpoint(endpoint.org_id, endpoint.profile)
        # The endpoint's organization as stored now: a disabled one's challenges, static
        # secrets and renewals stop at once, in every process, before a challenge is spent
        # or a request queued. Not remembered: the same request works once it is enabled.
        try:
            await self.authority.credential_org(endpoint.org_id)
        except Unauthorized:
            raise ScepFailure(FailInfo.BAD_REQUEST, "the organization is disabled",
                              remember=False) from None
        renewing = None
        if _renewal_like(request, signed.signer):
            renewing = await self._renewable(endpoint, signed.signer)
        if renewing is not None:  # signed by a live certificate of ours: no challenge
            consume, requester = None, f"certificate:{renewing.serial_hex}"
        else:
            consume, requester = await self._authenticate(endpoint, csr, request, policy)
        if policy is not None and policy.require_approval:
            return await self._queue(endpoint, ra, signed, request, opened, replace(
                transaction, status="pending", csr_der=opened.content, requester=requester),
                consume)
        store = self.store
        principal = Principal.enrollee("scep", requester, endpoint.org_id)

        async def record_with(cert: CertificateRecord, audit: AuditEvent) -> None:
            now = self.clock()
            outcome = await store.add_certificate_for_scep(
                cert, audit, replace(transaction, cert_id=cert.cert_id, requester=requester,
                                     created_at=now, updated_at=now), consume)
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
            return await self._recorded_meanwhile(ra, request, signed, opened, transaction)
        except (BadRequest, Forbidden, NotFound) as exc:
            raise ScepFailure(FailInfo.BAD_REQUEST, str(exc)) from None
        return await self._success(ra, request, signed.signer, opened, issued.certificate)

    async def _queue(self, endpoint: Endpoint, ra: _Ra, signed: SignedContent,
                     request: _Request, opened: Opened, pending: ScepTransaction,
                     consume: tuple[str, dt.datetime, AuditEvent] | None) -> bytes:
        """Manual approval (RFC 8894 3.3.2, 3.3.3): record the request, spending its
        challenge, and answer PENDING; the client polls with CertPoll (or sends the same
        request again) until an operator decides."""
        event = AuditEvent(
            event_type="scep.request_pending", category="scep", action="queue",
            actor_type="service", actor_id=f"scep:{pending.requester}",
            org_id=endpoint.org_id, resource_type="scep_transaction",
            resource_id=request.transaction_id, data={"profile": endpoint.profile})
        outcome = await self.store.record_scep_transaction(pending, event, consume)
        if outcome == "challenge_spent":
            raise ScepFailure(FailInfo.BAD_REQUEST, "the challenge is used or expired")
        if outcome == "transaction_taken":
            return await self._recorded_meanwhile(ra, request, signed, opened, pending)
        log.info("SCEP %s: PENDING approval", request.transaction_id[:64])
        return await self._reply(ra, request, PkiStatus.PENDING, b"")

    async def _recorded_meanwhile(self, ra: _Ra, request: _Request, signed: SignedContent,
                                  opened: Opened, transaction: ScepTransaction) -> bytes:
        """The transactionID was written by another request while this one was decided:
        the answer of a concurrent twin of this very request, or a refusal."""
        known = await self._known(transaction)
        if known is None:
            raise ScepFailure(FailInfo.BAD_REQUEST, "the transactionID is another request's",
                              remember=False)
        return await self._answer(ra, request, signed.signer, opened, known)

    async def _remember_failure(self, transaction: ScepTransaction, failure: ScepFailure,
                                request: _Request) -> None:
        """Keep a FAILURE with its transaction: the same request gets it again, and the
        transactionID stays its key's. Best effort: the FAILURE is answered either way."""
        failed = replace(transaction, status="failure", fail_info=failure.fail_info.value)
        event = AuditEvent(
            event_type="scep.request_failed", category="scep", action="refuse",
            actor_type="service", actor_id=f"scep:key:{transaction.key_fingerprint[:16]}",
            org_id=transaction.org_id, resource_type="scep_transaction",
            resource_id=request.transaction_id,
            data={"fail_info": failure.fail_info.name, "reason": str(failure)[:200],
                  "message_type": request.message_type})
        try:
            await self.store.record_scep_transaction(failed, event)
        except CAError as exc:  # the store failed: the client still gets its FAILURE
            log.warning("SCEP %s: the FAILURE was not recorded: %s",
                        request.transaction_id[:64], exc)

    async def _poll(self, endpoint: Endpoint, ra: _Ra, signed: SignedContent,
                    request: _Request) -> bytes:
        """CertPoll (RFC 8894 3.3.3, GetCertInitial): the state of the transaction its
        transactionID names, asked by the key that made it; the IssuerAndSubject content
        must parse, the transactionID is what identifies the request."""
        opened = await self._open(endpoint, ra, signed.content)
        try:
            attrs.IssuerAndSubject.load(opened.content, strict=True).native  # noqa: B018
        except Exception:  # asn1crypto reports malformed input in many types
            raise ScepFailure(FailInfo.BAD_REQUEST, "not an IssuerAndSubject") from None
        found = await self.store.get_scep_transaction(request.transaction_id)
        if found is None or found.org_id != endpoint.org_id or \
                found.profile not in (None, endpoint.profile):
            raise ScepFailure(FailInfo.BAD_CERT_ID, "no such transaction at this endpoint")
        key = signed.signer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if not hmac.compare_digest(found.key_fingerprint, hashlib.sha256(key).hexdigest()):
            raise ScepFailure(FailInfo.BAD_REQUEST, "the transactionID is another key's")
        return await self._answer(ra, request, signed.signer, opened, found)

    async def _answer(self, ra: _Ra, request: _Request, requester: x509.Certificate,
                      opened: Opened, transaction: ScepTransaction) -> bytes:
        """The reply a recorded transaction gets: its certificate, PENDING, or its
        FAILURE."""
        if transaction.status == "pending":
            return await self._reply(ra, request, PkiStatus.PENDING, b"")
        if transaction.status == "success":
            record = None if transaction.cert_id is None else \
                await self.authority.store.get_certificate_by_id(transaction.cert_id)
            if record is None:  # the store lost a row it committed: not the client's fault
                raise Unavailable("the issued certificate cannot be read")
            return await self._success(ra, request, requester, opened,
                                       x509.load_der_x509_certificate(record.certificate_der))
        try:
            fail = FailInfo(transaction.fail_info or FailInfo.BAD_REQUEST)
        except ValueError:
            fail = FailInfo.BAD_REQUEST
        detail = "an operator rejected this request" if transaction.status == "rejected" \
            else "this request failed before"
        raise ScepFailure(fail, detail, remember=False)

    async def _get(self, endpoint: Endpoint, ra: _Ra, signed: SignedContent,
                   request: _Request) -> bytes:
        """GetCert (3.3.3): the certificate an IssuerAndSerialNumber names; GetCRL
        (3.3.4): the full CRL of the CA that issued it. Both are public information, as on
        /ca and /crl; the reply is encrypted to the requester all the same (3.3.2)."""
        opened = await self._open(endpoint, ra, signed.content)
        try:
            wanted = asn1_cms.IssuerAndSerialNumber.load(opened.content, strict=True)
            issuer, serial = wanted["issuer"], wanted["serial_number"].native
        except Exception:  # asn1crypto reports malformed input in many types
            raise ScepFailure(FailInfo.BAD_REQUEST,
                              "not an IssuerAndSerialNumber") from None
        record, ca = None, None
        for name in endpoint.ca_names or (endpoint.ca_name,):
            candidate = await self.authority.ca(name)
            if issuer == asn1_x509.Name.load(
                    candidate.certificate.subject.public_bytes(serialization.Encoding.DER)):
                ca = candidate
        if ca is not None and isinstance(serial, int) and serial > 0:
            record = await self.authority.store.get_certificate(ca.record.ca_id,
                                                                serial_hex(serial))
        if ca is None or record is None or record.org_id != endpoint.org_id:
            raise ScepFailure(FailInfo.BAD_CERT_ID, "no such certificate of this CA")
        if request.message_type == MessageType.GET_CERT:
            content = certs_only([x509.load_der_x509_certificate(record.certificate_der)])
        else:
            crl = await self.authority.store.get_crl(ca.record.ca_id)
            if crl is None:
                raise ScepFailure(FailInfo.BAD_REQUEST, "no CRL is published yet")
            content = certs_only([], [x509.load_der_x509_crl(crl.crl_der)])
        return await self._envelope_reply(ra, request, signed.signer, opened, content)

    async def _known(self, transaction: ScepTransaction) -> ScepTransaction | None:
        """The stored transaction when it holds this very request; None when the request
        is new (or another of the same key); ScepFailure when the transactionID belongs to
        another key."""
        found = await self.store.get_scep_transaction(transaction.transaction_id)
        if found is None:
            return None
        if not hmac.compare_digest(found.key_fingerprint, transaction.key_fingerprint):
            raise ScepFailure(FailInfo.BAD_REQUEST,
                              "the transactionID was used with another key", remember=False)
        if found.request_fingerprint != transaction.request_fingerprint:
            if found.status == "pending":  # one request at a time waits for an operator
                raise ScepFailure(FailInfo.BAD_REQUEST, "the transactionID waits for an "
                                  "operator's decision on another request", remember=False)
            return None
        if found.status == "success" and found.cert_id is None:
            return None
        return found

    async def _renewable(self, endpoint: Endpoint, signer: x509.Certificate
                         ) -> CertificateRecord | None:
        """RenewalReq (RFC 8894 3.3.1.2), or a PKCSReq signed the same way (sscep): the
        record of the signer certificate when this
        endpoint's CA (or one it replaced in a rollover) issued it (the stored DER is the
        presented one) to this organization and it is neither revoked nor expired; None
        otherwise (a challenge is then needed, as for PKCSReq)."""
        ca = None
        for name in endpoint.ca_names or (endpoint.ca_name,):
            candidate = await self.authority.ca(name)
            if signer.issuer == candidate.certificate.subject:
                ca = candidate
        if ca is None:
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
                            request: _Request, policy: ScepEndpointPolicy | None
                            ) -> tuple[tuple[str, dt.datetime, AuditEvent] | None, str]:
        """The challenge to spend (None for a static one) and who the requester is: a
        one-time challenge of the endpoint, its static secret (``vcc-pki scep secret
        set``), or VCC_PKI_SCEP_CHALLENGE on the default endpoint."""
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
            if policy is not None and policy.secret_hash is not None and \
                    await self._static_matches(password, policy.secret_hash):
                return None, "static"
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

    async def _static_matches(self, password: str, stored: str) -> bool:
        if len(password) > MAX_SECRET_LENGTH:
            return False
        quick = hashlib.sha256(password.encode()).digest()
        known = self._static_ok.get(stored)
        if known is not None:
            return hmac.compare_digest(known, quick)
        if not await asyncio.to_thread(static_secret_matches, password, stored):
            return False
        if len(self._static_ok) >= 256:  # secrets replaced over time: forget old ones
            self._static_ok.clear()
        self._static_ok[stored] = quick
        return True

    async def _open(self, endpoint: Endpoint, ra: _Ra, content: bytes) -> Opened:
        """The envelope decrypted by the current RA key, or by an older RA certificate of
        the organization's CAs that is still valid (a client that fetched GetCACert before
        a renewal of the RA, or before a rollover of the CA)."""
        try:
            try:
                return await open_enveloped(content, ra.signer, ra.certificate,
                                            allow_des=self.settings.accept_single_des)
            except NoRecipient:
                for older, signer in await self._older_ras(endpoint, ra):
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

    async def _older_ras(self, endpoint: Endpoint, ra: _Ra
                         ) -> list[tuple[x509.Certificate, Signer]]:
        backend = self.authority.keys
        now = self.clock()
        found = []
        records = list(await self.store.list_scep_ra(ra.record.ca_id))
        for name in endpoint.ca_names:
            other = (await self.authority.ca(name)).record.ca_id
            if other != ra.record.ca_id:
                records += await self.store.list_scep_ra(other)
        for record in records:
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
        # FAILURE and PENDING carry no pkcsPKIEnvelope (3.3.2): an empty eContent. Not
        # none at all: OpenSSL's PKCS7_verify (certmonger's scep-submit) refuses a
        # SignedData without eContent ("no content") and reads the reply as unreachable.
        return await ra.cms.sign(content, "data", signed_attrs=signed_attrs)

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


def _request_fingerprint(request: _Request, signed: SignedContent, opened: Opened) -> str:
    """What makes two messages of one transactionID (and key) the same request: the
    PKCS#10, and for RenewalReq the certificate that signs it (the credential: a RenewalReq
    of the certificate this transaction got is a new request; PKCS#1 v1.5 signatures are
    deterministic, so its PKCS#10 may be byte for byte the first one). A PKCSReq's
    self-signed certificate is not part of it: certmonger makes a new one for every
    message, also when it resends the request while it is PENDING."""
    digest = hashlib.sha256(opened.content)
    if _renewal_like(request, signed.signer):
        digest.update(signed.signer.public_bytes(serialization.Encoding.DER))
    return digest.hexdigest()


def _renewal_like(request: _Request, signer: x509.Certificate) -> bool:
    """A RenewalReq, or a PKCSReq signed by a certificate that is not self-issued: sscep
    renews that way (PKCSReq signed with -O/-K, the old certificate and key), as the SCEP
    drafts before RFC 8894 described renewal."""
    return request.message_type == MessageType.RENEWAL_REQ or signer.issuer != signer.subject


def _check_static_secret(secret: str) -> None:
    """A static challenge must fit a challengePassword (RFC 2985 5.4.1) and be more than a
    word: 8 to 255 printable characters."""
    if not 8 <= len(secret) <= MAX_SECRET_LENGTH or not secret.isprintable():
        raise BadRequest(f"a static challenge is 8 to {MAX_SECRET_LENGTH} printable "
                         "characters")


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
