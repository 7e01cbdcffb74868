"""Cryptographic Message Syntax (RFC 5652): the one place that makes and reads CMS.

Time-stamp tokens (RFC 3161), SCEP messages (RFC 8894 3), EST server-generated keys and
CA certificate lists (RFC 7030 4.1.3, 4.4.2) and code signatures are CMS. This module:

- SignedData (RFC 5652 5). ``SignedDataSigner`` holds one signing key (a ``Signer``: a token
  key never leaves its token) and its certificate, and signs content with signed attributes
  (5.3: contentType and messageDigest always, 11.1 and 11.2; signingTime, 11.3, when asked;
  any others the caller passes) and unsigned attributes. The signer is identified by
  issuerAndSerialNumber (SignerInfo v1, what PKCS#7 tools such as ``openssl ts`` read) or by
  subjectKeyIdentifier (v3). The signature covers the DER SET OF signed attributes (5.4).
  ``sign_digest`` signs a digest the caller made (a detached code signature: the file
  never reaches the server) and takes unsigned attributes made over the signature value
  (an RFC 3161 signatureTimeStampToken); ``verify_signed_digest`` checks one against a
  digest.
  ``certs_only`` is the degenerate SignedData (5.1, 5.2 "no signers"): certificates and CRLs
  only. ``verify_signed`` checks a SignedData with one signer against a certificate it
  carries; it does no path validation (whom to trust is the caller's decision).
- EnvelopedData (RFC 5652 6). ``encrypt_enveloped`` encrypts content for RSA recipients by
  key transport (6.2.1; recipient by issuerAndSerialNumber), the content-encryption key
  wrapped with RSAES-PKCS1-v1_5 (RFC 3370 4.2.1) or RSAES-OAEP (RFC 3560 3), the content
  with AES-CBC (RFC 3565 4.1) and PKCS #7 padding (RFC 5652 6.3). ``decrypt_enveloped``
  reads the same and DES-EDE3-CBC (RFC 3370 5.1, still sent by old SCEP clients), and
  ``open_enveloped`` also says which key transport and cipher it used (a SCEP reply is
  encrypted in kind: ``encrypt_enveloped`` writes DES-EDE3-CBC for that alone), the RSA
  step through ``Signer.decrypt`` (in the token for an HSM key).

Algorithms of the signatures made here follow the key: ECDSA with SHA-256/384 (RFC 5753 7,
RFC 5758 3.2), RSA PKCS #1 v1.5 with SHA-256 under rsaEncryption (RFC 3370 3.2, what PKCS#7
tools expect). Not Ed25519 (RFC 8419): OpenSSL 3.0, the openssl of the supported platforms,
can neither make nor verify it in CMS (3.2 can), so nothing could check it.

Structures are built and parsed with asn1crypto's public API (its ``cms``, ``tsp`` and
``x509`` specs). The SignedData of ``SignedDataSigner.sign`` is on the TSA's hot path: it is
put together from parts asn1crypto encoded once per signer, with ``ca_core.der`` writing the
SEQUENCE and SET headers in RFC 5652's field order (see der.py for why and what it costs);
tests check it byte for byte against asn1crypto's constructors.

Errors: input that is not the CMS expected, or not usable, raises a CmsError (never an
asn1crypto or cryptography exception); a key that cannot be used raises the Signer's
KeyBackendError, which is the server's failure and not the message's.

    CAError
    └── BadRequest
        └── CmsError                  not the CMS structure expected, or unusable
            ├── UnsupportedAlgorithm  an algorithm (digest, signature, key transport,
            │                         content cipher) this module does not implement
            ├── NoRecipient           no RecipientInfo for the given certificate
            ├── DecryptFailed         the content does not decrypt with this key: one
            │                         error for every cause, wrong key or bad padding
            │                         (RFC 3218 2.3)
            └── BadSignature          a signature or message digest does not verify
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from asn1crypto import algos, cms, core, parser, tsp
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as block_padding
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs7

from ca_core import der
from ca_core.errors import BadRequest
from ca_core.keys import KeyAlgorithm
from ca_core.signers.base import (
    OAEP_HASHES,
    DecryptionFailed,
    RsaOaep,
    RsaPadding,
    Signer,
    UnsupportedKeyOperation,
    software_padding,
)

# ---------------------------------------------------------------------------- errors


class CmsError(BadRequest):
    """Not the CMS structure expected, or not usable (see the module docstring)."""

    kind = "bad_cms"


class UnsupportedAlgorithm(CmsError):
    kind = "bad_alg"


class NoRecipient(CmsError):
    kind = "no_recipient"


class DecryptFailed(CmsError):
    kind = "decrypt_failed"


class BadSignature(CmsError):
    kind = "bad_signature"


# ---------------------------------------------------------------------------- attributes

SignerIdKind = Literal["issuer_and_serial_number", "subject_key_identifier"]
ContentCipher = Literal["aes128_cbc", "aes192_cbc", "aes256_cbc", "tripledes_3key"]

# Set by SignedDataSigner itself (RFC 5652 11: one instance each).
_RESERVED_ATTRIBUTES = frozenset({
    "1.2.840.113549.1.9.3",  # contentType
    "1.2.840.113549.1.9.4",  # messageDigest
    "1.2.840.113549.1.9.5",  # signingTime
})
_DATA = "1.2.840.113549.1.7.1"
# Encoded once: the parts of every SignedData that never change.
_MESSAGE_DIGEST = cms.CMSAttributeType("message_digest").dump()
_DATA_DER = cms.ContentType("data").dump()
_V1 = cms.CMSVersion(1).dump()
_V3 = cms.CMSVersion(3).dump()


def attribute(type_: str, values: Sequence[Any]) -> Any:
    """A CMSAttribute (``cms.CMSAttribute``) of ``type_`` (an asn1crypto name or a dotted
    OID) with these values (asn1crypto values, or Python values asn1crypto converts for the
    types it knows), encoded once so that reusing it costs nothing."""
    built = cms.CMSAttribute({"type": type_, "values": list(values)})
    return cms.CMSAttribute.load(built.dump())


def _issuer_serial(certificate: Any) -> dict[str, Any]:
    return {"issuer": [asn1_x509.GeneralName({"directory_name": certificate.issuer})],
            "serial_number": certificate.serial_number}


def signing_certificate_v2(certificate: x509.Certificate) -> Any:
    """The signingCertificateV2 attribute (RFC 5035 3; RFC 5816 for time-stamps): an
    ESSCertIDv2 with the SHA-256 hash of ``certificate`` (the DEFAULT, so absent) and its
    issuer and serial."""
    cert_der = certificate.public_bytes(serialization.Encoding.DER)
    loaded = asn1_x509.Certificate.load(cert_der)
    ess = tsp.ESSCertIDv2({"cert_hash": hashlib.sha256(cert_der).digest(),
                           "issuer_serial": _issuer_serial(loaded)})
    return attribute("signing_certificate_v2", [{"certs": [ess]}])


def signing_certificate(certificate: x509.Certificate) -> Any:
    """The legacy signingCertificate attribute (RFC 2634 5.4: ESSCertID, a SHA-1 hash by
    definition); only old verifiers want it besides signingCertificateV2."""
    cert_der = certificate.public_bytes(serialization.Encoding.DER)
    loaded = asn1_x509.Certificate.load(cert_der)
    ess = tsp.ESSCertID({"cert_hash": hashlib.sha1(cert_der).digest(),
                         "issuer_serial": _issuer_serial(loaded)})
    return attribute("signing_certificate", [{"certs": [ess]}])


def _content_type_der(content_type: str) -> bytes:
    try:
        encoded: bytes = cms.ContentType(content_type).dump()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"unknown content type {content_type!r}") from exc
    return encoded


def _certificate_set(certificates: Iterable[x509.Certificate]) -> bytes:
    return der.set_of(c.public_bytes(serialization.Encoding.DER) for c in certificates)


# ---------------------------------------------------------------------------- SignedData


class SignedDataSigner:
    """One signing key and its certificate, ready to sign SignedData (RFC 5652 5).

    Everything that does not change from message to message (the signer identifier,
    algorithms, certificates, constant signed attributes) is encoded once here.
    ``certificates`` is what SignedData.certificates carries when a message includes them
    (usually the signer's certificate and its CAs); ``signed_attrs`` are signed attributes
    every message gets (for example ``signing_certificate_v2(certificate)``).
    """

    def __init__(
        self,
        signer: Signer,
        certificate: x509.Certificate,
        *,
        certificates: Sequence[x509.Certificate] = (),
        signed_attrs: Sequence[Any] = (),
        signer_id: SignerIdKind = "issuer_and_serial_number",
    ) -> None:
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if certificate.public_key().public_bytes(serialization.Encoding.DER, spki) != \
                signer.public_key.public_bytes(serialization.Encoding.DER, spki):
            raise ValueError("the certificate does not certify the signer's key")
        self.signer = signer
        self.certificate = certificate
        spec = signer.key_spec
        # Signer.sign hashes with the key's own digest, and RFC 5652 5.4 signs with the
        # SignerInfo's digestAlgorithm: so the two are the same.
        digest = spec.hash_algorithm
        if digest is None or spec.algorithm is KeyAlgorithm.ED25519:
            raise ValueError(f"CMS signatures need an RSA or ECDSA key, not {spec}")
        self.digest_name = digest.name
        signature_algorithm = (
            {"algorithm": f"{digest.name}_ecdsa"} if spec.algorithm is KeyAlgorithm.ECDSA
            # rsaEncryption: what RFC 3370 3.2 says signers use, and PKCS#7 tools expect.
            else {"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()})
        cert = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
        if signer_id == "subject_key_identifier":
            try:
                ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                raise ValueError("the certificate has no subjectKeyIdentifier") from None
            sid = cms.SignerIdentifier({"subject_key_identifier": ski.value.digest})
            version = 3  # RFC 5652 5.3
        else:
            tbs = cert["tbs_certificate"]
            sid = cms.SignerIdentifier({"issuer_and_serial_number": {
                "issuer": tbs["issuer"], "serial_number": tbs["serial_number"]}})
            version = 1
        self._signer_info_v3 = version == 3
        digest_algorithm = algos.DigestAlgorithm({"algorithm": self.digest_name}).dump()
        self._digest_algorithm = digest_algorithm
        self._digest_algorithms = der.set_of([digest_algorithm])
        # SignerInfo: version, sid, digestAlgorithm, (signedAttrs), signatureAlgorithm, ...
        self._signer_info_head = (
            cms.CMSVersion(version).dump() + sid.dump() + digest_algorithm)
        self._signature_algorithm = algos.SignedDigestAlgorithm(signature_algorithm).dump()
        self._certificates = der.implicit(0, _certificate_set(certificates)) \
            if certificates else None
        self._constant_attrs, self._constant_types = self._checked_attributes(signed_attrs)
        self._content_types: dict[str, tuple[bytes, bytes]] = {}
        self._signing_time: tuple[dt.datetime, bytes] | None = None
        self._signed_data_type = _content_type_der("signed_data")

    @staticmethod
    def _checked_attributes(attributes: Sequence[Any], taken: frozenset[str] = frozenset()
                            ) -> tuple[list[bytes], frozenset[str]]:
        """The encodings of ``attributes`` and their types; ValueError for a type that the
        signer sets itself or that appears twice (RFC 5652 5.3, 11)."""
        seen = set(taken)
        for attr in attributes:
            oid = attr["type"].dotted
            if oid in _RESERVED_ATTRIBUTES:
                raise ValueError(f"attribute {oid} is set by the signer itself")
            if oid in seen:
                raise ValueError(f"attribute {oid} appears twice")
            seen.add(oid)
        return [a.dump() for a in attributes], frozenset(seen)

    def _content_type(self, content_type: str) -> tuple[bytes, bytes]:
        """The DER content-type OID and the contentType attribute for it."""
        cached = self._content_types.get(content_type)
        if cached is None:
            oid = _content_type_der(content_type)
            attr = der.sequence(cms.CMSAttributeType("content_type").dump(), der.set_of([oid]))
            cached = self._content_types[content_type] = (oid, attr)
        return cached

    def _signing_time_attribute(self, when: dt.datetime) -> bytes:
        # signingTime has whole seconds: one attribute serves every message of that second.
        when = when.astimezone(dt.UTC).replace(microsecond=0)
        cached = self._signing_time
        if cached is None or cached[0] != when:
            # RFC 5652 11.3: UTCTime for 1950-2049, GeneralizedTime otherwise.
            choice = "utc_time" if 1950 <= when.year < 2050 else "generalized_time"
            attr = cms.CMSAttribute({"type": "signing_time",
                                     "values": [cms.Time({choice: when})]}).dump()
            cached = self._signing_time = (when, attr)
        return cached[1]

    async def sign(
        self,
        content: bytes,
        content_type: str = "data",
        *,
        signed_attrs: Sequence[Any] = (),
        unsigned_attrs: Sequence[Any] = (),
        signing_time: dt.datetime | None = None,
        include_certificates: bool = True,
        detached: bool = False,
    ) -> bytes:
        """The DER ContentInfo(SignedData) signing ``content`` of ``content_type`` (an
        asn1crypto name such as ``data`` or ``tst_info``, or a dotted OID).

        ``signed_attrs`` are added to the signer's constant ones; ``signing_time`` adds the
        signingTime attribute; ``detached`` leaves eContent out (5.2); without
        ``include_certificates`` the certificates are left out (a TSA without certReq).
        """
        oid, content_type_attr = self._content_type(content_type)
        attrs = [content_type_attr,
                 der.sequence(_MESSAGE_DIGEST,
                              der.set_of([der.octet_string(
                                  hashlib.new(self.digest_name, content).digest())])),
                 *self._constant_attrs]
        if signing_time is not None:
            attrs.append(self._signing_time_attribute(signing_time))
        if signed_attrs:
            attrs.extend(self._checked_attributes(signed_attrs, self._constant_types)[0])
        signed = der.set_of(attrs)
        # RFC 5652 5.4: the signature covers the DER of the SET OF signed attributes.
        signature = await self.signer.sign(signed)
        signer_info = der.sequence(
            self._signer_info_head,
            der.implicit(0, signed),
            self._signature_algorithm,
            der.octet_string(signature),
            der.implicit(1, der.set_of(a.dump() for a in unsigned_attrs))
            if unsigned_attrs else None,
        )
        # RFC 5652 5.1: v3 when eContentType is not id-data or a SignerInfo is v3.
        version = _V3 if oid != _DATA_DER or self._signer_info_v3 else _V1
        signed_data = der.sequence(
            version,
            self._digest_algorithms,
            der.sequence(oid, None if detached else der.explicit(0, der.octet_string(content))),
            self._certificates if include_certificates else None,
            der.set_of([signer_info]),
        )
        return der.sequence(self._signed_data_type, der.explicit(0, signed_data))

    async def sign_digest(
        self,
        digest: bytes,
        digest_name: str,
        *,
        signing_time: dt.datetime | None = None,
        countersign: Callable[[bytes], Awaitable[Sequence[Any]]] | None = None,
    ) -> bytes:
        """A detached SignedData (DER ContentInfo) over content of type id-data that the
        caller hashed: ``digest`` is its ``digest_name`` hash (sha256, sha384, sha512) and
        becomes the messageDigest attribute (RFC 5652 11.2); the signed attributes are
        signed with the same hash, as RFC 5652 5.4 and OpenSSL's verifier want (the
        SignerInfo's one digestAlgorithm covers both). ``countersign`` receives the
        signature value and returns unsigned attributes over it (an RFC 3161
        signatureTimeStampToken, RFC 3161 Appendix A)."""
        chosen = _HASHES.get(digest_name)
        if chosen is None or digest_name not in ("sha256", "sha384", "sha512"):
            raise UnsupportedAlgorithm(f"digest algorithm {digest_name} is not supported")
        size = chosen().digest_size
        if len(digest) != size:
            raise CmsError(f"a {digest_name} digest has {size} octets, "
                           f"not {len(digest)}")
        spec = self.signer.key_spec
        digest_algorithm = algos.DigestAlgorithm({"algorithm": digest_name}).dump()
        signature_algorithm = algos.SignedDigestAlgorithm(
            {"algorithm": f"{digest_name}_ecdsa"} if spec.algorithm is KeyAlgorithm.ECDSA
            else {"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()}).dump()
        oid, content_type_attr = self._content_type("data")
        attrs = [content_type_attr,
                 der.sequence(_MESSAGE_DIGEST, der.set_of([der.octet_string(digest)])),
                 *self._constant_attrs]
        if signing_time is not None:
            attrs.append(self._signing_time_attribute(signing_time))
        signed = der.set_of(attrs)
        key = self.signer.builder_key()
        if isinstance(key, ec.EllipticCurvePrivateKey):
            ec_key = key
            signature = await self.signer.run(
                lambda: ec_key.sign(signed, ec.ECDSA(chosen())))
        elif isinstance(key, rsa.RSAPrivateKey):
            rsa_key = key
            signature = await self.signer.run(
                lambda: rsa_key.sign(signed, rsa_padding.PKCS1v15(), chosen()))
        else:  # pragma: no cover - refused in __init__
            raise UnsupportedAlgorithm(f"CMS signatures need an RSA or ECDSA key, not {spec}")
        unsigned = list(await countersign(signature)) if countersign is not None else []
        # SignerInfo: version, sid, digestAlgorithm, signedAttrs, signatureAlgorithm,
        # signature, unsignedAttrs (RFC 5652 5.3).
        head = self._signer_info_head[:-len(self._digest_algorithm)] + digest_algorithm
        signer_info = der.sequence(
            head,
            der.implicit(0, signed),
            signature_algorithm,
            der.octet_string(signature),
            der.implicit(1, der.set_of(a.dump() for a in unsigned)) if unsigned else None,
        )
        signed_data = der.sequence(
            _V3 if self._signer_info_v3 else _V1,
            der.set_of([digest_algorithm]),
            der.sequence(oid, None),  # detached: no eContent (5.2)
            self._certificates,
            der.set_of([signer_info]),
        )
        return der.sequence(self._signed_data_type, der.explicit(0, signed_data))



async def sign_data(
    signer: Signer,
    certificate: x509.Certificate,
    content: bytes,
    content_type: str = "data",
    *,
    certificates: Sequence[x509.Certificate] = (),
    signed_attrs: Sequence[Any] = (),
    unsigned_attrs: Sequence[Any] = (),
    signing_time: dt.datetime | None = None,
    detached: bool = False,
) -> bytes:
    """One SignedData (DER ContentInfo); a ``SignedDataSigner`` is cheaper for many."""
    return await SignedDataSigner(signer, certificate, certificates=certificates).sign(
        content, content_type, signed_attrs=signed_attrs, unsigned_attrs=unsigned_attrs,
        signing_time=signing_time, detached=detached)


def certs_only(
    certificates: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> bytes:
    """The degenerate SignedData (RFC 5652 5.1: no signers, no content; "certs-only" of
    RFC 7030 4.1.3 and RFC 8894 3.4) carrying these certificates and CRLs (DER ContentInfo)."""
    if certificates and not crls:
        # Every enrollment and CA-certificates reply: the same bytes as below (both sort the
        # SET OF as DER wants), built in Rust in a twentieth of the time.
        built: bytes = pkcs7.serialize_certificates(list(certificates),
                                                    serialization.Encoding.DER)
        return built
    fields: dict[str, Any] = {
        "version": "v1",
        "digest_algorithms": [],
        "encap_content_info": {"content_type": "data"},
        "signer_infos": [],
    }
    if certificates:
        fields["certificates"] = [
            asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER))
            for c in certificates]
    if crls:
        fields["crls"] = [
            asn1_crl.CertificateList.load(c.public_bytes(serialization.Encoding.DER))
            for c in crls]
    encoded: bytes = cms.ContentInfo(
        {"content_type": "signed_data", "content": cms.SignedData(fields)}).dump()
    return encoded


# ---------------------------------------------------------------------------- reading

# asn1crypto parses lazily and reports malformed input with ValueError, TypeError,
# KeyError, IndexError, OverflowError or AttributeError, depending on where it trips, and
# cryptography adds its own (x509.InvalidVersion, DuplicateExtension, ...) for a malformed
# certificate in a message: while foreign input is read, any of them means "malformed".
_PARSE_ERRORS = (Exception,)


def _content_info(data: bytes, expected: str) -> Any:
    """The content of a DER (or BER) ContentInfo of type ``expected``; CmsError otherwise."""
    if not data:
        raise CmsError("empty CMS message")
    try:
        info = cms.ContentInfo.load(data, strict=True)
        content_type = info["content_type"].native
        content = info["content"]
    except _PARSE_ERRORS as exc:
        raise CmsError("not a CMS ContentInfo") from exc
    if content_type != expected:
        raise CmsError(f"a CMS {content_type}, not {expected}")
    if isinstance(content, core.Void):
        raise CmsError(f"the CMS {expected} has no content")
    return content


@dataclass(frozen=True, slots=True)
class SignedContent:
    """A SignedData whose one signature verified (``verify_signed``)."""

    content_type: str  # dotted OID
    content: bytes
    signer: x509.Certificate
    # Signed attributes by dotted OID: their values as asn1crypto parsed them (types it
    # does not know, such as SCEP's, are core.Any: ``.parse(spec)`` or ``.native``).
    signed_attrs: Mapping[str, tuple[Any, ...]]
    certificates: tuple[x509.Certificate, ...]  # all that the SignedData carries


@dataclass(frozen=True, slots=True)
class _ParsedSigner:
    sid_issuer: Any  # asn1crypto Name, or None for a subjectKeyIdentifier
    sid_serial: int | None
    sid_key_id: bytes | None
    digest: str
    signature_algo: str
    signature_hash: str | None
    signed_attrs_der: bytes | None  # with the SET OF tag, as signed
    signed_attrs: dict[str, tuple[Any, ...]]
    signature: bytes
    unsigned_attrs: dict[str, tuple[Any, ...]]


def _parse_signed(data: bytes, detached_content: bytes | None
                  ) -> tuple[str, bytes, list[x509.Certificate], _ParsedSigner]:
    signed_data = _content_info(data, "signed_data")
    try:
        encap = signed_data["encap_content_info"]
        content_type = encap["content_type"].dotted
        econtent = encap["content"]
        if isinstance(econtent, core.Void):
            content = detached_content
        else:
            content = bytes(econtent)  # the OCTET STRING's octets, BER chunks merged
        certificates = []
        for choice in signed_data["certificates"] or []:
            if choice.name == "certificate":
                certificates.append(x509.load_der_x509_certificate(choice.chosen.dump()))
        infos = list(signed_data["signer_infos"])
        if len(infos) != 1:
            raise CmsError(f"expected one SignerInfo, found {len(infos)}")
        info = infos[0]
        sid = info["sid"]
        if sid.name == "issuer_and_serial_number":
            issuer, serial, key_id = sid.chosen["issuer"], sid.chosen["serial_number"].native, None
        else:
            issuer, serial, key_id = None, None, sid.chosen.native
        algorithm = info["signature_algorithm"]
        signature_algo = algorithm.signature_algo
        try:
            signature_hash: str | None = algorithm.hash_algo
        except ValueError:  # rsaEncryption, plain ecdsa: the digestAlgorithm's hash
            signature_hash = None
        attrs = info["signed_attrs"]
        attrs_der = None
        attributes: dict[str, tuple[Any, ...]] = {}
        if not isinstance(attrs, core.Void):
            encoded = attrs.dump()
            attrs_der = bytes((der.SET,)) + encoded[1:]  # RFC 5652 5.4: as a SET OF
            for attr in attrs:
                oid = attr["type"].dotted
                if oid in attributes:
                    raise CmsError(f"signed attribute {oid} appears twice")
                attributes[oid] = tuple(attr["values"])
        unsigned: dict[str, tuple[Any, ...]] = {}
        try:
            if not isinstance(info["unsigned_attrs"], core.Void):
                for attr in info["unsigned_attrs"]:
                    unsigned[attr["type"].dotted] = (
                        *unsigned.get(attr["type"].dotted, ()), *attr["values"])
        except _PARSE_ERRORS:
            # Unsigned attributes are outside the signature, and most readers (SCEP, EST)
            # never look at them: malformed ones do not make the message unreadable.
            unsigned = {}
        parsed = _ParsedSigner(
            sid_issuer=issuer, sid_serial=serial, sid_key_id=key_id,
            digest=info["digest_algorithm"]["algorithm"].native,
            signature_algo=signature_algo, signature_hash=signature_hash,
            signed_attrs_der=attrs_der, signed_attrs=attributes,
            signature=info["signature"].native,
            unsigned_attrs=unsigned,
        )
    except CmsError:
        raise
    except _PARSE_ERRORS as exc:
        raise CmsError("malformed SignedData") from exc
    if content is None:
        raise CmsError("detached SignedData: the content must be given")
    return content_type, content, certificates, parsed


def unverified_signed_attributes(data: bytes) -> Mapping[str, tuple[Any, ...]]:
    """The signed attributes of a SignedData with one SignerInfo, NOT verified: only to
    address a reply to a message whose signature failed (SCEP's FAILURE badMessageCheck,
    RFC 8894 3.3.2.2). CmsError when the structure cannot be read."""
    return _parse_signed(data, b"")[3].signed_attrs


def signer_digest_algorithm(data: bytes) -> str:
    """The digestAlgorithm (asn1crypto name, e.g. sha256) of a SignedData's one SignerInfo,
    NOT verified: which hash of the content to compute before verifying. CmsError when it
    cannot be read."""
    digest: str = _parse_signed(data, b"")[3].digest
    return digest


def unverified_signer_certificate(data: bytes) -> x509.Certificate:
    """The certificate a SignedData (one SignerInfo) names as its signer, among those it
    carries, NOT verified: only to find whose signature it claims to be (to scope a lookup
    before verifying). CmsError when it cannot be read or the certificate is missing."""
    _, _, carried, signer = _parse_signed(data, b"")
    certificate = next((c for c in carried if _matches(
        c, signer.sid_issuer, signer.sid_serial, signer.sid_key_id)), None)
    if certificate is None:
        raise CmsError("the signer's certificate is not in the message")
    return certificate


def _matches(certificate: x509.Certificate, issuer: Any, serial: int | None,
             key_id: bytes | None) -> bool:
    if key_id is not None:
        try:
            ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except _PARSE_ERRORS:  # none, or a malformed extension in a carried certificate
            return False
        return bool(ski.value.digest == key_id)
    if certificate.serial_number != serial:
        return False
    try:
        encoded = certificate.issuer.public_bytes()
        if encoded == issuer.dump():
            return True  # the same encoding: no need to compare name by name
        # asn1crypto compares names as RFC 5280 7.1 says (case and space folded): slow
        # (a tenth of a SCEP enrollment), so only when the encodings differ.
        return bool(asn1_x509.Name.load(encoded) == issuer)
    except _PARSE_ERRORS:  # a malformed name in a certificate the message carries
        return False


_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    **OAEP_HASHES,
    "sha3_256": hashes.SHA3_256,
    "sha3_384": hashes.SHA3_384,
    "sha3_512": hashes.SHA3_512,
}


def verify_signed(data: bytes, *, certificates: Sequence[x509.Certificate] = (),
                  content: bytes | None = None) -> SignedContent:
    """Verify a SignedData (DER ContentInfo) with one SignerInfo: the signer's certificate
    is found among the ones it carries and ``certificates``; the messageDigest and
    contentType attributes and the signature are checked (RFC 5652 5.6). ``content`` is
    the content of a detached signature. Raises a CmsError when anything does not hold."""
    content_type, body, carried, signer = _parse_signed(data, content)
    candidates = [*carried, *certificates]
    certificate = next((c for c in candidates if _matches(
        c, signer.sid_issuer, signer.sid_serial, signer.sid_key_id)), None)
    if certificate is None:
        raise CmsError("the signer's certificate is not in the message")
    try:
        # cryptography parses a certificate's fields when they are first read: a malformed
        # name or extension would raise later, in whoever reads it (SCEP's renewal check
        # did, a 503 found by conformance/hostile). The signer's certificate is read whole.
        certificate.subject, certificate.issuer, certificate.extensions  # noqa: B018
        certificate.not_valid_before_utc, certificate.not_valid_after_utc  # noqa: B018
    except _PARSE_ERRORS as exc:
        raise CmsError("the signer's certificate is malformed") from exc
    if signer.digest not in _HASHES:
        raise UnsupportedAlgorithm(f"digest algorithm {signer.digest} is not supported")
    if signer.signed_attrs_der is None:
        if content_type != _DATA:
            raise CmsError("signed attributes are required for this content type (5.3)")
        signed = body
    else:
        _check_content_attributes(signer, content_type,
                                  hashlib.new(signer.digest, body).digest())
        signed = signer.signed_attrs_der
    _verify_signature(certificate, signer, signed)
    return SignedContent(content_type, body, certificate, signer.signed_attrs, tuple(carried))


@dataclass(frozen=True, slots=True)
class SignedDigest:
    """A detached SignedData whose one signature verified over a digest
    (``verify_signed_digest``)."""

    signer: x509.Certificate
    digest_name: str
    signature: bytes  # the SignerInfo's signature value (what a time-stamp covers)
    signed_attrs: Mapping[str, tuple[Any, ...]]
    unsigned_attrs: Mapping[str, tuple[Any, ...]]
    certificates: tuple[x509.Certificate, ...]  # all that the SignedData carries


def verify_signed_digest(data: bytes, digest: bytes, digest_name: str, *,
                         certificates: Sequence[x509.Certificate] = ()) -> SignedDigest:
    """Verify a detached SignedData of id-data content (one SignerInfo) over content whose
    ``digest_name`` hash is ``digest``: the digestAlgorithm must be that hash, the
    messageDigest attribute that digest, and the signature over the signed attributes
    must verify (RFC 5652 5.4, 5.6). No path validation. CmsError when anything fails."""
    content_type, _, carried, signer = _parse_signed(data, b"")
    candidates = [*carried, *certificates]
    certificate = next((c for c in candidates if _matches(
        c, signer.sid_issuer, signer.sid_serial, signer.sid_key_id)), None)
    if certificate is None:
        raise CmsError("the signer's certificate is not in the message")
    if content_type != _DATA:
        raise CmsError("not a signature over data (eContentType is not id-data)")
    if signer.digest != digest_name:
        raise BadSignature(f"signed with {signer.digest}, not {digest_name}")
    if signer.signed_attrs_der is None:
        raise CmsError("a detached signature needs signed attributes (5.3)")
    _check_content_attributes(signer, content_type, digest)
    _verify_signature(certificate, signer, signer.signed_attrs_der)
    return SignedDigest(certificate, signer.digest, signer.signature, signer.signed_attrs,
                        signer.unsigned_attrs, tuple(carried))


def _check_content_attributes(signer: _ParsedSigner, content_type: str,
                              digest: bytes) -> None:
    """RFC 5652 5.3/5.4: the signed contentType names the content's type and messageDigest
    is its digest (``digest``, made with the signer's digest algorithm)."""
    (found_type,) = signer.signed_attrs.get("1.2.840.113549.1.9.3", (None,))
    (found_digest,) = signer.signed_attrs.get("1.2.840.113549.1.9.4", (None,))
    try:
        type_ok = found_type is not None and found_type.dotted == content_type
        digest_ok = found_digest is not None and found_digest.native == digest
    except _PARSE_ERRORS as exc:
        raise CmsError("malformed contentType or messageDigest attribute") from exc
    if not type_ok:
        raise BadSignature("the contentType attribute does not match the content")
    if not digest_ok:
        raise BadSignature("the messageDigest does not match the content")


def _verify_signature(certificate: x509.Certificate, signer: _ParsedSigner, signed: bytes
                      ) -> None:
    try:
        public_key = certificate.public_key()
    except _PARSE_ERRORS as exc:  # a key type cryptography does not know, or malformed
        raise UnsupportedAlgorithm("the signer's public key is not usable") from exc
    hash_name = signer.signature_hash or signer.digest
    chosen = _HASHES.get(hash_name)
    try:
        if signer.signature_algo == "rsassa_pkcs1v15" and chosen is not None and \
                isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signer.signature, signed, rsa_padding.PKCS1v15(), chosen())
        elif signer.signature_algo == "ecdsa" and chosen is not None and \
                isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signer.signature, signed, ec.ECDSA(chosen()))
        else:
            raise UnsupportedAlgorithm(
                f"signature algorithm {signer.signature_algo} with {hash_name} and a "
                f"{type(public_key).__name__} is not supported")
    except InvalidSignature:
        raise BadSignature("the signature does not verify") from None


# ---------------------------------------------------------------------------- EnvelopedData

_CIPHERS: dict[str, tuple[int, int]] = {  # name: (key octets, block octets)
    "aes128_cbc": (16, 16),
    "aes192_cbc": (24, 16),
    "aes256_cbc": (32, 16),
    "tripledes_3key": (24, 8),  # DES-EDE3-CBC: old SCEP clients, answered in kind
    "des": (8, 8),  # single DES-CBC: read only when the caller allows it (open_enveloped)
}


def _cbc(name: str, key: bytes, iv: bytes) -> Cipher[modes.CBC]:
    if name == "des":  # a DES key is the DES-EDE3 key K1 = K2 = K3
        return Cipher(TripleDES(key * 3), modes.CBC(iv))
    if name == "tripledes_3key":
        return Cipher(TripleDES(key), modes.CBC(iv))
    return Cipher(algorithms.AES(key), modes.CBC(iv))


def _key_transport_algorithm(key_transport: RsaPadding) -> Any:
    if key_transport == "pkcs1v15":
        return cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"})
    if isinstance(key_transport, RsaOaep):
        # RFC 4055 2.1/4.1: DEFAULT values (SHA-1) are left out, so OAEP with SHA-1 is an
        # empty parameter SEQUENCE, as OpenSSL writes it; other hashes have NULL parameters.
        return cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_oaep", "parameters": {
            "hash_algorithm": {"algorithm": key_transport.hash},
            "mask_gen_algorithm": {"algorithm": "mgf1",
                                   "parameters": {"algorithm": key_transport.mgf1_hash}},
        }})
    raise ValueError(f"unknown key transport {key_transport!r}")


def encrypt_enveloped(
    content: bytes,
    recipients: Sequence[x509.Certificate],
    *,
    key_transport: RsaPadding = "pkcs1v15",
    cipher: ContentCipher = "aes256_cbc",
    content_type: str = "data",
    by_key_identifier: bool = False,
) -> bytes:
    """EnvelopedData (DER ContentInfo, RFC 5652 6) of ``content`` for RSA ``recipients``:
    a fresh content-encryption key and IV, the content AES-CBC (or, to answer an old SCEP
    client in its own cipher, DES-EDE3-CBC) encrypted with PKCS #7
    padding, the key RSA-encrypted for each recipient (``"pkcs1v15"`` or ``RsaOaep(...)``),
    recipients named by issuerAndSerialNumber, or with ``by_key_identifier`` by their
    certificate's subjectKeyIdentifier (ValueError for a certificate without one).
    UnsupportedAlgorithm for a non-RSA recipient (a key-transport recipient needs an RSA
    key). ``content_type`` names what ``content`` is (a nested SignedData: its value, not
    a ContentInfo, RFC 5652 6.1)."""
    if not recipients:
        raise ValueError("EnvelopedData needs at least one recipient")
    if cipher not in ("aes128_cbc", "aes192_cbc", "aes256_cbc", "tripledes_3key"):
        raise ValueError(f"unknown content cipher {cipher!r}")
    key_size, block = _CIPHERS[cipher]
    key, iv = os.urandom(key_size), os.urandom(block)
    padder = block_padding.PKCS7(block * 8).padder()
    padded = padder.update(content) + padder.finalize()
    encryptor = _cbc(cipher, key, iv).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()
    algorithm = _key_transport_algorithm(key_transport)
    chosen = software_padding(key_transport)
    infos = []
    for recipient in recipients:
        public_key = recipient.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise UnsupportedAlgorithm(
                f"recipient {recipient.subject.rfc4514_string()} has no RSA key")
        cert = asn1_x509.Certificate.load(recipient.public_bytes(serialization.Encoding.DER))
        rid: dict[str, Any]
        if by_key_identifier:
            try:
                ski = recipient.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                raise ValueError("the recipient's certificate has no "
                                 "subjectKeyIdentifier") from None
            # RFC 5652 6.2.1: version 2 with a subjectKeyIdentifier
            version, rid = "v2", {"subject_key_identifier": ski.value.digest}
        else:
            version, rid = "v0", {"issuer_and_serial_number": {
                "issuer": cert.issuer, "serial_number": cert.serial_number}}
        infos.append(cms.RecipientInfo({"ktri": {
            "version": version,
            "rid": rid,
            "key_encryption_algorithm": algorithm,
            "encrypted_key": public_key.encrypt(key, chosen),
        }}))
    enveloped = cms.EnvelopedData({
        # RFC 5652 6.1: v0 without originatorInfo or unprotectedAttrs when every
        # RecipientInfo is v0, else v2
        "version": "v2" if by_key_identifier else "v0",
        "recipient_infos": infos,
        "encrypted_content_info": {
            "content_type": content_type,
            "content_encryption_algorithm": {"algorithm": cipher, "parameters": iv},
            "encrypted_content": encrypted,
        },
    })
    encoded: bytes = cms.ContentInfo(
        {"content_type": "enveloped_data", "content": enveloped}).dump()
    return encoded


@dataclass(frozen=True, slots=True)
class _Envelope:
    encrypted_key: bytes
    key_transport: RsaPadding
    cipher: str
    iv: bytes
    encrypted_content: bytes


def _oaep_of(parameters: Any) -> RsaOaep:
    """The RsaOaep of RSAES-OAEP-params (RFC 4055 4.1); absent parameters are the
    defaults."""
    if isinstance(parameters, core.Void):
        return RsaOaep()
    native = parameters.native
    mgf = native["mask_gen_algorithm"]
    label = native["p_source_algorithm"]
    hash_name = native["hash_algorithm"]["algorithm"]
    mgf_hash = (mgf["parameters"] or {}).get("algorithm")
    if mgf["algorithm"] != "mgf1" or label["algorithm"] != "p_specified" or \
            label["parameters"] not in (b"", None):
        raise UnsupportedAlgorithm("RSAES-OAEP other than MGF1 with an empty label")
    if hash_name not in OAEP_HASHES or mgf_hash not in OAEP_HASHES:
        raise UnsupportedAlgorithm(f"RSAES-OAEP with {hash_name}/{mgf_hash}")
    return RsaOaep(hash_name, mgf_hash)


def _ber_octets(encoded: bytes, depth: int = 0) -> bytes:
    """The octets of a BER OCTET STRING whatever its tag: primitive, or constructed of
    segments (X.690 8.7.3), definite or indefinite length."""
    _, method, _, _, contents, _ = parser.parse(encoded)
    if method == 0:
        return bytes(contents)
    if depth > 8:
        raise CmsError("an OCTET STRING nested too deeply")
    return b"".join(_ber_octets(e, depth + 1) for e in der.elements(contents))


def _parse_enveloped(data: bytes, certificate: x509.Certificate, allow_des: bool = False
                     ) -> _Envelope:
    enveloped = _content_info(data, "enveloped_data")
    try:
        recipient = None
        for info in enveloped["recipient_infos"]:
            if info.name != "ktri":
                continue  # key agreement, KEK, password: not for an RSA key
            ktri = info.chosen
            rid = ktri["rid"]
            if rid.name == "issuer_and_serial_number":
                issuer, serial, key_id = (rid.chosen["issuer"], rid.chosen["serial_number"].native,
                                          None)
            else:
                issuer, serial, key_id = None, None, rid.chosen.native
            if _matches(certificate, issuer, serial, key_id):
                recipient = ktri
                break
        if recipient is None:
            raise NoRecipient("the message is not encrypted for this recipient")
        algorithm = recipient["key_encryption_algorithm"]
        transport_name = algorithm["algorithm"].native
        key_transport: RsaPadding
        if transport_name == "rsaes_pkcs1v15":
            key_transport = "pkcs1v15"
        elif transport_name == "rsaes_oaep":
            key_transport = _oaep_of(algorithm["parameters"])
        else:
            raise UnsupportedAlgorithm(f"key transport {transport_name} is not supported")
        content_info = enveloped["encrypted_content_info"]
        cipher_algorithm = content_info["content_encryption_algorithm"]
        cipher = cipher_algorithm["algorithm"].native
        if cipher not in _CIPHERS or (cipher == "des" and not allow_des):
            raise UnsupportedAlgorithm(f"content encryption {cipher} is not supported")
        iv = cipher_algorithm["parameters"].native
        if not isinstance(iv, bytes) or len(iv) != _CIPHERS[cipher][1]:
            raise CmsError(f"the {cipher} IV is not an OCTET STRING of one block")
        # Read from the encoding: the [0] IMPLICIT OCTET STRING may be constructed (BER),
        # as Go's pkcs7 (micromdm's scepclient) writes it even with a definite length, and
        # asn1crypto refuses that form of a tagged OCTET STRING.
        children = der.elements(content_info.contents or b"")
        if len(children) < 3:
            raise CmsError("the EnvelopedData has no encrypted content")
        return _Envelope(
            encrypted_key=recipient["encrypted_key"].native,
            key_transport=key_transport,
            cipher=cipher,
            iv=iv,
            encrypted_content=_ber_octets(children[2]),
        )
    except CmsError:
        raise
    except _PARSE_ERRORS as exc:
        raise CmsError("malformed EnvelopedData") from exc


@dataclass(frozen=True, slots=True)
class Opened:
    """A decrypted EnvelopedData and how it was protected (to answer in kind)."""

    content: bytes
    key_transport: RsaPadding
    cipher: str  # asn1crypto's name: aes128_cbc, aes192_cbc, aes256_cbc, tripledes_3key


async def decrypt_enveloped(data: bytes, signer: Signer, certificate: x509.Certificate
                            ) -> bytes:
    """The content of an EnvelopedData encrypted for ``certificate`` (see
    ``open_enveloped``)."""
    return (await open_enveloped(data, signer, certificate)).content


async def open_enveloped(data: bytes, signer: Signer, certificate: x509.Certificate, *,
                         allow_des: bool = False) -> Opened:
    """The content of an EnvelopedData (DER or BER ContentInfo) encrypted for
    ``certificate``, whose RSA key ``signer`` holds (RFC 5652 6.2.1 key transport).

    NoRecipient when no RecipientInfo names the certificate; DecryptFailed for a key or
    content that does not decrypt, whatever the cause. As RFC 3218 2.3.2 advises, a
    content-encryption key that does not decrypt (or has the wrong length) is replaced by a
    random one and the content decrypted all the same, so the failure takes the same path
    and time as a bad content padding. PKCS #1 v1.5 and CBC carry no integrity check: a
    damaged message may, rarely, decrypt to garbage instead, which the content's own
    parser must reject. Single DES-CBC (56-bit keys) is UnsupportedAlgorithm unless
    ``allow_des``: a SCEP RA that must serve clients sending nothing else opts in.
    """
    envelope = _parse_enveloped(data, certificate, allow_des)
    key_size, block = _CIPHERS[envelope.cipher]
    try:
        key = await signer.decrypt(envelope.encrypted_key, envelope.key_transport)
        key_ok = len(key) == key_size
    except DecryptionFailed:
        key, key_ok = b"", False
    except UnsupportedKeyOperation as exc:
        raise UnsupportedAlgorithm("this key cannot decrypt the message's key transport"
                                   ) from exc
    if not key_ok:
        key = os.urandom(key_size)
    content = None
    if envelope.encrypted_content and len(envelope.encrypted_content) % block == 0:
        decryptor = _cbc(envelope.cipher, key, envelope.iv).decryptor()
        padded = decryptor.update(envelope.encrypted_content) + decryptor.finalize()
        unpadder = block_padding.PKCS7(block * 8).unpadder()
        try:
            content = unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            content = None
    if not key_ok or content is None:
        raise DecryptFailed("the message does not decrypt with this recipient's key")
    return Opened(content, envelope.key_transport, envelope.cipher)
