"""EST front-end (protocols/est): the RFC 8951 codec, the serverkeygen multipart, the error
mapping to plain-text 4xx, and the routes, driven with aiohttp_client against a fake
registrar (the front-end's only collaborator; the real one is tested in test_est_*)."""

from __future__ import annotations

import base64
import dataclasses
import email.parser
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import encode_basic_auth, web
from aiohttp.test_utils import TestClient
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_core import errors
from ca_core.est import EnrollmentResult, EstCredentials, EstSettings
from protocols.est import codec
from protocols.est import http as est_http
from tests.helpers import bridge_root, make_csr

ClientFactory = Callable[..., Any]


def _cert(name: str = "EST Test") -> x509.Certificate:
    return bridge_root(name)[1]


CSR_DER = make_csr(pem=False)
CSR_B64 = base64.b64encode(CSR_DER)


def _lines(data: bytes, width: int, sep: bytes) -> bytes:
    return sep.join(data[i:i + width] for i in range(0, len(data), width))


# ------------------------------------------------------------------------------ codec

@pytest.mark.parametrize("body", [
    CSR_B64,  # one line, no trailing newline (RFC 8951 3.2)
    CSR_B64 + b"\n",
    _lines(CSR_B64, 64, b"\n") + b"\n",
    _lines(CSR_B64, 76, b"\r\n") + b"\r\n",  # MIME lines
    b"-----BEGIN CERTIFICATE REQUEST-----\n" + _lines(CSR_B64, 64, b"\n")
    + b"\n-----END CERTIFICATE REQUEST-----\n",
], ids=["one-line", "newline", "64-lf", "76-crlf", "pem"])
def test_base64_bodies_decode_to_the_same_der(body: bytes) -> None:
    assert codec.decode_base64(body) == CSR_DER


@pytest.mark.parametrize("body", [b"", b"  \n", b"not base64 at all!", CSR_B64[:-3] + b"@@@",
                                  base64.b64encode(b"hello world")])
def test_garbage_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(errors.BadRequest):
        codec.decode_base64(body)


def test_responses_are_base64_in_64_column_lines() -> None:
    der = bytes(range(256)) * 3
    encoded = codec.encode_base64(der)
    lines = encoded.split(b"\n")
    assert lines[-1] == b"" and all(len(line) == 64 for line in lines[:-2])
    assert 0 < len(lines[-2]) <= 64
    assert base64.b64decode(encoded) == der


def _certs_in(body: bytes) -> list[bytes]:
    info = cms.ContentInfo.load(base64.b64decode(body))
    assert info["content_type"].native == "signed_data"
    signed = info["content"]
    assert len(signed["signer_infos"]) == 0  # certs-only: degenerate SignedData
    return [c.dump() for c in signed["certificates"]]


def _multipart(body: bytes, content_type: str) -> list[Any]:
    # compat32: header values as sent, not re-folded or re-quoted
    message = email.parser.BytesParser().parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    assert message.get_content_type() == "multipart/mixed"
    parts = message.get_payload()
    assert isinstance(parts, list)
    return parts


def test_serverkeygen_multipart_labels_each_part() -> None:
    certificate = _cert()
    body, content_type = codec.multipart_key_and_certificate(
        b"\x30\x03key", codec.PKCS8, [certificate])
    key_part, cert_part = _multipart(body, content_type)
    assert key_part["Content-Type"] == "application/pkcs8"
    assert key_part["Content-Transfer-Encoding"] == "base64"
    assert base64.b64decode(key_part.get_payload()) == b"\x30\x03key"
    assert cert_part["Content-Type"] == "application/pkcs7-mime; smime-type=certs-only"
    assert _certs_in(cert_part.get_payload().encode()) == [
        certificate.public_bytes(serialization.Encoding.DER)]


def test_header_certificate_forms() -> None:
    leaf, ca = _cert("leaf"), _cert("ca")
    pem = leaf.public_bytes(serialization.Encoding.PEM).decode()
    chain_pem = pem + ca.public_bytes(serialization.Encoding.PEM).decode()
    der_b64 = base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()
    assert codec.parse_header_certificate(urllib.parse.quote(pem)) == (leaf,)  # nginx escaped
    assert codec.parse_header_certificate(pem.replace("\n", " ")) == (leaf,)  # folded
    assert codec.parse_header_certificate(der_b64) == (leaf,)  # HAProxy ssl_c_der,base64
    assert codec.parse_header_certificate(urllib.parse.quote(chain_pem)) == (leaf, ca)
    with pytest.raises(errors.BadRequest):
        codec.parse_header_certificate("-----BEGIN CERTIFICATE-----garbage")


def test_basic_credentials() -> None:
    assert codec.decode_basic("Basic " + base64.b64encode(b"est-1:p:w").decode()) == (
        "est-1", "p:w")  # the password may hold colons (RFC 7617 2)
    assert codec.decode_basic("basic " + base64.b64encode("u:pässword".encode()).decode()) == (
        "u", "pässword")
    for bad in ("Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        with pytest.raises(ValueError):
            codec.decode_basic(bad)


def test_trusted_proxy_addresses() -> None:
    networks = codec.parse_networks(["10.0.0.0/8", " 192.0.2.7 ", "", "2001:db8::/32"])
    assert codec.address_in("10.1.2.3", networks)
    assert codec.address_in("192.0.2.7", networks)
    assert codec.address_in("::ffff:10.9.9.9", networks)  # IPv4-mapped on a dual stack
    assert codec.address_in("2001:db8::1", networks)
    assert not codec.address_in("192.0.2.8", networks)
    assert not codec.address_in(None, networks)
    assert not codec.address_in("10.1.2.3", ())
    with pytest.raises(ValueError):
        codec.parse_networks(["not-an-address"])


@pytest.mark.parametrize(("error", "status"), [
    (errors.Unauthorized("x"), 401), (errors.Forbidden("x"), 403),
    (errors.NotFound("x"), 404), (errors.Conflict("x"), 409),
    (errors.AlreadyRevoked("x"), 409), (errors.RateLimited("x", 3), 429),
    (errors.Unavailable("x"), 503), (errors.BadRequest("x"), 400),
    (errors.BadCSRSignature("x"), 400), (errors.PolicyViolation("x"), 400),
    (errors.CAError("x"), 500),
])
def test_status_mapping(error: errors.CAError, status: int) -> None:
    assert codec.status_for(error) == status


# ------------------------------------------------------------------------------ routes

@dataclasses.dataclass
class FakeRegistrar:
    """Answers like the core would; ``fail`` makes every call raise it."""

    certificate: x509.Certificate = dataclasses.field(default_factory=_cert)
    fail: errors.CAError | None = None
    result: EnrollmentResult | None = None
    calls: list[tuple[str, str, bytes, EstCredentials]] = dataclasses.field(
        default_factory=list)

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def ca_certificates(self, label: str) -> tuple[x509.Certificate, ...]:
        self._check()
        self.calls.append(("cacerts", label, b"", EstCredentials()))
        return (self.certificate, _cert("root"))

    async def csr_attributes(self, label: str) -> bytes:
        self._check()
        self.calls.append(("csrattrs", label, b"", EstCredentials()))
        return b"\x30\x00" if label != "none" else b""

    async def _issue(self, op: str, label: str, csr: bytes, cred: EstCredentials
                     ) -> EnrollmentResult:
        self._check()
        self.calls.append((op, label, csr, cred))
        return self.result or EnrollmentResult(certificate=self.certificate,
                                               chain=(_cert("issuing"),))

    async def enroll(self, label: str, csr: bytes, cred: EstCredentials) -> EnrollmentResult:
        return await self._issue("enroll", label, csr, cred)

    async def reenroll(self, label: str, csr: bytes, cred: EstCredentials
                       ) -> EnrollmentResult:
        return await self._issue("reenroll", label, csr, cred)

    async def server_keygen(self, label: str, csr: bytes, cred: EstCredentials
                            ) -> EnrollmentResult:
        return await self._issue("serverkeygen", label, csr, cred)


def _app(registrar: FakeRegistrar, **settings: Any) -> web.Application:
    app = web.Application(client_max_size=settings.get("max_body_bytes", 64 * 1024))
    est_http.add_routes(app, registrar, EstSettings(**settings))
    return app


@pytest.fixture
def registrar() -> FakeRegistrar:
    return FakeRegistrar()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, registrar: FakeRegistrar) -> TestClient[Any, Any]:
    result: TestClient[Any, Any] = await aiohttp_client(_app(registrar))
    return result


PKCS10 = {"Content-Type": "application/pkcs10"}
EST = "/.well-known/est"


async def test_cacerts_is_certs_only_base64(client: TestClient[Any, Any],
                                            registrar: FakeRegistrar) -> None:
    response = await client.get(f"{EST}/cacerts")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/pkcs7-mime; smime-type=certs-only"
    body = await response.read()
    assert max(len(line) for line in body.splitlines()) == 64
    assert registrar.certificate.public_bytes(serialization.Encoding.DER) in _certs_in(body)
    assert len(_certs_in(body)) == 2
    assert registrar.calls[0][:2] == ("cacerts", "")


async def test_labelled_paths_pass_the_label(client: TestClient[Any, Any],
                                             registrar: FakeRegistrar) -> None:
    assert (await client.get(f"{EST}/routers/cacerts")).status == 200
    response = await client.post(f"{EST}/routers/simpleenroll", data=CSR_B64, headers={
        **PKCS10, "Authorization": encode_basic_auth("est-abc", "pw")})
    assert response.status == 200
    assert [(op, label) for op, label, *_ in registrar.calls] == [
        ("cacerts", "routers"), ("enroll", "routers")]


async def test_csrattrs(client: TestClient[Any, Any]) -> None:
    response = await client.get(f"{EST}/csrattrs")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/csrattrs"
    assert base64.b64decode(await response.read()) == b"\x30\x00"
    assert (await client.get(f"{EST}/none/csrattrs")).status == 204


@pytest.mark.parametrize("transfer_encoding", [None, "base64"])
async def test_simpleenroll_with_basic(client: TestClient[Any, Any], registrar: FakeRegistrar,
                                       transfer_encoding: str | None) -> None:
    headers = dict(PKCS10)
    if transfer_encoding:
        headers["Content-Transfer-Encoding"] = transfer_encoding
    headers["Authorization"] = encode_basic_auth("est-abc", "s3cret")
    response = await client.post(f"{EST}/simpleenroll", data=_lines(CSR_B64, 64, b"\n"),
                                 headers=headers)
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/pkcs7-mime; smime-type=certs-only"
    # RFC 7030 4.2.3: only the issued certificate
    assert _certs_in(await response.read()) == [
        registrar.certificate.public_bytes(serialization.Encoding.DER)]
    op, label, csr, cred = registrar.calls[0]
    assert (op, label, csr) == ("enroll", "", CSR_DER)
    assert (cred.basic_user, cred.basic_password) == ("est-abc", "s3cret")
    assert cred.client_certificate is None and cred.tls_unique is None  # plain HTTP here
    assert cred.remote == "127.0.0.1"


async def test_reenroll_and_fullcmc(client: TestClient[Any, Any],
                                    registrar: FakeRegistrar) -> None:
    response = await client.post(f"{EST}/simplereenroll", data=CSR_B64, headers=PKCS10)
    assert response.status == 200 and registrar.calls[0][0] == "reenroll"
    response = await client.post(f"{EST}/fullcmc", data=CSR_B64,
                                 headers={"Content-Type": "application/pkcs7-mime"})
    assert response.status == 501
    assert response.content_type == "text/plain"
    assert "full CMC" in await response.text()


async def _refused(response: Any, status: int) -> str:
    assert response.status == status, await response.text()
    assert response.content_type == "text/plain"
    text: str = await response.text()
    assert text.endswith("\n") and "Traceback" not in text
    return text


async def test_wrong_content_type_is_415(client: TestClient[Any, Any],
                                         registrar: FakeRegistrar) -> None:
    response = await client.post(f"{EST}/simpleenroll", data=CSR_B64,
                                 headers={"Content-Type": "application/json"})
    assert "application/pkcs10" in await _refused(response, 415)
    response = await client.post(f"{EST}/simpleenroll", data=CSR_B64)  # none at all
    await _refused(response, 415)
    assert registrar.calls == []


async def test_oversized_body_is_413(aiohttp_client: ClientFactory,
                                     registrar: FakeRegistrar) -> None:
    client = await aiohttp_client(_app(registrar, max_body_bytes=2048))
    big = base64.b64encode(b"\x30" * 4096)
    response = await client.post(f"{EST}/simpleenroll", data=big, headers=PKCS10)
    assert "2048" in await _refused(response, 413)

    async def chunks() -> Any:  # chunked: no Content-Length to refuse up front
        for i in range(0, len(big), 512):
            yield big[i:i + 512]

    response = await client.post(f"{EST}/serverkeygen", data=chunks(), headers=PKCS10)
    await _refused(response, 413)
    assert registrar.calls == []


async def test_garbage_base64_is_400(client: TestClient[Any, Any],
                                     registrar: FakeRegistrar) -> None:
    response = await client.post(f"{EST}/simpleenroll", data=b"%%% not base64 %%%",
                                 headers=PKCS10)
    assert "not base64" in await _refused(response, 400)
    assert registrar.calls == []


async def test_unauthorized_is_401_with_basic_challenge(client: TestClient[Any, Any],
                                                        registrar: FakeRegistrar) -> None:
    registrar.fail = errors.Unauthorized("the enrollment secret is used or expired")
    response = await client.post(f"{EST}/simpleenroll", data=CSR_B64, headers=PKCS10)
    assert await _refused(response, 401) == "the enrollment secret is used or expired\n"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="vcc-pki EST"'


async def test_malformed_authorization_is_401(client: TestClient[Any, Any],
                                              registrar: FakeRegistrar) -> None:
    response = await client.post(f"{EST}/simpleenroll", data=CSR_B64,
                                 headers={**PKCS10, "Authorization": "Bearer abc"})
    await _refused(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert registrar.calls == []


@pytest.mark.parametrize(("error", "status"), [
    (errors.NotFound("no EST label 'nope'"), 404),
    (errors.BadCSRSignature("the CSR's signature does not verify"), 400),
    (errors.Forbidden("another organization's secret"), 403),
])
async def test_core_errors_are_plain_text(client: TestClient[Any, Any],
                                          registrar: FakeRegistrar,
                                          error: errors.CAError, status: int) -> None:
    registrar.fail = error
    response = await client.post(f"{EST}/nope/simpleenroll", data=CSR_B64, headers=PKCS10)
    assert await _refused(response, status) == error.detail + "\n"
    assert "WWW-Authenticate" not in response.headers


async def test_internal_error_text_stays_inside(client: TestClient[Any, Any],
                                                registrar: FakeRegistrar) -> None:
    registrar.fail = errors.CAError("database password wrong at db.example:5432")
    response = await client.get(f"{EST}/cacerts")
    assert response.status == 500
    assert await response.text() == "internal error\n"


async def test_pending_is_202_with_retry_after(client: TestClient[Any, Any],
                                               registrar: FakeRegistrar) -> None:
    registrar.result = EnrollmentResult(retry_after=120)
    response = await client.post(f"{EST}/simpleenroll", data=CSR_B64, headers=PKCS10)
    assert response.status == 202
    assert response.headers["Retry-After"] == "120"
    assert "approval" in await response.text()


@pytest.mark.parametrize("encrypted", [False, True])
async def test_serverkeygen_multipart(client: TestClient[Any, Any], registrar: FakeRegistrar,
                                      encrypted: bool) -> None:
    registrar.result = EnrollmentResult(
        certificate=registrar.certificate, private_key_pkcs8=b"\x30\x01k",
        encrypted_key=b"\x30\x01e" if encrypted else None)
    response = await client.post(f"{EST}/serverkeygen", data=CSR_B64, headers=PKCS10)
    assert response.status == 200
    key_part, cert_part = _multipart(await response.read(), response.headers["Content-Type"])
    if encrypted:
        assert key_part["Content-Type"] == (
            "application/pkcs7-mime; smime-type=server-generated-key")
        assert base64.b64decode(key_part.get_payload()) == b"\x30\x01e"
    else:
        assert key_part["Content-Type"] == "application/pkcs8"
        assert base64.b64decode(key_part.get_payload()) == b"\x30\x01k"
    assert cert_part["Content-Type"] == "application/pkcs7-mime; smime-type=certs-only"


def _escaped(certificate: x509.Certificate) -> str:
    return urllib.parse.quote(certificate.public_bytes(serialization.Encoding.PEM).decode())


async def test_header_certificate_from_untrusted_address_is_refused(
        client: TestClient[Any, Any], registrar: FakeRegistrar) -> None:
    response = await client.post(f"{EST}/simplereenroll", data=CSR_B64, headers={
        **PKCS10, "X-SSL-Client-Cert": _escaped(registrar.certificate)})
    assert "trusted proxy" in await _refused(response, 403)
    assert registrar.calls == []


async def test_header_certificate_from_trusted_proxy(aiohttp_client: ClientFactory,
                                                     registrar: FakeRegistrar) -> None:
    client = await aiohttp_client(_app(registrar, trusted_proxies=("127.0.0.0/8",)))
    device, bootstrap = _cert("device"), _cert("bootstrap")
    response = await client.post(f"{EST}/simplereenroll", data=CSR_B64, headers={
        **PKCS10, "X-SSL-Client-Cert": _escaped(device) + _escaped(bootstrap)})
    assert response.status == 200
    credentials = registrar.calls[0][3]
    assert credentials.client_certificate == device
    assert credentials.client_chain == (bootstrap,)
    assert credentials.tls_unique is None  # the proxy's TLS, not the client's
    # An empty header (nginx without a client certificate) is no certificate.
    response = await client.post(f"{EST}/simpleenroll", data=CSR_B64, headers={
        **PKCS10, "X-SSL-Client-Cert": ""})
    assert response.status == 200 and registrar.calls[1][3].client_certificate is None
    response = await client.post(f"{EST}/simpleenroll", data=CSR_B64, headers={
        **PKCS10, "X-SSL-Client-Cert": "garbage"})
    await _refused(response, 400)
    assert len(registrar.calls) == 2


# ------------------------------------------------- through the real registrar (ca_core.est)

@pytest.fixture
async def real(aiohttp_client: ClientFactory, services: Any) -> TestClient[Any, Any]:
    from gateway.app import build_est_app

    result: TestClient[Any, Any] = await aiohttp_client(
        build_est_app(services, services.est, services.est.settings))
    return result


async def _secret(services: Any, **kwargs: Any) -> str:
    from ca_core.principal import Principal

    created = await services.est.create_secret("default", kwargs.get("label", ""),
                                               kwargs.get("subject"), None,
                                               Principal.system("test"))
    return encode_basic_auth(created.user, created.password)


async def test_real_cacerts_and_csrattrs(real: TestClient[Any, Any], services: Any) -> None:
    response = await real.get(f"{EST}/cacerts")
    assert response.status == 200
    ours = {ca.certificate.public_bytes(serialization.Encoding.DER)
            for ca in services.authority.loaded_cas()}
    assert set(_certs_in(await response.read())) <= ours
    response = await real.get(f"{EST}/csrattrs")
    assert response.status == 200 and response.content_type == "application/csrattrs"
    response = await real.get(f"{EST}/nope/cacerts")
    assert await _refused(response, 404) == "no EST label 'nope'\n"


async def test_real_enroll_once_per_secret(real: TestClient[Any, Any], services: Any) -> None:
    authorization = await _secret(services)
    headers = {**PKCS10, "Authorization": authorization}
    response = await real.post(f"{EST}/simpleenroll", data=CSR_B64, headers=headers)
    assert response.status == 200
    issued = x509.load_der_x509_certificate(_certs_in(await response.read())[0])
    csr = x509.load_der_x509_csr(CSR_DER)
    assert issued.public_key() == csr.public_key()
    # the secret is spent: the same request is a 401 with the Basic challenge
    response = await real.post(f"{EST}/simpleenroll", data=CSR_B64, headers=headers)
    assert (await _refused(response, 401)).startswith("the enrollment secret")
    assert response.headers["WWW-Authenticate"] == 'Basic realm="vcc-pki EST"'
    # no credentials at all
    response = await real.post(f"{EST}/simpleenroll", data=CSR_B64, headers=PKCS10)
    await _refused(response, 401)


async def test_real_serverkeygen_key_matches_certificate(real: TestClient[Any, Any],
                                                         services: Any) -> None:
    response = await real.post(f"{EST}/serverkeygen", data=CSR_B64, headers={
        **PKCS10, "Authorization": await _secret(services)})
    assert response.status == 200
    key_part, cert_part = _multipart(await response.read(), response.headers["Content-Type"])
    assert key_part["Content-Type"] == "application/pkcs8"
    key = serialization.load_der_private_key(base64.b64decode(key_part.get_payload()), None)
    certificate = x509.load_der_x509_certificate(
        _certs_in(cert_part.get_payload().encode())[0])
    assert certificate.public_key() == key.public_key()
    assert certificate.public_key() != x509.load_der_x509_csr(CSR_DER).public_key()
