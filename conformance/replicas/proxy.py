"""A round-robin proxy for the replica tests: request N goes to replica N mod 3.

It forwards HTTP requests, not TCP connections. A layer-4 proxy with TLS passed through
balances connections, and an ACME client keeps one connection alive for a whole order (lego
made an order over two connections), so the order would not cross replicas. Closing the
connection after each answer does not help either: Go does not retry a POST that meets a
connection closed under it (lego failed with ``Post ...: EOF``). So the proxy ends TLS
with a certificate from the gateway's own CA and opens a new TLS connection to the next
replica for every request, as an HTTP load balancer in front of the replicas would.
"""

from __future__ import annotations

import itertools
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "content-length", "host"}


class RoundRobinProxy:
    def __init__(self, backends: Sequence[str], server_context: ssl.SSLContext,
                 client_context: ssl.SSLContext) -> None:
        self.backends = list(backends)  # base URLs, https://localhost:PORT
        self.requests: Counter[str] = Counter()  # answered, per backend
        self.refused: Counter[str] = Counter()  # connections refused, per backend
        self.forwarded = 0
        # Called with the request's number before it is forwarded (a test's hook).
        self.before_request: Callable[[int], Awaitable[None]] | None = None
        self._next = itertools.cycle(self.backends)
        self._server_context = server_context
        self._client_context = client_context
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self, port: int) -> None:
        # force_close: a new connection per request, so nothing sticks to a replica.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._client_context, force_close=True),
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port,
                          ssl_context=self._server_context).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        self.forwarded += 1
        if self.before_request is not None:
            await self.before_request(self.forwarded)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        data = await request.read()
        for _attempt in range(len(self.backends)):
            backend = next(self._next)
            try:
                return await self._send(backend, request, headers, data)
            except aiohttp.ClientConnectorError:
                # Nothing was sent: a balancer skips a replica that refuses connections.
                self.refused[backend] += 1
        raise web.HTTPBadGateway()

    async def _send(self, backend: str, request: web.Request, headers: dict[str, str],
                    data: bytes) -> web.Response:
        assert self._session is not None
        async with self._session.request(request.method, backend + request.path_qs,
                                         headers=headers, data=data,
                                         allow_redirects=False) as answer:
            self.requests[backend] += 1
            body = await answer.read()
            # A multidict: ACME answers carry several Link headers (index, up).
            out = CIMultiDict((k, v) for k, v in answer.headers.items()
                              if k.lower() not in _HOP_BY_HOP)
            return web.Response(status=answer.status, body=body, headers=out)
