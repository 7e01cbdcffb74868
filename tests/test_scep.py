"""SCEP (RFC 8894) through the HTTP front-end: GetCACaps, GetCACert, PKIOperation over POST
and GET, and every bad input answered with a FAILURE CertRep of the right failInfo or a
4xx, nothing issued. Requests are made here with ca_core.cms, as an OpenSSL- or Go-based
client makes them (self-signed signer certificate, envelope to the RA certificate)."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as block_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.x509.oid import AttributeOID, NameOID

from ca_core import scep_attributes as sa
from ca_core.authority import IssuanceRequest
from ca_core.cms import (
    ContentCipher,
    decrypt_enveloped,
    encrypt_enveloped,
    sign_data,
    verify_signed,
)
from ca_core.errors import BadRequest, Conflict, Forbidden, NotFound
from ca_core.hierarchy import activate_issuing_ca, rollover_issuing_ca
from ca_core.keys import spec_of
from ca_core.principal import Principal
from ca_core.signers.base import RsaOaep, RsaPadding, SoftwareSigner
from gateway.app import build_http_app
from gateway.runtime import Services
from tests.helpers import fresh_services
from tests.pg import create_throwaway_database, drop_database, require_postgres

STATIC = "static-secret"


@dataclass
class World:
    services: Services
    client: TestClient
    ra: x509.Certificate
    chain: list[x509.Certificate]


def _certs(der: bytes) -> list[x509.Certificate]:
    signed = asn1_cms.ContentInfo.load(der)["content"]
    return [x509.load_der_x509_certificate(c.chosen.dump()) for c in signed["certificates"]]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """The store every test here runs on: SQLite, and a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        yield {}
        return
    require_postgres()
    dsn = await create_throwaway_database()
    try:
        yield {"VCC_PKI_DATABASE_URL": dsn}
    finally:
        await drop_database(dsn)


@pytest.fixture
async def world(tmp_path: Any, aiohttp_client: Any, database: dict[str, str]
                ) -> AsyncIterator[World]:
    async with fresh_services(tmp_path, VCC_PKI_SCEP_CHALLENGE=STATIC, **database) as services:
        client = await aiohttp_client(build_http_app(services))
        response = await client.get("/scep", params={"operation": "GetCACert"})
        assert response.status == 200
        assert response.content_type == "application/x-x509-ca-ra-cert"
        certificates = _certs(await response.read())  # a SET: in DER order
        (ra,) = [c for c in certificates if not _is_ca(c)]
        issuing = await services.authority.ca("default-issuing")
        assert issuing.certificate in certificates and len(certificates) == 4
        chain = [issuing.certificate, *[c for c in certificates
                                        if c not in (ra, issuing.certificate)]]
        yield World(services, client, ra, chain)


def _is_ca(certificate: x509.Certificate) -> bool:
    return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)


@dataclass
class Requester:
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate  # self-signed, as RFC 8894 2.3 allows

    @property
    def signer(self) -> SoftwareSigner:
        return SoftwareSigner(self.key, spec_of(self.key.public_key()), "file:client")


def requester(cn: str = "device") -> Requester:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Requester(key, _self_signed(key, cn))


def _self_signed(key: rsa.RSAPrivateKey, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))


def csr_for(who: Requester, challenge: str | None, cn: str = "device",
            dns: str | None = None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if dns is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return builder.sign(who.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


async def pki_message(who: Requester, recipient: x509.Certificate, content: bytes, *,
                      transaction_id: str | None = None, nonce: bytes | None = None,
                      message_type: str = "19", cipher: ContentCipher = "aes256_cbc",
                      key_transport: RsaPadding = "pkcs1v15") -> bytes:
    envelope = encrypt_enveloped(content, [recipient], key_transport=key_transport,
                                 cipher=cipher)
    return await sign_data(
        who.signer, who.certificate, envelope, certificates=[who.certificate],
        signed_attrs=[
            sa.printable(sa.TRANSACTION_ID, transaction_id or secrets.token_hex(16)),
            sa.printable(sa.MESSAGE_TYPE, message_type),
            sa.octets(sa.SENDER_NONCE, nonce or secrets.token_bytes(16)),
        ])


@dataclass
class CertRep:
    status: str
    fail_info: str | None
    recipient_nonce: bytes | None
    certificate: x509.Certificate | None
    cipher: str | None


async def read_reply(world: World, who: Requester, der: bytes) -> CertRep:
    signed = verify_signed(der, content=b"")  # FAILURE and PENDING carry no content
    assert signed.signer == world.ra  # the RA key signs every reply
    attrs = signed.signed_attrs
    assert sa.read_text(attrs, sa.MESSAGE_TYPE) == "3"
    status = sa.read_text(attrs, sa.PKI_STATUS)
    assert status is not None
    certificate, cipher = None, None
    if status == "0":
        envelope = asn1_cms.ContentInfo.load(signed.content)["content"]
        cipher = envelope["encrypted_content_info"]["content_encryption_algorithm"][
            "algorithm"].native
        inner = await decrypt_enveloped(signed.content, who.signer, who.certificate)
        (certificate,) = _certs(inner)
    return CertRep(status, sa.read_text(attrs, sa.FAIL_INFO),
                   sa.read_octets(attrs, sa.RECIPIENT_NONCE), certificate, cipher)


async def post(world: World, message: bytes, path: str = "/scep") -> Any:
    return await world.client.post(path, params={"operation": "PKIOperation"}, data=message,
                                   headers={"Content-Type": "application/x-pki-message"})


async def enroll(world: World, who: Requester, message: bytes) -> CertRep:
    response = await post(world, message)
    assert response.status == 200
    assert response.content_type == "application/x-pki-message"
    return await read_reply(world, who, await response.read())


async def issued(world: World) -> int:
    """End-entity certificates issued (not the PKI's own)."""
    return sum(n for _, profile, n in await world.services.store.count_active_certificates(
        dt.datetime.now(dt.UTC)) if profile == "external_integration")


async def challenge(world: World, **kwargs: Any) -> str:
    created = await world.services.scep.create_challenge(
        "default", kwargs.pop("profile", None), kwargs.pop("lifetime", None),
        kwargs.pop("principal", _ADMIN))
    return created.password


_ADMIN = Principal.system("test")


# --- the operations ---------------------------------------------------------------------

async def test_caps_and_ca_certificates(world: World) -> None:
    response = await world.client.get("/scep", params={"operation": "GetCACaps"})
    caps = (await response.text()).split("\n")
    assert {"POSTPKIOperation", "SHA-256", "SHA-512", "AES", "SCEPStandard"} <= set(caps)
    assert "DES" not in caps
    usage = world.ra.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert isinstance(world.ra.public_key(), rsa.RSAPublicKey)
    issuing = world.chain[0]
    assert world.ra.issuer == issuing.subject
    assert any("Root" in c.subject.rfc4514_string() for c in world.chain)


async def test_enroll_with_a_one_time_challenge_oaep_aes256(world: World) -> None:
    who = requester()
    nonce = secrets.token_bytes(16)
    message = await pki_message(who, world.ra, csr_for(who, await challenge(world)),
                                nonce=nonce, key_transport=RsaOaep("sha256", "sha256"))
    reply = await enroll(world, who, message)
    assert (reply.status, reply.fail_info) == ("0", None)
    assert reply.recipient_nonce == nonce
    assert reply.cipher == "aes256_cbc"  # the request's
    assert reply.certificate is not None
    assert reply.certificate.issuer == world.chain[0].subject
    assert reply.certificate.public_key() == who.key.public_key()
    assert await issued(world) == 1


async def test_pki_operation_over_get_with_unescaped_base64(world: World) -> None:
    """Clients send the message's + and / unescaped: a form decoder would read a space."""
    for _ in range(20):  # until the base64 holds both (almost always the first)
        who = requester()
        message = await pki_message(who, world.ra, csr_for(who, STATIC), cipher="aes128_cbc")
        text = base64.b64encode(message).decode()
        if "+" in text and "/" in text:
            break
    response = await world.client.get(f"/scep?operation=PKIOperation&message={text}")
    assert response.status == 200, await response.text()
    reply = await read_reply(world, who, await response.read())
    assert reply.status == "0" and reply.cipher == "aes128_cbc"


async def test_des3_request_gets_a_des3_reply(world: World) -> None:
    who = requester()
    message = await pki_message(who, world.ra, csr_for(who, STATIC), cipher="tripledes_3key")
    reply = await enroll(world, who, message)
    assert reply.status == "0" and reply.cipher == "tripledes_3key"


async def test_same_request_again_gets_the_same_certificate(world: World) -> None:
    who = requester()
    message = await pki_message(who, world.ra, csr_for(who, await challenge(world)),
                                transaction_id="tid-again")
    first = await enroll(world, who, message)
    second = await enroll(world, who, message)  # the challenge is spent by now
    assert first.status == second.status == "0"
    assert first.certificate == second.certificate
    assert await issued(world) == 1


# --- bad input: a FAILURE with its failInfo, or a 4xx; nothing issued ---------------------

@pytest.mark.parametrize("body", [b"", b"garbage", b"\x30\x03\x02\x01\x01"])
async def test_garbage_is_400(world: World, body: bytes) -> None:
    response = await post(world, body)
    assert response.status == 400
    assert response.content_type == "text/plain"
    assert await issued(world) == 0


async def test_wrong_challenge_is_bad_request(world: World) -> None:
    who = requester()
    reply = await enroll(world, who, await pki_message(who, world.ra,
                                                       csr_for(who, "not-it")))
    assert (reply.status, reply.fail_info) == ("2", "2")
    reply = await enroll(world, who, await pki_message(who, world.ra, csr_for(who, None)))
    assert (reply.status, reply.fail_info) == ("2", "2")
    assert await issued(world) == 0


async def test_reused_challenge_is_bad_request(world: World) -> None:
    password = await challenge(world)
    first, second = requester(), requester()
    assert (await enroll(world, first, await pki_message(
        first, world.ra, csr_for(first, password)))).status == "0"
    reply = await enroll(world, second, await pki_message(
        second, world.ra, csr_for(second, password)))
    assert (reply.status, reply.fail_info) == ("2", "2")
    assert await issued(world) == 1


async def test_challenge_of_another_profile_is_bad_request(world: World) -> None:
    who = requester()
    other = await challenge(world, profile="vcc_service")  # for /scep/default/vcc_service
    reply = await enroll(world, who, await pki_message(who, world.ra, csr_for(who, other)))
    assert (reply.status, reply.fail_info) == ("2", "2")
    assert await issued(world) == 0


async def test_encrypted_to_another_certificate_is_bad_message_check(world: World) -> None:
    who, stranger = requester(), requester("stranger")
    message = await pki_message(who, stranger.certificate, csr_for(who, STATIC))
    reply = await enroll(world, who, message)
    assert (reply.status, reply.fail_info) == ("2", "1")
    assert await issued(world) == 0


async def test_signature_that_does_not_match_is_bad_message_check(world: World) -> None:
    who = requester()
    message = bytearray(await pki_message(who, world.ra, csr_for(who, STATIC)))
    message[-5] ^= 0x01  # inside the signature, the last field of the SignerInfo
    reply = await enroll(world, who, bytes(message))
    assert (reply.status, reply.fail_info) == ("2", "1")
    assert await issued(world) == 0


async def test_signer_certificate_with_a_malformed_subject_is_bad_message_check(
        world: World) -> None:
    # Found by conformance/hostile: cryptography parses a name when it is first read, so a
    # carried certificate whose subject is not a Name (here a BOOLEAN where the common
    # name's string is) passed the signature check and raised in the renewal check: a 503.
    who = requester()
    der = who.certificate.public_bytes(serialization.Encoding.DER)
    utf8_cn = b"\x0c\x06device"
    assert der.count(utf8_cn) == 2  # the issuer, then the subject
    at = der.rindex(utf8_cn)
    broken = x509.load_der_x509_certificate(der[:at] + b"\x01" + der[at + 1:])
    envelope = encrypt_enveloped(csr_for(who, STATIC), [world.ra])
    message = await sign_data(who.signer, broken, envelope, certificates=[broken],
                              signed_attrs=[
                                  sa.printable(sa.TRANSACTION_ID, secrets.token_hex(16)),
                                  sa.printable(sa.MESSAGE_TYPE, "19"),
                                  sa.octets(sa.SENDER_NONCE, secrets.token_bytes(16))])
    response = await post(world, message)  # no certificate to answer to: 400, as garbage
    assert response.status == 400 and response.content_type == "text/plain"
    assert await issued(world) == 0


async def test_unsupported_cipher_is_bad_alg(world: World) -> None:
    who = requester()
    envelope = bytearray(encrypt_enveloped(csr_for(who, STATIC), [world.ra],
                                           cipher="aes128_cbc"))
    # aes128-CBC (2.16.840.1.101.3.4.1.2) becomes aes128-OFB (...1.3), same length.
    oid = bytes.fromhex("608648016503040102")
    at = envelope.index(oid)
    envelope[at + len(oid) - 1] = 0x03
    message = await sign_data(
        who.signer, who.certificate, bytes(envelope), certificates=[who.certificate],
        signed_attrs=[sa.printable(sa.TRANSACTION_ID, "t-alg"),
                      sa.printable(sa.MESSAGE_TYPE, "19"),
                      sa.octets(sa.SENDER_NONCE, b"n" * 16)])
    reply = await enroll(world, who, message)
    assert (reply.status, reply.fail_info) == ("2", "0")
    assert await issued(world) == 0


def des_envelope(content: bytes, recipient: x509.Certificate) -> bytes:
    """EnvelopedData in single DES-CBC, as micromdm's scepclient writes it."""
    key, iv = secrets.token_bytes(8), secrets.token_bytes(8)
    padder = block_padding.PKCS7(64).padder()
    padded = padder.update(content) + padder.finalize()
    encryptor = Cipher(TripleDES(key * 3), modes.CBC(iv)).encryptor()
    public_key = recipient.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    cert = asn1_x509.Certificate.load(recipient.public_bytes(serialization.Encoding.DER))
    return bytes(asn1_cms.ContentInfo({"content_type": "enveloped_data", "content": {
        "version": "v0",
        "recipient_infos": [asn1_cms.RecipientInfo({"ktri": {
            "version": "v0",
            "rid": {"issuer_and_serial_number": {"issuer": cert.issuer,
                                                 "serial_number": cert.serial_number}},
            "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
            "encrypted_key": public_key.encrypt(key, padding.PKCS1v15()),
        }})],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": "des", "parameters": iv},
            "encrypted_content": encryptor.update(padded) + encryptor.finalize(),
        },
    }}).dump())


async def des_message(who: Requester, world: World) -> bytes:
    return await sign_data(
        who.signer, who.certificate, des_envelope(csr_for(who, STATIC), world.ra),
        certificates=[who.certificate],
        signed_attrs=[sa.printable(sa.TRANSACTION_ID, secrets.token_hex(8)),
                      sa.printable(sa.MESSAGE_TYPE, "19"),
                      sa.octets(sa.SENDER_NONCE, b"n" * 16)])


async def test_single_des_is_bad_alg_unless_configured(world: World) -> None:
    who = requester()
    reply = await enroll(world, who, await des_message(who, world))
    assert (reply.status, reply.fail_info) == ("2", "0")
    assert await issued(world) == 0


async def test_single_des_when_configured_gets_an_aes256_reply(
        tmp_path: Any, aiohttp_client: Any) -> None:
    async with fresh_services(tmp_path, VCC_PKI_SCEP_CHALLENGE=STATIC,
                              VCC_PKI_SCEP_ACCEPT_SINGLE_DES="true") as services:
        client = await aiohttp_client(build_http_app(services))
        response = await client.get("/scep", params={"operation": "GetCACert"})
        (ra,) = [c for c in _certs(await response.read()) if not _is_ca(c)]
        world = World(services, client, ra, [])
        who = requester()
        reply = await enroll(world, who, await des_message(who, world))
        assert (reply.status, reply.cipher) == ("0", "aes256_cbc")  # never DES in a reply
        assert await issued(world) == 1


async def test_replayed_transaction_id_with_another_key_is_refused(world: World) -> None:
    first, second = requester(), requester()
    assert (await enroll(world, first, await pki_message(
        first, world.ra, csr_for(first, STATIC), transaction_id="tid-1"))).status == "0"
    reply = await enroll(world, second, await pki_message(
        second, world.ra, csr_for(second, STATIC), transaction_id="tid-1"))
    assert (reply.status, reply.fail_info) == ("2", "2")
    assert await issued(world) == 1


async def test_unsupported_message_type_is_bad_request(world: World) -> None:
    who = requester()
    reply = await enroll(world, who, await pki_message(
        who, world.ra, csr_for(who, STATIC), message_type="99"))
    assert (reply.status, reply.fail_info) == ("2", "2")


async def test_oversized_body_is_413(world: World) -> None:
    response = await post(world, b"\x30" * (64 * 1024 + 1))
    assert response.status == 413
    assert await issued(world) == 0


@pytest.mark.parametrize(("path", "query", "status"), [
    ("/scep", "operation=Nope", 400),
    ("/scep", "", 400),
    ("/scep/nope/external_integration", "operation=GetCACaps", 404),
    ("/scep/default/nope", "operation=GetCACert", 404),
    ("/scep/default/scep_ra", "operation=GetCACert", 404),  # internal profiles are not served
    ("/scep", "operation=PKIOperation&message=%%%", 400),
    ("/scep", "operation=PKIOperation", 400),
])
async def test_http_level_faults(world: World, path: str, query: str, status: int) -> None:
    response = await world.client.get(f"{path}?{query}")
    assert response.status == status
    assert response.content_type == "text/plain"


async def test_other_profile_path_uses_its_challenge(world: World) -> None:
    who = requester()
    password = await challenge(world, profile="vcc_service")
    message = await pki_message(who, world.ra, csr_for(who, password, dns="dev.example"))
    response = await post(world, message, "/scep/default/vcc_service")
    reply = await read_reply(world, who, await response.read())
    assert reply.status == "0" and reply.certificate is not None
    eku = reply.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku  # vcc_service's, not the default
    # the static challenge belongs to /scep only
    other = requester()
    response = await post(world, await pki_message(
        other, world.ra, csr_for(other, STATIC, dns="dev2.example")), "/scep/default/vcc_service")
    assert (await read_reply(world, other, await response.read())).fail_info == "2"


async def test_renewal_signed_by_a_live_certificate_needs_no_challenge(world: World) -> None:
    who = requester()
    first = await enroll(world, who, await pki_message(who, world.ra, csr_for(who, STATIC)))
    assert first.status == "0" and first.certificate is not None
    holder = Requester(who.key, first.certificate)  # the issued certificate signs now
    renewal = await pki_message(holder, world.ra, csr_for(holder, None), message_type="17")
    renewed = await enroll(world, holder, renewal)
    assert renewed.status == "0" and renewed.certificate is not None
    assert renewed.certificate.serial_number != first.certificate.serial_number
    assert await issued(world) == 2
    # a self-signed certificate is no credential, nor a revoked one of ours
    stranger = requester()
    reply = await enroll(world, stranger, await pki_message(
        stranger, world.ra, csr_for(stranger, None), message_type="17"))
    assert (reply.status, reply.fail_info) == ("2", "2")
    await world.services.authority.revoke(
        format(renewed.certificate.serial_number, "x"), "key_compromise", _ADMIN)
    revoked = Requester(who.key, renewed.certificate)
    reply = await enroll(world, revoked, await pki_message(
        revoked, world.ra, csr_for(revoked, None, cn="again"), message_type="17"))
    assert (reply.status, reply.fail_info) == ("2", "2")
    assert await issued(world) == 1  # the revoked one no longer counts as active


def issuer_and_serial(certificate: x509.Certificate, serial: int | None = None) -> bytes:
    loaded = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    return bytes(asn1_cms.IssuerAndSerialNumber({
        "issuer": loaded.issuer,
        "serial_number": serial if serial is not None else loaded.serial_number}).dump())


async def test_get_cert_and_get_crl(world: World) -> None:
    who = requester()
    first = await enroll(world, who, await pki_message(who, world.ra, csr_for(who, STATIC)))
    assert first.certificate is not None
    await world.services.authority.revoke(
        format(first.certificate.serial_number, "x"), "superseded", _ADMIN)
    await world.services.crls.publish_all()
    asker = requester("asker")  # public information: any requester may ask
    reply = await enroll(world, asker, await pki_message(
        asker, world.ra, issuer_and_serial(first.certificate), message_type="21"))
    assert reply.status == "0" and reply.certificate == first.certificate
    response = await post(world, await pki_message(
        asker, world.ra, issuer_and_serial(first.certificate), message_type="22"))
    signed = verify_signed(await response.read())
    assert sa.read_text(signed.signed_attrs, sa.PKI_STATUS) == "0"
    inner = await decrypt_enveloped(signed.content, asker.signer, asker.certificate)
    (crl_choice,) = asn1_cms.ContentInfo.load(inner)["content"]["crls"]
    crl = x509.load_der_x509_crl(crl_choice.chosen.dump())
    assert crl.issuer == world.chain[0].subject
    assert crl.get_revoked_certificate_by_serial_number(first.certificate.serial_number)
    # an unknown serial, or a certificate of another CA: badCertId; garbage: badRequest
    for content, fail in [(issuer_and_serial(first.certificate, 12345), "4"),
                          (issuer_and_serial(world.chain[0]), "4"),
                          (b"\x30\x00", "2")]:
        reply = await enroll(world, asker, await pki_message(
            asker, world.ra, content, message_type="21"))
        assert (reply.status, reply.fail_info) == ("2", fail)


async def test_request_to_the_previous_ra_certificate_still_decrypts(world: World) -> None:
    """A client that fetched GetCACert before the RA was renewed encrypts to the old one."""
    service = world.services.scep
    ca = await world.services.authority.ca("default-issuing")
    await service._new_ra(ca)  # a renewal: a newer, longer-lived RA
    service._ras.clear()
    response = await world.client.get("/scep", params={"operation": "GetCACert"})
    (current,) = [c for c in _certs(await response.read()) if not _is_ca(c)]
    assert current != world.ra
    who = requester()
    reply = await enroll(replace(world, ra=current), who,
                         await pki_message(who, world.ra, csr_for(who, STATIC)))
    assert reply.status == "0"  # signed by the current RA, decrypted by the old one


# --- manual approval: PENDING, CertPoll, `scep pending approve|reject` ---------------------

def issuer_and_subject(issuer: x509.Certificate, cn: str = "device") -> bytes:
    loaded = asn1_x509.Certificate.load(issuer.public_bytes(serialization.Encoding.DER))
    subject = asn1_x509.Name.build({"common_name": cn})
    return bytes(sa.IssuerAndSubject({"issuer": loaded.subject, "subject": subject}).dump())


async def poll(world: World, who: Requester, transaction_id: str,
               nonce: bytes | None = None) -> CertRep:
    return await enroll(world, who, await pki_message(
        who, world.ra, issuer_and_subject(world.chain[0]), transaction_id=transaction_id,
        nonce=nonce, message_type="20"))


async def require_approval(world: World, profile: str | None = None) -> None:
    await world.services.scep.configure("default", profile, _ADMIN, require_approval=True)


async def test_pending_until_approved_then_certpoll_gets_the_certificate(
        world: World) -> None:
    await require_approval(world)
    who = requester()
    nonce = secrets.token_bytes(16)
    message = await pki_message(who, world.ra, csr_for(who, await challenge(world)),
                                transaction_id="tid-pending", nonce=nonce)
    response = await post(world, message)
    signed = verify_signed(await response.read(), content=b"")
    attrs = signed.signed_attrs
    assert sa.read_text(attrs, sa.PKI_STATUS) == "3"  # PENDING (RFC 8894 3.3.2)
    assert sa.read_text(attrs, sa.TRANSACTION_ID) == "tid-pending"
    assert sa.read_octets(attrs, sa.RECIPIENT_NONCE) == nonce
    sender_nonce = sa.read_octets(attrs, sa.SENDER_NONCE)
    assert sender_nonce is not None and sender_nonce != nonce
    assert signed.content == b""  # no pkcsPKIEnvelope
    # the same PKCSReq again (its challenge spent by now), and polls: PENDING, no issuance
    assert (await enroll(world, who, message)).status == "3"
    poll_nonce = secrets.token_bytes(16)
    polled = await poll(world, who, "tid-pending", poll_nonce)
    assert (polled.status, polled.recipient_nonce) == ("3", poll_nonce)
    assert await issued(world) == 0
    (waiting,) = await world.services.scep.pending()
    assert waiting.transaction_id == "tid-pending" and waiting.profile == "external_integration"
    assert waiting.requester is not None and waiting.requester.startswith("challenge:")
    assert await world.services.scep.pending("default") == [waiting]

    decided = await world.services.scep.decide("tid-pending", True, _ADMIN)
    assert decided.status == "success" and decided.cert_id is not None
    assert await world.services.scep.pending() == []
    reply = await poll(world, who, "tid-pending")
    assert reply.status == "0" and reply.certificate is not None
    assert reply.certificate.public_key() == who.key.public_key()
    assert reply.certificate.subject.rfc4514_string().startswith("CN=device")
    again = await enroll(world, who, message)  # the PKCSReq resent: the same certificate
    assert again.status == "0" and again.certificate == reply.certificate
    assert await issued(world) == 1
    with pytest.raises(Conflict):
        await world.services.scep.decide("tid-pending", False, _ADMIN)


async def test_rejected_request_polls_failure_and_nothing_is_issued(world: World) -> None:
    await require_approval(world)
    who = requester()
    message = await pki_message(who, world.ra, csr_for(who, STATIC), transaction_id="tid-no")
    assert (await enroll(world, who, message)).status == "3"
    rejected = await world.services.scep.decide("tid-no", False, _ADMIN)
    assert (rejected.status, rejected.fail_info) == ("rejected", "2")
    for reply in (await poll(world, who, "tid-no"), await enroll(world, who, message)):
        assert (reply.status, reply.fail_info) == ("2", "2")
    with pytest.raises(Conflict):
        await world.services.scep.decide("tid-no", True, _ADMIN)
    assert await issued(world) == 0


async def test_certpoll_bad_input(world: World) -> None:
    await require_approval(world)
    who, stranger = requester(), requester("stranger")
    assert (await enroll(world, who, await pki_message(
        who, world.ra, csr_for(who, STATIC), transaction_id="tid-poll"))).status == "3"
    # no such transaction: badCertId; another key's transaction: badRequest
    assert (await poll(world, who, "tid-unknown")).fail_info == "4"
    assert (await poll(world, stranger, "tid-poll")).fail_info == "2"
    # not an IssuerAndSubject: badRequest
    reply = await enroll(world, who, await pki_message(
        who, world.ra, b"\x04\x01x", transaction_id="tid-poll", message_type="20"))
    assert (reply.status, reply.fail_info) == ("2", "2")
    # another endpoint (profile) than the one the request waits at: badCertId
    response = await post(world, await pki_message(
        who, world.ra, issuer_and_subject(world.chain[0]), transaction_id="tid-poll",
        message_type="20"), "/scep/default/vcc_service")
    assert (await read_reply(world, who, await response.read())).fail_info == "4"
    # still waiting, nothing issued; a changed request under the waiting transactionID is
    # refused rather than replacing what the operator sees
    assert (await poll(world, who, "tid-poll")).status == "3"
    reply = await enroll(world, who, await pki_message(
        who, world.ra, csr_for(who, STATIC, cn="other"), transaction_id="tid-poll"))
    assert (reply.status, reply.fail_info) == ("2", "2")
    (waiting,) = await world.services.scep.pending()
    assert x509.load_der_x509_csr(waiting.csr_der or b"").subject.rfc4514_string() == \
        "CN=device"
    assert await issued(world) == 0


async def test_queued_request_spends_its_challenge(world: World) -> None:
    await require_approval(world)
    password = await challenge(world)
    first, second = requester(), requester()
    assert (await enroll(world, first, await pki_message(
        first, world.ra, csr_for(first, password)))).status == "3"
    reply = await enroll(world, second, await pki_message(
        second, world.ra, csr_for(second, password)))
    assert (reply.status, reply.fail_info) == ("2", "2")
    assert len(await world.services.scep.pending()) == 1


async def issued_at(world: World, profile: str) -> int:
    return sum(n for _, p, n in await world.services.store.count_active_certificates(
        dt.datetime.now(dt.UTC)) if p == profile)


async def test_approval_is_per_endpoint_and_can_be_turned_off(world: World) -> None:
    await require_approval(world, "vcc_service")
    path = "/scep/default/vcc_service"
    who = requester()
    assert (await enroll(world, who, await pki_message(
        who, world.ra, csr_for(who, STATIC)))).status == "0"  # /scep: no approval
    # the endpoint that requires it queues: PENDING, nothing issued there
    password = await challenge(world, profile="vcc_service")
    waiting = requester()
    response = await post(world, await pki_message(
        waiting, world.ra, csr_for(waiting, password, dns="w.example")), path)
    assert (await read_reply(world, waiting, await response.read())).status == "3"
    assert len(await world.services.scep.pending()) == 1
    assert await issued_at(world, "vcc_service") == 0
    policy = await world.services.scep.configure("default", "vcc_service", _ADMIN,
                                                 require_approval=False)
    assert not policy.require_approval
    # turned off: the next request there is issued at once
    password = await challenge(world, profile="vcc_service")
    direct = requester()
    response = await post(world, await pki_message(
        direct, world.ra, csr_for(direct, password, dns="d.example")), path)
    assert (await read_reply(world, direct, await response.read())).status == "0"
    assert await issued_at(world, "vcc_service") == 1
    with pytest.raises(Forbidden):
        await world.services.scep.configure(
            "default", None, Principal("api", "t", None, "pki_operator"),
            require_approval=True)
    with pytest.raises(NotFound):
        await world.services.scep.decide("nope", True, _ADMIN)


# --- per-endpoint static challenge ------------------------------------------------------

async def test_static_challenge_per_endpoint_is_stored_hashed(world: World) -> None:
    secret = "profile-secret-42"
    await world.services.scep.configure("default", "vcc_service", _ADMIN, secret=secret)
    stored = await world.services.store.get_scep_endpoint(
        (await world.services.authority.organization("default")).org_id, "vcc_service")
    assert stored is not None and stored.secret_hash is not None
    assert stored.secret_hash.startswith("scrypt$") and secret not in stored.secret_hash
    path = "/scep/default/vcc_service"
    for n in range(2):  # static: usable again (the second time from the process's cache)
        who = requester()
        response = await post(world, await pki_message(
            who, world.ra, csr_for(who, secret, dns=f"d{n}.example")), path)
        assert (await read_reply(world, who, await response.read())).status == "0"
    # a wrong one, the endpoint's secret at another endpoint, the env one at this endpoint
    for password, where in [("profile-secret-43", path), (secret, "/scep"), (STATIC, path)]:
        who = requester()
        response = await post(world, await pki_message(
            who, world.ra, csr_for(who, password, dns="x.example")), where)
        reply = await read_reply(world, who, await response.read())
        assert (reply.status, reply.fail_info) == ("2", "2")
    await world.services.scep.configure("default", "vcc_service", _ADMIN, clear_secret=True)
    world.services.scep._static_ok.clear()
    who = requester()
    response = await post(world, await pki_message(
        who, world.ra, csr_for(who, secret, dns="y.example")), path)
    reply = await read_reply(world, who, await response.read())
    assert (reply.status, reply.fail_info) == ("2", "2")
    assert await issued_at(world, "vcc_service") == 2  # the two good ones, no more
    assert await issued(world) == 0
    for bad in ("short", "x" * 256, "tab\there!"):
        with pytest.raises(BadRequest):
            await world.services.scep.configure("default", None, _ADMIN, secret=bad)


# --- capabilities -----------------------------------------------------------------------

async def test_des3_is_offered_only_when_configured(tmp_path: Any, aiohttp_client: Any
                                                    ) -> None:
    async with fresh_services(tmp_path, VCC_PKI_SCEP_ADVERTISE_DES3="true") as services:
        client = await aiohttp_client(build_http_app(services))
        response = await client.get("/scep", params={"operation": "GetCACaps"})
        caps = (await response.text()).split("\n")
        assert "DES3" in caps and "DES" not in caps and "AES" in caps


async def test_des3_is_not_offered_by_default(world: World) -> None:
    response = await world.client.get("/scep", params={"operation": "GetCACaps"})
    assert "DES3" not in (await response.text()).split("\n")


# --- failures are remembered ------------------------------------------------------------

async def test_failed_request_gets_the_same_failure_again(world: World) -> None:
    secret = "set-too-late-secret"
    who = requester()
    path = "/scep/default/vcc_service"
    message = await pki_message(who, world.ra, csr_for(who, secret, dns="late.example"),
                                transaction_id="tid-fail")
    first = await read_reply(world, who, await (await post(world, message, path)).read())
    assert (first.status, first.fail_info) == ("2", "2")
    stored = await world.services.store.get_scep_transaction("tid-fail")
    assert stored is not None and (stored.status, stored.fail_info) == ("failure", "2")
    # the secret exists now, but this very request keeps its answer
    await world.services.scep.configure("default", "vcc_service", _ADMIN, secret=secret)
    again = await read_reply(world, who, await (await post(world, message, path)).read())
    assert (again.status, again.fail_info) == ("2", "2")
    # another key under the failed transactionID stays refused
    other = requester()
    reply = await read_reply(world, other, await (await post(world, await pki_message(
        other, world.ra, csr_for(other, secret, dns="o.example"),
        transaction_id="tid-fail"), path)).read())
    assert (reply.status, reply.fail_info) == ("2", "2")
    assert (await world.services.store.get_scep_transaction("tid-fail")) == stored
    # the same key with a new request under that transactionID is decided afresh
    fresh = await read_reply(world, who, await (await post(world, await pki_message(
        who, world.ra, csr_for(who, secret, dns="late2.example"),
        transaction_id="tid-fail"), path)).read())
    assert fresh.status == "0"


async def test_not_a_csr_failure_is_remembered(world: World) -> None:
    who = requester()
    message = await pki_message(who, world.ra, b"\x30\x00", transaction_id="tid-csr")
    reply = await enroll(world, who, message)
    assert (reply.status, reply.fail_info) == ("2", "2")  # not a PKCS#10
    stored = await world.services.store.get_scep_transaction("tid-csr")
    assert stored is not None and stored.status == "failure"


async def test_a_failure_does_not_replace_an_issued_transaction(world: World) -> None:
    who = requester()
    message = await pki_message(who, world.ra, csr_for(who, STATIC), transaction_id="tid-ok")
    first = await enroll(world, who, message)
    assert first.status == "0"
    # the same key, another request under that transactionID, refused (wrong challenge)
    reply = await enroll(world, who, await pki_message(
        who, world.ra, csr_for(who, "wrong", cn="other"), transaction_id="tid-ok"))
    assert (reply.status, reply.fail_info) == ("2", "2")
    again = await enroll(world, who, message)  # still answered with its certificate
    assert again.status == "0" and again.certificate == first.certificate
    assert await issued(world) == 1


async def test_pending_request_resent_with_a_new_signer_certificate_is_the_same(
        world: World) -> None:
    """certmonger signs every message with a new self-signed certificate of the same key:
    the PKCS#10 (and key) make the request, not that certificate."""
    await require_approval(world)
    who = requester()
    csr = csr_for(who, await challenge(world))
    assert (await enroll(world, who, await pki_message(
        who, world.ra, csr, transaction_id="tid-cm"))).status == "3"
    resigned = Requester(who.key, _self_signed(who.key, "device"))
    assert resigned.certificate != who.certificate
    assert (await enroll(world, resigned, await pki_message(
        resigned, world.ra, csr, transaction_id="tid-cm"))).status == "3"
    await world.services.scep.decide("tid-cm", True, _ADMIN)
    reply = await poll(world, resigned, "tid-cm")
    assert reply.status == "0" and reply.certificate is not None


# --- issuing CA rollover: GetNextCACert, activation --------------------------------------

async def ocsp_status(world: World, certificate: x509.Certificate,
                      issuer: x509.Certificate) -> Any:
    request = x509.ocsp.OCSPRequestBuilder().add_certificate(
        certificate, issuer, hashes.SHA1()).build()
    response = await world.client.post(
        "/ocsp", data=request.public_bytes(serialization.Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"})
    return x509.ocsp.load_der_ocsp_response(await response.read()).certificate_status


async def test_rollover_get_next_ca_cert_then_activation(world: World, tmp_path: Any) -> None:
    services = world.services
    old_ca = world.chain[0]
    who = requester()
    before = await enroll(world, who, await pki_message(who, world.ra, csr_for(who, STATIC)))
    assert before.certificate is not None and before.certificate.issuer == old_ca.subject
    response = await world.client.get("/scep", params={"operation": "GetNextCACert"})
    assert (response.status, response.content_type) == (404, "text/plain")

    created = await rollover_issuing_ca(services.authority, "default")
    assert created.name == "default-issuing-g2"
    with pytest.raises(Conflict):  # one rollover at a time
        await rollover_issuing_ca(services.authority, "default")
    response = await world.client.get("/scep", params={"operation": "GetCACaps"})
    assert "GetNextCACert" in (await response.text()).split("\n")
    response = await world.client.get("/scep", params={"operation": "GetNextCACert"})
    assert response.status == 200
    assert response.content_type == "application/x-x509-next-ca-cert"
    body = await response.read()
    signed = verify_signed(body)
    assert signed.signer == world.ra  # signed by the current RA key
    upcoming = _certs(signed.content)
    successor = (await services.authority.ca("default-issuing-g2")).certificate
    assert successor in upcoming and successor.subject != old_ca.subject
    (next_ra,) = [c for c in upcoming if not _is_ca(c)]
    assert next_ra.issuer == successor.subject
    # what openssl makes of it: the signature verifies, the content is the certificates
    (tmp_path / "next.der").write_bytes(body)
    (tmp_path / "ra.pem").write_bytes(world.ra.public_bytes(serialization.Encoding.PEM))
    verified = subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "next.der"),
         "-noverify", "-certfile", str(tmp_path / "ra.pem"), "-binary",
         "-out", str(tmp_path / "inner.der")], capture_output=True, text=True, check=False)
    assert verified.returncode == 0, verified.stderr
    printed = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-in", str(tmp_path / "inner.der"),
         "-print_certs", "-noout"], capture_output=True, text=True, check=True).stdout
    assert "Issuing CA default G2" in printed and "SCEP RA default-issuing-g2" in printed

    # "next" issues nothing: enrollments still come from the active CA
    again = requester()
    reply = await enroll(world, again, await pki_message(again, world.ra,
                                                         csr_for(again, STATIC)))
    assert reply.certificate is not None and reply.certificate.issuer == old_ca.subject
    with pytest.raises(Forbidden):
        await services.authority.issue(IssuanceRequest(
            csr=csr_for(again, None), profile="external_integration", org="default",
            ca="default-issuing-g2"), Principal("api", "t", None, "pki_admin"))

    assert await activate_issuing_ca(services.authority, "default-issuing-g2") == \
        "default-issuing"
    statuses = {ca.name: ca.status for ca in await services.store.list_cas()}
    assert (statuses["default-issuing"], statuses["default-issuing-g2"]) == (
        "retired", "active")
    response = await world.client.get("/scep", params={"operation": "GetCACaps"})
    assert "GetNextCACert" not in (await response.text()).split("\n")
    response = await world.client.get("/scep", params={"operation": "GetCACert"})
    (new_ra,) = [c for c in _certs(await response.read()) if not _is_ca(c)]
    assert new_ra == next_ra
    fresh = requester()
    after = await enroll(replace(world, ra=new_ra), fresh, await pki_message(
        fresh, new_ra, csr_for(fresh, STATIC)))
    assert after.certificate is not None and after.certificate.issuer == successor.subject
    # a device of the retired CA renews without a challenge, through the new RA
    holder = Requester(who.key, before.certificate)
    renewed = await enroll(replace(world, ra=new_ra), holder, await pki_message(
        holder, new_ra, csr_for(holder, None), message_type="17"))
    assert renewed.certificate is not None and renewed.certificate.issuer == successor.subject
    # the retired CA still answers OCSP for what it issued (the periodic job loads CAs)
    await services.ocsp.maintain()
    assert await ocsp_status(world, before.certificate, old_ca) == \
        x509.ocsp.OCSPCertStatus.GOOD
    assert await ocsp_status(world, after.certificate, successor) == \
        x509.ocsp.OCSPCertStatus.GOOD
    with pytest.raises(Conflict):
        await activate_issuing_ca(services.authority, "default-issuing-g2")


async def test_pkcsreq_signed_by_a_live_certificate_renews_as_sscep_does(world: World) -> None:
    """sscep renews with a PKCSReq signed by the old certificate and key (-O, -K), and keeps
    the key: the same PKCS#10 under a new signer certificate is a new request."""
    who = requester()
    csr = csr_for(who, STATIC)
    first = await enroll(world, who, await pki_message(who, world.ra, csr,
                                                       transaction_id="tid-sscep"))
    assert first.status == "0" and first.certificate is not None
    holder = Requester(who.key, first.certificate)
    renewed = await enroll(world, holder, await pki_message(
        holder, world.ra, csr, transaction_id="tid-sscep"))
    assert renewed.status == "0" and renewed.certificate is not None
    assert renewed.certificate.serial_number != first.certificate.serial_number
    assert await issued(world) == 2
