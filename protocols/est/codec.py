"""EST wire encoding (RFC 7030 4, RFC 8951 3.2): base64 bodies, certs-only responses,
CSR attributes, the serverkeygen multipart (RFC 7030 4.4.2) and plain-text errors.

RFC 8951 3.2: every body is base64, whatever ``Content-Transfer-Encoding`` says (a header
HTTP does not have); line breaks are optional, so one line without a trailing newline is
as good as 64- or 76-column lines. Responses are written in 64-column lines, the form
libest and ``openssl base64 -d`` read.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import secrets
import urllib.parse
from collections.abc import Iterable, Sequence

from cryptography import x509

from ca_core.cms import certs_only
from ca_core.errors import (
    BadRequest,
    CAError,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)

PKCS10 = "application/pkcs10"
PKCS7_CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
PKCS7_SERVER_KEY = "application/pkcs7-mime; smime-type=server-generated-key"
PKCS8 = "application/pkcs8"
CSRATTRS = "application/csrattrs"
BASE64_HEADERS = {"Content-Transfer-Encoding": "base64"}

# The PEM armour some clients leave around the request, and whitespace of any line breaks.
_ARMOUR = re.compile(rb"-----(BEGIN|END) [A-Z0-9 ]+-----")
_WHITESPACE = re.compile(rb"\s+")


class BadEncoding(BadRequest):
    """A body that is not base64 (RFC 8951 3.2)."""

    kind = "bad_request"


def decode_base64(body: bytes) -> bytes:
    """The DER inside a base64 body: with or without line breaks (LF or CRLF), with or
    without a trailing newline, with or without PEM armour; anything else is refused."""
    text = _WHITESPACE.sub(b"", _ARMOUR.sub(b"", body))
    if not text:
        raise BadEncoding("the request body is empty: send the PKCS#10 request in base64")
    try:
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadEncoding("the request body is not base64 (RFC 8951 3.2: the PKCS#10 "
                          "request in base64, with or without line breaks)") from None
    if not der or der[0] != 0x30:  # a DER SEQUENCE, as every PKCS#10 request is
        raise BadEncoding("the base64 body does not hold a DER PKCS#10 request")
    return der


def encode_base64(der: bytes) -> bytes:
    """Base64 in 64-column lines, each ending in a newline."""
    text = base64.b64encode(der)
    return b"".join(text[i:i + 64] + b"\n" for i in range(0, len(text), 64))


def certs_only_body(certificates: Sequence[x509.Certificate]) -> bytes:
    """An ``application/pkcs7-mime; smime-type=certs-only`` body (RFC 7030 4.1.3, 4.2.3)."""
    return encode_base64(certs_only(certificates))


def multipart_key_and_certificate(key_part: bytes, key_type: str,
                                  certificates: Sequence[x509.Certificate],
                                  boundary: str | None = None) -> tuple[bytes, str]:
    """The serverkeygen response (RFC 7030 4.4.2): ``multipart/mixed`` with the private key
    (``key_type``: ``application/pkcs8`` for a PKCS#8 PrivateKeyInfo, the
    server-generated-key pkcs7-mime type for CMS EnvelopedData) and the certificate as
    certs-only. Returns the body and the Content-Type header value."""
    boundary = boundary or f"est-{secrets.token_hex(12)}"
    parts = [
        (key_type, encode_base64(key_part)),
        (PKCS7_CERTS_ONLY, certs_only_body(certificates)),
    ]
    # RFC 2046 5.1.1: CRLF line ends, and the CRLF before each delimiter belongs to it.
    body = b"".join(
        f"--{boundary}\r\nContent-Type: {content_type}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n".encode()
        + payload.rstrip(b"\n").replace(b"\n", b"\r\n") + b"\r\n"
        for content_type, payload in parts
    ) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/mixed; boundary={boundary}"


# ------------------------------------------------------------------------ credentials

def decode_basic(authorization: str) -> tuple[str, str]:
    """User and password of an ``Authorization: Basic`` header (RFC 7617 2: UTF-8, or
    Latin-1 from older clients); ValueError for another scheme or a malformed value."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise ValueError("not Basic")
    raw = base64.b64decode(value.strip(), validate=True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    user, colon, password = text.partition(":")
    if not colon:
        raise ValueError("no colon")
    return user, password


# ------------------------------------------------------------------ client certificates

def parse_header_certificate(value: str) -> tuple[x509.Certificate, ...]:
    """The client certificate a TLS-terminating proxy forwards: URL-encoded PEM (nginx
    ``$ssl_client_escaped_cert``), PEM with its line breaks folded to spaces or tabs (nginx
    ``$ssl_client_cert``), or base64 DER (HAProxy ``%[ssl_c_der,base64]``). The leaf
    first, then any chain the proxy passed along."""
    text = urllib.parse.unquote(value).strip()
    try:
        if "-----BEGIN" in text:
            # Folded PEM: restore line breaks around the armour, the base64 may stay one line.
            pem = re.sub(r"\s*(-----(?:BEGIN|END) CERTIFICATE-----)\s*", r"\n\1\n", text)
            return tuple(x509.load_pem_x509_certificates(pem.encode()))
        return (x509.load_der_x509_certificate(
            base64.b64decode(_WHITESPACE.sub(b"", text.encode()), validate=True)),)
    except (ValueError, binascii.Error):
        raise BadRequest("the client-certificate header does not hold a certificate") from None


def parse_networks(addresses: Iterable[str]) -> tuple[ipaddress.IPv4Network
                                                      | ipaddress.IPv6Network, ...]:
    """``VCC_PKI_EST_TRUSTED_PROXIES`` entries: addresses or networks (``10.0.0.0/8``)."""
    return tuple(ipaddress.ip_network(a.strip(), strict=False) for a in addresses if a.strip())


def address_in(remote: str | None,
               networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    if not remote or not networks:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


# ---------------------------------------------------------------------------- errors

# CAError kinds -> HTTP status (RFC 7030 4.2.3: 4xx/5xx with an optional plain-text reason;
# RFC 7030 3.2.3: 401 asks for HTTP authentication). By class, so a new subclass of a
# kind maps with its parent.
_STATUS_BY_CLASS: tuple[tuple[type[CAError], int], ...] = (
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (RateLimited, 429),
    (Unavailable, 503),
    (BadRequest, 400),
    (ValidationFailed, 400),
)


def status_for(error: CAError) -> int:
    """The one mapping of domain errors to EST statuses. Every BadRequest (a body that is
    not base64, a CSR that does not parse or verify, a policy refusal, a missing channel
    binding) is 400; a bare CAError is an internal fault (500, its text never sent)."""
    for cls, status in _STATUS_BY_CLASS:
        if isinstance(error, cls):
            return status
    return 500
