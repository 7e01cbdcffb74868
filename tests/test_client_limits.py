"""Limits on slow and greedy clients (issue 16): slowloris headers and slow bodies are cut
off, one address holds a bounded number of connections, and signatures beyond the bound
in flight are refused at once in the protocol's form (503, OCSP tryLater), never queued.
The request-body limits of each route are tested with their protocol (test_acme, test_est_http,
test_ocsp, test_rest_api, test_scep, test_tsa); the header limits in test_http_limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ca_core.errors import Unavailable
from ca_core.principal import Principal
from ca_core.signing import SIGNATURES, Purpose, SigningBusy, SigningKey, limit_signatures
from conformance.gateway import free_port
from gateway.app import _middleware, build_http_app, build_https_app
from gateway.config import ConfigError, load_config
from gateway.guard import ConnectionLimiter, GuardedSite
from gateway.runtime import Services
from gateway.server import runner_options
from tests.helpers import fresh_services, make_csr

ClientFactory = Callable[..., Any]
WAIT = 20  # the most a test waits for a close that should come after about a second


async def _ok(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(text=f"ok {len(body)}")


@pytest.fixture
async def listener() -> AsyncIterator[tuple[int, ConnectionLimiter]]:
    """A listener as serve builds it: runner options, the body deadline, the guarded site;
    1 s for headers and bodies, 3 connections per client."""
    config = load_config(environ={"VCC_PKI_HTTP_KEEPALIVE_SECONDS": "1",
                                  "VCC_PKI_HTTP_BODY_TIMEOUT_SECONDS": "1",
                                  "VCC_PKI_HTTP_MAX_CONNECTIONS_PER_CLIENT": "3"})
    app = web.Application(middlewares=[_middleware("http", config.http_body_timeout_seconds)])
    app.router.add_route("*", "/{tail:.*}", _ok)
    runner = web.AppRunner(app, **runner_options(config))
    await runner.setup()
    port = free_port()
    limiter = ConnectionLimiter(config.http_max_connections_per_client)
    await GuardedSite(runner, "127.0.0.1", port, limiter=limiter).start()
    yield port, limiter
    await runner.cleanup()


async def _closed_without_answer(reader: asyncio.StreamReader) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(), WAIT)
    except ConnectionResetError:
        return True
    return data == b""


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def _no_trouble_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_slowloris_headers_are_cut_off(
        listener: tuple[int, ConnectionLimiter], caplog: pytest.LogCaptureFixture) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener[0])
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a")  # and never the rest
    await writer.drain()
    assert await _closed_without_answer(reader)
    await _close(writer)
    _no_trouble_logged(caplog)


async def test_slow_body_is_cut_off(listener: tuple[int, ConnectionLimiter],
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener[0])
    writer.write(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    assert await _closed_without_answer(reader)
    await _close(writer)
    _no_trouble_logged(caplog)
    assert any("did not arrive" in r.getMessage() for r in caplog.records)


async def test_a_prompt_body_is_answered(listener: tuple[int, ConnectionLimiter]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener[0])
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n"
                 b"\r\nhello")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), WAIT)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok 5")
    await _close(writer)


async def test_connections_per_client_are_bounded(
        listener: tuple[int, ConnectionLimiter]) -> None:
    port, limiter = listener
    held = []
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: stays open
        assert (await asyncio.wait_for(reader.read(100), WAIT)).startswith(b"HTTP/1.1 200")
        held.append(writer)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _closed_without_answer(reader)
    await _close(writer)
    assert limiter.refused == 1 and limiter.open == {"127.0.0.1": 3}
    await _close(held.pop())
    for _ in range(WAIT * 100):  # the server sees the close asynchronously: poll
        if limiter.open["127.0.0.1"] == 2:
            break
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), WAIT)).startswith(b"HTTP/1.1 200")
    for each in [*held, writer]:
        await _close(each)


def test_limits_are_bounded_settings() -> None:
    for name, value in (("VCC_PKI_HTTP_KEEPALIVE_SECONDS", "0"),
                        ("VCC_PKI_HTTP_BODY_TIMEOUT_SECONDS", "99999"),
                        ("VCC_PKI_HTTP_MAX_CONNECTIONS_PER_CLIENT", "-1"),
                        ("VCC_PKI_MAX_SIGNATURES_IN_FLIGHT", "0")):
        with pytest.raises(ConfigError, match=name):
            load_config(environ={name: value})
    assert runner_options(load_config(environ={}))["keepalive_timeout"] == 75


# --- signatures in flight -----------------------------------------------------------------

@contextlib.contextmanager
def taken_signatures(limit: int, taken: int) -> Iterator[None]:
    """The limit at ``limit`` with ``taken`` signatures in flight, as by a slow token."""
    previous = SIGNATURES.limit
    limit_signatures(limit)
    SIGNATURES.in_flight += taken
    try:
        yield
    finally:
        SIGNATURES.in_flight -= taken
        limit_signatures(previous)


def _issuing_key(services: Services) -> SigningKey:
    return next(ca.signing_key for ca in services.authority.loaded_cas()
                if Purpose.CERTIFICATE in ca.signing_key.allowed)


async def test_signature_beyond_the_limit_is_refused_at_once(services: Services) -> None:
    key = _issuing_key(services)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> bytes:
        started.set()
        await release.wait()
        return b"signed"

    async def failing() -> bytes:
        raise RuntimeError("token gone")

    with taken_signatures(1, 0):
        first = asyncio.create_task(key.signing(Purpose.CERTIFICATE, slow))
        await started.wait()
        with pytest.raises(SigningBusy) as busy:
            await key.signing(Purpose.CERTIFICATE, slow)
        assert isinstance(busy.value, Unavailable)
        release.set()
        assert await first == b"signed"
        assert SIGNATURES.in_flight == 0
        with pytest.raises(RuntimeError):
            await key.signing(Purpose.CERTIFICATE, failing)
        assert SIGNATURES.in_flight == 0  # a failed signature gives its place back
        assert await key.signing(Purpose.CERTIFICATE, slow) == b"signed"


async def _issue(client: TestClient, token: str) -> Any:
    return await client.post("/api/v1/certificates", headers={"Authorization": f"Bearer {token}"},
                             json={"csr": make_csr().decode(), "profile": "vcc_service"})


async def test_rest_and_ocsp_beyond_the_limit_answer_in_protocol_form(
        tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    # Nonces on: every OCSP answer is signed live, none comes from the cache.
    async with fresh_services(tmp_path, VCC_PKI_OCSP_NONCE="true") as services:
        https: TestClient = await aiohttp_client(build_https_app(services))
        http: TestClient = await aiohttp_client(build_http_app(services))
        token = (await services.authority.create_token(
            "default", "cert_manager", principal=Principal.system("test"))).token
        await services.ocsp.load(create=True)
        issued = await _issue(https, token)
        assert issued.status == 201, await issued.text()
        leaf = x509.load_pem_x509_certificate((await issued.json())["certificate_pem"].encode())
        issuer = next(ca.certificate for ca in services.authority.loaded_cas()
                      if ca.certificate.subject == leaf.issuer)
        request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()) \
            .add_extension(x509.OCSPNonce(b"\x07" * 16), critical=False).build() \
            .public_bytes(serialization.Encoding.DER)
        count = len(await services.store.audit_entries())

        with taken_signatures(1, 1):
            refused = await _issue(https, token)
            assert refused.status == 503, await refused.text()
            assert refused.content_type == "application/problem+json"
            assert refused.headers["Retry-After"]
            answer = await http.post("/ocsp", data=request,
                                     headers={"Content-Type": "application/ocsp-request"})
            assert answer.status == 200
            assert ocsp.load_der_ocsp_response(await answer.read()).response_status \
                == ocsp.OCSPResponseStatus.TRY_LATER
        assert len(await services.store.audit_entries()) == count  # nothing was issued

        answer = await http.post("/ocsp", data=request,
                                 headers={"Content-Type": "application/ocsp-request"})
        assert ocsp.load_der_ocsp_response(await answer.read()).response_status \
            == ocsp.OCSPResponseStatus.SUCCESSFUL
        assert (await _issue(https, token)).status == 201


async def test_the_cas_upkeep_signs_while_clients_are_refused(
        tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    """With every signature slot taken by clients, the CA's own upkeep still signs: the
    revoked OCSP response of a revocation, the OCSP refresh, CRLs (they are bounded by their
    own jobs; refusing them would let responses and CRLs go stale under load). Clients are
    still refused at once."""
    from ca_core.authority import IssuanceRequest
    from ca_core.ocsp import cache_key

    async with fresh_services(tmp_path) as services:
        await services.ocsp.load(create=True)
        system = Principal.system("test")
        issued = await services.authority.issue(IssuanceRequest(csr=make_csr()), system)
        with taken_signatures(1, 1):
            with pytest.raises(SigningBusy):  # a client's issuance
                await services.authority.issue(IssuanceRequest(csr=make_csr()), system)
            revoked = await services.authority.revoke(issued.serial, "key_compromise", system)
            assert revoked.status == "revoked"
            # the cache holds the signed "revoked" response, not a tombstone
            issuer = services.ocsp._by_ca_id[issued.record.issuer_ca_id]
            (cached,) = await services.ocsp.cache.get_many(
                [cache_key("sha1", issuer.key_id, int(issued.record.serial_hex, 16))])
            assert cached is not None and cached.revoked and cached.der
            assert ocsp.load_der_ocsp_response(cached.der).certificate_status \
                == ocsp.OCSPCertStatus.REVOKED
            published = await services.crls.publish_all()
            assert published and all(p is not None for p in published)
            await services.ocsp.refresh_due()
        assert SIGNATURES.in_flight == 0
