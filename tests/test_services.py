"""The service registry (issue 14): registration by operators and by a service itself
(token or mTLS certificate), its one active certificate, heartbeats, renewal state, the
policy matrix, every REST route with its bad inputs and refusals (audited, nothing
changed), ``vcc-pki service list|bootstrap|renew`` (bootstrap run twice changes nothing),
the ``pki_certificates_expiring`` gauge, and a bootstrapped service calling the registry
with its own certificate on the EST listener (curl, mTLS)."""

from __future__ import annotations

import datetime as dt
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import REGISTRY as PROMETHEUS

from ca_core.errors import BadRequest, Conflict, Forbidden, NotFound
from ca_core.hierarchy import ensure_organization
from ca_core.principal import Principal
from ca_core.services import ServiceChange, ServiceSpec, new_service_key
from gateway.app import build_https_app
from gateway.cli import main
from gateway.runtime import Services
from gateway.server import refresh_expiring_gauge
from gateway.service_cli import BootstrapEntry, bootstrap_one
from tests.helpers import make_csr, make_key
from tests.test_service_accounts import Listeners, curl, listeners, needs_shim, orgs

__all__ = ["listeners", "orgs"]  # fixtures used here

ClientFactory = Callable[..., Any]
SYSTEM = Principal.system("test")
DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "vcc-services.toml"


async def _denials(services: Services) -> int:
    return sum(e.event.status == "denied" for e in await services.store.audit_entries())


async def _issuances(services: Services) -> int:
    return sum(e.event.event_type == "certificate.issued"
               for e in await services.store.audit_entries())


async def _token(services: Services, org: str, role: str) -> str:
    return (await services.authority.create_token(org, role, principal=SYSTEM)).token


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_register_update_and_refusals(orgs: Services) -> None:
    registry = orgs.registry
    admin = Principal("api", "token:admin", (await orgs.authority.organization("alpha")
                                              ).org_id, "pki_admin")
    clara = await registry.register(admin, ServiceSpec(
        "Clara", "clara", "processor", endpoints=("https://clara.alpha.test",),
        metadata={"team": "ki"}))
    assert (clara.slug, clara.service_type, clara.created_by) == (
        "clara", "processor", "token:admin")
    with pytest.raises(Conflict):
        await registry.register(admin, ServiceSpec("Clara again", "clara"))
    for bad in (ServiceSpec("X", "Bad Slug"), ServiceSpec("X", "policy"),
                ServiceSpec("X", "x", "database"), ServiceSpec("", "x"),
                ServiceSpec("X", "x", health_check_url="ftp://x"),
                ServiceSpec("X", "x", endpoints=("not a url",)),
                ServiceSpec("X", "x", environment="prod env"),
                ServiceSpec("X", "x", metadata={"n": float("nan")})):
        with pytest.raises(BadRequest):
            await registry.register(admin, bad)
    updated = await registry.update(admin, "clara", ServiceChange(version="2.0",
                                                                  status="inactive"))
    assert (updated.version, updated.status, updated.name) == ("2.0", "inactive", "Clara")
    with pytest.raises(BadRequest):
        await registry.update(admin, "clara", ServiceChange(status="gone"))

    # another organization's service, and registering in another organization: 404, audited
    beta = await registry.register(SYSTEM, ServiceSpec("Argus", "argus", organization="beta"))
    before = await _denials(orgs)
    with pytest.raises(NotFound):
        await registry.get(admin, "argus", "beta")
    with pytest.raises(NotFound):
        await registry.get(admin, "argus")  # not in alpha
    with pytest.raises(NotFound):
        await registry.register(admin, ServiceSpec("Y", "y", organization="beta"))
    with pytest.raises(NotFound):
        await registry.update(admin, "argus", ServiceChange(name="mine"), "beta")
    assert await _denials(orgs) == before + 4
    assert (await registry.get(SYSTEM, "argus", "beta")).name == beta.name
    # read-only roles read, and may not change; code_signer sees nothing
    alpha_id = clara.org_id
    auditor = Principal("api", "token:aud", alpha_id, "auditor")
    assert [s.slug for s in (await registry.list_services(auditor)).items] == ["clara"]
    with pytest.raises(Forbidden):
        await registry.update(auditor, "clara", ServiceChange(name="x"))
    with pytest.raises(Forbidden):
        await registry.register(Principal("api", "token:cm", alpha_id, "cert_manager"),
                                ServiceSpec("Z", "z"))
    with pytest.raises(Forbidden):
        await registry.list_services(Principal("api", "token:cs", alpha_id, "code_signer"))
    with pytest.raises(Forbidden):
        await registry.policy(Principal("api", "token:cs", alpha_id, "code_signer"))
    assert await _denials(orgs) == before + 8


async def test_a_service_acts_for_itself_only(orgs: Services) -> None:
    registry, alpha = orgs.registry, await orgs.authority.organization("alpha")
    robot = Principal("api", "token:robot", alpha.org_id, "service_account")
    other_robot = Principal("api", "token:robot2", alpha.org_id, "service_account")
    mine = await registry.register(robot, ServiceSpec("Covina", "covina", "orchestrator"))
    with pytest.raises(Conflict):  # one service per service credential
        await registry.register(robot, ServiceSpec("Second", "second"))
    await registry.register(other_robot, ServiceSpec("Veritas", "veritas"))
    assert [s.slug for s in (await registry.list_services(robot)).items] == ["covina"]
    beat = await registry.heartbeat(robot, "covina", "healthy", "3.1")
    assert (beat.health_status, beat.reported_version) == ("healthy", "3.1")
    before = await _denials(orgs)
    for act in (registry.get(robot, "veritas"),
                registry.heartbeat(robot, "veritas", "unhealthy"),
                registry.update(robot, "veritas", ServiceChange(name="taken")),
                registry.certificate(robot, "veritas"),
                registry.issue_certificate(robot, "veritas", make_csr("v.alpha.test",
                                                                      ("v.alpha.test",))),
                registry.renew_certificate(robot, "veritas")):
        with pytest.raises(NotFound):
            await act
    assert await _denials(orgs) == before + 6
    assert (await registry.get(SYSTEM, "veritas", "alpha")).name == "Veritas"
    assert (await registry.get(robot, "covina")).service_id == mine.service_id


async def test_one_active_certificate_and_renewal_state(orgs: Services,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    registry = orgs.registry
    robot = Principal("api", "token:robot", (await orgs.authority.organization("alpha")
                                              ).org_id, "service_account")
    await registry.register(robot, ServiceSpec("Clara", "clara"))
    assert (await registry.get(robot, "clara")).active_cert_id is None
    with pytest.raises(NotFound):
        await registry.certificate(robot, "clara")
    with pytest.raises(Conflict):
        await registry.renew_certificate(robot, "clara")
    with pytest.raises(BadRequest):
        await registry.issue_certificate(robot, "clara", b"not a csr")
    key = make_key()
    first = await registry.issue_certificate(
        robot, "clara", make_csr("clara.alpha.test", ("clara.alpha.test",), key=key))
    assert first.record.profile == "mtls_service"
    assert first.record.requester == "token:robot"
    second = await registry.renew_certificate(robot, "clara")
    assert second.certificate.public_key() == first.certificate.public_key()
    service = await registry.get(robot, "clara")
    assert service.active_cert_id == second.record.cert_id
    assert (await registry.certificate(robot, "clara")).cert_id == second.record.cert_id
    old = await orgs.store.get_certificate_by_id(first.record.cert_id)
    assert old is not None and old.status == "active"  # superseded, still valid
    # each certificate authenticates as the service (a service account acting for it)
    for issued in (first, second):
        der = issued.certificate.public_bytes(serialization.Encoding.DER)
        acting = await orgs.authority.authenticate_certificate([der])
        assert await orgs.store.service_of_actor(acting.actor_id) == service.service_id

    def state_at(days: float) -> str:
        now = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
        monkeypatch.setattr(orgs.authority, "clock", lambda: now)
        from ca_core.services import renewal_state
        return renewal_state(service, now, registry.due_days)

    assert state_at(0) == "ok"
    assert state_at(70) == "due"  # 90-day certificate
    assert [s.slug for s in await registry.due(SYSTEM, 30)] == ["clara"]
    assert state_at(91) == "expired"
    monkeypatch.undo()
    assert await registry.due(SYSTEM, 30) == []
    await orgs.authority.revoke(second.serial, "keyCompromise", SYSTEM)
    revoked = await registry.get(robot, "clara")
    from ca_core.services import renewal_state
    assert renewal_state(revoked, dt.datetime.now(dt.UTC), 30) == "none"
    with pytest.raises(Conflict):
        await registry.renew_certificate(robot, "clara")


async def test_heartbeat_audits_changes_only(orgs: Services) -> None:
    registry = orgs.registry
    await registry.register(SYSTEM, ServiceSpec("Argus", "argus", organization="alpha"))

    async def changes() -> int:
        return sum(e.event.event_type == "service.health_changed"
                   for e in await orgs.store.audit_entries())

    for status in ("healthy", "healthy", "healthy", "degraded", "degraded"):
        await registry.heartbeat(SYSTEM, "argus", status, organization="alpha")
    assert await changes() == 2
    with pytest.raises(BadRequest):
        await registry.heartbeat(SYSTEM, "argus", "fine", organization="alpha")
    with pytest.raises(BadRequest):
        await registry.heartbeat(SYSTEM, "argus", "healthy", "x" * 51, organization="alpha")


async def test_rest_routes(orgs: Services, aiohttp_client: ClientFactory) -> None:
    await _rest_routes(orgs, aiohttp_client)


@pytest.mark.postgres
async def test_rest_routes_on_postgresql(tmp_path: Path, aiohttp_client: ClientFactory
                                         ) -> None:
    from tests.helpers import fresh_services
    from tests.pg import create_throwaway_database, drop_database, require_postgres

    require_postgres()
    dsn = await create_throwaway_database()
    try:
        async with fresh_services(tmp_path, VCC_PKI_DATABASE_URL=dsn) as services:
            for slug in ("alpha", "beta"):
                await ensure_organization(services.authority, slug, slug.title(), SYSTEM)
            await _rest_routes(services, aiohttp_client)
    finally:
        await drop_database(dsn)


async def _rest_routes(orgs: Services, aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(build_https_app(orgs))
    admin = _auth(await _token(orgs, "alpha", "pki_admin"))
    robot = _auth(await _token(orgs, "alpha", "service_account"))
    beta_admin = _auth(await _token(orgs, "beta", "pki_admin"))

    created = await client.post("/api/v1/services", headers=robot, json={
        "name": "Clara", "slug": "clara", "type": "processor",
        "endpoints": ["https://clara.alpha.test"], "metadata": {"a": 1}})
    assert created.status == 201, await created.text()
    assert created.headers["Location"] == "/api/v1/services/clara"
    body = await created.json()
    assert (body["renewal_state"], body["certificate"]) == ("none", None)
    for bad in ({"name": "x"}, {"name": "x", "slug": 5}, {"name": "x", "slug": "y",
                                                           "type": "db"},
                {"name": "x", "slug": "y", "endpoints": "https://a"},
                {"name": "x", "slug": "y", "endpoints": [1]},
                {"name": "x", "slug": "y", "metadata": []}):
        answer = await client.post("/api/v1/services", headers=admin, json=bad)
        assert answer.status == 400, bad
        assert answer.content_type == "application/problem+json"
    for raw in ('{"name": "x", "slug": "y", "metadata": {"a": "\\u0000"}}',
                '{"name": "x", "slug": "y", "metadata": {"a": "\\ud800"}}',
                '{"name": "x\\ud800", "slug": "y"}',
                '{"name": "x", "slug": "y", "endpoints": ["https://a\\ud800"]}',
                '{"name": "x", "slug": "y", "metadata": {"a": NaN}}'):
        answer = await client.post(
            "/api/v1/services", headers={**admin, "Content-Type": "application/json"},
            data=raw)
        assert answer.status == 400, (raw, await answer.text())
    dup = await client.post("/api/v1/services", headers=admin, json={"name": "C",
                                                                     "slug": "clara"})
    assert dup.status == 409
    assert (await client.post("/api/v1/services", headers=admin, data="x")).status == 415

    listed = await (await client.get("/api/v1/services", headers=admin)).json()
    assert [s["slug"] for s in listed["items"]] == ["clara"] and listed["next"] is None
    assert (await (await client.get("/api/v1/services", headers=beta_admin)).json()
            )["items"] == []
    assert (await client.get("/api/v1/services?organization=alpha",
                             headers=beta_admin)).status == 404
    assert (await client.get("/api/v1/services?cursor=%%%",
                             headers=admin)).status == 400
    assert (await client.get("/api/v1/services?limit=0", headers=admin)).status == 400
    assert (await client.get("/api/v1/services/clara", headers=beta_admin)).status == 404
    assert (await client.get("/api/v1/services/nope", headers=admin)).status == 404

    patched = await client.patch("/api/v1/services/clara", headers=robot,
                                 json={"version": "1.2", "type": "api"})
    assert patched.status == 200 and (await patched.json())["version"] == "1.2"
    assert (await client.patch("/api/v1/services/clara", headers=robot,
                               json={"type": 3})).status == 400
    assert (await client.patch("/api/v1/services/clara", headers=beta_admin,
                               json={"version": "x"})).status == 404
    beat = await client.post("/api/v1/services/clara/heartbeat", headers=robot,
                             json={"status": "degraded", "version": "1.2.1"})
    assert (await beat.json())["health_status"] == "degraded"
    assert (await client.post("/api/v1/services/clara/heartbeat", headers=robot)
            ).status == 200  # no body: healthy
    assert (await client.post("/api/v1/services/clara/heartbeat", headers=robot,
                              json={"status": "sick"})).status == 400

    assert (await client.get("/api/v1/services/clara/certificate", headers=robot)
            ).status == 404
    assert (await client.post("/api/v1/services/clara/certificate/renew", headers=robot)
            ).status == 409
    assert (await client.post("/api/v1/services/clara/certificate", headers=robot,
                              json={"csr": "garbage"})).status == 400
    assert (await client.post("/api/v1/services/clara/certificate", headers=robot,
                              json={})).status == 400
    csr = make_csr("clara.alpha.test", ("clara.alpha.test",)).decode()
    issued = await client.post("/api/v1/services/clara/certificate", headers=robot,
                               json={"csr": csr})
    assert issued.status == 201, await issued.text()
    serial = (await issued.json())["serial"]
    assert (await (await client.get("/api/v1/services/clara/certificate", headers=robot)
                   ).json())["serial"] == serial
    renewed = await client.post("/api/v1/services/clara/certificate/renew", headers=robot,
                                json={"validity_days": 10})
    assert renewed.status == 201, await renewed.text()
    view = await (await client.get("/api/v1/services/clara", headers=admin)).json()
    assert view["certificate"]["serial"] == (await renewed.json())["serial"]
    assert view["renewal_state"] == "due"  # 10 days left
    assert (await client.post("/api/v1/services/clara/certificate", headers=beta_admin,
                              json={"csr": csr})).status == 404

    policy = await client.get("/api/v1/services/policy", headers=robot)
    matrix = (await policy.json())["service_communication_policies"]
    assert matrix["argus"]["can_call"] == ["covina", "clara", "vpb"]
    assert set(matrix) == {"argus", "covina", "clara", "veritas", "vpb"}
    signer = _auth(await _token(orgs, "alpha", "code_signer"))
    assert (await client.get("/api/v1/services/policy", headers=signer)).status == 403
    assert (await client.get("/api/v1/services")).status == 401


def test_cli_bootstrap_twice_list_and_renew(env: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    out = tmp_path / "svc"
    assert main(["service", "bootstrap", "--from", str(DEPLOY), "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert first.count("registered, certificate") == 5
    files = {p: p.read_bytes() for p in sorted(out.rglob("*.pem"))}
    assert {p.parent.name for p in files} == {
        "clara", "covina", "argus", "veritas", "vpb"}
    for slug in ("clara", "vpb"):
        assert stat.S_IMODE((out / slug / "key.pem").stat().st_mode) == 0o600
        cert = x509.load_pem_x509_certificate((out / slug / "cert.pem").read_bytes())
        assert cert.subject.rfc4514_string().startswith(f"CN={slug}.vcc.brandenburg.de")
        assert len(x509.load_pem_x509_certificates((out / slug / "chain.pem").read_bytes())
                   ) >= 2
    assert main(["audit", "export"]) == 0
    audit_before = capsys.readouterr().out.count("\n")

    assert main(["service", "bootstrap", "--from", str(DEPLOY), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count(": unchanged") == 5
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.pem"))} == files
    assert main(["audit", "export"]) == 0
    assert capsys.readouterr().out.count("\n") == audit_before  # nothing new, no issuance

    assert main(["service", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and all(" ok " in line for line in lines[1:])
    assert main(["service", "renew", "--due", "30d", "--out", str(out)]) == 0
    assert "no service certificate ends within 30 days" in capsys.readouterr().out
    assert main(["service", "renew", "--due", "100d", "--out", str(out)]) == 0
    renewed = capsys.readouterr().out
    assert renewed.count(": renewed") == 5
    new_cert = (out / "clara" / "cert.pem").read_bytes()
    assert new_cert != files[out / "clara" / "cert.pem"]
    assert (out / "clara" / "key.pem").read_bytes() == files[out / "clara" / "key.pem"]
    # the renewed certificate is the active one: the next bootstrap leaves it
    assert main(["service", "bootstrap", "--from", str(DEPLOY), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count(": unchanged") == 5
    # a lost key: a new one and a new certificate for that service alone
    (out / "argus" / "key.pem").unlink()
    assert main(["service", "bootstrap", "--from", str(DEPLOY), "--out", str(out)]) == 0
    again = capsys.readouterr().out
    assert "argus: certificate" in again and again.count(": unchanged") == 4


def test_cli_bad_inputs(env: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    cases = {
        "nosans.toml": '[[services]]\nname = "A"\nslug = "a"\n',
        "badtype.toml": '[[services]]\nname = "A"\nslug = "a"\ntype = "db"\nsans = ["a.t"]\n',
        "badslug.json": json.dumps([{"name": "A", "slug": "A B", "sans": ["a.t"]}]),
        "twice.json": json.dumps({"services": [{"name": "A", "slug": "a", "sans": ["a.t"]},
                                               {"name": "B", "slug": "a", "sans": ["b.t"]}]}),
        "broken.toml": "[[services]\n",
        "empty.json": "[]",
        "sansnotlist.json": json.dumps([{"name": "A", "slug": "a", "sans": "a.t"}]),
        "otherorg.json": json.dumps([{"name": "A", "slug": "a", "sans": ["a.t"],
                                      "organization": "nowhere"}]),
    }
    for name, text in cases.items():
        source = tmp_path / name
        source.write_text(text)
        assert main(["service", "bootstrap", "--from", str(source), "--out",
                     str(tmp_path / "o")]) == 1, name
        assert "error:" in capsys.readouterr().err
    assert main(["service", "bootstrap", "--from", str(tmp_path / "missing.toml")]) == 1
    assert main(["service", "renew", "--due", "soon"]) == 1
    assert main(["service", "list"]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # the header: nothing was registered
    assert not (tmp_path / "o").exists()


async def test_expiring_gauge(orgs: Services, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    for slug, days in (("clara", 5), ("covina", 20), ("argus", 60)):
        key = new_service_key(f"{slug}.alpha.test", (f"{slug}.alpha.test",))
        await orgs.registry.register(SYSTEM, ServiceSpec(slug.title(), slug,
                                                         organization="alpha"))
        await orgs.registry.issue_certificate(SYSTEM, slug, key.csr, days, "alpha")
    await orgs.registry.register(SYSTEM, ServiceSpec("VPB", "vpb", organization="beta"))
    await bootstrap_one(orgs, BootstrapEntry(ServiceSpec("VPB", "vpb", organization="beta"),
                                             ("vpb.beta.test",), ()), tmp_path)
    counts = await orgs.registry.expiring()
    assert counts == {
        ("alpha", "clara", 7): 1, ("alpha", "clara", 30): 1, ("alpha", "clara", 90): 1,
        ("alpha", "covina", 7): 0, ("alpha", "covina", 30): 1, ("alpha", "covina", 90): 1,
        ("alpha", "argus", 7): 0, ("alpha", "argus", 30): 0, ("alpha", "argus", 90): 1,
        ("beta", "vpb", 7): 0, ("beta", "vpb", 30): 0, ("beta", "vpb", 90): 1}
    await refresh_expiring_gauge(orgs)

    def sample(org: str, service: str, days: int) -> float | None:
        return PROMETHEUS.get_sample_value("pki_certificates_expiring", {
            "organization": org, "service": service, "days": str(days)})

    assert (sample("alpha", "clara", 7), sample("alpha", "covina", 7),
            sample("alpha", "covina", 30), sample("beta", "vpb", 90)) == (1, 0, 1, 1)
    # the same query as `renew --due`: what is due in 30 days is what the gauge's 30 counts
    due = {s.slug for s in await orgs.registry.due(SYSTEM, 30)}
    assert due == {slug for (_, slug, days), n in counts.items() if days == 30 and n}
    # ten days on: clara has expired (not counted), covina is within 7... no: 10 left
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    monkeypatch.setattr(orgs.authority, "clock", lambda: later)
    await refresh_expiring_gauge(orgs)
    assert sample("alpha", "clara", 7) is None  # ended: gone from the gauge
    assert (sample("alpha", "covina", 7), sample("alpha", "covina", 30)) == (0, 1)


@needs_shim
async def test_service_uses_its_own_certificate_over_mtls(listeners: Listeners,
                                                          tmp_path: Path) -> None:
    services = listeners.services
    await ensure_organization(services.authority, "alpha", "Alpha", SYSTEM)
    out = tmp_path / "bootstrap"
    for slug in ("clara", "covina"):
        await bootstrap_one(services, BootstrapEntry(ServiceSpec(
            slug.title(), slug, organization="alpha"), (f"{slug}.alpha.test",), ()), out)
    key = serialization.load_pem_private_key((out / "clara" / "key.pem").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((out / "clara" / "cert.pem").read_bytes())
    identity: Any = (key, cert)  # a KeyAndCert (the key type is known by its file)
    answer = await curl(listeners, "/api/v1/services/clara/heartbeat", identity,
                        body={"status": "healthy", "version": "9"})
    assert answer.status == 200, answer.body
    assert answer.body["health_status"] == "healthy"
    answer = await curl(listeners, "/api/v1/services/clara", identity)
    assert answer.status == 200 and answer.body["reported_version"] == "9"
    listed = await curl(listeners, "/api/v1/services", identity)
    assert [s["slug"] for s in listed.body["items"]] == ["clara"]
    before = await _denials(services)
    other = await curl(listeners, "/api/v1/services/covina/heartbeat", identity,
                       body={"status": "unhealthy"})
    assert other.status == 404 and other.content_type.startswith("application/problem+json")
    assert await _denials(services) == before + 1
    assert (await services.registry.get(SYSTEM, "covina", "alpha")).health_status is None
    # not on 8443: no client certificate is asked for there
    plain = await curl(listeners, "/api/v1/services/clara", identity,
                       port=listeners.https_port)
    assert plain.status == 401
    assert await _issuances(services) >= 2
