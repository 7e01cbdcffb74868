"""Code signing with time-stamps (issue 14): detached CMS signatures over artifacts' hashes.

A caller (role ``code_signer``, permission ``signature:create``) sends the hash of an
artifact (a Python package, LoRA adapter, pipeline config, UI bundle, container image or
Helm chart); the file never reaches the server. ``CodeSigningService.sign`` answers a
detached CMS SignedData (RFC 5652 5, made by ``ca_core.cms``) whose signed attributes are
contentType (id-data), messageDigest (= the given hash, 11.2) and signingTime (11.3), signed
by the organization's code-signing key, and whose unsigned attribute
id-aa-signatureTimeStampToken (1.2.840.113549.1.9.16.2.14, RFC 3161 Appendix A) holds a
time-stamp token from this gateway's TSA (``ca_core.tsa``) over the signature value. It is
what ``openssl cms -verify -binary -content FILE`` checks.

Each organization has one code-signing key at a time (``code_signers``): made in the key
backend (software or PKCS#11, the CA keys' backend) on first use or by ``vcc-pki signer
ensure``, certified by the organization's issuing CA with the ``code_signing`` profile
(EKU codeSigning), and replaced by a new key and certificate within RENEW_BEFORE of expiry or
once revoked. Every signature is recorded (``vcc_code_signatures``) with its audit event.

``check_signature`` is the one verification, used by the REST verify endpoint and offline by
``vcc-pki verify``: the CMS signature over the hash, the signer's path to a trusted root
with the codeSigning EKU, the time-stamp (its own signature, its imprint over the
signature value, the TSA's path with the timeStamping EKU, all at its genTime), and
revocation where the caller knows it. A signature whose certificate has expired, or was
revoked after the time-stamp (its invalidity date when given), is "valid at signing time":
the time-stamp proves the signature existed while the certificate was good (RFC 3161
Appendix A).

Errors: bad input is a BadRequest (``InvalidArtifact``); another organization is Forbidden
(and audited); a signature whose signer this caller may not see is NotFound (audited).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import secrets
import string
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms as asn1_cms
from asn1crypto import tsp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca_core import cms as cms_core
from ca_core import x509build
from ca_core.authority import Authority, IssuanceRequest, serial_display, serial_hex
from ca_core.errors import BadRequest, Forbidden, NotFound, Unavailable
from ca_core.keys import KeySpec
from ca_core.principal import Principal
from ca_core.records import (
    AuditEvent,
    CertificateRecord,
    CodeSignatureRecord,
    CodeSignerRecord,
    Organization,
)
from ca_core.signers.base import KeyBackendError
from ca_core.signing import Purpose, SigningKey
from ca_core.storage import StoreConflict
from ca_core.tsa import HASH_ALGORITHMS, TimeStampAuthority, TimeStampQuery

log = logging.getLogger(__name__)

# The seed's vcc_code_signatures.artifact_type values.
ARTIFACT_TYPES = ("python_package", "lora_adapter", "pipeline_config", "ui_bundle",
                  "docker_image", "helm_chart")
# Digest octets of the hashes an artifact may be given in.
DIGEST_LENGTHS = {"sha256": 32, "sha512": 64}
SIGNATURE_TIME_STAMP_TOKEN = "1.2.840.113549.1.9.16.2.14"  # id-aa-signatureTimeStampToken
_TST_INFO = "1.2.840.113549.1.9.16.1.4"
SIGNER_PROFILE = "code_signing"
SIGNER_KEY = KeySpec.parse("ec-p256")
# A new key and certificate this long before the current one expires: a signature is
# checked against its certificate's validity at its time-stamp, so none is made with a
# certificate about to end.
RENEW_BEFORE = dt.timedelta(days=30)
MAX_NAME = 1000  # the seed's artifact_path VARCHAR(1000)
MAX_METADATA_BYTES = 8192
_HEX = frozenset(string.hexdigits)


class InvalidArtifact(BadRequest):
    """The request to sign or verify is not usable (type, hash, name, metadata)."""

    kind = "bad_artifact"


# ---------------------------------------------------------------------------- requests


def parse_digest(hash_hex: str, hash_algorithm: str) -> bytes:
    """The digest a hex string spells for ``hash_algorithm``; InvalidArtifact otherwise."""
    length = DIGEST_LENGTHS.get(hash_algorithm)
    if length is None:
        raise InvalidArtifact(f"hash_algorithm must be one of {', '.join(DIGEST_LENGTHS)}")
    if not hash_hex or not set(hash_hex) <= _HEX:
        raise InvalidArtifact("hash must be hexadecimal")
    if len(hash_hex) != 2 * length:
        raise InvalidArtifact(f"a {hash_algorithm} hash has {2 * length} hex digits, "
                              f"not {len(hash_hex)}")
    return bytes.fromhex(hash_hex)


@dataclass(frozen=True, slots=True)
class SignRequest:
    hash_hex: str
    artifact_type: str
    name: str
    hash_algorithm: str = "sha256"
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    organization: str | None = None  # slug; None: the caller's own

    def checked(self) -> tuple[bytes, str]:
        """The digest and the normalised hex; InvalidArtifact for anything unusable."""
        digest = parse_digest(self.hash_hex, self.hash_algorithm)
        if self.artifact_type not in ARTIFACT_TYPES:
            raise InvalidArtifact(
                f"artifact_type must be one of {', '.join(ARTIFACT_TYPES)}")
        if not self.name or len(self.name) > MAX_NAME or not self.name.isprintable():
            raise InvalidArtifact(f"name must be 1 to {MAX_NAME} printable characters")
        try:
            # allow_nan=False: NaN and Infinity are not JSON (PostgreSQL's jsonb refuses them)
            encoded = json.dumps(self.metadata, ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
            raise InvalidArtifact("metadata must be a JSON object of text") from None
        if len(encoded) > MAX_METADATA_BYTES or "\\u0000" in encoded.decode():
            raise InvalidArtifact(f"metadata must be at most {MAX_METADATA_BYTES} bytes of "
                                  "JSON without NUL characters")
        return digest, digest.hex()


# ---------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class TimeStampInfo:
    time: dt.datetime  # genTime
    serial: str  # as openssl prints it
    tsa: str  # the TSA certificate's subject


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of ``check_signature``. ``status``: valid | valid_at_signing_time |
    invalid."""

    status: str
    reasons: tuple[str, ...]
    signer: x509.Certificate | None = None
    signing_time: dt.datetime | None = None  # the signingTime attribute
    time_stamp: TimeStampInfo | None = None

    @property
    def valid(self) -> bool:
        return self.status != "invalid"


@dataclass(frozen=True, slots=True)
class RevocationInfo:
    revoked_at: dt.datetime
    reason: str | None = None
    invalidity_date: dt.datetime | None = None

    @property
    def effective(self) -> dt.datetime:
        """From when signatures are no longer trusted: the invalidity date (when the key
        is known to have been compromised) when given, else the revocation time."""
        return self.invalidity_date or self.revoked_at


def _eku_validator(wanted: x509.ObjectIdentifier) -> Any:
    def check(policy: Any, certificate: x509.Certificate, extension: Any) -> None:
        if wanted not in list(extension):
            raise ValueError(f"the certificate lacks the {wanted._name} extended key usage")
    return check


def validate_path(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                  roots: Sequence[x509.Certificate], at: dt.datetime,
                  eku: x509.ObjectIdentifier) -> None:
    """Raise ValueError unless ``leaf`` chains to one of ``roots`` through
    ``intermediates`` with every certificate valid at ``at`` and ``eku`` on the leaf
    (cryptography's RFC 5280 path validation; CA certificates under the Web PKI profile)."""
    if not roots:
        raise ValueError("no trusted root")
    ee_policy = verification.ExtensionPolicy.permit_all().require_present(
        x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, _eku_validator(eku))
    verifier = (verification.PolicyBuilder().store(verification.Store(list(roots)))
                .time(at).extension_policies(
                    ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                    ee_policy=ee_policy)
                .build_client_verifier())
    try:
        verifier.verify(leaf, [c for c in intermediates if c != leaf])
    except verification.VerificationError as exc:
        raise ValueError(str(exc).split(" (encountered", 1)[0]) from None
    except Exception as exc:  # a certificate the verifier cannot read at all
        raise ValueError(f"the certificate path cannot be checked: {exc}") from None


def _signing_time(signed: cms_core.SignedDigest) -> dt.datetime | None:
    values = signed.signed_attrs.get("1.2.840.113549.1.9.5")
    try:
        return values[0].chosen.native.astimezone(dt.UTC) if values else None
    except Exception:  # a malformed value: the signature still verified; no time shown
        return None


def _check_time_stamp(signed: cms_core.SignedDigest, roots: Sequence[x509.Certificate]
                      ) -> TimeStampInfo:
    """The one time-stamp token over the signature value, verified; ValueError why not."""
    tokens = signed.unsigned_attrs.get(SIGNATURE_TIME_STAMP_TOKEN, ())
    if len(tokens) != 1:
        raise ValueError("no time-stamp" if not tokens else "more than one time-stamp")
    try:
        token = tokens[0].dump()
        content = cms_core.verify_signed(token)
        if content.content_type != _TST_INFO:
            raise ValueError("the time-stamp token does not hold a TSTInfo")
        info = tsp.TSTInfo.load(content.content)
        imprint = info["message_imprint"]
        algorithm = imprint["hash_algorithm"]["algorithm"].native
        hashed = imprint["hashed_message"].native
        gen_time: dt.datetime = info["gen_time"].native.astimezone(dt.UTC)
        serial = info["serial_number"].native
    except cms_core.CmsError as exc:
        raise ValueError(f"the time-stamp token does not verify: {exc}") from None
    except ValueError:
        raise
    except Exception:  # asn1crypto: a malformed TSTInfo
        raise ValueError("the time-stamp token is malformed") from None
    if algorithm not in HASH_ALGORITHMS or algorithm in ("sha1",) or \
            hashlib.new(algorithm, signed.signature).digest() != hashed:
        raise ValueError("the time-stamp is not over this signature")
    try:
        validate_path(content.signer, content.certificates, roots, gen_time,
                      ExtendedKeyUsageOID.TIME_STAMPING)
    except ValueError as exc:
        raise ValueError(f"the time-stamping authority is not trusted: {exc}") from None
    return TimeStampInfo(gen_time, serial_display(serial_hex(serial)),
                         content.signer.subject.rfc4514_string())


def check_signature(signature: bytes, digest: bytes, hash_algorithm: str,
                    roots: Sequence[x509.Certificate], now: dt.datetime,
                    revocation: RevocationInfo | None = None) -> Verdict:
    """Verify a code signature over an artifact whose ``hash_algorithm`` hash is
    ``digest``, trusting ``roots``; see the module docstring for what "valid at signing
    time" means. Never raises for a bad signature: the verdict says why."""
    try:
        signed = cms_core.verify_signed_digest(signature, digest, hash_algorithm)
    except cms_core.CmsError as exc:
        return Verdict("invalid", (f"the signature does not verify: {exc}",))
    signer = signed.signer
    signing_time = _signing_time(signed)
    reasons: list[str] = []
    time_stamp: TimeStampInfo | None = None
    try:
        time_stamp = _check_time_stamp(signed, roots)
    except ValueError as exc:
        reasons.append(str(exc))
        if str(exc) != "no time-stamp":
            # A token that is there but does not hold: the signature was altered.
            return Verdict("invalid", tuple(reasons), signer, signing_time)
    try:
        validate_path(signer, signed.certificates, roots, now,
                      ExtendedKeyUsageOID.CODE_SIGNING)
        valid_now, why_not_now = True, ""
    except ValueError as exc:
        valid_now, why_not_now = False, str(exc)
    revoked_after_stamp = False
    if revocation is not None:
        if time_stamp is not None and time_stamp.time < revocation.effective:
            revoked_after_stamp = True
            reasons.append(f"the certificate was revoked ({revocation.reason or 'unspecified'})"
                           f" on {revocation.effective:%Y-%m-%d %H:%M:%S} UTC, after the "
                           "time-stamp")
        else:
            return Verdict("invalid", (*reasons, "the certificate was revoked "
                                       f"({revocation.reason or 'unspecified'}) before the "
                                       "signature was time-stamped"),
                           signer, signing_time, time_stamp)
    if valid_now and not revoked_after_stamp:
        return Verdict("valid", tuple(reasons), signer, signing_time, time_stamp)
    if not valid_now:
        reasons.append(f"the certificate is not valid now: {why_not_now}")
    if time_stamp is None:
        return Verdict("invalid", tuple(reasons), signer, signing_time)
    try:
        validate_path(signer, signed.certificates, roots, time_stamp.time,
                      ExtendedKeyUsageOID.CODE_SIGNING)
    except ValueError as exc:
        reasons.append(f"the certificate was not valid at the time-stamp: {exc}")
        return Verdict("invalid", tuple(reasons), signer, signing_time, time_stamp)
    return Verdict("valid_at_signing_time", tuple(reasons), signer, signing_time, time_stamp)


def revocation_in_crl(certificate: x509.Certificate,
                      crls: Sequence[x509.CertificateRevocationList],
                      issuers: Sequence[x509.Certificate]) -> RevocationInfo | None:
    """The revocation of ``certificate`` in one of ``crls`` whose signature verifies with
    its issuer among ``issuers`` (offline checks: ``vcc-pki verify --crl``)."""
    for crl in crls:
        if crl.issuer != certificate.issuer:
            continue
        issuer = next((c for c in issuers if c.subject == crl.issuer), None)
        if issuer is None or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            continue
        entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        if entry is None:
            continue
        reason = invalidity = None
        for extension in entry.extensions:
            if isinstance(extension.value, x509.CRLReason):
                reason = extension.value.reason.name
            elif isinstance(extension.value, x509.InvalidityDate):
                invalidity = extension.value.invalidity_date_utc
        return RevocationInfo(entry.revocation_date_utc, reason, invalidity)
    return None


def check_signature_offline(signature: bytes, content_hash: Callable[[str], bytes],
                            roots: Sequence[x509.Certificate], now: dt.datetime,
                            crls: Sequence[x509.CertificateRevocationList] = ()
                            ) -> tuple[str, Verdict]:
    """``check_signature`` for a relying party with the file, the root and perhaps CRLs
    (``vcc-pki verify``): ``content_hash(name)`` hashes the file with the signature's own
    hash (sha256 or sha512); revocation is what ``crls`` say. Returns the hash used."""
    try:
        hash_algorithm = cms_core.signer_digest_algorithm(signature)
    except cms_core.CmsError as exc:
        return "", Verdict("invalid", (f"not a CMS signature: {exc}",))
    if hash_algorithm not in DIGEST_LENGTHS:
        return hash_algorithm, Verdict("invalid", (f"unsupported hash {hash_algorithm}",))
    digest = content_hash(hash_algorithm)
    verdict = check_signature(signature, digest, hash_algorithm, roots, now)
    if verdict.signer is None or not crls:
        return hash_algorithm, verdict
    try:
        carried = cms_core.verify_signed_digest(signature, digest, hash_algorithm).certificates
    except cms_core.CmsError:
        return hash_algorithm, verdict
    revocation = revocation_in_crl(verdict.signer, crls, [*carried, *roots])
    if revocation is None:
        return hash_algorithm, verdict
    return hash_algorithm, check_signature(signature, digest, hash_algorithm, roots, now,
                                           revocation)


# ---------------------------------------------------------------------------- the service


@dataclass(frozen=True, slots=True)
class SignedArtifact:
    record: CodeSignatureRecord
    created: bool  # False: the same artifact was signed with this certificate before
    certificate: x509.Certificate


@dataclass(frozen=True, slots=True)
class Verification:
    verdict: Verdict
    record: CodeSignatureRecord | None  # the stored signature, when this one is recorded


@dataclass(slots=True)
class _OrgSigner:
    record: CodeSignerRecord
    certificate: x509.Certificate
    signed_data: cms_core.SignedDataSigner
    signing_key: SigningKey


class CodeSigningService:
    """Signs artifacts' hashes with each organization's code-signing key and time-stamps
    the signatures with the gateway's TSA; verifies them. Stateless across processes: the
    signer of an organization is read from the store (and cached until it is due)."""

    def __init__(self, authority: Authority, tsa: TimeStampAuthority,
                 renew_before: dt.timedelta = RENEW_BEFORE) -> None:
        self.authority = authority
        self.store = authority.store
        self.tsa = tsa
        self.renew_before = renew_before
        self._signers: dict[str, _OrgSigner] = {}
        self._lock = asyncio.Lock()
        self._tsa_open = False

    # -- the signer ---------------------------------------------------------------------

    async def ensure_signer(self, org: Organization, principal: Principal | None = None
                            ) -> tuple[CodeSignerRecord, bool]:
        """The organization's code-signing key and certificate, made when it has none valid
        for longer than ``renew_before``; whether it is new. Idempotent."""
        principal = principal or Principal.system("vcc-pki code signing")
        async with self._lock:
            now = self.authority.clock()
            current = await self.store.list_code_signers(org.org_id)
            for candidate in current:
                if candidate.not_before <= now and \
                        candidate.not_after - now > self.renew_before and \
                        await self._active(candidate):
                    return candidate, False
            spec = SIGNER_KEY
            signer = await asyncio.to_thread(
                self.authority.keys.generate, spec,
                f"vcc-codesign-{org.slug}-{secrets.token_hex(4)}"[:100])
            subject = x509build.name(f"{org.name or org.slug} Code Signing",
                                     organization=self.authority.settings.organization_name)
            csr_builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
            csr = await signer.run(lambda: csr_builder.sign(
                signer.builder_key(), spec.hash_algorithm))  # type: ignore[arg-type]
            issued = await self.authority.issue(
                IssuanceRequest(csr=csr.public_bytes(serialization.Encoding.DER),
                                profile=SIGNER_PROFILE, org=org.slug), principal)
            record = CodeSignerRecord(
                signer_id=str(uuid.uuid4()), org_id=org.org_id, cert_id=issued.record.cert_id,
                key_ref=signer.key_ref, key_backend=self.authority.keys.name,
                not_before=issued.record.not_before, not_after=issued.record.not_after,
                created_at=now)
            await self.store.add_code_signer(record, AuditEvent(
                event_type="code_signer.renewed" if current else "code_signer.created",
                category="signature", action="create_code_signer",
                actor_type=principal.actor_type, actor_id=principal.actor_id,
                org_id=org.org_id, resource_type="code_signer", resource_id=record.signer_id,
                data={"serial": issued.record.serial_hex, "key": str(spec),
                      "key_backend": record.key_backend,
                      "not_after": record.not_after.isoformat(),
                      "replaces": current[0].signer_id if current else None}))
            self._signers.pop(org.org_id, None)
            return record, True

    async def _signer(self, org: Organization) -> _OrgSigner:
        now = self.authority.clock()
        loaded = self._signers.get(org.org_id)
        # One keyed read per signature: a revocation in any process stops the key at once.
        if loaded is not None and loaded.record.not_after - now > self.renew_before and \
                await self._active(loaded.record):
            return loaded
        record, _ = await self.ensure_signer(org)
        cert = await self.store.get_certificate_by_id(record.cert_id)
        if cert is None:
            raise Unavailable("the code-signing certificate is missing from the store")
        try:
            key = await asyncio.to_thread(self.authority.keys.load, record.key_ref)
        except KeyBackendError as exc:
            log.error("cannot open the code-signing key of %s: %s", org.slug, exc)
            raise Unavailable("the code-signing key is not available") from exc
        certificate = x509.load_der_x509_certificate(cert.certificate_der)
        issuer = await self.authority.ca_by_id(cert.issuer_ca_id)
        loaded = _OrgSigner(
            record, certificate,
            cms_core.SignedDataSigner(key, certificate, certificates=(certificate,
                                                                      *issuer.chain)),
            SigningKey(f"code-signing:{org.slug}", key, certificate))
        self._signers[org.org_id] = loaded
        return loaded

    async def _active(self, signer: CodeSignerRecord) -> bool:
        """Whether the signer's certificate is not revoked (a revoked one signs nothing
        more: the next signature gets a new key and certificate)."""
        cert = await self.store.get_certificate_by_id(signer.cert_id)
        return cert is not None and cert.status == "active"

    async def _time_stamp(self, signature: bytes) -> tuple[bytes, str, str]:
        """An RFC 3161 token over the signature value (RFC 3161 Appendix A), with certReq
        so that it carries the TSA's chain: the token, its serial and its TSA."""
        if not self._tsa_open:
            await self.tsa.open()
            self._tsa_open = True
        stamped = await self.tsa.timestamp(TimeStampQuery(
            hash_oid=HASH_ALGORITHMS["sha256"].oid,
            hashed_message=hashlib.sha256(signature).digest(), cert_req=True))
        return stamped.token, stamped.record.serial_hex, stamped.record.tsa_ca_id

    # -- signing ------------------------------------------------------------------------

    async def sign(self, request: SignRequest, principal: Principal) -> SignedArtifact:
        """Sign the artifact's hash for the caller's organization (or the one named, if
        the caller sees it); see the module docstring."""
        authority = self.authority
        if not principal.can("signature:create"):
            await authority.denied(principal, "signature:create", "signature", None,
                                   {"organization": request.organization})
            raise Forbidden("this credential may not sign")
        digest, hash_hex = request.checked()
        org = await authority._active_org(await authority._org_for(
            request.organization, principal, "signature:create"))
        signer = await self._signer(org)
        existing = await self.store.find_code_signature(hash_hex, signer.record.cert_id)
        if existing is not None:
            return await self._repeated(existing, signer, principal)
        now = authority.clock()
        stamp: list[tuple[bytes, str, str]] = []

        async def countersign(signature: bytes) -> list[Any]:
            stamp.append(await self._time_stamp(signature))
            return [cms_core.attribute("signature_time_stamp_token",
                                       [asn1_cms.ContentInfo.load(stamp[0][0])])]

        signed_data = signer.signed_data
        signature = await signer.signing_key.signing(
            Purpose.CODE, lambda: signed_data.sign_digest(
                digest, request.hash_algorithm, signing_time=now, countersign=countersign))
        token, tsa_serial, tsa_ca_id = stamp[0]
        algorithm = (f"ecdsa-with-{request.hash_algorithm.upper()}"
                     if signer.signed_data.signer.key_spec.algorithm.value == "ECDSA"
                     else f"{request.hash_algorithm}WithRSAEncryption")
        record = CodeSignatureRecord(
            signature_id=str(uuid.uuid4()), org_id=org.org_id, cert_id=signer.record.cert_id,
            artifact_type=request.artifact_type, artifact_name=request.name,
            artifact_hash=hash_hex, hash_algorithm=request.hash_algorithm,
            signature_der=signature, signature_algorithm=algorithm,
            timestamp_token=token, tsa_ca_id=tsa_ca_id, metadata=request.metadata,
            signed_at=now, created_at=now)
        event = AuditEvent(
            event_type="code_signature.created", category="signature", action="sign",
            actor_type=principal.actor_type, actor_id=principal.actor_id, org_id=org.org_id,
            resource_type="code_signature", resource_id=record.signature_id,
            data={"artifact_type": record.artifact_type, "name": record.artifact_name,
                  "hash": hash_hex, "hash_algorithm": record.hash_algorithm,
                  "signer_serial": serial_hex(signer.certificate.serial_number),
                  "timestamp_serial": tsa_serial})
        try:
            await self.store.add_code_signature(record, event)
        except StoreConflict:  # signed at the same moment by another request
            existing = await self.store.find_code_signature(hash_hex, signer.record.cert_id)
            if existing is None:
                raise
            return await self._repeated(existing, signer, principal)
        return SignedArtifact(record, True, signer.certificate)

    async def _repeated(self, existing: CodeSignatureRecord, signer: _OrgSigner,
                        principal: Principal) -> SignedArtifact:
        await self.store.append_audit(AuditEvent(
            event_type="code_signature.returned", category="signature", action="sign",
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            org_id=existing.org_id, resource_type="code_signature",
            resource_id=existing.signature_id,
            data={"hash": existing.artifact_hash, "name": existing.artifact_name}))
        return SignedArtifact(existing, False, signer.certificate)

    # -- verification -------------------------------------------------------------------

    async def roots(self) -> list[x509.Certificate]:
        return [x509.load_der_x509_certificate(r.certificate_der)
                for r in await self.store.list_cas() if r.ca_type == "root"]

    async def verify(self, signature: bytes, hash_hex: str, hash_algorithm: str,
                     principal: Principal) -> Verification:
        """Check a signature made for the caller's organization against the artifact's
        hash; counts a successful check on the stored signature. A signature whose signer
        certificate is not one of the caller's organization is NotFound (audited)."""
        authority = self.authority
        if not principal.can("signature:verify"):
            await authority.denied(principal, "signature:verify", "signature", None)
            raise Forbidden("this credential may not verify signatures")
        digest = parse_digest(hash_hex, hash_algorithm)
        try:
            claimed = cms_core.unverified_signer_certificate(signature)
        except cms_core.CmsError as exc:
            raise InvalidArtifact(f"signature: {exc}") from None
        cert = await self._signer_record(claimed, principal)
        if cert is None:
            await authority.denied(principal, "signature:verify", "signature",
                                   serial_hex(claimed.serial_number))
            raise NotFound("no signature of this organization's code-signing keys")
        revocation = None if cert.revoked_at is None else RevocationInfo(
            cert.revoked_at, cert.revocation_reason, cert.invalidity_date)
        now = authority.clock()
        verdict = check_signature(signature, digest, hash_algorithm, await self.roots(), now,
                                  revocation)
        stored = await self.store.find_code_signature(digest.hex(), cert.cert_id)
        event = AuditEvent(
            event_type="code_signature.verified", category="signature", action="verify",
            actor_type=principal.actor_type, actor_id=principal.actor_id, org_id=cert.org_id,
            resource_type="code_signature",
            resource_id=None if stored is None else stored.signature_id,
            status="success" if verdict.valid else "failure",
            data={"hash": digest.hex(), "verdict": verdict.status,
                  "signer_serial": cert.serial_hex})
        if stored is not None and verdict.valid and stored.signature_der == signature:
            stored = await self.store.record_code_verification(stored.signature_id, now,
                                                               event) or stored
        else:
            await self.store.append_audit(event)
        return Verification(verdict, stored)

    async def _signer_record(self, claimed: x509.Certificate, principal: Principal
                             ) -> CertificateRecord | None:
        found = await self.store.find_certificates_by_serial(
            serial_hex(claimed.serial_number), principal.org_id, None)
        der = claimed.public_bytes(serialization.Encoding.DER)
        return next((c for c in found if c.certificate_der == der
                     and c.profile == SIGNER_PROFILE), None)
