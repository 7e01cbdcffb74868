"""ACME (RFC 8555) through the HTTPS app with a test client: whole flows with real
http-01, dns-01 and tls-alpn-01 validation against servers on loopback, EAB, key rollover,
ARI, revocation, and every kind of bad request with its RFC 8555 error type."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import socket
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ca_core.acme import key_authorization
from ca_core.authority import serial_hex
from ca_core.principal import Principal
from conformance import testdns
from conformance.gateway import free_port
from gateway.app import build_https_app
from gateway.runtime import Services
from protocols.acme.ari import cert_id as ari_cert_id
from tests.acme_client import AccountKey, Client, b64, csr_for, jws, mac_jws
from tests.helpers import ListenerRecorder, fail_certificate_writes, fresh_services

ClientFactory = Callable[..., Any]
ERR = "urn:ietf:params:acme:error:"


@dataclass
class World:
    services: Services
    http: TestClient
    tokens: dict[str, str]  # http-01 token -> key authorization
    txt: Path  # dns-01 records directory of the test DNS server

    def client(self, kind: str = "ec-p256", directory: str = "/acme/directory") -> Client:
        return Client(self.http, AccountKey.make(kind), directory)


async def _challenge_server(tokens: dict[str, str], port: int) -> web.AppRunner:
    async def serve(request: web.Request) -> web.Response:
        value = tokens.get(request.match_info["token"])
        return web.Response(text=value) if value else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/.well-known/acme-challenge/{token}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def _world(tmp_path: Path, aiohttp_client: ClientFactory, **env: str
                 ) -> AsyncIterator[World]:
    http_port, dns_port = free_port(), free_port(socket.SOCK_DGRAM)
    txt = tmp_path / "txt"
    txt.mkdir()
    tokens: dict[str, str] = {}
    runner = await _challenge_server(tokens, http_port)
    with testdns.running(dns_port, txt):
        async with fresh_services(
                tmp_path, VCC_PKI_ACME_HTTP01_PORT=str(http_port),
                VCC_PKI_ACME_DNS_RESOLVER=f"127.0.0.1:{dns_port}",
                VCC_PKI_ACME_VALIDATION_ATTEMPTS="1", **env) as services:
            client: TestClient = await aiohttp_client(build_https_app(services))
            yield World(services, client, tokens, txt)
    await runner.cleanup()


@pytest.fixture
async def world(tmp_path: Path, aiohttp_client: ClientFactory) -> AsyncIterator[World]:
    async for w in _world(tmp_path, aiohttp_client):
        yield w


async def _problem(response: Any, acme_type: str, status: int | None = None) -> dict[str, Any]:
    body = await response.json(content_type=None)
    assert response.headers.get("Content-Type", "").startswith("application/problem+json"), body
    assert body["type"] == ERR + acme_type, body
    if status is not None:
        assert response.status == status, body
    assert response.headers.get("Replay-Nonce"), "every error carries a fresh nonce"
    return dict(body)


async def _poll(client: Client, url: str, until: Callable[[dict[str, Any]], bool]
                ) -> dict[str, Any]:
    for _ in range(200):
        response = await client.post(url, None)
        document: dict[str, Any] = await response.json()
        if until(document):
            return document
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} never reached the state: {document}")


async def _authorize(world: World, client: Client, order: dict[str, Any],
                     kind: str = "http-01") -> None:
    for authz_url in order["authorizations"]:
        authz = await (await client.post(authz_url, None)).json()
        if authz["status"] == "valid":
            continue
        challenge = next(c for c in authz["challenges"] if c["type"] == kind)
        key_auth = key_authorization(challenge["token"], client.key.thumbprint)
        if kind == "http-01":
            world.tokens[challenge["token"]] = key_auth
        elif kind == "dns-01":
            digest = b64(hashlib.sha256(key_auth.encode()).digest())
            name = authz["identifier"]["value"]
            (world.txt / f"_acme-challenge.{name}").write_text(digest + "\n")
        response = await client.post(challenge["url"], {})
        assert response.status == 200, await response.text()
        assert f'<{authz_url}>;rel="up"' in response.headers.getall("Link")
        await _poll(client, authz_url, lambda d: d["status"] != "pending")


async def _order(client: Client, *names: str, ips: tuple[str, ...] = (),
                 **extra: Any) -> tuple[str, dict[str, Any]]:
    identifiers = [{"type": "dns", "value": n} for n in names]
    identifiers += [{"type": "ip", "value": i} for i in ips]
    response = await client.post(client.directory["newOrder"],
                                 {"identifiers": identifiers, **extra})
    assert response.status == 201, await response.text()
    return response.headers["Location"], await response.json()


async def _issue(world: World, client: Client, *names: str, kind: str = "http-01",
                 ips: tuple[str, ...] = ()) -> tuple[str, dict[str, Any], bytes]:
    order_url, order = await _order(client, *names, ips=ips)
    await _authorize(world, client, order, kind)
    order = await _poll(client, order_url, lambda d: d["status"] != "pending")
    assert order["status"] == "ready", order
    csr = csr_for([n for n in names], ips=list(ips))
    response = await client.post(order["finalize"], {"csr": b64(csr)})
    assert response.status == 200, await response.text()
    order = await _poll(client, order_url, lambda d: d["status"] != "processing")
    assert order["status"] == "valid", order
    response = await client.post(order["certificate"], None)
    assert response.status == 200
    assert response.content_type == "application/pem-certificate-chain"
    assert any(link.endswith('.der>;rel="up"') for link in response.headers.getall("Link"))
    return order_url, order, await response.read()


# --- whole flows --------------------------------------------------------------------------

async def test_directory_and_nonces(world: World) -> None:
    client = world.client()
    directory = await client.load()
    assert set(directory) >= {"newNonce", "newAccount", "newOrder", "revokeCert", "keyChange",
                              "renewalInfo", "meta"}
    assert directory["newAccount"] == "https://127.0.0.1:8443/acme/default/new-account"
    assert directory["meta"]["externalAccountRequired"] is False
    assert "tlsserver" in directory["meta"]["profiles"]
    head = await world.http.head("/acme/default/new-nonce")
    get = await world.http.get("/acme/default/new-nonce")
    assert (head.status, get.status) == (200, 204)
    nonces = {head.headers["Replay-Nonce"], get.headers["Replay-Nonce"]}
    assert len(nonces) == 2 and all(len(n) >= 22 for n in nonces)
    assert head.headers["Cache-Control"] == "no-store"
    assert (await world.http.get("/acme/nosuch/directory")).status == 404


@pytest.mark.parametrize("kind", ["ec-p256", "ec-p384", "rsa", "ed25519"])
async def test_account_keys_register_and_reregister(world: World, kind: str) -> None:
    client = world.client(kind)
    await client.load()
    first = await client.register()
    assert first.status == 201, await first.text()
    account = await first.json()
    assert account["status"] == "valid" and account["contact"] == ["mailto:ops@example.org"]
    url = first.headers["Location"]
    assert url.startswith("https://127.0.0.1:8443/acme/acct/")
    again = await client.register()
    assert again.status == 200 and again.headers["Location"] == url
    existing = await client.post(client.directory["newAccount"], {"onlyReturnExisting": True},
                                 use_jwk=True)
    assert existing.status == 200 and existing.headers["Location"] == url


async def test_http01_order_certificate_ari_and_revocation(world: World) -> None:
    client = world.client()
    await client.load()
    await client.register()
    _, _, chain_pem = await _issue(world, client, "svc.test", "www.svc.test")
    certificates = x509.load_pem_x509_certificates(chain_pem)
    leaf = certificates[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == ["svc.test", "www.svc.test"]
    assert len(certificates) == 3  # leaf, issuing, intermediate
    assert certificates[1].subject == leaf.issuer

    # a new order for the same names reuses the valid authorizations
    _, reordered = await _order(client, "svc.test")
    assert reordered["status"] == "ready"

    # ARI: the suggested window lies within the certificate's lifetime
    cert_id = ari_cert_id(leaf)
    response = await world.http.get(f"/acme/default/renewal-info/{cert_id}")
    assert response.status == 200 and response.headers["Retry-After"]
    window = (await response.json())["suggestedWindow"]
    start = dt.datetime.fromisoformat(window["start"].replace("Z", "+00:00"))
    assert leaf.not_valid_before_utc < start < leaf.not_valid_after_utc
    # an order may name the certificate it replaces
    _, renewal = await _order(client, "svc.test", replaces=cert_id)
    assert renewal["replaces"] == cert_id

    from cryptography.hazmat.primitives import serialization
    der = leaf.public_bytes(serialization.Encoding.DER)
    other = world.client()
    await other.load()
    await other.register()
    response = await other.post(other.directory["revokeCert"], {"certificate": b64(der)})
    await _problem(response, "unauthorized", 403)
    response = await client.post(client.directory["revokeCert"],
                                 {"certificate": b64(der), "reason": 4})
    assert response.status == 200, await response.text()
    response = await client.post(client.directory["revokeCert"], {"certificate": b64(der)})
    await _problem(response, "alreadyRevoked")
    record = await world.services.store.find_certificates_by_serial(
        serial_hex(leaf.serial_number))
    assert record and record[0].status == "revoked" and record[0].revocation_reason == \
        "superseded"
    # ARI for a revoked certificate: renew now
    window = (await (await world.http.get(
        f"/acme/default/renewal-info/{cert_id}")).json())["suggestedWindow"]
    end = dt.datetime.fromisoformat(window["end"].replace("Z", "+00:00"))
    assert end <= dt.datetime.now(dt.UTC)


async def test_dns01_wildcard_and_ip_identifier(world: World) -> None:
    client = world.client("ed25519")
    await client.load()
    await client.register()
    _, order = await _order(client, "*.wild.test")
    authz = await (await client.post(order["authorizations"][0], None)).json()
    assert authz["wildcard"] is True and authz["identifier"]["value"] == "wild.test"
    assert [c["type"] for c in authz["challenges"]] == ["dns-01"]
    _, _, chain = await _issue(world, client, "*.wild.test", kind="dns-01")
    leaf = x509.load_pem_x509_certificates(chain)[0]
    assert leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["*.wild.test"]

    _, order = await _order(client, ips=("127.0.0.1",))
    authz = await (await client.post(order["authorizations"][0], None)).json()
    assert sorted(c["type"] for c in authz["challenges"]) == ["http-01", "tls-alpn-01"]
    _, _, chain = await _issue(world, client, ips=("127.0.0.1",))


async def test_revocation_by_certificate_key(world: World) -> None:
    client = world.client()
    await client.load()
    await client.register()
    order_url, order = await _order(client, "keyholder.test")
    await _authorize(world, client, order)
    await _poll(client, order_url, lambda d: d["status"] == "ready")
    cert_key = ec.generate_private_key(ec.SECP256R1())
    await client.post(order["finalize"], {"csr": b64(csr_for(["keyholder.test"], cert_key))})
    order = await _poll(client, order_url, lambda d: d["status"] == "valid")
    pem = await (await client.post(order["certificate"], None)).read()
    from cryptography.hazmat.primitives import serialization
    der = x509.load_pem_x509_certificates(pem)[0].public_bytes(serialization.Encoding.DER)
    holder = Client(world.http, AccountKey(cert_key, "ES256"))
    await holder.load()
    # a key that is not the certificate's, signing with jwk, may not revoke it
    stranger = Client(world.http, AccountKey.make())
    await stranger.load()
    await _problem(await stranger.post(stranger.directory["revokeCert"],
                                       {"certificate": b64(der), "reason": 1}, use_jwk=True),
                   "unauthorized", 403)
    response = await holder.post(holder.directory["revokeCert"],
                                 {"certificate": b64(der), "reason": 1}, use_jwk=True)
    assert response.status == 200, await response.text()
    records = await world.services.store.find_certificates_by_serial(
        serial_hex(x509.load_der_x509_certificate(der).serial_number))
    assert records[0].status == "revoked" and records[0].revocation_reason == "key_compromise"


async def test_key_rollover_and_deactivation(world: World) -> None:
    client = world.client()
    await client.load()
    await client.register()
    new_key = AccountKey.make("ed25519")
    url = client.directory["keyChange"]
    inner = jws(new_key, {"account": client.account_url, "oldKey": client.key.jwk},
                {"jwk": new_key.jwk, "url": url})
    response = await client.post(url, inner)
    assert response.status == 200, await response.text()
    old = client.key
    client.key = new_key
    assert (await client.post(client.account_url or "", None)).status == 200
    # the old key no longer signs for the account (an EC key for an Ed25519 account)
    response = await client.post(client.account_url or "", None, key=old)
    await _problem(response, "badSignatureAlgorithm", 400)
    # a rollover to a key that is another account's is a conflict
    other = world.client()
    await other.load()
    await other.register()
    inner = jws(other.key, {"account": client.account_url, "oldKey": client.key.jwk},
                {"jwk": other.key.jwk, "url": url})
    await _problem(await client.post(url, inner), "conflict", 409)

    response = await client.post(client.account_url or "", {"status": "deactivated"})
    assert (await response.json())["status"] == "deactivated"
    await _problem(await client.post(client.account_url or "", None), "unauthorized", 401)


# --- External Account Binding -------------------------------------------------------------

@pytest.fixture
async def eab_world(tmp_path: Path, aiohttp_client: ClientFactory) -> AsyncIterator[World]:
    async for w in _world(tmp_path, aiohttp_client, VCC_PKI_ACME_EAB_REQUIRED="true"):
        yield w


async def test_external_account_binding(eab_world: World) -> None:
    world = eab_world
    client = world.client()
    directory = await client.load()
    assert directory["meta"]["externalAccountRequired"] is True
    await _problem(await client.register(), "externalAccountRequired", 400)

    key = await world.services.admin.create_eab_key(Principal.system("test"), "default")
    url = directory["newAccount"]
    for alg in ("HS256", "HS512"):
        binding = mac_jws(key.kid, b"wrong-key" * 4, client.key.jwk, url, alg)
        await _problem(await client.register(externalAccountBinding=binding),
                       "unauthorized", 401)
    binding = mac_jws(key.kid, key.hmac_key, world.client().key.jwk, url)  # another key
    body = await _problem(await client.register(externalAccountBinding=binding),
                          "unauthorized", 401)
    assert body["detail"] == "the EAB binds another key"
    binding = mac_jws(key.kid, key.hmac_key, client.key.jwk, url, "HS384")
    response = await client.register(externalAccountBinding=binding)
    assert response.status == 201, await response.text()
    assert (await response.json())["externalAccountBinding"] == {"kid": key.kid}
    # single use: another account cannot take the same key id
    second = world.client()
    await second.load()
    binding = mac_jws(key.kid, key.hmac_key, second.key.jwk, url)
    await _problem(await second.register(externalAccountBinding=binding), "unauthorized", 401)


def _mac_binding(protected: dict[str, Any], payload: bytes, secret: bytes) -> dict[str, str]:
    """An EAB JWS with any protected header and payload bytes (mac_jws makes the good one)."""
    import josepy

    protected_b64, payload_b64 = b64(json.dumps(protected).encode()), b64(payload)
    algorithm = josepy.jwa.JWASignature.from_json(protected.get("alg", "HS256"))
    signature = algorithm.sign(secret, f"{protected_b64}.{payload_b64}".encode())
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64(signature)}


async def test_external_account_binding_checks(eab_world: World) -> None:
    """RFC 8555 7.3.4: each check of the EAB JWS refuses on its own, with its problem."""
    from ca_core.hierarchy import ensure_organization
    from ca_core.principal import Principal

    world = eab_world
    await ensure_organization(world.services.authority, "health", "Health",
                              Principal.system("test"))
    health = await world.services.authority.organization("health")
    key = await world.services.admin.create_eab_key(Principal.system("ops-desk"), "default")
    assert key.kid.startswith("kid-") and len(key.hmac_key) == 32 and key.account_id is None
    (event,) = [e.event for e in await world.services.store.audit_entries()
                if e.event.event_type == "acme.eab_created"]
    assert (event.category, event.action, event.actor_type, event.actor_id, event.org_id,
            event.resource_type, event.resource_id, event.data) == (
        "acme", "eab_created", "system", "ops-desk", key.org_id, "acme_eab_key", key.kid,
        {"org": "default"})
    assert len(key.kid) == len("kid-") + 16
    health_key = await world.services.admin.create_eab_key(
        Principal.system("vcc-pki cli"), "health")
    assert health_key.org_id == health.org_id != key.org_id
    (event,) = [e.event for e in await world.services.store.audit_entries()
                if e.event.resource_id == health_key.kid]
    assert (event.actor_id, event.org_id, event.data) == (
        "vcc-pki cli", health.org_id, {"org": "health"})

    client = world.client()
    directory = await client.load()
    url = directory["newAccount"]
    jwk = json.dumps(client.key.jwk).encode()
    good = {"alg": "HS256", "kid": key.kid, "url": url}
    not_jws = "externalAccountBinding must be a JWS"
    no_kid = "the EAB JWS needs a kid"
    payload = "the EAB payload must be the account key"
    bad_mac = "the External Account Binding MAC is invalid"
    refused: list[tuple[Any, str, int, str]] = [
        ([mac_jws(key.kid, key.hmac_key, client.key.jwk, url)], "malformed", 400, not_jws),
        (_mac_binding({"alg": "HS256", "url": url}, jwk, key.hmac_key), "malformed", 400,
         no_kid),
        (_mac_binding({**good, "kid": 7}, jwk, key.hmac_key), "malformed", 400, no_kid),
        (_mac_binding({**good, "url": url + "x"}, jwk, key.hmac_key), "unauthorized", 401,
         "the EAB url must be the newAccount URL"),
        (_mac_binding({**good, "nonce": "n"}, jwk, key.hmac_key), "malformed", 400,
         "the EAB JWS must not carry a nonce"),
        (_mac_binding({**good, "kid": "kid-unknown"}, jwk, key.hmac_key), "unauthorized", 401,
         "unknown or already used EAB key id"),
        (_mac_binding(good, b"not json", key.hmac_key), "malformed", 400, payload),
        (_mac_binding(good, b"[1]", key.hmac_key), "malformed", 400, payload),
        ({**mac_jws(key.kid, key.hmac_key, client.key.jwk, url), "signature": ""},
         "unauthorized", 401, bad_mac),
    ]
    for binding, problem, status, detail in refused:
        body = await _problem(await client.register(externalAccountBinding=binding),
                              problem, status)
        assert body["detail"] == detail
    for alg in ("RS256", "none", "EdDSA"):
        binding = {**mac_jws(key.kid, key.hmac_key, client.key.jwk, url),
                   "protected": b64(json.dumps({**good, "alg": alg}).encode())}
        body = await _problem(await client.register(externalAccountBinding=binding),
                              "badSignatureAlgorithm", 400)
        assert body["detail"] == "EAB must use one of HS256, HS384, HS512"

    # An organization's directory takes only its own keys; the default organization's takes
    # any organization's, and the account belongs to the key's organization.
    tenant = world.client(directory="/acme/health/directory")
    health_url = (await tenant.load())["newAccount"]
    binding = mac_jws(key.kid, key.hmac_key, tenant.key.jwk, health_url)
    body = await _problem(await tenant.register(externalAccountBinding=binding),
                          "unauthorized", 401)
    assert body["detail"] == "the EAB key belongs to another organization"
    binding = mac_jws(health_key.kid, health_key.hmac_key, client.key.jwk, url)
    response = await client.register(externalAccountBinding=binding)
    assert response.status == 201, await response.text()
    account = await world.services.store.get_acme_account(
        (client.account_url or "").rsplit("/", 1)[1])
    assert account is not None and account.org_id == health.org_id
    assert account.eab_kid == health_key.kid
    # The EAB url may also name the URL the request reached (a gateway behind a proxy
    # whose public URL differs).
    third = world.client()
    await third.load()
    reached = str(world.http.make_url(urllib.parse.urlsplit(url).path))
    assert reached != url
    spare = await world.services.admin.create_eab_key(Principal.system("test"), "default")
    binding = mac_jws(spare.kid, spare.hmac_key, third.key.jwk, reached)
    response = await third.register(externalAccountBinding=binding)
    assert response.status == 201, await response.text()


# --- bad requests -------------------------------------------------------------------------

@pytest.mark.parametrize("crit", [["nonexistent"], ["b64"], 5, [], None],
                         ids=["unknown", "b64", "number", "empty", "null"])
async def test_a_crit_header_is_malformed(world: World, crit: Any) -> None:
    """RFC 7515 4.1.11: an unknown or malformed crit must be rejected; nothing changes."""
    client = world.client()
    await client.load()
    await client.register()
    url = client.directory["newOrder"]
    header: dict[str, Any] = {"crit": crit}
    if crit == ["b64"]:
        header["b64"] = False
    before = len(await world.services.store.audit_entries())
    await _problem(await client.post(
        url, {"identifiers": [{"type": "dns", "value": "x.test"}]}, header=header),
        "malformed", 400)
    assert len(await world.services.store.audit_entries()) == before


async def test_bad_jws_requests(world: World) -> None:
    client = world.client()
    await client.load()
    await client.register()
    url = client.directory["newOrder"]
    payload = {"identifiers": [{"type": "dns", "value": "x.test"}]}

    await _problem(await client.post(url, payload, content_type="application/json"),
                   "malformed", 415)
    await _problem(await client.post(url, payload, nonce="bogus"), "badNonce", 400)
    nonce = await client.nonce()
    assert (await client.post(url, payload, nonce=nonce)).status == 201
    await _problem(await client.post(url, payload, nonce=nonce), "badNonce", 400)  # replay
    await _problem(await client.post(url, payload, header={"url": url + "x"}),
                   "unauthorized", 401)
    await _problem(await client.post(url, payload, header={"jwk": client.key.jwk}),
                   "malformed")  # both jwk and kid
    await _problem(await client.post(
        url, payload, header={"kid": "https://127.0.0.1:8443/acme/acct/nope"}),
        "accountDoesNotExist")
    await _problem(await client.post(url, payload, key=AccountKey.make()), "malformed")
    # a correctly signed payload nested deeper than Python's recursion limit
    await _problem(await client.post(url, b"[" * 20_000), "malformed")
    for alg in ("none", "HS256", "RS256"):  # RS256 with an EC key does not fit either
        await _problem(await client.post(url, payload, alg=alg), "badSignatureAlgorithm")
    for body in (b"garbage", b"{}", b'{"protected": "!!", "payload": "", "signature": ""}',
                 json.dumps({"signatures": []}).encode(), b"[" * 20_000):
        response = await world.http.post("/acme/default/new-order", data=body,
                                         headers={"Content-Type": "application/jose+json"})
        await _problem(response, "malformed")
    for jwk in ({"kty": "EC", "crv": "P-256", "x": 1, "y": "AA"},
                {"kty": "RSA", "n": ["x"], "e": "AQAB"}, {"kty": "OKP", "crv": "Ed25519"},
                {"kty": "oct", "k": "AAAA"}, "not an object"):
        header = {"alg": "ES256", "nonce": await client.nonce(),
                  "url": client.directory["newAccount"], "jwk": jwk}
        body = {"protected": b64(json.dumps(header).encode()), "payload": b64(b"{}"),
                "signature": b64(b"x" * 64)}
        response = await world.http.post("/acme/default/new-account", data=json.dumps(body),
                                         headers={"Content-Type": "application/jose+json"})
        await _problem(response, "badPublicKey", 400)
    big = b"{" + b" " * (70 * 1024) + b"}"
    response = await world.http.post("/acme/default/new-order", data=big,
                                     headers={"Content-Type": "application/jose+json"})
    await _problem(response, "malformed", 413)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b" " * (64 * 1024)

    # Chunked (no Content-Length to refuse first) and beyond the app's client_max_size of
    # 256 KiB: still an ACME problem, not aiohttp's text (found by conformance/hostile).
    response = await world.http.post("/acme/default/new-order", data=chunks(),
                                     headers={"Content-Type": "application/jose+json"})
    await _problem(response, "malformed", 413)
    # newAccount must carry the key; other requests the account
    await _problem(await client.post(url, payload, use_jwk=True), "malformed")
    await _problem(await client.post(
        client.directory["newAccount"], {"termsOfServiceAgreed": True}), "malformed")
    stranger = world.client()
    await stranger.load()
    await _problem(await stranger.post(client.directory["newAccount"],
                                       {"onlyReturnExisting": True}, use_jwk=True),
                   "accountDoesNotExist")
    await _problem(await stranger.post(client.directory["newAccount"],
                                       {"contact": ["tel:+4912345"]}, use_jwk=True),
                   "unsupportedContact")


async def test_bad_orders_and_finalize(world: World) -> None:
    client = world.client()
    await client.load()
    await client.register()
    new_order = client.directory["newOrder"]
    for identifiers, acme_type in (
        ([], "malformed"), ([{"type": "email", "value": "a@b.test"}], "unsupportedIdentifier"),
        ([{"type": "dns", "value": "not a name"}], "rejectedIdentifier"),
        ([{"type": "dns", "value": "a.*.test"}], "rejectedIdentifier"),
        ([{"type": "ip", "value": "999.1.1.1"}], "malformed"),
    ):
        await _problem(await client.post(new_order, {"identifiers": identifiers}), acme_type)
    await _problem(await client.post(new_order, {
        "identifiers": [{"type": "dns", "value": "x.test"}], "profile": "nope"}),
        "invalidProfile")
    # identifiers of the right type but the wrong shape
    for identifiers in ([{"type": "dns", "value": 5}], [{"type": "ip", "value": ["1.2.3.4"]}],
                        [{"type": "ip", "value": "fe80::1%eth0"}], ["x.test"]):
        await _problem(await client.post(new_order, {"identifiers": identifiers}), "malformed")
    # notBefore: never backdated, never a date the store or the encoder cannot hold
    x_test = [{"type": "dns", "value": "x.test"}]
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    for times in ({"notBefore": "1960-01-01T00:00:00Z"}, {"notBefore": "1900-01-01T00:00:00Z"},
                  {"notBefore": "0001-01-01T00:00:00+01:00"},
                  {"notBefore": "9999-12-31T23:59:59-01:00"},
                  {"notBefore": "2100-01-01T00:00:00Z"},
                  {"notBefore": later, "notAfter": later},
                  {"notAfter": "1999-01-01T00:00:00Z"}):
        await _problem(await client.post(new_order, {"identifiers": x_test, **times}),
                       "malformed")
    assert not await world.services.store.find_certificates_by_serial("00")

    order_url, order = await _order(client, "finalize.test")
    csr = csr_for(["finalize.test"])
    await _problem(await client.post(order["finalize"], {"csr": b64(csr)}),
                   "orderNotReady", 403)
    await _authorize(world, client, order)
    await _poll(client, order_url, lambda d: d["status"] == "ready")
    for bad, acme_type in ((csr_for(["other.test"]), "badCSR"),
                           (csr_for(["finalize.test", "extra.test"]), "badCSR"),
                           (b"not a csr", "badCSR")):
        await _problem(await client.post(order["finalize"], {"csr": b64(bad)}), acme_type)
    await _problem(await client.post(order["finalize"], {"csr": "***"}), "malformed")
    # nothing changed: the order is still ready and finalizes
    still = await (await client.post(order_url, None)).json()
    assert still["status"] == "ready"
    assert (await client.post(order["finalize"], {"csr": b64(csr)})).status == 200

    # a notBefore a day ahead is honoured
    future_url, future = await _order(client, "future.test", notBefore=later)
    await _authorize(world, client, future)
    await _poll(client, future_url, lambda d: d["status"] == "ready")
    assert (await client.post(future["finalize"],
                              {"csr": b64(csr_for(["future.test"]))})).status == 200
    done = await _poll(client, future_url, lambda d: d["status"] != "processing")
    chain = await (await client.post(done["certificate"], None)).read()
    leaf = x509.load_pem_x509_certificates(chain)[0]
    assert abs((leaf.not_valid_before_utc - dt.datetime.fromisoformat(later)).total_seconds()) < 2

    # another account sees none of it
    other = world.client()
    await other.load()
    await other.register()
    await _problem(await other.post(order_url, None), "malformed", 404)
    await _problem(await other.post(order["authorizations"][0], None), "malformed", 404)


async def test_wrong_challenge_response_invalidates(world: World) -> None:
    client = world.client()
    await client.load()
    await client.register()
    order_url, order = await _order(client, "wrong.test")
    authz_url = order["authorizations"][0]
    authz = await (await client.post(authz_url, None)).json()
    challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
    world.tokens[challenge["token"]] = "not-the-key-authorization"
    await client.post(challenge["url"], {})
    authz = await _poll(client, authz_url, lambda d: d["status"] != "pending")
    assert authz["status"] == "invalid"
    failed = next(c for c in authz["challenges"] if c["type"] == "http-01")
    assert failed["error"]["type"] == ERR + "unauthorized"
    order = await (await client.post(order_url, None)).json()
    assert order["status"] == "invalid" and order["error"]["type"] == ERR + "unauthorized"
    # answering again changes nothing
    again = await client.post(challenge["url"], {})
    assert (await again.json())["status"] == "invalid"


async def test_identifier_policy_of_an_organization(world: World) -> None:
    from ca_core.hierarchy import ensure_organization
    from ca_core.principal import Principal

    await ensure_organization(world.services.authority, "health", "Health",
                              Principal.system("test"))
    # The Authority has the organization cached already: the policy must apply anyway.
    await world.services.acme.set_policy(
        "health", domains=["health.test"], prevalidated=["intern.health.test"])
    from ca_core.errors import BadRequest, NotFound
    for bad in ({"ip_ranges": ["10.0.0.0/33"]}, {"domains": ["not a name"]}):
        with pytest.raises(BadRequest):
            await world.services.acme.set_policy("health", **bad)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        await world.services.acme.set_policy("nosuch", allow_all=True)
    client = world.client(directory="/acme/health/directory")
    directory = await client.load()
    assert directory["newOrder"].endswith("/acme/health/new-order")
    assert (await client.register()).status == 201
    response = await client.post(directory["newOrder"], {"identifiers": [
        {"type": "dns", "value": "a.health.test"}, {"type": "dns", "value": "evil.test"},
        {"type": "ip", "value": "10.1.2.3"}]})
    problem = await _problem(response, "rejectedIdentifier")
    assert sorted(s["identifier"]["value"] for s in problem["subproblems"]) == [
        "10.1.2.3", "evil.test"]
    _, order = await _order(client, "db.intern.health.test")
    assert order["status"] == "ready"  # pre-validated by policy
    _, _, chain = await _issue(world, client, "db.intern.health.test")
    leaf = x509.load_pem_x509_certificates(chain)[0]
    assert "Issuing CA health" in leaf.issuer.rfc4514_string()


async def test_rate_limit(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    async for world in _world(tmp_path, aiohttp_client,
                              VCC_PKI_ACME_ORDERS_PER_ACCOUNT_PER_HOUR="2"):
        client = world.client()
        await client.load()
        await client.register()
        await _order(client, "a.test")
        await _order(client, "b.test")
        response = await client.post(client.directory["newOrder"],
                                     {"identifiers": [{"type": "dns", "value": "c.test"}]})
        await _problem(response, "rateLimited", 429)
        assert int(response.headers["Retry-After"]) > 0


def test_base64_helper_rejects_padding() -> None:
    from protocols.acme.jws import b64url_decode
    from protocols.acme.problems import AcmeProblem

    assert b64url_decode(base64.urlsafe_b64encode(b"ab").decode().rstrip("="), "x") == b"ab"
    for bad in ("YWI=", "!!", "YW I", "YW+/", 5):
        with pytest.raises(AcmeProblem):
            b64url_decode(bad, "x")


def test_one_key_has_one_thumbprint_however_it_is_spelled() -> None:
    """RFC 7638 over the key, not the client's strings: an RSA modulus sent with a leading
    zero octet is the same key, so the same thumbprint (and account)."""
    import josepy

    from protocols.acme.jws import jwk_thumbprint

    key = AccountKey.make("rsa")
    jwk = key.jwk
    padded = dict(jwk, n=b64(b"\x00" + base64.urlsafe_b64decode(jwk["n"] + "==")))
    assert padded["n"] != jwk["n"]
    expected = b64(josepy.JWKRSA(key=key.private.public_key()).thumbprint())
    assert jwk_thumbprint(padded) == jwk_thumbprint(jwk) == expected
    ed = AccountKey.make("ed25519")
    rfc8037 = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": ed.jwk["x"]},
                         separators=(",", ":"))
    assert jwk_thumbprint(ed.jwk) == b64(hashlib.sha256(rfc8037.encode()).digest())


async def test_same_rsa_key_spelled_twice_is_one_account(world: World) -> None:
    client = world.client("rsa")
    await client.load()
    first = await client.register()
    assert first.status == 201
    jwk = client.key.jwk
    padded = dict(jwk, n=b64(b"\x00" + base64.urlsafe_b64decode(jwk["n"] + "==")))
    response = await client.post(client.directory["newAccount"],
                                 {"termsOfServiceAgreed": True}, use_jwk=True,
                                 header={"jwk": padded})
    assert response.status == 200, await response.text()
    assert response.headers["Location"] == first.headers["Location"]


async def test_a_validation_lost_with_its_process_is_restarted(world: World) -> None:
    from dataclasses import replace as dc_replace

    client = world.client()
    await client.load()
    await client.register()
    _, order = await _order(client, "restart.test")
    authz_url = order["authorizations"][0]
    authz_id = authz_url.rsplit("/", 1)[1]
    (authz,) = await world.services.store.get_acme_authorizations([authz_id])
    # As if a process had set the challenge to processing and died before deciding.
    lost = tuple(dc_replace(c, status="processing",
                            started=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
                 if c.type == "http-01" else c for c in authz.challenges)
    assert await world.services.store.update_acme_authorization(
        dc_replace(authz, challenges=lost), "pending")
    token = next(c.token for c in lost if c.type == "http-01")
    world.tokens[token] = key_authorization(token, client.key.thumbprint)
    done = await _poll(client, authz_url, lambda d: d["status"] != "pending")
    assert done["status"] == "valid"


async def test_store_down_is_server_internal_503(world: World,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    client = world.client()
    await client.load()
    await client.register()
    await world.services.store.close()
    response = await client.post(client.directory["newOrder"],
                                 {"identifiers": [{"type": "dns", "value": "down.test"}]})
    await _problem(response, "serverInternal", 503)
    assert not [r for r in caplog.records if r.exc_info]


async def test_certificate_write_failing_at_finalize_is_server_internal_503(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded before returned (DESIGN.md): finalize reaches the certificate write and the
    store fails there (nonces, account, order and authorizations still work). The client
    gets serverInternal with 503, its order turns invalid without a certificate URL, and
    nothing in the process hears of a certificate."""
    client = world.client()
    await client.load()
    await client.register()
    order_url, order = await _order(client, "down.svc.test")
    await _authorize(world, client, order)
    order = await _poll(client, order_url, lambda d: d["status"] != "pending")
    assert order["status"] == "ready", order
    listener = ListenerRecorder()
    world.services.authority.add_listener(listener)
    attempts = fail_certificate_writes(monkeypatch, world.services.store,
                                       "add_certificate_for_acme_order")
    response = await client.post(order["finalize"], {"csr": b64(csr_for(["down.svc.test"]))})
    problem = await _problem(response, "serverInternal", 503)
    assert "CERTIFICATE" not in json.dumps(problem)
    assert len(attempts) == 1
    order = await (await client.post(order_url, None)).json()
    assert order["status"] == "invalid" and "certificate" not in order, order
    assert order["error"]["type"] == ERR + "serverInternal"
    assert listener.issued == []
    monkeypatch.undo()
    assert await world.services.store.find_certificates_by_serial(attempts[0].serial_hex) == []


async def test_alternate_chain_from_a_cross_certificate(world: World) -> None:
    """RFC 8555 7.4.2: rel="alternate" links to the chain through a cross-certificate,
    fetched by POST-as-GET, each chain linking back to the others."""
    from ca_core.cross import add_cross_certificate, cross_certification_request
    from ca_core.principal import Principal
    from tests.helpers import bridge_root, cross_certify, pem

    authority = world.services.authority
    bridge_key, bridge = bridge_root()
    cross = cross_certify(await cross_certification_request(authority, "intermediate"),
                          bridge_key, bridge)
    await add_cross_certificate(authority, "intermediate", pem(cross, bridge),
                                Principal.system("test"))
    client = world.client()
    await client.load()
    await client.register()
    _, order, default_pem = await _issue(world, client, "alt.test")
    default = x509.load_pem_x509_certificates(default_pem)
    response = await client.post(order["certificate"], None)
    alternates = [link.split(">")[0][1:] for link in response.headers.getall("Link")
                  if link.endswith('rel="alternate"')]
    assert alternates == [order["certificate"] + "/1"]

    response = await client.post(alternates[0], None)
    assert response.status == 200 and response.content_type == \
        "application/pem-certificate-chain"
    alternate = x509.load_pem_x509_certificates(await response.read())
    assert alternate == [*default[:2], cross]  # the bridge root itself stays out
    for lower, upper in zip(alternate, [*alternate[1:], bridge], strict=True):
        lower.verify_directly_issued_by(upper)
    assert alternate[-1].issuer == bridge.subject  # what --preferred-chain matches
    assert f'<{order["certificate"]}>;rel="alternate"' in response.headers.getall("Link")

    for wrong in ("/2", "/x", "/-1", "/%C2%B2", "/" + "9" * 5000):
        response = await client.post(order["certificate"] + wrong, None)
        await _problem(response, "malformed", 404)
    other = world.client()
    await other.load()
    await other.register()
    await _problem(await other.post(alternates[0], None), "malformed", 404)


def test_every_core_error_has_its_acme_problem() -> None:
    """protocols/acme/problems.py is the one mapping: every kind ca_core.errors declares is
    in it (a new kind must be placed there, not fall through to serverInternal)."""
    import inspect

    from ca_core import errors
    from protocols.acme import problems

    kinds = {cls.kind for _, cls in inspect.getmembers(errors, inspect.isclass)
             if issubclass(cls, errors.CAError)}
    assert kinds - set(problems._PROBLEMS) == set()
    cases = {
        errors.BadCSRSignature("x"): ("badCSR", 400),
        errors.RejectedIdentifier("x", [("dns", "a.test", "why")]): ("rejectedIdentifier", 400),
        errors.AccountDoesNotExist("x"): ("accountDoesNotExist", 400),
        errors.AlreadyRevoked("x"): ("alreadyRevoked", 400),
        errors.AccountKeyInUse("x"): ("conflict", 409),
        errors.OrderNotReady("x"): ("orderNotReady", 403),
        errors.Forbidden("x"): ("unauthorized", 403),
        errors.NotFound("x"): ("malformed", 404),
        errors.RateLimited("x", 7.0): ("rateLimited", 429),
        errors.Unavailable("x"): ("serverInternal", 503),
        errors.CAError("secret"): ("serverInternal", 500),
    }
    for error, (acme_type, status) in cases.items():
        problem = problems.from_error(error)
        assert (problem.acme_type, problem.status) == (acme_type, status), error
    assert problems.from_error(errors.CAError("secret")).detail == "internal error"
    assert problems.from_error(errors.RateLimited("x", 7.0)).retry_after == 7.0
    # The store down: serverInternal 503 says when to come back, as the REST API does.
    assert problems.from_error(errors.Unavailable("x")).retry_after == 5.0
    assert problems.from_error(errors.CAError("secret")).retry_after is None
    rejected = problems.from_error(errors.RejectedIdentifier("x", [("ip", "10.0.0.1", "no")]))
    assert rejected.document()["subproblems"] == [
        {"type": ERR + "rejectedIdentifier", "detail": "no",
         "identifier": {"type": "ip", "value": "10.0.0.1"}}]


def test_stored_failures_render_as_problem_documents() -> None:
    from ca_core.acme import error_record
    from ca_core.errors import ConnectionFailed, IncorrectResponse
    from protocols.acme.problems import stored

    record = error_record(IncorrectResponse("no match"), ("dns", "a.test"))
    assert stored(record) == {"type": ERR + "unauthorized", "detail": "no match",
                              "identifier": {"type": "dns", "value": "a.test"}}
    assert stored(error_record(ConnectionFailed("refused"))) == {
        "type": ERR + "connection", "detail": "refused"}
    # a document kept before the RA stored kinds is shown as it was
    legacy = {"type": ERR + "dns", "detail": "lookup failed"}
    assert stored(legacy) == legacy


async def test_nonce_state_down_is_server_internal_503(world: World) -> None:
    """The nonce store cannot be reached (as Redis down would make it: the outage is
    simulated, the RA is not): a signed request is answered serverInternal 503 with what is
    unavailable, without a nonce and without a traceback."""
    from db.acme_state import AcmeState, StateUnavailable

    class Down(AcmeState):
        async def issue_nonce(self) -> str:
            raise StateUnavailable("simulated outage")

        async def consume_nonce(self, nonce: str) -> bool:
            raise StateUnavailable("simulated outage")

        async def hit(self, key: str, limit: int, window_seconds: int) -> float | None:
            raise StateUnavailable("simulated outage")

    client = world.client()
    await client.load()
    world.services.acme.state = Down()
    url = client.directory["newAccount"]
    body = jws(client.key, {"termsOfServiceAgreed": True},
               {"nonce": "any", "url": url, "jwk": client.key.jwk})
    response = await world.http.post("/acme/default/new-account", data=json.dumps(body),
                                     headers={"Content-Type": "application/jose+json"})
    problem = await response.json(content_type=None)
    assert (response.status, problem["type"]) == (503, ERR + "serverInternal"), problem
    assert problem["detail"] == "nonces are unavailable"
    assert "Replay-Nonce" not in response.headers
    assert await world.services.store.find_acme_account(client.key.thumbprint) is None


async def test_revocation_acts_in_the_accounts_organization(world: World) -> None:
    """RFC 8555 7.6 with tenants: an account revokes as a caller of its own organization,
    never as the system, so a certificate of another organization stays out of its reach
    even where the RA's own check is passed (here: an order row naming that certificate,
    as a damaged or migrated store could hold)."""
    import secrets

    from cryptography.hazmat.primitives import serialization

    from ca_core.authority import IssuanceRequest
    from ca_core.hierarchy import ensure_organization
    from ca_core.principal import Principal
    from ca_core.records import AcmeOrder
    from tests.helpers import make_csr

    authority = world.services.authority
    await ensure_organization(authority, "health", "Health", Principal.system("test"))
    theirs = await authority.issue(IssuanceRequest(csr=make_csr(), profile="vcc_service",
                                                   org="default"), Principal.system("test"))
    client = world.client(directory="/acme/health/directory")
    await client.load()
    assert (await client.register()).status == 201
    account = await world.services.store.get_acme_account(
        (client.account_url or "").rsplit("/", 1)[1])
    assert account is not None and account.org_id != theirs.record.org_id
    der = theirs.certificate.public_bytes(serialization.Encoding.DER)
    revoke = client.directory["revokeCert"]
    await _problem(await client.post(revoke, {"certificate": b64(der)}), "unauthorized", 403)
    now = dt.datetime.now(dt.UTC)
    await world.services.store.add_acme_order(AcmeOrder(
        order_id=secrets.token_urlsafe(12), account_id=account.account_id,
        org_id=account.org_id, status="valid", expires=now + dt.timedelta(days=1),
        identifiers=(("dns", "svc.example.org"),), authz_ids=(), profile="tlsserver",
        cert_id=theirs.record.cert_id, created_at=now), [])
    await _problem(await client.post(revoke, {"certificate": b64(der)}), "unauthorized", 403)
    (record,) = await world.services.store.find_certificates_by_serial(
        theirs.record.serial_hex)
    assert record.status == "active"


async def test_acme_revocations_are_audited_as_the_account(world: World) -> None:
    client = world.client()
    await client.load()
    await client.register()
    _, _, chain = await _issue(world, client, "audited.test")
    from cryptography.hazmat.primitives import serialization

    leaf = x509.load_pem_x509_certificates(chain)[0]
    response = await client.post(client.directory["revokeCert"], {
        "certificate": b64(leaf.public_bytes(serialization.Encoding.DER))})
    assert response.status == 200, await response.text()
    account_id = (client.account_url or "").rsplit("/", 1)[1]
    (event,) = [e.event for e in await world.services.store.audit_entries()
                if e.event.event_type == "certificate.revoked"]
    assert (event.actor_type, event.actor_id) == ("service", f"acme:{account_id}")


async def test_a_common_name_holding_an_ip_address_is_one_rule(world: World) -> None:
    """A CSR naming 127.0.0.1 only in its CN: ACME finalization reads it as the order's IP
    identifier, and the Authority carries it into an iPAddress SAN (never a dNSName), the
    same through an ACME order and through the REST API."""
    from ca_core.principal import Principal
    from tests.helpers import make_csr

    def sans_of(leaf: x509.Certificate) -> tuple[list[str], list[str]]:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return (sans.get_values_for_type(x509.DNSName),
                [str(i) for i in sans.get_values_for_type(x509.IPAddress)])

    client = world.client()
    await client.load()
    await client.register()
    order_url, order = await _order(client, ips=("127.0.0.1",))
    await _authorize(world, client, order)
    await _poll(client, order_url, lambda d: d["status"] == "ready")
    csr = make_csr(cn="127.0.0.1", dns=(), pem=False)
    response = await client.post(order["finalize"], {"csr": b64(csr)})
    assert response.status == 200, await response.text()
    order = await _poll(client, order_url, lambda d: d["status"] != "processing")
    assert order["status"] == "valid", order
    acme_leaf = x509.load_pem_x509_certificates(
        await (await client.post(order["certificate"], None)).read())[0]

    created = await world.services.authority.create_token(
        "default", "cert_manager", principal=Principal.system("test"))
    response = await world.http.post(
        "/api/v1/certificates", headers={"Authorization": f"Bearer {created.token}"},
        json={"csr": make_csr(cn="127.0.0.1", dns=()).decode(), "profile": "vcc_service"})
    assert response.status == 201, await response.text()
    rest_leaf = x509.load_pem_x509_certificate(
        (await response.json())["certificate_pem"].encode())

    assert sans_of(acme_leaf) == sans_of(rest_leaf) == ([], ["127.0.0.1"])
    assert acme_leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == \
        rest_leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == \
        "127.0.0.1"


async def test_the_ra_takes_any_challenge_validator(world: World) -> None:
    """ca_core.acme declares the validator it needs (ChallengeValidator); a fake stands in
    for the network one, and its verdict (a DnsFailed) reaches the client as RFC 8555's
    dns error, with the identifier."""
    from ca_core.errors import DnsFailed

    calls: list[tuple[str, ...]] = []

    class Refusing:
        async def validate(self, challenge_type: str, identifier_type: str, value: str,
                           token: str, key_authorization: str) -> None:
            calls.append((challenge_type, identifier_type, value, token, key_authorization))
            raise DnsFailed("no TXT answer in this test")

        async def aclose(self) -> None:
            pass

    real = world.services.acme.validator
    world.services.acme.validator = Refusing()
    try:
        client = world.client()
        await client.load()
        await client.register()
        _, order = await _order(client, "fake.test")
        authz_url = order["authorizations"][0]
        authz = await (await client.post(authz_url, None)).json()
        challenge = next(c for c in authz["challenges"] if c["type"] == "dns-01")
        await client.post(challenge["url"], {})
        authz = await _poll(client, authz_url, lambda d: d["status"] != "pending")
    finally:
        world.services.acme.validator = real
    assert calls == [("dns-01", "dns", "fake.test", challenge["token"],
                      key_authorization(challenge["token"], client.key.thumbprint))]
    failed = next(c for c in authz["challenges"] if c["type"] == "dns-01")
    assert authz["status"] == "invalid"
    assert failed["error"] == {"type": ERR + "dns", "detail": "no TXT answer in this test",
                               "identifier": {"type": "dns", "value": "fake.test"}}


# --- the JWS checks themselves (protocols/acme/jws.py) ---------------------------------------

def _refused(call: Callable[[], Any], acme_type: str, detail: str) -> None:
    from protocols.acme.problems import AcmeProblem

    with pytest.raises(AcmeProblem) as raised:
        call()
    assert (raised.value.acme_type, raised.value.detail) == (acme_type, detail)


def test_jws_parse_refusals_and_fields() -> None:
    """RFC 8555 6.2 / RFC 7515 7.2.2: a flattened JWS with a protected header only."""
    from protocols.acme import jws as jose

    protected = b64(json.dumps({"alg": "ES256", "nonce": "n"}).encode())
    payload = b64(b'{"a": 1}')
    parsed = jose.parse(json.dumps({"protected": protected, "payload": payload,
                                    "signature": b64(b"sig")}).encode())
    assert parsed.protected == {"alg": "ES256", "nonce": "n"} and parsed.alg == "ES256"
    assert (parsed.payload, parsed.signature) == (b'{"a": 1}', b"sig")
    assert parsed.signing_input == f"{protected}.{payload}".encode()
    assert parsed.payload_json() == {"a": 1}
    as_get = jose.parse({"protected": protected, "payload": "", "signature": b64(b"s")})
    assert as_get.payload == b""
    good = {"protected": protected, "payload": payload, "signature": b64(b"s")}
    cases: list[tuple[Any, str]] = [
        (b"not json", "the request body is not JSON"),
        (b"[" * 5000, "the request body is not JSON"),
        (b"[]", "send a flattened JWS"),
        ({**good, "signatures": []}, "send a flattened JWS"),
        ({**good, "header": {}}, "unprotected JWS headers are not allowed"),
        ({"payload": payload, "signature": ""}, "the JWS lacks protected or payload"),
        ({"protected": protected, "signature": ""}, "the JWS lacks protected or payload"),
        ({**good, "payload": 7}, "the JWS lacks protected or payload"),
        ({**good, "protected": b64(b"{")}, "the protected header is not JSON"),
        ({**good, "protected": b64(b"[1]")}, "the protected header is not an object"),
        ({**good, "protected": protected + "="}, "protected is not base64url without padding"),
        ({**good, "payload": "a+b"}, "payload is not base64url without padding"),
        ({**good, "signature": "a/b"}, "signature is not base64url without padding"),
        ({**good, "signature": None}, "signature is not base64url without padding"),
        ({**good, "signature": "a"}, "signature is not base64url"),
        ({**good, "signature": "ab!c"}, "signature is not base64url"),
    ]
    for body, detail in cases:
        _refused(lambda body=body: jose.parse(body), "malformed", detail)
    for payload_bytes, detail in [(b"{", "the payload is not JSON"),
                                  (b"[1]", "the payload is not a JSON object")]:
        one = jose.Jws({}, payload_bytes, b"", b"")
        _refused(one.payload_json, "malformed", detail)


def test_jwk_thumbprints_and_public_keys() -> None:
    """RFC 7638 thumbprints (the RFC's own example for RSA) and the keys we accept."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519

    from protocols.acme import jws as jose

    rfc7638 = {
        "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
             "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5"
             "v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD0"
             "8qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU"
             "8awapJzKnqDKgw"}
    assert jose.jwk_thumbprint(rfc7638) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    okp = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = okp.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    okp_jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": b64(raw)},
                           separators=(",", ":"), sort_keys=True)
    assert jose.jwk_thumbprint(okp_jwk) == b64(hashlib.sha256(canonical.encode()).digest())
    assert isinstance(jose.public_key(okp_jwk), ed25519.Ed25519PublicKey)
    ec_jwk = AccountKey.make("ec-p256").jwk
    assert jose.jwk_thumbprint({**ec_jwk, "kid": "x"}) == jose.jwk_thumbprint(ec_jwk)
    for bad in ({"kty": "RSA", "e": "AQAB"}, {"kty": "EC", "crv": "P-256", "x": "AA"},
                {"kty": "oct", "k": "AA"}, {"kty": "OKP", "crv": "Ed25519", "x": 5}, "jwk"):
        _refused(lambda bad=bad: jose.jwk_thumbprint(bad),
                 "badPublicKey", "unsupported or incomplete JWK")
    _refused(lambda: jose.jwk_thumbprint({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
             "badPublicKey", "the JWK cannot be read")

    def rsa_jwk(bits: int) -> dict[str, str]:
        numbers = rsa.generate_private_key(65537, bits).public_key().public_numbers()
        return {"kty": "RSA", "e": b64(numbers.e.to_bytes(3, "big")),
                "n": b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))}

    assert isinstance(jose.public_key(rsa_jwk(2048)), rsa.RSAPublicKey)
    x25519_raw = x25519.X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key().public_numbers()
    refusals: list[tuple[Any, str]] = [
        ({**ec_jwk, "d": "AA"}, "the JWK must be a public key"),
        ({"kty": "oct", "k": "AA"}, "the JWK must be a public key"),
        ([ec_jwk], "the JWK must be a public key"),
        (rsa_jwk(1024), "RSA account keys must be 2048 to 8192 bits"),
        ({"kty": "EC", "crv": "P-521", "x": b64(p521.x.to_bytes(66, "big")),
          "y": b64(p521.y.to_bytes(66, "big"))}, "EC account keys must be P-256 or P-384"),
        ({"kty": "OKP", "crv": "X25519", "x": b64(x25519_raw)},
         "only Ed25519 OKP keys are supported"),
        ({"kty": "OKP", "crv": "Ed25519", "x": b64(b"short")}, "not an Ed25519 public key"),
        ({**ec_jwk, "use": b"not JSON"}, "the JWK cannot be read"),
    ]
    for jwk, detail in refusals:
        _refused(lambda jwk=jwk: jose.public_key(jwk), "badPublicKey", detail)


def test_account_key_memo_is_bounded_first_in_first_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import OrderedDict

    from protocols.acme import jws as jose

    memo: OrderedDict[str, Any] = OrderedDict()
    monkeypatch.setattr(jose, "_ACCOUNT_KEYS", memo)
    monkeypatch.setattr(jose, "_ACCOUNT_KEYS_MAX", 3)
    jwk = AccountKey.make("ec-p256").jwk
    key = jose.account_public_key("t0", jwk)
    assert memo == {"t0": key}
    for n in range(1, 4):
        jose.account_public_key(f"t{n}", jwk)
    assert list(memo) == ["t1", "t2", "t3"]


def test_jws_verify_refusals() -> None:
    """RFC 8555 6.2: only RS256/ES256/ES384/EdDSA, each with a key of its kind; a bad
    signature (of any length) is malformed."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from protocols.acme import jws as jose

    def signed(alg: str, key: AccountKey) -> Any:
        return jose.parse(jws(key, {"a": 1}, {"alg": alg, "nonce": "n", "url": "u"}))

    ec_key, okp_key = AccountKey.make("ec-p256"), AccountKey.make("ed25519")
    ec_public = jose.public_key(ec_key.jwk)
    okp_public = jose.public_key(okp_key.jwk)
    assert isinstance(okp_public, ed25519.Ed25519PublicKey)
    jose.verify(signed("ES256", ec_key), ec_public)
    jose.verify(signed("EdDSA", okp_key), okp_public)
    _refused(lambda: jose.verify(signed("HS256", ec_key), ec_public), "badSignatureAlgorithm",
             "algorithm 'HS256' is not accepted; use one of RS256, ES256, ES384, EdDSA")
    _refused(lambda: jose.verify(signed("ES256", ec_key), okp_public), "badSignatureAlgorithm",
             "algorithm ES256 does not fit the key")
    for key, public, alg in [(ec_key, ec_public, "ES256"), (okp_key, okp_public, "EdDSA")]:
        good = signed(alg, key)
        # The last byte flipped: a fixed 0x00 would be the real byte once in 256 runs.
        last_flipped = good.signature[:-1] + bytes([good.signature[-1] ^ 0x01])
        for signature in (b"", b"\x00" * 7, bytes(64), last_flipped,
                          good.signature + b"\x00"):
            forged = jose.Jws(good.protected, good.payload, signature, good.signing_input)
            _refused(lambda forged=forged, public=public: jose.verify(forged, public),
                     "malformed", "the JWS signature is invalid")


async def test_disabled_organization_registers_no_account(eab_world: World) -> None:
    """Issue 13: a disabled organization's EAB keys stop working at once (its accounts'
    orders are refused at issuance by the Authority, tests/test_rest_admin.py)."""
    from ca_core.admin import OrganizationChange
    from ca_core.hierarchy import ensure_organization
    from ca_core.principal import Principal

    world = eab_world
    system = Principal.system("test")
    await ensure_organization(world.services.authority, "health", "Health", system)
    key = await world.services.admin.create_eab_key(Principal.system("test"), "health")
    await world.services.admin.update_organization(system, "health",
                                                   OrganizationChange(status="disabled"))
    client = world.client()
    directory = await client.load()
    binding = mac_jws(key.kid, key.hmac_key, client.key.jwk, directory["newAccount"])
    body = await _problem(await client.register(externalAccountBinding=binding),
                          "unauthorized", 401)
    assert body["detail"] == "the organization is disabled"
    await world.services.admin.update_organization(system, "health",
                                                   OrganizationChange(status="active"))
    response = await client.register(externalAccountBinding=binding)
    assert response.status == 201, await response.text()


async def test_the_challenge_post_answers_the_decided_challenge(world: World) -> None:
    """The challenge POST waits (up to challenge_wait_seconds) for its validation, so a
    quick one is answered valid at once, the authorization with it; a validation slower
    than the wait is answered processing, and decided later in the background."""
    from dataclasses import replace as dc_replace

    client = world.client()
    await client.load()
    await client.register()
    _, order = await _order(client, "quick.test")
    authz_url = order["authorizations"][0]
    authz = await (await client.post(authz_url, None)).json()
    challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
    world.tokens[challenge["token"]] = key_authorization(challenge["token"],
                                                         client.key.thumbprint)
    answered = await (await client.post(challenge["url"], {})).json()
    assert answered["status"] == "valid" and "validated" in answered
    assert (await (await client.post(authz_url, None)).json())["status"] == "valid"

    release = asyncio.Event()

    class Slow:
        async def validate(self, challenge_type: str, identifier_type: str, value: str,
                           token: str, key_authorization: str) -> None:
            await release.wait()

        async def aclose(self) -> None:
            pass

    service = world.services.acme
    real, settings = service.validator, service.settings
    service.validator = Slow()
    service.settings = dc_replace(settings, challenge_wait_seconds=0.05)
    try:
        _, order = await _order(client, "slow.test")
        authz_url = order["authorizations"][0]
        authz = await (await client.post(authz_url, None)).json()
        challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
        response = await client.post(challenge["url"], {})
        assert (await response.json())["status"] == "processing"
        assert response.headers["Retry-After"] == "1"
        release.set()
        authz = await _poll(client, authz_url, lambda d: d["status"] != "pending")
        assert authz["status"] == "valid"
    finally:
        service.validator, service.settings = real, settings


def test_challenge_wait_seconds_is_a_setting() -> None:
    """VCC_PKI_ACME_CHALLENGE_WAIT_SECONDS reaches the ACME service's settings; 0..30."""
    from gateway.config import ConfigError, load_config

    assert load_config(environ={}).acme_settings().challenge_wait_seconds == 2.0
    for text, seconds in (("0", 0.0), ("0.5", 0.5), ("30", 30.0)):
        config = load_config(environ={"VCC_PKI_ACME_CHALLENGE_WAIT_SECONDS": text})
        assert config.acme_settings().challenge_wait_seconds == seconds
    for bad in ("-1", "31", "nan", "inf", "soon"):
        with pytest.raises(ConfigError, match=r"ACME_CHALLENGE_WAIT_SECONDS|challenge_wait"):
            load_config(environ={"VCC_PKI_ACME_CHALLENGE_WAIT_SECONDS": bad})


async def test_account_state_applies_at_once_in_another_process(tmp_path: Path) -> None:
    """Two gateway processes on one database (two Services, each its own Authority and
    store): a deactivation, a key rollover or a disabled organization done in one is
    seen by the other's next account lookup, though it read the account and organization
    before (the lookup reads both fresh, in one read)."""
    from ca_core.acme import AccountKey as ServiceKey
    from ca_core.errors import Unauthorized
    from ca_core.records import AuditEvent
    from gateway.config import load_config
    from gateway.runtime import open_services

    async with fresh_services(tmp_path) as one:
        config = load_config(environ={"VCC_PKI_DATA_DIR": str(tmp_path / "data"),
                                      "VCC_PKI_KEY_PASSPHRASE": "test-passphrase"})
        async with open_services(config) as other:
            await other.authority.load()
            org = await one.acme.organization(one.authority.settings.default_org)
            account, created = await one.acme.new_account(
                org, ServiceKey({"kty": "EC"}, "thumb-1"), (), True, None)
            second, _ = await one.acme.new_account(
                org, ServiceKey({"kty": "EC"}, "thumb-2"), (), True, None)
            assert created
            assert (await other.acme.account(account.account_id)).key_thumbprint == "thumb-1"
            await one.acme.change_key(account, ServiceKey({"kty": "EC", "n": 1}, "thumb-3"))
            assert (await other.acme.account(account.account_id)).key_thumbprint == "thumb-3"
            await one.acme.update_account(account, None, deactivate=True)
            with pytest.raises(Unauthorized, match="deactivated"):
                await other.acme.account(account.account_id)
            assert (await other.acme.account(second.account_id)).status == "valid"
            await one.store.update_organization(
                org.org_id, org.name, "disabled", org.config, AuditEvent(
                    event_type="organization.updated", category="organization",
                    action="update", actor_type="system", actor_id="test",
                    resource_type="organization", resource_id=org.org_id))
            with pytest.raises(Unauthorized, match="disabled"):
                await other.acme.account(second.account_id)



async def test_an_order_flow_takes_five_write_transactions(world: World,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Reads of an order do not store "ready" (it follows from its authorizations);
    finalize stores ready and processing in one write, and the certificate is recorded
    with the valid order in one: newOrder, challenge processing, challenge valid, finalize,
    certificate = 5 write transactions (7 before), and the audit log still has every
    state change of the order, in order."""
    client = world.client()
    await client.load()
    await client.register()
    store = world.services.store
    writes: list[str] = []
    real_write = store._write  # type: ignore[attr-defined]

    async def counting(body: Any) -> Any:
        writes.append(getattr(body, "__qualname__", "?"))
        return await real_write(body)

    monkeypatch.setattr(store, "_write", counting)
    order_url, order = await _order(client, "five.test")
    await _authorize(world, client, order)
    for _ in range(2):
        assert (await (await client.post(order_url, None)).json())["status"] == "ready"
    response = await client.post(order["finalize"], {"csr": b64(csr_for(["five.test"]))})
    assert response.status == 200, await response.text()
    order = await _poll(client, order_url, lambda d: d["status"] != "processing")
    assert order["status"] == "valid", order
    assert (await client.post(order["certificate"], None)).status == 200
    assert len(writes) == 5, writes
    order_id = order_url.rsplit("/", 1)[1]
    events = [e.event.event_type for e in await store.audit_entries()
              if e.event.resource_id == order_id or e.event.event_type == "certificate.issued"]
    assert events[-5:] == ["acme.order.pending", "acme.order.ready", "acme.order.processing",
                           "certificate.issued", "acme.order.valid"], events
