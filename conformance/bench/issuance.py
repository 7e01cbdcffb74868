"""Issuance benchmark: raw CA signing, direct ``Authority.issue`` and REST issuance.

Run ``python -m conformance.bench.issuance [--seconds N] [--concurrency 16] [--only NAME ...]``.
This prints figures; it never asserts on them. See ``conformance/bench/README.md``.

For every configuration (issuing CA key: software ECDSA P-256, software RSA-2048, SoftHSM2
ECDSA P-256) and store (SQLite, PostgreSQL) it measures

1. the raw sign rate of the issuing CA's Signer (the upper limit of issuance),
2. direct issuance through ``Authority.issue`` with ``--concurrency`` asyncio tasks,
3. REST issuance (``POST /api/v1/certificates``) against ``vcc-pki serve`` started as a
   subprocess, driven from a separate process (``wrk``, or an aiohttp client process).

Everything is set up first; then the measurements run in rounds, each round visiting every
configuration once (A B C ... A B C ...), so slow phases of a noisy machine spread over all
of them. The final table gives the median over rounds; ratios are computed per round (the
raw rate and the issuance rate of the same round) and their median is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_core.authority import Authority, IssuanceRequest, issuing_ca_name
from ca_core.hierarchy import ensure_hierarchy
from ca_core.principal import Principal
from ca_core.signers.base import Signer
from conformance.gateway import Gateway, running_gateway
from gateway.config import load_config
from gateway.runtime import open_services

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
HSM_LABEL, HSM_PIN = "vcc-bench", "1234"
PROFILE = "vcc_service"
CSR_POOL = 50
SIGN_PAYLOAD = 512  # bytes: about the size of a leaf certificate's TBSCertificate
PASSPHRASE = "bench-passphrase"

TARGET_REST = (1000.0, 50.0)  # certificates/s, p99 ms: software ECDSA on SQLite
TARGET_DIRECT = 2500.0  # certificates/s in one process: software ECDSA (issue 18)
TARGET_HSM_RATIO = 0.5  # issuance / raw sign rate: SoftHSM2

# Set by the first SIGINT/SIGTERM: measurements end early, the rest is skipped, the table of
# what was measured is printed and everything is cleaned up. A second signal interrupts.
STOP = threading.Event()


@dataclass(frozen=True)
class KeyConfig:
    name: str
    backend: str  # software | pkcs11
    issuing_key: str  # ec-p256 | rsa-2048


CONFIGS = (
    KeyConfig("software-ec-p256", "software", "ec-p256"),
    KeyConfig("software-rsa-2048", "software", "rsa-2048"),
    KeyConfig("softhsm2-ec-p256", "pkcs11", "ec-p256"),
)
STORES = ("sqlite", "postgres")


# ---------------------------------------------------------------------------- results


@dataclass
class Rate:
    """One measurement: operations per second and latencies (ms) of one run."""

    rate: float
    count: int
    seconds: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    steal: float | None = None  # share of CPU time stolen by the hypervisor meanwhile
    note: str = ""


@dataclass
class Combo:
    config: KeyConfig
    store: str
    skipped: str = ""
    rest_skipped: str = ""
    authority: Authority | None = None
    signer: Signer | None = None
    gateway: Gateway | None = None
    token: str = ""
    direct: list[Rate] = field(default_factory=list)
    rest: list[Rate] = field(default_factory=list)
    direct_ratio: list[float] = field(default_factory=list)
    rest_ratio: list[float] = field(default_factory=list)
    rss_kb: int | None = None

    @property
    def name(self) -> str:
        return f"{self.config.name}/{self.store}"


@dataclass
class RawSign:
    """Raw sign rates of one configuration; ``limit`` is the higher of both per round."""

    sync: list[Rate] = field(default_factory=list)
    concurrent: list[Rate] = field(default_factory=list)
    limit: list[float] = field(default_factory=list)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(pct / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def _cpu_times() -> tuple[int, int]:
    """(total, steal) jiffies of all CPUs from /proc/stat; (0, 0) where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields_ = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    steal = fields_[7] if len(fields_) > 7 else 0
    return sum(fields_[:8]), steal


@contextlib.contextmanager
def steal_meter() -> Iterator[list[float | None]]:
    """Yields a one-element list that holds the steal share of the block when it ends."""
    out: list[float | None] = [None]
    total0, steal0 = _cpu_times()
    try:
        yield out
    finally:
        total1, steal1 = _cpu_times()
        if total1 > total0:
            out[0] = (steal1 - steal0) / (total1 - total0)


def _vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


# ---------------------------------------------------------------------------- CSRs


def make_csrs(count: int) -> list[bytes]:
    """Distinct PEM CSRs (P-256 keys, CN and DNS SAN), made before anything is measured."""
    csrs = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        host = f"svc-{i}.bench.example.test"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        csrs.append(csr.public_bytes(serialization.Encoding.PEM))
    return csrs


# ---------------------------------------------------------------------------- measurements


def measure_sign_sync(signer: Signer, seconds: float) -> Rate:
    """``signer.sign_sync`` in a loop on one thread."""
    data = os.urandom(SIGN_PAYLOAD)
    count = 0
    with steal_meter() as steal:
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            for _ in range(8):
                signer.sign_sync(data)
            count += 8
            if time.perf_counter() >= deadline or STOP.is_set():
                break
        elapsed = time.perf_counter() - started
    return Rate(count / elapsed, count, elapsed, steal=steal[0])


async def measure_concurrent(
    op: Callable[[int], Awaitable[object]], seconds: float, concurrency: int
) -> Rate:
    """``concurrency`` tasks each awaiting ``op(i)`` in a loop until ``seconds`` have passed."""
    latencies: list[float] = []
    errors: list[BaseException] = []

    async def worker(first: int) -> None:
        i = first
        while time.perf_counter() < deadline and not STOP.is_set():
            t0 = time.perf_counter()
            try:
                await op(i)
            except Exception as exc:  # counted and shown; the benchmark goes on
                errors.append(exc)
            else:
                latencies.append(time.perf_counter() - t0)
            i += concurrency

    with steal_meter() as steal:
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    note = ""
    if errors:
        note = f"{len(errors)} errors, first: {type(errors[0]).__name__}: {errors[0]}"[:200]
    return Rate(
        len(latencies) / elapsed, len(latencies), elapsed,
        p50_ms=percentile(latencies, 50) * 1000, p99_ms=percentile(latencies, 99) * 1000,
        errors=len(errors), steal=steal[0], note=note,
    )


async def measure_sign_concurrent(signer: Signer, seconds: float, concurrency: int) -> Rate:
    data = os.urandom(SIGN_PAYLOAD)
    return await measure_concurrent(lambda _i: signer.sign(data), seconds, concurrency)


async def measure_direct(
    authority: Authority, csrs: list[bytes], seconds: float, concurrency: int
) -> Rate:
    principal = Principal.system("bench")
    requests = [IssuanceRequest(csr=csr, profile=PROFILE) for csr in csrs]
    return await measure_concurrent(
        lambda i: authority.issue(requests[i % len(requests)], principal), seconds, concurrency
    )


# --- REST load generators (separate processes) -----------------------------------------------

# Every wrk script of the benchmarks ends with this: each thread counts the responses it
# found wrong in a global ``bad``, and ``done`` prints one line that run_wrk_script reads.
WRK_DONE = """\
function done(summary, latency, requests)
  local total_bad = 0
  for _, thread in ipairs(threads) do
    total_bad = total_bad + thread:get("bad")
  end
  local e = summary.errors
  io.write(string.format(
    "VCCBENCH requests=%d duration_us=%d p50_us=%d p99_us=%d bad=%d "
    .. "connect=%d read=%d write=%d timeout=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    total_bad, e.connect, e.read, e.write, e.timeout))
end
"""


def lua_bytes(data: bytes) -> str:
    """Three-digit decimal escapes keep any bytes intact in a Lua string literal."""
    return "".join(f"\\{byte:03d}" for byte in data)


def wrk_threads(connections: int) -> int:
    """wrk's -t for a number of connections (a walk script needs the same number)."""
    return max(1, min(2, connections))


def run_wrk_script(script_text: str, url: str, seconds: float, connections: int,
                   work_dir: Path) -> tuple[Rate, dict[str, int]]:
    """wrk with a script that ends in WRK_DONE (and keeps its threads in ``threads``): the
    rate of good responses, and wrk's raw counts."""
    script = work_dir / f"wrk-{secrets.token_hex(4)}.lua"
    script.write_text(script_text + WRK_DONE, encoding="utf-8")
    command = ["wrk", "-t", str(wrk_threads(connections)), "-c", str(connections),
               "-d", f"{seconds:g}s", "--timeout", "10s", "--latency", "-s", str(script), url]
    try:
        with steal_meter() as steal:
            done = subprocess.run(command, capture_output=True, text=True, check=False,
                                  timeout=seconds + 60)
    finally:
        script.unlink(missing_ok=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("VCCBENCH ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout)[-300:]}")
    n = {key: int(value) for key, value in (item.split("=", 1) for item in line.split()[1:])}
    elapsed = n["duration_us"] / 1e6
    ok = n["requests"] - n["bad"]
    socket_errors = n["connect"] + n["read"] + n["write"] + n["timeout"]
    return Rate(ok / elapsed, ok, elapsed, p50_ms=n["p50_us"] / 1000,
                p99_ms=n["p99_us"] / 1000, errors=n["bad"], steal=steal[0],
                note=f"socket errors {socket_errors}" if socket_errors else ""), n


_WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer {token}"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]

local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  bad = 0
end
function response(status, headers, body)
  if status < 200 or status > 299 then
    bad = bad + 1
  end
end
"""


def rest_body(csr: bytes) -> str:
    return json.dumps({"csr": csr.decode(), "profile": PROFILE})


def run_wrk(url: str, token: str, body: str, seconds: float, concurrency: int,
            work_dir: Path) -> Rate:
    rate, _ = run_wrk_script(_WRK_SCRIPT.format(token=token, body=body), url, seconds,
                             concurrency, work_dir)
    return rate


def _aiohttp_load(conn: Connection, url: str, token: str, body: str, seconds: float,
                  concurrency: int) -> None:
    """Child process: ``concurrency`` keep-alive connections posting ``body`` in a loop."""
    import aiohttp

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        failures = 0
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        connector = aiohttp.TCPConnector(limit=concurrency, ssl=False)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def worker() -> None:
                nonlocal failures
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    try:
                        async with session.post(url, data=body) as response:
                            await response.read()
                            status = response.status
                    except aiohttp.ClientError:
                        failures += 1
                        continue
                    statuses[status] = statuses.get(status, 0) + 1
                    if 200 <= status < 300:
                        latencies.append(time.perf_counter() - t0)

            started = time.perf_counter()
            deadline = started + seconds
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
        latencies.sort()
        return {"ok": len(latencies), "elapsed": elapsed, "failures": failures,
                "non2xx": sum(c for s, c in statuses.items() if not 200 <= s < 300),
                "p50": percentile(latencies, 50), "p99": percentile(latencies, 99)}

    try:
        conn.send(asyncio.run(run()))
    except Exception as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def run_aiohttp(url: str, token: str, body: str, seconds: float, concurrency: int) -> Rate:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_aiohttp_load,
                          args=(child, url, token, body, seconds, concurrency))
    with steal_meter() as steal:
        process.start()
        child.close()
        try:
            if not parent.poll(seconds + 120):
                raise RuntimeError("the aiohttp load generator did not answer")
            result = parent.recv()
        finally:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    if "error" in result:
        raise RuntimeError(f"aiohttp load generator: {result['error']}")
    elapsed = result["elapsed"]
    note = f"connection errors {result['failures']}" if result["failures"] else ""
    return Rate(result["ok"] / elapsed, result["ok"], elapsed, p50_ms=result["p50"] * 1000,
                p99_ms=result["p99"] * 1000, errors=result["non2xx"], steal=steal[0], note=note)


def probe_rest(url: str, token: str, body: str) -> None:
    """One request before measuring: a broken setup fails here with the server's answer."""
    request = urllib.request.Request(
        url, data=body.encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # like wrk; the certificate is not what is measured
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            if response.status != 201:
                raise RuntimeError(f"probe answered {response.status}")
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"probe answered {exc.code}: {exc.read()[:300]!r}") from None


# ---------------------------------------------------------------------------- setup


class Postgres:
    """Throwaway databases on the local server, created and dropped with asyncpg."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.prefix = f"vcc_pki_bench_{secrets.token_hex(4)}"

    @staticmethod
    async def _admin(sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER,
                                     database="postgres", timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def available(self) -> str:
        """Empty when usable, else the reason why not."""
        if importlib.util.find_spec("db.postgres") is None:
            return "db/postgres.py (PostgresStore) is not there yet"
        if importlib.util.find_spec("asyncpg") is None:
            return "asyncpg is not installed"
        try:
            await self._admin("SELECT 1")
        except Exception as exc:
            return f"PostgreSQL on {PG_HOST}:{PG_PORT} unusable: {type(exc).__name__}: {exc}"
        return ""

    async def create(self, suffix: str) -> str:
        name = f"{self.prefix}_{suffix}".replace("-", "_")
        await self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"

    async def drop_all(self) -> None:
        for name in self.created:
            try:
                await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:
                print(f"warning: could not drop database {name}: {exc}", flush=True)
        self.created.clear()


@dataclass
class HsmTokens:
    """One SoftHSM2 token for this process (all in-process backends) and one per server."""

    base: Path
    local: Any = None
    reason: str = ""
    _make: Any = None
    _servers: list[Any] = field(default_factory=list)

    def prepare(self) -> None:
        if importlib.util.find_spec("ca_core.signers.pkcs11") is None:
            self.reason = "ca_core/signers/pkcs11.py (Pkcs11KeyBackend) is not there yet"
            return
        try:
            from tests.softhsm import make_softhsm_token, softhsm_available
        except ImportError as exc:
            self.reason = f"tests/softhsm.py unusable: {exc}"
            return
        if not softhsm_available():
            self.reason = "SoftHSM2 is not installed (softhsm2-util, libsofthsm2.so)"
            return
        self._make = make_softhsm_token
        # make_softhsm_token points SOFTHSM2_CONF of this process at the newest token; the
        # module reads it once, when the first in-process backend initialises it.
        self.local = make_softhsm_token(self.base / "hsm-local", HSM_LABEL, HSM_PIN)

    def server_token(self, name: str) -> Any:
        token = self._make(self.base / f"hsm-{name}", HSM_LABEL, HSM_PIN)
        os.environ["SOFTHSM2_CONF"] = str(self.local.conf_path)
        self._servers.append(token)
        return token


def _env(config: KeyConfig, data_dir: Path, database_url: str, token: Any) -> dict[str, str]:
    env = {
        "VCC_PKI_DATA_DIR": str(data_dir),
        "VCC_PKI_KEY_PASSPHRASE": PASSPHRASE,
        "VCC_PKI_KEY_BACKEND": config.backend,
        "VCC_PKI_ROOT_KEY_TYPE": "ec-p256",
        "VCC_PKI_INTERMEDIATE_KEY_TYPE": "ec-p256",
        "VCC_PKI_ISSUING_KEY_TYPE": config.issuing_key,
        "VCC_PKI_LOG_LEVEL": "WARNING",
    }
    if database_url:
        env["VCC_PKI_DATABASE_URL"] = database_url
    if token is not None:
        env.update({
            "VCC_PKI_PKCS11_MODULE": token.module_path,
            "VCC_PKI_PKCS11_TOKEN_LABEL": token.label,
            "VCC_PKI_PKCS11_PIN": token.pin,
            "SOFTHSM2_CONF": str(token.conf_path),
        })
    return env


async def setup_combo(combo: Combo, stack: contextlib.AsyncExitStack, base: Path,
                      pg: Postgres, hsm: HsmTokens, rest: bool) -> None:
    """The in-process PKI (direct issuance) and the served one (REST) of one combination."""
    slug = f"{combo.config.name}-{combo.store}"
    local_token = hsm.local if combo.config.backend == "pkcs11" else None
    direct_url = await pg.create(f"{slug}_direct") if combo.store == "postgres" else ""
    config = load_config(environ=_env(combo.config, base / slug / "direct", direct_url,
                                      local_token))
    services = await stack.enter_async_context(open_services(config, create=True))
    await ensure_hierarchy(services.authority)
    await services.authority.load()
    combo.authority = services.authority
    combo.signer = (await services.authority.ca(issuing_ca_name(config.default_org))).signer
    if not rest:
        combo.rest_skipped = "--no-rest"
        return
    try:
        server_token = hsm.server_token(slug) if combo.config.backend == "pkcs11" else None
        rest_url = await pg.create(f"{slug}_rest") if combo.store == "postgres" else ""
        data_dir = base / slug / "served"
        data_dir.mkdir(parents=True)
        env = _env(combo.config, data_dir, rest_url, server_token)
        gateway = stack.enter_context(running_gateway(data_dir, env))
        created = gateway.cli("token", "create", "--org", "default", "--role", "cert_manager")
        combo.gateway = gateway
        combo.token = created.stdout.split()[0]
    except Exception as exc:
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else exc
        combo.rest_skipped = f"{type(exc).__name__}: {detail}".strip()[:300]


# ---------------------------------------------------------------------------- reporting


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _median_rate(runs: Sequence[Rate]) -> tuple[float | None, float | None, float | None]:
    if not runs:
        return None, None, None
    return (
        statistics.median(r.rate for r in runs),
        statistics.median(r.p50_ms for r in runs if r.p50_ms is not None),
        statistics.median(r.p99_ms for r in runs if r.p99_ms is not None),
    )


def _steal(rate: Rate) -> str:
    return "" if rate.steal is None else f"  steal {rate.steal:.0%}"


def describe(label: str, rate: Rate) -> str:
    text = f"{label:<40} {rate.rate:>9,.0f}/s"
    if rate.p50_ms is not None:
        text += f"  p50 {_fmt_ms(rate.p50_ms)} ms  p99 {_fmt_ms(rate.p99_ms)} ms"
    if rate.errors or rate.p50_ms is not None:
        text += f"  errors/non-2xx {rate.errors}"
    text += _steal(rate)
    if rate.note:
        text += f"  ({rate.note})"
    return text


def targets(combo: Combo) -> tuple[str, str]:
    """The targets that apply to a row (direct, REST), printed beside the figures."""
    if combo.config.backend == "pkcs11":
        return f">= {TARGET_HSM_RATIO:.0%} of raw", f">= {TARGET_HSM_RATIO:.0%} of raw"
    if combo.config.name == "software-ec-p256":
        rest = f">= {TARGET_REST[0]:,.0f}/s, p99 < {TARGET_REST[1]:.0f} ms" \
            if combo.store == "sqlite" else "-"
        return f">= {TARGET_DIRECT:,.0f}/s", rest
    return "-", "-"


def print_grid(header: list[str], rows: list[list[str]]) -> None:
    """An aligned text table. A row with fewer cells than the header (a skipped
    measurement) aligns its leading cells and lets its last one run past the rest."""
    full = [r for r in rows if len(r) == len(header)]
    widths = [max(len(r[i]) for r in [header, *full]) for i in range(len(header))]
    for row in rows:
        if len(row) < len(header):
            for i in range(len(row) - 1):
                widths[i] = max(widths[i], len(row[i]))
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        if len(row) == len(header):
            cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        else:
            cells = [*(row[i].ljust(widths[i]) for i in range(len(row) - 1)), row[-1]]
        print(" | ".join(cells).rstrip())


def print_table(combos: list[Combo], raw: dict[str, RawSign], rounds_done: int) -> None:
    header = ["config", "store", "raw sign/s", "direct certs/s (p50/p99 ms)", "direct/raw",
              "direct target", "REST certs/s (p50/p99 ms)", "REST/raw", "REST target",
              "server RSS MB"]
    rows: list[list[str]] = []
    for combo in combos:
        if combo.skipped:
            rows.append([combo.config.name, combo.store, f"skipped: {combo.skipped}"])
            continue
        limit = _median(raw[combo.config.name].limit)
        d_rate, d_p50, d_p99 = _median_rate(combo.direct)
        r_rate, r_p50, r_p99 = _median_rate(combo.rest)
        d_ratio, r_ratio = _median(combo.direct_ratio), _median(combo.rest_ratio)
        t_direct, t_rest = targets(combo)
        rest_cell = (f"{_fmt_rate(r_rate)} ({_fmt_ms(r_p50)}/{_fmt_ms(r_p99)})"
                     if combo.rest else f"skipped: {combo.rest_skipped or 'not run'}")
        rows.append([
            combo.config.name, combo.store, _fmt_rate(limit),
            f"{_fmt_rate(d_rate)} ({_fmt_ms(d_p50)}/{_fmt_ms(d_p99)})",
            "-" if d_ratio is None else f"{d_ratio:.2f}", t_direct,
            rest_cell[:60], "-" if r_ratio is None else f"{r_ratio:.2f}", t_rest,
            "-" if combo.rss_kb is None else f"{combo.rss_kb / 1024:.0f}",
        ])
    print()
    interrupted = " (interrupted: the last round is partial)" if STOP.is_set() else ""
    print(f"Issuance benchmark: median of {rounds_done} round(s); ratios per round, then "
          f"median{interrupted}")
    print_grid(header, rows)


# ---------------------------------------------------------------------------- main


def select(only: Sequence[str]) -> list[tuple[KeyConfig, str]]:
    """Combinations named by ``--only``: configs, stores or ``config/store``; all if none."""
    names = {c.name for c in CONFIGS}
    unknown = [t for t in only if t not in names and t not in STORES
               and t not in {f"{c}/{s}" for c in names for s in STORES}]
    if unknown:
        raise SystemExit(f"unknown --only value(s): {', '.join(unknown)}; use "
                         f"{', '.join(sorted(names))}, {', '.join(STORES)} or CONFIG/STORE")
    configs = {t for t in only if t in names}
    stores = {t for t in only if t in STORES}
    pairs = {t for t in only if "/" in t}
    chosen = []
    for config in CONFIGS:
        for store in STORES:
            by_dims = bool(configs or stores) and (not configs or config.name in configs) \
                and (not stores or store in stores)
            if not only or by_dims or f"{config.name}/{store}" in pairs:
                chosen.append((config, store))
    return chosen


async def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    chosen = select(args.only)
    loadgen = args.load_generator
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "aiohttp"
    if loadgen == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk), or use "
                         "--load-generator aiohttp")
    base = Path(tempfile.mkdtemp(prefix="vcc-pki-bench-"))
    pg = Postgres()
    hsm = HsmTokens(base)
    combos = [Combo(config, store) for config, store in chosen]
    raw: dict[str, RawSign] = {c.config.name: RawSign() for c in combos}
    print(f"vcc-pki issuance benchmark: {len(combos)} combination(s), {args.rounds} rounds, "
          f"{args.seconds:g} s per measurement, concurrency {args.concurrency}, "
          f"REST load generator {loadgen if args.rest else 'none'}", flush=True)
    print(f"CPUs {os.cpu_count()}; work dir {base}", flush=True)
    csrs = make_csrs(CSR_POOL)
    body = rest_body(csrs[0])
    rounds_done = 0
    total0, steal0 = _cpu_times()
    try:
        async with contextlib.AsyncExitStack() as stack:
            pg_reason = await pg.available() if any(c.store == "postgres" for c in combos) else ""
            if any(c.config.backend == "pkcs11" for c in combos):
                hsm.prepare()
            for combo in combos:
                if combo.store == "postgres" and pg_reason:
                    combo.skipped = pg_reason
                elif combo.config.backend == "pkcs11" and hsm.reason:
                    combo.skipped = hsm.reason
                if STOP.is_set():
                    combo.skipped = "interrupted"
                if combo.skipped:
                    print(f"setup {combo.name}: skipped: {combo.skipped}", flush=True)
                    continue
                t0 = time.monotonic()
                try:
                    await setup_combo(combo, stack, base, pg, hsm, args.rest)
                except Exception as exc:
                    combo.skipped = f"setup failed: {type(exc).__name__}: {exc}"[:300]
                    print(f"setup {combo.name}: skipped: {combo.skipped}", flush=True)
                    continue
                extra = f"; REST skipped: {combo.rest_skipped}" if combo.rest_skipped else ""
                print(f"setup {combo.name}: {time.monotonic() - t0:.1f} s{extra}", flush=True)
            live = [c for c in combos if not c.skipped]
            for round_no in range(1, args.rounds + 1):
                if STOP.is_set() or not live:
                    break
                print(f"-- round {round_no}/{args.rounds}", flush=True)
                await run_round(live, raw, csrs, body, args, loadgen, base, warm=round_no == 1)
                rounds_done = round_no
            for combo in live:
                if combo.gateway is not None:
                    combo.rss_kb = _vm_hwm_kb(combo.gateway.process.pid)
    finally:
        await pg.drop_all()
        shutil.rmtree(base, ignore_errors=True)
    total1, steal1 = _cpu_times()
    print_table(combos, raw, rounds_done)
    if total1 > total0:
        print(f"CPU steal over the whole run: {(steal1 - steal0) / (total1 - total0):.0%}")
    print(f"wall time {time.monotonic() - started:.0f} s")


async def run_round(live: list[Combo], raw: dict[str, RawSign], csrs: list[bytes], body: str,
                    args: argparse.Namespace, loadgen: str, base: Path, warm: bool) -> None:
    seconds, concurrency = args.seconds, args.concurrency
    limits: dict[str, float] = {}
    for combo in live:
        name = combo.config.name
        if combo.signer is None or combo.authority is None or STOP.is_set():
            continue
        if name not in limits:
            sync = measure_sign_sync(combo.signer, seconds)
            raw[name].sync.append(sync)
            print(describe(f"{name} raw sign_sync (1 thread)", sync), flush=True)
            limit = sync.rate
            if combo.signer.hsm_backed:
                conc = await measure_sign_concurrent(combo.signer, seconds, concurrency)
                raw[name].concurrent.append(conc)
                print(describe(f"{name} raw sign ({concurrency} tasks)", conc), flush=True)
                limit = max(limit, conc.rate)
            limits[name] = limit
            raw[name].limit.append(limit)
        if warm:
            await measure_direct(combo.authority, csrs, min(1.0, seconds), concurrency)
        direct = await measure_direct(combo.authority, csrs, seconds, concurrency)
        combo.direct.append(direct)
        combo.direct_ratio.append(direct.rate / limits[name])
        print(describe(f"{combo.name} direct", direct)
              + f"  direct/raw {direct.rate / limits[name]:.2f}", flush=True)
        if combo.gateway is None:
            continue
        url = f"{combo.gateway.https_url}/api/v1/certificates"
        try:
            if warm:
                probe_rest(url, combo.token, body)
            rest = await asyncio.to_thread(
                run_rest, loadgen, url, combo.token, body, seconds, concurrency, base, warm)
        except Exception as exc:
            combo.rest_skipped = f"{type(exc).__name__}: {exc}"[:300]
            print(f"{combo.name} REST failed: {combo.rest_skipped}", flush=True)
            combo.gateway = None
            continue
        combo.rest.append(rest)
        combo.rest_ratio.append(rest.rate / limits[name])
        print(describe(f"{combo.name} REST", rest)
              + f"  REST/raw {rest.rate / limits[name]:.2f}", flush=True)


def run_rest(loadgen: str, url: str, token: str, body: str, seconds: float, concurrency: int,
             work_dir: Path, warm: bool) -> Rate:
    def once(duration: float) -> Rate:
        if loadgen == "wrk":
            return run_wrk(url, token, body, duration, concurrency, work_dir)
        return run_aiohttp(url, token, body, duration, concurrency)

    if warm:
        once(min(1.0, seconds))
    return once(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.bench.issuance",
        description="Issuance benchmark (prints figures; never asserts on them).",
    )
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="length of each measurement (default 5)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="concurrent tasks / keep-alive connections (default 16)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds over all combinations, alternating (default 2)")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME",
                        help="configs (" + ", ".join(c.name for c in CONFIGS) + "), stores ("
                        + ", ".join(STORES) + ") or CONFIG/STORE")
    parser.add_argument("--load-generator", choices=("auto", "wrk", "aiohttp"), default="auto",
                        help="REST load generator process (default: wrk when installed)")
    parser.add_argument("--no-rest", dest="rest", action="store_false",
                        help="skip the REST measurements (no servers are started)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--seconds, --concurrency and --rounds must be positive")
    install_stop_handlers()
    asyncio.run(run(args))


def install_stop_handlers() -> None:
    """The first SIGINT/SIGTERM sets STOP (the run ends after the current measurement and
    prints what it has); a second one interrupts. Shared by every benchmark here."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, _frame: object) -> None:
    if STOP.is_set():
        raise KeyboardInterrupt
    STOP.set()
    # os.write: print() may be in the middle of a write to the same stream.
    os.write(2, f"\n{signal.Signals(signum).name}: stopping after the current measurement "
                "(again to interrupt)\n".encode())


if __name__ == "__main__":
    main()
