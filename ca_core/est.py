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
    NotFound       an unknown label
    BadRequest     a CSR that does not parse or verify, a re-enroll whose subject or SAN
                   differs when the label does not allow it, a missing channel binding
    Forbidden      a credential of another organization than the label's
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

# API of this module (the EST work is built in two halves against it: this core with its
# store, and the wire front-end with its listener). Bodies follow in the core's commits.

DEFAULT_LABEL = ""  # the unlabelled /.well-known/est/ paths


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
    tls_unique: bytes | None = None  # RFC 7030 3.5; None on TLS 1.3
    remote: str = ""


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


class EstService:
    """The EST registration authority over the Authority; see the module docstring.

    Signatures are the contract between ``ca_core`` and ``protocols/est``.
    """

    # --- wire operations (protocols/est calls these) ----------------------------------

    async def resolve_label(self, label: str) -> EstLabel:
        """The label's mapping and policy; NotFound for an unknown label. ``""`` is the
        default label (the unlabelled paths), which always exists (the default
        organization, profile ``vcc_service``) unless configured otherwise."""
        raise NotImplementedError

    async def ca_certificates(self, label: str) -> tuple[x509.Certificate, ...]:
        """/cacerts (RFC 7030 4.1): the label's issuing CA, its chain and the root."""
        raise NotImplementedError

    async def csr_attributes(self, label: str) -> bytes:
        """/csrattrs (RFC 7030 4.5): DER CsrAttrs naming the profile's required attributes
        and the key type (RFC 8951 / RFC 9908 style, as openssl asn1parse shows it)."""
        raise NotImplementedError

    async def enroll(self, label: str, csr_der: bytes, credentials: EstCredentials
                     ) -> EnrollmentResult:
        """/simpleenroll (RFC 7030 4.2.1): authenticate per the label's policy (a used
        secret is consumed in the same transaction as the issuance or the pending
        request), check proof of possession and channel binding, then issue or queue."""
        raise NotImplementedError

    async def reenroll(self, label: str, csr_der: bytes, credentials: EstCredentials
                       ) -> EnrollmentResult:
        """/simplereenroll (RFC 7030 4.2.2): authenticated by the certificate being renewed
        (issued here, neither revoked nor expired); subject and SAN must match it unless
        the label allows changes; a new key is allowed (re-key)."""
        raise NotImplementedError

    async def server_keygen(self, label: str, csr_der: bytes, credentials: EstCredentials
                            ) -> EnrollmentResult:
        """/serverkeygen (RFC 7030 4.4): a software key of the label's key type (never a
        CA key), never stored; the certificate for the CSR's subject with that key; the
        key as PKCS#8, or encrypted to the client (CMS EnvelopedData) when asked."""
        raise NotImplementedError

    # --- operator operations (the CLI calls these) -------------------------------------

    async def set_label(self, label: EstLabel, principal: object) -> None:
        """Create or replace a label (``vcc-pki est label set``); audited."""
        raise NotImplementedError

    async def list_labels(self) -> list[EstLabel]:
        raise NotImplementedError

    async def create_secret(self, org: str, label: str, subject: str | None,
                            lifetime: dt.timedelta | None, principal: object) -> CreatedSecret:
        """``vcc-pki est secret create``: a user and a one-time password; audited."""
        raise NotImplementedError

    async def pending(self, org: str | None = None) -> list[PendingEnrollment]:
        raise NotImplementedError

    async def decide(self, request_id: str, approve: bool, principal: object
                     ) -> PendingEnrollment:
        """``vcc-pki est pending approve|reject``: approving issues the certificate, which
        the client's next identical request receives; audited."""
        raise NotImplementedError
