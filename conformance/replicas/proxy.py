"""A round-robin TCP proxy for the replica tests (issue 15): connection N goes to replica
N mod 3, its bytes piped both ways untouched (TLS passes through: the client's handshake is
with the replica), as a layer-4 balancer (Kubernetes Service, an Ingress with TLS
passthrough, HAProxy in TCP mode) does.

A layer-4 balancer places connections, not requests: an ACME client keeps one keep-alive
connection for a whole order. The replicas are therefore started with
``VCC_PKI_HTTP_KEEPALIVE_REQUESTS=1`` (nginx's keepalive_requests): every answer says
``Connection: close``, the client opens a new connection for its next request, and that one
goes to the next replica. A connection the proxy closed under the client instead would not
do: Go does not retry a POST that meets a connection closed under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection


@dataclass
class Piped:
    """One accepted connection: its number (from 1), the backend it went to (None: every
    backend refused it) and the bytes each way."""

    number: int
    backend: int | None
    upstream_bytes: int = 0
    downstream_bytes: int = 0


class TcpRoundRobinProxy:
    def __init__(self, backends: Sequence[tuple[str, int]]) -> None:
        self.backends = list(backends)  # (host, port) of each replica's listener
        self.connections: list[Piped] = []
        self.refused: Counter[int] = Counter()  # connections refused, per backend index
        # Called with the connection's number before it is piped (a test's hook).
        self.before_connection: Callable[[int], Awaitable[None]] | None = None
        self._next = itertools.cycle(range(len(self.backends)))
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    def per_backend(self) -> Counter[int]:
        """Connections piped, per backend index."""
        return Counter(c.backend for c in self.connections if c.backend is not None)

    async def start(self, port: int, host: str = "127.0.0.1") -> None:
        self._server = await asyncio.start_server(self._accept, host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        record = Piped(len(self.connections) + 1, None)
        self.connections.append(record)
        try:
            if self.before_connection is not None:
                await self.before_connection(record.number)
            upstream = await self._connect(record)
            if upstream is None:
                return
            up_reader, up_writer = upstream
            try:
                await asyncio.gather(self._pipe(reader, up_writer, record, "upstream_bytes"),
                                     self._pipe(up_reader, writer, record, "downstream_bytes"))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._pipes.discard(task)

    async def _connect(self, record: Piped
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _attempt in range(len(self.backends)):
            index = next(self._next)
            try:
                connection = await asyncio.open_connection(*self.backends[index])
            except OSError:
                # Nothing was sent yet: a balancer skips a replica that refuses connections.
                self.refused[index] += 1
                continue
            record.backend = index
            return connection
        return None

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: Piped,
                    counter: str) -> None:
        """Copy until end of file, then half-close the other side (TLS close_notify and the
        FIN pass through as they came)."""
        try:
            while data := await source.read(65536):
                setattr(record, counter, getattr(record, counter) + len(data))
                sink.write(data)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except (ConnectionError, OSError):
            with contextlib.suppress(Exception):
                sink.close()


# ---- the proxy in a process of its own (conformance/bench/replicas.py) -----------------


def _proxy_main(conn: Connection, port: int, backends: list[tuple[str, int]]) -> None:
    """Child process: the TCP round-robin proxy until the parent sends "stop";
    answers with the connections piped per backend."""

    async def run() -> None:
        proxy = TcpRoundRobinProxy(backends)
        await proxy.start(port)
        conn.send("ready")
        await asyncio.to_thread(conn.recv)
        conn.send(dict(proxy.per_backend()))
        await proxy.close()

    asyncio.run(run())


@contextlib.contextmanager
def running_proxy(port: int, backends: list[tuple[str, int]]
                  ) -> Iterator[Counter[int]]:
    """The proxy in its own process (the bench's own loop blocks on the load processes);
    on exit the yielded counter holds the connections piped per backend."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_proxy_main, args=(child, port, backends), daemon=True)
    process.start()
    child.close()
    spread: Counter[int] = Counter()
    try:
        if not parent.poll(60) or parent.recv() != "ready":
            raise RuntimeError("the TCP proxy did not start")
        yield spread
        parent.send("stop")
        if parent.poll(30):
            spread.update(parent.recv())
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
