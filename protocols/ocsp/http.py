"""OCSP over HTTP: ``POST /ocsp`` and ``GET /ocsp/{base64(DER)}`` (RFC 6960 A.1, RFC 5019 5).

Decode (body or URL) -> ``OcspResponder.answer`` -> the DER bytes with RFC 5019 6.2 caching
headers. Every OCSP-level failure is an OCSP response with the matching status (HTTP 200,
``max-age=0, no-cache``); only HTTP-level faults get HTTP errors: a body of another media
type (415) or over 16 KiB (413).
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import time
import urllib.parse
from email.utils import formatdate

from aiohttp import web
from cryptography.x509 import ocsp
from prometheus_client import Counter

from ca_core.errors import CAError
from ca_core.ocsp import MalformedOcspRequest, OcspQuery, OcspResponder
from ca_core.response_cache import CachedResponse
from protocols.ocsp.codec import ERROR_RESPONSES, decode_request, response_status_for

log = logging.getLogger(__name__)

RESPONDER = web.AppKey("ocsp_responder", OcspResponder)

OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
MAX_REQUEST_BYTES = 16 * 1024
_NO_CACHE = "max-age=0, no-cache"

OCSP_RESPONSES = Counter(
    "pki_ocsp_responses_total", "OCSP responses by response status", ["status"])
_COUNT = {
    ocsp.OCSPResponseStatus.SUCCESSFUL: OCSP_RESPONSES.labels("successful"),
    ocsp.OCSPResponseStatus.MALFORMED_REQUEST: OCSP_RESPONSES.labels("malformedRequest"),
    ocsp.OCSPResponseStatus.INTERNAL_ERROR: OCSP_RESPONSES.labels("internalError"),
    ocsp.OCSPResponseStatus.TRY_LATER: OCSP_RESPONSES.labels("tryLater"),
    ocsp.OCSPResponseStatus.UNAUTHORIZED: OCSP_RESPONSES.labels("unauthorized"),
}
_SUCCESS = _COUNT[ocsp.OCSPResponseStatus.SUCCESSFUL]


@functools.lru_cache(maxsize=4096)
def _http_date(timestamp: int) -> str:
    return formatdate(timestamp, usegmt=True)


# Requests are decoded once per distinct DER: a relying party asks the same question (same
# CertID, no nonce) again and again, and decoding was a quarter of a cache hit's handler
# time (10 of 39 µs, issue 18). OcspQuery is immutable; what fails to decode raises each
# time (nothing cached). Only requests of plain size are kept, so the cache stays small
# (a single-CertID request is 70-150 bytes) whatever a client sends.
_DECODED_MAX_BYTES = 512


@functools.lru_cache(maxsize=2048)
def _decode_small(der: bytes) -> OcspQuery:
    return decode_request(der)


def _decode(der: bytes) -> OcspQuery:
    return _decode_small(der) if len(der) <= _DECODED_MAX_BYTES else decode_request(der)


def _error(status: ocsp.OCSPResponseStatus) -> web.Response:
    _COUNT[status].inc()
    return web.Response(body=ERROR_RESPONSES[status], content_type=OCSP_RESPONSE,
                        headers={"Cache-Control": _NO_CACHE})


def _caching_headers(entry: CachedResponse) -> dict[str, str]:
    return _headers_at(entry.this_update, entry.next_update, entry.etag, int(time.time()))


@functools.lru_cache(maxsize=1024)
def _headers_at(this_update: int, next_update: int, etag: str, now: int) -> dict[str, str]:
    """RFC 5019 6.2 caching headers of a response at second ``now``: built once a second
    per response, not per request (aiohttp copies the mapping, never changes it)."""
    return {
        "Content-Type": OCSP_RESPONSE,
        "Cache-Control": f"max-age={max(0, next_update - now)}, public, no-transform, "
                         "must-revalidate",
        "Last-Modified": _http_date(this_update),
        "Expires": _http_date(next_update),
        "ETag": etag,
    }


async def _respond(request: web.Request, der: bytes) -> web.Response:
    responder = request.app[RESPONDER]
    query: OcspQuery | None = None
    try:
        query = _decode(der)
        entry = await responder.answer(query)
    except CAError as exc:
        status = response_status_for(exc)
        # One line, not an error: bad input is the client's problem.
        log.info("OCSP %s: %s", status.name, exc.detail)
        return _error(status)
    except Exception:
        log.exception("OCSP request failed")
        return _error(ocsp.OCSPResponseStatus.INTERNAL_ERROR)
    _SUCCESS.inc()
    if query.nonce is not None and responder.settings.nonce:
        # Unique to this request: nothing on the way may keep it.
        return web.Response(body=entry.der, content_type=OCSP_RESPONSE,
                            headers={"Cache-Control": _NO_CACHE})
    headers = _caching_headers(entry)  # with the Content-Type
    if request.method == "GET":
        match = request.headers.get("If-None-Match")
        if match is not None and (match.strip() == "*" or entry.etag in match):
            return web.Response(status=304, headers=headers)
    return web.Response(body=entry.der, headers=headers)


async def ocsp_post(request: web.Request) -> web.Response:
    if request.content_type not in (OCSP_REQUEST, "application/octet-stream") and \
            "Content-Type" in request.headers:
        return web.Response(status=415, text=f"send the request as {OCSP_REQUEST}\n")
    if (request.content_length or 0) > MAX_REQUEST_BYTES:
        return web.Response(status=413, text="OCSP requests are at most 16 KiB\n")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return web.Response(status=413, text="OCSP requests are at most 16 KiB\n")
    if len(body) > MAX_REQUEST_BYTES:
        return web.Response(status=413, text="OCSP requests are at most 16 KiB\n")
    return await _respond(request, body)


def _der_from_path(raw_path: str) -> bytes:
    """The request from ``/ocsp/<url-encoded base64>`` (RFC 6960 A.1), tolerating what real
    clients and proxies do: unencoded ``+``/``/``/``=``, a ``+`` turned into a space, a
    doubled slash after ``/ocsp``, missing padding, the URL-safe alphabet."""
    path = raw_path.split("?", 1)[0]
    _, _, encoded = path.partition("/ocsp")
    text = urllib.parse.unquote(encoded.lstrip("/")).replace(" ", "+").strip()
    if not text:
        raise MalformedOcspRequest("GET without a request")
    if len(text) > MAX_REQUEST_BYTES * 2:
        raise MalformedOcspRequest("the request is too long")
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedOcspRequest("the GET path is not base64") from exc


async def ocsp_get(request: web.Request) -> web.Response:
    try:
        der = _der_from_path(request.raw_path)
    except MalformedOcspRequest as exc:
        log.info("OCSP malformed GET: %s", exc.detail)
        return _error(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    return await _respond(request, der)


def add_routes(app: web.Application, responder: OcspResponder) -> None:
    app[RESPONDER] = responder
    app.router.add_post("/ocsp", ocsp_post)
    app.router.add_post("/ocsp/", ocsp_post)
    app.router.add_get("/ocsp", ocsp_get)
    app.router.add_get("/ocsp/{request:.*}", ocsp_get)
