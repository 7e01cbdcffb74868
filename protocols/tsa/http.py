"""RFC 3161 over HTTP: ``POST /tsa`` (RFC 3161 3.4) and ``GET /tsa/chain.pem``.

Decode -> ``TimeStamper.timestamp`` -> encode. Every TSP-level outcome, the failures
included, is a TimeStampResp with HTTP 200 (RFC 3161 3.4: the status lives in the
response); only HTTP-level faults are HTTP errors: another media type (415), a body over
16 KiB (413). Nothing here can answer 500: an unexpected failure is a systemFailure.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Protocol

from aiohttp import web
from prometheus_client import Counter

from ca_core.errors import CAError
from ca_core.tsa import IssuedTimeStamp, TimeStampQuery
from protocols.tsa.codec import (
    MAX_REQUEST_BYTES,
    SYSTEM_FAILURE,
    decode_request,
    fail_info_for,
    granted,
    rejection,
)

log = logging.getLogger(__name__)

TIMESTAMP_QUERY = "application/timestamp-query"
TIMESTAMP_REPLY = "application/timestamp-reply"


class TimeStamper(Protocol):
    """What this front-end needs from the CA core (ca_core.tsa.TimeStampAuthority)."""

    async def open(self) -> None: ...

    async def timestamp(self, query: TimeStampQuery) -> IssuedTimeStamp: ...

    def chain_pem(self) -> bytes: ...


STAMPER = web.AppKey("tsa_stamper", TimeStamper)

TSA_RESPONSES = Counter(
    "pki_tsa_responses_total", "Time-stamp responses by PKIStatus and failInfo",
    ["status", "fail_info"])
_GRANTED = TSA_RESPONSES.labels("granted", "")


def _reply(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=TIMESTAMP_REPLY,
                        headers={"Cache-Control": "no-store"})


def _too_large() -> web.Response:
    return web.Response(status=413, text="time-stamp requests are at most 16 KiB\n")


async def timestamp(request: web.Request) -> web.Response:
    if request.content_type != TIMESTAMP_QUERY:
        return web.Response(status=415, text=f"send the request as {TIMESTAMP_QUERY}\n")
    if (request.content_length or 0) > MAX_REQUEST_BYTES:
        return _too_large()
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _too_large()
    if len(body) > MAX_REQUEST_BYTES:  # chunked: no Content-Length to check first
        return _too_large()
    try:
        issued = await request.app[STAMPER].timestamp(decode_request(body))
    except CAError as exc:
        fail_info = fail_info_for(exc)
        # One line, not an error: bad input is the client's problem.
        log.info("TSA rejection %s: %s", fail_info, exc.detail)
        TSA_RESPONSES.labels("rejection", fail_info).inc()
        return _reply(rejection(fail_info, exc.detail))
    except Exception:
        log.exception("time-stamp request failed")
        TSA_RESPONSES.labels("rejection", SYSTEM_FAILURE).inc()
        return _reply(rejection(SYSTEM_FAILURE, "internal error"))
    _GRANTED.inc()
    return _reply(granted(issued.token))


async def chain(request: web.Request) -> web.Response:
    """The TSA certificate and its CAs up to the root: ``openssl ts -verify -untrusted``
    needs them for tokens requested without certReq."""
    return web.Response(body=request.app[STAMPER].chain_pem(),
                        content_type="application/x-pem-file",
                        headers={"Cache-Control": "public, max-age=3600"})


def add_routes(app: web.Application, stamper: TimeStamper) -> None:
    """Serve ``stamper``; it is opened when the app starts, so a gateway whose TSA
    certificate would be rejected does not start at all."""
    app[STAMPER] = stamper

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await app[STAMPER].open()
        yield

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/tsa", timestamp)
    app.router.add_get("/tsa/chain.pem", chain)
