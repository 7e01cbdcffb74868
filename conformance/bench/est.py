"""EST enrollment benchmark: enrollments/s with p50 and p99 at ``--concurrency`` clients.

Run ``python -m conformance.bench.est [--seconds N] [--concurrency 16] [--workers 1 2]``.
This prints figures; it never asserts on them (it does report duplicate serials, which must
be zero).
See ``conformance/bench/README.md``.

One ``vcc-pki serve`` per ``--workers`` value (``VCC_PKI_WORKERS``; default 1 and the number of
cores, as a Go peer would use them all), SQLite and software keys (the caller's VCC_PKI_*
environment passes on), driven from a separate process with aiohttp after a 1 s warm-up,
in one run:

1. ``basic``: simpleenroll with HTTP Basic, one fresh one-time secret per enrollment,
   keep-alive connections (TLS once per connection);
2. ``cert``: simpleenroll authenticated by a TLS client certificate (a device certificate
   of a manufacturer CA in the EST trust store), keep-alive;
3. ``cert-handshake``: the same with a new connection, so a new TLS handshake with client
   authentication, per enrollment;
4. ``rest``: ``POST /api/v1/certificates`` with a bearer token, keep-alive: the same
   issuance without EST around it. ``EST/REST`` is the protocol's cost.

Every issued certificate's serial is read back from the responses (after the measurement,
so parsing does not load the client during it); duplicates are counted over all modes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import multiprocessing
import os
import ssl
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from ca_core.principal import Principal
from conformance.bench.issuance import percentile
from conformance.bench.ocsp import rss_kb, with_children
from conformance.gateway import running_gateway
from gateway.config import load_config
from gateway.runtime import open_services

CSR_POOL = 50
TARGET_KEEPALIVE = 500.0  # enrollments/s with keep-alive (issue 11)
MODES = ("basic", "cert", "cert-handshake", "rest")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_csrs(count: int) -> list[bytes]:
    """DER CSRs (P-256, CN and a DNS subjectAltName, as vcc_service wants)."""
    csrs = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        cn = f"bench-{i}.example.test"
        csr = (x509.CertificateSigningRequestBuilder().subject_name(_name(cn))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
               .sign(key, hashes.SHA256()))
        csrs.append(csr.public_bytes(serialization.Encoding.DER))
    return csrs


def manufacturer(directory: Path) -> None:
    """mfg-ca.pem (the EST trust store) and a device certificate device.pem/device.key."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Bench Devices CA"))
          .issuer_name(_name("Bench Devices CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    device = (x509.CertificateBuilder().subject_name(_name("bench-device"))
              .issuer_name(ca.subject).public_key(key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now)
              .not_valid_after(now + dt.timedelta(days=1)).sign(ca_key, hashes.SHA256()))
    (directory / "mfg-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "device.pem").write_bytes(device.public_bytes(serialization.Encoding.PEM))
    (directory / "device.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


async def make_secrets(env: dict[str, str], count: int) -> list[str]:
    """``count`` one-time secrets as Basic header values, made through the service (the CLI
    would start a process per secret)."""
    config = load_config(environ=env)
    async with open_services(config) as services:
        await services.authority.load()
        principal = Principal.system("bench")
        values = []
        for _ in range(count):
            created = await services.est.create_secret("default", "", None, None, principal)
            token = base64.b64encode(f"{created.user}:{created.password}".encode()).decode()
            values.append(f"Basic {token}")
        return values


def _load(conn: Connection, mode: str, url: str, auth: list[str], csrs: list[bytes],
          files: dict[str, str], seconds: float, concurrency: int) -> None:
    """Child process: ``concurrency`` workers enrolling in a loop for ``seconds``."""
    import aiohttp

    async def run() -> dict[str, Any]:
        context = ssl.create_default_context(cafile=files["root"])
        if mode.startswith("cert"):
            context.load_cert_chain(files["device_cert"], files["device_key"])
        connector = aiohttp.TCPConnector(limit=concurrency, ssl=context,
                                         force_close=mode == "cert-handshake")
        latencies: list[float] = []
        bodies: list[bytes] = []
        statuses: dict[int, int] = {}
        failures = 0
        secrets = iter(auth)
        count = 0
        connections = 0

        async def connected(*_: Any) -> None:
            nonlocal connections
            connections += 1

        tracing = aiohttp.TraceConfig()
        tracing.on_connection_create_end.append(connected)
        async with aiohttp.ClientSession(connector=connector,
                                         trace_configs=[tracing]) as session:

            async def worker() -> None:
                nonlocal failures, count
                while time.perf_counter() < deadline:
                    csr = csrs[count % len(csrs)]
                    count += 1
                    if mode == "rest":
                        headers = {"Authorization": auth[0],
                                   "Content-Type": "application/json"}
                        pem = x509.load_der_x509_csr(csr).public_bytes(
                            serialization.Encoding.PEM).decode()
                        data = json.dumps({"csr": pem, "profile": "vcc_service",
                                           "validity_days": 30}).encode()
                    else:
                        headers = {"Content-Type": "application/pkcs10"}
                        if mode == "basic":
                            secret = next(secrets, None)
                            if secret is None:
                                return  # out of secrets: the run ends early (noted)
                            headers["Authorization"] = secret
                        data = base64.b64encode(csr)
                    t0 = time.perf_counter()
                    try:
                        async with session.post(url, data=data, headers=headers) as response:
                            body = await response.read()
                            status = response.status
                    except aiohttp.ClientError:
                        failures += 1
                        continue
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200 or status == 201:
                        latencies.append(time.perf_counter() - t0)
                        bodies.append(body)

            started = time.perf_counter()
            deadline = started + seconds
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
        latencies.sort()
        serials = []
        for body in bodies:  # after the clock stopped
            if mode == "rest":
                serials.append(json.loads(body)["serial"].replace(":", "").lower())
            else:
                der = base64.b64decode(body)
                serials.append(format(pkcs7.load_der_pkcs7_certificates(der)[0].serial_number,
                                      "x"))
        return {"ok": len(latencies), "elapsed": elapsed, "failures": failures,
                "statuses": statuses, "p50": percentile(latencies, 50),
                "p99": percentile(latencies, 99), "serials": serials,
                "connections": connections,
                "exhausted": mode == "basic" and next(secrets, None) is None}

    try:
        conn.send(asyncio.run(run()))
    except Exception as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def measure(mode: str, url: str, auth: list[str], csrs: list[bytes], files: dict[str, str],
            seconds: float, concurrency: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_load, args=(child, mode, url, auth, csrs, files, seconds,
                                              concurrency))
    process.start()
    child.close()
    try:
        if not parent.poll(seconds + 300):
            raise RuntimeError("the load generator did not answer")
        result: dict[str, Any] = parent.recv()
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    if "error" in result:
        raise RuntimeError(f"{mode}: {result['error']}")
    return result


def run_setup(workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """One gateway with ``workers`` serving processes: every mode, and its memory."""
    with tempfile.TemporaryDirectory(prefix="vcc-bench-est-") as tmp:
        base = Path(tmp)
        manufacturer(base)
        env = {"VCC_PKI_KEY_PASSPHRASE": "bench-passphrase",
               "VCC_PKI_EST_TRUST_STORE": str(base / "mfg-ca.pem"),
               "VCC_PKI_WORKERS": str(workers)}
        csrs = make_csrs(CSR_POOL)
        with running_gateway(base / "data", env) as gateway:
            files = {"root": str(base / "data" / "ca" / "root.pem"),
                     "device_cert": str(base / "device.pem"),
                     "device_key": str(base / "device.key")}
            count = args.secrets or int(1000 * args.seconds) + 200
            started = time.perf_counter()
            basic_auth = asyncio.run(make_secrets(gateway.env, count))
            print(f"workers={workers}: made {count} one-time secrets in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
            token = gateway.cli("token", "create", "--org", "default", "--role",
                                "cert_manager").stdout.strip()
            est = f"{gateway.est_url}/.well-known/est/simpleenroll"
            urls = {"basic": est, "cert": est, "cert-handshake": est,
                    "rest": f"{gateway.https_url}/api/v1/certificates"}
            auths = {"basic": basic_auth, "rest": [f"Bearer {token}"]}
            results: dict[str, Any] = {}
            rss_before = rss_kb(with_children(gateway.process.pid))[0]
            # A short warm-up (imports, caches, SQLite pages) that is not measured.
            measure("cert", est, [], csrs, files, 1.0, args.concurrency)
            for mode in MODES:
                results[mode] = measure(mode, urls[mode], auths.get(mode, []), csrs, files,
                                        args.seconds, args.concurrency)
            rss_after, peak = rss_kb(with_children(gateway.process.pid))
            return {"modes": results, "memory": (rss_before, rss_after, peak)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+",
                        default=sorted({1, os.cpu_count() or 1}),
                        help="VCC_PKI_WORKERS of the gateway, one run each (default: 1 and "
                        "the number of cores)")
    parser.add_argument("--secrets", type=int, default=0,
                        help="one-time secrets made for the basic mode (default: enough for "
                        "1000 enrollments/s)")
    args = parser.parse_args(argv)
    runs = {workers: run_setup(workers, args) for workers in args.workers}
    for workers, run in runs.items():
        print_table(workers, run, args)
    serials = [s for run in runs.values() for r in run["modes"].values() for s in r["serials"]]
    duplicates = len(serials) - len(set(serials))
    print(f"\n{len(serials)} certificates issued over all runs, {duplicates} duplicate serials "
          "(each run is a fresh PKI: duplicates are counted within a run)")


def print_table(workers: int, run: dict[str, Any], args: argparse.Namespace) -> None:
    results = run["modes"]
    rest_rate = results["rest"]["ok"] / results["rest"]["elapsed"]
    print(f"\nEST enrollments, VCC_PKI_WORKERS={workers} on {os.cpu_count()} cores, "
          f"{args.concurrency} concurrent clients, {args.seconds:g} s each "
          f"(target with keep-alive: >= {TARGET_KEEPALIVE:g}/s)")
    header = f"{'mode':<16} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ok':>7} " \
             f"{'not 2xx':>8} {'conn err':>8} {'conns':>6} {'vs REST':>8}"
    print(header)
    print("-" * len(header))
    serials: list[str] = []
    for mode, result in results.items():
        rate = result["ok"] / result["elapsed"]
        not_ok = sum(c for s, c in result["statuses"].items() if s not in (200, 201))
        note = "  (ran out of secrets)" if result.get("exhausted") else ""
        print(f"{mode:<16} {rate:>8.1f} {result['p50'] * 1000:>8.1f} "
              f"{result['p99'] * 1000:>8.1f} {result['ok']:>7} {not_ok:>8} "
              f"{result['failures']:>8} {result['connections']:>6} "
              f"{rate / rest_rate:>8.2f}{note}")
        serials.extend(result["serials"])
    duplicates = len(serials) - len(set(serials))
    before, after, peak = (f"{v / 1024:.0f}" if v else "?" for v in run["memory"])
    print(f"{len(serials)} certificates issued, {duplicates} duplicate serials; serving "
          f"process(es) RSS {before} MB before load, {after} MB after, peak {peak} MB")


if __name__ == "__main__":
    main()
