"""The service registry's REST routes (``/api/v1/services``, issue 14): decode -> call
``ca_core.services.ServiceRegistry`` (the CLI's too) -> encode. Served on 8443 with bearer
tokens and on the EST listener with client certificates (a service's own certificate
authenticates as the service). Lists answer ``{"items", "next"}``; errors problem+json."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ca_core.errors import BadRequest
from ca_core.services import ServiceChange, ServiceSpec, service_document
from protocols.rest.api import (
    REGISTRY,
    _field,
    _json_body,
    _limit,
    _page,
    _param,
    _principal,
    certificate_json,
)


def _strings(body: dict[str, Any], name: str) -> tuple[str, ...] | None:
    value = _field(body, name, list)
    if value is None:
        return None
    if not all(isinstance(v, str) for v in value):
        raise BadRequest(f"field {name!r} must be a list of strings")
    return tuple(value)


def _metadata(body: dict[str, Any]) -> dict[str, Any] | None:
    value: dict[str, Any] | None = _field(body, "metadata", dict)
    return value


def _document(request: web.Request, record: Any) -> dict[str, Any]:
    registry = request.app[REGISTRY]
    return service_document(record, registry.authority.clock(), registry.due_days)


async def list_services(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[REGISTRY].list_services(
        principal, _param(request, "organization"), _param(request, "cursor"),
        _limit(request))
    return _page([_document(request, s) for s in page.items], page.next)


async def register_service(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    record = await request.app[REGISTRY].register(principal, ServiceSpec(
        name=_field(body, "name", str, required=True),
        slug=_field(body, "slug", str, required=True),
        service_type=_field(body, "type", str) or "api",
        organization=_field(body, "organization", str),
        endpoints=_strings(body, "endpoints") or (),
        health_check_url=_field(body, "health_check_url", str),
        version=_field(body, "version", str),
        environment=_field(body, "environment", str) or "production",
        metadata=_metadata(body) or {}))
    response = web.json_response(_document(request, record), status=201)
    response.headers["Location"] = f"/api/v1/services/{record.slug}"
    return response


async def get_service(request: web.Request) -> web.Response:
    principal = await _principal(request)
    record = await request.app[REGISTRY].get(principal, request.match_info["slug"],
                                             _param(request, "organization"))
    return web.json_response(_document(request, record))


async def update_service(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    record = await request.app[REGISTRY].update(principal, request.match_info["slug"],
                                                ServiceChange(
        name=_field(body, "name", str), service_type=_field(body, "type", str),
        endpoints=_strings(body, "endpoints"),
        health_check_url=_field(body, "health_check_url", str),
        version=_field(body, "version", str), environment=_field(body, "environment", str),
        metadata=_metadata(body), status=_field(body, "status", str)),
        _param(request, "organization"))
    return web.json_response(_document(request, record))


async def heartbeat(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request) if request.can_read_body else {}
    record = await request.app[REGISTRY].heartbeat(
        principal, request.match_info["slug"], _field(body, "status", str) or "healthy",
        _field(body, "version", str), _param(request, "organization"))
    return web.json_response(_document(request, record))


async def get_certificate(request: web.Request) -> web.Response:
    principal = await _principal(request)
    record = await request.app[REGISTRY].certificate(principal, request.match_info["slug"],
                                                     _param(request, "organization"))
    return web.json_response(certificate_json(record))


async def issue_certificate(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    issued = await request.app[REGISTRY].issue_certificate(
        principal, request.match_info["slug"],
        _field(body, "csr", str, required=True).encode(), _field(body, "validity_days", int),
        _param(request, "organization"))
    response = web.json_response(certificate_json(issued.record, issued.chain_pem),
                                 status=201)
    response.headers["Location"] = f"/api/v1/certificates/{issued.serial}"
    return response


async def renew_certificate(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request) if request.can_read_body else {}
    issued = await request.app[REGISTRY].renew_certificate(
        principal, request.match_info["slug"], _field(body, "validity_days", int),
        _param(request, "organization"))
    response = web.json_response(certificate_json(issued.record, issued.chain_pem),
                                 status=201)
    response.headers["Location"] = f"/api/v1/certificates/{issued.serial}"
    return response


async def policy(request: web.Request) -> web.Response:
    principal = await _principal(request)
    return web.json_response({"service_communication_policies":
                              await request.app[REGISTRY].policy(principal)})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/services", list_services)
    app.router.add_post("/api/v1/services", register_service)
    # before /{slug}: "policy" is a reserved slug
    app.router.add_get("/api/v1/services/policy", policy)
    app.router.add_get("/api/v1/services/{slug}", get_service)
    app.router.add_patch("/api/v1/services/{slug}", update_service)
    app.router.add_post("/api/v1/services/{slug}/heartbeat", heartbeat)
    app.router.add_get("/api/v1/services/{slug}/certificate", get_certificate)
    app.router.add_post("/api/v1/services/{slug}/certificate", issue_certificate)
    app.router.add_post("/api/v1/services/{slug}/certificate/renew", renew_certificate)
