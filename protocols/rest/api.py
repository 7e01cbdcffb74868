"""Minimal REST admin API (``/api/v1``): issue, fetch and revoke certificates.

Decode JSON -> call the Authority -> encode JSON. Authentication is a bearer token
created by ``vcc-pki token create``; authorization and tenant scoping are the Authority's.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
from typing import Any

from aiohttp import web

from ca_core.authority import Authority, IssuanceRequest, serial_display
from ca_core.errors import BadRequest, Unauthorized
from ca_core.principal import Principal
from ca_core.records import CertificateRecord

AUTHORITY = web.AppKey("authority", Authority)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def certificate_json(record: CertificateRecord, chain_pem: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "serial": serial_display(record.serial_hex),
        "subject": record.subject_dn,
        "common_name": record.common_name,
        "profile": record.profile,
        "san": record.san,
        "not_before": _iso(record.not_before),
        "not_after": _iso(record.not_after),
        "status": record.status,
        "revoked_at": _iso(record.revoked_at),
        "revocation_reason": record.revocation_reason,
        "certificate_pem": ssl.DER_cert_to_PEM_cert(record.certificate_der),
    }
    if chain_pem is not None:
        body["chain_pem"] = chain_pem
    return body


async def _principal(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a bearer token is required (Authorization: Bearer ...)")
    return await request.app[AUTHORITY].authenticate(token.strip())


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="application/json required")
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"field {name!r} is required")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"field {name!r} must be a {kind.__name__}")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
            raise BadRequest(f"field {name!r} is not valid Unicode text") from None
    return value


def _date(body: dict[str, Any], name: str) -> dt.datetime | None:
    text = _field(body, name, str)
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"field {name!r} must be an RFC 3339 time") from None
    if value.tzinfo is None:
        raise BadRequest(f"field {name!r} needs a time zone")
    return value


async def issue_certificate(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    csr = _field(body, "csr", str, required=True)
    days = _field(body, "validity_days", int)
    issued = await request.app[AUTHORITY].issue(
        IssuanceRequest(
            csr=csr.encode(), profile=_field(body, "profile", str) or "vcc_service",
            org=_field(body, "organization", str), validity_days=days,
        ),
        principal,
    )
    response = web.json_response(
        certificate_json(issued.record, issued.chain_pem), status=201
    )
    response.headers["Location"] = f"/api/v1/certificates/{issued.serial}"
    return response


async def get_certificate(request: web.Request) -> web.Response:
    principal = await _principal(request)
    record = await request.app[AUTHORITY].find_certificate(
        request.match_info["serial"], principal
    )
    return web.json_response(certificate_json(record))


async def revoke_certificate(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request) if request.can_read_body else {}
    record = await request.app[AUTHORITY].revoke(
        request.match_info["serial"],
        _field(body, "reason", str) or "unspecified",
        principal,
        invalidity_date=_date(body, "invalidity_date"),
    )
    return web.json_response(certificate_json(record))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/certificates", issue_certificate)
    app.router.add_get("/api/v1/certificates/{serial}", get_certificate)
    app.router.add_post("/api/v1/certificates/{serial}/revoke", revoke_certificate)
