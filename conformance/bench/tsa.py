"""Time-stamping benchmark: RFC 3161 stamps/s of ``vcc-pki serve``, the raw sign rate of
its TSA key, and ``openssl ts -reply`` invoked per request as the do-it-yourself peer.

Run ``python -m conformance.bench.tsa [--seconds 5] [--rounds 2] [--clients 16 64]
[--workers 1] [--only software-ec-p256 softhsm2-ec-p256]``. It prints figures and never
asserts on them (see ``conformance/bench/README.md``).

For every configuration (TSA key: software ECDSA P-256, SoftHSM2 ECDSA P-256 and RSA-2048;
SQLite store; ``--workers`` serving processes) it starts ``vcc-pki init`` + ``vcc-pki
serve`` the normal way (``conformance.gateway.running_gateway``) and measures, in rounds
that visit every configuration in turn (A B A B, because the machine is noisy):

1. the raw sign rate of the TSA's Signer, opened in this process on the served data
   directory (``sign_sync`` on one thread; for a token key also ``await sign()`` from 16
   tasks; the higher is the limit a TSA cannot exceed),
2. stamps/s and p50/p99 latency of ``POST /tsa`` with the query ``openssl ts -query -sha256
   -cert`` made, from ``--clients`` keep-alive connections of ``wrk`` (a separate process;
   a reply counts only when it is a TimeStampResp with PKIStatus granted),
3. the do-it-yourself peer: ``openssl ts -reply -queryfile q.tsq`` run once per request by
   as many concurrent workers, with the same TSA certificate and key (an unencrypted copy,
   software keys only). Its rate is measured with a serial file per worker, so that it is
   openssl's own cost; openssl's serial file is the "unlocked counter file" the issue warns
   about, so a shorter run with one shared file counts the replies it does not grant (it
   reads a half-written file) and the serials it hands out twice.

The table gives medians over rounds; ratios are taken within a round, then their median.
Only granted replies count as stamps, from the gateway and from openssl alike.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from ca_core.signers.base import Signer
from ca_core.tsa import TimeStampAuthority
from conformance.bench.issuance import (
    STOP,
    Rate,
    _cpu_times,
    describe,
    install_stop_handlers,
    lua_bytes,
    measure_sign_concurrent,
    measure_sign_sync,
    percentile,
    print_grid,
    run_wrk_script,
    steal_meter,
)
from conformance.gateway import Gateway, running_gateway
from gateway.config import load_config
from gateway.runtime import open_services
from protocols.tsa.codec import TimeStampResp

PASSPHRASE = "bench-passphrase"
HSM_LABEL, HSM_PIN = "vcc-tsa-bench", "1234"
TARGET_SOFTWARE = 1000.0  # stamps/s, software ECDSA P-256, one process
# Issue 18: with VCC_PKI_WORKERS = cores, stamps/s and p99 ms (software ECDSA P-256).
TARGET_ALL_CORES = (4000.0, 10.0)
TARGET_HSM_RATIO = 0.5  # stamps / raw sign rate, SoftHSM2
RAW_TASKS = 16


@dataclass(frozen=True)
class KeyConfig:
    name: str
    backend: str  # software | pkcs11
    key: str = "ec-p256"


CONFIGS = (
    KeyConfig("software-ec-p256", "software"),
    KeyConfig("softhsm2-ec-p256", "pkcs11"),
    # A key whose signature costs more than the rest of a stamp: where the TSA is bound by
    # its key, as with a network HSM, and the ratio to the raw rate says how close it gets.
    KeyConfig("softhsm2-rsa-2048", "pkcs11", "rsa-2048"),
)


@dataclass
class Setup:
    config: KeyConfig
    workers: int
    skipped: str = ""
    gateway: Gateway | None = None
    signer: Signer | None = None
    query: Path | None = None
    diy: DiyPeer | None = None
    diy_skipped: str = ""
    raw: list[float] = field(default_factory=list)  # the limit, per round
    stamps: dict[int, list[Rate]] = field(default_factory=dict)
    ratios: dict[int, list[float]] = field(default_factory=dict)
    diy_rates: dict[int, list[Rate]] = field(default_factory=dict)  # own serial files
    diy_ratios: dict[int, list[float]] = field(default_factory=dict)  # stamps / DIY per round
    diy_shared: dict[int, list[DiyRun]] = field(default_factory=dict)  # one serial file

    @property
    def name(self) -> str:
        return f"{self.config.name} w{self.workers}"


# ---------------------------------------------------------------------------- wrk

_WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/timestamp-query"
wrk.body = "{body}"

local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  bad = 0
end
-- A TimeStampResp granting a token starts SEQUENCE {{ SEQUENCE {{ INTEGER 0 }} ...
function response(status, headers, body)
  if status ~= 200 or not string.find(string.sub(body, 1, 12), "\\48\\3\\2\\1\\0", 1, true) then
    bad = bad + 1
  end
end
"""


def run_wrk(url: str, query: bytes, seconds: float, clients: int, work_dir: Path) -> Rate:
    rate, _ = run_wrk_script(_WRK_SCRIPT.format(body=lua_bytes(query)), url, seconds, clients,
                             work_dir)
    return rate


def probe(url: str, query: bytes) -> None:
    """One stamp before measuring: a broken setup fails here, with the server's answer."""
    request = urllib.request.Request(
        url, data=query, method="POST",
        headers={"Content-Type": "application/timestamp-query"})
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = TimeStampResp.load(response.read())
    status = reply["status"]
    if status["status"].native != "granted":
        raise RuntimeError(f"probe not granted: {status.native}")


# ---------------------------------------------------------------------------- DIY peer

_OPENSSL_TSA_CONFIG = """\
[ tsa ]
default_tsa = bench_tsa

[ bench_tsa ]
serial = {serial}
crypto_device = builtin
signer_cert = {dir}/tsa.pem
certs = {dir}/chain.pem
signer_key = {dir}/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.55555.1.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = no
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""
SHARED_SECONDS = 2.0  # the shared-serial-file run: long enough to show the race


@dataclass
class DiyPeer:
    """``openssl ts -reply`` with the gateway's TSA certificate and (a copy of) its key.

    openssl keeps the last serial in a file that it reads and rewrites without a lock, so
    concurrent ``openssl ts -reply`` processes sharing one file hand out a serial twice or
    read a half-written file and reply "rejection" (exit status 0). The throughput figure
    therefore gives every client its own serial file (disjoint ranges): what openssl itself
    costs per request; a separate, shorter run with one shared file counts what goes wrong.
    """

    directory: Path
    query: Path

    @classmethod
    def create(cls, directory: Path, tsa: TimeStampAuthority, query: Path) -> DiyPeer:
        directory.mkdir(parents=True, exist_ok=True)
        loaded = tsa.loaded
        key = loaded.signer.builder_key()
        # Unencrypted, as a do-it-yourself TSA would keep it: no passphrase work per call.
        (directory / "tsa.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (directory / "tsa.pem").write_bytes(
            loaded.certificate.public_bytes(serialization.Encoding.PEM))
        (directory / "chain.pem").write_bytes(b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in loaded.chain[1:]))
        peer = cls(directory, query)
        serial, status = _reply_serial(peer.stamp(directory / "probe.tsr", peer.config(None)))
        if serial is None:
            raise RuntimeError(f"openssl ts -reply did not grant the probe ({status})")
        return peer

    def config(self, client: int | None) -> Path:
        """The openssl config with the shared serial file (None) or the client's own."""
        name = "tsa.cnf" if client is None else f"tsa-{client}.cnf"
        path = self.directory / name
        if not path.exists():
            serial = self.directory / ("tsaserial" if client is None else f"tsaserial-{client}")
            # openssl reads the file as hex with an even number of digits (it rejects
            # "10000000000000000"); each client counts from its own 2**64 block.
            first = 1 if client is None else (client + 1) << 64
            digits = f"{first:X}"
            serial.write_text(digits.zfill(len(digits) + len(digits) % 2) + "\n")
            path.write_text(_OPENSSL_TSA_CONFIG.format(dir=self.directory, serial=serial))
        return path

    def stamp(self, out: Path, config: Path) -> bytes:
        subprocess.run(
            ["openssl", "ts", "-reply", "-config", str(config),
             "-queryfile", str(self.query), "-out", str(out)],
            check=True, capture_output=True, timeout=60,
        )
        return out.read_bytes()


def _reply_serial(reply: bytes) -> tuple[int | None, str]:
    """The token's serial and the PKIStatus of a TimeStampResp (serial None unless granted)."""
    response = TimeStampResp.load(reply)
    status = response["status"]
    if status["status"].native != "granted":
        text = status["status_string"].native or []
        return None, f"{status['status'].native}: {' '.join(text)}".strip()
    tst = response["time_stamp_token"]["content"]["encap_content_info"]["content"].parsed
    serial: int = tst["serial_number"].native
    return serial, "granted"


@dataclass
class DiyRun:
    rate: Rate  # granted replies only
    not_granted: int  # replies with another PKIStatus (openssl still exits 0)
    duplicates: int  # granted serials handed out more than once

    @property
    def replies(self) -> int:
        return self.rate.count + self.not_granted


def run_diy(peer: DiyPeer, seconds: float, clients: int, shared: bool) -> DiyRun:
    """``clients`` threads, each running ``openssl ts -reply`` per request until the time is
    up, with one serial file for all (``shared``) or one per client."""
    latencies: list[float] = []
    serials: list[int] = []
    errors: list[BaseException] = []
    rejected: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        out = peer.directory / f"reply-{n}.tsr"
        config = peer.config(None if shared else n)
        while time.perf_counter() < deadline and not STOP.is_set():
            t0 = time.perf_counter()
            try:
                serial, status = _reply_serial(peer.stamp(out, config))
            except Exception as exc:  # counted and shown; the benchmark goes on
                with lock:
                    errors.append(exc)
                continue
            with lock:
                if serial is None:
                    rejected.append(status)
                else:
                    latencies.append(time.perf_counter() - t0)
                    serials.append(serial)

    with steal_meter() as steal:
        started = time.perf_counter()
        deadline = started + seconds
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(worker, range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    notes = []
    if rejected:
        notes.append(f"{len(rejected)} not granted, first: {rejected[0]}")
    if errors:
        notes.append(f"{len(errors)} errors, first: {errors[0]}")
    rate = Rate(len(latencies) / elapsed, len(latencies), elapsed,
                p50_ms=percentile(latencies, 50) * 1000,
                p99_ms=percentile(latencies, 99) * 1000, errors=len(errors) + len(rejected),
                steal=steal[0], note="; ".join(notes)[:200])
    return DiyRun(rate, len(rejected), len(serials) - len(set(serials)))


# ---------------------------------------------------------------------------- setup


def _env(config: KeyConfig, data_dir: Path, workers: int, token: Any) -> dict[str, str]:
    env = {
        "VCC_PKI_DATA_DIR": str(data_dir),
        "VCC_PKI_KEY_PASSPHRASE": PASSPHRASE,
        "VCC_PKI_KEY_BACKEND": config.backend,
        "VCC_PKI_ROOT_KEY_TYPE": "ec-p256",
        "VCC_PKI_INTERMEDIATE_KEY_TYPE": "ec-p256",
        "VCC_PKI_TSA_KEY_TYPE": config.key,
        "VCC_PKI_WORKERS": str(workers),
        "VCC_PKI_LOG_LEVEL": "WARNING",
    }
    if token is not None:
        env.update({
            "VCC_PKI_PKCS11_MODULE": token.module_path,
            "VCC_PKI_PKCS11_TOKEN_LABEL": token.label,
            "VCC_PKI_PKCS11_PIN": token.pin,
            "SOFTHSM2_CONF": str(token.conf_path),
        })
    return env


def _stderr(exc: subprocess.CalledProcessError) -> str:
    err = exc.stderr
    return err.decode(errors="replace") if isinstance(err, bytes) else str(err)


def _softhsm_token(base: Path) -> Any:
    """A token for the server and this process (SoftHSM2 sessions of both processes see
    the same key files). Raises RuntimeError with the reason when SoftHSM2 is missing."""
    from tests.softhsm import make_softhsm_token, softhsm_available

    if not softhsm_available():
        raise RuntimeError("SoftHSM2 is not installed (softhsm2-util, libsofthsm2.so)")
    # make_softhsm_token also points this process's SOFTHSM2_CONF at it, before python-pkcs11
    # loads the module (it reads the variable once).
    return make_softhsm_token(base / "hsm", HSM_LABEL, HSM_PIN)


async def setup(target: Setup, stack: contextlib.AsyncExitStack, base: Path,
                hsm_token: Any) -> None:
    """The served gateway, the in-process TSA signer (raw rate) and the DIY peer."""
    slug = f"{target.config.name}-w{target.workers}"
    directory = base / slug
    data_dir = directory / "data"
    data_dir.mkdir(parents=True)
    token = hsm_token if target.config.backend == "pkcs11" else None
    env = _env(target.config, data_dir, target.workers, token)
    gateway = stack.enter_context(running_gateway(data_dir, env))
    document = directory / "document.bin"
    document.write_bytes(os.urandom(4096))
    query = directory / "q.tsq"
    subprocess.run(["openssl", "ts", "-query", "-data", str(document), "-sha256", "-cert",
                    "-out", str(query)], check=True, capture_output=True)
    probe(f"{gateway.http_url}/tsa", query.read_bytes())
    target.gateway, target.query = gateway, query
    services = await stack.enter_async_context(open_services(load_config(environ=env)))
    await services.authority.load()
    tsa = TimeStampAuthority(services.authority, services.config.tsa_settings())
    await tsa.open()
    target.signer = tsa.loaded.signer
    if target.config.backend != "software":
        target.diy_skipped = "n/a (token key)"
    elif shutil.which("openssl") is None:
        target.diy_skipped = "openssl not installed"
    else:
        try:
            target.diy = DiyPeer.create(directory / "diy", tsa, query)
        except Exception as exc:  # the gateway's figures do not need the peer
            detail = _stderr(exc) if isinstance(exc, subprocess.CalledProcessError) \
                else str(exc)
            target.diy_skipped = f"failed: {type(exc).__name__}: {detail}"[:120]


# ---------------------------------------------------------------------------- rounds


async def run_round(live: list[Setup], args: argparse.Namespace, base: Path, warm: bool
                    ) -> None:
    for target in live:
        if STOP.is_set():
            return
        if target.signer is None or target.gateway is None:
            continue  # set up without a signer, or its gateway failed in an earlier round
        signer = target.signer
        sync = measure_sign_sync(signer, args.seconds)
        print(describe(f"{target.name} raw sign_sync (1 thread)", sync), flush=True)
        limit = sync.rate
        if signer.hsm_backed:
            concurrent_rate = await measure_sign_concurrent(signer, args.seconds, RAW_TASKS)
            print(describe(f"{target.name} raw sign ({RAW_TASKS} tasks)", concurrent_rate),
                  flush=True)
            limit = max(limit, concurrent_rate.rate)
        target.raw.append(limit)
        url = f"{target.gateway.http_url}/tsa"
        assert target.query is not None
        query = target.query.read_bytes()
        this_round: dict[int, float] = {}
        for clients in args.clients:
            if STOP.is_set():
                return
            try:
                if warm:
                    await asyncio.to_thread(run_wrk, url, query, 1.0, clients, base)
                rate = await asyncio.to_thread(run_wrk, url, query, args.seconds, clients, base)
            except Exception as exc:  # shown, and this gateway is left out from now on
                print(f"{target.name} POST /tsa ({clients} clients) failed: "
                      f"{type(exc).__name__}: {exc}"[:300], flush=True)
                target.gateway = None
                break
            this_round[clients] = rate.rate
            target.stamps.setdefault(clients, []).append(rate)
            target.ratios.setdefault(clients, []).append(rate.rate / limit)
            print(describe(f"{target.name} POST /tsa ({clients} clients)", rate)
                  + f"  stamps/raw {rate.rate / limit:.2f}", flush=True)
        if target.diy is None:
            continue
        for clients in args.clients:
            if STOP.is_set():
                return
            diy = await asyncio.to_thread(run_diy, target.diy, args.seconds, clients, False)
            target.diy_rates.setdefault(clients, []).append(diy.rate)
            if diy.rate.rate > 0 and clients in this_round:
                target.diy_ratios.setdefault(clients, []).append(
                    this_round[clients] / diy.rate.rate)
            print(describe(f"{target.name} DIY openssl ts -reply ({clients})", diy.rate),
                  flush=True)
            if STOP.is_set():
                return
            shared = await asyncio.to_thread(
                run_diy, target.diy, min(SHARED_SECONDS, args.seconds), clients, True)
            target.diy_shared.setdefault(clients, []).append(shared)
            print(f"{target.name} DIY, one serial file ({clients}): {shared.replies} replies, "
                  f"{shared.not_granted} not granted, {shared.duplicates} duplicate serials",
                  flush=True)


# ---------------------------------------------------------------------------- table


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _cell(runs: Sequence[Rate]) -> str:
    if not runs:
        return "-"
    rate = statistics.median(r.rate for r in runs)
    p50 = statistics.median(r.p50_ms for r in runs if r.p50_ms is not None)
    p99 = statistics.median(r.p99_ms for r in runs if r.p99_ms is not None)
    errors = sum(r.errors for r in runs)
    return f"{rate:,.0f} ({p50:.1f}/{p99:.1f})" + (f" {errors} bad" if errors else "")


def _target(target: Setup) -> str:
    if target.config.backend == "pkcs11":
        return f">= {TARGET_HSM_RATIO:.0%} of raw"
    if target.workers >= (os.cpu_count() or 1):
        return f">= {TARGET_ALL_CORES[0]:,.0f}/s, p99 < {TARGET_ALL_CORES[1]:.0f} ms"
    return f">= {TARGET_SOFTWARE:,.0f}/s"


def _shared_cell(runs: Sequence[DiyRun]) -> str:
    """Over all rounds: the share of replies not granted, and duplicate serials."""
    replies = sum(r.replies for r in runs)
    if not replies:
        return "-"
    not_granted = sum(r.not_granted for r in runs)
    return f"{not_granted / replies:.0%} / {sum(r.duplicates for r in runs)}"


def print_table(setups: list[Setup], clients: Sequence[int], rounds_done: int) -> None:
    header = ["config", "clients", "stamps/s (p50/p99 ms)", "raw sign/s", "stamps/raw",
              "DIY openssl/s (p50/p99 ms)", "stamps/DIY", "DIY 1 serial file: rejected/dup",
              "target"]
    rows: list[list[str]] = []
    for target in setups:
        if target.skipped:
            rows.append([target.name, "-", f"skipped: {target.skipped}"])
            continue
        raw = _median(target.raw)
        for n in clients:
            stamps = target.stamps.get(n, [])
            diy = target.diy_rates.get(n, [])
            ratio = _median(target.ratios.get(n, []))
            versus = _median(target.diy_ratios.get(n, []))
            rows.append([
                target.name, str(n), _cell(stamps),
                "-" if raw is None else f"{raw:,.0f}",
                "-" if ratio is None else f"{ratio:.2f}",
                _cell(diy) if diy else (target.diy_skipped or "-"),
                "-" if versus is None else f"{versus:.1f}x",
                _shared_cell(target.diy_shared.get(n, [])) if diy else "-",
                _target(target),
            ])
    print()
    partial = " (interrupted: the last round is partial)" if STOP.is_set() else ""
    print(f"Time-stamping benchmark: median of {rounds_done} round(s); ratios per round, "
          f"then median{partial}")
    print_grid(header, rows)


# ---------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    names = {c.name for c in CONFIGS}
    unknown = [n for n in args.only if n not in names]
    if unknown:
        raise SystemExit(f"unknown --only value(s) {unknown}; use {sorted(names)}")
    configs = [c for c in CONFIGS if not args.only or c.name in args.only]
    # A B A B: every configuration once per round.
    setups = [Setup(c, w) for w in args.workers for c in configs]
    base = Path(tempfile.mkdtemp(prefix="vcc-pki-tsa-bench-"))
    print(f"vcc-pki time-stamping benchmark: {len(setups)} configuration(s), {args.rounds} "
          f"rounds, {args.seconds:g} s per measurement, clients {args.clients}; "
          f"CPUs {os.cpu_count()}; work dir {base}", flush=True)
    rounds_done = 0
    total0, steal0 = _cpu_times()
    try:
        async with contextlib.AsyncExitStack() as stack:
            hsm_token: Any = None
            hsm_reason = ""
            if any(s.config.backend == "pkcs11" for s in setups):
                try:
                    hsm_token = _softhsm_token(base)
                except (RuntimeError, ImportError) as exc:
                    hsm_reason = str(exc)
            for target in setups:
                if target.config.backend == "pkcs11" and hsm_reason:
                    target.skipped = hsm_reason
                if STOP.is_set():
                    target.skipped = "interrupted"
                if target.skipped:
                    print(f"setup {target.name}: skipped: {target.skipped}", flush=True)
                    continue
                t0 = time.monotonic()
                try:
                    await setup(target, stack, base, hsm_token)
                except Exception as exc:
                    detail = _stderr(exc) if isinstance(exc, subprocess.CalledProcessError) \
                        else exc
                    target.skipped = f"setup failed: {type(exc).__name__}: {detail}"[:300]
                    print(f"setup {target.name}: {target.skipped}", flush=True)
                    continue
                extra = f"; DIY: {target.diy_skipped}" if target.diy_skipped else ""
                print(f"setup {target.name}: {time.monotonic() - t0:.1f} s{extra}", flush=True)
            live = [s for s in setups if not s.skipped]
            for round_no in range(1, args.rounds + 1):
                if STOP.is_set() or not live:
                    break
                print(f"-- round {round_no}/{args.rounds}", flush=True)
                await run_round(live, args, base, warm=round_no == 1)
                rounds_done = round_no
    finally:
        shutil.rmtree(base, ignore_errors=True)
    total1, steal1 = _cpu_times()
    print_table(setups, args.clients, rounds_done)
    if total1 > total0:
        print(f"CPU steal over the whole run: {(steal1 - steal0) / (total1 - total0):.0%}")
    print(f"wall time {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.bench.tsa",
        description="Time-stamping benchmark (prints figures; never asserts on them).",
    )
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="length of each measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds over all configurations, alternating (default 2)")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64],
                        help="concurrent clients (default 16 64)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="VCC_PKI_WORKERS of the served gateway; several values are "
                             "alternated like configurations (default 1)")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME",
                        help="configurations: " + ", ".join(c.name for c in CONFIGS))
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or min(args.clients) < 1 or min(args.workers) < 1:
        parser.error("--seconds, --rounds, --clients and --workers must be positive")
    install_stop_handlers()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
