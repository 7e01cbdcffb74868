"""CA certificate publication: ``/ca/{name}.der`` (RFC 5280 4.2.2.1 caIssuers) and ``.pem``."""

from __future__ import annotations

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from ca_core.authority import Authority
from ca_core.errors import CAError

AUTHORITY = web.AppKey("cert_publication_authority", Authority)


async def ca_certificate(request: web.Request) -> web.Response:
    name, _, extension = request.match_info["file"].rpartition(".")
    if extension not in ("der", "pem", "crt", "cer") or not name:
        raise web.HTTPNotFound()
    try:
        ca = await request.app[AUTHORITY].ca(name)
    except CAError:
        raise web.HTTPNotFound() from None
    headers = {"Cache-Control": "public, max-age=3600"}
    if extension == "pem":
        return web.Response(
            body=ca.certificate.public_bytes(serialization.Encoding.PEM),
            content_type="application/x-pem-file", headers=headers,
        )
    return web.Response(
        body=ca.certificate.public_bytes(serialization.Encoding.DER),
        content_type="application/pkix-cert", headers=headers,
    )


def add_routes(app: web.Application, authority: Authority) -> None:
    app[AUTHORITY] = authority
    app.router.add_get("/ca/{file}", ca_certificate)
