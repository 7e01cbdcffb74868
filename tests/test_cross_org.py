"""Issue 13: cross-organization access through every protocol is denied, and a disabled
organization's credentials stop at once (read fresh where the credential resolves).

Organizations "alpha" and "beta" beside the default one; every credential below is alpha's
and every target beta's. Each refusal leaves nothing issued, revoked, queued or spent.
Per-protocol detail lives in the protocol's own tests (test_acme, test_est_core,
test_scep, test_rest_admin, test_isolation_matrix); this file is the cross-protocol list.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_core.admin import CertificateFilters, OrganizationChange
from ca_core.authority import IssuanceRequest, IssuedCertificate, hash_secret
from ca_core.errors import BadRequest, Forbidden, NotFound, Unauthorized
from ca_core.est import EstCredentials, EstLabel, EstService, EstSettings
from ca_core.hierarchy import ensure_organization
from ca_core.org_policy import readable_org_ids
from ca_core.principal import Principal
from ca_core.records import Organization
from gateway.app import build_http_app, build_https_app
from gateway.runtime import Services
from tests import test_scep as scep_t
from tests.acme_client import b64, mac_jws
from tests.helpers import fresh_services, make_csr
from tests.pg import create_throwaway_database, drop_database, require_postgres
from tests.test_acme import World as AcmeWorld
from tests.test_acme import _problem as acme_problem
from tests.test_acme import _world as acme_world

ClientFactory = Callable[..., Any]
SYSTEM = Principal.system("test")
A, B = "alpha", "beta"


async def _orgs(services: Services) -> None:
    for slug in (A, B):
        await ensure_organization(services.authority, slug, slug.title(), SYSTEM)


async def _issue_in(services: Services, org: str, cn: str = "svc.example.test"
                    ) -> IssuedCertificate:
    return await services.authority.issue(IssuanceRequest(
        csr=make_csr(cn=cn, dns=(cn,)), profile="vcc_service", org=org), SYSTEM)


def _der_csr(name: str) -> bytes:
    return x509.load_pem_x509_csr(make_csr(cn=name, dns=(name,))).public_bytes(
        serialization.Encoding.DER)


async def _status(services: Services, issued: IssuedCertificate) -> str:
    (record,) = await services.store.find_certificates_by_serial(issued.record.serial_hex)
    return record.status


async def _set_status(services: Services, org: str, status: str) -> None:
    await services.admin.update_organization(SYSTEM, org, OrganizationChange(status=status))


async def _issued_count(services: Services) -> int:
    return sum(n for _, profile, n in await services.store.count_active_certificates(
        dt.datetime.now(dt.UTC)) if profile not in ("ocsp_signing", "timestamp_authority"))


# --- REST: a token of A reads, lists and revokes none of B's certificates ---------------

@pytest.mark.parametrize("role", ["pki_admin", "cert_manager", "auditor"])
async def test_token_of_a_cannot_read_list_or_revoke_bs_certificates(
        services: Services, aiohttp_client: ClientFactory, role: str) -> None:
    await _orgs(services)
    theirs = await _issue_in(services, B, "theirs.example.test")
    mine = await _issue_in(services, A, "mine.example.test")
    client: TestClient = await aiohttp_client(build_https_app(services))
    token = (await services.authority.create_token(A, role, principal=SYSTEM)).token
    auth = {"Authorization": f"Bearer {token}"}
    serial = theirs.record.serial_hex
    got = await client.get(f"/api/v1/certificates/{serial}", headers=auth)
    assert got.status == 404 and got.content_type == "application/problem+json"
    listed = await client.get("/api/v1/certificates", headers=auth)
    assert listed.status == 200
    serials = {int(c["serial"], 16) for c in (await listed.json())["items"]}
    assert int(mine.record.serial_hex, 16) in serials  # (display pads to whole bytes)
    assert int(serial, 16) not in serials
    for params in ({"organization": B}, {"q": "theirs"}):
        response = await client.get("/api/v1/certificates", headers=auth, params=params)
        assert response.status in (200, 404), await response.text()
        if response.status == 200:
            assert (await response.json())["items"] == []

    async def denials() -> list[Any]:
        return [e for e in await services.store.audit_entries(after_seq=0, limit=10_000)
                if e.event.status == "denied" and e.event.actor_id.startswith("token:")]

    issued = await _issued_count(services)
    for action in ("revoke", "renew"):
        before = len(await denials())
        refused = await client.post(f"/api/v1/certificates/{serial}/{action}", headers=auth)
        assert refused.status in (403, 404), await refused.text()
        after = await denials()
        assert len(after) == before + 1, action  # this refusal, audited
    assert await _status(services, theirs) == "active"
    assert await _issued_count(services) == issued  # nothing renewed


# --- ACME: an account of A revokes nothing of B's; an EAB key of A registers not in B -----

@pytest.fixture
async def acme(tmp_path: Path, aiohttp_client: ClientFactory) -> AsyncIterator[AcmeWorld]:
    async for world in acme_world(tmp_path, aiohttp_client, VCC_PKI_ACME_EAB_REQUIRED="true"):
        await _orgs(world.services)
        yield world


async def _account_in(world: AcmeWorld, org: str) -> Any:
    key = await world.services.admin.create_eab_key(SYSTEM, org)
    client = world.client(directory=f"/acme/{org}/directory")
    directory = await client.load()
    binding = mac_jws(key.kid, key.hmac_key, client.key.jwk, directory["newAccount"])
    response = await client.register(externalAccountBinding=binding)
    assert response.status == 201, await response.text()
    return client


async def test_acme_account_of_a_cannot_revoke_bs_certificate(acme: AcmeWorld) -> None:
    theirs = await _issue_in(acme.services, B)
    client = await _account_in(acme, A)
    der = theirs.certificate.public_bytes(serialization.Encoding.DER)
    await acme_problem(await client.post(client.directory["revokeCert"],
                                         {"certificate": b64(der)}), "unauthorized", 403)
    # through B's own directory URL the account is still A's
    response = await client.post(f"{client.directory['revokeCert'].replace(A, B)}",
                                 {"certificate": b64(der)})
    assert response.status >= 400
    assert await _status(acme.services, theirs) == "active"


async def test_eab_key_of_a_cannot_register_into_b(acme: AcmeWorld) -> None:
    key = await acme.services.admin.create_eab_key(SYSTEM, A)
    client = acme.client(directory=f"/acme/{B}/directory")
    directory = await client.load()
    binding = mac_jws(key.kid, key.hmac_key, client.key.jwk, directory["newAccount"])
    body = await acme_problem(await client.register(externalAccountBinding=binding),
                              "unauthorized", 401)
    assert body["detail"] == "the EAB key belongs to another organization"
    assert await acme.services.store.find_acme_account(client.key.thumbprint) is None
    stored = await acme.services.store.get_eab_key(key.kid)
    assert stored is not None and stored.account_id is None  # not spent


async def test_disabled_organizations_acme_accounts_are_refused_at_lookup(
        acme: AcmeWorld) -> None:
    client = await _account_in(acme, A)
    await acme.services.acme.set_policy(A, allow_all=True)
    await _set_status(acme.services, A, "disabled")
    # by kid (every JWS request after new-account) and by key (onlyReturnExisting)
    body = await acme_problem(await client.post(client.directory["newOrder"], {
        "identifiers": [{"type": "dns", "value": "a.example.test"}]}), "unauthorized", 401)
    assert body["detail"] == "the organization is disabled"
    await acme_problem(await client.register(onlyReturnExisting=True), "unauthorized", 401)
    await _set_status(acme.services, A, "active")
    response = await client.post(client.directory["newOrder"], {
        "identifiers": [{"type": "dns", "value": "a.example.test"}]})
    assert response.status == 201, await response.text()


# --- EST: a secret (or label, or certificate) of A enrolls nothing into B ----------------

def _est(services: Services) -> EstService:
    return EstService(services.authority, services.store, EstSettings())


async def _label(services: Services, est: EstService, name: str, org: str, **policy: Any
                 ) -> EstLabel:
    owner = await services.authority.organization(org)
    await est.set_label(EstLabel(name, owner.org_id, "vcc_service", **policy), SYSTEM)
    return await est.resolve_label(name)


async def test_est_secret_and_certificate_of_a_cannot_enroll_into_b(services: Services
                                                                     ) -> None:
    await _orgs(services)
    est = _est(services)
    await _label(services, est, "alpha-routers", A)
    await _label(services, est, "beta-routers", B)
    for label in ("", "alpha-routers"):  # a secret for any label of A, and for A's label
        secret = await est.create_secret(A, label, None, None, SYSTEM)
        before = await _issued_count(services)
        with pytest.raises(Forbidden):
            await est.enroll("beta-routers", _der_csr("r1.example.test"), EstCredentials(
                basic_user=secret.user, basic_password=secret.password))
        assert await _issued_count(services) == before
        stored = await services.store.get_enrollment_secret(secret.user)
        assert stored is not None and stored.used_at is None
    # a certificate of A (issued here) presented at B's label
    mine = await _issue_in(services, A, "dev.example.test")
    presented = EstCredentials(client_certificate=mine.certificate)
    with pytest.raises(Forbidden):
        await est.enroll("beta-routers", _der_csr("r2.example.test"), presented)
    with pytest.raises(Forbidden):
        await est.reenroll("beta-routers", _der_csr("dev.example.test"), presented)


@pytest.mark.parametrize("approval", [False, True])
async def test_disabled_organizations_est_secrets_stop_at_once(services: Services,
                                                               approval: bool) -> None:
    await _orgs(services)
    est = _est(services)
    await _label(services, est, "alpha-cams", A, require_approval=approval)
    secret = await est.create_secret(A, "alpha-cams", None, None, SYSTEM)
    basic = EstCredentials(basic_user=secret.user, basic_password=secret.password)
    await _set_status(services, A, "disabled")
    with pytest.raises(Unauthorized, match="disabled"):
        await est.enroll("alpha-cams", _der_csr("c.example.test"),
                         basic)
    stored = await services.store.get_enrollment_secret(secret.user)
    assert stored is not None and stored.used_at is None  # neither spent nor queued
    assert await services.store.list_pending_enrollments(None) == []
    await _set_status(services, A, "active")
    result = await est.enroll("alpha-cams", _der_csr("c.example.test"), basic)
    assert (result.certificate is not None) != approval


async def test_disabled_organizations_est_reenrollment_stops(services: Services) -> None:
    await _orgs(services)
    est = _est(services)
    await _label(services, est, "alpha-re", A)
    mine = await _issue_in(services, A, "re.example.test")
    await _set_status(services, A, "disabled")
    with pytest.raises(Unauthorized, match="disabled"):
        await est.reenroll("alpha-re", _der_csr("re.example.test"),
                           EstCredentials(client_certificate=mine.certificate))


# --- SCEP: a challenge of A enrolls nothing at B's /scep/{org}/{profile} -----------------

async def _scep_world(services: Services, client: TestClient, org: str) -> scep_t.World:
    response = await client.get(f"/scep/{org}/vcc_service", params={"operation": "GetCACert"})
    assert response.status == 200
    certificates = scep_t._certs(await response.read())
    (ra,) = [c for c in certificates if not scep_t._is_ca(c)]
    return scep_t.World(services, client, ra, [])


async def _scep_enroll(world: scep_t.World, org: str, password: str, dns: str
                       ) -> scep_t.CertRep:
    who = scep_t.requester()
    message = await scep_t.pki_message(who, world.ra, scep_t.csr_for(who, password, dns=dns))
    response = await scep_t.post(world, message, f"/scep/{org}/vcc_service")
    assert response.status == 200
    return await scep_t.read_reply(world, who, await response.read())


@pytest.fixture
async def scep(tmp_path: Path, aiohttp_client: ClientFactory
               ) -> AsyncIterator[tuple[Services, TestClient]]:
    from tests.helpers import fresh_services

    async with fresh_services(tmp_path) as services:
        await _orgs(services)
        yield services, await aiohttp_client(build_http_app(services))


async def test_scep_challenge_of_a_cannot_enroll_at_b(
        scep: tuple[Services, TestClient]) -> None:
    services, client = scep
    created = await services.scep.create_challenge(A, "vcc_service", None, SYSTEM)
    at_b = await _scep_world(services, client, B)
    before = await _issued_count(services)
    reply = await _scep_enroll(at_b, B, created.password, "b.example.test")
    assert (reply.status, reply.fail_info) == ("2", "2")  # FAILURE, badRequest
    assert await _issued_count(services) == before
    # unspent: it still works where it belongs
    at_a = await _scep_world(services, client, A)
    reply = await _scep_enroll(at_a, A, created.password, "a.example.test")
    assert reply.status == "0" and reply.certificate is not None


async def test_disabled_organizations_scep_challenges_stop_at_once(
        scep: tuple[Services, TestClient]) -> None:
    services, client = scep
    created = await services.scep.create_challenge(A, "vcc_service", None, SYSTEM)
    at_a = await _scep_world(services, client, A)
    await _set_status(services, A, "disabled")
    reply = await _scep_enroll(at_a, A, created.password, "a.example.test")
    assert (reply.status, reply.fail_info) == ("2", "2")
    challenge = await services.store.find_scep_challenge(hash_secret(created.password))
    assert challenge is not None and challenge.used_at is None
    await _set_status(services, A, "active")
    reply = await _scep_enroll(at_a, A, created.password, "a.example.test")
    assert reply.status == "0" and reply.certificate is not None
    assert isinstance(reply.certificate, x509.Certificate)


async def test_disabled_organizations_scep_static_secret_stops_at_once(
        scep: tuple[Services, TestClient]) -> None:
    services, client = scep
    await services.scep.configure(A, "vcc_service", SYSTEM, secret="alpha-static-secret")
    at_a = await _scep_world(services, client, A)
    await _set_status(services, A, "disabled")
    before = await _issued_count(services)
    reply = await _scep_enroll(at_a, A, "alpha-static-secret", "s.example.test")
    assert (reply.status, reply.fail_info) == ("2", "2")
    assert await _issued_count(services) == before
    await _set_status(services, A, "active")
    reply = await _scep_enroll(at_a, A, "alpha-static-secret", "s.example.test")
    assert reply.status == "0"


async def test_eab_from_rest_registers_and_rest_deactivation_stops_the_account(
        acme: AcmeWorld) -> None:
    """The REST EAB key binds an account to its organization; an admin of another
    organization neither lists nor deactivates it; its own admin's deactivation stops it."""
    import base64

    authority = acme.services.authority
    mine = (await authority.create_token(A, "pki_admin", principal=SYSTEM)).token
    theirs = (await authority.create_token(B, "pki_admin", principal=SYSTEM)).token
    created = await acme.http.post("/api/v1/acme/eab", json={"organization": A},
                                   headers={"Authorization": f"Bearer {mine}"})
    assert created.status == 201
    key = await created.json()
    hmac_key = base64.urlsafe_b64decode(key["hmac_key"] + "=" * (-len(key["hmac_key"]) % 4))
    client = acme.client(directory=f"/acme/{A}/directory")
    directory = await client.load()
    response = await client.register(externalAccountBinding=mac_jws(
        key["kid"], hmac_key, client.key.jwk, directory["newAccount"]))
    assert response.status == 201
    account_id = (client.account_url or "").rsplit("/", 1)[1]
    other = {"Authorization": f"Bearer {theirs}"}
    listed = await (await acme.http.get("/api/v1/acme/accounts", headers=other)).json()
    assert account_id not in [a["id"] for a in listed["items"]]
    denied = await acme.http.post(f"/api/v1/acme/accounts/{account_id}/deactivate",
                                  headers=other)
    assert denied.status == 404
    done = await acme.http.post(f"/api/v1/acme/accounts/{account_id}/deactivate",
                                headers={"Authorization": f"Bearer {mine}"})
    assert done.status == 200
    await acme_problem(await client.post(client.directory["newOrder"], {
        "identifiers": [{"type": "dns", "value": "x.example.test"}]}), "unauthorized", 401)


async def test_a_disable_in_another_process_stops_issuance_at_once(services: Services) -> None:
    """Another process (a second Authority on the same store) disables A while this one
    holds A's policy read a moment ago: the very next issuance here is refused by the
    certificate's write, nothing is stored, and enabling A again lets it issue."""
    from ca_core.authority import Authority

    await _orgs(services)
    await _issue_in(services, A, "warm.alpha.example.test")  # A's policy is cached now
    other = Authority(services.store, services.keys, services.authority.settings)
    other_admin = type(services.admin)(other, verify_chain=lambda *_: ())
    before = await _issued_count(services)
    await other_admin.update_organization(SYSTEM, A, OrganizationChange(status="disabled"))
    with pytest.raises(Forbidden, match="alpha is disabled"):
        await _issue_in(services, A, "late.alpha.example.test")
    assert await _issued_count(services) == before
    await other_admin.update_organization(SYSTEM, A, OrganizationChange(status="active"))
    await _issue_in(services, A, "again.alpha.example.test")
    assert await _issued_count(services) == before + 1


# --- isolation levels: reading crosses where the owner shares; acting never does ---------

C = "gamma"


async def _level(services: Services, org: str, isolation: str | None = None,
                 partners: list[str] | None = None) -> None:
    await services.admin.update_organization(SYSTEM, org, OrganizationChange(
        isolation=isolation, partners=partners))


async def _reader(services: Services, client: TestClient, org: str, role: str = "auditor"
                  ) -> Callable[[IssuedCertificate], Any]:
    """A token of ``org`` in ``role``; returns: whether it can GET and list a certificate
    (both or neither: list and get read the same scope)."""
    token = (await services.authority.create_token(org, role, principal=SYSTEM)).token
    auth = {"Authorization": f"Bearer {token}"}

    async def reads(issued: IssuedCertificate) -> bool:
        serial = issued.record.serial_hex
        got = await client.get(f"/api/v1/certificates/{serial}", headers=auth)
        assert got.status in (200, 404), await got.text()
        listed = await client.get("/api/v1/certificates", headers=auth,
                                  params={"q": issued.record.common_name})
        assert listed.status == 200, await listed.text()
        in_list = [c["serial"] for c in (await listed.json())["items"]]
        assert (got.status == 200) == (len(in_list) == 1), (got.status, in_list)
        return got.status == 200
    return reads


async def _three(services: Services, aiohttp_client: ClientFactory
                 ) -> tuple[TestClient, dict[str, IssuedCertificate]]:
    for slug in (A, B, C):
        await ensure_organization(services.authority, slug, slug.title(), SYSTEM)
    client: TestClient = await aiohttp_client(build_https_app(services))
    return client, {slug: await _issue_in(services, slug, f"cert.{slug}.example.test")
                    for slug in (A, B, C)}


@pytest.mark.parametrize("role", ["pki_admin", "cert_manager", "code_signer", "auditor"])
async def test_collaborative_shares_with_its_partners_one_way(
        services: Services, aiohttp_client: ClientFactory, role: str) -> None:
    client, certs = await _three(services, aiohttp_client)
    await _level(services, B, "collaborative", [A])
    a_reads = await _reader(services, client, A, role)
    b_reads = await _reader(services, client, B, role)
    c_reads = await _reader(services, client, C, role)
    assert await a_reads(certs[B]) and await a_reads(certs[A])
    assert not await b_reads(certs[A])  # one-way: B shares with A, A not with B
    assert not await c_reads(certs[B])  # not a partner
    assert not await a_reads(certs[C])


async def test_a_partner_downloads_the_certificate_and_its_chain_and_lists_by_organization(
        services: Services, aiohttp_client: ClientFactory) -> None:
    client, certs = await _three(services, aiohttp_client)
    await _level(services, B, "collaborative", [A])
    token = (await services.authority.create_token(A, "auditor", principal=SYSTEM)).token
    auth = {"Authorization": f"Bearer {token}"}
    theirs = certs[B]
    url = f"/api/v1/certificates/{theirs.record.serial_hex}"
    der = await client.get(url, headers=auth, params={"format": "der"})
    assert der.status == 200 and await der.read() == theirs.record.certificate_der
    pem = await client.get(url, headers=auth, params={"format": "pem"})
    chain = x509.load_pem_x509_certificates(await pem.read())
    issuer = await services.authority.issuing_ca(await services.authority.organization(B))
    assert chain[0].serial_number == int(theirs.record.serial_hex, 16)
    assert chain[1] == issuer.certificate
    assert (await client.get(url, headers=auth, params={"format": "pkcs7"})).status == 200
    listed = await client.get("/api/v1/certificates", headers=auth,
                              params={"organization": B, "limit": "500"})
    assert listed.status == 200
    items = (await listed.json())["items"]
    assert int(theirs.record.serial_hex, 16) in {int(c["serial"], 16) for c in items}
    org_b = await services.authority.organization(B)
    assert {c["organization_id"] for c in items} == {org_b.org_id}  # the filter holds
    for slug, status in ((C, 404), ("nowhere", 404)):  # not sharing / unknown: hidden
        refused = await client.get("/api/v1/certificates", headers=auth,
                                   params={"organization": slug})
        assert refused.status == status, await refused.text()


@pytest.mark.parametrize("level", ["collaborative", "federated"])
async def test_sharing_never_lets_a_partner_act(services: Services,
                                               aiohttp_client: ClientFactory,
                                               level: str) -> None:
    """Revoke and renew of a shared certificate: 404 as for any other organization's; issue
    into the sharing organization: 403. Each refusal audited, nothing changed."""
    client, certs = await _three(services, aiohttp_client)
    if level == "collaborative":
        await _level(services, B, "collaborative", [A])
    else:
        await _level(services, A, "federated")
        await _level(services, B, "federated")
    token = (await services.authority.create_token(A, "pki_admin", principal=SYSTEM)).token
    auth = {"Authorization": f"Bearer {token}"}
    serial = certs[B].record.serial_hex
    assert (await client.get(f"/api/v1/certificates/{serial}", headers=auth)).status == 200

    async def denials() -> int:
        return sum(e.event.status == "denied" for e in
                   await services.store.audit_entries(after_seq=0, limit=10_000))

    issued = await _issued_count(services)
    for path, body, status in (
            (f"/api/v1/certificates/{serial}/revoke", {}, 404),
            (f"/api/v1/certificates/{serial}/renew", {}, 404),
            ("/api/v1/certificates", {"csr": make_csr(cn="x.example.test").decode(),
                                      "organization": B}, 403),
            ("/api/v1/tokens", {"organization": B, "role": "auditor"}, 404),
            ("/api/v1/acme/eab", {"organization": B}, 404)):
        before = await denials()
        refused = await client.post(path, headers=auth, json=body)
        assert refused.status == status, (path, await refused.text())
        assert await denials() == before + 1, path
    assert await _status(services, certs[B]) == "active"
    assert await _issued_count(services) == issued
    audit = await client.get("/api/v1/audit", headers=auth,
                             params={"resource": certs[B].record.cert_id})
    assert (await audit.json())["items"] == []  # the audit log does not cross either


async def test_a_service_account_reads_nothing_shared(services: Services,
                                                      aiohttp_client: ClientFactory) -> None:
    """``cert:read_own``: its own requests only, whatever is shared with its organization."""
    client, certs = await _three(services, aiohttp_client)
    await _level(services, B, "collaborative", [A])
    principal = Principal("api", "token:sa", None, "service_account")
    assert await services.authority.readable_orgs(principal) is None  # (a global one)
    org_a = await services.authority.organization(A)
    scoped = Principal("api", "token:sa", org_a.org_id, "service_account")
    assert await services.authority.readable_orgs(scoped) == frozenset({org_a.org_id})
    sa_reads = await _reader(services, client, A, "service_account")
    assert not await sa_reads(certs[B])


async def test_partners_are_inert_unless_collaborative_and_unsharing_is_immediate(
        services: Services, aiohttp_client: ClientFactory) -> None:
    client, certs = await _three(services, aiohttp_client)
    a_reads = await _reader(services, client, A)
    await _level(services, B, "strict", [A])  # allowed, kept, inert
    assert not await a_reads(certs[B])
    await _level(services, B, "federated")
    assert not await a_reads(certs[B])  # partners count for collaborative only
    await _level(services, B, "collaborative")
    assert await a_reads(certs[B])
    await _level(services, B, partners=[C])  # replaced: A is no partner any more
    assert not await a_reads(certs[B])
    await _level(services, B, partners=[A, C, A])
    org = await services.admin.get_organization(SYSTEM, B)
    assert org.config["partners"] == [A, C]  # each once
    assert await a_reads(certs[B])
    await _level(services, B, "strict")
    assert not await a_reads(certs[B])
    await _level(services, B, "collaborative", [])
    assert not await a_reads(certs[B])


async def test_federated_organizations_read_each_other_and_outsiders_nothing(
        services: Services, aiohttp_client: ClientFactory) -> None:
    client, certs = await _three(services, aiohttp_client)
    await _level(services, A, "federated")
    await _level(services, B, "federated")
    await _level(services, C, "collaborative", [A, B])  # C shares with both by name
    a_reads = await _reader(services, client, A)
    b_reads = await _reader(services, client, B)
    c_reads = await _reader(services, client, C)
    assert await a_reads(certs[B]) and await b_reads(certs[A])
    assert await a_reads(certs[C]) and await b_reads(certs[C])
    assert not await c_reads(certs[A]) and not await c_reads(certs[B])  # not federated
    await _level(services, B, "strict")  # leaves the federation: neither shares nor sees
    assert not await a_reads(certs[B]) and not await b_reads(certs[A])
    assert await b_reads(certs[C])  # C's sharing by name is C's decision


async def test_a_disabled_organization_neither_shares_nor_is_shared_with(
        services: Services, aiohttp_client: ClientFactory) -> None:
    client, certs = await _three(services, aiohttp_client)
    await _level(services, B, "collaborative", [A, C])
    a_reads = await _reader(services, client, A)
    assert await a_reads(certs[B])
    await _set_status(services, B, "disabled")
    assert not await a_reads(certs[B])
    await _set_status(services, B, "active")
    assert await a_reads(certs[B])
    await _set_status(services, C, "disabled")  # a partner disabled later: ignored, kept
    org_c = await services.authority.organization(C)
    reader = Principal("api", "token:x", org_c.org_id, "auditor")
    assert await services.authority.readable_orgs(reader) == frozenset({org_c.org_id})
    assert (await services.admin.get_organization(SYSTEM, B)).config["partners"] == [A, C]
    with pytest.raises(BadRequest, match="disabled"):  # but not named anew
        await _level(services, B, partners=[C])


@pytest.mark.parametrize("body", [
    {"partners": "alpha"}, {"partners": [1]}, {"partners": ["nowhere"]},
    {"partners": ["beta"]}, {"partners": [""]}, {"partners": ["a\u0000b"]},
    {"partners": ["\ud800"]}, {"partners": ["x" * 101]}, {"partners": {"alpha": 1}},
    {"partners": ["alpha"] * 101}, {"isolation": "collaborative", "partners": ["nowhere"]}])
async def test_bad_partner_lists_are_400_and_change_nothing(
        services: Services, aiohttp_client: ClientFactory, body: dict[str, Any]) -> None:
    client, _ = await _three(services, aiohttp_client)
    token = (await services.authority.create_token("default", "pki_super_admin",
                                                   principal=SYSTEM)).token
    before = await services.admin.get_organization(SYSTEM, B)
    response = await client.patch(f"/api/v1/organizations/{B}", json=body,
                                  headers={"Authorization": f"Bearer {token}"})
    assert response.status == 400, await response.text()
    assert response.content_type == "application/problem+json"
    assert await services.admin.get_organization(SYSTEM, B) == before


async def test_partners_on_create_and_in_the_document(
        services: Services, aiohttp_client: ClientFactory) -> None:
    client, _ = await _three(services, aiohttp_client)
    token = (await services.authority.create_token("default", "pki_super_admin",
                                                   principal=SYSTEM)).token
    auth = {"Authorization": f"Bearer {token}"}
    made = await client.post("/api/v1/organizations", headers=auth, json={
        "slug": "delta", "isolation": "collaborative", "partners": [A]})
    assert made.status == 201, await made.text()
    assert (await made.json())["partners"] == [A]
    refused = await client.post("/api/v1/organizations", headers=auth, json={
        "slug": "epsilon", "partners": ["epsilon"]})
    assert refused.status == 400
    assert (await client.get("/api/v1/organizations/epsilon", headers=auth)).status == 404
    shown = await (await client.get(f"/api/v1/organizations/{A}", headers=auth)).json()
    assert shown["partners"] == [] and shown["isolation"] == "strict"


@pytest.mark.postgres
async def test_unsharing_takes_effect_at_once_in_another_process_on_postgresql(
        tmp_path: Path) -> None:
    """Two Authorities (two pools, as two gateway processes) on one PostgreSQL database:
    what one changes, the other's next read sees."""
    require_postgres()
    dsn = await asyncio.to_thread(asyncio.run, create_throwaway_database())
    try:
        async with fresh_services(tmp_path, VCC_PKI_DATABASE_URL=dsn) as one, \
                fresh_services(tmp_path, VCC_PKI_DATABASE_URL=dsn) as two:
            for slug in (A, B):
                await ensure_organization(one.authority, slug, slug.title(), SYSTEM)
            theirs = await _issue_in(one, B, "theirs.example.test")
            org_a = await two.authority.organization(A)
            reader = Principal("api", "token:x", org_a.org_id, "auditor")
            serial = theirs.record.serial_hex

            async def second_reads() -> bool:
                listed = await two.admin.list_certificates(reader, CertificateFilters())
                try:
                    await two.authority.find_certificate(serial, reader)
                except NotFound:
                    assert theirs.record.cert_id not in {c.cert_id for c in listed.items}
                    return False
                assert theirs.record.cert_id in {c.cert_id for c in listed.items}
                return True

            assert not await second_reads()
            await _level(one, B, "collaborative", [A])
            assert await second_reads()
            await _level(one, B, "strict")
            assert not await second_reads()
            await _level(one, A, "federated")
            await _level(one, B, "federated")
            assert await second_reads()
            await _set_status(one, B, "disabled")
            assert not await second_reads()
    finally:
        await asyncio.to_thread(asyncio.run, drop_database(dsn))


def test_readable_org_ids_is_the_one_rule() -> None:
    def org(slug: str, isolation: str = "strict", partners: tuple[str, ...] = (),
            status: str = "active") -> Organization:
        return Organization(slug, slug, slug, status,
                            {"isolation": isolation, "partners": list(partners)})
    orgs = [org("a", "federated"), org("b", "federated"), org("c", "collaborative", ("a",)),
            org("d", "strict", ("a",)), org("e", "federated", status="disabled"),
            org("f", "collaborative", ("b", "a")), org("g", "porous", ("a",))]
    assert readable_org_ids("a", orgs) == {"a", "b", "c", "f"}
    assert readable_org_ids("b", orgs) == {"b", "a", "f"}
    assert readable_org_ids("c", orgs) == {"c"}  # sharing with a does not make a share back
    assert readable_org_ids("e", orgs) == {"e"}  # disabled: reads nothing across
    assert readable_org_ids("unknown", orgs) == {"unknown"}
    assert readable_org_ids("a", [org("a", "federated"),
                                  org("x", "collaborative", ("a",), "disabled")]) == {"a"}
