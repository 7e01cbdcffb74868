"""ACME Renewal Information (RFC 9773): the certificate identifier of section 4.1,
``base64url(AKI keyIdentifier) '.' base64url(serial DER content)``, in and out."""

from __future__ import annotations

from cryptography import x509

from ca_core.acme import AriCertId
from protocols.acme.jws import b64url, b64url_decode
from protocols.acme.problems import AcmeProblem


def cert_id(certificate: x509.Certificate) -> str:
    """The RFC 9773 identifier of a certificate."""
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    serial = certificate.serial_number
    raw = serial.to_bytes((serial.bit_length() + 8) // 8, "big")  # DER: leading 0 if high bit
    return f"{b64url(aki.key_identifier or b'')}.{b64url(raw)}"


def parse_cert_id(text: str) -> AriCertId:
    """An identifier a client sent (renewalInfo path, an order's ``replaces``); malformed
    unless it is two strict base64url parts."""
    try:
        aki_text, serial_text = text.split(".")
        aki = b64url_decode(aki_text, "the key identifier")
        serial = int.from_bytes(b64url_decode(serial_text, "the serial"), "big")
    except (ValueError, AcmeProblem):
        raise AcmeProblem("malformed", "not an ARI certificate identifier") from None
    return AriCertId(text, aki, serial)
