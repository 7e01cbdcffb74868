"""Scaling figures for replicas (issue 15): REST issuance and OCSP cache hits with 1, 2 and 3
``vcc-pki serve`` processes on one PostgreSQL database and Redis, and with one process of
``VCC_PKI_WORKERS=2`` (two serving processes behind one port, SO_REUSEPORT).

Run ``python -m conformance.bench.replicas [--seconds 10] [--clients 32]``. Each setup gets
a throwaway database (tests/pg.py) and its own Redis key prefix. REST issuance is driven by
one asyncio process here, its requests round-robin over the replicas. OCSP cache hits are
driven by ``wrk`` (make bench-deps), one wrk process per replica with the clients split
between them, each answer checked (successful, the CertID, good): a Python client tops out
near the rate of one replica and would hide the curve. Without wrk the OCSP row uses the
asyncio client and says so. It prints the curve and never asserts on it.

Read the figures with care: on a machine of 2 cores the load generators and the replicas
share the cores (and other work runs there too), so more processes mostly share the same
CPU; the curve shows what the store and Redis allow, not what more machines would give.
The load average before each setup is printed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from asn1crypto import ocsp as a_ocsp

from conformance.bench.issuance import Rate
from conformance.bench.ocsp import GOOD, Load, run_wrk
from conformance.replicas.cluster import (
    Cluster,
    chain_certificates,
    issue,
    make_csr,
    ocsp_request_der,
    running_cluster,
)
from tests.pg import create_throwaway_database, drop_database
from tests.redisutil import REDIS_URL, delete_prefix, unique_prefix

SETUPS = [("1 process", 1, {}), ("2 processes", 2, {}), ("3 processes", 3, {}),
          ("1 process, VCC_PKI_WORKERS=2", 1, {"VCC_PKI_WORKERS": "2"})]


async def _load(cluster: Cluster, seconds: float, clients: int, kind: str
                ) -> tuple[int, int, list[float]]:
    """(answers, failures, latencies) of ``clients`` loops for ``seconds``."""
    token = cluster.token()
    turn = itertools.cycle(cluster.replicas)
    latencies: list[float] = []
    failures = 0
    async with cluster.session(limit=0) as session:
        status, body, _ = await issue(session, cluster.replicas[0].https_url, token,
                                      make_csr("bench.example.test"))
        assert status == 201, body
        ocsp_request = ocsp_request_der(*chain_certificates(body))
        csr = make_csr("load.bench.test")
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal failures
            while time.monotonic() < deadline:
                replica = next(turn)
                started = time.perf_counter()
                try:
                    if kind == "issue":
                        status, _, _ = await issue(session, replica.https_url, token, csr)
                        ok = status == 201
                    else:
                        async with session.post(
                                f"{replica.http_url}/ocsp", data=ocsp_request,
                                headers={"Content-Type": "application/ocsp-request"}) as r:
                            await r.read()
                            ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies), failures, latencies


async def _ocsp_wrk(cluster: Cluster, seconds: float, clients: int, work_dir: Path) -> Rate:
    """OCSP cache hits (POST /ocsp) from one wrk per replica, ``clients`` connections in
    all; rates add up, latencies are the worst replica's."""
    token = cluster.token()
    async with cluster.session() as session:
        status, body, _ = await issue(session, cluster.replicas[0].https_url, token,
                                      make_csr("bench.example.test"))
    assert status == 201, body
    request = ocsp_request_der(*chain_certificates(body))
    cert_id = a_ocsp.OCSPRequest.load(request)["tbs_request"]["request_list"][0]["req_cert"]
    load = Load("POST", "/ocsp", request, expect=cert_id.dump() + GOOD)
    share = max(1, clients // len(cluster.replicas))
    rates = await asyncio.gather(*(
        asyncio.to_thread(run_wrk, replica.http_url, load, seconds, share, work_dir)
        for replica in cluster.replicas))
    count = sum(r.count for r in rates)
    return Rate(sum(r.rate for r in rates), count, max(r.seconds for r in rates),
                p50_ms=max(r.p50_ms or 0.0 for r in rates),
                p99_ms=max(r.p99_ms or 0.0 for r in rates),
                errors=sum(r.errors for r in rates),
                note="; ".join(r.note for r in rates if r.note))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    rows = []
    use_wrk = shutil.which("wrk") is not None
    print(f"OCSP load: {'wrk, one per replica' if use_wrk else 'asyncio (wrk not installed)'}"
          f"; {args.clients} clients, {args.seconds:g} s per row", flush=True)
    for name, count, env in SETUPS:
        dsn = await create_throwaway_database()
        prefix = unique_prefix()
        try:
            with tempfile.TemporaryDirectory() as tmp, running_cluster(
                    Path(tmp) / "data", dsn, count=count,
                    extra_env={"VCC_PKI_REDIS_URL": REDIS_URL,
                               "VCC_PKI_REDIS_KEY_PREFIX": prefix, **env}) as cluster:
                for kind in ("issue", "ocsp"):
                    load1 = os.getloadavg()[0]
                    if kind == "ocsp" and use_wrk:
                        rate = await _ocsp_wrk(cluster, args.seconds, args.clients,
                                               Path(tmp))
                        per_second, failed = rate.rate, rate.errors
                        p50, p99 = rate.p50_ms or 0.0, rate.p99_ms or 0.0
                    else:
                        done, failed, latencies = await _load(cluster, args.seconds,
                                                              args.clients, kind)
                        per_second = done / args.seconds
                        p50 = statistics.median(latencies) * 1000 if latencies else 0.0
                        p99 = (statistics.quantiles(latencies, n=100)[98] * 1000
                               if len(latencies) >= 100 else 0.0)
                    rows.append((name, kind, per_second, failed, p50, p99))
                    print(f"{name:32} {kind:6} {per_second:8.1f}/s  "
                          f"failed {failed:5}  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                          f"(load average before {load1:.2f})", flush=True)
        finally:
            await drop_database(dsn)
            await delete_prefix(prefix)
    print("\nper kind, relative to 1 process (noisy shared 2-core machine: read loosely):")
    for kind in ("issue", "ocsp"):
        base = next(r[2] for r in rows if r[1] == kind)
        print(f"  {kind:6} " + "  ".join(f"{r[0]}: {r[2] / base:.2f}x"
                                          for r in rows if r[1] == kind and base))


if __name__ == "__main__":
    asyncio.run(main())
