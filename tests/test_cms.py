"""CMS (ca_core.cms) against the real openssl and asn1crypto: SignedData made here verifies
with ``openssl cms -verify`` and equals asn1crypto's own construction byte for byte;
SignedData made by openssl verifies here; certs-only is read by ``openssl pkcs7
-print_certs``; EnvelopedData made here decrypts with ``openssl cms -decrypt`` and
``openssl cms -encrypt`` output decrypts here (RSAES-PKCS1-v1_5 and RSAES-OAEP, AES-CBC, and
3DES for old clients), in software and with the RA key in a SoftHSM2 token. Bad input
raises a CmsError, never another exception. Signer.decrypt in software.

Keys and certificates are made in the test with cryptography (no fixture files).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from ca_core import cms as cms_core
from ca_core import der
from ca_core.cms import (
    BadSignature,
    CmsError,
    DecryptFailed,
    NoRecipient,
    SignedDataSigner,
    UnsupportedAlgorithm,
    certs_only,
    decrypt_enveloped,
    encrypt_enveloped,
    sign_data,
    verify_signed,
)
from ca_core.keys import KeySpec, spec_of
from ca_core.signers.base import (
    DecryptionFailed,
    RsaOaep,
    RsaPadding,
    Signer,
    SoftwareSigner,
    UnsupportedKeyOperation,
)
from ca_core.signers.pkcs11 import Pkcs11KeyBackend
from ca_core.signers.software import SoftwareKeyBackend
from tests.softhsm import SoftHsmToken, session_token

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
# SCEP's transactionID (RFC 8894 3.2.1.1): an attribute type asn1crypto does not know.
TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
OAEP_SHA256 = RsaOaep("sha256", "sha256")


# --- a small PKI ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Party:
    key: Any  # a cryptography private key
    certificate: x509.Certificate

    @property
    def signer(self) -> Signer:
        return SoftwareSigner(self.key, spec_of(self.key.public_key()), "file:test")

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return cert_path, key_path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "VCC CMS Test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, public_key: Any, issuer: Party | None,
                 key: CertificateIssuerPrivateKeyTypes, ca: bool = False) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.certificate.subject if issuer else _name(subject))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if not ca:
        # digitalSignature for SignedData, keyEncipherment for key transport: openssl cms
        # checks neither strictly, but an RA certificate carries both.
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=True,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
    hash_algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, hash_algorithm)


@dataclass(frozen=True)
class Pki:
    ca: Party
    parties: dict[str, Party]
    directory: Path

    @property
    def ca_pem(self) -> Path:
        return self.directory / "ca.pem"


def _new_key(kind: str) -> Any:
    if kind.startswith("rsa"):
        return rsa.generate_private_key(65537, 2048)
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("cms-pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = Party(ca_key, _certificate("CMS Test CA", ca_key.public_key(), None, ca_key, ca=True))
    parties = {}
    for kind in ("rsa", "rsa-other", "ec-p256", "ec-p384", "ed25519"):
        key = _new_key(kind)
        parties[kind] = Party(key, _certificate(f"{kind} party", key.public_key(), ca, ca_key))
    (directory / "ca.pem").write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    return Pki(ca, parties, directory)


def openssl(*args: str | Path, input_: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *map(str, args)], input=input_, capture_output=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def _loaded(certificate: x509.Certificate) -> Any:
    return asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))


# --- SignedData -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rsa", "ec-p256", "ec-p384"])
async def test_signed_data_verifies_with_openssl(pki: Pki, tmp_path: Path, kind: str) -> None:
    party = pki.parties[kind]
    content = f"signed by {kind}\n".encode() * 10
    token = await sign_data(party.signer, party.certificate, content,
                            certificates=[party.certificate], signing_time=NOW)
    message = tmp_path / "signed.der"
    message.write_bytes(token)
    # -purpose any: the test certificates carry no extended key usage for S/MIME.
    out = openssl("cms", "-verify", "-inform", "DER", "-in", message, "-CAfile", pki.ca_pem,
                  "-purpose", "any", "-binary")
    assert out == content
    info = cms.ContentInfo.load(token)
    signed_data = info["content"]
    assert signed_data["version"].native == "v1"  # id-data, issuerAndSerialNumber
    (signer_info,) = signed_data["signer_infos"]
    expected_digest = "sha384" if kind == "ec-p384" else "sha256"
    assert signer_info["digest_algorithm"]["algorithm"].native == expected_digest
    attributes = {a["type"].native: a["values"].native for a in signer_info["signed_attrs"]}
    assert attributes == {"content_type": ["data"],
                          "message_digest": [hashlib.new(expected_digest, content).digest()],
                          "signing_time": [NOW]}
    verified = verify_signed(token)
    assert verified.content == content and verified.signer == party.certificate


def test_ed25519_signers_are_refused(pki: Pki) -> None:
    """OpenSSL 3.0 cannot make or verify Ed25519 CMS (RFC 8419): not offered."""
    party = pki.parties["ed25519"]
    with pytest.raises(ValueError, match="RSA or ECDSA"):
        SignedDataSigner(party.signer, party.certificate)


async def test_detached_without_certificates_and_subject_key_identifier(
        pki: Pki, tmp_path: Path) -> None:
    party = pki.parties["ec-p256"]
    content = b"detached content"
    signed = SignedDataSigner(party.signer, party.certificate,
                              signer_id="subject_key_identifier")
    token = await signed.sign(content, detached=True, include_certificates=False)
    info = cms.ContentInfo.load(token)
    signed_data = info["content"]
    assert signed_data["version"].native == "v3"  # a v3 SignerInfo (RFC 5652 5.1)
    assert isinstance(signed_data["encap_content_info"]["content"], core.Void)
    assert isinstance(signed_data["certificates"], core.Void)
    (signer_info,) = signed_data["signer_infos"]
    assert signer_info["version"].native == "v3"
    assert signer_info["sid"].name == "subject_key_identifier"
    (tmp_path / "signed.der").write_bytes(token)
    (tmp_path / "content").write_bytes(content)
    party_pem, _ = party.write(tmp_path, "signer")
    openssl("cms", "-verify", "-inform", "DER", "-in", tmp_path / "signed.der", "-content",
            tmp_path / "content", "-certfile", party_pem, "-CAfile", pki.ca_pem,
            "-purpose", "any", "-binary")
    verified = verify_signed(token, certificates=[party.certificate], content=content)
    assert verified.content == content
    with pytest.raises(CmsError, match="detached"):
        verify_signed(token, certificates=[party.certificate])
    with pytest.raises(BadSignature, match="messageDigest"):
        verify_signed(token, certificates=[party.certificate], content=b"other content")


async def test_signed_and_unsigned_attributes(pki: Pki, tmp_path: Path) -> None:
    party = pki.parties["rsa"]
    transaction = cms_core.attribute(TRANSACTION_ID, [core.PrintableString("tx-0001")])
    nonce = cms_core.attribute("2.16.840.1.113733.1.9.5", [core.OctetString(b"\x01" * 16)])
    unsigned = cms_core.attribute("1.2.3.4.5", [core.UTF8String("not signed")])
    signed = SignedDataSigner(party.signer, party.certificate,
                              certificates=[party.certificate, pki.ca.certificate],
                              signed_attrs=[transaction])
    token = await signed.sign(b"payload", signed_attrs=[nonce], unsigned_attrs=[unsigned])
    (tmp_path / "signed.der").write_bytes(token)
    assert openssl("cms", "-verify", "-inform", "DER", "-in", tmp_path / "signed.der",
                   "-CAfile", pki.ca_pem, "-purpose", "any") == b"payload"
    verified = verify_signed(token)
    assert verified.signed_attrs[TRANSACTION_ID][0].native == "tx-0001"
    assert verified.signed_attrs["2.16.840.1.113733.1.9.5"][0].native == b"\x01" * 16
    assert set(verified.certificates) == {party.certificate, pki.ca.certificate}
    (signer_info,) = cms.ContentInfo.load(token)["content"]["signer_infos"]
    (got_unsigned,) = signer_info["unsigned_attrs"]
    assert got_unsigned.dump() == unsigned.dump()
    # The signer sets contentType, messageDigest and signingTime itself, once each.
    reserved = cms_core.attribute("content_type", ["data"])
    with pytest.raises(ValueError, match="set by the signer"):
        await signed.sign(b"x", signed_attrs=[reserved])
    with pytest.raises(ValueError, match="twice"):
        await signed.sign(b"x", signed_attrs=[transaction])
    with pytest.raises(ValueError, match="does not certify"):
        SignedDataSigner(party.signer, pki.parties["ec-p256"].certificate)


@pytest.mark.parametrize("kind", ["rsa", "ec-p256"])
@pytest.mark.parametrize("subject_key_id", [False, True], ids=["issuer-serial", "ski"])
async def test_signed_data_bytes_equal_plain_asn1crypto_construction(
        pki: Pki, kind: str, subject_key_id: bool) -> None:
    """The DER written from parts (ca_core.der) is what asn1crypto's constructors give."""
    party = pki.parties[kind]
    transaction = cms_core.attribute(TRANSACTION_ID, [core.PrintableString("tx")])
    unsigned = cms_core.attribute("1.2.3.4.5", [core.UTF8String("u")])
    signed = SignedDataSigner(
        party.signer, party.certificate, certificates=[party.certificate, pki.ca.certificate],
        signed_attrs=[cms_core.signing_certificate_v2(party.certificate)],
        signer_id="subject_key_identifier" if subject_key_id else "issuer_and_serial_number")
    content = b"content for the comparison"
    token = await signed.sign(content, "data", signed_attrs=[transaction],
                              unsigned_attrs=[unsigned], signing_time=NOW)
    (got,) = cms.ContentInfo.load(token)["content"]["signer_infos"]
    cert = _loaded(party.certificate)
    digest = "sha256"
    sid: dict[str, Any] = {"subject_key_identifier": party.certificate.extensions
                           .get_extension_for_class(x509.SubjectKeyIdentifier).value.digest} \
        if subject_key_id else {"issuer_and_serial_number": {
            "issuer": cert.issuer, "serial_number": cert.serial_number}}
    expected = cms.ContentInfo({"content_type": "signed_data", "content": cms.SignedData({
        "version": "v3" if subject_key_id else "v1",
        "digest_algorithms": [{"algorithm": digest}],
        "encap_content_info": {"content_type": "data", "content": content},
        "certificates": [cert, _loaded(pki.ca.certificate)],
        "signer_infos": [{
            "version": "v3" if subject_key_id else "v1",
            "sid": sid,
            "digest_algorithm": {"algorithm": digest},
            "signed_attrs": [
                {"type": "content_type", "values": ["data"]},
                {"type": "message_digest", "values": [hashlib.sha256(content).digest()]},
                {"type": "signing_time", "values": [cms.Time({"utc_time": NOW})]},
                cms_core.signing_certificate_v2(party.certificate),
                transaction,
            ],
            "signature_algorithm": got["signature_algorithm"],  # .native would drop the NULL
            "signature": got["signature"].native,
            "unsigned_attrs": [unsigned],
        }],
    })})
    assert token == expected.dump()
    assert got["signature_algorithm"]["algorithm"].native == (
        "rsassa_pkcs1v15" if kind == "rsa" else "sha256_ecdsa")


@pytest.mark.parametrize("kind", ["rsa", "ec-p256"])
def test_openssl_signed_data_verifies_here(pki: Pki, tmp_path: Path, kind: str) -> None:
    party = pki.parties[kind]
    cert_pem, key_pem = party.write(tmp_path, "signer")
    (tmp_path / "content").write_bytes(b"made by openssl")
    token = openssl("cms", "-sign", "-nodetach", "-binary", "-in", tmp_path / "content",
                    "-signer", cert_pem, "-inkey", key_pem, "-outform", "DER")
    verified = verify_signed(token)
    assert verified.content == b"made by openssl"
    assert verified.signer == party.certificate
    # One bit of the content changed: the messageDigest no longer matches.
    tampered = token.replace(b"made by openssl", b"made by opensse")
    with pytest.raises(BadSignature):
        verify_signed(tampered)


async def test_tampered_signature_is_bad_signature(pki: Pki) -> None:
    party = pki.parties["ec-p256"]
    token = await sign_data(party.signer, party.certificate, b"x",
                            certificates=[party.certificate])
    (signer_info,) = cms.ContentInfo.load(token)["content"]["signer_infos"]
    signature = signer_info["signature"].native
    forged = party.key.sign(b"something else", ec.ECDSA(hashes.SHA256()))
    while len(forged) != len(signature):  # DER ECDSA lengths vary: keep the structure's
        forged = party.key.sign(os.urandom(8), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(BadSignature, match="does not verify"):
        verify_signed(token.replace(signature, forged))
    with pytest.raises(CmsError, match="not in the message"):
        verify_signed(await sign_data(party.signer, party.certificate, b"x"))


def test_certs_only_is_read_by_openssl_pkcs7(pki: Pki, tmp_path: Path) -> None:
    ca = pki.ca
    crl = (x509.CertificateRevocationListBuilder()
           .issuer_name(ca.certificate.subject).last_update(NOW)
           .next_update(NOW + dt.timedelta(days=1))
           .sign(ca.key, hashes.SHA256()))
    certificates = [pki.parties["rsa"].certificate, ca.certificate]
    bundle = certs_only(certificates, [crl])
    (tmp_path / "certs.p7b").write_bytes(bundle)
    printed = openssl("pkcs7", "-inform", "DER", "-in", tmp_path / "certs.p7b",
                      "-print_certs").decode()
    assert printed.count("-----BEGIN CERTIFICATE-----") == 2
    assert "CN = rsa party" in printed and "CN = CMS Test CA" in printed
    assert "-----BEGIN X509 CRL-----" in printed
    signed_data = cms.ContentInfo.load(bundle)["content"]
    assert signed_data["version"].native == "v1"
    assert len(signed_data["signer_infos"]) == 0 and len(signed_data["digest_algorithms"]) == 0
    assert isinstance(signed_data["encap_content_info"]["content"], core.Void)
    assert {c.chosen.dump() for c in signed_data["certificates"]} == {
        c.public_bytes(serialization.Encoding.DER) for c in certificates}
    only_certs = cms.ContentInfo.load(certs_only(certificates))["content"]
    assert isinstance(only_certs["crls"], core.Void)


def test_certs_only_sorts_its_set_of_certificates_and_one_has_the_v1_form(pki: Pki) -> None:
    # DER sorts a SET OF by encoding: the order given does not change the message.
    certificates = [pki.parties["rsa"].certificate, pki.ca.certificate]
    assert certs_only(certificates) == certs_only(certificates[::-1])
    loaded = cms.ContentInfo.load(certs_only(certificates))["content"]["certificates"]
    ders = [c.public_bytes(serialization.Encoding.DER) for c in certificates]
    assert [c.chosen.dump() for c in loaded] == sorted(ders)
    one = cms.ContentInfo.load(certs_only(certificates[:1]))
    assert one["content_type"].native == "signed_data"
    signed_data = one["content"]
    assert signed_data["version"].native == "v1"
    assert len(signed_data["signer_infos"]) == 0 and len(signed_data["digest_algorithms"]) == 0
    assert signed_data["encap_content_info"]["content_type"].native == "data"
    assert isinstance(signed_data["encap_content_info"]["content"], core.Void)
    assert isinstance(signed_data["crls"], core.Void)
    assert [c.chosen.dump() for c in signed_data["certificates"]] == ders[:1]


# --- EnvelopedData --------------------------------------------------------------------------

TRANSPORTS: dict[str, RsaPadding] = {"pkcs1v15": "pkcs1v15", "oaep": RsaOaep(),
                                     "oaep-sha256": OAEP_SHA256}
OPENSSL_TRANSPORT = {
    "pkcs1v15": [],
    "oaep": ["-keyopt", "rsa_padding_mode:oaep"],
    "oaep-sha256": ["-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256",
                    "-keyopt", "rsa_mgf1_md:sha256"],
}


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize("cipher", ["aes128_cbc", "aes192_cbc", "aes256_cbc"])
def test_encrypted_here_decrypts_with_openssl(pki: Pki, tmp_path: Path, transport: str,
                                              cipher: Any) -> None:
    party = pki.parties["rsa"]
    cert_pem, key_pem = party.write(tmp_path, "recipient")
    content = os.urandom(100)
    message = encrypt_enveloped(content, [pki.parties["rsa-other"].certificate,
                                          party.certificate],
                                key_transport=TRANSPORTS[transport], cipher=cipher)
    (tmp_path / "enveloped.der").write_bytes(message)
    out = openssl("cms", "-decrypt", "-inform", "DER", "-in", tmp_path / "enveloped.der",
                  "-recip", cert_pem, "-inkey", key_pem, "-binary")
    assert out == content
    enveloped = cms.ContentInfo.load(message)["content"]
    assert enveloped["version"].native == "v0"
    assert len(enveloped["recipient_infos"]) == 2
    algorithm = enveloped["encrypted_content_info"]["content_encryption_algorithm"]
    assert algorithm["algorithm"].native == cipher
    assert len(enveloped["encrypted_content_info"]["encrypted_content"].native) == 112


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize("cipher", ["aes128", "aes256", "des3"])
async def test_openssl_encrypted_decrypts_here(pki: Pki, tmp_path: Path, transport: str,
                                               cipher: str) -> None:
    party = pki.parties["rsa"]
    cert_pem, _ = party.write(tmp_path, "recipient")
    content = b"a PKCS#10 request, say\n" * 7
    (tmp_path / "content").write_bytes(content)
    message = openssl("cms", "-encrypt", "-binary", "-in", tmp_path / "content",
                      "-outform", "DER", f"-{cipher}", "-recip", cert_pem,
                      *OPENSSL_TRANSPORT[transport])
    assert await decrypt_enveloped(message, party.signer, party.certificate) == content


async def test_openssl_streamed_ber_is_read(pki: Pki, tmp_path: Path) -> None:
    """``-stream`` output is BER: indefinite lengths, the content in OCTET STRING chunks."""
    party = pki.parties["rsa"]
    cert_pem, key_pem = party.write(tmp_path, "party")
    content = os.urandom(5000)
    (tmp_path / "content").write_bytes(content)
    enveloped = openssl("cms", "-encrypt", "-stream", "-binary", "-in", tmp_path / "content",
                        "-outform", "DER", "-aes128", "-recip", cert_pem)
    signed = openssl("cms", "-sign", "-stream", "-nodetach", "-binary", "-in",
                     tmp_path / "content", "-signer", cert_pem, "-inkey", key_pem,
                     "-outform", "DER")
    assert enveloped[:2] == signed[:2] == b"\x30\x80"  # indefinite length
    assert await decrypt_enveloped(enveloped, party.signer, party.certificate) == content
    assert verify_signed(signed).content == content


async def test_round_trip_and_empty_content(pki: Pki) -> None:
    party = pki.parties["rsa"]
    for content in (b"", b"x" * 16, os.urandom(1000)):
        message = encrypt_enveloped(content, [party.certificate], key_transport=RsaOaep())
        assert await decrypt_enveloped(message, party.signer, party.certificate) == content


def test_non_rsa_recipient_is_unsupported(pki: Pki) -> None:
    with pytest.raises(UnsupportedAlgorithm, match="no RSA key"):
        encrypt_enveloped(b"x", [pki.parties["ec-p256"].certificate])


# --- bad input ------------------------------------------------------------------------------

def _enveloped(party: Party, *, encrypted_key: bytes | None = None,
               key_algorithm: Any = None, cipher: str = "aes128_cbc",
               parameters: Any = None, encrypted_content: bytes | None = None,
               content: bytes = b"sixteen octets!!", pad: bool = True) -> bytes:
    """An EnvelopedData built by hand, so that one part at a time can be wrong."""
    key, iv = os.urandom(16), os.urandom(16)
    plain = content + bytes([16 - len(content) % 16]) * (16 - len(content) % 16) if pad \
        else content
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    cert = _loaded(party.certificate)
    public_key = party.certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    enveloped = cms.EnvelopedData({
        "version": "v0",
        "recipient_infos": [cms.RecipientInfo({"ktri": {
            "version": "v0",
            "rid": {"issuer_and_serial_number": {"issuer": cert.issuer,
                                                 "serial_number": cert.serial_number}},
            "key_encryption_algorithm": key_algorithm or {"algorithm": "rsaes_pkcs1v15"},
            "encrypted_key": encrypted_key if encrypted_key is not None
            else public_key.encrypt(key, padding.PKCS1v15()),
        }})],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": cipher,
                                             "parameters": iv if parameters is None
                                             else parameters},
            "encrypted_content": encrypted_content if encrypted_content is not None
            else encryptor.update(plain) + encryptor.finalize(),
        },
    })
    encoded: bytes = cms.ContentInfo({"content_type": "enveloped_data",
                                      "content": enveloped}).dump()
    return encoded


def _oaep_with(hash_name: str, label: bytes = b"") -> Any:
    parameters: dict[str, Any] = {
        "hash_algorithm": {"algorithm": hash_name},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": hash_name}},
    }
    if label:
        parameters["p_source_algorithm"] = {"algorithm": "p_specified", "parameters": label}
    return {"algorithm": "rsaes_oaep", "parameters": parameters}


async def test_hand_built_envelope_decrypts(pki: Pki) -> None:
    """The builder below makes good messages: the failures that follow are its one change."""
    party = pki.parties["rsa"]
    assert await decrypt_enveloped(_enveloped(party), party.signer, party.certificate) == \
        b"sixteen octets!!"


# GCMParameters (RFC 5084 3.2): a 12-octet nonce, the ICV length left at its DEFAULT.
GCM_PARAMETERS = core.Sequence.load(der.sequence(der.octet_string(b"\x00" * 12)))


def _bad_envelopes(party: Party, other: Party) -> dict[str, tuple[bytes, type[CmsError]]]:
    public_key = party.certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    sha1_oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
    good = encrypt_enveloped(b"content", [party.certificate])
    return {
        "empty": (b"", CmsError),
        "garbage": (b"not DER at all", CmsError),
        "truncated": (good[: len(good) // 2], CmsError),
        "trailing-bytes": (good + b"\x00", CmsError),
        "signed-data-instead": (certs_only([party.certificate]), CmsError),
        "wrong-recipient": (encrypt_enveloped(b"x", [other.certificate]), NoRecipient),
        # RSAES-PKCS1-v1_5 fails to decrypt: a ciphertext of the wrong length.
        "key-wrong-length": (_enveloped(party, encrypted_key=b"\x01" * 10), DecryptFailed),
        # Encrypted with OAEP/SHA-1, labelled OAEP/SHA-256: OAEP's check fails.
        "key-oaep-wrong-hash": (_enveloped(
            party, key_algorithm=_oaep_with("sha256"),
            encrypted_key=public_key.encrypt(os.urandom(16), sha1_oaep)), DecryptFailed),
        # The right key, but the last block does not end in PKCS #7 padding.
        "bad-content-padding": (_enveloped(party, content=b"\x00" * 16, pad=False),
                                DecryptFailed),
        "content-not-whole-blocks": (_enveloped(party, encrypted_content=b"\x00" * 17),
                                     DecryptFailed),
        "no-content": (_enveloped(party, encrypted_content=b""), DecryptFailed),
        "oaep-label": (_enveloped(party, key_algorithm=_oaep_with("sha1", b"label")),
                       UnsupportedAlgorithm),
        "oaep-md5": (_enveloped(party, key_algorithm=_oaep_with("md5")), UnsupportedAlgorithm),
        "key-wrap-transport": (_enveloped(party, key_algorithm={"algorithm": "aes128_wrap"}),
                               UnsupportedAlgorithm),
        "cipher-des": (_enveloped(party, cipher="des", parameters=b"\x00" * 8),
                       UnsupportedAlgorithm),
        "cipher-gcm": (_enveloped(party, cipher="aes128_gcm", parameters=GCM_PARAMETERS),
                       UnsupportedAlgorithm),
        "short-iv": (_enveloped(party, parameters=b"\x00" * 8), CmsError),
    }


BAD_ENVELOPES = ["empty", "garbage", "truncated", "trailing-bytes", "signed-data-instead",
                 "wrong-recipient", "key-wrong-length", "key-oaep-wrong-hash",
                 "bad-content-padding", "content-not-whole-blocks", "no-content", "oaep-label",
                 "oaep-md5", "key-wrap-transport", "cipher-des", "cipher-gcm", "short-iv"]


@pytest.fixture(scope="module")
def bad_envelopes(pki: Pki) -> dict[str, tuple[bytes, type[CmsError]]]:
    return _bad_envelopes(pki.parties["rsa"], pki.parties["rsa-other"])


@pytest.mark.parametrize("case", BAD_ENVELOPES)
async def test_bad_enveloped_data_raises_its_cms_error(
        pki: Pki, bad_envelopes: dict[str, tuple[bytes, type[CmsError]]], case: str) -> None:
    party = pki.parties["rsa"]
    message, error = bad_envelopes[case]
    with pytest.raises(error) as raised:
        await decrypt_enveloped(message, party.signer, party.certificate)
    assert type(raised.value) is error  # exactly this kind, not merely some CmsError


async def test_every_truncation_and_bit_flip_is_a_cms_error(pki: Pki) -> None:
    """Never an asn1crypto or cryptography exception, wherever the message is damaged. A
    flipped bit in the ciphertext can (rarely) still leave valid padding: then the result is
    garbage, not an exception, which CBC without integrity cannot avoid."""
    party = pki.parties["rsa"]
    message = encrypt_enveloped(b"secret content", [party.certificate])
    token = await sign_data(party.signer, party.certificate, b"signed content",
                            certificates=[party.certificate])
    for length in range(0, len(message), 7):
        with pytest.raises(CmsError):
            await decrypt_enveloped(message[:length], party.signer, party.certificate)
    for length in range(0, len(token), 7):
        with pytest.raises(CmsError):
            verify_signed(token[:length])
    for position in range(0, len(message), 5):
        damaged = bytearray(message)
        damaged[position] ^= 0x40
        try:
            result = await decrypt_enveloped(bytes(damaged), party.signer, party.certificate)
        except CmsError:
            continue
        assert isinstance(result, bytes)
    for position in range(0, len(token), 5):
        damaged = bytearray(token)
        damaged[position] ^= 0x40
        try:
            verify_signed(bytes(damaged))
        except CmsError:
            continue


def test_bad_signed_data_raises_cms_error(pki: Pki) -> None:
    enveloped = encrypt_enveloped(b"x", [pki.parties["rsa"].certificate])
    for message in (b"", b"\x30\x03\x02\x01\x01", enveloped, certs_only([pki.ca.certificate])):
        with pytest.raises(CmsError):
            verify_signed(message)


# --- Signer.decrypt (software) --------------------------------------------------------------

@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_software_signer_decrypts(pki: Pki, transport: str) -> None:
    party = pki.parties["rsa"]
    chosen = TRANSPORTS[transport]
    algorithm = hashes.SHA256() if chosen == OAEP_SHA256 else hashes.SHA1()
    scheme: padding.AsymmetricPadding = padding.PKCS1v15() if chosen == "pkcs1v15" \
        else padding.OAEP(padding.MGF1(algorithm), algorithm, None)
    public_key = party.certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    signer = party.signer
    assert signer.can_decrypt
    assert await signer.decrypt(public_key.encrypt(b"cek", scheme), chosen) == b"cek"
    with pytest.raises(DecryptionFailed):
        await signer.decrypt(b"\x01" * 7, chosen)


async def test_non_rsa_signers_do_not_decrypt(pki: Pki, tmp_path: Path) -> None:
    signer = pki.parties["ec-p256"].signer
    assert not signer.can_decrypt
    with pytest.raises(UnsupportedKeyOperation):
        await signer.decrypt(b"\x00" * 32, "pkcs1v15")
    backend = SoftwareKeyBackend(tmp_path / "keys", b"passphrase")
    with pytest.raises(UnsupportedKeyOperation, match="RSA only"):
        backend.generate(KeySpec.parse("ec-p256"), "ec-ra", decrypt=True)
    generated = backend.generate(KeySpec.parse("rsa-2048"), "rsa-ra", decrypt=True)
    assert backend.load(generated.key_ref).can_decrypt
    with pytest.raises(ValueError, match="md5"):
        RsaOaep("md5")


# --- the DER writer -------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 65535, 65536])
def test_der_lengths_match_asn1crypto(size: int) -> None:
    value = b"\xab" * size
    assert der.octet_string(value) == core.OctetString(value).dump()
    assert der.sequence(der.octet_string(value), None) == \
        core.Sequence(contents=core.OctetString(value).dump()).dump()


def test_der_tagging_matches_asn1crypto() -> None:
    digest = algos.DigestAlgorithm({"algorithm": "sha256"}).dump()
    assert der.explicit(0, b"\x04\x01\x00") == core.OctetString(b"\x00", explicit=0).dump()
    assert der.implicit(0, der.set_of([digest])) == \
        cms.DigestAlgorithms([{"algorithm": "sha256"}], implicit=0).dump()
    assert der.implicit(1, b"\x04\x01\x00") == core.OctetString(b"\x00", implicit=1).dump()
    with pytest.raises(ValueError):
        der.explicit(31, b"")


# --- SoftHSM2: the RA key in a token --------------------------------------------------------

@pytest.fixture(scope="module")
def token_ra(tmp_path_factory: pytest.TempPathFactory, pki: Pki
             ) -> Iterator[tuple[Signer, x509.Certificate]]:
    token: SoftHsmToken = session_token(tmp_path_factory)
    backend = Pkcs11KeyBackend(token.module_path, token.label, token.pin, max_sessions=2)
    try:
        signer = backend.generate(KeySpec.parse("rsa-2048"), f"cms-ra-{uuid.uuid4().hex[:8]}",
                                  decrypt=True)
        certificate = _certificate("token RA", signer.public_key, pki.ca, pki.ca.key)
        yield signer, certificate
    finally:
        backend.close()


@pytest.mark.softhsm
@pytest.mark.parametrize("transport", ["pkcs1v15", "oaep"])
async def test_token_ra_key_decrypts_openssl_enveloped_data(
        token_ra: tuple[Signer, x509.Certificate], tmp_path: Path, transport: str) -> None:
    signer, certificate = token_ra
    cert_pem = tmp_path / "ra.pem"
    cert_pem.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "content").write_bytes(b"for the RA in the token")
    message = openssl("cms", "-encrypt", "-binary", "-in", tmp_path / "content",
                      "-outform", "DER", "-aes256", "-recip", cert_pem,
                      *OPENSSL_TRANSPORT[transport])
    assert await decrypt_enveloped(message, signer, certificate) == b"for the RA in the token"
    ours = encrypt_enveloped(b"ours", [certificate], key_transport=TRANSPORTS[transport])
    assert await decrypt_enveloped(ours, signer, certificate) == b"ours"


@pytest.mark.softhsm
async def test_token_ra_key_bad_messages_are_cms_errors(
        token_ra: tuple[Signer, x509.Certificate], pki: Pki) -> None:
    signer, certificate = token_ra
    token_party = Party(None, certificate)
    for case, (message, error) in _bad_envelopes(token_party, pki.parties["rsa"]).items():
        # SoftHSM2 2.6 offers OAEP with SHA-1 only: OAEP/SHA-256 is refused before the
        # ciphertext is looked at, which says unsupported rather than undecryptable.
        expected = (error, UnsupportedAlgorithm) if case == "key-oaep-wrong-hash" else error
        with pytest.raises(expected):
            await decrypt_enveloped(message, signer, certificate)
    # The token still decrypts afterwards (no session left broken).
    good = encrypt_enveloped(b"still fine", [certificate])
    assert await decrypt_enveloped(good, signer, certificate) == b"still fine"


async def test_signing_time_encoding_and_each_messages_own_time(pki: Pki) -> None:
    """RFC 5652 11.3: signingTime is UTCTime for 1950 through 2049 and GeneralizedTime
    otherwise, in whole seconds; each message carries its own time (the signer keeps the
    encoded attribute of the last second only)."""
    party = pki.parties["ec-p256"]
    signer = SignedDataSigner(party.signer, party.certificate)

    def signing_time(token: bytes) -> tuple[str, dt.datetime]:
        (info,) = cms.ContentInfo.load(token)["content"]["signer_infos"]
        (attr,) = [a for a in info["signed_attrs"] if a["type"].native == "signing_time"]
        (value,) = attr["values"]
        return value.name, value.native

    plus_two = dt.timezone(dt.timedelta(hours=2))
    cases = [
        (dt.datetime(1950, 1, 1, 0, 0, 0, tzinfo=dt.UTC), "utc_time"),
        (dt.datetime(1949, 12, 31, 23, 59, 59, tzinfo=dt.UTC), "generalized_time"),
        (dt.datetime(2049, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC), "utc_time"),
        (dt.datetime(2050, 1, 1, 0, 0, 0, tzinfo=dt.UTC), "generalized_time"),
        (dt.datetime(2050, 1, 1, 1, 30, 0, 500, tzinfo=plus_two), "utc_time"),
        (dt.datetime(2051, 6, 1, 12, 0, 0, tzinfo=dt.UTC), "generalized_time"),
    ]
    for when, choice in cases:
        token = await signer.sign(b"x", signing_time=when)
        assert signing_time(token) == (choice, when.astimezone(dt.UTC).replace(microsecond=0))
        # the same second again: the same attribute
        assert signing_time(await signer.sign(b"y", signing_time=when.replace(
            microsecond=0)))[1] == when.astimezone(dt.UTC).replace(microsecond=0)


def test_signer_and_recipient_names_match_by_encoding_or_as_rfc_5280_compares(pki: Pki
                                                                             ) -> None:
    certificate = pki.parties["rsa"].certificate
    serial = certificate.serial_number
    same = asn1_x509.Name.load(certificate.issuer.public_bytes())
    assert cms_core._matches(certificate, same, serial, None)
    # Another encoding of the same name (PrintableString, other case and spacing) is the
    # same issuer (RFC 5280 7.1); another name, or another serial, is not.
    folded = asn1_x509.Name.build({"organization_name": "vcc  CMS test",
                                   "common_name": "  cms   TEST ca "}, use_printable=True)
    assert folded.dump() != same.dump()
    assert cms_core._matches(certificate, folded, serial, None)
    other = asn1_x509.Name.build({"organization_name": "VCC CMS Test",
                                  "common_name": "CMS Test CA 2"})
    assert not cms_core._matches(certificate, other, serial, None)
    assert not cms_core._matches(certificate, same, serial + 1, None)
