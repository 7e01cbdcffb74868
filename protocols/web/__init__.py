"""The web admin page (issue 17) under ``/admin/`` on the HTTPS listener.

Serves a static page (``static/``: hand-written ES modules and CSS, no build step, nothing
from another origin) and the sign-in endpoints. Everything the page shows or changes goes
through the documented REST API (``/api/v1``), which accepts the session cookie set here
(``protocols.rest.api._principal``), so RBAC and tenant scoping are exactly the API's.

- ``POST /admin/session`` ``{"token": "vcc...."}``: sign in; sets the session cookie
  (``__Host-`` prefix: Secure, Path=/, no Domain; HttpOnly; SameSite=Strict) and answers the
  CSRF token the page sends as ``X-CSRF-Token`` on every state change. ``{}`` (no token)
  signs in with the connection's TLS client certificate, bound to a service account: on the
  EST listener, which requests one and serves the page too (the 8443 listener never asks).
- ``GET /admin/session``: who is signed in (and the CSRF token again, for a reload), or
  ``{"signed_in": false}`` once the session has ended, with ``"client_certificate": true``
  when this connection came with a client certificate to sign in with.
- ``DELETE /admin/session``: sign out (needs the CSRF header).

Session rules (expiry, CSRF, re-authentication per request) are ``ca_core.sessions``'.
"""

from __future__ import annotations

from importlib import resources
from pathlib import PurePath
from typing import Any

from aiohttp import web

from ca_core.errors import BadRequest, Unauthorized
from ca_core.principal import Principal
from ca_core.sessions import Session, WebSessions
from protocols.rest.api import CSRF_HEADER, SESSION_COOKIE, SESSIONS, _client_chain, _json_body

# No inline script or style, nothing from another origin; the SVG chart is drawn with DOM
# calls and attributes only, which this allows.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_STATIC = resources.files(__name__) / "static"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# Every module and style sheet of static/ (a new view module needs no line here); the name
# is looked up in this table, never joined to a path from the request.
_ASSETS = {entry.name: _TYPES[PurePath(entry.name).suffix] for entry in _STATIC.iterdir()
           if entry.is_file() and PurePath(entry.name).suffix in _TYPES}


def _asset(name: str) -> bytes:
    return (_STATIC / name).read_bytes()


def _secure(response: web.StreamResponse) -> web.StreamResponse:
    response.headers.update(_SECURITY_HEADERS)
    return response


async def index(request: web.Request) -> web.StreamResponse:
    return _secure(web.Response(body=_asset("index.html"), content_type="text/html",
                                charset="utf-8"))


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = _ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return _secure(web.Response(body=_asset(name), content_type=content_type,
                                charset="utf-8"))


async def redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/admin/")


def _who(session: Session, principal: Principal) -> dict[str, Any]:
    return {"signed_in": True, "csrf": session.csrf, "role": principal.role,
            "organization_id": principal.org_id,
            "actor_id": principal.actor_id, "permissions": sorted(principal.permissions),
            "expires_at": session.expires_at.isoformat().replace("+00:00", "Z")}


async def sign_in(request: web.Request) -> web.StreamResponse:
    # JSON only: a cross-site form cannot send it without a CORS preflight (login CSRF).
    body = await _json_body(request)
    token = body.get("token")
    sessions = request.app[SESSIONS]
    if token is None and (chain := _client_chain(request)):
        session, principal = await sessions.open_certificate(chain)
    elif not isinstance(token, str) or not token.strip() or len(token) > 512:
        raise BadRequest("field 'token' (a bearer token) is required, or a client "
                         "certificate on the mTLS port")
    else:
        session, principal = await sessions.open(token.strip())
    response = web.json_response(_who(session, principal))
    lifetime = request.app[SESSIONS].settings.lifetime
    response.set_cookie(SESSION_COOKIE, session.session_id, path="/", secure=True,
                        httponly=True, samesite="Strict",
                        max_age=int(lifetime.total_seconds()))
    return _secure(response)


def _cookie(request: web.Request) -> str:
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        raise Unauthorized("not signed in")
    return session_id


async def current(request: web.Request) -> web.StreamResponse:
    """Who is signed in, or ``{"signed_in": false}`` (a 200: the page asks this on every
    load, and a 401 there would be an error in the browser's console)."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        try:
            session, principal = await request.app[SESSIONS].resolve(session_id, None, False)
        except Unauthorized:
            pass
        else:
            return _secure(web.json_response(_who(session, principal)))
    body: dict[str, Any] = {"signed_in": False}
    if _client_chain(request):
        body["client_certificate"] = True
    response = web.json_response(body)
    if session_id:
        response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True,
                            samesite="Strict")
    return _secure(response)


async def sign_out(request: web.Request) -> web.StreamResponse:
    sessions = request.app[SESSIONS]
    session_id = _cookie(request)
    _, principal = await sessions.resolve(session_id, request.headers.get(CSRF_HEADER), True)
    await sessions.close(session_id, principal)
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True,
                        samesite="Strict")
    return _secure(response)


def add_routes(app: web.Application, sessions: WebSessions) -> None:
    app[SESSIONS] = sessions
    app.router.add_get("/admin", redirect)
    app.router.add_get("/admin/", index)
    app.router.add_get("/admin/static/{name}", asset)
    app.router.add_post("/admin/session", sign_in)
    app.router.add_get("/admin/session", current)
    app.router.add_delete("/admin/session", sign_out)
