"""ACME nonces of several serving processes without a shared store (issue 18): each worker
issues nonces from its own ``MemoryAcmeState`` whose counters carry the worker's index in
their top byte, inside the MACed part (so a client cannot make a nonce name another
issuer). A worker that receives a nonce of its own index consumes it in memory, as one
process does; one of another index asks that worker over a unix socket, one line each way
("<nonce>" -> "1" or "0"), and the owner consumes it. This is the design of Boulder's
nonce service (a nonce prefix routes the redemption to the instance that issued it),
without its separate service: the workers are one another's nonce services.

An owner that cannot be reached (restarting, or gone) answers false: the client gets
badNonce and retries with the fresh nonce it carries (RFC 8555 6.5). A restarted worker has
a new key, so nonces of its predecessor are refused the same way.

Rate-limit counters (``hit``) stay each process's own: with N workers a limit is N times
what one process allows (README, VCC_PKI_ACME_*_RATE settings).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
from collections import deque
from pathlib import Path

from ca_core.acme_state import AcmeState
from db.acme_state import MAX_MEMORY_NONCES, MemoryAcmeState

log = logging.getLogger(__name__)

MAX_WORKERS = 256  # the index is one byte of the counter
INDEX_SHIFT = 56  # counters are 8 bytes; the top one names the worker
ASK_TIMEOUT = 1.0  # seconds an owner has to answer before the nonce counts as bad
_MAX_LINE = 128  # a nonce is 32 characters; a longer line is not one of ours
_UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux, less elsewhere
_NONCE = re.compile(r"[A-Za-z0-9_-]{4,64}")  # base64url: no newline can reach the socket


def socket_address(data_dir: Path, index: int) -> str:
    """Where worker ``index`` of the gateway with ``data_dir`` answers. A file in the data
    directory (its permissions keep other users out); if that path is too long for a unix
    socket, an abstract (Linux) name derived from it."""
    path = str(data_dir.resolve() / "run" / f"nonce-{index}.sock")
    if len(path.encode()) <= _UNIX_PATH_MAX:
        return path
    digest = hashlib.sha256(path.encode()).hexdigest()[:24]
    return f"\0vcc-pki-nonce-{digest}"


def _owner(nonce: str) -> int | None:
    """The worker index of a nonce (its first byte), None if it is not base64url."""
    if not _NONCE.fullmatch(nonce):
        return None
    try:
        return base64.b64decode(nonce[:4], altchars=b"-_", validate=True)[0]
    except (ValueError, binascii.Error):
        return None


class _Connection:
    """One open connection to another worker: questions are written as they come (many in
    flight), the answers come back in the same order and are handed out by one reader."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.waiting: deque[asyncio.Future[bool]] = deque()
        self.task = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while (answer := await reader.readline()) in (b"1\n", b"0\n"):
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(answer == b"1\n")
        except (OSError, IndexError, ValueError):
            pass
        finally:
            self.close()

    def ask(self, nonce: str) -> asyncio.Future[bool]:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.writer.write(nonce.encode("ascii") + b"\n")
        return future

    @property
    def closed(self) -> bool:
        return self.task.done() or self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("connection closed"))


class _Peer:
    """The connection to another worker, opened on first use and again once it fails."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._opening = asyncio.Lock()
        self._connection: _Connection | None = None

    async def _connect(self) -> _Connection:
        async with self._opening:
            if self._connection is None or self._connection.closed:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(self._address), ASK_TIMEOUT)
                self._connection = _Connection(reader, writer)
            return self._connection

    async def ask(self, nonce: str) -> bool:
        for attempt in (1, 2):  # a connection the owner closed (it restarted): once more
            try:
                async with asyncio.timeout(ASK_TIMEOUT):  # no task per question
                    connection = await self._connect()
                    # shield: a late answer still finds its future (the order holds)
                    return await asyncio.shield(connection.ask(nonce))
            except (OSError, ConnectionError, TimeoutError) as exc:
                if attempt == 2 or isinstance(exc, TimeoutError):
                    log.info("nonce owner %s unreachable: %r", self._address, exc)
                    return False
        return False

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection.task.cancel()
            self._connection = None


class RoutedAcmeState(AcmeState):
    """Worker ``index`` of ``workers``, answering at ``addresses[index]`` (``start``)."""

    name = "memory-routed"

    def __init__(self, index: int, addresses: list[str],
                 max_nonces: int = MAX_MEMORY_NONCES) -> None:
        if not 0 <= index < len(addresses) <= MAX_WORKERS:
            raise ValueError(f"worker index {index} of {len(addresses)} (at most {MAX_WORKERS})")
        self.index = index
        self._addresses = addresses
        self.local = MemoryAcmeState(max_nonces, counter_base=index << INDEX_SHIFT)
        self._peers: dict[int, _Peer] = {}
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.StreamWriter] = set()  # peers' open connections

    async def start(self) -> None:
        """Listen for the other workers' questions (before this worker serves ACME)."""
        address = self._addresses[self.index]
        if not address.startswith("\0"):
            path = Path(address)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a predecessor's (a restarted worker, a crash)
        self._server = await asyncio.start_unix_server(self._answer, address,
                                                       limit=_MAX_LINE)
        if not address.startswith("\0"):
            os.chmod(address, 0o600)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        self._clients.add(writer)
        try:
            while line := await reader.readline():
                nonce = line.rstrip(b"\n").decode("ascii", "replace")
                used = _owner(nonce) == self.index and await self.local.consume_nonce(nonce)
                writer.write(b"1\n" if used else b"0\n")
                if writer.transport.get_write_buffer_size() > 65536:
                    await writer.drain()  # a peer that does not read its answers
        except (OSError, ValueError):  # a peer gone, a line over the limit
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    async def issue_nonce(self) -> str:
        return await self.local.issue_nonce()

    async def consume_nonce(self, nonce: str) -> bool:
        owner = _owner(nonce)
        if owner is None or owner >= len(self._addresses):
            return False
        if owner == self.index:
            return await self.local.consume_nonce(nonce)
        peer = self._peers.get(owner)
        if peer is None:
            peer = self._peers[owner] = _Peer(self._addresses[owner])
        return await peer.ask(nonce)

    async def hit(self, key: str, limit: int, window_seconds: int) -> float | None:
        return await self.local.hit(key, limit, window_seconds)

    async def close(self) -> None:
        for peer in self._peers.values():
            peer.close()
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):  # else wait_closed waits for the peers
                writer.close()
            await self._server.wait_closed()
            address = self._addresses[self.index]
            if not address.startswith("\0"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(address)
