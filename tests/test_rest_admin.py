"""The admin REST API (issue 13): certificate listing and downloads, renewal, tokens,
organizations and the audit log, each with its bad inputs as problem+json."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from asn1crypto import cms as asn1_cms
from cryptography import x509

from ca_core.principal import Principal
from gateway.app import build_https_app
from gateway.runtime import Services
from tests.helpers import make_csr, make_key

ClientFactory = Callable[..., Any]
ADMIN = Principal.system("test")


@pytest.fixture
async def client(services: Services, aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(build_https_app(services))  # type: ignore[no-any-return]


async def _token(services: Services, role: str = "pki_super_admin", org: str = "default"
                 ) -> str:
    return (await services.authority.create_token(org, role, principal=ADMIN)).token


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = json.loads(await response.text())
    assert set(body) >= {"type", "title", "status", "detail"} and body["status"] == status
    return body


async def _issue(client: TestClient, token: str, cn: str, **extra: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/certificates", headers=_auth(token), json={
        "csr": make_csr(cn=cn, dns=(cn,)).decode(), **extra})
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def test_list_filter_page_and_download(client: TestClient, services: Services) -> None:
    token = await _token(services, "cert_manager")
    serials = [(await _issue(client, token, f"host{n}.example.test"))["serial"]
               for n in range(5)]
    await client.post(f"/api/v1/certificates/{serials[0]}/revoke", headers=_auth(token))
    seen: list[str] = []
    cursor = None
    while True:
        query = {"limit": "2", "q": "host", **({"cursor": cursor} if cursor else {})}
        response = await client.get("/api/v1/certificates", headers=_auth(token), params=query)
        assert response.status == 200, await response.text()
        page = await response.json()
        seen += [c["serial"] for c in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == serials[::-1]  # newest first, each once
    for params, expected in [
        ({"status": "revoked"}, [serials[0]]),
        ({"status": "active", "q": "HOST3"}, [serials[3]]),
        ({"q": "host4.example"}, [serials[4]]),
        ({"profile": "tls_client"}, []),
        ({"expiring_before": "2000-01-01T00:00:00Z"}, []),
        ({"organization": "default", "q": "host1"}, [serials[1]]),
    ]:
        response = await client.get("/api/v1/certificates", headers=_auth(token), params=params)
        assert [c["serial"] for c in (await response.json())["items"]] == expected, params

    pem = await client.get(f"/api/v1/certificates/{serials[1]}", headers=_auth(token),
                           params={"format": "pem"})
    assert pem.status == 200 and (await pem.text()).count("BEGIN CERTIFICATE") == 3
    der = await client.get(f"/api/v1/certificates/{serials[1]}", headers=_auth(token),
                           params={"format": "der"})
    certificate = x509.load_der_x509_certificate(await der.read())
    assert format(certificate.serial_number, "X").zfill(len(serials[1])) == serials[1]
    p7 = await client.get(f"/api/v1/certificates/{serials[1]}", headers=_auth(token),
                          params={"format": "pkcs7"})
    signed = asn1_cms.ContentInfo.load(await p7.read())["content"]
    assert len(signed["certificates"]) == 3

    for path, params in [
        ("/api/v1/certificates", {"limit": "0"}), ("/api/v1/certificates", {"limit": "501"}),
        ("/api/v1/certificates", {"limit": "x"}), ("/api/v1/certificates", {"cursor": "!!"}),
        ("/api/v1/certificates", {"cursor": "WzFd"}), ("/api/v1/certificates",
                                                       {"status": "sleeping"}),
        ("/api/v1/certificates", {"expiring_before": "tomorrow"}),
        ("/api/v1/certificates", {"expiring_before": "2030-01-01T00:00:00"}),
        (f"/api/v1/certificates/{serials[1]}", {"format": "xml"}),
        ("/api/v1/certificates/zz", {}),
        ("/api/v1/certificates", {"q": "a\x00b"}),
        ("/api/v1/certificates", {"expiring_before": "0001-01-01T00:00:00+01:00"}),
        ("/api/v1/certificates", {"cursor": "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzAxOjAwIiwieCJd"}),
    ]:
        await _problem(await client.get(path, headers=_auth(token), params=params), 400)
    await _problem(await client.get("/api/v1/certificates", headers=_auth(token),
                                    params={"organization": "nowhere"}), 404)


async def test_renew_same_key_or_new_csr(client: TestClient, services: Services) -> None:
    token = await _token(services, "cert_manager")
    old = await _issue(client, token, "renew.example.test")
    response = await client.post(f"/api/v1/certificates/{old['serial']}/renew",
                                 headers=_auth(token))
    assert response.status == 201, await response.text()
    renewed = await response.json()
    assert renewed["serial"] != old["serial"] and renewed["san"] == old["san"]
    key_of = [x509.load_pem_x509_certificate(c["certificate_pem"].encode()).public_key()
              for c in (old, renewed)]
    assert key_of[0] == key_of[1]
    new_key = make_key()
    response = await client.post(
        f"/api/v1/certificates/{old['serial']}/renew", headers=_auth(token),
        json={"csr": make_csr("renew.example.test", ("renew.example.test",),
                              key=new_key).decode()})
    assert response.status == 201, await response.text()
    rekeyed = x509.load_pem_x509_certificate(
        (await response.json())["certificate_pem"].encode()).public_key()
    assert rekeyed == new_key.public_key() and rekeyed != key_of[0]  # the CSR's key
    await _problem(await client.post("/api/v1/certificates/0A0A/renew", headers=_auth(token)),
                   404)
    # a revoked certificate is not renewed, with its key or another: 409, nothing issued
    revoked = await _issue(client, token, "gone.example.test")
    assert (await client.post(f"/api/v1/certificates/{revoked['serial']}/revoke",
                              headers=_auth(token), json={"reason": "key_compromise"})
            ).status == 200
    count = sum(n for _, _, n in await services.store.count_active_certificates(
        dt.datetime.now(dt.UTC)))
    for body in ({}, {"csr": make_csr("gone.example.test", ("gone.example.test",)).decode()}):
        await _problem(await client.post(f"/api/v1/certificates/{revoked['serial']}/renew",
                                         headers=_auth(token), json=body), 409)
    assert sum(n for _, _, n in await services.store.count_active_certificates(
        dt.datetime.now(dt.UTC))) == count
    await _problem(await client.post(f"/api/v1/certificates/{old['serial']}/renew",
                                     headers=_auth(token), json={"csr": "junk"}), 400)
    await _problem(await client.post(f"/api/v1/certificates/{old['serial']}/revoke",
                                     headers=_auth(token), json={
                                         "invalidity_date": "0001-01-01T00:00:00+01:00"}), 400)
    auditor = await _token(services, "auditor")
    await _problem(await client.post(f"/api/v1/certificates/{old['serial']}/renew",
                                     headers=_auth(auditor)), 403)


async def test_tokens_create_list_revoke_at_once(client: TestClient,
                                                 services: Services) -> None:
    admin = await _token(services, "pki_admin")
    response = await client.post("/api/v1/tokens", headers=_auth(admin), json={
        "organization": "default", "role": "auditor", "name": "ci", "expires_in_days": 7})
    assert response.status == 201, await response.text()
    created = await response.json()
    assert created["token"].startswith("vcc.") and created["expires_at"]
    listed = await (await client.get("/api/v1/tokens", headers=_auth(admin))).json()
    assert created["id"] in [t["id"] for t in listed["items"]]
    assert all("token" not in t and "secret_hash" not in t for t in listed["items"])
    fresh = _auth(created["token"])
    assert (await client.get("/api/v1/audit", headers=fresh)).status == 200
    revoked = await client.delete(f"/api/v1/tokens/{created['id']}", headers=_auth(admin))
    assert revoked.status == 200 and (await revoked.json())["revoked"] is True
    await _problem(await client.get("/api/v1/audit", headers=fresh), 401)  # at once
    await _problem(await client.delete(f"/api/v1/tokens/{created['id']}",
                                       headers=_auth(admin)), 404)
    for body, status in [({"organization": "default"}, 400),
                         ({"organization": "default", "role": "king"}, 400),
                         ({"organization": "default", "role": "auditor",
                           "expires_in_days": 0}, 400),
                         ({"organization": "nowhere", "role": "auditor"}, 404),
                         ({"organization": "default", "role": "pki_super_admin"}, 403)]:
        await _problem(await client.post("/api/v1/tokens", headers=_auth(admin), json=body),
                       status)


async def test_organizations_and_disable(client: TestClient, services: Services) -> None:
    root = await _token(services)
    response = await client.post("/api/v1/organizations", headers=_auth(root), json={
        "slug": "health", "name": "Health", "isolation": "collaborative",
        "policy": {"allowed_names": ["health.example"], "max_validity_days": 30}})
    assert response.status == 201, await response.text()
    org = await response.json()
    assert org["isolation"] == "collaborative" and org["policy"]["max_validity_days"] == 30
    await _problem(await client.post("/api/v1/organizations", headers=_auth(root),
                                     json={"slug": "health"}), 409)
    manager = await _token(services, "cert_manager", "health")
    await _issue(client, manager, "web.health.example")
    refused = await client.post("/api/v1/certificates", headers=_auth(manager), json={
        "csr": make_csr(cn="x.other.example", dns=("x.other.example",)).decode()})
    assert "policy" in (await _problem(refused, 400))["detail"]
    too_long = await client.post("/api/v1/certificates", headers=_auth(manager), json={
        "csr": make_csr(cn="a.health.example", dns=("a.health.example",)).decode(),
        "validity_days": 60})
    await _problem(too_long, 400)
    for body in ({"isolation": "porous"}, {"status": "gone"}, {"policy": {"colour": 1}},
                 {"policy": {"allowed_ip_ranges": ["10.0.0.0/33"]}}, {"policy": []},
                 {"name": ""}, {"partners": ["nowhere"]}, {"partners": ["health"]},
                 {"partners": "default"}):
        await _problem(await client.patch("/api/v1/organizations/health", headers=_auth(root),
                                          json=body), 400)
    patched = await client.patch(f"/api/v1/organizations/{org['id']}", headers=_auth(root),
                                 json={"status": "disabled"})
    assert patched.status == 200 and (await patched.json())["status"] == "disabled"
    await _problem(await client.get("/api/v1/certificates", headers=_auth(manager)), 401)
    # the issuance path refuses it too, for a super admin as well
    refused = await client.post("/api/v1/certificates", headers=_auth(root), json={
        "csr": make_csr(cn="b.health.example", dns=("b.health.example",)).decode(),
        "organization": "health"})
    assert "disabled" in (await _problem(refused, 403))["detail"]
    await _problem(await client.patch("/api/v1/organizations/default", headers=_auth(root),
                                      json={"status": "disabled"}), 409)  # its own
    listed = await (await client.get("/api/v1/organizations", headers=_auth(root))).json()
    assert [o["slug"] for o in listed["items"]] == ["default", "health"]
    admin = await _token(services, "pki_admin")
    own = await (await client.get("/api/v1/organizations", headers=_auth(admin))).json()
    assert [o["slug"] for o in own["items"]] == ["default"]
    await _problem(await client.get("/api/v1/organizations/health", headers=_auth(admin)), 404)
    await _problem(await client.patch("/api/v1/organizations/default", headers=_auth(admin),
                                      json={"name": "mine"}), 403)


async def test_audit_query_verify_export(client: TestClient, services: Services) -> None:
    root = await _token(services)
    manager = await _token(services, "cert_manager")
    issued = await _issue(client, manager, "audit.example.test")
    response = await client.get("/api/v1/audit", headers=_auth(root),
                                params={"action": "issue", "limit": "1"})
    page = await response.json()
    assert len(page["items"]) == 1 and page["next"] is not None  # the CA issuances too
    entries = []
    cursor = None
    while True:
        params = {"action": "issue", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/api/v1/audit", headers=_auth(root),
                                       params=params)).json()
        entries += page["items"]
        if not (cursor := page["next"]):
            break
    assert issued["serial"].lower().lstrip("0") in [e["data"].get("serial") for e in entries]
    verified = await (await client.get("/api/v1/audit/verify", headers=_auth(root))).json()
    assert verified["intact"] is True and verified["entries"] == verified["head_seq"] > 0
    export = await client.get("/api/v1/audit/export", headers=_auth(root))
    assert export.status == 200 and export.content_type == "application/jsonl"
    lines = [json.loads(line) for line in (await export.text()).splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    recent = await client.get("/api/v1/audit/export", headers=_auth(root),
                              params={"since": lines[-1]["timestamp"]})
    assert lines[-1] in [json.loads(x) for x in (await recent.text()).splitlines()]
    await _problem(await client.get("/api/v1/audit", headers=_auth(manager)), 403)
    await _problem(await client.get("/api/v1/audit/verify", headers=_auth(manager)), 403)
    for params in ({"since": "yesterday"}, {"cursor": "WyJ4Il0"}, {"cursor": "W3RydWVd"}):
        await _problem(await client.get("/api/v1/audit", headers=_auth(root), params=params),
                       400)
    denied = await (await client.get("/api/v1/audit", headers=_auth(root),
                                     params={"action": "audit:read"})).json()
    assert denied["items"][-1]["status"] == "denied"  # the refusal above was audited


async def test_acme_eab_keys_and_accounts_over_rest(services: Services,
                                                   client: TestClient) -> None:
    """/api/v1/acme/eab (create: kid + HMAC key once; list; revoke) and
    /api/v1/acme/accounts (list; deactivate), with their bad inputs."""
    import base64

    token = await _token(services, "pki_admin")
    created = await client.post("/api/v1/acme/eab", headers=_auth(token),
                                json={"organization": "default"})
    assert created.status == 201, await created.text()
    key = await created.json()
    assert key["used"] is False and key["account_id"] is None
    assert created.headers["Location"] == f"/api/v1/acme/eab/{key['kid']}"
    hmac_key = base64.urlsafe_b64decode(key["hmac_key"] + "=" * (-len(key["hmac_key"]) % 4))
    stored = await services.store.get_eab_key(key["kid"])
    assert stored is not None and stored.hmac_key == hmac_key
    listed = await (await client.get("/api/v1/acme/eab", headers=_auth(token))).json()
    assert [k["kid"] for k in listed["items"]] == [key["kid"]] and listed["next"] is None
    assert "hmac_key" not in listed["items"][0]  # shown once, at creation
    revoked = await client.delete(f"/api/v1/acme/eab/{key['kid']}", headers=_auth(token))
    assert revoked.status == 200 and (await revoked.json())["kid"] == key["kid"]
    assert await services.store.get_eab_key(key["kid"]) is None
    await _problem(await client.delete(f"/api/v1/acme/eab/{key['kid']}",
                                       headers=_auth(token)), 404)
    for body in ({}, {"organization": 7}, {"organization": "nope"}):
        response = await client.post("/api/v1/acme/eab", headers=_auth(token), json=body)
        assert response.status in (400, 404), (body, response.status)
        await _problem(response, response.status)
    await _problem(await client.get("/api/v1/acme/eab", headers=_auth(token),
                                    params={"cursor": "%%%"}), 400)
    await _problem(await client.get("/api/v1/acme/accounts", headers=_auth(token),
                                    params={"limit": "0"}), 400)
    # accounts: one bound to an EAB key (stored as the ACME service binds it)
    import datetime as dt

    from ca_core.records import AcmeAccount, AuditEvent

    bound = await services.admin.create_eab_key(ADMIN, "default")
    org = await services.authority.organization("default")
    account = AcmeAccount(account_id="acct-rest", org_id=org.org_id, key_thumbprint="tp",
                          jwk={"kty": "EC"}, eab_kid=bound.kid,
                          created_at=dt.datetime.now(dt.UTC))
    await services.store.add_acme_account(account, AuditEvent(
        event_type="acme.account_created", category="acme", action="account_created",
        actor_type="system", actor_id="test", org_id=org.org_id,
        resource_type="acme_account", resource_id=account.account_id))
    conflict = await _problem(await client.delete(f"/api/v1/acme/eab/{bound.kid}",
                                                  headers=_auth(token)), 409)
    assert "acct-rest" in conflict["detail"]
    page = await (await client.get("/api/v1/acme/accounts", headers=_auth(token))).json()
    assert [(a["id"], a["status"], a["eab_kid"]) for a in page["items"]] == [
        ("acct-rest", "valid", bound.kid)]
    done = await client.post("/api/v1/acme/accounts/acct-rest/deactivate",
                             headers=_auth(token))
    assert done.status == 200 and (await done.json())["status"] == "deactivated"
    await _problem(await client.post("/api/v1/acme/accounts/acct-rest/deactivate",
                                     headers=_auth(token)), 404)  # not valid any more
    await _problem(await client.post("/api/v1/acme/accounts/nope/deactivate",
                                     headers=_auth(token)), 404)
    auditor = await _token(services, "auditor")
    await _problem(await client.get("/api/v1/acme/accounts", headers=_auth(auditor)), 403)


async def test_cas_chain_export_rollover_and_templates(services: Services,
                                                       client: TestClient) -> None:
    """/api/v1/cas (list; chain as PEM; create = rollover's next CA; activate) and
    /api/v1/templates (read-only), with their bad inputs."""
    from ca_core.hierarchy import ensure_organization

    await ensure_organization(services.authority, "health", "Health", ADMIN)
    admin = await _token(services)
    health = await _token(services, "pki_admin", "health")
    page = await (await client.get("/api/v1/cas", headers=_auth(health))).json()
    names = {c["name"]: c for c in page["items"]}
    assert "health-issuing" in names and "default-issuing" not in names  # scoped
    assert names["health-issuing"]["status"] == "active" and page["next"] is None
    assert {c["type"] for c in page["items"]} >= {"root", "intermediate", "issuing"}
    chain = await client.get("/api/v1/cas/health-issuing/chain", headers=_auth(health))
    assert chain.status == 200 and chain.content_type == "application/pem-certificate-chain"
    certificates = x509.load_pem_x509_certificates(await chain.read())
    assert len(certificates) == 3 and certificates[-1].subject == certificates[-1].issuer
    for lower, upper in itertools.pairwise(certificates):
        lower.verify_directly_issued_by(upper)
    await _problem(await client.get("/api/v1/cas/default-issuing/chain",
                                    headers=_auth(health)), 404)  # another org's
    await _problem(await client.get("/api/v1/cas/nope/chain", headers=_auth(admin)), 404)
    first = await (await client.get("/api/v1/cas", headers=_auth(admin),
                                    params={"limit": "1"})).json()
    assert len(first["items"]) == 1 and first["next"]
    second = await (await client.get("/api/v1/cas", headers=_auth(admin),
                                     params={"limit": "1", "cursor": first["next"]})).json()
    assert second["items"][0]["name"] != first["items"][0]["name"]
    # create: the organization's next issuing CA (pki_admin may not)
    await _problem(await client.post("/api/v1/cas", headers=_auth(health),
                                     json={"organization": "health"}), 403)
    for body, status in [({}, 400), ({"organization": "health", "key": "dsa-1024"}, 400),
                         ({"organization": "nope"}, 404), ({"organization": ["x"]}, 400)]:
        await _problem(await client.post("/api/v1/cas", headers=_auth(admin), json=body),
                       status)
    created = await client.post("/api/v1/cas", headers=_auth(admin),
                                json={"organization": "health", "key": "ec-p384"})
    assert created.status == 201, await created.text()
    new = await created.json()
    assert (new["status"], new["type"], new["key"]) == ("next", "issuing", "ECDSA-384")
    await _problem(await client.post("/api/v1/cas", headers=_auth(admin),
                                     json={"organization": "health"}), 409)  # one next
    await _problem(await client.post("/api/v1/cas/health-issuing/activate",
                                     headers=_auth(admin)), 409)  # active, not next
    activated = await client.post(f"/api/v1/cas/{new['name']}/activate",
                                  headers=_auth(admin))
    assert activated.status == 200 and (await activated.json())["status"] == "active"
    # templates: the built-in profiles are read-only (tests/test_templates.py: CRUD)
    listed = await (await client.get("/api/v1/templates", headers=_auth(health))).json()
    assert "vcc_service" in [t["name"] for t in listed["items"]] and listed["next"] is None
    assert all(t["read_only"] for t in listed["items"])
    one = await (await client.get("/api/v1/templates/vcc_service",
                                  headers=_auth(health))).json()
    assert one["name"] == "vcc_service" and "serverAuth" in one["extended_key_usage"]
    await _problem(await client.get("/api/v1/templates/nope", headers=_auth(health)), 404)
    auditor = await _token(services, "auditor", "health")
    assert (await client.get("/api/v1/templates", headers=_auth(auditor))).status == 200
    service = await _token(services, "service_account", "health")
    await _problem(await client.get("/api/v1/templates", headers=_auth(service)), 403)
    await _problem(await client.get("/api/v1/cas", headers=_auth(auditor)), 403)


async def test_alternate_chain_of_a_certificate(services: Services,
                                                client: TestClient) -> None:
    """GET /api/v1/certificates/{serial}?chain=alternate: the chain through a
    cross-certificate (``vcc-pki ca chains``), 404 while there is none."""
    from ca_core.cross import add_cross_certificate, cross_certification_request
    from tests.helpers import bridge_root, cross_certify, pem

    token = await _token(services, "cert_manager")
    serial = (await _issue(client, token, "alt.example.test"))["serial"]
    url = f"/api/v1/certificates/{serial}"
    await _problem(await client.get(url, headers=_auth(token),
                                    params={"chain": "alternate"}), 404)
    await _problem(await client.get(url, headers=_auth(token),
                                    params={"chain": "sideways"}), 400)
    authority = services.authority
    bridge_key, bridge = bridge_root()
    cross = cross_certify(await cross_certification_request(authority, "intermediate"),
                          bridge_key, bridge)
    await add_cross_certificate(authority, "intermediate", pem(cross, bridge), ADMIN)
    default = x509.load_pem_x509_certificates(await (await client.get(
        url, headers=_auth(token), params={"format": "pem"})).read())
    alternate = x509.load_pem_x509_certificates(await (await client.get(
        url, headers=_auth(token), params={"format": "pem", "chain": "alternate"})).read())
    assert alternate == [*default[:2], cross]
    document = await (await client.get(url, headers=_auth(token),
                                       params={"chain": "alternate"})).json()
    assert x509.load_pem_x509_certificates(document["chain_pem"].encode()) == alternate[1:]


async def test_an_audit_export_cut_by_a_failing_store_never_looks_complete(
        client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    import aiohttp

    from ca_core.errors import Unavailable

    root = await _token(services)
    real = services.store.query_audit
    calls = 0

    async def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > limit:
            raise Unavailable("the store went away")
        found = await real(*args, **kwargs)
        return (found * 1000)[:1000]  # a full page: the export reads the next one

    monkeypatch.setattr(services.store, "query_audit", failing)
    # The first read fails: a plain problem+json 503, nothing streamed.
    limit = 0
    await _problem(await client.get("/api/v1/audit/export", headers=_auth(root)), 503)
    # A later page fails: the 200 stream is cut (no final chunk), not ended cleanly with an
    # error response written into its body.
    calls, limit = 0, 1
    response = await client.get("/api/v1/audit/export", headers=_auth(root))
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_http_level_problems_keep_their_headers_and_reason(client: TestClient,
                                                                 services: Services) -> None:
    token = await _token(services)
    response = await client.delete("/api/v1/certificates", headers=_auth(token))
    body = await _problem(response, 405)
    assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}, response.headers
    assert body["type"] == "urn:vcc-pki:problem:http"
    response = await client.post("/api/v1/certificates", headers=_auth(token), data=b"{}")
    body = await _problem(response, 415)
    assert "application/json" in body["detail"]


async def test_intermediate_cas_and_an_organization_moved_under_its_own(
        services: Services, client: TestClient) -> None:
    """POST /api/v1/cas {"type": "intermediate"}: an organization's own intermediate (its
    pki_admin may: ca:create_intermediate) or a shared one (super admin only); then a
    rollover signed by it (``parent``) and activated: the organization's certificates chain
    through its own intermediate to the root."""
    from ca_core.hierarchy import ensure_organization

    await ensure_organization(services.authority, "health", "Health", ADMIN)
    admin = await _token(services)
    health = await _token(services, "pki_admin", "health")
    own = await client.post("/api/v1/cas", headers=_auth(health),
                            json={"type": "intermediate", "organization": "health",
                                  "validity_days": 1000})
    assert own.status == 201, await own.text()
    intermediate = await own.json()
    root = next(c for c in (await (await client.get(
        "/api/v1/cas", headers=_auth(admin))).json())["items"] if c["type"] == "root")
    assert (intermediate["name"], intermediate["type"], intermediate["parent_id"]) == (
        "health-intermediate", "intermediate", root["id"])
    assert intermediate["organization_id"] is not None
    shared = await client.post("/api/v1/cas", headers=_auth(admin),
                               json={"type": "intermediate", "name": "shared-2"})
    assert shared.status == 201 and (await shared.json())["organization_id"] is None
    for token, body, status in [
        (health, {"type": "intermediate", "name": "mine"}, 403),  # shared: super admin only
        (health, {"type": "intermediate", "organization": "default"}, 404),  # another org
        (await _token(services, "cert_manager", "health"),
         {"type": "intermediate", "organization": "health", "name": "x"}, 403),
        (admin, {"type": "intermediate"}, 400),  # a shared one needs a name
        (admin, {"type": "intermediate", "name": "root"}, 400),
        (admin, {"type": "intermediate", "name": "Not A Slug"}, 400),
        (admin, {"type": "intermediate", "name": "shared-2"}, 409),
        (admin, {"type": "intermediate", "name": "z", "validity_days": 0}, 400),
        (admin, {"type": "intermediate", "name": "z", "parent": "default-issuing"}, 400),
        (admin, {"type": "root", "name": "z"}, 400),
        (admin, {"organization": "health", "name": "z"}, 400),  # an issuing CA's name
        (admin, {"organization": "default", "parent": "health-intermediate"}, 404),
        (admin, {"organization": "health", "parent": "default-issuing"}, 404),
        (admin, {"organization": "health", "parent": "nope"}, 404),
    ]:
        await _problem(await client.post("/api/v1/cas", headers=_auth(token), json=body),
                       status)
    await _problem(await client.get("/api/v1/cas/health-intermediate/chain",
                                    headers=_auth(await _token(services, "pki_admin"))), 404)
    moved = await client.post("/api/v1/cas", headers=_auth(admin), json={
        "organization": "health", "parent": "health-intermediate"})
    assert moved.status == 201, await moved.text()
    successor = await moved.json()
    assert successor["parent_id"] == intermediate["id"] and successor["status"] == "next"
    activated = await client.post(f"/api/v1/cas/{successor['name']}/activate",
                                  headers=_auth(admin))
    assert activated.status == 200, await activated.text()
    services.authority.forget_issuing_cas(successor["organization_id"])
    issued = await _issue(client, await _token(services, "cert_manager", "health"),
                          "svc.health.example.test")
    leaf = x509.load_pem_x509_certificate(issued["certificate_pem"].encode())
    chain = x509.load_pem_x509_certificates(await (await client.get(
        f"/api/v1/cas/{successor['name']}/chain", headers=_auth(health))).read())
    assert [c.subject.rfc4514_string() for c in chain[:2]] == [
        successor["subject"], intermediate["subject"]] and len(chain) == 3
    for lower, upper in itertools.pairwise([leaf, *chain]):
        lower.verify_directly_issued_by(upper)
    # a later rollover keeps the organization under its own intermediate by default
    later = await (await client.post("/api/v1/cas", headers=_auth(admin),
                                     json={"organization": "health"})).json()
    assert later["parent_id"] == intermediate["id"]
