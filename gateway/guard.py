"""Limits on clients that hold connections instead of sending requests (issue 16).

aiohttp bounds what one request may hold (the header limits, ``client_max_size``) and,
through its keep-alive timer, how long a connection may wait for a complete set of headers
(``runner_options``). What it does not bound is how many connections one client opens and
how long a request body may take to arrive. This module adds both:

- ``GuardedSite`` listens like ``web.TCPSite`` but counts the connections of each client
  address: one over ``VCC_PKI_HTTP_MAX_CONNECTIONS_PER_CLIENT`` is closed at once (after
  the TLS handshake on a TLS listener), before aiohttp sees it.
- ``body_deadline`` closes the connection of a request whose body has not fully arrived
  within ``VCC_PKI_HTTP_BODY_TIMEOUT_SECONDS`` (a slow body); the app middleware arms it.

Behind a proxy every connection comes from the proxy's address: set the per-client limit
to 0 there and let the proxy enforce its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("vcc_pki.http")


class ConnectionLimiter:
    """Open connections per client address; ``limit`` 0 counts nothing."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()
        self.refused = 0

    def acquire(self, address: str) -> bool:
        if self.limit and self.open[address] >= self.limit:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                # One line now and then, not one per refused connection: a flood is the
                # case this limit exists for.
                log.warning("client %s holds %d connections (the limit): refused "
                            "(%d refused so far)", address, self.limit, self.refused)
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, admitted only within the client's limit."""

    __slots__ = ("_address", "_inner", "_limiter")

    def __init__(self, limiter: ConnectionLimiter, inner: asyncio.Protocol) -> None:
        self._limiter = limiter
        self._inner = inner
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._limiter.acquire(address):
            if isinstance(transport, asyncio.Transport):
                transport.abort()  # no FIN handshake, no TLS close_notify: it is a flood
            else:
                transport.close()
            return
        self._address = address
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is None:
            return  # refused: aiohttp never saw it
        self._limiter.release(self._address)
        self._address = None
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._address is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._address is not None else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections pass a ConnectionLimiter first."""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, *,
                 limiter: ConnectionLimiter, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.limiter = limiter

    async def start(self) -> None:
        # TCPSite.start with the protocol factory wrapped; BaseSite.start registers the
        # site with its runner.
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        limiter = self.limiter

        def factory() -> asyncio.Protocol:
            return _Guarded(limiter, server())

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
        else:
            self._bound_port = self._port


def _not_fired() -> bool:
    return False


_NOT_FIRED: Callable[[], bool] = _not_fired


def body_deadline(request: web.Request, seconds: float) -> Callable[[], bool] | None:
    """Close the connection unless the request's body has fully arrived within ``seconds``
    (whether or not the handler has read it yet). Returns a function that disarms the timer
    and tells whether it fired; None for a request without a body."""
    if not request.body_exists:
        return None
    content = request.content
    if content.is_eof():
        # A small body (a CSR in JSON) has arrived with the headers: nothing to wait for,
        # and no timer to arm and cancel on every request.
        return _NOT_FIRED
    transport = request.transport
    fired = False

    def expire() -> None:
        nonlocal fired
        if not content.is_eof() and transport is not None and not transport.is_closing():
            fired = True
            log.info("%s %s: the body did not arrive within %g s: connection closed",
                     request.method, request.path, seconds)
            transport.close()

    handle = asyncio.get_running_loop().call_later(seconds, expire)

    def disarm() -> bool:
        handle.cancel()
        return fired

    return disarm
