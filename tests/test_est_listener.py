"""The EST listener's TLS (RFC 7030 3.3): a client certificate is requested, not required;
the handshake accepts any (``protocols.est.tls_shim``) and the core verifies it, so a bad
one gets a 401 with a plain-text reason; where the shim's checks fail the handshake
verifies as before. tls-unique (RFC 5929) reaches the registrar on TLS 1.2, tls-exporter
(RFC 9266) on TLS 1.3, each equal to the client's own view; the 8443 context never asks
for a certificate. A real TLS socket on loopback, the front-end's fake registrar or the
real core behind it."""

from __future__ import annotations

import asyncio
import base64
import ctypes
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.x509.oid import NameOID

from ca_core.authority import IssuanceRequest
from ca_core.est import EstService, EstSettings
from ca_core.principal import Principal
from gateway.app import build_est_app
from gateway.runtime import Services
from gateway.server import _ssl_context, est_ssl_context
from gateway.tls import ensure_server_certificate
from protocols.est import tls_shim
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


def _intermediate(issuer: tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate], cn: str
                  ) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    key = make_key()
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer[1].subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now + dt.timedelta(days=300))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(issuer[0], hashes.SHA256())
    )
    return key, certificate


def _client_context(listener: Listener, tmp_path: Path, version: ssl.TLSVersion,
                    cert: tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate] | None = None,
                    chain: tuple[x509.Certificate, ...] = ()) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(listener.root))
    context.maximum_version = version
    if cert is not None:
        key_path, cert_path = tmp_path / "client.key", tmp_path / "client.pem"
        key_path.write_bytes(cert[0].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                                       for c in (cert[1], *chain)))
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
    async for found in _listener(services):
        yield found


async def _listener(services: Services) -> AsyncIterator[Listener]:
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


def _bad_certificate(listener: Listener, which: str
                     ) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    if which == "untrusted":
        return _leaf(bridge_root("Someone Else's CA"), "intruder")
    return _leaf(listener.manufacturer, "old-device", expired=True)


@pytest.mark.parametrize("version", [TLS12, TLS13])
@pytest.mark.parametrize("which", ["untrusted", "expired"])
async def test_bad_client_certificates_reach_the_core(
        listener: Listener, tmp_path: Path, version: ssl.TLSVersion, which: str) -> None:
    """The handshake accepts them: the core decides (and answers 401, below)."""
    cert = _bad_certificate(listener, which)
    status, _ = await _get(listener.port, _client_context(listener, tmp_path, version, cert),
                           "simpleenroll")
    assert status == 200
    assert listener.registrar.calls[-1][3].client_certificate == cert[1]


@pytest.mark.parametrize("version", [TLS12, TLS13])
async def test_the_chain_the_client_sends_reaches_the_core(
        listener: Listener, tmp_path: Path, version: ssl.TLSVersion) -> None:
    line = _intermediate(listener.manufacturer, "Maker Line 3")
    device = _leaf(line, "device-0003")
    context = _client_context(listener, tmp_path, version, device, chain=(line[1],))
    status, _ = await _get(listener.port, context, "simpleenroll")
    assert status == 200
    credentials = listener.registrar.calls[-1][3]
    assert credentials.client_certificate == device[1]
    assert credentials.client_chain == (line[1],)


@pytest.mark.parametrize("version", [TLS12, TLS13])
@pytest.mark.parametrize("which", ["untrusted", "expired"])
async def test_without_the_shim_bad_certificates_end_the_handshake(
        services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, version: ssl.TLSVersion, which: str) -> None:
    """The guard: a context pointer that does not read back what Python set (here the
    field after the real one) makes the shim refuse, with a WARNING, and the listener
    verifies in the handshake as before the shim."""
    monkeypatch.setattr(tls_shim, "CONTEXT_OFFSET", tls_shim.CONTEXT_OFFSET + 8)
    async for listener in _listener(services):
        assert "EST TLS shim" in caplog.text and "expected layout" in caplog.text
        with pytest.raises((ssl.SSLError, ConnectionResetError)) as caught:
            await _get(listener.port, _client_context(
                listener, tmp_path, version, _bad_certificate(listener, which)))
        if isinstance(caught.value, ssl.SSLError):
            expected = "UNKNOWN_CA" if which == "untrusted" else "CERTIFICATE_EXPIRED"
            assert expected in str(caught.value).upper().replace(" ", "_")
        assert listener.registrar.calls == []
        # no tls-exporter without the shim: TLS 1.3 has no binding then
        status, _ = await _get(listener.port, _client_context(listener, tmp_path, TLS13),
                               "simpleenroll")
        assert status == 200 and listener.registrar.calls[-1][3].channel_binding is None


def test_the_guard_refuses_another_contexts_pointer(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A pointer to a real SSL_CTX that is not this context's (its options and verify mode
    differ) fails the read-back check; nothing is changed on either."""
    other = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    other.options |= ssl.OP_NO_COMPRESSION
    other_pointer = ctypes.c_void_p.from_address(id(other) + object.__basicsize__).value
    real = tls_shim._pointer_at
    monkeypatch.setattr(tls_shim, "_pointer_at", lambda obj, offset: other_pointer
                        if isinstance(obj, ssl.SSLContext) else real(obj, offset))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    options, mode = context.options, context.verify_mode
    assert not tls_shim.accept_any_client_certificate(context)
    assert "expected layout" in caplog.text
    assert (context.options, context.verify_mode) == (options, mode)
    assert other.verify_mode == ssl.CERT_REQUIRED
    monkeypatch.undo()
    assert tls_shim.accept_any_client_certificate(context)
    assert context.verify_mode == ssl.CERT_OPTIONAL


# --- the real core behind the listener ---------------------------------------------------

@dataclass
class CoreListener:
    port: int
    root: Path
    manufacturer: tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]
    services: Services


@pytest.fixture
async def core(services: Services) -> AsyncIterator[CoreListener]:
    tls_dir = await ensure_server_certificate(services)
    root = tls_dir / "root.pem"
    root.write_bytes(_root_pem(services))
    manufacturer = bridge_root("Manufacturer CA")
    settings = EstSettings(trust_store=(manufacturer[1],))
    est = EstService(services.authority, services.store, settings)
    context = await est_ssl_context(services, trust_store=settings.trust_store)
    runner = web.AppRunner(build_est_app(services, est, settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield CoreListener(port, root, manufacturer, services)
    finally:
        await runner.cleanup()


async def _issued_count(services: Services) -> int:
    return sum(n for _, profile, n in await services.store.count_active_certificates(
        dt.datetime.now(dt.UTC)) if profile not in ("ocsp_signing", "timestamp_authority"))


async def _exchange(port: int, context: ssl.SSLContext, operation: str,
                    csr: Callable[[ssl.SSLObject], bytes] | None = None
                    ) -> tuple[int, dict[str, str], bytes]:
    """One POST over a fresh connection, its CSR made once the handshake is done (so it
    can carry the session's channel binding): status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                   server_hostname="localhost")
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        body = base64.b64encode(csr(ssl_object) if csr is not None else make_csr(pem=False))
        writer.write((f"POST /.well-known/est/{operation} HTTP/1.1\r\nHost: localhost\r\n"
                      "Content-Type: application/pkcs10\r\nConnection: close\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ", 2)[1]), headers, payload


def _core_client(core: CoreListener, tmp_path: Path, version: ssl.TLSVersion,
                 cert: tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate] | None = None,
                 chain: tuple[x509.Certificate, ...] = ()) -> ssl.SSLContext:
    listener = Listener(core.port, FakeRegistrar(), core.root, core.manufacturer)
    return _client_context(listener, tmp_path, version, cert, chain)


@pytest.mark.parametrize("version", [TLS12, TLS13])
async def test_bad_client_certificates_get_401_with_a_reason(
        core: CoreListener, tmp_path: Path, version: ssl.TLSVersion) -> None:
    services = core.services
    revoked = await _issued(services, "revoked.example.test")
    await services.authority.revoke(format(revoked[1].serial_number, "x"), "keyCompromise",
                                    Principal.system("test"))
    ours = await _issued(services, "ours.example.test")
    issuing = next(ca for ca in services.authority.loaded_cas()
                   if ca.certificate.subject == ours[1].issuer)
    # the issuing CA's name and a real serial, another key's signature
    forged_key = make_key()
    forged = (x509.CertificateBuilder().subject_name(ours[1].subject)
              .issuer_name(issuing.certificate.subject).public_key(forged_key.public_key())
              .serial_number(ours[1].serial_number)
              .not_valid_before(ours[1].not_valid_before_utc)
              .not_valid_after(ours[1].not_valid_after_utc)
              .sign(make_key(), hashes.SHA256()))
    # the manufacturer's name, another key's signature
    impostor = _leaf((make_key(), core.manufacturer[1]), "impostor")
    cases = {
        "untrusted": (_leaf(bridge_root("Someone Else's CA"), "intruder"),
                      "does not chain to a trusted CA"),
        "expired": (_leaf(core.manufacturer, "old-device", expired=True), "expired"),
        "revoked": (revoked, "revoked"),
        "forged (our CA's name)": ((forged_key, forged), "not a certificate it issued"),
        "forged (manufacturer's name)": (impostor, "signature does not match"),
    }
    count = await _issued_count(services)
    for name, (cert, reason) in cases.items():
        for operation in ("simpleenroll", "simplereenroll", "serverkeygen"):
            status, headers, body = await _exchange(
                core.port, _core_client(core, tmp_path, version, cert), operation)
            assert status == 401, (name, operation, body)
            assert headers["Content-Type"].startswith("text/plain"), name
            assert headers["WWW-Authenticate"].startswith("Basic"), name
            expected = "not issued by this PKI" if operation == "simplereenroll" \
                and name not in ("revoked",) else reason
            assert expected in body.decode(), (name, operation, body)
    assert await _issued_count(services) == count
    # the good ones: a manufacturer's device (through the intermediate it sends), and a
    # certificate issued here
    line = _intermediate(core.manufacturer, "Maker Line 3")
    device = _leaf(line, "device-0003")
    status, _, body = await _exchange(
        core.port, _core_client(core, tmp_path, version, device, (line[1],)), "simpleenroll")
    assert status == 200, body
    status, _, body = await _exchange(core.port, _core_client(core, tmp_path, version, ours),
                                      "simplereenroll",
                                      lambda _: make_csr("ours.example.test",
                                                         ("ours.example.test",), pem=False))
    assert status == 200, body
    assert await _issued_count(services) == count + 2


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


# --- RFC 9266 tls-exporter ---------------------------------------------------------------

def _hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int,
                       algorithm: hashes.HashAlgorithm) -> bytes:
    """RFC 8446 7.1 HKDF-Expand-Label."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) \
        + context
    return HKDFExpand(algorithm, length, info).derive(secret)


def _exporter_from_keylog(keylog: Path, cipher: str) -> bytes:
    """RFC 8446 7.5 TLS-Exporter("EXPORTER-Channel-Binding", no context, 32) from the
    session's exporter_master_secret as the client logged it: the client's own view,
    computed without the shim."""
    algorithm: hashes.HashAlgorithm = hashes.SHA384() if cipher.endswith("SHA384") \
        else hashes.SHA256()
    [line] = [x for x in keylog.read_text().splitlines() if x.startswith("EXPORTER_SECRET ")]
    secret = bytes.fromhex(line.split()[2])

    def digest(data: bytes) -> bytes:
        h = hashes.Hash(algorithm)
        h.update(data)
        return h.finalize()

    derived = _hkdf_expand_label(secret, b"EXPORTER-Channel-Binding", digest(b""),
                                 algorithm.digest_size, algorithm)
    return _hkdf_expand_label(derived, b"exporter", digest(b""), 32, algorithm)


@pytest.mark.parametrize("version", [TLS12, TLS13])
async def test_channel_binding_reaches_the_core(listener: Listener, tmp_path: Path,
                                                version: ssl.TLSVersion) -> None:
    """TLS 1.3: tls-exporter, equal to what the client derives from its own key log; TLS
    1.2: tls-unique and no exporter (RFC 9266 wants the extended master secret there)."""
    context = _client_context(listener, tmp_path, version)
    keylog = tmp_path / f"keylog-{version.name}"
    context.keylog_filename = str(keylog)
    seen: dict[str, str] = {}

    def body(ssl_object: ssl.SSLObject) -> bytes:
        cipher = ssl_object.cipher()
        assert cipher is not None
        seen["cipher"] = cipher[0]
        return make_csr(pem=False)

    status, _, _ = await _exchange(listener.port, context, "simpleenroll", body)
    assert status == 200
    credentials = listener.registrar.calls[-1][3]
    if version == TLS13:
        assert credentials.tls_unique is None
        assert credentials.tls_exporter == _exporter_from_keylog(keylog, seen["cipher"])
        assert credentials.channel_binding == credentials.tls_exporter
    else:
        assert credentials.tls_exporter is None and credentials.tls_unique is not None
