"""The pieces the ACME row of conformance/bench/replicas.py adds (issue 15): the round-robin
proxy in its own process reports the connections it piped per backend, and acme.py's server
CPU sums every replica's process tree. No gateway, no database: seconds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable

from conformance.bench import acme
from conformance.gateway import free_port
from conformance.replicas.proxy import running_proxy


def test_server_cpu_sums_the_replicas() -> None:
    # A child that burns a little CPU, then waits for its stdin to close.
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys\nsum(range(3_000_000))\nsys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        assert child.stdin is not None
        alone = acme.Target("postgres", "one", pid=os.getpid())
        both = acme.Target("postgres", "two", pids=[os.getpid(), child.pid])
        own, total = acme._server_cpu(alone), acme._server_cpu(both)
        assert own is not None and total is not None
        child_cpu = acme._tree_cpu(child.pid)
        assert child_cpu is not None
        assert total >= own + child_cpu - 0.05  # own CPU grows between the readings
        assert acme._server_cpu(acme.Target("postgres", "gone", pids=[2**22 + 1])) is None
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


def test_proxy_process_spreads_connections() -> None:
    async def run() -> dict[int, int]:
        answered: list[int] = []

        def backend(index: int
                    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                  Awaitable[None]]:
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                             ) -> None:
                data = await reader.readline()
                answered.append(index)
                writer.write(data.upper())
                await writer.drain()
                writer.close()
            return handle

        servers = [await asyncio.start_server(backend(i), "127.0.0.1", 0) for i in range(3)]
        backends = [("127.0.0.1", s.sockets[0].getsockname()[1]) for s in servers]
        port = free_port()
        with running_proxy(port, backends) as spread:
            for n in range(6):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"ping %d\n" % n)
                await writer.drain()
                assert await reader.readline() == b"PING %d\n" % n
                writer.close()
        for server in servers:
            server.close()
        assert sorted(answered) == [0, 0, 1, 1, 2, 2]
        return dict(spread)

    assert asyncio.run(run()) == {0: 2, 1: 2, 2: 2}
