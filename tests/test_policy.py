"""Who may get which certificate (profiles carry the roles that may request them) and
clean names (no control character in any subject attribute or SAN), through the REST API
and the Authority, on SQLite and PostgreSQL alike (issue 10)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ca_core.authority import IssuanceRequest
from ca_core.errors import BadCSR, Forbidden
from ca_core.principal import Principal
from ca_core.profiles import BUILTIN_PROFILES, Profile
from gateway.app import build_http_app, build_https_app
from gateway.runtime import Services
from tests.helpers import fresh_services, make_csr, make_key
from tests.pg import create_throwaway_database, drop_database, require_postgres

ClientFactory = Callable[..., Any]
ADMIN = Principal.system("test")

# The seed's role matrix, as the README states it.
EXPECTED = {
    "timestamp_authority": {"pki_super_admin"},
    "code_signing": {"pki_super_admin", "code_signer", "pki_admin"},
    "admin": {"pki_super_admin", "pki_admin"},
    "vcc_service": {"pki_super_admin", "pki_admin", "cert_manager"},
}


def csr_for(profile: str, cn: str = "unit.example.test",
            email: str | None = None) -> bytes:
    if profile in ("code_signing", "admin"):
        return make_csr(cn=cn, dns=(), emails=(email or "ops@example.test",))
    if profile == "timestamp_authority":
        return make_csr(cn=cn, dns=())
    return make_csr(cn=cn, dns=(cn,) if "\0" not in cn else ("unit.example.test",))


@pytest.fixture
async def client(services: Services, aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(build_https_app(services))  # type: ignore[no-any-return]


@pytest.mark.parametrize("profile", sorted(EXPECTED))
@pytest.mark.parametrize("role", ["pki_super_admin", "pki_admin", "cert_manager",
                                  "code_signer", "service_account", "auditor"])
async def test_profiles_are_for_their_roles(client: TestClient, services: Services,
                                            profile: str, role: str) -> None:
    token = (await services.authority.create_token("default", role, principal=ADMIN)).token
    before = len(await services.store.audit_entries())
    response = await client.post(
        "/api/v1/certificates", headers={"Authorization": f"Bearer {token}"},
        json={"csr": csr_for(profile).decode(), "profile": profile})
    if role in EXPECTED[profile]:
        assert response.status == 201, await response.text()
        return
    if role == "service_account" and profile == "vcc_service":
        assert response.status == 201, await response.text()  # cert:request_own
        return
    assert response.status == 403, await response.text()
    body = json.loads(await response.text())
    assert body["type"] == "urn:vcc-pki:problem:forbidden"
    entries = (await services.store.audit_entries())[before:]
    assert [(e.event.event_type, e.event.status, e.event.resource_id) for e in entries] == [
        ("certificate.refused", "denied", profile)]


def test_stored_definitions_without_roles_keep_the_builtin_roles() -> None:
    tsa = next(p for p in BUILTIN_PROFILES if p.name == "timestamp_authority")
    old = tsa.to_definition()
    del old["allowed_roles"]
    assert Profile.from_definition(old).allowed_roles == ("pki_super_admin",)
    with pytest.raises(ValueError, match="unknown roles"):
        Profile.from_definition({**tsa.to_definition(), "allowed_roles": ["root"]})


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def any_store_services(request: pytest.FixtureRequest, tmp_path: Path
                             ) -> AsyncIterator[Services]:
    if request.param == "sqlite":
        async with fresh_services(tmp_path) as services:
            yield services
        return
    require_postgres()
    dsn = await asyncio.to_thread(asyncio.run, create_throwaway_database())
    try:
        async with fresh_services(tmp_path, VCC_PKI_DATABASE_URL=dsn) as services:
            yield services
    finally:
        await asyncio.to_thread(asyncio.run, drop_database(dsn))


def csr_with_subject_attribute(value: str) -> bytes:
    key = make_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unit.example.test"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, value)])
    return (x509.CertificateSigningRequestBuilder().subject_name(subject)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("unit.example.test")]),
                           critical=False)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize("profile", ["vcc_service", "code_signing", "admin",
                                     "external_integration", "timestamp_authority"])
async def test_control_characters_in_names_are_bad_csr_before_signing(
        any_store_services: Services, profile: str) -> None:
    services = any_store_services
    authority = services.authority
    before = len(await services.store.audit_entries())
    bad = [csr_for(profile, cn="good.example.test\0.evil.test"),
           csr_with_subject_attribute("ops\x1bteam")]
    if profile in ("code_signing", "admin", "external_integration"):
        bad.append(make_csr(cn="unit.example.test", dns=(),
                            emails=("admin\0.evil@example.test",)))
    for csr in bad:
        with pytest.raises(BadCSR, match="control character"):
            await authority.issue(IssuanceRequest(csr, profile), ADMIN)
    assert len(await services.store.audit_entries()) == before  # nothing signed or stored


async def test_a_refused_role_gets_forbidden_from_the_authority(services: Services) -> None:
    manager = Principal("api", "t", None, "cert_manager")
    with pytest.raises(Forbidden, match="timestamp_authority"):
        await services.authority.issue(
            IssuanceRequest(csr_for("timestamp_authority"), "timestamp_authority", "default"),
            manager)


async def test_a_csr_with_an_unknown_curve_is_bad_csr(client: TestClient,
                                                      services: Services) -> None:
    """A P-256 CSR with one byte of the curve OID changed: cryptography raises
    UnsupportedAlgorithm, which was a 500 (REST) and serverInternal (ACME)."""
    der = make_csr(pem=False)
    oid = bytes.fromhex("06082a8648ce3d030107")  # prime256v1
    at = der.index(oid)
    broken = der[:at] + oid[:-1] + b"\x09" + der[at + len(oid):]
    token = (await services.authority.create_token("default", "cert_manager",
                                                   principal=ADMIN)).token
    pem = (b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(broken)
           + b"-----END CERTIFICATE REQUEST-----\n")
    response = await client.post(
        "/api/v1/certificates", headers={"Authorization": f"Bearer {token}"},
        json={"csr": pem.decode(), "profile": "vcc_service"})
    assert response.status == 400, await response.text()
    assert json.loads(await response.text())["type"] == "urn:vcc-pki:problem:bad_csr"


async def test_a_crl_path_holding_a_nul_is_404_on_every_store(
        any_store_services: Services, aiohttp_client: ClientFactory) -> None:
    """PostgreSQL cannot hold a NUL in TEXT: the CA lookup failed as unavailable (503).
    A name the store cannot hold names no CA: 404, as on SQLite."""
    client = await aiohttp_client(build_http_app(any_store_services))
    await any_store_services.crls.publish_all()
    for path in ("/crl/%00.crl", "/crl/%00/1.crl", "/crl/default-issuing%00.pem"):
        response = await client.get(path)
        assert response.status == 404, (path, response.status, await response.text())


@pytest.mark.parametrize(("method", "path", "body", "content_type"), [
    ("POST", "/api/v1/certificates", b"\xff\xfe{}", "application/json"),  # not UTF-8
    ("POST", "/api/v1/certificates", b"{}", "text/plain"),
    ("POST", "/api/v1/certificates", b"not json", "application/json"),
    ("POST", "/api/v1/certificates", b"[]", "application/json"),
    ("POST", "/api/v1/certificates", b'{"csr": 5}', "application/json"),
    ("POST", "/api/v1/certificates", b"{}", "application/json; charset=latin-1"),
    ("GET", "/api/v1/certificates/%ff", None, None),
    ("GET", "/api/v1/certificates/zz", None, None),
    ("GET", "/api/v1/nope", None, None),
    ("DELETE", "/api/v1/certificates", None, None),
    ("POST", "/api/v1/certificates/abc/revoke", b"\xff", "application/json"),
    ("POST", "/api/v1/certificates/abc/revoke", b'{"reason": 7}', "application/json"),
])
async def test_every_api_error_is_problem_json(
        client: TestClient, services: Services, method: str, path: str,
        body: bytes | None, content_type: str | None) -> None:
    token = (await services.authority.create_token("default", "cert_manager",
                                                   principal=ADMIN)).token
    headers = {"Authorization": f"Bearer {token}"}
    if content_type:
        headers["Content-Type"] = content_type
    response = await client.request(method, path, data=body, headers=headers)
    assert 400 <= response.status < 500, response.status
    assert response.content_type == "application/problem+json", await response.text()
    problem = json.loads(await response.text())
    assert problem["status"] == response.status


async def test_a_csr_of_another_version_is_bad_csr(client: TestClient,
                                                   services: Services) -> None:
    """Found by the probe: cryptography raises InvalidVersion (not a ValueError) for a
    CSR whose version INTEGER is not 0; that was a 500."""
    der = make_csr(pem=False)
    version = bytes.fromhex("020100")  # the first INTEGER: the CSR's version, 0
    at = der.index(version)
    broken = der[:at] + bytes.fromhex("020120") + der[at + len(version):]
    pem = (b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(broken)
           + b"-----END CERTIFICATE REQUEST-----\n")
    token = (await services.authority.create_token("default", "cert_manager",
                                                   principal=ADMIN)).token
    response = await client.post(
        "/api/v1/certificates", headers={"Authorization": f"Bearer {token}"},
        json={"csr": pem.decode(), "profile": "vcc_service"})
    assert response.status == 400, await response.text()
    assert json.loads(await response.text())["type"] == "urn:vcc-pki:problem:bad_csr"


def test_who_administers_an_organizations_enrollment() -> None:
    from ca_core.principal import ROLES, Principal

    for role in ROLES:
        own = Principal("api", "t", "org-a", role)
        expected = role in ("pki_super_admin", "pki_admin")
        assert own.administers("org-a") is expected, role
        assert not own.administers("org-b"), role  # never another organization's
    assert Principal.system().administers("org-b")  # org_id None: every organization
    assert not Principal("api", "t", None, "cert_manager").administers("org-a")
