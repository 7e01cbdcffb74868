"""Health, readiness and metrics endpoints (as in the seed deployment guide)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from gateway.keys import SERVICES

log = logging.getLogger(__name__)
VERSION = "0.1.0"
_PROBE = b"vcc-pki readiness probe"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "healthy", "version": VERSION, "timestamp": _now()})


async def _database(request: web.Request) -> dict[str, Any]:
    services = request.app[SERVICES]
    try:
        details = await asyncio.wait_for(services.store.ping(), timeout=5)
    except Exception as exc:  # any failure means unhealthy; the reason is logged
        log.warning("database health check failed: %s", exc)
        return {"status": "unhealthy", "backend": services.store.backend}
    return {"status": "healthy", "connection_pool": "ok", **details}


async def _signer(request: web.Request) -> dict[str, Any]:
    """Sign a probe with the default organization's active issuing CA key (the one in use
    after a rollover) and verify it with its public key."""
    services = request.app[SERVICES]
    authority = services.authority
    started = time.perf_counter()
    try:
        details = await asyncio.to_thread(services.keys.check)
        ca = await authority.issuing_ca(
            await authority.organization(authority.settings.default_org))
        signature = await ca.signer.sign(_PROBE)
        public_key = ca.signer.public_key
        algorithm = ca.signer.key_spec.hash_algorithm or hashes.SHA256()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, _PROBE, ec.ECDSA(algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, _PROBE, padding.PKCS1v15(), algorithm)
    except Exception as exc:  # any failure means unhealthy; the reason is logged
        log.warning("key backend health check failed: %s", exc)
        return {"status": "unhealthy", "backend": services.keys.name}
    return {
        "status": "healthy",
        **details,
        "keys_loaded": len(authority.loaded_cas()),
        "sign_time_ms": round((time.perf_counter() - started) * 1000, 3),
    }


async def api_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "healthy", "version": VERSION, "timestamp": _now()})


async def database_health(request: web.Request) -> web.Response:
    body = await _database(request)
    return web.json_response(body, status=200 if body["status"] == "healthy" else 503)


async def hsm_health(request: web.Request) -> web.Response:
    body = await _signer(request)
    return web.json_response(body, status=200 if body["status"] == "healthy" else 503)


async def ready(request: web.Request) -> web.Response:
    if request.app[SERVICES].draining:  # SIGTERM: leave the load balancer first
        return web.json_response({"status": "draining"}, status=503)
    database, signer = await asyncio.gather(_database(request), _signer(request))
    ok = database["status"] == "healthy" and signer["status"] == "healthy"
    return web.json_response(
        {"status": "ready" if ok else "not ready", "database": database["status"],
         "signer": signer["status"]},
        status=200 if ok else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(generate_latest, REGISTRY)
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


def add_routes(app: web.Application, with_api: bool) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    if with_api:
        app.router.add_get("/api/v1/health", api_health)
        app.router.add_get("/api/v1/health/database", database_health)
        app.router.add_get("/api/v1/health/hsm", hsm_health)
