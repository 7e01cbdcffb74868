"""A tiny authoritative DNS server for ACME tests (UDP and TCP, on loopback).

Every A query is answered with ``--address`` (127.0.0.1), so any test name resolves to
the machine the clients run on; AAAA gets no answer. TXT records come from files in
``--records``: the file named after the FQDN (``_acme-challenge.svc.test``, without the
trailing dot) holds one value per line. ACME clients publish dns-01 answers by writing
those files (lego's ``exec`` provider: ``conformance/acme/lego_dns_hook.sh``); the
gateway's validator is pointed here with ``VCC_PKI_ACME_DNS_RESOLVER=127.0.0.1:PORT``.

    python -m conformance.testdns --port 5353 --records /tmp/txt
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class TestDns:
    def __init__(self, records: Path, address: str = "127.0.0.1") -> None:
        self.records = records
        self.address = address

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            name = question.name.to_text(omit_final_dot=True).lower()
            if question.rdtype == dns.rdatatype.A:
                response.answer.append(dns.rrset.from_text(
                    question.name, 1, dns.rdataclass.IN, dns.rdatatype.A, self.address))
            elif question.rdtype == dns.rdatatype.TXT:
                values = self._txt(name)
                if values:
                    response.answer.append(dns.rrset.from_text_list(
                        question.name, 1, dns.rdataclass.IN, dns.rdatatype.TXT,
                        [f'"{v}"' for v in values]))
                elif not name.startswith("_acme-challenge."):
                    response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    def _txt(self, name: str) -> list[str]:
        path = self.records / name
        if "/" in name or not path.is_file():
            return []
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: TestDns) -> None:
        self.server = server
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # a datagram transport: it has sendto

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def _tcp(server: TestDns, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter) -> None:
    try:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        reply = server.answer(await reader.readexactly(length))
        if reply is not None:
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int, records: Path, address: str = "127.0.0.1",
                ready: Callable[[], None] | None = None) -> None:
    """Answer on UDP and TCP ``port`` until cancelled; ``ready`` is called once both
    listen. Each socket is closed however the task ends (a cancel that came while the
    TCP server was starting left the UDP socket open: a ResourceWarning, later, in
    whichever test the garbage collector ran)."""
    server = TestDns(records, address)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(server),
                                                       local_addr=("127.0.0.1", port))
    try:
        tcp = await asyncio.start_server(lambda r, w: _tcp(server, r, w), "127.0.0.1", port)
        try:
            if ready is not None:
                ready()
            await asyncio.Event().wait()
        finally:
            tcp.close()
            await tcp.wait_closed()
    finally:
        transport.close()


@contextlib.contextmanager
def running(port: int, records: Path) -> Iterator[None]:
    """The server in a background thread, for tests in this process."""
    import threading

    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        task = loop.create_task(serve(port, records, ready=started.set))
        try:
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
        finally:
            started.set()  # a server that could not start: the caller waits no longer
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(5)
    try:
        yield
    finally:
        for task in asyncio.all_tasks(loop):
            loop.call_soon_threadsafe(task.cancel)
        thread.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=5353)
    parser.add_argument("--records", type=Path, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    args = parser.parse_args()
    args.records.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.port, args.records, args.address))


if __name__ == "__main__":
    main()
