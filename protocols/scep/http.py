"""SCEP's HTTP binding (RFC 8894 4.1): ``GET|POST /scep?operation=...`` and the same under
``/scep/{org}/{profile}`` (another organization or profile than the defaults).

Operations: GetCACaps (4.6: text, one capability a line), GetCACert (4.2: a certs-only
SignedData of the RA certificate and the CA chain, ``application/x-x509-ca-ra-cert``),
GetNextCACert (4.7: during an issuing CA rollover, a SignedData of the successor and its RA
certificate signed by the current RA, ``application/x-x509-next-ca-cert``; 404 otherwise),
PKIOperation (4.3: GET with the base64 message in the query, or POST with the DER body;
the reply is ``application/x-pki-message``). A GET message is read from the raw query
string as well, because clients send ``+`` and ``/`` unescaped (a ``+`` that a form
decoder would turn into a space).

Errors, in ``_http_error`` only: SCEP-level faults are FAILURE CertReps made by the core
(HTTP 200); what cannot be answered in SCEP (no operation, a message that is not CMS, an
unknown organization or profile, a body over 64 KiB) is a 4xx with a plain-text reason; a
failing store or key backend is 503. Never 500.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Protocol
from urllib.parse import unquote

from aiohttp import web
from prometheus_client import Counter

from ca_core.errors import BadRequest, CAError, Forbidden, NotFound, Unavailable
from ca_core.scep import Endpoint

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
PKI_MESSAGE = "application/x-pki-message"
CA_RA_CERT = "application/x-x509-ca-ra-cert"
NEXT_CA_CERT = "application/x-x509-next-ca-cert"


class ScepRegistrationAuthority(Protocol):
    """What this front-end needs from the CA core (ca_core.scep.ScepService)."""

    async def endpoint(self, org: str | None = None, profile: str | None = None
                       ) -> Endpoint: ...

    async def capabilities(self, endpoint: Endpoint) -> tuple[str, ...]: ...

    async def ca_certificates(self, endpoint: Endpoint) -> bytes: ...

    async def next_ca_certificates(self, endpoint: Endpoint) -> bytes: ...

    async def pki_operation(self, endpoint: Endpoint, message: bytes) -> bytes: ...


SCEP = web.AppKey("scep_service", ScepRegistrationAuthority)

SCEP_REQUESTS = Counter("pki_scep_requests_total", "SCEP requests by operation and outcome",
                        ["operation", "outcome"])


def _text(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n",
                        headers={"Cache-Control": "no-store"})


def _http_error(exc: CAError) -> web.Response:
    """The one mapping of core errors that are not a CertRep to HTTP."""
    if isinstance(exc, NotFound):
        return _text(404, exc.detail)
    if isinstance(exc, Unavailable):
        return _text(503, "the SCEP service is unavailable, retry later")
    if isinstance(exc, Forbidden):
        return _text(403, exc.detail)
    return _text(400, exc.detail)


def _raw_query_value(query_string: str, name: str) -> str | None:
    """``name``'s value from the raw query string: percent-decoded, but a ``+`` stays a
    ``+`` (base64, not a form-encoded space)."""
    for part in query_string.split("&"):
        key, _, value = part.partition("=")
        if unquote(key) == name:
            return unquote(value)
    return None


def _message_from_query(request: web.Request) -> bytes:
    raw = _raw_query_value(request.rel_url.raw_query_string, "message")
    if raw is None:
        raise BadRequest("PKIOperation over GET needs the message parameter")
    text = "".join(raw.split())  # line breaks some encoders insert
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("the message parameter is not base64") from None


async def _message_from_body(request: web.Request) -> bytes:
    if (request.content_length or 0) > MAX_MESSAGE_BYTES:
        raise _TooLarge
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _TooLarge from None
    if len(body) > MAX_MESSAGE_BYTES:
        raise _TooLarge
    return body


class _TooLarge(Exception):
    pass


async def scep(request: web.Request) -> web.Response:
    operation = _raw_query_value(request.rel_url.raw_query_string, "operation") or ""
    label = operation if operation in ("GetCACaps", "GetCACert", "GetNextCACert",
                                       "PKIOperation") else "other"
    try:
        response = await _operate(request, operation)
    except _TooLarge:
        response = _text(413, f"SCEP messages are at most {MAX_MESSAGE_BYTES // 1024} KiB")
    except CAError as exc:
        log.info("SCEP %s refused: %s", label, exc.detail)
        response = _http_error(exc)
    except ConnectionResetError:
        raise  # the client went away during its body: no one to answer (app middleware)
    except Exception:  # a key backend failure, or a bug: never a 500
        log.exception("SCEP %s failed", label)
        response = _text(503, "the SCEP service is unavailable, retry later")
    SCEP_REQUESTS.labels(label, str(response.status)).inc()
    return response


async def _operate(request: web.Request, operation: str) -> web.Response:
    service = request.app[SCEP]
    org = request.match_info.get("org")
    profile = request.match_info.get("profile")
    if operation == "GetCACaps":
        caps = await service.capabilities(await service.endpoint(org, profile))
        return web.Response(text="\n".join(caps), content_type="text/plain")
    if operation == "GetCACert":
        body = await service.ca_certificates(await service.endpoint(org, profile))
        return web.Response(body=body, content_type=CA_RA_CERT)
    if operation == "GetNextCACert":
        body = await service.next_ca_certificates(await service.endpoint(org, profile))
        return web.Response(body=body, content_type=NEXT_CA_CERT)
    if operation == "PKIOperation":
        if request.method == "POST":
            message = await _message_from_body(request)
        else:
            message = _message_from_query(request)
        endpoint = await service.endpoint(org, profile)
        reply = await service.pki_operation(endpoint, message)
        return web.Response(body=reply, content_type=PKI_MESSAGE,
                            headers={"Cache-Control": "no-store"})
    raise BadRequest("operation must be GetCACaps, GetCACert, GetNextCACert or PKIOperation")


def add_routes(app: web.Application, service: ScepRegistrationAuthority) -> None:
    app[SCEP] = service
    for path in ("/scep", "/scep/{org}/{profile}"):
        app.router.add_get(path, scep)
        app.router.add_post(path, scep)
