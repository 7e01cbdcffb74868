"""The web admin page's server side (issue 17): the page and its assets with a strict CSP,
sign-in sessions (cookie attributes, CSRF on state changes, expiry, sign-out), and the
session authenticating the REST API with the token's RBAC. The page itself is driven in a
real browser by conformance/test_web_admin_browser.py."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from ca_core.errors import Forbidden, Unauthorized
from ca_core.principal import Principal
from ca_core.sessions import MemorySessions, SessionSettings, WebSessions
from db.sessions import RedisSessions
from gateway.app import build_https_app
from gateway.config import ConfigError, load_config
from gateway.runtime import Services
from gateway.server import banner
from protocols.rest.api import SESSION_COOKIE, SESSIONS
from protocols.web import CSP
from tests.helpers import make_csr
from tests.redisutil import REDIS_URL, delete_prefix, require_redis, unique_prefix

ClientFactory = Callable[..., Any]
ADMIN = Principal.system("test")


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(services: Services, aiohttp_client: ClientFactory, clock: Clock
                 ) -> TestClient:
    app = build_https_app(services)
    # Sessions on a clock the test moves; the token checks keep the authority's real one.
    app[SESSIONS] = WebSessions(services.authority, SessionSettings(
        idle=dt.timedelta(minutes=30), lifetime=dt.timedelta(hours=8)), clock=clock)
    # The test client speaks plain HTTP, where a jar would drop the Secure cookie: cookies
    # are sent by hand.
    return await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())  # type: ignore[no-any-return]


async def _token(services: Services, role: str = "cert_manager", org: str = "default") -> str:
    return (await services.authority.create_token(org, role, principal=ADMIN)).token


async def _sign_in(client: TestClient, token: str) -> tuple[dict[str, str], str]:
    response = await client.post("/admin/session", json={"token": token})
    assert response.status == 200, await response.text()
    body = await response.json()
    morsel = SimpleCookie(response.headers["Set-Cookie"])[SESSION_COOKIE]
    return {"Cookie": f"{SESSION_COOKIE}={morsel.value}"}, body["csrf"]


def _csr(name: str = "web.example.test") -> str:
    return make_csr(name, (name,)).decode()


async def _status(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body: dict[str, Any] = json.loads(await response.text())
    return body


def test_the_banner_names_the_page() -> None:
    lines = "\n".join(banner(load_config({}), None, "sqlite", "software"))
    assert "https://127.0.0.1:8443/admin/" in lines


async def test_page_and_assets_carry_a_strict_csp(client: TestClient) -> None:
    page = await client.get("/admin/")
    assert page.status == 200 and page.content_type == "text/html"
    assert page.headers["Content-Security-Policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "http" not in CSP
    assert page.headers["X-Frame-Options"] == "DENY"
    html = await page.text()
    assert "<script>" not in html and "style=" not in html and "http://" not in html \
        and "https://" not in html
    for name, kind in (("app.js", "text/javascript"), ("views.js", "text/javascript"),
                       ("api.js", "text/javascript"), ("app.css", "text/css"),
                       ("favicon.svg", "image/svg+xml")):
        asset = await client.get(f"/admin/static/{name}")
        assert asset.status == 200 and asset.content_type == kind
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
        text = await asset.text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text
    for name in ("nope.js", "..%2f__init__.py", "index.html"):
        assert (await client.get(f"/admin/static/{name}")).status == 404
    redirect = await client.get("/admin", allow_redirects=False)
    assert redirect.status == 301 and redirect.headers["Location"] == "/admin/"


async def test_sign_in_sets_a_strict_cookie_and_the_session_authenticates_the_api(
        client: TestClient, services: Services) -> None:
    token = await _token(services)
    response = await client.post("/admin/session", json={"token": token})
    assert response.status == 200
    body = await response.json()
    assert body["role"] == "cert_manager" and "cert:revoke" in body["permissions"]
    assert token not in await response.text()
    raw = response.headers["Set-Cookie"]
    morsel = SimpleCookie(raw)[SESSION_COOKIE]
    assert morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Strict"
    assert morsel["path"] == "/" and not morsel["domain"]
    assert morsel.value != token and token not in raw
    cookie = {"Cookie": f"{SESSION_COOKIE}={morsel.value}"}
    who = await _status(await client.get("/admin/session", headers=cookie), 200)
    assert who["signed_in"] and who["csrf"] == body["csrf"]
    listed = await client.get("/api/v1/certificates", headers=cookie)
    assert listed.status == 200
    issued = await client.post("/api/v1/certificates", headers={**cookie,
                               "X-CSRF-Token": body["csrf"]}, json={"csr": _csr()})
    await _status(issued, 201)


async def test_state_changes_need_the_csrf_header(client: TestClient,
                                                  services: Services) -> None:
    cookie, csrf = await _sign_in(client, await _token(services))
    before = len(await services.store.audit_entries())
    for headers in (cookie, {**cookie, "X-CSRF-Token": "wrong"},
                    {**cookie, "X-CSRF-Token": ""}):
        refused = await client.post("/api/v1/certificates", headers=headers,
                                    json={"csr": _csr()})
        problem = await _status(refused, 403)
        assert "X-CSRF-Token" in problem["detail"]
    entries = (await services.store.audit_entries())[before:]
    assert [e.event.event_type for e in entries] == ["session.denied"] * 3
    assert all(e.event.action == "session:csrf" for e in entries)
    await _status(await client.delete("/admin/session", headers=cookie), 403)  # sign-out too
    ok = await client.post("/api/v1/certificates", headers={**cookie, "X-CSRF-Token": csrf},
                           json={"csr": _csr()})
    await _status(ok, 201)


async def test_bad_sign_ins_get_problems_not_sessions(client: TestClient,
                                                      services: Services) -> None:
    before = len(await services.store.audit_entries())
    for body in ({"token": "vcc.nope.nope"}, {"token": "garbage"}):
        response = await client.post("/admin/session", json=body)
        assert response.status == 401 and "Set-Cookie" not in response.headers
    refused = (await services.store.audit_entries())[before:]
    assert [(e.event.event_type, e.event.status) for e in refused] == [
        ("session.refused", "failed")] * 2
    assert all("nope" not in json.dumps(e.event.data) for e in refused)
    for raw in (b"{", b"[]", b'{"token": 5}', b'{"token": ""}',
                json.dumps({"token": "x" * 600}).encode(), b'"\\ud800"'):
        response = await client.post("/admin/session", data=raw,
                                     headers={"Content-Type": "application/json"})
        assert response.status == 400, raw
    form = await client.post("/admin/session", data={"token": await _token(services)})
    assert form.status == 415  # a cross-site form post cannot sign anyone in
    unknown = {"Cookie": f"{SESSION_COOKIE}=forged"}
    assert (await _status(await client.get("/admin/session", headers=unknown), 200)) == {
        "signed_in": False}
    assert (await client.get("/api/v1/certificates", headers=unknown)).status == 401
    assert (await client.get("/admin/session")).status == 200


async def test_sessions_expire_when_idle_and_at_their_lifetime(
        client: TestClient, services: Services, clock: Clock) -> None:
    token = await _token(services)
    cookie, _ = await _sign_in(client, token)
    clock.now += dt.timedelta(minutes=29)
    assert (await client.get("/api/v1/certificates", headers=cookie)).status == 200
    clock.now += dt.timedelta(minutes=29)  # used a moment ago: still idle < 30 min
    assert (await client.get("/api/v1/certificates", headers=cookie)).status == 200
    clock.now += dt.timedelta(minutes=31)
    assert (await client.get("/api/v1/certificates", headers=cookie)).status == 401
    assert (await (await client.get("/admin/session", headers=cookie)).json()) == {
        "signed_in": False}

    cookie, _ = await _sign_in(client, token)
    for _ in range(16):  # kept busy (7 h 44 min), it still ends after its 8 hours
        clock.now += dt.timedelta(minutes=29)
        assert (await client.get("/api/v1/certificates", headers=cookie)).status == 200
    clock.now += dt.timedelta(minutes=29)
    assert (await client.get("/api/v1/certificates", headers=cookie)).status == 401


async def test_a_revoked_token_ends_its_session_at_once(client: TestClient,
                                                        services: Services) -> None:
    created = await services.authority.create_token("default", "pki_admin", principal=ADMIN)
    cookie, _ = await _sign_in(client, created.token)
    assert (await client.get("/api/v1/certificates", headers=cookie)).status == 200
    await services.admin.revoke_token(ADMIN, created.record.token_id)
    assert (await client.get("/api/v1/certificates", headers=cookie)).status == 401
    assert (await (await client.get("/admin/session", headers=cookie)).json()) == {
        "signed_in": False}


async def test_sign_out_ends_the_session(client: TestClient, services: Services) -> None:
    token = await _token(services)
    before = len(await services.store.audit_entries())
    cookie, csrf = await _sign_in(client, token)
    out = await client.delete("/admin/session", headers={**cookie, "X-CSRF-Token": csrf})
    assert out.status == 204
    opened, closed = (await services.store.audit_entries())[before:]
    assert (opened.event.event_type, closed.event.event_type) == ("session.opened",
                                                                  "session.closed")
    assert opened.event.resource_id == closed.event.resource_id
    assert opened.event.resource_id not in cookie["Cookie"]
    assert opened.event.data == {"role": "cert_manager"}
    assert SimpleCookie(out.headers["Set-Cookie"])[SESSION_COOKIE].value == ""
    assert (await client.get("/api/v1/certificates", headers=cookie)).status == 401


async def test_the_session_has_the_tokens_rbac_and_tenant(client: TestClient,
                                                          services: Services) -> None:
    manager = await _token(services)
    issued = await client.post("/api/v1/certificates", json={"csr": _csr()},
                               headers={"Authorization": f"Bearer {manager}"})
    serial = (await _status(issued, 201))["serial"]
    cookie, csrf = await _sign_in(client, await _token(services, "auditor"))
    assert (await client.get(f"/api/v1/certificates/{serial}", headers=cookie)).status == 200
    refused = await client.post(f"/api/v1/certificates/{serial}/revoke",
                                headers={**cookie, "X-CSRF-Token": csrf},
                                json={"reason": "superseded"})
    await _status(refused, 403)
    # a bearer token wins over the cookie
    revoked = await client.post(f"/api/v1/certificates/{serial}/revoke",
                                headers={**cookie, "Authorization": f"Bearer {manager}"},
                                json={"reason": "superseded"})
    await _status(revoked, 200)
    await services.admin.create_organization(ADMIN, "other", "Other")
    other, _ = await _sign_in(client, await _token(services, "cert_manager", "other"))
    assert (await client.get(f"/api/v1/certificates/{serial}", headers=other)).status == 404
    listed = await _status(await client.get("/api/v1/certificates", headers=other), 200)
    assert serial not in {c["serial"] for c in listed["items"]}


def test_session_settings_are_checked() -> None:
    config = load_config({"VCC_PKI_ADMIN_SESSION_IDLE_SECONDS": "60",
                          "VCC_PKI_ADMIN_SESSION_LIFETIME_SECONDS": "120"})
    assert (config.admin_session_idle_seconds, config.admin_session_lifetime_seconds) == (60, 120)
    for idle, lifetime in (("0", "60"), ("120", "60"), ("x", "60")):
        with pytest.raises(ConfigError):
            load_config({"VCC_PKI_ADMIN_SESSION_IDLE_SECONDS": idle,
                         "VCC_PKI_ADMIN_SESSION_LIFETIME_SECONDS": lifetime})


async def test_the_table_holds_no_usable_token(services: Services, clock: Clock) -> None:
    table = MemorySessions(clock=clock)
    sessions = WebSessions(services.authority, table=table, clock=clock)
    token = await _token(services)
    session, _ = await sessions.open(token)
    [(key, (stored, _))] = table._items.items()
    assert session.session_id not in key and token.encode() not in stored.sealed_token
    assert token.split(".")[2].encode() not in stored.sealed_token


async def test_the_memory_table_is_bounded(services: Services, clock: Clock) -> None:
    table = MemorySessions(max_sessions=3, clock=clock)
    sessions = WebSessions(services.authority, table=table, clock=clock)
    token = await _token(services)
    opened = [(await sessions.open(token))[0] for _ in range(5)]
    assert len(table) == 3
    for gone in opened[:2]:  # the ones ending first made room
        with pytest.raises(Unauthorized):
            await sessions.resolve(gone.session_id, None, False)
    await sessions.resolve(opened[4].session_id, None, False)


@pytest.mark.redis
async def test_sessions_in_redis_are_shared_by_processes(services: Services,
                                                         clock: Clock) -> None:
    require_redis()
    prefix = unique_prefix()
    one = WebSessions(services.authority, table=RedisSessions(REDIS_URL, prefix), clock=clock)
    two = WebSessions(services.authority, table=RedisSessions(REDIS_URL, prefix), clock=clock)
    try:
        token = await _token(services)
        session, principal = await one.open(token)
        # another process (its own client, the same Redis) knows it, CSRF and all
        _, again = await two.resolve(session.session_id, session.csrf, True)
        assert again == principal
        with pytest.raises(Forbidden):
            await two.resolve(session.session_id, "wrong", True)
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(f"{prefix}*")]
            assert len(keys) == 1 and session.session_id.encode() not in keys[0]
            raw = await client.get(keys[0])
            ttl = await client.pttl(keys[0])
        finally:
            await client.aclose()
        assert token.encode() not in raw and token.split(".")[2].encode() not in raw
        assert 0 < ttl <= 30 * 60 * 1000  # the idle end: Redis forgets it by itself
        clock.now += dt.timedelta(minutes=31)
        with pytest.raises(Unauthorized):
            await one.resolve(session.session_id, None, False)
        session, _ = await two.open(token)
        await one.close(session.session_id)  # sign-out in one process ends it everywhere
        with pytest.raises(Unauthorized):
            await two.resolve(session.session_id, None, False)
    finally:
        await one.table.close()
        await two.table.close()
        await delete_prefix(prefix)


async def test_a_redis_outage_is_a_503_not_a_500(services: Services,
                                                 aiohttp_client: ClientFactory) -> None:
    app = build_https_app(services)
    app[SESSIONS] = WebSessions(services.authority, table=RedisSessions(
        "redis://127.0.0.1:1/0", timeout=0.2))  # nothing listens on port 1
    client = await aiohttp_client(app, cookie_jar=aiohttp.DummyCookieJar())
    response = await client.post("/admin/session", json={"token": await _token(services)})
    assert response.status == 503 and response.content_type == "application/problem+json"
    forged = {"Cookie": f"{SESSION_COOKIE}=x"}
    assert (await client.get("/api/v1/certificates", headers=forged)).status == 503


async def test_a_client_certificate_session_is_its_service_account(
        services: Services, clock: Clock) -> None:
    """Sign-in with a TLS client certificate (the EST listener's, in the browser test):
    the session resolves to the bound service account on every request, and ends once the
    binding is revoked; a token cannot pose as a certificate credential."""
    from cryptography.hazmat.primitives import serialization

    from tests.helpers import bridge_root, pem
    from tests.test_service_accounts import foreign_leaf

    _, certificate = foreign_leaf(bridge_root("Operators"), "operator")
    der = certificate.public_bytes(serialization.Encoding.DER)
    account = await services.admin.create_service_account(ADMIN, "default", "operator",
                                                          pem(certificate), "auditor")
    sessions = WebSessions(services.authority, clock=clock)
    with pytest.raises(Unauthorized):
        await sessions.open_certificate([])
    session, principal = await sessions.open_certificate([der])
    assert principal.actor_id == f"mtls:{account.account_id}" and principal.role == "auditor"
    assert (await sessions.resolve(session.session_id, None, False))[1] == principal
    opened = (await services.store.audit_entries())[-1].event
    assert opened.event_type == "session.opened" and opened.data["method"] == "certificate"
    with pytest.raises(Unauthorized):  # the sealed credential's form is no token
        await sessions.open(session.token)
    await services.admin.revoke_service_account(ADMIN, account.account_id)
    with pytest.raises(Unauthorized):
        await sessions.resolve(session.session_id, None, False)
