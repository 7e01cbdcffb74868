"""Requests aiohttp cannot parse (a request line or header over the limits, non-ASCII in
the URL, garbage) are answered 400 with at most one INFO line and no traceback in the log;
the limits are settings (issue 10: one probe left 1,043 tracebacks)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from conformance.gateway import free_port
from gateway.config import ConfigError, load_config
from gateway.server import runner_options


@pytest.fixture
async def port() -> AsyncIterator[int]:
    config = load_config(environ={"VCC_PKI_HTTP_MAX_LINE_BYTES": "2048"})
    app = web.Application()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/{tail:.*}", ok)
    runner = web.AppRunner(app, **runner_options(config))
    await runner.setup()
    chosen = free_port()
    await web.TCPSite(runner, "127.0.0.1", chosen).start()
    yield chosen
    await runner.cleanup()


async def _send(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read(100)
    writer.close()
    return answer


@pytest.mark.parametrize("request_bytes", [
    b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # over the line limit
    "GET /\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),  # non-ASCII in the URL
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",  # header field
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
    b"GARBAGE\r\n\r\n",
])
async def test_unparseable_requests_are_400_without_a_traceback(
        port: int, request_bytes: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await _send(port, request_bytes)
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer
    assert not [r for r in caplog.records if r.levelno > logging.INFO]
    assert not [r for r in caplog.records if r.exc_info or r.exc_text]
    assert len([r for r in caplog.records if r.name == "vcc_pki.http"]) <= 1
    fine = await _send(port, b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\n")
    assert fine.startswith(b"HTTP/1.1 200")


def test_limits_are_bounded_settings() -> None:
    config = load_config(environ={"VCC_PKI_HTTP_MAX_LINE_BYTES": "4096",
                                  "VCC_PKI_HTTP_MAX_HEADERS": "64"})
    assert runner_options(config)["max_line_size"] == 4096
    assert runner_options(config)["max_headers"] == 64
    for name, value in (("VCC_PKI_HTTP_MAX_LINE_BYTES", "10"),
                        ("VCC_PKI_HTTP_MAX_FIELD_BYTES", "999999"),
                        ("VCC_PKI_HTTP_MAX_HEADERS", "0")):
        with pytest.raises(ConfigError, match=name):
            load_config(environ={name: value})
