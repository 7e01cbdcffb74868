"""The EST listener's TLS (RFC 7030 3.3): a client certificate is requested, not required,
and verified against this PKI's CAs and the EST trust store; tls-unique (RFC 5929) reaches
the registrar on TLS 1.2 and is absent on TLS 1.3; the 8443 context never asks for a
certificate. A real TLS socket on loopback, the front-end's fake registrar behind it."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from ca_core.authority import IssuanceRequest
from ca_core.est import EstSettings
from ca_core.principal import Principal
from gateway.app import build_est_app
from gateway.runtime import Services
from gateway.server import _ssl_context, est_ssl_context
from gateway.tls import ensure_server_certificate
from tests.helpers import bridge_root, make_csr, make_key
from tests.test_est_http import FakeRegistrar


@dataclass
class Listener:
    port: int
    registrar: FakeRegistrar
    root: Path  # the PKI's root, to verify the server
    manufacturer: tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]


def _leaf(issuer: tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate], cn: str,
          expired: bool = False) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    key = make_key()
    now = dt.datetime.now(dt.UTC)
    not_after = now - dt.timedelta(days=1) if expired else now + dt.timedelta(days=30)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer[1].subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10)).not_valid_after(not_after)
        .sign(issuer[0], hashes.SHA256())
    )
    return key, certificate


def _client_context(listener: Listener, tmp_path: Path, version: ssl.TLSVersion,
                    cert: tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate] | None = None,
                    ) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(listener.root))
    context.maximum_version = version
    if cert is not None:
        key_path, cert_path = tmp_path / "client.key", tmp_path / "client.pem"
        key_path.write_bytes(cert[0].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        cert_path.write_bytes(cert[1].public_bytes(serialization.Encoding.PEM))
        context.load_cert_chain(cert_path, key_path)
    return context


def _request(operation: str) -> bytes:
    if operation == "cacerts":
        return (b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n"
                b"Connection: close\r\n\r\n")
    body = base64.b64encode(make_csr(pem=False))
    return (f"POST /.well-known/est/{operation} HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Type: application/pkcs10\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _get(port: int, context: ssl.SSLContext, operation: str = "cacerts"
               ) -> tuple[int, bytes | None]:
    """One request over a fresh connection: the status and the client's own view of
    tls-unique."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                   server_hostname="localhost")
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        binding = ssl_object.get_channel_binding("tls-unique")
        writer.write(_request(operation))
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    if not response:  # TLS 1.3: the server's alert arrives after the client's handshake
        raise ConnectionResetError("closed without a response")
    return int(response.split(b" ", 2)[1]), binding


async def _serve(services: Services, context: ssl.SSLContext, registrar: FakeRegistrar
                 ) -> AsyncIterator[int]:
    runner = web.AppRunner(build_est_app(services, registrar, EstSettings()))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    assert site._server is not None
    sockets = site._server.sockets  # type: ignore[attr-defined]
    try:
        yield sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


@pytest.fixture
async def listener(services: Services) -> AsyncIterator[Listener]:
    tls_dir = await ensure_server_certificate(services)
    root = tls_dir / "root.pem"
    root.write_bytes(_root_pem(services))
    manufacturer = bridge_root("Manufacturer CA")
    registrar = FakeRegistrar()
    context = await est_ssl_context(services, trust_store=(manufacturer[1],))
    async for port in _serve(services, context, registrar):
        yield Listener(port, registrar, root, manufacturer)


def _root_pem(services: Services) -> bytes:
    for ca in services.authority.loaded_cas():
        certificate = ca.certificate
        if certificate.issuer == certificate.subject:
            return certificate.public_bytes(serialization.Encoding.PEM)
    raise AssertionError("no root")


async def _issued(services: Services, cn: str
                  ) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    key = make_key()
    issued = await services.authority.issue(
        IssuanceRequest(csr=make_csr(cn, (cn,), key=key), profile="vcc_service"),
        Principal.system("test"))
    return key, issued.certificate


TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize("version", [TLS12, TLS13])
async def test_no_client_certificate_is_fine(listener: Listener, tmp_path: Path,
                                             version: ssl.TLSVersion) -> None:
    status, _ = await _get(listener.port, _client_context(listener, tmp_path, version))
    assert status == 200


async def test_enroll_sees_certificate_and_tls_unique_on_tls12(
        listener: Listener, services: Services, tmp_path: Path) -> None:
    cert = await _issued(services, "router1.example.test")
    status, binding = await _get(listener.port,
                                 _client_context(listener, tmp_path, TLS12, cert),
                                 "simplereenroll")
    assert status == 200
    credentials = listener.registrar.calls[-1][3]
    assert credentials.client_certificate == cert[1]
    assert binding is not None and len(binding) == 12  # TLS 1.2 Finished verify_data
    assert credentials.tls_unique == binding


async def test_tls13_has_no_tls_unique(listener: Listener, services: Services,
                                       tmp_path: Path) -> None:
    cert = await _issued(services, "router2.example.test")
    status, binding = await _get(listener.port,
                                 _client_context(listener, tmp_path, TLS13, cert),
                                 "simplereenroll")
    assert status == 200
    credentials = listener.registrar.calls[-1][3]
    assert credentials.client_certificate == cert[1]
    # CPython hands out the TLS 1.3 Finished as "tls-unique"; it is not one (RFC 8446 C.5,
    # RFC 9266), and the front-end passes none on.
    assert binding is not None and len(binding) != 12
    assert credentials.tls_unique is None


async def test_trust_store_certificate_is_accepted(listener: Listener, tmp_path: Path) -> None:
    device = _leaf(listener.manufacturer, "device-0001")
    status, _ = await _get(listener.port, _client_context(listener, tmp_path, TLS12, device))
    assert status == 200


@pytest.mark.parametrize("version", [TLS12, TLS13])
@pytest.mark.parametrize("which", ["untrusted", "expired"])
async def test_bad_client_certificates_end_the_handshake(
        listener: Listener, tmp_path: Path, version: ssl.TLSVersion, which: str) -> None:
    if which == "untrusted":
        cert = _leaf(bridge_root("Someone Else's CA"), "intruder")
    else:
        cert = _leaf(listener.manufacturer, "old-device", expired=True)
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as caught:
        await _get(listener.port, _client_context(listener, tmp_path, version, cert))
    if isinstance(caught.value, ssl.SSLError):
        expected = "UNKNOWN_CA" if which == "untrusted" else "CERTIFICATE_EXPIRED"
        assert expected in str(caught.value).upper().replace(" ", "_")
    assert listener.registrar.calls == []


async def test_https_listener_never_asks_for_a_certificate(services: Services,
                                                           tmp_path: Path) -> None:
    """Served with the 8443 context, a client's certificate never reaches the app: the
    server sent no CertificateRequest."""
    tls_dir = await ensure_server_certificate(services)
    context = _ssl_context(services)
    assert context.verify_mode == ssl.CERT_NONE
    registrar = FakeRegistrar()
    root = tls_dir / "root.pem"
    root.write_bytes(_root_pem(services))
    cert = await _issued(services, "svc.example.test")
    async for port in _serve(services, context, registrar):
        listener = Listener(port, registrar, root, bridge_root())
        for version in (TLS12, TLS13):
            client = _client_context(listener, tmp_path, version, cert)
            assert (await _get(port, client, "simpleenroll"))[0] == 200
            assert registrar.calls[-1][3].client_certificate is None
