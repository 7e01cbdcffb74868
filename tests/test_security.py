"""Security checks of issue 16 that no other test file makes: JWS key confusion, CSR keys
and extensions, SAN injection, path traversal, timing-safe secret comparison, secrets in
error bodies and logs, and the TLS floor. (Already tested elsewhere: JWS alg none/HS256
with an EC key, jwk and kid together, URL mismatch, nonce replay in
test_acme.test_bad_jws_requests, and across replicas in test_replica_nonces; RSA-1024 and
P-521 CSRs in test_authority; EAB MACs in test_acme.)"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import hmac
import json
import logging
import re
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import josepy
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_core.authority import IssuanceRequest, parse_csr
from ca_core.errors import BadCSR, BadPublicKey, BadRequest, PolicyViolation
from ca_core.hierarchy import ensure_organization
from ca_core.principal import Principal
from conformance.gateway import free_port
from gateway.app import build_est_app, build_http_app, build_https_app
from gateway.runtime import Services
from gateway.server import _ssl_context
from gateway.tls import ensure_server_certificate
from protocols.acme import jws as jose
from protocols.acme.problems import AcmeProblem
from tests.conftest import Pki
from tests.helpers import make_csr

ClientFactory = Callable[..., Any]
ADMIN = Principal.system("test")
ROOT = Path(__file__).parent.parent


def _b64(data: bytes) -> str:
    return jose.b64url(data)


# --- JWS ------------------------------------------------------------------------------------

def _jws(protected: dict[str, Any], signature: Callable[[bytes], bytes]) -> jose.Jws:
    protected_b64 = _b64(json.dumps(protected).encode())
    payload_b64 = _b64(b"{}")
    signing_input = f"{protected_b64}.{payload_b64}".encode()
    return jose.parse(json.dumps({"protected": protected_b64, "payload": payload_b64,
                                  "signature": _b64(signature(signing_input))}).encode())


def test_hmac_keyed_with_the_account_public_key_is_refused() -> None:
    """The classic key confusion: alg HS256 with the server's copy of the public key as the
    MAC key. Each spelling of that key a server might use as bytes is tried."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = josepy.jwk.JWKEC(key=key.public_key()).to_json()
    public = jose.public_key(jwk)
    spellings = [
        key.public_key().public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo),
        key.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo),
        json.dumps(jwk).encode(), json.dumps(jwk, sort_keys=True).encode(),
    ]
    for alg, digest in (("HS256", hashlib.sha256), ("HS384", hashlib.sha384),
                        ("HS512", hashlib.sha512)):
        for secret in spellings:
            forged = _jws({"alg": alg, "jwk": jwk, "nonce": "n", "url": "u"},
                          lambda data, s=secret, d=digest: hmac.new(s, data, d).digest())
            with pytest.raises(AcmeProblem) as refused:
                jose.verify(forged, public)
            assert refused.value.acme_type == "badSignatureAlgorithm"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", None, ["ES256"]])
def test_unsigned_or_odd_algorithms_are_refused(alg: Any) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = jose.public_key(josepy.jwk.JWKEC(key=key.public_key()).to_json())
    with pytest.raises(AcmeProblem) as refused:
        jose.verify(_jws({"alg": alg, "nonce": "n", "url": "u"}, lambda data: b""), public)
    assert refused.value.acme_type == "badSignatureAlgorithm"


# --- CSR policy -------------------------------------------------------------------------------

def _raw_csr(key: ec.EllipticCurvePrivateKey, extensions: list[dict[str, Any]]) -> bytes:
    """A PKCS#10 request with exactly these extensions (cryptography's builder refuses a
    duplicate, so asn1crypto spells it), signed by ``key``."""
    public = asn1_keys.PublicKeyInfo.load(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    info = asn1_csr.CertificationRequestInfo({
        "version": "v1",
        "subject": asn1_csr.Name.build({"common_name": "device.test"}),
        "subject_pk_info": public,
        "attributes": [{"type": "extension_request", "values": [extensions]}],
    })
    signature = key.sign(info.dump(), ec.ECDSA(hashes.SHA256()))
    return bytes(asn1_csr.CertificationRequest({
        "certification_request_info": info,
        "signature_algorithm": {"algorithm": "sha256_ecdsa"},
        "signature": signature,
    }).dump())


def _san(name: str) -> dict[str, Any]:
    return {"extn_id": "subject_alt_name", "critical": False,
            "extn_value": asn1_x509.GeneralNames([asn1_x509.GeneralName(
                name="dns_name", value=name)])}


def test_duplicate_csr_extension_is_bad_csr() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(BadCSR, match="twice"):
        parse_csr(_raw_csr(key, [_san("a.test"), _san("b.test")]))


async def test_unknown_critical_csr_extension_never_reaches_the_certificate(pki: Pki) -> None:
    """A requested extension the CA does not know, marked critical: the CA builds the
    certificate from its profile and copies only the names; nothing else of the request."""
    key = ec.generate_private_key(ec.SECP256R1())
    unknown = {"extn_id": "1.3.6.1.4.1.99999.1", "critical": True,
               "extn_value": b"\x04\x02hi"}
    der = _raw_csr(key, [_san("device.test"), unknown])
    issued = await pki.authority.issue(IssuanceRequest(csr=der, profile="vcc_service"), ADMIN)
    certificate = x509.load_der_x509_certificate(issued.record.certificate_der)
    oids = {e.oid.dotted_string for e in certificate.extensions}
    assert "1.3.6.1.4.1.99999.1" not in oids


async def test_csr_key_policy(pki: Pki) -> None:
    # secp256k1: a curve cryptography reads but no profile allows
    odd_curve = make_csr(key=ec.generate_private_key(ec.SECP256K1()))
    with pytest.raises((BadPublicKey, BadCSR)):
        await pki.authority.issue(IssuanceRequest(csr=odd_curve, profile="vcc_service"), ADMIN)
    good = bytearray(x509.load_pem_x509_csr(make_csr()).public_bytes(serialization.Encoding.DER))
    good[-3] ^= 0x01  # inside the signature
    with pytest.raises(BadCSR):
        await pki.authority.issue(IssuanceRequest(csr=bytes(good), profile="vcc_service"),
                                  ADMIN)


# --- SAN injection ----------------------------------------------------------------------------

def _csr_with(*names: x509.GeneralName) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
            .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


# The Authority refuses control characters in any name of a request (BadCSR) before the
# profile's SAN check (PolicyViolation), which refuses them too since issue 16 for names
# that do not come from a CSR: both are the 400 of each protocol.
@pytest.mark.parametrize("name", [
    x509.DNSName("a.test\n"),
    x509.DNSName("a\x00.test"),
    x509.DNSName("*.*.a.test"), x509.DNSName("a.*.test"), x509.DNSName("*.test"),
    x509.DNSName("*"), x509.DNSName("a.test.*"),
    x509.UniformResourceIdentifier("urn:x\x00evil"),
    x509.UniformResourceIdentifier("https://a.test/\r\nX-Injected: 1"),
    x509.UniformResourceIdentifier("https://a.test/ x"),
], ids=repr)
async def test_san_injection_and_misplaced_wildcards_are_refused(
        pki: Pki, name: x509.GeneralName) -> None:
    with pytest.raises(BadRequest):
        await pki.authority.issue(IssuanceRequest(csr=_csr_with(name), profile="vcc_service"),
                                  ADMIN)


def test_san_check_refuses_control_characters_itself() -> None:
    """x509build.check_sans, whatever the source of the names: "$" in its patterns matched
    before a final newline ("a.test\n" passed), and e-mail addresses and URIs could hold
    NULs and control characters."""
    import dataclasses

    from ca_core.profiles import BUILTIN_PROFILES
    from ca_core.x509build import SubjectAltNames, check_sans

    every = dataclasses.replace(BUILTIN_PROFILES[0], name="every",
                                san_types=("dns", "email", "uri"))
    refused = [SubjectAltNames(dns=("a.test\n",)), SubjectAltNames(dns=("a.test\x00",))]
    refused += [SubjectAltNames(email=(address,)) for address in (
        "a\x00@b.test", "a@b.test\n", "a@b.test\x00@evil.test", "a@b\x7f.test")]
    refused += [SubjectAltNames(uri=(uri,)) for uri in (
        "urn:x\x00evil", "https://a.test/\n", "https://a.test/\r\nX: 1", "urn:a b")]
    for sans in refused:
        with pytest.raises(PolicyViolation):
            check_sans(sans, every)
    check_sans(SubjectAltNames(dns=("*.a.test",), email=("o.p+q@b.test",),
                               uri=("https://a.test/x?y=1#z",)), every)


# --- path traversal ---------------------------------------------------------------------------

TRAVERSALS = [
    "/crl/..%2F..%2Fpassphrase.crl", "/crl/%2e%2e%2f%2e%2e%2fetc%2fpasswd.crl",
    "/crl/../../passphrase", "/crl/..%2Fkeys/1.crl", "/crl/%00.crl",
    "/ca/..%2Fpassphrase.pem", "/ca/..%2F..%2Fetc%2Fpasswd.pem", "/ca/%2e%2e.pem",
    "/scep/..%2F..%2Fdefault?operation=GetCACaps", "/tsa/..%2Fchain.pem",
]


async def test_path_traversal_finds_nothing(services: Services,
                                            aiohttp_client: ClientFactory) -> None:
    client: TestClient = await aiohttp_client(build_http_app(services))
    passphrase = services.config.key_passphrase
    for path in TRAVERSALS:
        response = await client.get(path)
        body = await response.read()
        assert response.status in (400, 404), (path, response.status)
        assert passphrase.encode() not in body and b"root:" not in body
        assert b"PRIVATE KEY" not in body


@pytest.mark.parametrize("slug", ["../evil", "a/b", "acme\n", "..", "acme%2F..", "a\\b"])
async def test_organization_slugs_cannot_name_paths(
        services: Services, aiohttp_client: ClientFactory, slug: str) -> None:
    client: TestClient = await aiohttp_client(build_https_app(services))
    token = (await services.authority.create_token("default", "pki_super_admin",
                                                   principal=ADMIN)).token
    response = await client.post("/api/v1/organizations", json={"slug": slug},
                                 headers={"Authorization": f"Bearer {token}"})
    assert response.status == 400, await response.text()
    with pytest.raises(BadRequest):
        await ensure_organization(services.authority, slug)


async def test_est_label_traversal_finds_nothing(services: Services,
                                                 aiohttp_client: ClientFactory) -> None:
    client: TestClient = await aiohttp_client(
        build_est_app(services, services.est, services.est.settings))
    for label in ("..", "%2E%2E", "..%2F..", "%2e%2e%2fkeys", "x%00", "x%0A"):
        response = await client.get(f"/.well-known/est/{label}/cacerts")
        assert response.status in (400, 404), (label, response.status)
        assert b"PRIVATE KEY" not in await response.read()


def test_est_labels_cannot_name_paths() -> None:
    from ca_core.est import _LABEL

    for label in ("..", "../x", "x/..", "x\n", ".hidden", "a\\b", "a%2F"):
        assert not _LABEL.match(label), label
    assert _LABEL.match("router-1.v2")


# --- secrets ----------------------------------------------------------------------------------

_SECRET = re.compile(r"(secret|password|passphrase|pin|pin_mac|hmac_key|mac_key|token_hash|"
                     r"secret_hash|key_fingerprint|challenge_password)$", re.IGNORECASE)


def _terminal_name(node: ast.expr) -> str:
    while isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript):
        return _terminal_name(node.value)
    return ""


def test_secrets_are_compared_in_constant_time() -> None:
    """No == or != has a secret (by its name) on either side in the packages: they go
    through hmac.compare_digest. A new secret named otherwise escapes this test, which is
    why the names are the ones the code base uses."""
    found = []
    for package in ("ca_core", "protocols", "gateway", "db", "va"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Compare) or not any(
                        isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                    continue
                for operand in (node.left, *node.comparators):
                    if _SECRET.search(_terminal_name(operand)):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                                     f"{ast.unparse(node)}")
    assert found == []
    sources = "".join((ROOT / f).read_text() for f in (
        "ca_core/authority.py", "ca_core/est.py", "ca_core/scep.py",
        "ca_core/signers/pkcs11.py"))
    assert sources.count("hmac.compare_digest(") >= 8  # tokens, EST, SCEP, PIN


async def test_secrets_stay_out_of_error_bodies_and_logs(
        services: Services, aiohttp_client: ClientFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client: TestClient = await aiohttp_client(build_https_app(services))
    token = (await services.authority.create_token("default", "cert_manager",
                                                   principal=ADMIN)).token
    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    bodies = []
    for value in (wrong, token + "x", "x" * 10 + token):
        response = await client.get("/api/v1/certificates",
                                    headers={"Authorization": f"Bearer {value}"})
        assert response.status == 401
        bodies.append(await response.text())
    ok = await client.post("/api/v1/certificates", headers={"Authorization": f"Bearer {token}"},
                           json={"csr": make_csr().decode(), "profile": "vcc_service"})
    assert ok.status == 201
    bad = await client.post("/api/v1/certificates", headers={"Authorization": f"Bearer {token}"},
                            json={"csr": "garbage " + token, "profile": "vcc_service"})
    assert bad.status == 400
    bodies.append(await bad.text())
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    passphrase = services.config.key_passphrase
    for secret in (token, wrong, passphrase, token.split(".")[-1]):
        assert secret not in logged
        assert all(secret not in body for body in bodies)


# --- TLS --------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
async def test_tls_below_1_2_is_refused(services: Services) -> None:
    await ensure_server_certificate(services)
    context = _ssl_context(services)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    app = web.Application()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        def handshake(*flags: str) -> subprocess.CompletedProcess[str]:
            # SECLEVEL=0 on the client: if the handshake fails, the server refused it.
            return subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                 "localhost", "-cipher", "DEFAULT@SECLEVEL=0", *flags],
                input="", capture_output=True, text=True, timeout=30)

        for old in ("-tls1", "-tls1_1"):
            result = await asyncio.to_thread(handshake, old)
            assert result.returncode != 0, result.stdout
            assert "BEGIN CERTIFICATE" not in result.stdout
            assert "no cipher match" not in result.stderr  # the client did offer it
        weak = await asyncio.to_thread(handshake, "-tls1_2", "-cipher",
                                       "RC4:DES:3DES:NULL:EXPORT:aNULL:MD5@SECLEVEL=0")
        assert weak.returncode != 0, weak.stdout
        assert "no cipher match" not in weak.stderr
        good = await asyncio.to_thread(handshake, "-tls1_2")
        assert good.returncode == 0 and "Protocol  : TLSv1.2" in good.stdout, good.stdout
    finally:
        await runner.cleanup()


async def test_est_secrets_stay_out_of_error_bodies_and_logs(
        services: Services, aiohttp_client: ClientFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    import base64

    caplog.set_level(logging.DEBUG)
    client: TestClient = await aiohttp_client(
        build_est_app(services, services.est, services.est.settings))
    created = await services.est.create_secret("default", "", None, None, ADMIN)
    csr = base64.b64encode(x509.load_pem_x509_csr(make_csr()).public_bytes(
        serialization.Encoding.DER))
    wrong = created.password[:-2] + ("xy" if not created.password.endswith("xy") else "zz")
    bodies = []
    for user, password in ((created.user, wrong), (created.user, created.password),
                           (created.user, created.password), ("nobody", created.password)):
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        response = await client.post("/.well-known/est/simpleenroll", data=csr, headers={
            "Content-Type": "application/pkcs10", "Authorization": f"Basic {basic}"})
        assert response.status in (200, 401), await response.text()
        if response.status != 200:
            bodies.append(await response.text())
    assert len(bodies) == 3  # wrong, spent, unknown user
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    for secret in (created.password, wrong):
        assert secret not in logged
        assert all(secret not in body for body in bodies)


def test_software_keys_are_encrypted_and_private(env: Path, tmp_path: Path) -> None:
    """Issue 16: every software key `vcc-pki init` and `org create` make (CAs, OCSP
    responders, the TSA) is an encrypted PKCS#8 file of mode 0600 in a 0700 directory, and
    cannot be read without the passphrase. Also the HTTPS server key."""
    from gateway.cli import main

    assert main(["init"]) == 0
    assert main(["org", "create", "health"]) == 0
    key_dir = env / "keys"
    assert key_dir.stat().st_mode & 0o777 == 0o700
    files = sorted(key_dir.iterdir())
    assert len(files) >= 6  # root, intermediate, two issuing CAs, their responders, TSA
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o600, path
        pem = path.read_bytes()
        assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"), path
        with pytest.raises(TypeError):  # "Password was not given but private key is
            serialization.load_pem_private_key(pem, password=None)  # encrypted"
    server_key = env / "tls" / "server.key"  # the HTTPS listeners' (a file TLS reads)
    assert b"PRIVATE KEY" in server_key.read_bytes()
    assert server_key.stat().st_mode & 0o777 == 0o600


async def test_known_weak_keys_are_refused_when_a_list_is_configured(tmp_path: Path) -> None:
    """Debian-weak keys (CVE-2008-0166) where a list is available: VCC_PKI_WEAK_KEYS_FILE
    in openssl-blacklist's format (the entry computed as `openssl rsa -modulus | sha1sum`
    computes it, checked here against openssl itself). A listed key is badPublicKey;
    another key of the same kind is issued; a broken list is a configuration error."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ca_core.errors import BadPublicKey
    from ca_core.weak_keys import weak_key_fingerprint
    from gateway.config import ConfigError, load_config
    from tests.helpers import fresh_services

    weak, fine = (rsa.generate_private_key(65537, 2048) for _ in range(2))
    key_file = tmp_path / "weak.pem"
    key_file.write_bytes(weak.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.TraditionalOpenSSL,
                                            serialization.NoEncryption()))
    modulus = subprocess.run(["openssl", "rsa", "-noout", "-modulus", "-in", str(key_file)],
                             capture_output=True, check=True).stdout
    assert hashlib.sha1(modulus).hexdigest()[20:] == weak_key_fingerprint(weak.public_key())
    listing = tmp_path / "blacklist.RSA-2048"
    listing.write_text(f"# openssl-blacklist style\n\n{'0' * 20}\n"
                       f"{weak_key_fingerprint(weak.public_key())}\n")
    async with fresh_services(tmp_path, VCC_PKI_WEAK_KEYS_FILE=str(listing)) as services:
        assert len(services.authority.settings.weak_keys) == 2
        with pytest.raises(BadPublicKey, match="known-weak"):
            await services.authority.issue(IssuanceRequest(
                csr=make_csr(key=weak), profile="vcc_service"), Principal.system())
        await services.authority.issue(IssuanceRequest(
            csr=make_csr(key=fine), profile="vcc_service"), Principal.system())
    listing.write_text("not-an-entry\n")
    with pytest.raises(ConfigError, match=r"blacklist\.RSA-2048:1"):
        load_config(environ={"VCC_PKI_DATA_DIR": str(tmp_path / "d"),
                             "VCC_PKI_WEAK_KEYS_FILE": str(listing)}).ca_settings()
    with pytest.raises(ConfigError, match="VCC_PKI_WEAK_KEYS_FILE"):
        load_config(environ={"VCC_PKI_DATA_DIR": str(tmp_path / "d"),
                             "VCC_PKI_WEAK_KEYS_FILE": str(tmp_path / "missing")}
                    ).ca_settings()


@pytest.mark.parametrize(("name", "mode", "refused"), [
    ("xn--pypal-4ve.example.test", "single-script", "mixes scripts"),  # Cyrillic a in paypal
    ("www.xn--bcher-kva.example.test", "single-script", None),  # bücher: Latin only
    ("xn--r8jz45g.example.test", "single-script", None),  # Han + Hiragana: allowed mix
    ("xn--3e0bk47br7k.example.test", "single-script", None),  # Hangul
    ("*.xn--pypal-4ve.example.test", "single-script", "mixes scripts"),
    ("xn--zz.example.test", "single-script", "not a valid IDNA A-label"),
    ("xn--bcher-kva.example.test", "refuse", "allows no internationalized names"),
    ("plain.example.test", "refuse", None),
    ("xn--pypal-4ve.example.test", "allow", None),
])
async def test_idn_confusables_per_policy(pki: Pki, name: str, mode: str,
                                          refused: str | None) -> None:
    """Issue 16: internationalized names by the organization's policy (policy.idn): by
    default one script per label, so a mixed-script look-alike is refused in every
    protocol (the Authority's policy check); "refuse" allows none; "allow" does not look."""
    from ca_core.admin import AdminService, OrganizationChange
    from db.audit_chain import verify_chain

    await ensure_organization(pki.authority, "idn", "IDN", Principal.system())
    admin = AdminService(pki.authority, verify_chain)
    if mode != "single-script":
        await admin.update_organization(Principal.system(), "idn",
                                        OrganizationChange(policy={"idn": mode}))
    request = IssuanceRequest(csr=make_csr(cn=None, dns=(name,)), profile="vcc_service",
                              org="idn")
    if refused is None:
        issued = await pki.authority.issue(request, Principal.system())
        assert issued.record.san["dns"] == [name]
    else:
        with pytest.raises(PolicyViolation, match=refused):
            await pki.authority.issue(request, Principal.system())


async def test_idn_policy_is_validated(pki: Pki) -> None:
    from ca_core.admin import AdminService, OrganizationChange, organization_document
    from db.audit_chain import verify_chain

    await ensure_organization(pki.authority, "idn", "IDN", Principal.system())
    admin = AdminService(pki.authority, verify_chain)
    with pytest.raises(BadRequest, match=r"policy\.idn must be one of"):
        await admin.update_organization(Principal.system(), "idn",
                                        OrganizationChange(policy={"idn": "sometimes"}))
    org = await admin.get_organization(Principal.system(), "idn")
    assert organization_document(org)["policy"]["idn"] == "single-script"  # the default
