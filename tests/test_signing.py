"""The one signing path (ca_core.signing): a key signs only what its certificate allows,
and a refused signature never reaches the key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca_core.errors import Unavailable
from ca_core.signers.base import KeySpec
from ca_core.signers.software import SoftwareKeyBackend
from ca_core.signing import KeyUsageRefused, Purpose, SigningKey, allowed_purposes
from tests.helpers import make_key

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def certificate(ca: bool, usage: x509.KeyUsage | None,
                eku: list[x509.ObjectIdentifier] | None = None) -> x509.Certificate:
    key = make_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1)
               .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=True)
    return builder.sign(key, hashes.SHA256())


def usage(**allowed: bool) -> x509.KeyUsage:
    fields = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
         "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
        False)
    fields.update(allowed)
    return x509.KeyUsage(**fields)


def test_allowed_purposes_follow_key_usage_and_eku() -> None:
    ca = certificate(True, usage(key_cert_sign=True, crl_sign=True))
    assert allowed_purposes(ca) == {Purpose.CERTIFICATE, Purpose.CRL, Purpose.OCSP}
    tsa = certificate(False, usage(digital_signature=True), [ExtendedKeyUsageOID.TIME_STAMPING])
    assert allowed_purposes(tsa) == {Purpose.TIMESTAMP}
    responder = certificate(False, usage(digital_signature=True),
                            [ExtendedKeyUsageOID.OCSP_SIGNING])
    assert allowed_purposes(responder) == {Purpose.OCSP}
    server = certificate(False, usage(digital_signature=True),
                         [ExtendedKeyUsageOID.SERVER_AUTH])
    assert allowed_purposes(server) == frozenset()
    # keyCertSign without the CA flag is no CA (RFC 5280 4.2.1.9)
    assert Purpose.CERTIFICATE not in allowed_purposes(
        certificate(False, usage(key_cert_sign=True)))


async def test_a_refused_signature_never_reaches_the_key(tmp_path: Path) -> None:
    signer = SoftwareKeyBackend(tmp_path, b"pass").generate(KeySpec.parse("ec-p256"), "k")
    leaf = certificate(False, usage(digital_signature=True), [ExtendedKeyUsageOID.SERVER_AUTH])
    key = SigningKey("leaf", signer, leaf)
    called: list[bool] = []
    for purpose in Purpose:
        with pytest.raises(KeyUsageRefused) as refused:
            await key.sign(purpose, lambda: called.append(True))
        assert isinstance(refused.value, Unavailable)
    assert called == []
    tsa = SigningKey("tsa", signer, certificate(
        False, usage(digital_signature=True), [ExtendedKeyUsageOID.TIME_STAMPING]))
    assert await tsa.sign(Purpose.TIMESTAMP, lambda: signer.sign_sync(b"x"))
    with pytest.raises(KeyUsageRefused):
        await tsa.sign(Purpose.CERTIFICATE, lambda: b"")
