"""ACME load benchmark: whole RFC 8555 flows against ``vcc-pki serve`` and against Pebble,
in the same run.

Run ``python -m conformance.bench.acme [--seconds 20] [--clients 16 64] [--rounds 2]
[--only sqlite postgres pebble] [--variants new-account reuse-account]``. It prints figures
and never asserts on them (see ``conformance/bench/README.md``).

``--clients`` concurrent ACME clients, spread over ``--load-procs`` load processes, each run
whole flows in a loop for ``--seconds``:

  new-account   new account key + newAccount, then the order flow below
  reuse-account one account per client, made before the measured window, then order flows

order flow: newOrder for a unique name ``o<N>.bench.test``, fetch the authorization, publish
the http-01 key authorization, POST the challenge, poll the authorization every
``--poll-ms`` until it is valid, fetch the order (ready), finalize with a fresh P-256 CSR,
poll the order until valid, download the certificate chain. A flow counts when the chain
came back; its latency is the whole flow's.

Both servers validate for real: the names resolve through ``conformance.testdns`` (every A
query -> 127.0.0.1) and the http-01 fetches go to one responder, both in a child process
(a bare asyncio HTTP server that reads the key authorization the load processes wrote to a
tmpfs directory). The gateway is started the normal way (``vcc-pki init`` + ``serve``,
software ECDSA P-256 CAs, SQLite and, when reachable, PostgreSQL); Pebble (Debian package
``pebble``) runs with ``PEBBLE_VA_NOSLEEP=1`` (no validation sleep) and
``PEBBLE_WFE_NONCEREJECT=0`` (no deliberate badNonce), a TLS certificate made here for its
listener, and ``-dnsserver`` pointing at the test DNS server. It is started afresh before
each of its measurements; Debian's Pebble 2.4 deadlocks under concurrent load, so a Pebble
whose flows get stuck is stopped with a goroutine dump, its rate counted until the deadlock
and the measurement repeated (see ``measure_target``). ``--only ... sqlite-w2`` adds
vcc-pki with two serving processes (``VCC_PKI_WORKERS=2``) sharing ACME state in Redis,
``sqlite-w2-routed`` the same without Redis (the default deployment: nonces routed to the
worker that issued them, see ``db/nonce_routing.py``).

Rounds alternate the targets (A B A B); the table gives medians over rounds, and the ratio
vcc-pki/Pebble is taken within each round before its median is taken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import math
import multiprocessing
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conformance.bench.issuance import (
    CONFIGS,
    STOP,
    Postgres,
    _cpu_times,
    _env,
    install_stop_handlers,
    percentile,
    print_grid,
    steal_meter,
)
from conformance.gateway import Gateway, free_port, running_gateway

DOMAIN = "bench.test"
ACCOUNTS_PER_ORG = 290  # the gateway allows 300 new accounts per organization and hour
ERR_PREFIX = "urn:ietf:params:acme:error:"
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
VARIANTS = ("new-account", "reuse-account")
TARGETS = ("sqlite", "postgres", "pebble", "sqlite-w2", "sqlite-w2-routed")
DEFAULT_TARGETS = ("sqlite", "postgres", "pebble")
TARGET_RATE = 100.0  # complete orders/s, vcc-pki on SQLite
TARGET_RATIO = 1.0  # vcc-pki / Pebble
GRACE = 10.0  # seconds a flow still running at the end of the window may take to finish
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- results


@dataclass
class Run:
    """One measurement: complete orders per second and the cost around them."""

    rate: float
    count: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: Counter[str]
    bad_nonce_retries: int = 0
    requests_per_flow: float = 0.0
    phases_ms: dict[str, float] = field(default_factory=dict)  # p50 of each phase
    client_cpu: float = 0.0  # cores used by the load processes
    server_cpu: float | None = None  # cores used by the server process
    responder_cpu: float | None = None  # cores used by the DNS + http-01 child
    machine_busy: float | None = None  # cores busy on the whole machine
    steal: float | None = None
    samples: list[str] = field(default_factory=list)  # first error details
    last_done: float = 0.0  # seconds from the start to the last complete flow
    round_no: int = 0
    deadlock_after: float | None = None  # Pebble: flows got stuck; rate counts until then

    @property
    def server_ms_per_order(self) -> float | None:
        """Server CPU (utime + stime of the serving process tree) per complete order, in
        ms: unlike the rate, it hardly moves with what else the machine runs."""
        if self.server_cpu is None or not self.count:
            return None
        seconds = self.deadlock_after if self.deadlock_after is not None else self.seconds
        return self.server_cpu * seconds / self.count * 1000


@dataclass
class Target:
    name: str  # sqlite | postgres | pebble
    label: str
    skipped: str = ""
    directory: str = ""  # URL; for vcc-pki a template with {org}
    ca_file: Path | None = None
    pid: int | None = None
    log: Path | None = None
    gateway: Gateway | None = None
    orgs: OrgPool | None = None
    pebble: Pebble | None = None
    stalls: list[str] = field(default_factory=list)  # Pebble restarts, with their logs
    runs: dict[tuple[str, int], list[Run]] = field(default_factory=dict)
    best_rate: float = 0.0
    pids: list[int] = field(default_factory=list)  # replicas (bench/replicas.py): all serve

    @property
    def vcc(self) -> bool:
        return self.name != "pebble"


# ---------------------------------------------------------------------------- helpers




def _beside_python(name: str) -> str | None:
    """A console script of this interpreter's environment (a venv not on PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def _proc_cpu(pid: int | None) -> float | None:
    """utime + stime of a process in seconds, or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            after_comm = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(after_comm[11]) + int(after_comm[12])) / CLK_TCK


def _tree_cpu(pid: int | None) -> float | None:
    """CPU seconds of a process and its children (``serve --workers N`` starts N-1)."""
    total = _proc_cpu(pid)
    if total is None:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields_ = (entry / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields_[1] == str(pid):
            total += _proc_cpu(int(entry.name)) or 0.0
    return total


def _server_cpu(target: Target) -> float | None:
    """CPU seconds of the serving processes and their children: ``target.pids`` when set
    (several replicas), else ``target.pid``."""
    pids: list[int | None] = [*target.pids] or [target.pid]
    values = [_tree_cpu(pid) for pid in pids]
    return None if None in values else sum(v or 0.0 for v in values)


def _busy_jiffies() -> int:
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            values = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0
    return sum(values) - values[3] - values[4]  # without idle and iowait


def _tmpfs_dir(prefix: str) -> Path:
    """A directory on tmpfs when there is one: the token files are written per flow."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _probe(url: str, context: ssl.SSLContext, timeout: float = 60.0,
           process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers 200."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
        time.sleep(0.05)  # polling interval, not a fixed wait
    raise TimeoutError(f"{url} not ready after {timeout:g}s: {last}")


# ---------------------------------------------------------------------------- TLS for Pebble


def make_listener_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a localhost/127.0.0.1 server certificate for Pebble's listener
    (Debian's pebble ships none). Returns (ca.pem, cert.pem, key.pem)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme bench Pebble TLS CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                     False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


# ---------------------------------------------------------------------------- responder


_PREFIX = b"/.well-known/acme-challenge/"


class _Http01(asyncio.Protocol):
    """Answers GET /.well-known/acme-challenge/<token> with the file <tokens>/<token>."""

    def __init__(self, tokens: Path) -> None:
        self.tokens = tokens
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > 16384 and self.transport is not None:
                self.transport.close()
            return
        parts = self.buffer.split(b"\r\n", 1)[0].split()
        self.buffer = b""
        status, reason, body = 404, b"Not Found", b""
        if len(parts) >= 2 and parts[0] == b"GET" and parts[1].startswith(_PREFIX):
            token = parts[1][len(_PREFIX):].decode("ascii", "replace")
            if TOKEN_RE.fullmatch(token):
                with contextlib.suppress(OSError):
                    body = (self.tokens / token).read_bytes()
                    status, reason = 200, b"OK"
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (status, reason, len(body), body))
            self.transport.close()


def _responder_main(conn: Connection, http_port: int, dns_port: int, tokens: str,
                    records: str) -> None:
    """Child process: the test DNS server and the http-01 responder on one event loop."""
    from conformance import testdns

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Http01(Path(tokens)), "127.0.0.1",
                                          http_port, backlog=1024)
        dns_task = asyncio.create_task(testdns.serve(dns_port, Path(records)))
        await asyncio.sleep(0)
        conn.send("ready")
        try:
            await dns_task
        finally:
            server.close()

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(run())


@contextlib.contextmanager
def running_responder(tokens: Path, records: Path) -> Iterator[tuple[int, int, int]]:
    """(http-01 port, DNS port, pid) of the responder child process."""
    http_port, dns_port = free_port(), free_port(socket.SOCK_DGRAM)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_responder_main, daemon=True,
                          args=(child, http_port, dns_port, str(tokens), str(records)))
    process.start()
    child.close()
    try:
        if not parent.poll(60) or parent.recv() != "ready":
            raise RuntimeError("the DNS/http-01 responder did not start")
        assert process.pid is not None
        yield http_port, dns_port, process.pid
    finally:
        process.terminate()
        process.join(10)
        if process.is_alive():
            process.kill()


# ---------------------------------------------------------------------------- load process


class AcmeError(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def _load_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Child process: ``spec["clients"]`` ACME clients running whole flows."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    try:
        asyncio.run(_load(conn, spec))
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send({"error": f"{type(exc).__name__}: {exc}"[:500]})
    finally:
        conn.close()


async def _load(conn: Connection, spec: dict[str, Any]) -> None:
    import aiohttp

    from tests.acme_client import AccountKey, b64, csr_for, jws

    tokens = Path(spec["tokens"])
    poll = spec["poll_ms"] / 1000
    reuse = spec["variant"] == "reuse-account"
    slots: list[list[Any]] = [list(s) for s in spec["org_slots"]]  # [org, accounts left]
    directories: dict[str, dict[str, Any]] = {}
    dir_locks: dict[str, asyncio.Lock] = {}
    errors: Counter[str] = Counter()
    samples: list[str] = []
    latencies: list[float] = []
    done_at: list[float] = []
    phases: dict[str, list[float]] = {p: [] for p in
                                      ("account", "order", "validation", "finalize", "download")}
    counters = {"requests": 0, "bad_nonce": 0, "names": 0}
    accounts_used: Counter[str] = Counter()

    def current_org() -> str:
        if not slots:
            return ""
        while len(slots) > 1 and slots[0][1] <= 0:
            slots.pop(0)
        return str(slots[0][0])

    def take_org() -> str:
        org = current_org()
        if slots:
            slots[0][1] -= 1
            accounts_used[org] += 1
        return org

    context = ssl.create_default_context(cafile=spec["ca_file"])
    connector = aiohttp.TCPConnector(limit=0, ssl=context)
    timeout = aiohttp.ClientTimeout(total=spec["request_timeout"])
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def directory(org: str) -> dict[str, Any]:
            found = directories.get(org)
            if found is not None:
                return found
            async with dir_locks.setdefault(org, asyncio.Lock()):
                if org not in directories:
                    url = spec["directory"].replace("{org}", org)
                    async with session.get(url) as response:
                        if response.status != 200:
                            raise AcmeError("directory", f"{url} answered {response.status}")
                        directories[org] = await response.json(content_type=None)
            return directories[org]

        class Client:
            def __init__(self) -> None:
                self.nonce: str | None = None
                self.key: Any = None
                self.jwk: dict[str, Any] = {}
                self.thumbprint = ""
                self.kid: str | None = None
                self.dir: dict[str, Any] = {}
                self.step = ""  # what the client is doing, for timeouts

            async def fresh_nonce(self) -> str:
                counters["requests"] += 1
                async with session.head(self.dir["newNonce"]) as response:
                    nonce = response.headers.get("Replay-Nonce")
                if not nonce:
                    raise AcmeError("noNonce", f"HEAD newNonce answered {response.status}")
                return nonce

            async def post(self, url: str, payload: Any, use_jwk: bool = False
                           ) -> tuple[int, Any, bytes]:
                for attempt in range(3):
                    nonce = self.nonce or await self.fresh_nonce()
                    self.nonce = None
                    protected: dict[str, Any] = {"nonce": nonce, "url": url}
                    if use_jwk:
                        protected["jwk"] = self.jwk
                    else:
                        protected["kid"] = self.kid
                    body = json.dumps(jws(self.key, payload, protected))
                    counters["requests"] += 1
                    self.step = f"POST {url.rsplit('/', 2)[-2]}/"
                    async with session.post(url, data=body, headers={
                            "Content-Type": "application/jose+json"}) as response:
                        data = await response.read()
                        self.nonce = response.headers.get("Replay-Nonce")
                        status, headers = response.status, response.headers
                    if status < 400:
                        return status, headers, data
                    try:
                        problem = json.loads(data)
                        kind = str(problem.get("type", "")).removeprefix(ERR_PREFIX)
                        detail = str(problem.get("detail", ""))
                    except (ValueError, AttributeError):
                        kind, detail = f"HTTP {status}", data[:200].decode("utf-8", "replace")
                    if kind == "badNonce" and attempt < 2:
                        counters["bad_nonce"] += 1
                        continue  # RFC 8555 6.5: retry with the nonce of the error
                    raise AcmeError(kind or f"HTTP {status}",
                                    f"{status} {url.split('/acme/')[-1]}: {detail}"[:300])
                raise AssertionError("unreachable")

            async def get(self, url: str) -> dict[str, Any]:
                _, _, data = await self.post(url, None)
                document: dict[str, Any] = json.loads(data)
                return document

            async def new_account(self) -> None:
                self.key = AccountKey.make("ec-p256")
                self.jwk = self.key.jwk
                self.thumbprint = self.key.thumbprint
                self.dir = await directory(take_org())
                status, headers, _ = await self.post(
                    self.dir["newAccount"], {"termsOfServiceAgreed": True}, use_jwk=True)
                if status != 201:
                    raise AcmeError("accountNotNew", f"newAccount answered {status}")
                self.kid = headers["Location"]

            async def poll(self, url: str, waiting: tuple[str, ...]) -> dict[str, Any]:
                while True:
                    self.step = "poll sleep"
                    await asyncio.sleep(poll)
                    document = await self.get(url)
                    if document.get("status") not in waiting:
                        return document

            async def order(self, name: str) -> None:
                t0 = time.perf_counter()
                status, headers, data = await self.post(
                    self.dir["newOrder"], {"identifiers": [{"type": "dns", "value": name}]})
                if status != 201:
                    raise AcmeError("orderNotNew", f"newOrder answered {status}")
                order_url, order = headers["Location"], json.loads(data)
                authz_url = order["authorizations"][0]
                authz = await self.get(authz_url)
                t1 = time.perf_counter()
                token_file: Path | None = None
                if authz["status"] == "pending":
                    challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
                    token = challenge["token"]
                    if not TOKEN_RE.fullmatch(token):
                        raise AcmeError("badToken", repr(token))
                    token_file = tokens / token
                    token_file.write_text(f"{token}.{self.thumbprint}", encoding="ascii")
                    try:
                        await self.post(challenge["url"], {})
                        authz = await self.poll(authz_url, ("pending",))
                    finally:
                        token_file.unlink(missing_ok=True)
                if authz["status"] != "valid":
                    failed = next((c.get("error") for c in authz["challenges"]
                                   if c.get("error")), None) or {}
                    raise AcmeError(
                        "authz:" + str(failed.get("type", authz["status"])).removeprefix(
                            ERR_PREFIX), str(failed.get("detail", ""))[:300])
                order = await self.get(order_url)
                if order["status"] == "pending":
                    order = await self.poll(order_url, ("pending",))
                if order["status"] != "ready":
                    raise AcmeError(f"order:{order['status']}", json.dumps(order)[:300])
                t2 = time.perf_counter()
                csr = csr_for([name])
                _, _, data = await self.post(order["finalize"], {"csr": b64(csr)})
                order = json.loads(data)
                if order["status"] in ("ready", "processing"):
                    order = await self.poll(order_url, ("ready", "processing"))
                if order["status"] != "valid":
                    error = order.get("error") or {}
                    raise AcmeError("order:" + str(error.get("type", order["status"]))
                                    .removeprefix(ERR_PREFIX), str(error.get("detail", "")))
                t3 = time.perf_counter()
                _, _, chain = await self.post(order["certificate"], None)
                if not chain.startswith(b"-----BEGIN CERTIFICATE-----"):
                    raise AcmeError("badChain", chain[:100].decode("ascii", "replace"))
                t4 = time.perf_counter()
                phases["order"].append(t1 - t0)
                phases["validation"].append(t2 - t1)
                phases["finalize"].append(t3 - t2)
                phases["download"].append(t4 - t3)

        def next_name() -> str:
            counters["names"] += 1
            return f"o{spec['name_base'] + counters['names']}.{DOMAIN}"

        def failed(exc: BaseException, client: Client) -> None:
            if isinstance(exc, AcmeError):
                kind, detail = exc.kind, exc.detail
            elif isinstance(exc, TimeoutError):
                kind, detail = "timeout", f"the flow timed out in {client.step}"
            else:
                kind, detail = type(exc).__name__, str(exc)
            errors[kind] += 1
            if len(samples) < 5 and not any(s.startswith(kind + ":") for s in samples):
                samples.append(f"{kind}: {detail}"[:400])

        clients = [Client() for _ in range(spec["clients"])]
        if reuse:  # accounts are made before the measured window
            async def prepare(client: Client) -> None:
                try:
                    await client.new_account()
                except Exception as exc:
                    failed(exc, client)
            await asyncio.gather(*(prepare(c) for c in clients))
            if any(c.kid is None for c in clients):
                conn.send({"error": f"account setup failed: {samples}"})
                return
        else:
            await directory(current_org())
        conn.send({"ready": True})
        go = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        if not go.get("go"):
            return
        counters["requests"] = 0
        errors.clear()
        samples.clear()

        async def worker(client: Client) -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    async with asyncio.timeout(spec["flow_timeout"]):
                        if not reuse:
                            await client.new_account()
                        t1 = time.perf_counter()
                        await client.order(next_name())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failed(exc, client)
                    client.nonce = None
                    await asyncio.sleep(poll)  # no tight loop against a failing server
                    continue
                done = time.perf_counter()
                latencies.append(done - t0)
                done_at.append(done - started)
                if not reuse:
                    phases["account"].append(t1 - t0)

        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        deadline = started + spec["seconds"]
        tasks = [asyncio.create_task(worker(c)) for c in clients]
        _, pending = await asyncio.wait(tasks, timeout=spec["seconds"] + GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.perf_counter() - started
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
    conn.send({
        "elapsed": elapsed, "latencies": latencies, "errors": dict(errors), "samples": samples,
        "last_done": max(done_at, default=0.0),
        "requests": counters["requests"], "bad_nonce": counters["bad_nonce"],
        "cpu": (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime),
        "phases": {k: statistics.median(v) if v else None for k, v in phases.items()},
        "unfinished": len(pending), "accounts_used": dict(accounts_used),
    })


# ---------------------------------------------------------------------------- organizations


class OrgPool:
    """Organizations with room for new ACME accounts on one gateway.

    The gateway limits new accounts to 300 per organization and hour (not configurable), so
    the new-account variant spreads its accounts over throwaway organizations
    (``bench-acme-N``, identifier policy allow_all), made between measurements in this
    process through the Store, like ``vcc-pki org create`` + ``vcc-pki acme policy``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.left: dict[str, int] = {"default": ACCOUNTS_PER_ORG}
        self.made = 0

    async def ensure(self, accounts: int) -> float:
        """Enough room for ``accounts`` more; returns the seconds spent making orgs."""
        missing = accounts - sum(self.left.values())
        if missing <= 0:
            return 0.0
        count = math.ceil(missing / ACCOUNTS_PER_ORG)
        slugs = [f"bench-acme-{self.made + i}" for i in range(count)]
        t0 = time.monotonic()
        await _make_orgs(self.gateway.env, slugs)
        self.made += count
        self.left.update(dict.fromkeys(slugs, ACCOUNTS_PER_ORG))
        return time.monotonic() - t0

    def hand_out(self, accounts: int) -> list[tuple[str, int]]:
        """Slots for ``accounts`` accounts (the last org takes what does not fit)."""
        out: list[tuple[str, int]] = []
        for slug, left in self.left.items():
            if accounts <= 0:
                break
            if left <= 0:
                continue
            take = min(left, accounts)
            out.append((slug, take))
            self.left[slug] -= take
            accounts -= take
        if not out:
            out.append(("default", 0))
        return out

    def give_back(self, handed: list[tuple[str, int]], used: dict[str, int]) -> None:
        for slug, count in handed:
            self.left[slug] += max(0, count - used.get(slug, 0))


async def _make_orgs(env: dict[str, str], slugs: Sequence[str]) -> None:
    from ca_core.hierarchy import ensure_organization
    from ca_core.principal import Principal
    from ca_core.records import AuditEvent
    from gateway.config import load_config
    from gateway.runtime import open_services

    principal = Principal.system("acme bench")
    async with open_services(load_config(environ=env)) as services:
        for slug in slugs:
            await ensure_organization(services.authority, slug, None, principal)
            org = await services.store.get_organization(slug)
            assert org is not None
            config = {**org.config, "acme": {"allow_all": True}}
            await services.store.update_organization_config(org.org_id, config, AuditEvent(
                event_type="organization.acme_policy", category="organization",
                action="update", actor_type=principal.actor_type, actor_id=principal.actor_id,
                org_id=org.org_id, resource_type="organization", resource_id=org.org_id,
                data={"acme": config["acme"]}))


# ---------------------------------------------------------------------------- servers


def gateway_env(data_dir: Path, database_url: str, http01_port: int, dns_port: int
                ) -> dict[str, str]:
    env = _env(CONFIGS[0], data_dir, database_url, None)  # software ECDSA P-256 throughout
    env.update({
        "VCC_PKI_ACME_HTTP01_PORT": str(http01_port),
        "VCC_PKI_ACME_DNS_RESOLVER": f"127.0.0.1:{dns_port}",
        # The per-account and per-organization order limits (300 and 3,000 an hour) would
        # stop a load test after seconds; the new-account limit is handled by OrgPool.
        "VCC_PKI_ACME_ORDERS_PER_ACCOUNT_PER_HOUR": str(10**9),
        "VCC_PKI_ACME_ORDERS_PER_ORG_PER_HOUR": str(10**9),
    })
    return env


def setup_gateway(target: Target, stack: contextlib.ExitStack, base: Path, database_url: str,
                  http01_port: int, dns_port: int, extra: dict[str, str] | None = None) -> None:
    data_dir = base / f"vcc-{target.name}"
    data_dir.mkdir(parents=True)
    env = {**gateway_env(data_dir, database_url, http01_port, dns_port), **(extra or {})}
    gateway = stack.enter_context(running_gateway(data_dir, env))
    port = gateway.https_url.rsplit(":", 1)[1]
    # The directory's URLs use VCC_PKI_PUBLIC_HTTPS_URL (default https://127.0.0.1:PORT);
    # the gateway's TLS certificate chains to <data_dir>/ca/root.pem.
    target.directory = f"https://127.0.0.1:{port}/acme/{{org}}/directory"
    target.ca_file = data_dir / "ca" / "root.pem"
    target.pid = gateway.process.pid
    target.log = data_dir / "serve.log"
    target.gateway = gateway
    target.orgs = OrgPool(gateway)
    context = ssl.create_default_context(cafile=str(target.ca_file))
    _probe(target.directory.replace("{org}", "default"), context, process=gateway.process)


class Pebble:
    """The Pebble process; restartable, because Debian's Pebble 2.4 can deadlock under load."""

    def __init__(self, binary: str, config: Path, dns_port: int, work: Path) -> None:
        self.command = [binary, "-config", str(config), "-dnsserver", f"127.0.0.1:{dns_port}"]
        self.work = work
        self.env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                    # names are unique, so no authorization could be reused anyway; 0 also
                    # spares Pebble its linear search over all authorizations per newOrder
                    "PEBBLE_AUTHZREUSE": "0"}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log = work / "pebble.log"

    def start(self) -> None:
        self.starts += 1
        self.log = self.work / f"pebble-{self.starts}.log"
        with open(self.log, "wb") as log:
            # its own session: a Ctrl-C in the terminal stops the benchmark, which stops it
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.work,
                                            start_new_session=True)

    def stop(self, dump: bool = False) -> None:
        """Stop; with ``dump`` by SIGQUIT, so that Go writes every goroutine to the log."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT if dump else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def setup_pebble(target: Target, stack: contextlib.ExitStack, base: Path, http01_port: int,
                 dns_port: int) -> None:
    binary = shutil.which("pebble")
    if binary is None:
        raise RuntimeError("pebble is not installed (apt-get install -y pebble)")
    work = base / "pebble"
    ca_pem, cert_pem, key_pem = make_listener_tls(work / "tls")
    port, management = free_port(), free_port()
    config = work / "pebble-config.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{port}",
        "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(cert_pem), "privateKey": str(key_pem),
        "httpPort": http01_port, "tlsPort": free_port(),
        "ocspResponderURL": "", "externalAccountBindingRequired": False,
    }}), encoding="utf-8")
    pebble = Pebble(binary, config, dns_port, work)
    stack.callback(pebble.stop)
    target.pebble = pebble
    target.directory = f"https://127.0.0.1:{port}/dir"
    target.ca_file = ca_pem  # Pebble's listener; its issuing root is new at each start
    start_pebble(target)


def start_pebble(target: Target) -> None:
    assert target.pebble is not None and target.ca_file is not None
    target.pebble.start()
    assert target.pebble.process is not None
    target.pid = target.pebble.process.pid
    target.log = target.pebble.log
    _probe(target.directory, ssl.create_default_context(cafile=str(target.ca_file)),
           process=target.pebble.process)


def check_server_alive(target: Target) -> None:
    """A vcc-pki server that exited is reported with the end of its log and not used again."""
    gateway = target.gateway
    if gateway is None or gateway.process.poll() is None:
        return
    target.skipped = f"vcc-pki serve exited with {gateway.process.returncode}"
    print(f"{target.label}: {target.skipped}; the end of {target.log}:", flush=True)
    if target.log is not None and target.log.exists():
        lines = target.log.read_text(encoding="utf-8", errors="replace").splitlines()
        for line in lines[-40:]:
            print(f"    {line}", flush=True)


def goroutine_summary(log: Path, limit: int = 8) -> list[str]:
    """The Pebble frames where blocked goroutines wait, counted, from a SIGQUIT dump."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    waits: Counter[str] = Counter()
    for block in text.split("\ngoroutine ")[1:]:
        state = block.split("\n", 1)[0]
        if "semacquire" not in state and "sync.Mutex" not in state:
            continue
        frames = re.findall(r"\n(github\.com/letsencrypt/pebble/[^\n]+)\n\t[^\n]*?"
                            r"(\w+/\w+\.go:\d+)", block)
        if frames:
            where = " <- ".join(
                f"{call.rsplit('(', 1)[0].rsplit('.', 1)[-1]} ({line})"
                for call, line in frames[:3])
            waits[where] += 1
    return [f"{count} x {where}" for where, count in waits.most_common(limit)]


def start_redis(stack: contextlib.ExitStack, work: Path) -> str:
    """A throwaway redis-server (no persistence) on a free port; returns its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    log = stack.enter_context(open(work / "redis.log", "wb"))
    process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                "--appendonly", "no", "--dir", str(work)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    stack.callback(stop)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)  # polling interval, not a fixed wait
    raise TimeoutError("redis-server did not start")


def server_log_problems(target: Target, limit: int = 12) -> list[str]:
    """WARNING/ERROR lines and tracebacks of the gateway's log (Pebble's is all requests)."""
    if not target.vcc or target.log is None or not target.log.exists():
        return []
    lines = target.log.read_text(encoding="utf-8", errors="replace").splitlines()
    hits = [ln for ln in lines if re.search(r"WARNING|ERROR|CRITICAL|Traceback|Error:", ln)]
    return [f"{len(hits)} warning/error line(s) in {target.log}", *hits[:limit]] if hits else []


# ---------------------------------------------------------------------------- measurement


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)
            if total // parts + (1 if i < total % parts else 0) > 0]


_measurement_no = 0


async def measure(target: Target, variant: str, clients: int, seconds: float,
                  args: argparse.Namespace, tokens: Path, responder_pid: int) -> Run:
    global _measurement_no
    _measurement_no += 1
    shares = split(clients, max(1, args.load_procs))
    handed: list[list[tuple[str, int]]] = []
    if target.orgs is not None:
        if variant == "new-account":
            rate = max(target.best_rate, args.expect_rate)
            need = int(rate * 1.5 * (seconds + 2)) + clients * 2
        else:
            need = clients
        made = await target.orgs.ensure(need)
        if made:
            print(f"   ({target.label}: made organizations for new accounts in {made:.1f} s)",
                  flush=True)
        handed = [target.orgs.hand_out(math.ceil(need * share / clients)) for share in shares]
    ctx = multiprocessing.get_context("spawn")
    processes = []
    pipes: list[Connection] = []
    try:
        for i, share in enumerate(shares):
            spec = {
                "clients": share, "seconds": seconds, "variant": variant,
                "directory": target.directory, "ca_file": str(target.ca_file),
                "orgs": target.orgs is not None, "org_slots": handed[i] if handed else [],
                "tokens": str(tokens), "poll_ms": args.poll_ms,
                "name_base": _measurement_no * 10_000_000 + i * 1_000_000,
                "flow_timeout": args.flow_timeout, "request_timeout": args.flow_timeout,
            }
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_load_main, args=(child, spec), daemon=True)
            process.start()
            child.close()
            processes.append(process)
            pipes.append(parent)
        for pipe in pipes:  # every process ready (imports, sessions, reuse accounts)
            if not pipe.poll(120):
                raise RuntimeError("a load process did not get ready")
            message = pipe.recv()
            if "error" in message:
                raise RuntimeError(f"load process: {message['error']}")
        server0, responder0 = _server_cpu(target), _proc_cpu(responder_pid)
        busy0 = _busy_jiffies()
        with steal_meter() as steal:
            t0 = time.perf_counter()
            for pipe in pipes:
                pipe.send({"go": True})
            results = []
            for pipe in pipes:
                if not await asyncio.to_thread(pipe.poll, seconds + GRACE + 60):
                    raise RuntimeError("a load process did not report")
                results.append(pipe.recv())
            wall = time.perf_counter() - t0
        busy1 = _busy_jiffies()
        server1, responder1 = _server_cpu(target), _proc_cpu(responder_pid)
    finally:
        for pipe in pipes:
            pipe.close()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    for result in results:
        if "error" in result:
            raise RuntimeError(f"load process: {result['error']}")
    if target.orgs is not None:
        for slots, result in zip(handed, results, strict=True):
            target.orgs.give_back(slots, result["accounts_used"])
    elapsed = max(r["elapsed"] for r in results)
    latencies = sorted(x for r in results for x in r["latencies"])
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    unfinished = sum(r["unfinished"] for r in results)
    if unfinished:
        errors["unfinished at the end"] += unfinished
    count = len(latencies)
    phases = {}
    for name in ("account", "order", "validation", "finalize", "download"):
        values = [r["phases"][name] for r in results if r["phases"].get(name) is not None]
        if values:
            phases[name] = statistics.median(values) * 1000
    samples = [s for r in results for s in r["samples"]][:5]

    def cores(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else (b - a) / elapsed

    run = Run(
        rate=count / elapsed, count=count, seconds=elapsed,
        p50_ms=percentile(latencies, 50) * 1000, p99_ms=percentile(latencies, 99) * 1000,
        errors=errors, bad_nonce_retries=sum(r["bad_nonce"] for r in results),
        requests_per_flow=sum(r["requests"] for r in results) / max(1, count + sum(
            errors.values())),
        phases_ms=phases, client_cpu=sum(r["cpu"] for r in results) / elapsed,
        server_cpu=cores(server0, server1), responder_cpu=cores(responder0, responder1),
        machine_busy=(busy1 - busy0) / CLK_TCK / wall if busy1 > busy0 else None,
        steal=steal[0], samples=samples, last_done=max(r["last_done"] for r in results),
    )
    return run


def _stalled(run: Run | None, exc: Exception | None, clients: int) -> str:
    """Why a Pebble measurement looks like a deadlock (flows stuck), or ''."""
    if exc is not None:
        text = str(exc)
        return f"the measurement failed: {text[:160]}" if "timeout" in text or \
            "did not" in text else ""
    assert run is not None
    stuck = run.errors.get("timeout", 0) + run.errors.get("unfinished at the end", 0)
    return f"{stuck} flows stuck" if stuck >= max(1, clients // 2) else ""


async def measure_target(target: Target, variant: str, clients: int, args: argparse.Namespace,
                         tokens: Path, responder_pid: int, round_no: int) -> Run | None:
    """One recorded measurement; for vcc-pki after a warm-up in round 1.

    Pebble is started afresh right before each of its measurements (no warm-up: a new Go
    process needs none): it keeps everything in memory and searches all authorizations on
    every newOrder, so a fresh start is its best case. Debian's Pebble 2.4 also deadlocks
    under concurrent load; when most flows get stuck, it is stopped with a goroutine dump
    (SIGQUIT) and its rate is counted until the last flow that completed. Such a
    measurement is tried three times at most; the attempt that ran longest counts."""
    if target.pebble is None:
        try:
            if round_no == 1:  # not recorded
                await measure(target, variant, clients, min(args.warmup, args.seconds), args,
                              tokens, responder_pid)
            return await measure(target, variant, clients, args.seconds, args, tokens,
                                 responder_pid)
        except Exception as exc:
            target.skipped = f"{type(exc).__name__}: {exc}"[:300]
            print(f"{target.label} failed: {target.skipped}", flush=True)
            return None
    best: Run | None = None
    for attempt in (1, 2, 3):
        if STOP.is_set():
            break
        try:
            target.pebble.stop()
            start_pebble(target)
        except Exception as exc:
            print(f"{target.label}: start failed: {type(exc).__name__}: {exc}", flush=True)
            return best
        result: Run | None = None
        error: Exception | None = None
        try:
            result = await measure(target, variant, clients, args.seconds, args, tokens,
                                   responder_pid)
        except Exception as exc:
            error = exc
        why = _stalled(result, error, clients)
        if not why:
            if error is not None:
                print(f"{target.label} failed: {type(error).__name__}: {error}"[:300],
                      flush=True)
                return best
            return result
        target.pebble.stop(dump=True)
        target.stalls.append(f"round {round_no} {variant} c={clients} attempt {attempt}: "
                             f"{why}; goroutine dump in {target.log}")
        print(f"{target.label} deadlocked ({why}): goroutines dumped to {target.log}",
              flush=True)
        if result is not None and result.count and result.last_done > 0:
            # Nothing ran while the flows were stuck: count rate and CPU until the deadlock.
            scale = result.seconds / result.last_done
            result.deadlock_after = result.last_done
            result.rate = result.count / result.last_done
            result.client_cpu *= scale
            if result.server_cpu is not None:
                result.server_cpu *= scale
            if result.responder_cpu is not None:
                result.responder_cpu *= scale
            result.machine_busy = None  # the machine's share is not known for that part
            print("    until then: " + describe(target, variant, clients, result), flush=True)
            if best is None or result.last_done > best.last_done:
                best = result
        if best is not None and best.last_done >= args.seconds / 2:
            break
        if attempt < 3:
            print("    restarting it and measuring again", flush=True)
    return best


PROJECT_DIRS = ("ca_core/", "protocols/", "db/", "gateway/")


def summarize_profile(raw: Path, top: int = 15) -> list[str]:
    """Self and inclusive shares of a ``py-spy record --format raw`` file (collapsed stacks)."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    try:
        lines = raw.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        return [f"no profile: {exc}"]
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = []
        for frame in stack.split(";"):
            match = re.match(r"(.*) \((.*?):\d+\)$", frame)
            name, path = (match.group(1), match.group(2)) if match else (frame, "")
            short = path.rsplit("site-packages/", 1)[-1].rsplit("/python3.11/", 1)[-1]
            frames.append(f"{name} ({short})")
        if frames:
            self_time[frames[-1]] += count
        for frame in dict.fromkeys(frames):
            if any(frame.endswith(f"({d}") or f"({d}" in frame for d in PROJECT_DIRS):
                inclusive[frame] += count
    if not total:
        return ["no samples"]
    out = [f"{total} samples (100/s while the process ran Python or native code)",
           "self (leaf frames):"]
    out += [f"  {c / total:6.1%}  {f}" for f, c in self_time.most_common(top)]
    out.append("inclusive (project code on the stack):")
    out += [f"  {c / total:6.1%}  {f}" for f, c in inclusive.most_common(top + 10)]
    return out


async def profile_target(target: Target, variant: str, clients: int, args: argparse.Namespace,
                         tokens: Path, responder_pid: int, pyspy: str, base: Path) -> None:
    """One extra, unrecorded measurement with ``py-spy record`` on the serving process."""
    out = base / f"profile-{target.name}-{variant}-{clients}.txt"
    command = [pyspy, "record", "--pid", str(target.pid), "--rate", "100", "--nonblocking",
               "--duration", str(max(1, int(args.seconds))), "--format", "raw",
               "--output", str(out)]
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        run = await measure(target, variant, clients, args.seconds, args, tokens,
                            responder_pid)
    finally:
        try:
            _, stderr = await asyncio.to_thread(recorder.communicate, timeout=60)
        except subprocess.TimeoutExpired:
            recorder.kill()
            _, stderr = recorder.communicate()
    print(f"profile of {target.label} (pid {target.pid}) during {variant} c={clients} "
          f"(not recorded): {run.rate:.1f} orders/s with py-spy attached", flush=True)
    if recorder.returncode != 0 and not out.exists():
        print(f"    py-spy failed: {stderr.decode(errors='replace')[-300:]}", flush=True)
        return
    for line in summarize_profile(out):
        print(f"    {line}", flush=True)


def _errors_text(errors: Counter[str]) -> str:
    if not errors:
        return "0"
    total = sum(errors.values())
    return f"{total} (" + ", ".join(f"{k} {v}" for k, v in errors.most_common()) + ")"


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def describe(target: Target, variant: str, clients: int, run: Run) -> str:
    phases = " ".join(f"{k} {v:.0f}" for k, v in run.phases_ms.items())
    text = (f"{target.label:<17} {variant:<13} c={clients:<3} {run.rate:>7.1f} orders/s  "
            f"p50 {run.p50_ms:.0f} ms  p99 {run.p99_ms:.0f} ms  errors {_errors_text(run.errors)}"
            f"  | req/flow {run.requests_per_flow:.1f}  phases p50 ms: {phases}"
            f"  | server CPU {_fmt(run.server_ms_per_order, 2)} ms/order"
            f"  | cores: server {_cores(run.server_cpu)} clients {_cores(run.client_cpu)}"
            f" responder {_cores(run.responder_cpu)} machine {_cores(run.machine_busy)}")
    if run.machine_busy is not None:
        ours = (run.server_cpu or 0) + run.client_cpu + (run.responder_cpu or 0)
        text += f" (others {max(0.0, run.machine_busy - ours):.2f})"
    if run.deadlock_after is not None:
        text += f"  DEADLOCKED after {run.deadlock_after:.1f} s (rate until then)"
    if run.bad_nonce_retries:
        text += f"  badNonce retried {run.bad_nonce_retries}"
    if run.steal is not None:
        text += f"  steal {run.steal:.0%}"
    return text


# ---------------------------------------------------------------------------- report


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def print_table(targets: list[Target], variants: Sequence[str], clients_list: Sequence[int],
                rounds_done: int) -> None:
    pebble = next((t for t in targets if t.name == "pebble"), None)
    deadlocked = False
    header = ["server", "variant", "clients", "orders/s", "p50 ms", "p99 ms", "errors",
              "vcc/pebble", "ratio per round", "server CPU ms/order", "CPU vcc/pebble",
              "CPU ratio per round", "server cores", "client cores", "target"]
    rows: list[list[str]] = []
    for variant in variants:
        for clients in clients_list:
            for target in targets:
                runs = target.runs.get((variant, clients), [])
                if not runs:
                    reason = f"skipped: {target.skipped}" if target.skipped else "not measured"
                    rows.append([target.label, variant, str(clients), reason[:120]])
                    continue
                ratios: list[float] = []
                cpu_ratios: list[float] = []
                if target.vcc and pebble is not None:
                    base = {r.round_no: r for r in pebble.runs.get((variant, clients), [])}
                    ratios = [a.rate / base[a.round_no].rate for a in runs
                              if a.round_no in base and base[a.round_no].rate > 0]
                    for a in runs:
                        peer = base.get(a.round_no)
                        mine = a.server_ms_per_order
                        theirs = None if peer is None else peer.server_ms_per_order
                        if mine is not None and theirs:
                            cpu_ratios.append(mine / theirs)
                mark = ""
                if any(r.deadlock_after is not None for r in runs):
                    mark, deadlocked = " *", True
                errors: Counter[str] = Counter()
                for run in runs:
                    errors.update(run.errors)
                target_text = "-"
                if target.name == "sqlite":
                    target_text = f">= {TARGET_RATE:.0f}/s, >= Pebble"
                elif target.vcc:
                    target_text = ">= Pebble"
                rows.append([
                    target.label, variant, str(clients),
                    _fmt(_median([r.rate for r in runs])) + mark,
                    _fmt(_median([r.p50_ms for r in runs]), 0),
                    _fmt(_median([r.p99_ms for r in runs]), 0),
                    _errors_text(errors)[:60],
                    "-" if not ratios else f"{statistics.median(ratios):.2f}",
                    " ".join(f"{r:.2f}" for r in ratios) or "-",
                    _fmt(_median([m for r in runs
                                  if (m := r.server_ms_per_order) is not None]), 2),
                    "-" if not cpu_ratios else f"{statistics.median(cpu_ratios):.2f}",
                    " ".join(f"{r:.2f}" for r in cpu_ratios) or "-",
                    _fmt(_median([r.server_cpu for r in runs if r.server_cpu is not None]), 2),
                    _fmt(_median([r.client_cpu for r in runs]), 2),
                    target_text,
                ])
    print()
    interrupted = " (interrupted: the last round is partial)" if STOP.is_set() else ""
    print(f"ACME benchmark: complete orders (whole flows) per second, median of {rounds_done} "
          f"round(s); vcc/pebble per round, then median{interrupted}")
    print_grid(header, rows)
    if deadlocked:
        print("* Pebble deadlocked during at least one of these measurements; its rate is "
              "counted until the last flow that completed before (see the lines above)")
    for target in targets:
        if target.skipped and any(target.runs.values()):
            print(f"{target.label} stopped being measured: {target.skipped}")


# ---------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    names = [t for t in TARGETS if t in (args.only or DEFAULT_TARGETS)]
    labels = {"sqlite": "vcc-pki/sqlite", "postgres": "vcc-pki/postgres", "pebble": "pebble",
              "sqlite-w2": "vcc-pki/sqlite-w2", "sqlite-w2-routed": "vcc-pki/sqlite-w2-routed"}
    targets = [Target(n, labels[n]) for n in names]
    base = Path(tempfile.mkdtemp(prefix="vcc-pki-bench-acme-"))
    tokens = _tmpfs_dir("vcc-pki-bench-acme-tokens-")
    records = base / "txt"
    records.mkdir()
    pg = Postgres()
    print(f"vcc-pki ACME benchmark: targets {', '.join(t.label for t in targets)}; variants "
          f"{', '.join(args.variants)}; clients {', '.join(map(str, args.clients))} over "
          f"{args.load_procs} load process(es); {args.rounds} rounds of {args.seconds:g} s; "
          f"poll {args.poll_ms:g} ms", flush=True)
    print(f"CPUs {os.cpu_count()}; work dir {base}; http-01 tokens in {tokens}", flush=True)
    rounds_done = 0
    total0, steal0 = _cpu_times()
    try:
        with contextlib.ExitStack() as stack:
            http01_port, dns_port, responder_pid = stack.enter_context(
                running_responder(tokens, records))
            print(f"DNS 127.0.0.1:{dns_port} (every A -> 127.0.0.1), http-01 responder "
                  f"127.0.0.1:{http01_port}, pid {responder_pid}", flush=True)
            for target in targets:
                t0 = time.monotonic()
                try:
                    if target.name == "pebble":
                        setup_pebble(target, stack, base, http01_port, dns_port)
                    elif target.name == "sqlite-w2":
                        # Two serving processes need shared nonces and rate limits: Redis.
                        redis_url = start_redis(stack, base / "redis")
                        setup_gateway(target, stack, base, "", http01_port, dns_port, {
                            "VCC_PKI_WORKERS": "2", "VCC_PKI_REDIS_URL": redis_url})
                    elif target.name == "sqlite-w2-routed":
                        setup_gateway(target, stack, base, "", http01_port, dns_port, {
                            "VCC_PKI_WORKERS": "2"})
                    else:
                        url = ""
                        if target.name == "postgres":
                            reason = await pg.available()
                            if reason:
                                target.skipped = reason
                                print(f"setup {target.label}: skipped: {reason}", flush=True)
                                continue
                            url = await pg.create("acme")
                        setup_gateway(target, stack, base, url, http01_port, dns_port)
                except Exception as exc:
                    detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) \
                        else exc
                    target.skipped = f"setup failed: {type(exc).__name__}: {detail}"[:300]
                    print(f"setup {target.label}: {target.skipped}", flush=True)
                    continue
                print(f"setup {target.label}: {time.monotonic() - t0:.1f} s, pid {target.pid}, "
                      f"{target.directory}", flush=True)
            live = [t for t in targets if not t.skipped]
            for round_no in range(1, args.rounds + 1):
                if STOP.is_set() or not live:
                    break
                print(f"-- round {round_no}/{args.rounds}", flush=True)
                for variant in args.variants:
                    for clients in args.clients:
                        for target in live:
                            if STOP.is_set():
                                break
                            if target.skipped:
                                continue
                            result = await measure_target(target, variant, clients, args,
                                                          tokens, responder_pid, round_no)
                            check_server_alive(target)
                            if result is None:
                                continue
                            result.round_no = round_no
                            target.runs.setdefault((variant, clients), []).append(result)
                            if variant == "new-account":
                                target.best_rate = max(target.best_rate, result.rate)
                            print(describe(target, variant, clients, result), flush=True)
                            for sample in result.samples:
                                print(f"    error sample: {sample}", flush=True)
                rounds_done = round_no
            if args.profile and not STOP.is_set():
                pyspy = args.profile if args.profile != "auto" else (
                    shutil.which("py-spy") or _beside_python("py-spy"))
                if not pyspy:
                    print("--profile: py-spy not found (pip install py-spy)", flush=True)
                for target in live:
                    if pyspy and target.vcc and not target.skipped:
                        await profile_target(target, args.variants[0], args.clients[0], args,
                                             tokens, responder_pid, pyspy, base)
            for target in live:
                for line in server_log_problems(target):
                    print(f"{target.label} log: {line}", flush=True)
            for target in targets:
                for stall in target.stalls:
                    print(f"{target.label} stopped answering, restarted: {stall}", flush=True)
                    log = Path(stall.rsplit(" in ", 1)[1])
                    for line in goroutine_summary(log):
                        print(f"    blocked goroutines: {line}", flush=True)
    finally:
        await pg.drop_all()
        if args.keep:
            print(f"kept {base} (data directories, serve.log, pebble-N.log)", flush=True)
        else:
            shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(tokens, ignore_errors=True)
    total1, steal1 = _cpu_times()
    print_table(targets, args.variants, args.clients, rounds_done)
    if total1 > total0:
        print(f"CPU steal over the whole run: {(steal1 - steal0) / (total1 - total0):.0%}")
    print(f"wall time {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.bench.acme",
        description="ACME load benchmark, vcc-pki against Pebble (prints figures; never "
                    "asserts on them).")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="length of each measurement (default 20)")
    parser.add_argument("--clients", type=int, nargs="+", default=[16],
                        help="concurrent ACME clients; several values run in turn (default 16)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds over all targets, alternating (default 2)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="new-account: a new account per flow; reuse-account: one per "
                             "client (default both)")
    parser.add_argument("--only", nargs="+", choices=TARGETS, default=[],
                        help="targets (default: " + ", ".join(DEFAULT_TARGETS) + "; sqlite-w2 "
                             "is vcc-pki on SQLite with 2 serving processes sharing ACME "
                             "state in a throwaway redis-server; sqlite-w2-routed the same "
                             "without Redis)")
    parser.add_argument("--load-procs", type=int, default=2,
                        help="load generator processes sharing the clients (default 2)")
    parser.add_argument("--poll-ms", type=float, default=20.0,
                        help="interval of authorization and order polls (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="unrecorded warm-up per measurement in round 1 (default 3 s)")
    parser.add_argument("--flow-timeout", type=float, default=30.0,
                        help="a flow that takes longer counts as an error (default 30 s)")
    parser.add_argument("--expect-rate", type=float, default=150.0,
                        help="orders/s assumed before the first measurement, to make "
                             "organizations for new accounts (default 150)")
    parser.add_argument("--profile", nargs="?", const="auto", default="", metavar="PY_SPY",
                        help="after the rounds, one more measurement per vcc-pki target with "
                             "py-spy recording the server, and its summary (py-spy from PATH "
                             "or the path given)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (data, serve.log, pebble-N.log; the "
                             "PostgreSQL database is dropped all the same)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or args.load_procs < 1 or args.poll_ms <= 0 \
            or min(args.clients) < 1:
        parser.error("--seconds, --rounds, --load-procs, --poll-ms and --clients must be "
                     "positive")
    args.variants = list(dict.fromkeys(args.variants))
    install_stop_handlers()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
