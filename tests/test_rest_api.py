"""The REST API over aiohttp: happy path and every bad input as problem+json."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ca_core.hierarchy import ensure_organization
from ca_core.principal import Principal
from gateway.app import build_http_app, build_https_app
from gateway.runtime import Services
from tests.helpers import ListenerRecorder, fail_certificate_writes, make_csr, make_key

ClientFactory = Callable[..., Any]
ADMIN = Principal.system("test")


@pytest.fixture
async def client(services: Services, aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(build_https_app(services))  # type: ignore[no-any-return]


async def _token(services: Services, role: str = "cert_manager", org: str = "default") -> str:
    return (await services.authority.create_token(org, role, principal=ADMIN)).token


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = json.loads(await response.text())
    assert body["status"] == status and body["type"].startswith("urn:vcc-pki:problem:")
    assert "Traceback" not in body["detail"]
    return body


async def _audit_len(services: Services) -> int:
    return len(await services.store.audit_entries())


async def test_issue_fetch_revoke(client: TestClient, services: Services) -> None:
    token = await _token(services)
    response = await client.post(
        "/api/v1/certificates", headers=_auth(token),
        json={"csr": make_csr().decode(), "profile": "vcc_service", "validity_days": 30},
    )
    assert response.status == 201, await response.text()
    body = await response.json()
    assert body["certificate_pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert body["chain_pem"].count("BEGIN CERTIFICATE") == 2
    assert response.headers["Location"] == f"/api/v1/certificates/{body['serial']}"
    serial = body["serial"]

    fetched = await client.get(f"/api/v1/certificates/{serial}", headers=_auth(token))
    assert fetched.status == 200 and (await fetched.json())["status"] == "active"

    revoked = await client.post(f"/api/v1/certificates/{serial}/revoke", headers=_auth(token),
                                json={"reason": "key_compromise"})
    assert revoked.status == 200
    assert (await revoked.json())["revocation_reason"] == "key_compromise"
    again = await client.post(f"/api/v1/certificates/{serial}/revoke", headers=_auth(token),
                              json={"reason": "key_compromise"})
    await _problem(again, 409)


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"csr": "garbage", "profile": "vcc_service"}, 400, "bad_csr"),
        ({"profile": "vcc_service"}, 400, "bad_request"),
        ({"csr": 5}, 400, "bad_request"),
        ({"csr": make_csr(key=make_key("rsa-1024")).decode()}, 400, "bad_public_key"),
        ({"csr": make_csr().decode(), "profile": "nope"}, 400, "unknown_profile"),
        ({"csr": make_csr(emails=("x@example.test",)).decode()}, 400, "policy_violation"),
        ({"csr": make_csr().decode(), "validity_days": 4000}, 400, "validity_too_long"),
        ({"csr": make_csr().decode(), "validity_days": "ten"}, 400, "bad_request"),
        ({"csr": make_csr().decode(), "organization": "elsewhere"}, 403, "forbidden"),
        ({"csr": "\ud800"}, 400, "bad_request"),
        ({"csr": make_csr().decode(), "organization": "\ud800"}, 400, "bad_request"),
    ],
    ids=["garbage-csr", "missing-csr", "csr-not-string", "weak-key", "unknown-profile",
         "san-not-allowed", "validity-too-long", "days-not-int", "foreign-org",
         "lone-surrogate-csr", "lone-surrogate-org"],
)
async def test_bad_issue_requests(
    client: TestClient, services: Services, body: dict[str, Any], status: int, kind: str
) -> None:
    token = await _token(services)
    before = await _audit_len(services)
    response = await client.post("/api/v1/certificates", headers=_auth(token), json=body)
    problem = await _problem(response, status)
    assert problem["type"] == f"urn:vcc-pki:problem:{kind}"
    # Bad input writes nothing; a refusal (403) is audited, once (issue 13).
    entries = await services.store.audit_entries()
    assert len(entries) == before + (status == 403)
    if status == 403:
        assert entries[-1].event.status == "denied"


async def test_http_level_faults(client: TestClient, services: Services) -> None:
    token = await _token(services)
    await _problem(await client.post(
        "/api/v1/certificates", headers={**_auth(token), "Content-Type": "application/json"},
        data=b"{not json"), 400)
    await _problem(await client.post(
        "/api/v1/certificates", headers={**_auth(token), "Content-Type": "text/plain"},
        data=b"x"), 415)
    await _problem(await client.post(
        "/api/v1/certificates", headers={**_auth(token), "Content-Type": "application/json"},
        data=b"[1, 2]"), 400)
    await _problem(await client.post(  # deeper than Python's recursion limit
        "/api/v1/certificates", headers={**_auth(token), "Content-Type": "application/json"},
        data=b"[" * 100_000), 400)
    await _problem(await client.post(
        "/api/v1/certificates", headers={**_auth(token), "Content-Type": "application/json"},
        data=b"x" * (services.config.max_body_bytes + 10)), 413)
    await _problem(await client.get("/api/v1/nothing-here"), 404)


async def test_authentication_and_authorization(client: TestClient, services: Services) -> None:
    csr = {"csr": make_csr().decode()}
    response = await client.post("/api/v1/certificates", json=csr)
    await _problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    await _problem(await client.post("/api/v1/certificates", json=csr,
                                     headers=_auth("vcc.0000.bogus")), 401)
    await _problem(await client.post("/api/v1/certificates", json=csr,
                                     headers={"Authorization": "Basic abc"}), 401)
    auditor = await _token(services, "auditor")
    await _problem(await client.post("/api/v1/certificates", json=csr,
                                     headers=_auth(auditor)), 403)


async def test_unknown_and_foreign_serials(client: TestClient, services: Services) -> None:
    await ensure_organization(services.authority, "health")
    mine = await _token(services)
    theirs = await _token(services, org="health")
    issued = await client.post("/api/v1/certificates", headers=_auth(mine),
                               json={"csr": make_csr().decode()})
    serial = (await issued.json())["serial"]
    await _problem(await client.get("/api/v1/certificates/0123ABCD", headers=_auth(mine)), 404)
    await _problem(await client.get("/api/v1/certificates/zz", headers=_auth(mine)), 400)
    await _problem(await client.get(f"/api/v1/certificates/{serial}", headers=_auth(theirs)),
                   404)
    await _problem(await client.post(f"/api/v1/certificates/{serial}/revoke",
                                     headers=_auth(theirs), json={"reason": "superseded"}), 404)
    await _problem(await client.post(f"/api/v1/certificates/{serial}/revoke",
                                     headers=_auth(mine), json={"reason": "bogus"}), 400)
    still = await client.get(f"/api/v1/certificates/{serial}", headers=_auth(mine))
    assert (await still.json())["status"] == "active"


async def test_health_endpoints(client: TestClient) -> None:
    for path in ("/health", "/ready", "/api/v1/health", "/api/v1/health/database",
                 "/api/v1/health/hsm"):
        response = await client.get(path)
        assert response.status == 200, path
        assert (await response.json())["status"] in ("healthy", "ready")
    hsm = await (await client.get("/api/v1/health/hsm")).json()
    # root, intermediate, default-issuing and the time-stamping authority's key
    assert hsm["backend"] == "software" and hsm["keys_loaded"] == 4


async def test_ready_is_503_when_the_store_is_gone(client: TestClient, services: Services) -> None:
    await services.store.close()
    response = await client.get("/ready")
    assert response.status == 503
    assert (await response.json())["database"] == "unhealthy"


async def test_http_listener_serves_ca_certificates_and_metrics(
    services: Services, aiohttp_client: ClientFactory
) -> None:
    client = await aiohttp_client(build_http_app(services))
    der = await client.get("/ca/default-issuing.der")
    assert der.status == 200 and der.content_type == "application/pkix-cert"
    pem = await client.get("/ca/root.pem")
    assert (await pem.text()).startswith("-----BEGIN CERTIFICATE-----")
    assert (await client.get("/ca/nope.der")).status == 404
    assert (await client.get("/ca/root.exe")).status == 404
    metrics = await (await client.get("/metrics")).text()
    for name in ("pki_cert_requests_total", "pki_cert_issuance_duration_seconds",
                 "pki_active_certificates", "pki_ca_signing_operations_total"):
        assert name in metrics


async def test_store_gone_is_503_without_a_traceback(
    client: TestClient, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    token = await _token(services)
    await services.store.close()
    for response in (
        await client.get("/api/v1/certificates/0123456789abcdef", headers=_auth(token)),
        await client.post("/api/v1/certificates", headers=_auth(token),
                          json={"csr": make_csr().decode()}),
    ):
        assert response.status == 503, await response.text()
        assert response.headers["Retry-After"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_certificate_write_failing_is_503_and_returns_no_certificate(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recorded before returned (DESIGN.md): the store fails at the certificate write
    itself, after authentication, the organization and the CA were read. The answer is a
    503 problem with no certificate in it, and nothing else in the process hears of one."""
    token = await _token(services)
    listener = ListenerRecorder()
    services.authority.add_listener(listener)
    before = await _audit_len(services)
    attempts = fail_certificate_writes(monkeypatch, services.store)
    response = await client.post("/api/v1/certificates", headers=_auth(token),
                                 json={"csr": make_csr().decode(), "profile": "vcc_service"})
    body = await _problem(response, 503)
    assert body["type"] == "urn:vcc-pki:problem:unavailable"
    assert response.headers["Retry-After"]
    assert len(attempts) == 1
    text = json.dumps(body)
    assert "CERTIFICATE" not in text and "Location" not in response.headers
    assert attempts[0].serial_hex not in text.lower()
    assert listener.issued == []
    monkeypatch.undo()
    assert await _audit_len(services) == before
    assert await services.store.find_certificates_by_serial(attempts[0].serial_hex) == []
