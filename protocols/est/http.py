"""EST over HTTPS (RFC 7030 3.2, RFC 8951): the operations under ``/.well-known/est/`` and
``/.well-known/est/{label}/`` (RFC 7030 3.2.2).

Decode (content type, body size, base64 PKCS#10, Basic credentials, the TLS peer's
certificate and tls-unique, a trusted proxy's certificate header) -> the registrar
(``ca_core.est.EstService``) -> encode. Every refusal is a 4xx with a plain-text reason
(RFC 7030 4.2.3), mapped in one place (``codec.status_for``): 401 carries
``WWW-Authenticate: Basic`` (RFC 7030 3.2.3), a pending enrollment is 202 with Retry-After
(RFC 7030 4.2.3), an over-long body 413, another media type 415, ``fullcmc`` 501.
"""

from __future__ import annotations

import binascii
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import hdrs, web
from cryptography import x509
from prometheus_client import Counter

from ca_core.errors import CAError, Forbidden, Unauthorized
from ca_core.est import DEFAULT_LABEL, EnrollmentResult, EstCredentials, EstSettings
from protocols.est import tls_shim
from protocols.est.codec import (
    BASE64_HEADERS,
    CSRATTRS,
    PKCS7_CERTS_ONLY,
    PKCS7_SERVER_KEY,
    PKCS8,
    PKCS10,
    address_in,
    certs_only_body,
    decode_base64,
    decode_basic,
    encode_base64,
    multipart_key_and_certificate,
    parse_header_certificate,
    parse_networks,
    status_for,
)

log = logging.getLogger(__name__)

WELL_KNOWN = "/.well-known/est"
# nginx: proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;
CLIENT_CERT_HEADER = "X-SSL-Client-Cert"
REALM = "vcc-pki EST"


class EstRegistrar(Protocol):
    """What this front-end asks of the core (``ca_core.est.EstService``)."""

    async def ca_certificates(self, label: str) -> tuple[x509.Certificate, ...]: ...

    async def csr_attributes(self, label: str) -> bytes: ...

    async def enroll(self, label: str, csr_der: bytes, credentials: EstCredentials
                     ) -> EnrollmentResult: ...

    async def reenroll(self, label: str, csr_der: bytes, credentials: EstCredentials
                       ) -> EnrollmentResult: ...

    async def server_keygen(self, label: str, csr_der: bytes, credentials: EstCredentials
                            ) -> EnrollmentResult: ...


@dataclass(frozen=True, slots=True)
class FrontSettings:
    """What the wire needs of ``EstSettings``: the proxies whose certificate header counts
    and the body limit."""

    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_body_bytes: int = 64 * 1024

    @classmethod
    def of(cls, settings: EstSettings) -> FrontSettings:
        return cls(parse_networks(settings.trusted_proxies), settings.max_body_bytes)


REGISTRAR: web.AppKey[EstRegistrar] = web.AppKey("est_registrar")
FRONT = web.AppKey("est_front", FrontSettings)

EST_RESPONSES = Counter(
    "pki_est_responses_total", "EST responses by operation and HTTP status",
    ["operation", "status"])

Operation = Callable[[EstRegistrar, str, bytes, EstCredentials], Awaitable[EnrollmentResult]]


# ------------------------------------------------------------------------- responses

def _text(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=reason.rstrip("\n") + "\n",
                        content_type="text/plain", charset="utf-8", headers=headers)


def error_response(error: CAError, operation: str) -> web.Response:
    """The one place a CAError becomes an EST response: a plain-text reason (the error's
    text, meant for the client), never internal detail."""
    status = status_for(error)
    headers: dict[str, str] = {}
    if status == 401:
        headers[hdrs.WWW_AUTHENTICATE] = f'Basic realm="{REALM}"'
    elif status in (429, 503):
        retry = getattr(error, "retry_after", None)
        headers[hdrs.RETRY_AFTER] = str(max(1, int(retry or 5)))
    if status >= 500 and status != 503:
        log.error("EST %s: internal error: %s", operation, error.detail)
        reason = "internal error"
    else:
        log.info("EST %s refused (%d): %s", operation, status, error.detail)
        reason = error.detail
    EST_RESPONSES.labels(operation, str(status)).inc()
    return _text(status, reason, headers)


def _refuse(status: int, reason: str, operation: str) -> web.Response:
    log.info("EST %s refused (%d): %s", operation, status, reason)
    EST_RESPONSES.labels(operation, str(status)).inc()
    return _text(status, reason)


def _base64_response(body: bytes, content_type: str, operation: str) -> web.Response:
    EST_RESPONSES.labels(operation, "200").inc()
    # Content-Type with parameters is set whole: aiohttp's content_type= takes no parameters.
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type, **BASE64_HEADERS,
                                            hdrs.CACHE_CONTROL: "no-store"})


def _enrollment_response(result: EnrollmentResult, operation: str) -> web.Response:
    if result.certificate is None:
        if result.retry_after is None:
            raise CAError("the registrar returned neither a certificate nor a retry time")
        EST_RESPONSES.labels(operation, "202").inc()
        return _text(202, "the request waits for an operator's approval; send the same "
                          f"request again after {result.retry_after} seconds",
                     {hdrs.RETRY_AFTER: str(result.retry_after)})
    if operation != "serverkeygen":
        # RFC 7030 4.2.3: certs-only "containing only the certificate that was issued".
        return _base64_response(certs_only_body([result.certificate]), PKCS7_CERTS_ONLY,
                                operation)
    if result.encrypted_key is not None:
        key, key_type = result.encrypted_key, PKCS7_SERVER_KEY
    elif result.private_key_pkcs8 is not None:
        key, key_type = result.private_key_pkcs8, PKCS8
    else:
        raise CAError("serverkeygen returned no key")
    body, content_type = multipart_key_and_certificate(key, key_type, [result.certificate])
    EST_RESPONSES.labels(operation, "200").inc()
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type,
                                            hdrs.CACHE_CONTROL: "no-store"})


# ---------------------------------------------------------------------------- decoding

def _label(request: web.Request) -> str:
    return request.match_info.get("label", DEFAULT_LABEL)


@dataclass(frozen=True, slots=True)
class _Peer:
    certificate: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    tls_unique: bytes | None = None
    tls_exporter: bytes | None = None


def _tls_peer(request: web.Request) -> _Peer:
    """The TLS client certificate and the chain it came with (unverified: the core verifies
    them; where the TLS shim is unavailable OpenSSL verified them in the handshake), and
    the channel binding: tls-unique on TLS 1.2 (RFC 5929), tls-exporter on TLS 1.3 (RFC
    9266; TLS 1.3 has no tls-unique, RFC 8446 C.5)."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return _Peer()
    der = ssl_object.getpeercert(binary_form=True)
    certificate = chain = None
    if der:
        try:
            certificate = x509.load_der_x509_certificate(der)
            chain = tuple(x509.load_der_x509_certificate(c)
                          for c in tls_shim.peer_chain(ssl_object))
        except ValueError:
            raise Unauthorized("the TLS client certificate (or its chain) does not "
                               "parse") from None
    version = ssl_object.version()
    return _Peer(
        certificate=certificate, chain=chain or (),
        tls_unique=(ssl_object.get_channel_binding("tls-unique")
                    if version == "TLSv1.2" else None),
        tls_exporter=tls_shim.tls_exporter(ssl_object) if version == "TLSv1.3" else None)


def credentials(request: web.Request) -> EstCredentials:
    """What the client presented: Basic credentials, and a client certificate from the TLS
    handshake or, from a trusted proxy only, from its header (whose TLS peer is the proxy)."""
    front = request.app[FRONT]
    user = password = None
    authorization = request.headers.get(hdrs.AUTHORIZATION)
    if authorization:
        try:
            user, password = decode_basic(authorization)
        except (ValueError, binascii.Error):
            raise Unauthorized("the Authorization header is not HTTP Basic (RFC 7617) with "
                               "an enrollment secret") from None
    header = request.headers.get(CLIENT_CERT_HEADER, "").strip()
    if address_in(request.remote, front.trusted_proxies):
        chain: Sequence[x509.Certificate] = parse_header_certificate(header) if header else ()
        peer = _Peer(certificate=chain[0] if chain else None, chain=tuple(chain[1:]))
    elif header:
        raise Forbidden(f"{CLIENT_CERT_HEADER} is accepted only from a trusted proxy "
                        "(VCC_PKI_EST_TRUSTED_PROXIES); present the certificate in the TLS "
                        "handshake")
    else:
        peer = _tls_peer(request)
    return EstCredentials(basic_user=user, basic_password=password,
                          client_certificate=peer.certificate, client_chain=peer.chain,
                          tls_unique=peer.tls_unique, tls_exporter=peer.tls_exporter,
                          remote=request.remote or "")


async def _pkcs10_body(request: web.Request, operation: str) -> bytes | web.Response:
    """The request's PKCS#10 DER, or the 413/415 response that refuses it."""
    if request.content_type != PKCS10:
        return _refuse(415, f"send the request as {PKCS10} (base64), not "
                            f"{request.headers.get(hdrs.CONTENT_TYPE, 'no content type')}",
                       operation)
    limit = request.app[FRONT].max_body_bytes
    too_large = f"EST requests are at most {limit} bytes"
    if (request.content_length or 0) > limit:
        return _refuse(413, too_large, operation)
    try:
        body = await request.read()  # the app's client_max_size is the same limit
    except web.HTTPRequestEntityTooLarge:
        return _refuse(413, too_large, operation)
    if len(body) > limit:
        return _refuse(413, too_large, operation)
    return body


# ---------------------------------------------------------------------------- handlers

async def cacerts(request: web.Request) -> web.Response:
    """RFC 7030 4.1: the CA certificates, certs-only; no authentication (4.1.1)."""
    try:
        certificates = await request.app[REGISTRAR].ca_certificates(_label(request))
    except CAError as exc:
        return error_response(exc, "cacerts")
    return _base64_response(certs_only_body(certificates), PKCS7_CERTS_ONLY, "cacerts")


async def csrattrs(request: web.Request) -> web.Response:
    """RFC 7030 4.5: the attributes and key type the label's profile wants; 204 when it
    names none (4.5.2)."""
    try:
        der = await request.app[REGISTRAR].csr_attributes(_label(request))
    except CAError as exc:
        return error_response(exc, "csrattrs")
    if not der:
        EST_RESPONSES.labels("csrattrs", "204").inc()
        return web.Response(status=204)
    return _base64_response(encode_base64(der), CSRATTRS, "csrattrs")


def _enrollment(operation: str, call: Operation
                ) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        body = await _pkcs10_body(request, operation)
        if isinstance(body, web.Response):
            return body
        try:
            csr_der = decode_base64(body)
            result = await call(request.app[REGISTRAR], _label(request), csr_der,
                                credentials(request))
            return _enrollment_response(result, operation)
        except CAError as exc:
            return error_response(exc, operation)

    handler.__name__ = operation
    return handler


async def fullcmc(request: web.Request) -> web.Response:
    """RFC 7030 4.3 is optional: not offered."""
    return _refuse(501, "full CMC (RFC 7030 4.3) is not offered here: use simpleenroll, "
                        "simplereenroll or serverkeygen", "fullcmc")


def add_routes(app: web.Application, registrar: EstRegistrar, settings: EstSettings) -> None:
    """The EST operations, unlabelled and under ``{label}``; the app's ``client_max_size``
    should be ``settings.max_body_bytes`` (build the app with it)."""
    app[REGISTRAR] = registrar
    app[FRONT] = FrontSettings.of(settings)
    simpleenroll = _enrollment(
        "simpleenroll", lambda r, label, csr, creds: r.enroll(label, csr, creds))
    simplereenroll = _enrollment(
        "simplereenroll", lambda r, label, csr, creds: r.reenroll(label, csr, creds))
    serverkeygen = _enrollment(
        "serverkeygen", lambda r, label, csr, creds: r.server_keygen(label, csr, creds))
    for prefix in (WELL_KNOWN, WELL_KNOWN + "/{label}"):
        app.router.add_get(f"{prefix}/cacerts", cacerts)
        app.router.add_get(f"{prefix}/csrattrs", csrattrs)
        app.router.add_post(f"{prefix}/simpleenroll", simpleenroll)
        app.router.add_post(f"{prefix}/simplereenroll", simplereenroll)
        app.router.add_post(f"{prefix}/serverkeygen", serverkeygen)
        app.router.add_post(f"{prefix}/fullcmc", fullcmc)
