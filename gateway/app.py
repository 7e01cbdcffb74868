"""aiohttp application factory: the HTTP app (OCSP, CRL, CA certificates, health, metrics),
the HTTPS app (REST API, ACME) and the EST app (its own listener, which requests client
certificates: EST, and the REST API for mTLS service accounts), sharing one set of
Services."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Counter, Histogram

from ca_core import tracing
from ca_core.errors import CAError, Unavailable
from ca_core.est import EstSettings
from ca_core.sessions import SessionSettings, WebSessions
from ca_core.tsa import TimeStampAuthority
from gateway import health, observability
from gateway.guard import body_deadline
from gateway.keys import SERVICES
from gateway.observability import ACCESS_LOG
from gateway.runtime import Services, make_session_table
from protocols import certs, crl
from protocols import web as admin_web
from protocols.acme import wfe as acme_wfe
from protocols.est import http as est_http
from protocols.ocsp import http as ocsp_http
from protocols.rest import api as rest_api
from protocols.rest.problems import problem, problem_from_error
from protocols.scep import http as scep_http
from protocols.tsa import http as tsa_http

log = logging.getLogger("vcc_pki.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HTTP_REQUESTS = Counter(
    "pki_http_requests_total", "HTTP requests", ["listener", "route", "method", "status"]
)
HTTP_DURATION = Histogram(
    "pki_http_request_duration_seconds", "HTTP request duration", ["listener", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)


# Request ids: a random prefix per process and a counter. uuid4 per request cost 3-10% of
# the event loop on the OCSP and TSA hot paths (os.urandom releases and retakes the GIL).
_REQUEST_ID_PREFIX = secrets.token_hex(8)
_REQUEST_COUNTER = itertools.count(1)


def _next_request_id() -> str:
    return f"{_REQUEST_ID_PREFIX}{next(_REQUEST_COUNTER):016x}"


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _internal_error(listener: str, request: web.Request, request_id: str) -> web.Response:
    if listener == "est" and not request.path.startswith("/api/"):
        # EST answers in plain text (RFC 7030 4.2.3), never problem+json; the REST API it
        # also serves (for mTLS service accounts) answers problem+json as on 8443.
        return web.Response(status=500, text=f"internal error (request {request_id})\n")
    return problem(500, "internal", "internal error", request_id=request_id)


def _middleware(listener: str, body_timeout: float = 0) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if tracing.enabled():
            return await _traced(request, handler, serve)
        return await serve(request, handler)

    async def serve(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Request ids, metrics, the body deadline (gateway.guard) and the last line of
        defence: no traceback on the wire."""
        started = time.perf_counter()
        request_id = request.headers.get("X-Request-ID", "")[:64] or _next_request_id()
        if observability.STATE.access_log:
            # For every log line of this request (JSON mode). aiohttp runs each request in
            # a task of its own, with its own copy of the context: nothing to reset.
            observability.REQUEST_ID.set(request_id)
        disarm = body_deadline(request, body_timeout) if body_timeout else None
        try:
            response = await handler(request)
        except CAError as exc:
            if isinstance(exc, Unavailable):  # the store or key backend is down: say so
                log.warning("%s %s (request %s): unavailable: %s", request.method,
                            request.path, request_id, exc)
            response = problem_from_error(exc)
            if response.status == 503:
                response.headers["Retry-After"] = "5"
        except web.HTTPException as exc:
            if exc.status >= 400 and request.path.startswith("/api/"):
                # The handler's own text when it gave one ("application/json required"),
                # and the headers the status needs (Allow on a 405, RFC 9110 15.5.6).
                detail = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" \
                    else exc.reason
                response = problem(exc.status, "http", detail or exc.reason)
                for name in ("Allow", "WWW-Authenticate", "Retry-After"):
                    if name in exc.headers:
                        response.headers[name] = exc.headers[name]
            else:
                exc.headers["X-Request-ID"] = request_id
                _observe(listener, request, exc.status, started)
                raise
        except Exception as exc:
            if disarm is not None and disarm():
                # The body deadline closed the connection under the handler's read: the
                # client is gone and was told nothing; not a fault of this server.
                _observe(listener, request, 408, started)
                raise web.HTTPRequestTimeout() from None
            if isinstance(exc, ConnectionResetError) and _client_gone(request):
                # The client hung up before its body was complete: one INFO line, as any
                # bad input gets; a client must not be able to write ERROR lines at will.
                log.info("%s %s (request %s): the client closed the connection before its "
                         "request was complete", request.method, request.path, request_id)
                _observe(listener, request, 499, started)  # nginx's "client closed request"
                raise web.HTTPBadRequest() from None
            log.exception("unhandled error in %s %s (request %s)", request.method,
                          request.path, request_id)
            response = _internal_error(listener, request, request_id)
        finally:
            if disarm is not None:
                disarm()
        response.headers["X-Request-ID"] = request_id
        _observe(listener, request, response.status, started)
        return response

    return middleware


async def _traced(request: web.Request, handler: Handler,
                  serve: Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    """``serve`` inside the request's SERVER span (tracing on only)."""
    route = _route_name(request)
    with observability.server_span(f"{request.method} {route}", request.headers, {
            "http.request.method": request.method, "http.route": route,
            "url.path": request.path}) as current:
        try:
            response = await serve(request, handler)
        except web.HTTPException as exc:
            observability.end_server_span(current, exc.status)
            raise
        observability.end_server_span(current, response.status)
        return response


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


# The metrics' children by (listener, route, method, status): prometheus_client's labels()
# validates and converts its arguments and takes a lock on every call, a third of this
# middleware's own CPU per request. Bounded: a client choosing odd methods cannot grow it
# (past the bound, labels() is called as before).
_CHILDREN: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
_MAX_CHILDREN = 4096


def _metric_children(listener: str, route: str, method: str, status: int) -> tuple[Any, Any]:
    key = (listener, route, method, status)
    children = _CHILDREN.get(key)
    if children is None:
        children = (HTTP_REQUESTS.labels(listener, route, method, str(status)),
                    HTTP_DURATION.labels(listener, route))
        if len(_CHILDREN) < _MAX_CHILDREN:
            _CHILDREN[key] = children
    return children


def _observe(listener: str, request: web.Request, status: int, started: float) -> None:
    route = _route_name(request)
    elapsed = time.perf_counter() - started
    requests, duration = _metric_children(listener, route, request.method, status)
    requests.inc()
    duration.observe(elapsed)
    if observability.STATE.access_log:  # JSON logs: one line per request
        ACCESS_LOG.info("%s %s %d", request.method, request.path, status, extra={
            "listener": listener, "method": request.method, "path": request.path,
            "route": route, "status": status, "duration_ms": round(elapsed * 1000, 3)})


def build_http_app(services: Services) -> web.Application:
    app = web.Application(
        middlewares=[_middleware("http", services.config.http_body_timeout_seconds)],
        client_max_size=services.config.max_body_bytes
    )
    app[SERVICES] = services
    health.add_routes(app, with_api=False)
    app.router.add_get("/metrics", health.metrics)
    certs.add_routes(app, services.authority)
    ocsp_http.add_routes(app, services.ocsp)
    crl.add_routes(app, services.crls)
    tsa_http.add_routes(app, TimeStampAuthority(services.authority,
                                                services.config.tsa_settings()))
    scep_http.add_routes(app, services.scep)
    if services.config.bench_routes:
        app.router.add_get("/bench/fixed", _bench_fixed)
    return app


# A fixed body the size of a typical OCSP response: the ceiling of the HTTP stack here.
_BENCH_BODY = bytes(range(256)) * 2


async def _bench_fixed(request: web.Request) -> web.Response:
    return web.Response(body=_BENCH_BODY, content_type="application/ocsp-response",
                        headers={"Cache-Control": "max-age=0, no-cache"})


def build_https_app(services: Services) -> web.Application:
    app = web.Application(
        middlewares=[_middleware("https", services.config.http_body_timeout_seconds)],
        client_max_size=services.config.max_body_bytes
    )
    app[SERVICES] = services
    app[rest_api.AUTHORITY] = services.authority
    app[rest_api.ADMIN] = services.admin
    app[rest_api.SIGNATURES] = services.signatures
    app[rest_api.REGISTRY] = services.registry
    health.add_routes(app, with_api=True)
    rest_api.add_routes(app)
    certs.add_routes(app, services.authority)
    acme_wfe.add_routes(app, services.acme, services.config.effective_public_https_url)
    # The web admin page (issue 17) and its sign-in sessions (also on the EST listener,
    # for client-certificate sign-in: build_est_app shares these sessions).
    _add_admin_web(app, _web_sessions(services), owned=True)
    return app


def _web_sessions(services: Services) -> WebSessions:
    """Sessions in Redis when configured (shared by workers and replicas), in the database
    with several workers without it, else in-process (gateway.runtime.make_session_table)."""
    config = services.config
    return WebSessions(services.authority, SessionSettings(
        idle=dt.timedelta(seconds=config.admin_session_idle_seconds),
        lifetime=dt.timedelta(seconds=config.admin_session_lifetime_seconds)),
        make_session_table(services))


def _add_admin_web(app: web.Application, sessions: WebSessions, owned: bool) -> None:
    admin_web.add_routes(app, sessions)
    if owned:
        async def close_sessions(_: web.Application) -> None:
            await sessions.table.close()

        app.on_cleanup.append(close_sessions)


def build_est_app(services: Services, registrar: est_http.EstRegistrar,
                  settings: EstSettings, sessions: WebSessions | None = None
                  ) -> web.Application:
    """The EST listener's app (RFC 7030): ``/.well-known/est/``, on a port of its own so
    that only its clients are asked for a certificate, and the REST API (``/api/v1``), where
    a client certificate bound to a service account authenticates as a bearer token does
    (issue 13: mTLS on the listener that requests client certificates). Bodies are held to
    the EST limit here, REST ones too: a CSR or a certificate fits.

    The web admin page is served here too, where an operator signs in with a client
    certificate (issue 17). ``sessions``: the HTTPS app's (``app[rest_api.SESSIONS]``), so
    that a session opened on either listener is known on both (a cookie is not bound to a
    port); without it, sessions of its own."""
    app = web.Application(middlewares=[_middleware("est",
                                                   services.config.http_body_timeout_seconds)],
                          client_max_size=settings.max_body_bytes)
    app[SERVICES] = services
    app[rest_api.AUTHORITY] = services.authority
    app[rest_api.ADMIN] = services.admin
    app[rest_api.SIGNATURES] = services.signatures
    app[rest_api.REGISTRY] = services.registry  # services register over mTLS here
    est_http.add_routes(app, registrar, settings)
    rest_api.add_routes(app)
    _add_admin_web(app, _web_sessions(services) if sessions is None else sessions,
                   owned=sessions is None)
    return app
