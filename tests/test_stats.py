"""``GET /api/v1/stats`` (issue 17, the web page's live rates): this process's counters,
compliance:read, an organization's principal sees its issuance only and no OCSP or TSA
figures; OCSP answers signed live (pki_ocsp_live_answers_total: misses, requests that
cannot be cached) tell the cache hits from the successful responses. The RBAC x
organization cases are in the isolation matrix (tests/test_isolation_matrix.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

from ca_core.principal import Principal
from gateway.app import build_http_app, build_https_app
from gateway.runtime import Services
from tests.test_ocsp import issue, multi_request, ocsp_request, post

ClientFactory = Callable[..., Any]
SYSTEM = Principal.system("test")


async def _stats(client: TestClient, token: str, status: int = 200) -> dict[str, Any]:
    response = await client.get("/api/v1/stats", headers={"Authorization": f"Bearer {token}"})
    assert response.status == status, await response.text()
    if status == 200:
        assert response.headers["Cache-Control"] == "no-store"
    else:
        assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json(content_type=None)
    return body


async def test_counters_move_and_are_scoped(services: Services,
                                           aiohttp_client: ClientFactory) -> None:
    await services.ocsp.load(create=True)  # as `vcc-pki serve` does
    api = await aiohttp_client(build_https_app(services))
    ocsp = await aiohttp_client(build_http_app(services))
    token = (await services.authority.create_token("default", "pki_super_admin",
                                                   principal=SYSTEM)).token
    before = await _stats(api, token)
    assert before["organization"] is None and before["ocsp"] is not None
    issued = await issue(services, "default")
    request = ocsp_request(issued.certificate, issued.chain[0])
    for _ in range(2):  # precomputed at issuance: both from the cache
        response, _ = await post(ocsp, request)
        assert response.status == 200
    pair = (issued.certificate, issued.chain[0])
    response, _ = await post(ocsp, multi_request([pair, pair]))  # two CertIDs: not cached
    assert response.status == 200
    after = await _stats(api, token)
    assert after["process"] == before["process"]  # same process: a rate can be computed
    assert after["issuance"]["issued"] == before["issuance"]["issued"] + 1
    # The counters are the process's: tests before this one may have answered live
    # without an HTTP response (the responder called directly), so "hit" (successful
    # less live, at least 0) may sit at 0. Its parts move exactly; it is derived from them.
    successful = after["ocsp"]["responses"].get("successful", 0) - \
        before["ocsp"]["responses"].get("successful", 0)
    cache = {k: after["ocsp"]["cache"][k] - before["ocsp"]["cache"][k] for k in ("miss", "live")}
    assert (successful, cache) == (3, {"miss": 0, "live": 1})  # 2 hits: 3 - 0 - 1
    assert after["ocsp"]["cache"]["hit"] == max(0, after["ocsp"]["responses"].get(
        "successful", 0) - after["ocsp"]["cache"]["miss"] - after["ocsp"]["cache"]["live"])
    assert sum(after["ocsp"]["responses"].values()) - sum(
        before["ocsp"]["responses"].values()) == 3
    assert set(after["tsa"]) == {"granted", "rejection"}

    admin = (await services.authority.create_token("default", "pki_admin",
                                                   principal=SYSTEM)).token
    scoped = await _stats(api, admin)
    assert scoped["organization"] == "default"
    assert scoped["ocsp"] is None and scoped["tsa"] is None  # not kept per organization
    assert scoped["issuance"]["issued"] >= 1
    manager = (await services.authority.create_token("default", "cert_manager",
                                                     principal=SYSTEM)).token
    refused = await _stats(api, manager, 403)
    assert refused["status"] == 403
    unknown = await api.get("/api/v1/stats", params={"organization": "nowhere"},
                            headers={"Authorization": f"Bearer {token}"})
    assert unknown.status == 404


async def test_a_stored_report_is_served_again(services: Services,
                                               aiohttp_client: ClientFactory) -> None:
    """``GET /api/v1/reports/{name}/{id}`` (the web page's open/download of a stored
    report): the exact bytes and hash of the generation; anything else is a 404."""
    api = await aiohttp_client(build_https_app(services))
    token = (await services.authority.create_token("default", "auditor",
                                                   principal=SYSTEM)).token
    auth = {"Authorization": f"Bearer {token}"}
    made = await api.get("/api/v1/reports/crypto_inventory", params={"format": "csv"},
                         headers=auth)
    assert made.status == 200
    report_id = made.headers["X-Report-Id"]
    again = await api.get(f"/api/v1/reports/crypto_inventory/{report_id}", headers=auth)
    assert again.status == 200 and await again.read() == await made.read()
    assert again.headers["X-Report-SHA256"] == made.headers["X-Report-SHA256"]
    assert again.content_type == "text/csv"
    for path in (f"certificate_lifecycle/{report_id}", "crypto_inventory/nope",
                 f"crypto_inventory/{'x' * 300}", "nothing/x"):
        missing = await api.get(f"/api/v1/reports/{path}", headers=auth)
        assert missing.status == 404, path
        assert missing.content_type == "application/problem+json"
