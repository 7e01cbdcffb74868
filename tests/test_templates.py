"""Certificate templates (issue 13): the narrowing rules (ca_core.templates), CRUD over
REST with its bad inputs and refusals, issuance from a template (its narrowed limits
applied, whatever the front-end), and a template seen by a second worker process."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca_core.acme import AcmeService
from ca_core.authority import IssuanceRequest
from ca_core.errors import UnknownProfile, ValidityTooLong
from ca_core.est import EstCredentials, EstLabel, EstService, EstSettings
from ca_core.hierarchy import ensure_organization
from ca_core.org_policy import OrgPolicy
from ca_core.principal import Principal
from ca_core.records import AcmeAccount, AuditEvent
from ca_core.templates import TemplateInvalid, TemplateSpec, narrow
from gateway.app import build_https_app
from gateway.runtime import Services, open_services
from tests.helpers import fresh_services, make_csr, make_key
from tests.pg import create_throwaway_database, drop_database, require_postgres

ClientFactory = Callable[..., Any]
SYSTEM = Principal.system("test")


# --- the narrowing rules ---------------------------------------------------------------

NARROWER: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    # (base, asked, expected fields of the resolved profile)
    ("vcc_service", {}, {"max_validity_days": 397, "default_validity_days": 90,
                         "key_usage": ("digitalSignature", "keyEncipherment")}),
    ("vcc_service", {"key_usage": ["digitalSignature"]}, {"key_usage": ("digitalSignature",)}),
    ("vcc_service", {"extended_key_usage": ["serverAuth"]},
     {"extended_key_usage": ("serverAuth",)}),
    ("vcc_service", {"max_validity_days": 30}, {"max_validity_days": 30,
                                                "default_validity_days": 30}),
    ("vcc_service", {"max_validity_days": 60, "default_validity_days": 7},
     {"default_validity_days": 7}),
    ("vcc_service", {"allowed_keys": ["ec-p256"]}, {"allowed_keys": ("ec-p256",)}),
    ("vcc_service", {"san_types": ["dns"]}, {"san_types": ("dns",)}),
    ("external_integration", {"require_san": True}, {"require_san": True}),
    ("vcc_service", {"require_san": True}, {"require_san": True}),
    ("code_signing", {"allowed_roles": ["code_signer"]}, {"allowed_roles": ("code_signer",)}),
    # a base open to every requesting role: any set of roles narrows it
    ("vcc_service", {"allowed_roles": ["service_account"]},
     {"allowed_roles": ("service_account",)}),
    ("admin", {"description": "ops admins"}, {"description": "ops admins"}),
]

WIDER: list[tuple[dict[str, Any], str, str]] = [
    # (asked, field named in the error, part of the message)
    ({"key_usage": ["digitalSignature", "cRLSign"]}, "key_usage", "'cRLSign' is not in"),
    ({"key_usage": ["fly"]}, "key_usage", "unknown"),
    ({"key_usage": []}, "key_usage", "at least one"),
    ({"extended_key_usage": ["codeSigning"]}, "extended_key_usage", "not in the base"),
    ({"extended_key_usage": []}, "extended_key_usage", "at least one"),
    ({"max_validity_days": 398}, "max_validity_days", "from 1 to 397"),
    ({"max_validity_days": 0}, "max_validity_days", "from 1 to 397"),
    ({"max_validity_days": 30, "default_validity_days": 31}, "default_validity_days",
     "from 1 to 30"),
    ({"allowed_keys": ["rsa-1024"]}, "allowed_keys", "unknown key type"),
    ({"allowed_keys": []}, "allowed_keys", "at least one"),
    ({"san_types": ["email"]}, "san_types", "not in the base"),
    ({"san_types": []}, "require_san", "no san_types"),
    ({"require_san": False}, "require_san", "requires a SAN"),
    ({"allowed_roles": ["root"]}, "allowed_roles", "unknown"),
    ({"description": "x" * 501}, "description", "at most 500"),
    ({"status": "paused"}, "status", "active, disabled"),
    ({"base": "ocsp_signing"}, "base", "cannot be a base"),
    ({"base": "scep_ra"}, "base", "cannot be a base"),
    ({"base": "timestamp_authority"}, "base", "cannot be a base"),
    ({"base": "no_such"}, "base", "cannot be a base"),
    ({"base": None}, "base", "required"),
    ({"base": "code_signing", "allowed_roles": ["service_account"]}, "allowed_roles",
     "not in the base"),
    ({"base": "code_signing", "allowed_roles": []}, "allowed_roles", "at least one"),
    ({"base": "code_signing", "allowed_keys": ["rsa-2048"]}, "allowed_keys", "not in"),
]


@pytest.mark.parametrize(("base", "asked", "expected"), NARROWER)
def test_a_template_may_narrow_its_base(base: str, asked: dict[str, Any],
                                        expected: dict[str, Any]) -> None:
    profile = narrow("narrow", TemplateSpec.parse({"base": base, **asked}), OrgPolicy())
    assert profile.name == "narrow" and profile.base == base and not profile.internal_only
    for field, value in expected.items():
        assert getattr(profile, field) == value, field


@pytest.mark.parametrize(("asked", "field", "message"), WIDER)
def test_a_template_never_widens_its_base(asked: dict[str, Any], field: str,
                                          message: str) -> None:
    with pytest.raises(TemplateInvalid, match=message) as caught:
        narrow("wide", TemplateSpec.parse({"base": "vcc_service", **asked}), OrgPolicy())
    assert caught.value.field == field and caught.value.detail.startswith(f"{field}: ")


def test_names_policy_and_input_types() -> None:
    spec = TemplateSpec(base="vcc_service")
    for name in ("vcc_service", "admin", "ocsp_signing"):  # built-ins are never shadowed
        with pytest.raises(TemplateInvalid, match="built-in"):
            narrow(name, spec, OrgPolicy())
    for name in ("", "Upper", "-lead", "a" * 64, "sp ace", "nul\x00"):
        with pytest.raises(TemplateInvalid, match="lowercase"):
            narrow(name, spec, OrgPolicy())
    # the organization's policy is a limit too: its maximum validity, its profiles
    policy = OrgPolicy(max_validity_days=30)
    assert narrow("short", spec, policy).max_validity_days == 30
    with pytest.raises(TemplateInvalid, match="policy maximum") as caught:
        narrow("long", TemplateSpec(base="vcc_service", max_validity_days=31), policy)
    assert caught.value.field == "max_validity_days"
    with pytest.raises(TemplateInvalid, match="policy allows only") as caught:
        narrow("x", TemplateSpec(base="admin"), OrgPolicy(profiles=("vcc_service",)))
    assert caught.value.field == "base"
    for document, field in (({"base": 1}, "base"), ({"max_validity_days": "9"},
                                                     "max_validity_days"),
                            ({"max_validity_days": True}, "max_validity_days"),
                            ({"require_san": "yes"}, "require_san"),
                            ({"key_usage": "digitalSignature"}, "key_usage"),
                            ({"san_types": [1]}, "san_types"),
                            ({"colour": "red"}, "colour")):
        with pytest.raises(TemplateInvalid) as caught:
            TemplateSpec.parse(document)
        assert caught.value.field == field


# --- REST --------------------------------------------------------------------------------

@pytest.fixture
async def client(services: Services, aiohttp_client: ClientFactory) -> TestClient:
    await ensure_organization(services.authority, "health", "Health", SYSTEM)
    await ensure_organization(services.authority, "other", "Other", SYSTEM)
    return await aiohttp_client(build_https_app(services))  # type: ignore[no-any-return]


async def _token(services: Services, role: str, org: str = "health") -> dict[str, str]:
    token = (await services.authority.create_token(org, role, principal=SYSTEM)).token
    return {"Authorization": f"Bearer {token}"}


async def _problem(response: Any, status: int, *words: str) -> dict[str, Any]:
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = json.loads(text)
    for word in words:
        assert word in body["detail"], body
    return body


async def _audited(services: Services, event_type: str) -> list[Any]:
    return [e for e in await services.store.audit_entries()
            if e.event.event_type == event_type]


async def test_crud_over_rest(client: TestClient, services: Services) -> None:
    admin = await _token(services, "pki_admin")
    web = {"name": "web-short", "base": "vcc_service", "max_validity_days": 30,
           "organization": "health",
           "allowed_keys": ["ec-p256"], "extended_key_usage": ["serverAuth"],
           "description": "30-day web servers"}
    created = await client.post("/api/v1/templates", headers=admin, json=web)
    assert created.status == 201, await created.text()
    assert created.headers["Location"] == "/api/v1/templates/web-short?organization=health"
    body = await created.json()
    health = await services.authority.organization("health")
    assert body["organization_id"] == health.org_id and body["base"] == "vcc_service"
    assert body["builtin"] is False and body["read_only"] is False
    assert body["max_validity_days"] == 30 and body["default_validity_days"] == 30
    assert body["created_by"].startswith("token:") and body["status"] == "active"
    [event] = await _audited(services, "template.created")
    assert event.event.org_id == health.org_id and event.event.data["name"] == "web-short"

    await _problem(await client.post("/api/v1/templates", headers=admin, json=web), 409,
                   "exists")
    got = await (await client.get("/api/v1/templates/web-short", headers=admin)).json()
    assert got == body
    # a list: built-ins and this organization's, pages by cursor
    listed = await (await client.get("/api/v1/templates", headers=admin)).json()
    names = [t["name"] for t in listed["items"]]
    assert "vcc_service" in names and "web-short" in names and listed["next"] is None
    first = await (await client.get("/api/v1/templates", headers=admin,
                                    params={"limit": "2"})).json()
    assert len(first["items"]) == 2 and first["next"]
    rest = await (await client.get("/api/v1/templates", headers=admin,
                                   params={"cursor": first["next"], "limit": "500"})).json()
    assert [t["name"] for t in first["items"] + rest["items"]] == names

    changed = await client.put("/api/v1/templates/web-short", headers=admin,
                               json={"max_validity_days": 14, "description": "two weeks"})
    assert changed.status == 200, await changed.text()
    after = await changed.json()
    assert (after["max_validity_days"], after["default_validity_days"]) == (14, 14)
    assert after["allowed_keys"] == ["ec-p256"]  # what the update does not name is kept
    assert after["description"] == "two weeks"
    assert len(await _audited(services, "template.updated")) == 1
    await _problem(await client.put("/api/v1/templates/web-short", headers=admin,
                                    json={"max_validity_days": 400}), 400,
                   "max_validity_days", "397")
    await _problem(await client.put("/api/v1/templates/web-short", headers=admin,
                                    json={"extended_key_usage": ["codeSigning"]}), 400,
                   "extended_key_usage")

    # bad inputs: problem+json 400 naming what is wrong, never a 500
    for bad, words in (({"base": "vcc_service"}, ("'name' is required",)),
                       ({"name": 5, "base": "vcc_service"}, ("'name' must be a str",)),
                       ({"name": "x1"}, ("base", "required")),
                       ({"name": "x2", "base": "vcc_service", "colour": 1},
                        ("colour", "unknown field")),
                       ({"name": "x3", "base": "vcc_service", "key_usage": "all"},
                        ("key_usage",)),
                       ({"name": "Bad Name", "base": "vcc_service"}, ("name",)),
                       ({"name": "vcc_service", "base": "vcc_service"}, ("built-in",)),
                       ({"name": "x4", "base": "scep_ra"}, ("cannot be a base",)),
                       ({"name": "x5", "base": "vcc_service", "max_validity_days": 10**20},
                        ("max_validity_days",))):
        await _problem(await client.post("/api/v1/templates", headers=admin, json=bad), 400,
                       *words)
    await _problem(await client.post("/api/v1/templates", headers=admin, data=b"{",
                                     ), 415)
    await _problem(await client.post("/api/v1/templates", headers={
        **admin, "Content-Type": "application/json"}, data=b"[1]"), 400, "object")
    await _problem(await client.put("/api/v1/templates/web-short", headers={
        **admin, "Content-Type": "application/json"}, data=b"{bad"), 400, "JSON")
    await _problem(await client.get("/api/v1/templates/nope", headers=admin), 404)
    await _problem(await client.get("/api/v1/templates/a%00b", headers=admin), 404)
    await _problem(await client.get("/api/v1/templates", headers=admin,
                                    params={"cursor": "!!"}), 400, "cursor")

    # built-ins are read-only: 409 (the caller may manage templates; a built-in is code)
    await _problem(await client.put("/api/v1/templates/vcc_service", headers=admin,
                                    json={"max_validity_days": 30}), 409, "built-in")
    await _problem(await client.delete("/api/v1/templates/admin", headers=admin), 409,
                   "built-in")

    deleted = await client.delete("/api/v1/templates/web-short", headers=admin)
    assert deleted.status == 200 and (await deleted.json())["name"] == "web-short"
    assert len(await _audited(services, "template.deleted")) == 1
    await _problem(await client.get("/api/v1/templates/web-short", headers=admin), 404)
    await _problem(await client.delete("/api/v1/templates/web-short", headers=admin), 404)
    await _problem(await client.post("/api/v1/certificates", headers=admin, json={
        "csr": make_csr(cn="a.health.test", dns=("a.health.test",)).decode(),
        "template": "web-short"}), 400, "web-short")


async def test_who_may_read_and_write(client: TestClient, services: Services) -> None:
    """cert_manager and auditor read (template:read) and may not write (403, audited);
    another organization's template is 404 (audited); only a super admin writes global
    templates, which every organization then sees (its own of the same name first)."""
    admin, other_admin = await _token(services, "pki_admin"), await _token(
        services, "pki_admin", "other")
    assert (await client.post("/api/v1/templates", headers=admin, json={
        "name": "mine", "base": "vcc_service"})).status == 201
    for role in ("cert_manager", "auditor"):
        reader = await _token(services, role)
        assert (await client.get("/api/v1/templates/mine", headers=reader)).status == 200
        before = len(await _audited(services, "certificate_template.denied"))
        await _problem(await client.post("/api/v1/templates", headers=reader, json={
            "name": "theirs", "base": "vcc_service"}), 403)
        await _problem(await client.put("/api/v1/templates/mine", headers=reader,
                                        json={"description": "x"}), 403)
        await _problem(await client.delete("/api/v1/templates/mine", headers=reader), 403)
        assert len(await _audited(services, "certificate_template.denied")) == before + 3
    service = await _token(services, "service_account")
    await _problem(await client.get("/api/v1/templates/mine", headers=service), 403)

    before = len(await _audited(services, "certificate_template.denied"))
    await _problem(await client.get("/api/v1/templates/mine", headers=other_admin), 404)
    await _problem(await client.delete("/api/v1/templates/mine", headers=other_admin), 404)
    await _problem(await client.get("/api/v1/templates/mine", headers=other_admin,
                                    params={"organization": "health"}), 404)
    assert len(await _audited(services, "certificate_template.denied")) == before + 2
    assert len(await _audited(services, "organization.denied")) >= 1

    root = await _token(services, "pki_super_admin", "default")
    made = await client.post("/api/v1/templates", headers=root, json={
        "name": "fleet", "base": "vcc_service", "max_validity_days": 60})
    assert made.status == 201 and (await made.json())["organization_id"] is None
    for headers in (admin, other_admin):  # a global template: everyone's to read
        seen = await (await client.get("/api/v1/templates/fleet", headers=headers)).json()
        assert seen["max_validity_days"] == 60
    await _problem(await client.put("/api/v1/templates/fleet", headers=admin,
                                    json={"description": "mine now"}), 403, "super admin")
    # the organization's own template of that name comes first, for it alone
    assert (await client.post("/api/v1/templates", headers=admin, json={
        "name": "fleet", "base": "vcc_service", "max_validity_days": 10})).status == 201
    ours = await (await client.get("/api/v1/templates/fleet", headers=admin)).json()
    theirs = await (await client.get("/api/v1/templates/fleet", headers=other_admin)).json()
    assert (ours["max_validity_days"], theirs["max_validity_days"]) == (10, 60)
    csr = make_csr(cn="n.example.test", dns=("n.example.test",)).decode()
    for headers, days in ((admin, 10), (other_admin, 60)):
        issued = await client.post("/api/v1/certificates", headers=headers, json={
            "csr": csr, "template": "fleet"})
        assert issued.status == 201, await issued.text()
        cert = await issued.json()
        lifetime = (dt.datetime.fromisoformat(cert["not_after"])
                    - dt.datetime.fromisoformat(cert["not_before"]))
        assert dt.timedelta(days=days) <= lifetime <= dt.timedelta(days=days, minutes=6)
        assert cert["profile"] == "fleet"
    # the super admin names the organization to reach its template
    scoped = await (await client.get("/api/v1/templates/fleet", headers=root,
                                     params={"organization": "health"})).json()
    assert scoped["max_validity_days"] == 10
    deleted = await client.delete("/api/v1/templates/fleet", headers=root,
                                  params={"organization": "health"})
    assert deleted.status == 200
    ours = await (await client.get("/api/v1/templates/fleet", headers=admin)).json()
    assert ours["organization_id"] is None  # the global one again


async def test_issuance_applies_the_narrowed_limits(client: TestClient,
                                                    services: Services) -> None:
    admin = await _token(services, "pki_admin")
    assert (await client.post("/api/v1/templates", headers=admin, json={
        "name": "tight", "base": "vcc_service", "max_validity_days": 20,
        "default_validity_days": 5, "allowed_keys": ["ec-p384"],
        "extended_key_usage": ["serverAuth"], "key_usage": ["digitalSignature"]}
    )).status == 201
    p384 = make_key("ec-p384")
    csr = make_csr(cn="t.health.test", dns=("t.health.test",), key=p384).decode()
    issued = await client.post("/api/v1/certificates", headers=admin, json={
        "csr": csr, "template": "tight"})
    assert issued.status == 201, await issued.text()
    body = await issued.json()
    assert body["profile"] == "tight"
    certificate = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert dt.timedelta(days=5) <= lifetime <= dt.timedelta(days=5, minutes=6)
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment
    # "profile" and "template" are one field under two names
    same = await client.post("/api/v1/certificates", headers=admin, json={
        "csr": csr, "profile": "tight", "template": "tight", "validity_days": 20})
    assert same.status == 201, await same.text()
    await _problem(await client.post("/api/v1/certificates", headers=admin, json={
        "csr": csr, "profile": "vcc_service", "template": "tight"}), 400, "not two")
    await _problem(await client.post("/api/v1/certificates", headers=admin, json={
        "csr": csr, "template": "tight", "validity_days": 21}), 400, "20 days")
    p256 = make_csr(cn="t.health.test", dns=("t.health.test",)).decode()
    await _problem(await client.post("/api/v1/certificates", headers=admin, json={
        "csr": p256, "template": "tight"}), 400, "ec-p256")
    await _problem(await client.post("/api/v1/certificates", headers=admin, json={
        "csr": csr, "template": 7}), 400, "'template' must be a str")
    # another organization does not have it
    other = await _token(services, "pki_admin", "other")
    await _problem(await client.post("/api/v1/certificates", headers=other, json={
        "csr": csr, "template": "tight"}), 400, "tight")
    # a disabled template issues nothing; enabled again, it does
    assert (await client.put("/api/v1/templates/tight", headers=admin,
                             json={"status": "disabled"})).status == 200
    await _problem(await client.post("/api/v1/certificates", headers=admin, json={
        "csr": csr, "template": "tight"}), 400, "tight")
    assert (await client.put("/api/v1/templates/tight", headers=admin,
                             json={"status": "active"})).status == 200
    renewed = await client.post(f"/api/v1/certificates/{body['serial']}/renew",
                                headers=admin)
    assert renewed.status == 201 and (await renewed.json())["profile"] == "tight"


async def test_roles_of_a_template(services: Services) -> None:
    """A template's allowed_roles narrow who may request it (refusal audited)."""
    await services.admin.create_template(SYSTEM, "servers-only", TemplateSpec(
        base="vcc_service", allowed_roles=("pki_admin",)), "default")
    org = await services.authority.organization("default")
    manager = Principal("api", "token:m", org.org_id, "cert_manager")
    request = IssuanceRequest(csr=make_csr(), profile="servers-only")
    with pytest.raises(Exception, match="may not request profile servers-only"):
        await services.authority.issue(request, manager)
    assert await _audited(services, "certificate.refused")
    admin = Principal("api", "token:a", org.org_id, "pki_admin")
    assert (await services.authority.issue(request, admin)).record.profile == "servers-only"


async def test_every_front_end_resolves_templates(services: Services) -> None:
    """EST labels, SCEP endpoints and ACME profiles name templates like REST does."""
    await services.admin.create_template(SYSTEM, "routers", TemplateSpec(
        base="vcc_service", max_validity_days=7, allowed_keys=("ec-p256",)), "default")
    org = await services.authority.organization("default")
    est = EstService(services.authority, services.store, EstSettings())
    await est.set_label(EstLabel("edge", org.org_id, "routers"), SYSTEM)
    secret = await est.create_secret("default", "edge", None, None, SYSTEM)
    csr = make_csr(cn="r1.example.test", dns=("r1.example.test",), pem=False)
    enrolled = await est.enroll("edge", csr, EstCredentials(basic_user=secret.user,
                                                            basic_password=secret.password))
    assert enrolled.certificate is not None
    lifetime = enrolled.certificate.not_valid_after_utc \
        - enrolled.certificate.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=7, minutes=6)
    with pytest.raises(Exception, match="does not allow ec-p384"):
        await est.set_label(EstLabel("edge2", org.org_id, "routers", key_type="ec-p384"),
                            SYSTEM)
    endpoint = await services.scep.endpoint(None, "routers")
    assert endpoint.profile == "routers"
    # one resolution for all: the template is the default organization's only
    await ensure_organization(services.authority, "elsewhere", None, SYSTEM)
    elsewhere = await services.authority.organization("elsewhere")
    assert (await services.authority.resolve_profile("routers", org.org_id)).base == \
        "vcc_service"
    with pytest.raises(UnknownProfile):
        await services.authority.resolve_profile("routers", elsewhere.org_id)
    with pytest.raises(Exception, match="no SCEP profile"):
        await services.scep.endpoint("elsewhere", "routers")


# --- a second worker process -------------------------------------------------------------

@pytest.mark.postgres
async def test_a_template_reaches_another_worker(tmp_path: Path) -> None:
    """Two Authorities on one PostgreSQL store (two gateway workers): a template created,
    narrowed or deleted through one applies to the next issuance through the other."""
    require_postgres()
    dsn = await create_throwaway_database()
    try:
        async with fresh_services(tmp_path, VCC_PKI_DATABASE_URL=dsn) as first, \
                open_services(first.config) as second:
            assert second.store.backend == "postgresql"
            await second.authority.load()
            request = IssuanceRequest(csr=make_csr(), profile="short", org="default")
            with pytest.raises(UnknownProfile):
                await second.authority.issue(request, SYSTEM)
            await first.admin.create_template(SYSTEM, "short", TemplateSpec(
                base="vcc_service", max_validity_days=3), "default")
            issued = await second.authority.issue(request, SYSTEM)
            assert issued.record.profile == "short"
            await first.admin.update_template(SYSTEM, "short", TemplateSpec(
                max_validity_days=2), "default")
            with pytest.raises(ValidityTooLong):
                await second.authority.issue(IssuanceRequest(
                    csr=make_csr(), profile="short", org="default", validity_days=3), SYSTEM)
            await first.admin.delete_template(SYSTEM, "short", "default")
            with pytest.raises(UnknownProfile):
                await second.authority.issue(request, SYSTEM)
    finally:
        await drop_database(dsn)



async def test_acme_profiles_may_name_templates(services: Services) -> None:
    """An ACME profile (AcmeSettings.profiles) mapped to a template: a new order resolves it
    for the account's organization, and its requested validity is the template's to limit."""
    await services.admin.create_template(SYSTEM, "acme-short", TemplateSpec(
        base="vcc_service", max_validity_days=10), "default")
    base = services.acme
    acme = AcmeService(services.authority, base.state, base.validator, dataclasses.replace(
        base.settings, profiles=(("tlsserver", "vcc_service"), ("short", "acme-short"))))
    org = await services.authority.organization("default")
    account = AcmeAccount(account_id="tpl-acct", org_id=org.org_id, key_thumbprint="t",
                          jwk={"kty": "EC"}, created_at=dt.datetime.now(dt.UTC))
    await services.store.add_acme_account(account, AuditEvent(
        event_type="acme.account_created", category="acme", action="account_created",
        actor_type="system", actor_id="test", org_id=org.org_id,
        resource_type="acme_account", resource_id=account.account_id))
    names = [{"type": "dns", "value": "a.example.test"}]
    order, _ = await acme.new_order(account, names, None, None, "short", None)
    assert order.profile == "short"
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(ValidityTooLong, match="10 days"):
        await acme.new_order(account, names, None, now + dt.timedelta(days=11), "short",
                             None)
    await services.admin.delete_template(SYSTEM, "acme-short", "default")
    with pytest.raises(UnknownProfile):
        await acme.new_order(account, names, None, None, "short", None)
    await acme.aclose()
