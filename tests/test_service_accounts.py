"""Service accounts (issue 13): client certificates pinned by SHA-256 fingerprint to an
organization's credential, authenticating the REST API on the EST listener (the one that
requests client certificates).

The end-to-end tests start the real EST listener (``est_ssl_context``, the TLS shim that
accepts any chain) on loopback and drive it with curl --cert/--key: a bound certificate is
its service account, scoped to its organization; unbound, revoked binding, expired, revoked
by our CA, disabled organization: 401 problem+json, audited. The 8443 context never asks
for a certificate. Bind-time refusals, the management calls and the CLI are tested on the
AdminService, the REST app and ``vcc-pki`` itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca_core.admin import OrganizationChange
from ca_core.authority import IssuanceRequest
from ca_core.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from ca_core.hierarchy import ensure_organization
from ca_core.mtls import fingerprint
from ca_core.principal import Principal
from ca_core.records import AuditEvent, ServiceAccount
from gateway.app import build_est_app, build_https_app
from gateway.cli import main
from gateway.runtime import Services
from gateway.server import _ssl_context, est_ssl_context
from gateway.tls import ensure_server_certificate
from protocols.est import tls_shim
from tests.helpers import bridge_root, make_csr, make_key

ClientFactory = Callable[..., Any]
SYSTEM = Principal.system("test")
KeyAndCert = tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]


def foreign_leaf(issuer: KeyAndCert, cn: str, *, expired: bool = False,
                 eku: tuple[x509.ObjectIdentifier, ...] | None = (
                     ExtendedKeyUsageOID.CLIENT_AUTH,),
                 ca: bool = False) -> KeyAndCert:
    """A certificate of another CA (not this PKI's): pinning works for any."""
    key = make_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer[1].subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1) if expired
                         else now + dt.timedelta(days=30)))
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0),
                                        critical=True)
    return key, builder.sign(issuer[0], hashes.SHA256())


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


async def issued_here(services: Services, cn: str, org: str = "alpha") -> KeyAndCert:
    key = make_key()
    issued = await services.authority.issue(IssuanceRequest(
        csr=make_csr(cn, (cn,), key=key), profile="vcc_service", org=org), SYSTEM)
    return key, issued.certificate


async def failures(services: Services) -> list[AuditEvent]:
    return [e.event for e in await services.store.audit_entries()
            if e.event.event_type == "authentication.failed"]


# --- the AdminService and the Authority ----------------------------------------------------

@pytest.fixture
async def orgs(services: Services) -> Services:
    for slug in ("alpha", "beta"):
        await ensure_organization(services.authority, slug, slug.title(), SYSTEM)
    return services


async def test_bind_refuses_what_is_no_client_certificate(orgs: Services) -> None:
    admin, other = orgs.admin, bridge_root("Other CA")

    async def bind(data: bytes, role: str | None = None) -> ServiceAccount:
        return await admin.create_service_account(SYSTEM, "alpha", "svc", data, role)

    refusals = {
        b"": "1 to",
        b"garbage": "not a PEM or DER",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n": "not a PEM",
        b"x" * 70_000: "1 to",
        pem(foreign_leaf(other, "old", expired=True)[1]): "expired",
        pem(foreign_leaf(other, "sub-ca", ca=True)[1]): "CA certificate",
        pem(other[1]): "CA certificate",
        pem(foreign_leaf(other, "web", eku=(ExtendedKeyUsageOID.SERVER_AUTH,))[1]):
            "clientAuth",
    }
    for data, reason in refusals.items():
        with pytest.raises(BadRequest, match=reason):
            await bind(data)
    good = pem(foreign_leaf(other, "svc")[1])
    for role in ("pki_super_admin", "nobody"):
        with pytest.raises(BadRequest, match="role"):
            await bind(good, role)
    with pytest.raises(BadRequest, match="name"):
        await admin.create_service_account(SYSTEM, "alpha", "  ", good)
    # DER works as PEM does, and without an extendedKeyUsage (any use) too
    no_eku = foreign_leaf(other, "plain", eku=None)[1]
    bound = await bind(no_eku.public_bytes(serialization.Encoding.DER))
    assert bound.fingerprint == fingerprint(no_eku.public_bytes(serialization.Encoding.DER))
    assert (bound.role, bound.subject_dn, bound.issuer_dn) == (
        "service_account", "CN=plain", other[1].subject.rfc4514_string())
    with pytest.raises(Conflict):  # one live binding per certificate
        await bind(pem(no_eku), "auditor")
    # a certificate this PKI revoked is refused too
    _, ours = await issued_here(orgs, "revoked.alpha.example.test")
    await orgs.authority.revoke(format(ours.serial_number, "x"), "key_compromise", SYSTEM)
    with pytest.raises(BadRequest, match="revoked"):
        await bind(pem(ours))
    assert [a.account_id for a in (await admin.list_service_accounts(SYSTEM)).items] == [
        bound.account_id]


async def test_management_is_scoped_like_tokens(orgs: Services) -> None:
    """token:create: a pki_admin for its own organization (another's: 404, audited), a super
    admin for any; every other role 403. Create and revoke write audit events."""
    admin, other = orgs.admin, bridge_root("Other CA")
    alpha_org = await orgs.authority.organization("alpha")
    alpha_admin = Principal("api", "token:a", alpha_org.org_id, "pki_admin")
    cert_manager = Principal("api", "token:c", alpha_org.org_id, "cert_manager")
    mine = await admin.create_service_account(alpha_admin, "alpha", "billing",
                                              pem(foreign_leaf(other, "billing")[1]))
    theirs = await admin.create_service_account(SYSTEM, "beta", "ledger",
                                                pem(foreign_leaf(other, "ledger")[1]),
                                                "cert_manager")
    with pytest.raises(NotFound):
        await admin.create_service_account(alpha_admin, "beta", "x",
                                           pem(foreign_leaf(other, "x")[1]))
    with pytest.raises(Forbidden):
        await admin.create_service_account(cert_manager, "alpha", "x",
                                           pem(foreign_leaf(other, "x")[1]))
    with pytest.raises(Forbidden):
        await admin.list_service_accounts(cert_manager)
    assert [a.account_id for a in (await admin.list_service_accounts(alpha_admin)).items] \
        == [mine.account_id]
    with pytest.raises(NotFound):
        await admin.list_service_accounts(alpha_admin, "beta")
    with pytest.raises(NotFound):
        await admin.revoke_service_account(alpha_admin, theirs.account_id)
    with pytest.raises(NotFound):
        await admin.revoke_service_account(alpha_admin, "sa-\x00unknown")
    assert not (await orgs.store.get_service_account(theirs.account_id)).revoked  # type: ignore[union-attr]
    revoked = await admin.revoke_service_account(alpha_admin, mine.account_id)
    assert revoked.revoked
    with pytest.raises(NotFound):  # already revoked
        await admin.revoke_service_account(SYSTEM, mine.account_id)
    entries = [e.event for e in await orgs.store.audit_entries()]
    assert [e.event_type for e in entries if e.resource_type == "service_account"] == [
        "service_account.created", "service_account.created", "service_account.denied",
        "service_account.denied", "service_account.denied", "service_account.denied",
        "service_account.revoked", "service_account.denied"]
    assert sum(e.event_type == "organization.denied" for e in entries) == 2
    # pages: one item a page, the cursor walks them in creation order
    page = await admin.list_service_accounts(SYSTEM, limit=1)
    assert page.next is not None and [a.account_id for a in page.items] == [mine.account_id]
    rest = await admin.list_service_accounts(SYSTEM, cursor=page.next, limit=1)
    assert [a.account_id for a in rest.items] == [theirs.account_id] and rest.next is None


async def test_authenticate_certificate(orgs: Services) -> None:
    """The binding's Principal; anything else Unauthorized and audited."""
    authority, other = orgs.authority, bridge_root("Other CA")
    _, certificate = foreign_leaf(other, "svc")
    der = certificate.public_bytes(serialization.Encoding.DER)
    bound = await orgs.admin.create_service_account(SYSTEM, "alpha", "svc", pem(certificate),
                                                    "cert_manager")
    principal = await authority.authenticate_certificate([der, other[1].public_bytes(
        serialization.Encoding.DER)])
    alpha = await authority.organization("alpha")
    assert principal == Principal("service", f"mtls:{bound.account_id}", alpha.org_id,
                                  "cert_manager")
    for chain in ([], [b"not DER"], [foreign_leaf(other, "unbound")[1].public_bytes(
            serialization.Encoding.DER)]):
        with pytest.raises(Unauthorized):
            await authority.authenticate_certificate(chain)
    later = certificate.not_valid_after_utc + dt.timedelta(seconds=1)
    clock = authority.clock
    authority.clock = lambda: later
    try:
        with pytest.raises(Unauthorized, match="expired"):
            await authority.authenticate_certificate([der])
    finally:
        authority.clock = clock
    failed = await failures(orgs)
    assert len(failed) == 4
    assert failed[-1].actor_id == f"mtls:{bound.account_id}"
    assert failed[-1].data["fingerprint"] == bound.fingerprint
    assert failed[0].status == "failed" and failed[0].org_id is None


# --- the REST API --------------------------------------------------------------------------

async def test_rest_routes_and_bad_input(orgs: Services, aiohttp_client: ClientFactory) -> None:
    client: TestClient = await aiohttp_client(build_https_app(orgs))
    token = (await orgs.authority.create_token("alpha", "pki_admin", principal=SYSTEM)).token
    auth = {"Authorization": f"Bearer {token}"}
    certificate = foreign_leaf(bridge_root("Other CA"), "svc")[1]
    response = await client.post("/api/v1/service-accounts", headers=auth, json={
        "organization": "alpha", "name": "billing", "certificate": pem(certificate).decode()})
    assert response.status == 201, await response.text()
    created = await response.json()
    assert response.headers["Location"] == f"/api/v1/service-accounts/{created['id']}"
    assert created["fingerprint"] == fingerprint(certificate.public_bytes(
        serialization.Encoding.DER))
    assert (created["role"], created["revoked"], created["subject"]) == (
        "service_account", False, "CN=svc")
    listed = await (await client.get("/api/v1/service-accounts", headers=auth)).json()
    assert [a["id"] for a in listed["items"]] == [created["id"]] and listed["next"] is None

    bad: list[tuple[Any, int]] = [
        ({"organization": "alpha", "name": "x"}, 400),
        ({"organization": "alpha", "name": "x", "certificate": 5}, 400),
        ({"organization": "alpha", "name": "x", "certificate": "garbage"}, 400),
        ({"organization": "alpha", "name": "x", "certificate": "\ud800"}, 400),
        ({"organization": "alpha", "name": "x", "certificate": pem(certificate).decode()},
         409),
        ({"organization": "alpha", "name": "x", "role": "pki_super_admin",
          "certificate": pem(certificate).decode()}, 400),
        ({"organization": "beta", "name": "x", "certificate": pem(certificate).decode()},
         404),
        ([1, 2], 400),
    ]
    for body, status in bad:
        response = await client.post("/api/v1/service-accounts", headers=auth, json=body)
        assert response.status == status, (body, await response.text())
        assert response.content_type == "application/problem+json"
    response = await client.post("/api/v1/service-accounts", headers=auth, data=b"x")
    assert response.status == 415
    for query in ("cursor=%%%", "limit=0", "limit=x", "organization=nowhere"):
        response = await client.get(f"/api/v1/service-accounts?{query}", headers=auth)
        assert response.status in (400, 404), (query, await response.text())
        assert response.content_type == "application/problem+json"
    response = await client.delete(f"/api/v1/service-accounts/{created['id']}", headers=auth)
    assert response.status == 200 and (await response.json())["revoked"] is True
    response = await client.delete(f"/api/v1/service-accounts/{created['id']}", headers=auth)
    assert response.status == 404
    response = await client.get("/api/v1/service-accounts")
    assert response.status == 401 and response.content_type == "application/problem+json"


# --- end to end: the EST listener and curl -------------------------------------------------

@dataclass
class Listeners:
    est_port: int
    https_port: int
    root: Path
    services: Services
    tmp: Path


async def _site(app: web.Application, context: Any) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    assert site._server is not None
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]


@pytest.fixture
async def listeners(orgs: Services, tmp_path: Path) -> AsyncIterator[Listeners]:
    services = orgs
    tls_dir = await ensure_server_certificate(services)
    root = tmp_path / "root.pem"
    root.write_bytes(b"".join(
        ca.certificate.public_bytes(serialization.Encoding.PEM)
        for ca in services.authority.loaded_cas()
        if ca.certificate.issuer == ca.certificate.subject and ca.record.ca_type == "root"))
    assert tls_dir.is_dir()
    settings = services.est.settings
    est_runner, est_port = await _site(build_est_app(services, services.est, settings),
                                       await est_ssl_context(services, settings.trust_store))
    https_runner, https_port = await _site(build_https_app(services), _ssl_context(services))
    try:
        yield Listeners(est_port, https_port, root, services, tmp_path)
    finally:
        await https_runner.cleanup()
        await est_runner.cleanup()


@dataclass
class Curl:
    status: int
    body: Any
    content_type: str


async def curl(where: Listeners, path: str, identity: KeyAndCert | None = None, *,
               port: int | None = None, token: str | None = None,
               body: dict[str, Any] | None = None) -> Curl:
    """curl against the listener, with the client certificate and key as files."""
    args = ["curl", "-sS", "--cacert", str(where.root), "-o", "-", "-w",
            "\n%{http_code} %{content_type}"]
    if identity is not None:
        key_path = where.tmp / f"client-{identity[1].serial_number}.key"
        cert_path = key_path.with_suffix(".pem")
        key_path.write_bytes(identity[0].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        cert_path.write_bytes(pem(identity[1]))
        args += ["--cert", str(cert_path), "--key", str(key_path)]
    if token is not None:
        args += ["-H", f"Authorization: Bearer {token}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    args.append(f"https://localhost:{port or where.est_port}{path}")
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    text, _, trailer = out.decode().rpartition("\n")
    status, _, content_type = trailer.partition(" ")
    return Curl(int(status), json.loads(text) if text else None, content_type)


needs_shim = pytest.mark.skipif(
    not tls_shim.enable(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)),
    reason="the TLS shim is unavailable: the handshake refuses certificates of other CAs")


@needs_shim
async def test_mtls_end_to_end(listeners: Listeners) -> None:
    services, other = listeners.services, bridge_root("Other CA")
    alpha_cn, beta_cn = "web.alpha.example.test", "web.beta.example.test"
    await issued_here(services, alpha_cn, "alpha")
    await issued_here(services, beta_cn, "beta")
    operator = foreign_leaf(other, "operator")
    bound = await services.admin.create_service_account(SYSTEM, "alpha", "operator",
                                                        pem(operator[1]), "cert_manager")

    # a bound certificate: 200, its organization's certificates only
    answer = await curl(listeners, "/api/v1/certificates", operator)
    assert answer.status == 200, answer.body
    names = {c["common_name"] for c in answer.body["items"]}
    assert alpha_cn in names and beta_cn not in names
    answer = await curl(listeners, "/api/v1/certificates?organization=beta", operator)
    assert answer.status == 404

    # a bearer token wins over the certificate, a bad one too
    beta_token = (await services.authority.create_token("beta", "auditor",
                                                        principal=SYSTEM)).token
    answer = await curl(listeners, "/api/v1/certificates", operator, token=beta_token)
    names = {c["common_name"] for c in answer.body["items"]}
    assert answer.status == 200 and beta_cn in names and alpha_cn not in names
    answer = await curl(listeners, "/api/v1/certificates", operator, token="vcc.x.y")
    assert answer.status == 401

    # unbound, expired (bound before it expired), no certificate: 401 problem+json
    expired = foreign_leaf(other, "expired", expired=True)
    expired_der = expired[1].public_bytes(serialization.Encoding.DER)
    alpha = await services.authority.organization("alpha")
    await services.store.add_service_account(ServiceAccount(
        account_id="sa-expired", org_id=alpha.org_id, role="cert_manager", name="expired",
        fingerprint=fingerprint(expired_der), subject_dn="CN=expired", issuer_dn="CN=Other CA",
        serial_hex=format(expired[1].serial_number, "x"),
        not_after=expired[1].not_valid_after_utc, created_at=dt.datetime.now(dt.UTC)),
        AuditEvent(event_type="service_account.created", category="authentication",
                   action="create_service_account"))
    before = len(await failures(services))
    for identity in (foreign_leaf(other, "stranger"), expired, None):
        answer = await curl(listeners, "/api/v1/certificates", identity)
        assert answer.status == 401, answer.body
        assert answer.content_type.startswith("application/problem+json")
    failed = await failures(services)
    assert len(failed) == before + 2  # no certificate at all is not an mTLS attempt
    assert "no service account" in failed[-2].data["reason"]
    assert "expired" in failed[-1].data["reason"]

    # a certificate of this PKI: works until the CA revokes it, then 401 at once
    ours = await issued_here(services, "client.alpha.example.test", "alpha")
    await services.admin.create_service_account(SYSTEM, "alpha", "ours", pem(ours[1]),
                                                "auditor")
    assert (await curl(listeners, "/api/v1/certificates", ours)).status == 200
    await services.authority.revoke(format(ours[1].serial_number, "x"), "key_compromise",
                                    SYSTEM)
    answer = await curl(listeners, "/api/v1/certificates", ours)
    assert answer.status == 401 and "revoked" in answer.body["detail"]

    # the organization disabled: 401 at once; enabled again: back
    await services.admin.disable_organization(SYSTEM, "alpha")
    assert (await curl(listeners, "/api/v1/certificates", operator)).status == 401
    await services.admin.update_organization(SYSTEM, "alpha",
                                             OrganizationChange(status="active"))
    assert (await curl(listeners, "/api/v1/certificates", operator)).status == 200

    # the binding revoked: 401 at once
    await services.admin.revoke_service_account(SYSTEM, bound.account_id)
    assert (await curl(listeners, "/api/v1/certificates", operator)).status == 401

    # the 8443 listener never asks for a certificate: the same one is not seen there
    again = foreign_leaf(other, "again")
    await services.admin.create_service_account(SYSTEM, "alpha", "again", pem(again[1]),
                                                "cert_manager")
    assert (await curl(listeners, "/api/v1/certificates", again)).status == 200
    answer = await curl(listeners, "/api/v1/certificates", again, port=listeners.https_port)
    assert answer.status == 401 and answer.content_type.startswith("application/problem+json")
    # EST still answers on its port
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--cacert", str(listeners.root), "-o", "/dev/null", "-w",
        "%{http_code}", f"https://localhost:{listeners.est_port}/.well-known/est/cacerts",
        stdout=asyncio.subprocess.PIPE)
    assert (await process.communicate())[0] == b"200"


@needs_shim
async def test_service_account_issues_and_sees_only_its_own(listeners: Listeners) -> None:
    """role service_account (``cert:*_own``): it requests a certificate through the API over
    mTLS, and lists, reads and revokes only what it requested."""
    services, other = listeners.services, bridge_root("Other CA")
    await issued_here(services, "someone-else.alpha.example.test", "alpha")
    robot = foreign_leaf(other, "robot")
    await services.admin.create_service_account(SYSTEM, "alpha", "robot", pem(robot[1]))
    twin = foreign_leaf(other, "twin")
    await services.admin.create_service_account(SYSTEM, "alpha", "twin", pem(twin[1]))
    answer = await curl(listeners, "/api/v1/certificates", robot)
    assert answer.status == 200 and answer.body["items"] == []
    cn = "robot.alpha.example.test"
    answer = await curl(listeners, "/api/v1/certificates", robot, body={
        "csr": make_csr(cn, (cn,)).decode(), "organization": "alpha"})
    assert answer.status == 201, answer.body
    serial = answer.body["serial"]
    listed = await curl(listeners, "/api/v1/certificates", robot)
    assert [c["serial"] for c in listed.body["items"]] == [serial]
    assert (await curl(listeners, f"/api/v1/certificates/{serial}", robot)).status == 200
    # another service account of the same organization does not see it
    assert (await curl(listeners, "/api/v1/certificates", twin)).body["items"] == []
    assert (await curl(listeners, f"/api/v1/certificates/{serial}", twin)).status == 404
    # nor may it manage service accounts
    assert (await curl(listeners, "/api/v1/service-accounts", robot)).status == 403
    record = (await services.store.find_certificates_by_serial(serial.lower().lstrip("0")))[0]
    assert record.requester.startswith("mtls:sa-")


# --- the CLI -------------------------------------------------------------------------------

def test_cli(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    assert main(["org", "create", "health"]) == 0
    certificate = foreign_leaf(bridge_root("Other CA"), "lab-robot")[1]
    cert_file = tmp_path / "robot.pem"
    cert_file.write_bytes(pem(certificate))
    capsys.readouterr()
    assert main(["service-account", "create", "--org", "health", "--name", "lab robot",
                 "--cert", str(cert_file), "--role", "cert_manager"]) == 0
    out = capsys.readouterr()
    account_id = out.out.strip()
    assert account_id.startswith("sa-") and "CN=lab-robot" in out.err
    assert main(["service-account", "list", "--org", "health"]) == 0
    listing = capsys.readouterr().out
    assert account_id in listing and "cert_manager" in listing and "active" in listing
    assert main(["service-account", "create", "--org", "health", "--name", "again",
                 "--cert", str(cert_file)]) == 1  # bound already
    assert "bound" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"garbage")
    assert main(["service-account", "create", "--org", "health", "--name", "x",
                 "--cert", str(garbage)]) == 1
    assert "garbage.pem is not a PEM or DER X.509 certificate" in capsys.readouterr().err
    assert main(["service-account", "create", "--org", "health", "--name", "x",
                 "--cert", str(tmp_path / "missing.pem")]) == 1
    capsys.readouterr()
    assert main(["service-account", "revoke", account_id]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["service-account", "revoke", account_id]) == 1
    assert main(["service-account", "list"]) == 0
    assert "revoked" in capsys.readouterr().out
