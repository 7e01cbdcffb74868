"""OCSP responder benchmark: cache hits, live signing, the HTTP ceiling and two peers.

Run ``python -m conformance.bench.ocsp [--seconds 5] [--rounds 2] [--connections 16 64]
[--store-sizes 10000 1000000] [--workers 1 2] [--only redis memory cfssl openssl stores]``.
It prints figures and never asserts on them (see ``conformance/bench/README.md``).
``--workers 1 2`` measures each gateway target with one serving process and with two
(``VCC_PKI_WORKERS``, SO_REUSEPORT) in the same rounds, so the ratio is taken in one run.

Every responder answers the same kind of question: one certificate, SHA-1 CertID, issued
by the gateway's issuing CA (P-256) and answered by its delegated responder (P-256). What
is measured, per ``--connections`` value, in rounds that visit every target in turn (A B C
A B C: the machine is shared and noisy):

- ``vcc-pki serve`` (``vcc-pki init`` + ``serve`` subprocesses, one worker) with the Redis
  response cache and with the in-process cache:

  - **hit GET** ``/ocsp/<url-encoded base64>`` and **hit POST** ``/ocsp`` for a
    certificate issued over REST, whose response the gateway precomputed (wrk);
  - **hit POST (hey)**: the same with hey, the load generator of the openssl peer;
  - **miss: nonce** (live signing): POST with a nonce and ``VCC_PKI_OCSP_NONCE=true``, so
    every request takes the live path (status read from the store, a fresh signature, the
    nonce echoed; nothing is cached);
  - **ceiling** ``GET /bench/fixed`` (``VCC_PKI_BENCH_ROUTES=true``): a fixed 512-byte
    body through the same listener and middleware, the most this HTTP stack can answer.

- peers given the gateway's responder certificate and (a decrypted copy of) its key:
  ``cfssl ocspserve`` serving a response precomputed by ``cfssl ocspsign`` (wrk), and
  ``openssl ocsp -index`` (signs every response live, ``-multi`` processes, HTTP/1.0 with a
  new connection per response; driven by hey, never wrk or ab: it hangs on a connection
  that closes without a whole request, which wrk's first probe is and ab leaves behind at
  its time limit).

- the in-process cache with ``--store-sizes`` certificates in the SQLite store
  (``VCC_PKI_OCSP_WARM=false``, so only what is asked for is signed): **hit GET** of a
  really issued certificate, and **miss: distinct serials** (POST; each request names
  another seeded certificate: cache miss, status read from an N-row table, signature,
  write-back). The rows are synthetic and inserted with sqlite3 directly before ``serve``
  starts (the Store has no batch insert; ``add_certificate`` appends one audit event per
  row, far too slow for a million); they carry no audit events.

A response counts only when it is HTTP 200 and a successful OCSP response naming the
asked CertID as good (wrk checks every body in Lua for the CertID followed by the DER of
``good``; one response per request kind is fully checked with cryptography first: status,
serial, signature by a responder issued by the CA, nonce echo). hey and ab count HTTP 200
only. ``signed/resp`` is the gateway's own count of OCSP signatures (``/metrics``) during a
run divided by the responses: 0 proves hits came from the cache, 1 that misses were signed.

The table gives medians over rounds; ratios are taken within a round, then their median.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import math
import os
import re
import secrets
import shutil
import signal
import sqlite3
import ssl
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asn1crypto import ocsp as a_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from conformance.bench.issuance import (
    STOP,
    Rate,
    describe,
    install_stop_handlers,
    lua_bytes,
    percentile,
    print_grid,
    run_wrk_script,
    steal_meter,
    wrk_threads,
)
from conformance.gateway import BIN, Gateway, free_port, running_gateway
from gateway.config import load_config
from gateway.runtime import make_key_backend, make_store

PASSPHRASE = "bench-passphrase"
PROFILE = "vcc_service"
TARGET_P99_MS = 10.0  # cache hits at 64 connections, whatever the store size
TARGET_CONNECTIONS = 64
OCSP_VALIDITY = "96h"  # the gateway's default nextUpdate - thisUpdate, for the peers too
REDIS_BASE_URL = "redis://127.0.0.1:6379"
# A distinct-serial run needs this many seeded serials nobody asked for yet: with fewer,
# the run would mostly hit responses written back by earlier runs.
MIN_UNASKED = 50_000
WALK_MULTIPLIER = 1_000_003  # a prime: i -> i * M mod N visits serials out of order
GOOD = b"\x80\x00"  # CertStatus good: [0] IMPLICIT NULL

TARGET_KINDS = ("redis", "memory", "cfssl", "openssl", "stores")


# ---------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Load:
    """What a load generator sends and how it checks each answer.

    ``check``: ``ocsp`` (body has ``expect``, and ``expect2`` when given), ``fixed`` (a
    body of ``fixed_len`` bytes) or ``walk`` (``expect`` followed, 4 bytes on, by good).
    """

    method: str
    path: str
    body: bytes = b""
    check: str = "ocsp"
    expect: bytes = b""
    expect2: bytes = b""
    fixed_len: int = 0
    walk: Walk | None = None


@dataclass
class Walk:
    """Distinct seeded serials: request ``i`` asks for serial ``head || be32(i * M % N)``."""

    head: bytes  # the request DER up to the 4 varying serial bytes
    tail: bytes
    size: int
    next_i: int = 1  # serial index 0 was the probe


@dataclass
class Row:
    key: str  # get | post | hey | nonce | ceiling | walk
    label: str
    tool: str  # wrk | hey | ab
    load: Load | None = None
    skipped: str = ""
    runs: dict[int, dict[int, Rate]] = field(default_factory=dict)  # conns -> round -> Rate
    signed: dict[int, list[float]] = field(default_factory=dict)  # conns -> per run
    others: list[float] = field(default_factory=list)  # CPU share of other work, per run
    # CPU time of the serving process(es) per response, in µs, per run: unlike a rate, it
    # hardly depends on what else the shared machine runs
    cpu_us: list[float] = field(default_factory=list)


@dataclass
class Target:
    key: str  # redis | memory | cfssl | openssl | store-N; redis-wN | memory-wN (N workers)
    name: str
    workers: int = 1  # VCC_PKI_WORKERS of a gateway target
    measured: bool = True
    skipped: str = ""
    base_url: str = ""
    metrics_url: str = ""  # the gateway's /metrics, for the count of signatures
    pids: Callable[[], list[int]] = lambda: []
    rows: list[Row] = field(default_factory=list)
    rss_before: int | None = None  # kB, summed over the serving processes
    rss_after: int | None = None
    hwm: int | None = None
    note: str = ""
    log: Path | None = None  # the server's log, scanned for warnings and errors at the end
    log_summary: str = ""

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)

    @property
    def kind(self) -> str:
        """redis | memory | cfssl | openssl | store-N: what the target is, whatever its
        number of workers."""
        return self.key.partition("-w")[0]


@dataclass
class Issued:
    """The certificate every responder is asked about, and the requests that ask."""

    leaf: x509.Certificate
    issuing: x509.Certificate
    request: bytes  # DER, SHA-1 CertID, no nonce
    nonce_request: bytes
    nonce: bytes
    cert_id: bytes  # DER CertID as the request encodes it

    @property
    def get_path(self) -> str:
        return "/ocsp/" + urllib.parse.quote(base64.b64encode(self.request).decode(), safe="")


# ---------------------------------------------------------------------------- HTTP helpers


def http(url: str, body: bytes | None = None, content_type: str = "application/ocsp-request",
         headers: dict[str, str] | None = None, timeout: float = 30
         ) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are returned, not raised."""
    all_headers = dict(headers or {})
    if body is not None:
        all_headers.setdefault("Content-Type", content_type)
    request = urllib.request.Request(url, data=body, headers=all_headers,
                                     method="POST" if body is not None else "GET")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # TLS is not what is measured here
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_answers(probe: Callable[[], object], process: subprocess.Popen[bytes],
                       what: str, log: Path, timeout: float = 20) -> None:
    """Retry ``probe`` until the server listens. A real request, not a bare connect:
    ``openssl ocsp`` hangs on a connection that closes without a request."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace")[-200:].strip()
            raise RuntimeError(f"{what} exited with {process.returncode}: {tail}")
        try:
            probe()
            return
        except (ConnectionError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not answering after {timeout:g} s") from None
        time.sleep(0.05)  # polling interval


def verify_ocsp(der: bytes, issued: Issued, serial: int | None = None,
                nonce: bytes | None = None) -> str:
    """Empty when ``der`` is a successful, correctly signed "good" answer for ``serial``
    (default: the issued leaf); else what is wrong."""
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        return f"not an OCSP response: {exc}"
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return f"response status {response.response_status.name}"
    if response.certificate_status is not ocsp.OCSPCertStatus.GOOD:
        return f"certificate status {response.certificate_status.name}"
    wanted = issued.leaf.serial_number if serial is None else serial
    if response.serial_number != wanted:
        return f"answers serial {response.serial_number:x}, not {wanted:x}"
    if not response.certificates:
        return "no responder certificate in the response"
    responder = response.certificates[0]
    try:
        responder.verify_directly_issued_by(issued.issuing)
        public_key = responder.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            return "responder key is not ECDSA"
        algorithm = response.signature_hash_algorithm
        if algorithm is None:
            return "no signature hash algorithm"
        public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
    except Exception as exc:
        return f"signature check failed: {type(exc).__name__}: {exc}"
    if nonce is not None:
        echoed = [e.value.nonce for e in response.extensions
                  if isinstance(e.value, x509.OCSPNonce)]
        if echoed != [nonce]:
            return "nonce not echoed"
    return ""


def probe_ocsp(url: str, body: bytes | None, issued: Issued, serial: int | None = None,
               nonce: bytes | None = None) -> None:
    status, der = http(url, body)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {der[:200]!r}")
    problem = verify_ocsp(der, issued, serial, nonce)
    if problem:
        raise RuntimeError(problem)


def signatures(metrics_url: str) -> float | None:
    """OCSP signatures the gateway made so far (``pki_ca_signing_operations_total``)."""
    if not metrics_url:
        return None
    try:
        status, text = http(metrics_url, timeout=10)
    except OSError:
        return None
    if status != 200:
        return None
    total = 0.0
    for line in text.decode("utf-8", "replace").splitlines():
        if line.startswith("pki_ca_signing_operations_total{") \
                and 'operation_type="ocsp"' in line and 'status="success"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def rss_kb(pids: Sequence[int]) -> tuple[int | None, int | None]:
    """(VmRSS, VmHWM) summed over ``pids``, from /proc."""
    rss = hwm = 0
    seen = False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                        seen = True
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return (rss, hwm) if seen else (None, None)


@dataclass(frozen=True)
class _Proc:
    ppid: int
    comm: str
    jiffies: int  # utime + stime + cutime + cstime: its own CPU and its reaped children's


def _processes() -> dict[int, _Proc]:
    found: dict[int, _Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        # "pid (comm) state ppid ... utime stime cutime cstime ...": comm may contain
        # spaces, so split after the last ")".
        head, _, rest = stat.rpartition(")")
        fields_ = rest.split()
        try:
            found[int(entry.name)] = _Proc(int(fields_[1]), head.partition("(")[2],
                                           sum(int(v) for v in fields_[11:15]))
        except (IndexError, ValueError):
            continue
    return found


def cpu_jiffies(pids: Sequence[int]) -> int:
    """utime + stime (+ reaped children's) of ``pids``, from /proc."""
    processes = _processes()
    return sum(processes[p].jiffies for p in pids if p in processes)


def with_children(pid: int) -> list[int]:
    """``pid`` and its direct children (``openssl ocsp -multi`` forks its responders)."""
    return [pid, *(p for p, proc in _processes().items() if proc.ppid == pid)]


def _cpu_snapshot() -> tuple[int, int, int]:
    """(busy jiffies of the machine, all jiffies, jiffies of this benchmark's processes).

    Ours: this process and its descendants (gateways, peers, wrk/hey: a load generator
    that exited is in our cutime), and redis-server, which serves the Redis rows."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            cpu = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0, 0
    user, nice, system, _idle, _iowait, irq, softirq, _steal = cpu
    processes = _processes()
    me = os.getpid()
    ours = 0
    for pid, proc in processes.items():
        ancestor, hops = pid, 0
        while ancestor not in (me, 0, 1) and hops < 64:
            ancestor = processes[ancestor].ppid if ancestor in processes else 0
            hops += 1
        if ancestor == me or proc.comm == "redis-server":
            ours += proc.jiffies
    return user + nice + system + irq + softirq, sum(cpu), ours


@contextlib.contextmanager
def others_meter() -> Iterator[list[float | None]]:
    """Yields a one-element list that holds, when the block ends, the share of the
    machine's CPU time used meanwhile by processes outside this benchmark: other work on
    a shared machine, which steal does not show (it counts only the hypervisor's)."""
    out: list[float | None] = [None]
    busy0, total0, ours0 = _cpu_snapshot()
    try:
        yield out
    finally:
        busy1, total1, ours1 = _cpu_snapshot()
        if total1 > total0:
            out[0] = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (total1 - total0)


# ---------------------------------------------------------------------------- load generators

_WRK_SCRIPT = """\
-- generated by conformance/bench/ocsp.py
wrk.method = "{method}"
{content_type}
{body}
local EXPECT = "{expect}"
local EXPECT2 = "{expect2}"
local FIXED_LEN = {fixed_len}
local SUCCESSFUL = "\\010\\001\\000"  -- OCSPResponseStatus successful (ENUMERATED 0)
local GOOD = "\\128\\000"

local threads = {{}}
local count = 0
function setup(thread)
  thread:set("id", count)
  count = count + 1
  table.insert(threads, thread)
end
function init(args)
  bad = 0
  k = 0
end
{request}
local function ok(body)
{check}
end
function response(status, headers, body)
  if status ~= 200 or not ok(body) then
    bad = bad + 1
  end
end
"""

_CHECKS = {
    "ocsp": """\
  if not string.find(string.sub(body, 1, 8), SUCCESSFUL, 1, true) then return false end
  if not string.find(body, EXPECT, 1, true) then return false end
  return EXPECT2 == "" or string.find(body, EXPECT2, 1, true) ~= nil""",
    "fixed": "  return #body == FIXED_LEN",
    "walk": """\
  if not string.find(string.sub(body, 1, 8), SUCCESSFUL, 1, true) then return false end
  local p = string.find(body, EXPECT, 1, true)
  return p ~= nil and string.sub(body, p + #EXPECT + 4, p + #EXPECT + 5) == GOOD""",
}

# Only distinct-serial runs define request(): without it wrk sends one pre-built request,
# which keeps the load generator's own cost (it shares the CPUs) as low as possible.
_WALK_REQUEST = """\
local HEAD = "{head}"
local TAIL = "{tail}"
local OFFSET, SIZE, MULT, THREADS = {offset}, {size}, {mult}, {threads}
function request()
  local i = OFFSET + id + k * THREADS
  k = k + 1
  local n = (i * MULT) % SIZE
  local serial = string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
                             math.floor(n / 256) % 256, n % 256)
  return wrk.format("POST", "{path}", nil, HEAD .. serial .. TAIL)
end"""


def run_wrk(base_url: str, load: Load, seconds: float, connections: int, work_dir: Path
            ) -> Rate:
    threads = wrk_threads(connections)
    request = ""
    if load.walk is not None:
        walk = load.walk
        request = _WALK_REQUEST.format(
            head=lua_bytes(walk.head), tail=lua_bytes(walk.tail), offset=walk.next_i,
            size=walk.size, mult=WALK_MULTIPLIER, threads=threads, path=load.path)
    rate, n = run_wrk_script(_WRK_SCRIPT.format(
        method=load.method, body=f'wrk.body = "{lua_bytes(load.body)}"' if load.body else "",
        expect=lua_bytes(load.expect),
        expect2=lua_bytes(load.expect2), fixed_len=load.fixed_len, request=request,
        check=_CHECKS[load.check],
        content_type='wrk.headers["Content-Type"] = "application/ocsp-request"'
        if load.method == "POST" else "",
    ), base_url + load.path, seconds, connections, work_dir)
    if load.walk is not None:
        # Requests in flight at the end were sent too: skip past them.
        load.walk.next_i += n["requests"] + connections
    return rate


def run_hey(base_url: str, load: Load, seconds: float, connections: int, work_dir: Path
            ) -> Rate:
    """hey with per-request CSV: latencies of HTTP 200 answers, their rate."""
    body = work_dir / f"hey-{secrets.token_hex(4)}.der"
    body.write_bytes(load.body)
    command = ["hey", "-z", f"{seconds:g}s", "-c", str(connections), "-m", load.method,
               "-t", "10", "-o", "csv"]
    if load.method == "POST":
        command += ["-D", str(body), "-T", "application/ocsp-request"]
    try:
        with steal_meter() as steal:
            done = subprocess.run([*command, base_url + load.path], capture_output=True,
                                  text=True, check=False, timeout=seconds + 60)
    finally:
        body.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"hey failed ({done.returncode}): {done.stderr[-300:]}")
    latencies: list[float] = []
    other = 0
    end = 0.0
    for line in done.stdout.splitlines()[1:]:
        cells = line.split(",")
        if len(cells) < 8:
            continue
        response_time, status, offset = float(cells[0]), cells[6], float(cells[7])
        end = max(end, offset + response_time)
        if status == "200":
            latencies.append(response_time)
        else:
            other += 1
    errors = [ln for ln in done.stdout.splitlines() if ln.startswith("  [")]
    latencies.sort()
    elapsed = end or seconds
    return Rate(len(latencies) / elapsed, len(latencies), elapsed,
                p50_ms=percentile(latencies, 50) * 1000, p99_ms=percentile(latencies, 99) * 1000,
                errors=other, steal=steal[0], note="; ".join(errors)[:120])


def run_ab(base_url: str, load: Load, seconds: float, connections: int, work_dir: Path
           ) -> Rate:
    """ab (apache2-utils): the fallback for the hey rows of the gateways when hey is
    missing; whole-millisecond latencies. Not for ``openssl ocsp``: at its time limit ab
    drops connections mid-request, the responders hang on them, and the next run times out
    (apr_pollset_poll)."""
    body = work_dir / f"ab-{secrets.token_hex(4)}.der"
    body.write_bytes(load.body)
    # -t stops at the time limit; -n must not be reached first, but ab allocates its
    # per-request table for all -n requests up front: 40,000/s is more than any row makes.
    requests = max(50_000, int(seconds * 40_000))
    command = ["ab", "-q", "-t", f"{seconds:g}", "-n", str(requests), "-c", str(connections),
               "-s", "10"]
    if load.method == "POST":
        command += ["-p", str(body), "-T", "application/ocsp-request"]
    try:
        with steal_meter() as steal:
            done = subprocess.run([*command, base_url + load.path], capture_output=True,
                                  text=True, check=False, timeout=seconds + 60)
    finally:
        body.unlink(missing_ok=True)
    text = done.stdout

    def number(pattern: str, default: float = 0.0) -> float:
        match = re.search(pattern, text, re.MULTILINE)
        return float(match.group(1)) if match else default

    complete = int(number(r"^Complete requests:\s+(\d+)"))
    if done.returncode != 0 or not complete:
        raise RuntimeError(f"ab failed ({done.returncode}): {(done.stderr or text)[-300:]}")
    elapsed = number(r"^Time taken for tests:\s+([\d.]+)", seconds)
    # ab also counts answers of another length than the first as failed; live-signed
    # responses vary by a byte or two (ECDSA signatures), so only the other causes count.
    failed = number(r"^Failed requests:\s+(\d+)") - number(r"Length:\s*(\d+)")
    bad = int(number(r"^Non-2xx responses:\s+(\d+)") + failed)
    ok = complete - bad
    return Rate(ok / elapsed, ok, elapsed, p50_ms=number(r"^\s+50%\s+(\d+)", math.nan),
                p99_ms=number(r"^\s+99%\s+(\d+)", math.nan), errors=bad, steal=steal[0])


LOAD_GENERATORS: dict[str, Callable[[str, Load, float, int, Path], Rate]] = {
    "wrk": run_wrk, "hey": run_hey, "ab": run_ab,
}


# ---------------------------------------------------------------------------- setup


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "VCC_PKI_DATA_DIR": str(data_dir),
        "VCC_PKI_KEY_PASSPHRASE": PASSPHRASE,
        "VCC_PKI_KEY_BACKEND": "software",
        "VCC_PKI_ROOT_KEY_TYPE": "ec-p256",  # the hierarchy's keys only cost setup time
        "VCC_PKI_INTERMEDIATE_KEY_TYPE": "ec-p256",
        "VCC_PKI_ISSUING_KEY_TYPE": "ec-p256",
        "VCC_PKI_LOG_LEVEL": "WARNING",
        **extra,
    }


def issue(gateway: Gateway, common_name: str) -> tuple[x509.Certificate, x509.Certificate]:
    """A certificate issued over REST, so that the serving process precomputes its OCSP
    response (with the in-process cache, no other process can); (leaf, issuing CA)."""
    token = gateway.cli("token", "create", "--org", "default", "--role",
                        "cert_manager").stdout.split()[0]
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    body = json.dumps({"csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
                       "profile": PROFILE}).encode()
    status, answer = http(f"{gateway.https_url}/api/v1/certificates", body,
                          content_type="application/json",
                          headers={"Authorization": f"Bearer {token}"})
    if status != 201:
        raise RuntimeError(f"issuance answered {status}: {answer[:300]!r}")
    document = json.loads(answer)
    leaf = x509.load_pem_x509_certificate(document["certificate_pem"].encode())
    issuing = x509.load_pem_x509_certificates(document["chain_pem"].encode())[0]
    return leaf, issuing


def make_issued(leaf: x509.Certificate, issuing: x509.Certificate) -> Issued:
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuing, hashes.SHA1())
    request = builder.build().public_bytes(serialization.Encoding.DER)
    nonce = secrets.token_bytes(16)
    nonce_request = builder.add_extension(x509.OCSPNonce(nonce), critical=False).build() \
        .public_bytes(serialization.Encoding.DER)
    cert_id = a_ocsp.OCSPRequest.load(request)["tbs_request"]["request_list"][0]["req_cert"]
    return Issued(leaf, issuing, request, nonce_request, nonce, cert_id.dump())


def gateway_rows(target: Target, gateway: Gateway, issued: Issued, nonce: bool,
                 ceiling: bool, hey_tool: str) -> None:
    """Probe every request kind once (a broken setup fails here) and add its row."""
    url = gateway.http_url
    expect = issued.cert_id + GOOD
    get = Load("GET", issued.get_path, expect=expect)
    post = Load("POST", "/ocsp", issued.request, expect=expect)
    probe_ocsp(url + get.path, None, issued)
    probe_ocsp(url + "/ocsp", issued.request, issued)
    target.rows += [Row("get", "hit GET /ocsp/<b64>", "wrk", get),
                    Row("post", "hit POST /ocsp", "wrk", post)]
    if hey_tool:
        target.rows.append(Row("hey", "hit POST /ocsp", hey_tool, post))
    if nonce:
        probe_ocsp(url + "/ocsp", issued.nonce_request, issued, nonce=issued.nonce)
        target.rows.append(Row(
            "nonce", "miss: POST + nonce (live signing)", "wrk",
            Load("POST", "/ocsp", issued.nonce_request, expect=expect, expect2=issued.nonce)))
    if ceiling:
        status, body = http(url + "/bench/fixed")
        if status != 200:
            target.rows.append(Row("ceiling", "ceiling GET /bench/fixed", "wrk",
                                   skipped=f"/bench/fixed answered {status}"))
        else:
            target.rows.append(Row("ceiling", "ceiling GET /bench/fixed", "wrk",
                                   Load("GET", "/bench/fixed", check="fixed",
                                        fixed_len=len(body))))


@dataclass
class Source:
    """A running gateway whose CA, responder and certificate the peers use."""

    gateway: Gateway
    env: dict[str, str]
    issued: Issued


def setup_gateway(target: Target, stack: contextlib.ExitStack, base: Path,
                  extra: dict[str, str], hey_tool: str) -> Source:
    data_dir = base / target.key
    data_dir.mkdir(parents=True)
    env = _env(data_dir, VCC_PKI_BENCH_ROUTES="true", VCC_PKI_OCSP_NONCE="true",
               VCC_PKI_WORKERS=str(target.workers), **extra)
    gateway = stack.enter_context(running_gateway(data_dir, env))
    leaf, issuing = issue(gateway, f"ocsp-{target.key}.bench.example.test")
    issued = make_issued(leaf, issuing)
    target.base_url = gateway.http_url
    target.metrics_url = gateway.http_url + "/metrics"
    # the primary and the workers it started (each scrape of /metrics reaches one of them,
    # so signed/resp is a sample of one process when workers > 1)
    target.pids = lambda: with_children(gateway.process.pid)
    target.log = data_dir / "serve.log"
    if target.measured:
        gateway_rows(target, gateway, issued, nonce=True, ceiling=True, hey_tool=hey_tool)
    return Source(gateway, env, issued)


async def _responder(env: dict[str, str], issuing: x509.Certificate
                     ) -> tuple[x509.Certificate, bytes]:
    """The issuing CA's delegated responder certificate and its key, unencrypted (PEM):
    read through the Store and the key backend, as the gateway opens them."""
    config = load_config(environ=env)
    store = make_store(config)
    await store.open()
    try:
        issuing_der = issuing.public_bytes(serialization.Encoding.DER)
        ca = next(c for c in await store.list_cas() if c.certificate_der == issuing_der)
        now = dt.datetime.now(dt.UTC)
        record = next(r for r in await store.list_ocsp_responders(ca.ca_id)
                      if r.not_before <= now < r.not_after)
    finally:
        await store.close()
    signer = make_key_backend(config).load(record.key_ref)
    pem = signer.builder_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    return x509.load_der_x509_certificate(record.certificate_der), pem


def _start(command: list[str], log: Path, new_session: bool = True
           ) -> subprocess.Popen[bytes]:
    """``new_session``: a process group of its own, so that stopping it reaches whatever it
    forks. Not for ``openssl ocsp -multi``: it makes its own group (setpgid), which fails,
    and it exits, when it already leads a session."""
    with open(log, "wb") as fh:
        return subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=new_session)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """``signum`` to the process group led by ``process`` (its own id), else to it alone."""
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
            return
    except ProcessLookupError:
        pass
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    # Forked children that outlived their parent (the group keeps the parent's id).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _peer_files(directory: Path, source: Source) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    responder, key_pem = asyncio.run(_responder(source.env, source.issued.issuing))
    files = {name: directory / f"{name}.pem" for name in ("issuing", "leaf", "responder", "key")}
    pem = serialization.Encoding.PEM
    files["issuing"].write_bytes(source.issued.issuing.public_bytes(pem))
    files["leaf"].write_bytes(source.issued.leaf.public_bytes(pem))
    files["responder"].write_bytes(responder.public_bytes(pem))
    fd = os.open(files["key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    return files


def setup_cfssl(target: Target, stack: contextlib.ExitStack, base: Path, source: Source
                ) -> None:
    if shutil.which("cfssl") is None:
        raise RuntimeError("cfssl not installed (make bench-deps: golang-cfssl)")
    directory = base / "cfssl"
    files = _peer_files(directory, source)
    signed = subprocess.run(
        ["cfssl", "ocspsign", "-ca", str(files["issuing"]), "-responder",
         str(files["responder"]), "-responder-key", str(files["key"]), "-cert",
         str(files["leaf"]), "-interval", OCSP_VALIDITY],
        capture_output=True, text=True, check=True, timeout=60)
    responses = directory / "responses.txt"
    responses.write_text(json.loads(signed.stdout)["ocspResponse"] + "\n", encoding="ascii")
    port = free_port()
    log = directory / "cfssl.log"
    process = _start(["cfssl", "ocspserve", "-responses", str(responses), "-port", str(port),
                      "-address", "127.0.0.1"], log)
    stack.callback(_stop, process)
    target.base_url = f"http://127.0.0.1:{port}"
    target.pids = lambda: [process.pid]
    target.log = log
    issued = source.issued
    wait_until_answers(lambda: http(target.base_url + "/", issued.request, timeout=5), process,
                       "cfssl ocspserve", log)
    expect = issued.cert_id + GOOD
    probe_ocsp(target.base_url + "/", issued.request, issued)
    target.rows.append(Row("post", "precomputed POST /", "wrk",
                           Load("POST", "/", issued.request, expect=expect)))
    get_path = "/" + urllib.parse.quote(base64.b64encode(issued.request).decode(), safe="")
    try:
        probe_ocsp(target.base_url + get_path, None, issued)
    except RuntimeError as exc:
        # golang-cfssl 1.2.0 (Debian bookworm) decodes the whole path, leading "/" included.
        version = subprocess.run(["cfssl", "version"], capture_output=True, text=True,
                                 check=False).stdout.split("\n")[0].strip()
        version = version.replace("Version:", "cfssl").strip()
        target.rows.append(Row("get", "precomputed GET /<b64>", "wrk",
                               skipped=f"{version}: GET /<base64> fails ({exc})"[:150]))
    else:
        target.rows.append(Row("get", "precomputed GET /<b64>", "wrk",
                               Load("GET", get_path, expect=expect)))


def setup_openssl(target: Target, stack: contextlib.ExitStack, base: Path, source: Source,
                  multi: int, tool: str) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl not installed")
    if tool != "hey":
        # wrk's first probe and ab's time limit both leave a connection without a (whole)
        # request, and openssl ocsp hangs on it.
        raise RuntimeError("needs hey (make bench-deps): wrk and ab hang openssl ocsp")
    directory = base / "openssl"
    files = _peer_files(directory, source)
    leaf = source.issued.leaf
    subject = "".join(f"/{a.rfc4514_attribute_name}={a.value!s}" for a in leaf.subject)
    expiry = leaf.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    index = directory / "index.txt"
    index.write_text(f"V\t{expiry}\t\t{leaf.serial_number:X}\tunknown\t{subject}\n",
                     encoding="utf-8")
    help_text = subprocess.run(["openssl", "ocsp", "-help"], capture_output=True, text=True,
                               check=False)
    port = free_port()
    # OpenSSL 3.0 takes a bare port for -port (it listens on every address).
    command = ["openssl", "ocsp", "-index", str(index), "-port", str(port), "-rsigner",
               str(files["responder"]), "-rkey", str(files["key"]), "-CA",
               str(files["issuing"]), "-ndays", "4"]
    if "-multi" in help_text.stdout + help_text.stderr and multi > 1:
        command += ["-multi", str(multi)]
        target.name = f"openssl ocsp -multi {multi}"
    log = directory / "openssl.log"
    process = _start(command, log, new_session=False)
    stack.callback(_stop, process)
    target.base_url = f"http://127.0.0.1:{port}"
    target.pids = lambda: with_children(process.pid)
    target.log = log
    issued = source.issued
    wait_until_answers(lambda: http(target.base_url + "/", issued.request, timeout=5), process,
                       "openssl ocsp", log)
    probe_ocsp(target.base_url + "/", issued.request, issued)
    target.rows.append(Row("hey", "live-signed POST / (HTTP/1.0)", tool,
                           Load("POST", "/", issued.request)))


def _synthetic_der() -> bytes:
    """A leaf-sized certificate (P-256, SAN): the bytes every seeded row carries."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seed.bench.example.test"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Default Organization")])
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + dt.timedelta(days=90))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.DNSName("seed.bench.example.test")]), critical=False)
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.DER)


def _store_time(value: dt.datetime) -> str:
    # The SQLite store's text form of a time (db.sqlite), so that its range queries match.
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")[:26] + "Z"


def seed_store(database: Path, count: int, serial_head: bytes) -> None:
    """``count`` unrevoked certificate rows of the issuing CA, serials ``serial_head ||
    be32(i)``: inserted with sqlite3 directly (no audit events), in one transaction."""
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # a throwaway seed: no fsync
        ca_id, org_id = conn.execute(
            "SELECT ca_id, org_id FROM certificate_authorities WHERE ca_type = 'issuing'"
            " AND status = 'active'").fetchone()
        der = _synthetic_der()
        now = dt.datetime.now(dt.UTC)
        not_before, not_after = _store_time(now - dt.timedelta(days=1)), \
            _store_time(now + dt.timedelta(days=90))
        created = _store_time(now)
        head = serial_head.hex()
        rows = (
            (f"00000000-0000-4000-8000-{i:012x}", ca_id, org_id, f"{head}{i:08x}",
             f"CN=seed-{i}.bench.example.test,O=Default Organization",
             f"seed-{i}.bench.example.test", PROFILE, der, "ECDSA", 256, "{}", not_before,
             not_after, "bench-seed", "active", created)
            for i in range(count)
        )
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO certificates (cert_id, issuer_ca_id, org_id, serial_hex, subject_dn,"
            " common_name, profile, certificate_der, key_algorithm, key_size, san,"
            " not_before, not_after, requester, status, created_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        conn.execute("COMMIT")
        # Fold the WAL into the database: serve should not start with a 1 GB log.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def setup_store(target: Target, stack: contextlib.ExitStack, base: Path, size: int) -> None:
    data_dir = base / target.key
    data_dir.mkdir(parents=True)
    env = _env(data_dir, VCC_PKI_OCSP_WARM="false")
    # init first, seed, then serve (running_gateway's own init finds the CA and does nothing).
    subprocess.run([str(BIN), "init"], env={**os.environ, **env}, check=True,
                   capture_output=True, timeout=300)
    serial_head = bytes([0x5B]) + secrets.token_bytes(11)  # 0x5b: positive, no leading 0
    t0 = time.monotonic()
    seed_store(data_dir / "vcc-pki.db", size, serial_head)
    target.note = f"seeded {size:,} rows in {time.monotonic() - t0:.0f} s"
    gateway = stack.enter_context(running_gateway(data_dir, env))
    leaf, issuing = issue(gateway, f"ocsp-{target.key}.bench.example.test")
    issued = make_issued(leaf, issuing)
    target.base_url = gateway.http_url
    target.metrics_url = gateway.http_url + "/metrics"
    target.pids = lambda: with_children(gateway.process.pid)
    target.log = data_dir / "serve.log"
    expect = issued.cert_id + GOOD
    probe_ocsp(gateway.http_url + issued.get_path, None, issued)
    target.rows.append(Row("get", "hit GET /ocsp/<b64>", "wrk",
                           Load("GET", issued.get_path, expect=expect)))
    # The distinct-serial request: the real CertID with a seeded serial; the last 4 serial
    # bytes vary per request (request i asks for seeded row i * M mod N).
    template_serial = int.from_bytes(serial_head + bytes(4), "big")
    request = ocsp.load_der_ocsp_request(issued.request)
    template = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        request.issuer_name_hash, request.issuer_key_hash, template_serial, hashes.SHA1(),
    ).build().public_bytes(serialization.Encoding.DER)
    at = template.index(serial_head + bytes(4)) + len(serial_head)
    cert_id = a_ocsp.OCSPRequest.load(template)["tbs_request"]["request_list"][0]["req_cert"]
    walk = Walk(template[:at], template[at + 4:], size)
    probe_ocsp(gateway.http_url + "/ocsp", template, issued, serial=template_serial)
    label = "miss: POST distinct serials"
    if size < MIN_UNASKED:
        target.rows.append(Row("walk", label, "wrk", skipped=(
            f"{size:,} seeded serials: fewer than {MIN_UNASKED:,}, so a run would mostly "
            "hit responses earlier runs wrote back")))
    else:
        target.rows.append(Row("walk", label, "wrk", Load(
            "POST", "/ocsp", check="walk", expect=cert_id.dump()[:-4], walk=walk)))


# ---------------------------------------------------------------------------- redis


@dataclass
class RedisSpace:
    """A Redis database and a key prefix of this run only; its keys are deleted after."""

    url: str = ""
    prefix: str = ""
    reason: str = ""

    def open(self, db: int | None) -> None:
        import redis

        self.prefix = f"vcc-pki-bench-ocsp-{secrets.token_hex(4)}:"
        try:
            candidates = [db] if db is not None else list(range(15, 0, -1))
            for number in candidates:
                client = redis.Redis.from_url(f"{REDIS_BASE_URL}/{number}", socket_timeout=5)
                try:
                    if db is not None or client.dbsize() == 0:
                        self.url = f"{REDIS_BASE_URL}/{number}"
                        return
                finally:
                    client.close()
            self.reason = "no empty Redis database (use --redis-db)"
        except Exception as exc:
            self.reason = f"Redis at {REDIS_BASE_URL} unusable: {type(exc).__name__}: {exc}"

    def keys(self) -> int:
        import redis

        if not self.url:
            return 0
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            return sum(1 for _ in client.scan_iter(match=self.prefix + "*", count=1000))
        finally:
            client.close()

    def flush(self) -> int:
        """Delete this run's keys (and only those); returns how many."""
        import redis

        if not self.url:
            return 0
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        deleted = 0
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=self.prefix + "*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += client.delete(*batch)
                    batch.clear()
            if batch:
                deleted += client.delete(*batch)
        finally:
            client.close()
        return deleted


# ---------------------------------------------------------------------------- rounds


def measure(target: Target, row: Row, connections: int, seconds: float, work_dir: Path,
            round_no: int, warm: bool) -> None:
    assert row.load is not None
    walk = row.load.walk
    if walk is not None and walk.size - walk.next_i < MIN_UNASKED:
        print(f"{target.name}: {row.label}: no run: fewer than {MIN_UNASKED:,} serials left "
              "unasked", flush=True)
        return
    generator = LOAD_GENERATORS[row.tool]
    if warm:
        generator(target.base_url, row.load, min(1.0, seconds), connections, work_dir)
    before = signatures(target.metrics_url)
    pids = target.pids()
    jiffies0 = cpu_jiffies(pids)
    with others_meter() as others:
        rate = generator(target.base_url, row.load, seconds, connections, work_dir)
    jiffies1 = cpu_jiffies(pids)
    after = signatures(target.metrics_url)
    row.runs.setdefault(connections, {})[round_no] = rate
    extra = ""
    if others[0] is not None:
        row.others.append(others[0])
        extra += f"  others {others[0]:.0%}"
    if rate.count and pids:
        row.cpu_us.append((jiffies1 - jiffies0) / os.sysconf("SC_CLK_TCK") / rate.count * 1e6)
        extra += f"  server CPU {row.cpu_us[-1]:.0f} µs/resp"
    if before is not None and after is not None and rate.count:
        share = (after - before) / rate.count
        row.signed.setdefault(connections, []).append(share)
        extra += f"  signed/resp {share:.2f}"
    label = f"{target.name} {row.label} [{row.tool}, {connections}c]"
    print(describe(label, rate) + extra, flush=True)


def run_round(targets: list[Target], args: argparse.Namespace, work_dir: Path, round_no: int
              ) -> None:
    for target in targets:
        for connections in args.connections:
            for row in target.rows:
                if STOP.is_set():
                    return
                if row.skipped or row.load is None:
                    continue
                try:
                    measure(target, row, connections, args.seconds, work_dir, round_no,
                            warm=round_no == 1)
                except Exception as exc:  # shown, and the row stops; the benchmark goes on
                    row.skipped = f"failed: {type(exc).__name__}: {exc}"[:200]
                    print(f"{target.name} {row.label}: {row.skipped}", flush=True)


# ---------------------------------------------------------------------------- reporting


def _cell(runs: dict[int, Rate]) -> str:
    if not runs:
        return "-"
    rates = list(runs.values())
    rate = statistics.median(r.rate for r in rates)
    p50 = statistics.median(r.p50_ms for r in rates if r.p50_ms is not None)
    p99 = statistics.median(r.p99_ms for r in rates if r.p99_ms is not None)
    return f"{rate:,.0f} ({p50:.1f}/{p99:.1f})"


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f}"


def print_table(targets: list[Target], connections: Sequence[int], rounds_done: int) -> None:
    header = ["target", "request", "tool",
              *[f"{c} conns: resp/s (p50/p99 ms)" for c in connections], "bad", "signed/resp",
              "server CPU µs/resp", "others CPU"]
    rows: list[list[str]] = []
    for target in targets:
        if not target.measured:
            continue
        if target.skipped:
            rows.append([target.name, f"skipped: {target.skipped}"])
            continue
        for row in target.rows:
            if row.skipped and not row.runs:
                rows.append([target.name, row.label, row.tool, f"skipped: {row.skipped}"])
                continue
            if row.skipped:  # failed after some runs: show them, and why it stopped
                print(f"note: {target.name} {row.label}: {row.skipped}")
            bad = sum(r.errors for runs in row.runs.values() for r in runs.values())
            signed = [s for c in connections for s in row.signed.get(c, [])]
            rows.append([target.name, row.label, row.tool,
                         *[_cell(row.runs.get(c, {})) for c in connections], str(bad),
                         f"{statistics.median(signed):.2f}" if signed else "-",
                         f"{statistics.median(row.cpu_us):.0f}" if row.cpu_us else "-",
                         f"{statistics.median(row.others):.0%}" if row.others else "-"])
    print()
    partial = " (interrupted: the last round is partial)" if STOP.is_set() else ""
    print(f"OCSP benchmark: median of {rounds_done} round(s){partial}")
    print_grid(header, rows)


def _ratio(targets: dict[str, Target], top: tuple[str, str], bottom: tuple[str, str],
           connections: int) -> float | None:
    """Median over rounds of top/bottom, each round's figures divided by each other."""
    upper = targets.get(top[0])
    lower = targets.get(bottom[0])
    if upper is None or lower is None:
        return None
    a, b = upper.row(top[1]), lower.row(bottom[1])
    if a is None or b is None:
        return None
    runs_a, runs_b = a.runs.get(connections, {}), b.runs.get(connections, {})
    ratios = [runs_a[n].rate / runs_b[n].rate for n in runs_a
              if n in runs_b and runs_b[n].rate > 0]
    return statistics.median(ratios) if ratios else None


def print_ratios(targets: list[Target], connections: Sequence[int]) -> None:
    by_key = {t.key: t for t in targets if not t.skipped}
    names = {"redis": "Redis hit", "memory": "in-process hit"}
    lines: list[tuple[str, tuple[str, str], tuple[str, str]]] = []
    for cache in [t.key for t in targets if t.kind in names]:
        name = names[cache.partition("-w")[0]]
        workers = by_key[cache].workers if cache in by_key else 1
        name += f", {workers} workers" if workers > 1 else ""
        lines += [
            (f"{name} POST / cfssl ocspserve POST", (cache, "post"), ("cfssl", "post")),
            (f"{name} GET / ceiling GET /bench/fixed", (cache, "get"),
             (cache, "ceiling")),
            (f"{name} POST / openssl ocsp POST (hey)", (cache, "hey"),
             ("openssl", "hey")),
            (f"{name.replace(' hit', '')}: miss (nonce) / hit POST", (cache, "nonce"),
             (cache, "post")),
        ]
    for cache in ("redis", "memory"):
        for target in targets:
            if target.kind == cache and target.workers > 1:
                lines.append((f"{names[cache]}: {target.workers} workers / 1 worker POST",
                              (target.key, "post"), (cache, "post")))
    lines.append(("cfssl ocspserve POST / ceiling (in-process gw)", ("cfssl", "post"),
                  ("memory", "ceiling")))
    header = ["ratio (per round, then median)", *[f"{c} conns" for c in connections]]
    rows = []
    for label, top, bottom in lines:
        values = [_ratio(by_key, top, bottom, c) for c in connections]
        if all(v is None for v in values):
            continue
        rows.append([label, *["-" if v is None else f"{v:.2f}" for v in values]])
    print()
    print_grid(header, rows)


def print_targets(targets: list[Target], connections: Sequence[int]) -> None:
    if TARGET_CONNECTIONS not in connections:
        print(f"\np99 target: not measured (--connections has no {TARGET_CONNECTIONS})")
        return
    print(f"\np99 of cache hits at {TARGET_CONNECTIONS} connections (target < "
          f"{TARGET_P99_MS:.0f} ms; printed, not judged by the benchmark):")
    width = max(len(t.name) for t in targets)
    for target in targets:
        gateway = target.kind in ("redis", "memory") or target.key.startswith("store-")
        if target.skipped or not gateway:
            continue
        for row in target.rows:
            runs = row.runs.get(TARGET_CONNECTIONS, {})
            if row.key not in ("get", "post", "hey", "ceiling") or not runs:
                continue
            p99 = statistics.median(r.p99_ms for r in runs.values() if r.p99_ms is not None)
            verdict = "met" if p99 < TARGET_P99_MS else "missed"
            if row.key == "ceiling":
                verdict = "for comparison: no OCSP work at all"
            print(f"  {target.name:<{width}}  {row.label:<24} [{row.tool}]  p99 {p99:5.1f} ms"
                  f"  ({verdict})")


_LOG_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback|panic|\[ERROR\]|\[WARNING\])")


def scan_log(path: Path | None) -> str:
    """What the server logged at warning level or above during the run (its log lives in
    the work directory, which is removed at the end)."""
    if path is None or not path.exists():
        return ""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    problems = [ln.strip() for ln in lines if _LOG_PROBLEM.search(ln)]
    if not problems:
        return "log: no warnings or errors"
    first = "; ".join(dict.fromkeys(p[:160] for p in problems[:50]))
    return f"log: {len(problems)} warning/error lines, first: {first[:400]}"


def print_memory(targets: list[Target], redis_note: str) -> None:
    header = ["serving process(es)", "RSS MB before load", "RSS MB after", "peak (VmHWM) MB",
              "note"]
    rows = [[t.name, _mb(t.rss_before), _mb(t.rss_after), _mb(t.hwm), t.note]
            for t in targets if not t.skipped and t.measured]
    print()
    print_grid(header, rows)
    if redis_note:
        print(redis_note)
    for target in targets:
        if target.log_summary:
            print(f"{target.name} {target.log_summary}")


# ---------------------------------------------------------------------------- main


def _client_tool(choice: str) -> str:
    if choice != "auto":
        return choice if shutil.which(choice) else ""
    return next((t for t in ("hey", "ab") if shutil.which(t)), "")


def build_targets(args: argparse.Namespace) -> list[Target]:
    kinds = set(args.only or TARGET_KINDS)
    targets: list[Target] = []
    for workers in args.workers:
        suffix, note = ("", "") if workers == 1 else (f"-w{workers}", f", {workers} workers")
        targets += [Target(f"redis{suffix}", f"gateway Redis cache{note}", workers,
                           measured="redis" in kinds),
                    Target(f"memory{suffix}", f"gateway in-process{note}", workers,
                           measured="memory" in kinds)]
    if 1 not in args.workers:  # the peers take their CA from a one-worker gateway
        targets.append(Target("memory", "gateway in-process", measured=False))
    targets += [Target(kind, name) for kind, name in
                (("cfssl", "cfssl ocspserve"), ("openssl", "openssl ocsp")) if kind in kinds]
    if "stores" in kinds:
        targets += [Target(f"store-{n}", f"store {n:,} certs (in-process)")
                    for n in args.store_sizes]
    return targets


def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (make bench-deps)")
    client = _client_tool(args.openssl_client)
    targets = build_targets(args)
    need_source = any(t.key in ("cfssl", "openssl") for t in targets)
    base = Path(tempfile.mkdtemp(prefix="vcc-pki-ocsp-bench-"))
    redis_space = RedisSpace()
    print(f"vcc-pki OCSP benchmark: {args.rounds} rounds, {args.seconds:g} s per measurement, "
          f"connections {args.connections}, store sizes {args.store_sizes}; openssl peer "
          f"driven by {client or 'nothing (hey/ab missing)'}", flush=True)
    print(f"CPUs {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; work dir {base}",
          flush=True)
    rounds_done = 0
    redis_note = ""
    with steal_meter() as whole, others_meter() as whole_others:
        try:
            with contextlib.ExitStack() as stack:
                source: Source | None = None
                for target in targets:
                    if STOP.is_set():
                        target.skipped = "interrupted"
                        continue
                    if not target.measured and not (target.key == "memory" and need_source
                                                    and source is None):
                        continue
                    t0 = time.monotonic()
                    try:
                        if target.kind == "redis":
                            if not redis_space.url:  # one space for every Redis target
                                redis_space.open(args.redis_db)
                            if redis_space.reason:
                                raise RuntimeError(redis_space.reason)
                            made = setup_gateway(target, stack, base, {
                                "VCC_PKI_REDIS_URL": redis_space.url,
                                "VCC_PKI_REDIS_KEY_PREFIX": redis_space.prefix}, client)
                            source = source or made
                        elif target.kind == "memory":
                            made = setup_gateway(target, stack, base, {}, client)
                            if target.workers == 1 or source is None:
                                source = made  # peers use the in-process gateway's CA
                        elif target.key in ("cfssl", "openssl"):
                            if source is None:
                                raise RuntimeError("no gateway to take the CA from")
                            if target.key == "cfssl":
                                setup_cfssl(target, stack, base, source)
                            else:
                                setup_openssl(target, stack, base, source, args.openssl_multi,
                                              client)
                        else:
                            setup_store(target, stack, base, int(target.key.split("-")[1]))
                    except Exception as exc:
                        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) \
                            else exc
                        target.skipped = f"setup failed: {type(exc).__name__}: {detail}"[:300]
                        print(f"setup {target.name}: {target.skipped}", flush=True)
                        continue
                    extra = f" ({target.note})" if target.note else ""
                    print(f"setup {target.name}: {time.monotonic() - t0:.1f} s{extra}",
                          flush=True)
                live = [t for t in targets if t.measured and not t.skipped]
                for target in live:
                    target.rss_before = rss_kb(target.pids())[0]
                for round_no in range(1, args.rounds + 1):
                    if STOP.is_set() or not live:
                        break
                    print(f"-- round {round_no}/{args.rounds}", flush=True)
                    run_round(live, args, base, round_no)
                    rounds_done = round_no
                for target in live:
                    target.rss_after, target.hwm = rss_kb(target.pids())
            # After the ExitStack: the servers have stopped, so shutdown problems show too.
            for target in targets:
                if target.measured and target.log is not None:
                    target.log_summary = scan_log(target.log)
                if redis_space.url:
                    redis_note = (f"Redis ({redis_space.url}, shared with other users, so "
                                  f"its RSS is not shown): {redis_space.keys()} keys under "
                                  f"{redis_space.prefix}")
        finally:
            if redis_space.url:
                deleted = redis_space.flush()
                redis_note += f"; deleted {deleted} after the run"
            shutil.rmtree(base, ignore_errors=True)
    print_table(targets, args.connections, rounds_done)
    print_ratios(targets, args.connections)
    print_targets(targets, args.connections)
    print_memory(targets, redis_note)
    if whole[0] is not None and whole_others[0] is not None:
        print(f"CPU steal over the whole run: {whole[0]:.0%}; CPU used by other work "
              f"{whole_others[0]:.0%}; load average now {os.getloadavg()[0]:.1f}")
    print(f"wall time {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.bench.ocsp",
        description="OCSP responder benchmark (prints figures; never asserts on them).",
    )
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="length of each measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds over all targets, alternating (default 2)")
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64],
                        help="concurrent connections (default 16 64)")
    parser.add_argument("--store-sizes", type=int, nargs="+", default=[10_000, 1_000_000],
                        help="certificates seeded into the store of the store-size targets "
                             "(default 10000 1000000)")
    parser.add_argument("--only", nargs="+", default=[], choices=TARGET_KINDS,
                        metavar="TARGET", help="targets: " + ", ".join(TARGET_KINDS))
    parser.add_argument("--openssl-multi", type=int, default=os.cpu_count() or 1,
                        help="openssl ocsp -multi N responder processes (default: CPUs)")
    parser.add_argument("--openssl-client", choices=("auto", "hey", "ab"), default="auto",
                        help="load generator of the openssl peer and the hey rows "
                             "(default: hey, else ab)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="VCC_PKI_WORKERS of the gateway targets; several values are "
                             "several targets, measured in the same rounds (default 1)")
    parser.add_argument("--redis-db", type=int, default=None,
                        help="Redis database number (default: the highest empty one)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or min(args.connections) < 1 \
            or min(args.store_sizes) < 1 or args.openssl_multi < 1 or min(args.workers) < 1:
        parser.error("--seconds, --rounds, --connections, --store-sizes and --openssl-multi "
                     "must be positive")
    if max(args.store_sizes) >= 2**32:
        parser.error("--store-sizes: at most 2**32 - 1 (4 varying serial bytes)")
    install_stop_handlers()
    run(args)


if __name__ == "__main__":
    main()
