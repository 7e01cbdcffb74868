"""The transport attacks, per protocol, each with the protocol's valid control request
answered correctly while the attack holds the gateway:

- huge bodies: the route's limit plus one, with a Content-Length and chunked without one:
  413 in the protocol's form; for a GET route a URL beyond the request-line limit: 4xx;
- slow bodies: a body that stops arriving is cut off (VCC_PKI_HTTP_BODY_TIMEOUT_SECONDS),
  without an answer;
- abandoned bodies: half a body, then the client hangs up;
- slowloris headers: headers that never end are cut off (VCC_PKI_HTTP_KEEPALIVE_SECONDS);
- many connections from one address: the ones over VCC_PKI_HTTP_MAX_CONNECTIONS_PER_CLIENT
  are closed at once, and a client at another address is still served (the attacker is
  at 127.0.0.2 and up, one address per protocol: all of 127/8 is loopback; the other
  attacks of a protocol come from 127.0.1.N).

The attacks of one round run at once, all protocols together: what one holds, the others
must be served through.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from conformance.hostile.forms import CHECKS, Answer
from conformance.hostile.surfaces import Control, Surface

APP_LIMIT = 256 * 1024  # VCC_PKI_MAX_BODY_BYTES: every app's client_max_size
CUT_OFF_WITHIN = 60.0  # seconds: a failure bound on a loaded machine, not a timing assert


@dataclass(frozen=True, slots=True)
class Outcome:
    protocol: str
    attack: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a listener is and how to reach it."""

    host: str
    port: int
    tls: ssl.SSLContext | None


@dataclass
class Attacker:
    session: aiohttp.ClientSession
    urls: dict[str, str]  # listener -> base URL
    tls: ssl.SSLContext
    control: Callable[[Control], Awaitable[str | None]]  # None when answered correctly
    connections_per_client: int
    workers: int

    def target(self, listener: str) -> Target:
        parts = urlsplit(self.urls[listener])
        assert parts.hostname is not None and parts.port is not None
        return Target("127.0.0.1", parts.port, self.tls if parts.scheme == "https" else None)

    async def _open(self, target: Target, local: str = "127.0.0.1"
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            target.host, target.port, ssl=target.tls,
            server_hostname="localhost" if target.tls else None, local_addr=(local, 0))

    async def _meanwhile(self, control: Control) -> str | None:
        return await self.control(control)

    # --------------------------------------------------------------- huge bodies
    async def huge_bodies(self, surface: Surface) -> list[Outcome]:
        base = self.urls[surface.listener]
        headers = {**surface.headers, "Content-Type": surface.content_type}
        outcomes = []
        if not surface.body_limit:
            url = base + surface.path + surface.tail + "A" * 9000
            async with self.session.get(url, headers=surface.headers) as response:
                await response.read()
                ok = 400 <= response.status < 500
            outcomes.append(Outcome(surface.protocol, f"{surface.name}: URL of 9 KiB", ok,
                                    "" if ok else f"answered {response.status}"))
            return outcomes
        body = b"0" * (surface.body_limit + 1)

        async def chunks() -> AsyncIterator[bytes]:
            # Never announced, and beyond the app's client_max_size (256 KiB) too.
            for _ in range(max(2, APP_LIMIT // surface.body_limit + 1)):
                yield b"0" * surface.body_limit

        for label, data in (("Content-Length limit+1", body), ("chunked", None)):
            try:
                async with self.session.post(base + surface.path, headers=headers,
                                             data=data if data is not None else chunks()
                                             ) as response:
                    answer = Answer(response.status, response.content_type,
                                    await response.read())
            except aiohttp.ClientError as exc:
                outcomes.append(Outcome(surface.protocol, f"{surface.name}: {label}", False,
                                        f"no answer: {exc!r}"))
                continue
            fault = CHECKS[surface.protocol](answer)
            ok = answer.status == 413 and fault is None
            outcomes.append(Outcome(surface.protocol, f"{surface.name}: {label}", ok,
                                    "" if ok else f"{answer.status} {fault or ''}"))
        return outcomes

    # --------------------------------------------------------------- held connections
    async def _cut_off(self, name: str, protocol: str, listener: str, opening: bytes,
                       control: Control, address: str) -> Outcome:
        """Send ``opening`` and nothing more: the gateway must close the connection without
        an answer, and serve the control request meanwhile."""
        reader, writer = await self._open(self.target(listener), address)
        try:
            writer.write(opening)
            await writer.drain()
            served = await self._meanwhile(control)
            try:
                data = await asyncio.wait_for(reader.read(), CUT_OFF_WITHIN)
            except (ConnectionError, ssl.SSLError):
                data = b""
            except TimeoutError:
                return Outcome(protocol, name, False, f"still open after {CUT_OFF_WITHIN} s")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 5)
        if data:
            return Outcome(protocol, name, False, f"answered {data[:40]!r}")
        if served is not None:
            return Outcome(protocol, name, False, f"control meanwhile: {served}")
        return Outcome(protocol, name, True)

    async def slow_body(self, surface: Surface, control: Control, address: str) -> Outcome:
        head = (f"POST {surface.path} HTTP/1.1\r\nHost: localhost\r\n"
                f"Content-Type: {surface.content_type}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in surface.headers.items())
                + f"Content-Length: {len(surface.seed) + 1000}\r\n\r\n").encode()
        return await self._cut_off(f"{surface.name}: slow body", surface.protocol,
                                   surface.listener, head + surface.seed[:10], control,
                                   address)

    async def abandoned_body(self, surface: Surface, control: Control, address: str
                             ) -> Outcome:
        """Half a body, then the client hangs up: nothing to answer, nothing to log above
        INFO (checked in the log), the control served."""
        head = (f"POST {surface.path} HTTP/1.1\r\nHost: localhost\r\n"
                f"Content-Type: {surface.content_type}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in surface.headers.items())
                + f"Content-Length: {len(surface.seed) + 1000}\r\n\r\n").encode()
        _, writer = await self._open(self.target(surface.listener), address)
        writer.write(head + surface.seed[:10])
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.drain()
        writer.transport.abort()
        served = await self._meanwhile(control)
        return Outcome(surface.protocol, f"{surface.name}: abandoned body", served is None,
                       "" if served is None else f"control meanwhile: {served}")

    async def slowloris(self, surface: Surface, control: Control, address: str) -> Outcome:
        opening = (f"GET {surface.path} HTTP/1.1\r\nHost: localhost\r\nX-Slow: a").encode()
        return await self._cut_off(f"{surface.name}: slowloris headers", surface.protocol,
                                   surface.listener, opening, control, address)

    async def _answered(self, target: Target, address: str, request: bytes
                        ) -> tuple[asyncio.StreamWriter | None, bool]:
        """A connection from ``address`` that sends ``request``: is it answered?"""
        try:
            reader, writer = await self._open(target, address)
        except (ConnectionError, ssl.SSLError):
            return None, False
        try:
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.read(12), CUT_OFF_WITHIN)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            head = b""
        return writer, head.startswith(b"HTTP/1.1 ")

    async def many_connections(self, protocol: str, listener: str, control: Control,
                               address: str) -> Outcome:
        """``limit`` connections from ``address`` at once (each answers a request and is
        kept open), then more: with one serving process the next is closed at once; with
        several (the kernel spreads connections between them) at least one of limit x
        workers + workers is. A client at 127.0.0.1 is served meanwhile. The held ones
        must all be open at the same time, which the keep-alive timer ends: on a machine
        too loaded to open them in time the attack is tried again (three times at most)."""
        target = self.target(listener)
        limit = self.connections_per_client
        request = (f"{control.method} {control.path} HTTP/1.1\r\nHost: localhost\r\n"
                   "\r\n").encode()
        name = f"{protocol}: {limit * self.workers + self.workers} connections from {address}"
        detail = ""
        for _ in range(3):
            held: list[asyncio.StreamWriter] = []
            try:
                first = await asyncio.gather(*(self._answered(target, address, request)
                                               for _ in range(limit * self.workers)))
                extra = [await self._answered(target, address, request)
                         for _ in range(self.workers)]
                held = [w for w, _ in first + extra if w is not None]
                served = await self._meanwhile(control)
            finally:
                for writer in held:
                    writer.close()
                for writer in held:
                    with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                        await asyncio.wait_for(writer.wait_closed(), 5)
            admitted = sum(ok for _, ok in first)
            refused = sum(not ok for _, ok in extra)
            if self.workers == 1 and admitted < limit:
                detail = f"only {admitted} of the first {limit} answered"
                continue  # some were closed before the last was opened: again
            if (refused if self.workers == 1 else refused + limit * self.workers - admitted) < 1:
                return Outcome(protocol, name, False,
                               f"none refused ({admitted} + {len(extra)} answered, limit "
                               f"{limit})")
            if served is not None:
                return Outcome(protocol, name, False, f"control meanwhile: {served}")
            return Outcome(protocol, name, True)
        return Outcome(protocol, name, False, detail)

    async def run(self, protocol: str, surfaces: list[Surface], control: Control,
                  address: str, held_address: str) -> list[Outcome]:
        """Every attack on ``protocol`` at once: many connections from ``address``, the
        held ones (slow, abandoned, slowloris) from ``held_address``, so that neither counts
        against the other nor against the controls' own client at 127.0.0.1."""
        jobs: list[Awaitable[Outcome | list[Outcome]]] = []
        for surface in surfaces:
            jobs.append(self.huge_bodies(surface))
            if surface.body_limit:
                jobs += [self.slow_body(surface, control, held_address),
                         self.abandoned_body(surface, control, held_address)]
        jobs += [self.slowloris(surfaces[0], control, held_address),
                 self.many_connections(protocol, surfaces[0].listener, control, address)]
        outcomes: list[Outcome] = []
        for done in await asyncio.gather(*jobs):
            outcomes += done if isinstance(done, list) else [done]
        return outcomes
