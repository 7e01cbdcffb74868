"""VCC_PKI_HTTP_KEEPALIVE_REQUESTS (issue 15): after N requests on one connection the answer
carries ``Connection: close``, so that a client behind a layer-4 balancer reconnects (and
lands on the next replica); error answers count and close too; 0 leaves connections alone;
the setting is validated."""

from __future__ import annotations

import types

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import ConfigError, load_config
from gateway.server import limit_keepalive_requests


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _answers(limit: int, paths: list[str]) -> tuple[list[str | None], int]:
    """GET each path in turn over one client connection at a time: the Connection header
    of every answer, and how many connections the client opened."""
    app = web.Application()
    app.router.add_get("/ok", _ok)
    limit_keepalive_requests(app, limit)
    opened = 0

    async def count(_: aiohttp.ClientSession, __: types.SimpleNamespace, ___: object) -> None:
        nonlocal opened
        opened += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(count)
    headers: list[str | None] = []
    async with TestServer(app) as server, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace]) as session:
        for path in paths:
            async with session.get(server.make_url(path)) as response:
                await response.read()
                headers.append(response.headers.get("Connection"))
    return headers, opened


async def test_the_nth_answer_on_a_connection_closes_it() -> None:
    headers, opened = await _answers(3, ["/ok", "/ok", "/ok", "/ok", "/ok", "/ok", "/ok"])
    assert [h is not None and h.lower() == "close" for h in headers] == \
        [False, False, True, False, False, True, False]
    assert opened == 3


async def test_one_request_per_connection_and_errors_count() -> None:
    headers, opened = await _answers(1, ["/ok", "/missing", "/ok"])
    assert [h and h.lower() for h in headers] == ["close", "close", "close"]
    assert opened == 3


async def test_no_limit_keeps_the_connection() -> None:
    headers, opened = await _answers(0, ["/ok"] * 5)
    assert headers == [None] * 5
    assert opened == 1


def test_setting_is_read_and_validated() -> None:
    assert load_config(environ={}).http_keepalive_requests == 0
    assert load_config(environ={"VCC_PKI_HTTP_KEEPALIVE_REQUESTS": "1"}
                       ).http_keepalive_requests == 1
    for bad in ("-1", "many", "1000001"):
        with pytest.raises(ConfigError):
            load_config(environ={"VCC_PKI_HTTP_KEEPALIVE_REQUESTS": bad})
