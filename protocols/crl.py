"""CRL publication over HTTP (RFC 5280 4.2.1.13 distribution points).

``/crl/{ca}.crl`` (DER, ``application/pkix-crl``) and ``/crl/{ca}.pem`` are a CA's full CRL;
``/crl/{ca}/{n}.crl`` and ``.pem`` its partitioned CRL ``n``. The bytes come from the store
as ``ca_core.crl`` made them; caches may keep them a few minutes at most, so a relying party
sees a new revocation soon even though nextUpdate is hours away.
"""

from __future__ import annotations

import time
from email.utils import formatdate

from aiohttp import web

from ca_core.crl import CrlPublisher, ServedCrl
from ca_core.errors import CAError, Unavailable

PUBLISHER = web.AppKey("crl_publisher", CrlPublisher)
MAX_AGE_SECONDS = 300


def _split(file: str) -> tuple[str, str]:
    stem, _, extension = file.rpartition(".")
    if extension not in ("crl", "pem", "der") or not stem:
        raise web.HTTPNotFound(text="CRLs are at /crl/{ca}.crl, .pem, or /crl/{ca}/{n}.crl\n")
    return stem, extension


async def _serve(request: web.Request, ca_name: str, partition: int, extension: str
                 ) -> web.Response:
    try:
        crl: ServedCrl = await request.app[PUBLISHER].get(ca_name, partition)
    except Unavailable as exc:
        raise web.HTTPServiceUnavailable(text=f"{exc.detail}\n",
                                         headers={"Retry-After": "5"}) from None
    except CAError as exc:
        raise web.HTTPNotFound(text=f"{exc.detail}\n") from None
    head = crl.head
    etag = f'"{head.crl_number}-{partition}"'
    remaining = int(head.next_update.timestamp() - time.time())
    headers = {
        "Cache-Control": f"public, max-age={max(0, min(MAX_AGE_SECONDS, remaining))}, "
                         "no-transform",
        "Last-Modified": formatdate(head.this_update.timestamp(), usegmt=True),
        "Expires": formatdate(head.next_update.timestamp(), usegmt=True),
        "ETag": etag,
    }
    match = request.headers.get("If-None-Match")
    if match is not None and (match.strip() == "*" or etag in match):
        return web.Response(status=304, headers=headers)
    if extension == "pem":
        return web.Response(body=crl.pem, content_type="application/x-pem-file",
                            headers=headers)
    return web.Response(body=crl.crl_der, content_type="application/pkix-crl",
                        headers=headers)


async def full_crl(request: web.Request) -> web.Response:
    ca_name, extension = _split(request.match_info["file"])
    return await _serve(request, ca_name, 0, extension)


async def partitioned_crl(request: web.Request) -> web.Response:
    number, extension = _split(request.match_info["file"])
    # isdigit() alone admits other scripts' digits (Arabic-Indic one) and superscripts,
    # which int() refuses: ASCII digits only, and few of them.
    if not (number.isascii() and number.isdigit() and len(number) <= 6) or int(number) == 0:
        raise web.HTTPNotFound(text="a CRL partition is a positive number\n")
    return await _serve(request, request.match_info["ca"], int(number), extension)


def add_routes(app: web.Application, publisher: CrlPublisher) -> None:
    app[PUBLISHER] = publisher
    app.router.add_get("/crl/{file}", full_crl)
    app.router.add_get("/crl/{ca}/{file}", partitioned_crl)
