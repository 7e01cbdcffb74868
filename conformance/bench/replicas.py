"""Scaling figures for replicas (issue 15): REST issuance, OCSP cache hits and ACME orders
with 1, 2 and 3 ``vcc-pki serve`` processes on one PostgreSQL database and Redis, and with
one process of ``VCC_PKI_WORKERS=2`` (two serving processes behind one port, SO_REUSEPORT).

Run ``python -m conformance.bench.replicas [--seconds 10] [--clients 32] [--kinds issue ocsp
acme] [--acme-clients 16]``. Each setup gets a throwaway database (tests/pg.py) and its own
Redis key prefix. Every replica runs with ``VCC_PKI_HTTP_KEEPALIVE_REQUESTS=100``, as in the
ha-postgres overlay.

ACME orders are conformance/bench/acme.py's: its load processes (whole RFC 8555 flows, the
reuse-account variant by default: orders only), its test DNS server and http-01 responder
(one child process for the whole run), a warm-up before the measured window. The clients
reach the replicas through the round-robin TCP proxy of the replica tests
(conformance/replicas/proxy.py, in a process of its own), whose address is every replica's
``VCC_PKI_PUBLIC_HTTPS_URL``: each new connection goes to the next replica, and with the
keep-alive limit a client's connection is replaced every 100 requests, so the clients'
requests spread over the replicas. The row gives orders/s, the flow's p50/p99 and the
server CPU per order (utime + stime of every replica and its workers over the window /
orders), the figure that moves least with what else runs on the machine, and the
connections each replica took. The 1-process rows go through the proxy too.

REST issuance is driven by
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
import contextlib
import itertools
import os
import shutil
import statistics
import tempfile
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import aiohttp
from asn1crypto import ocsp as a_ocsp

from conformance.bench import acme
from conformance.bench.issuance import Rate
from conformance.bench.ocsp import GOOD, Load, run_wrk
from conformance.gateway import Gateway, free_port
from conformance.replicas.cluster import (
    Cluster,
    chain_certificates,
    issue,
    make_csr,
    ocsp_request_der,
    running_cluster,
)
from conformance.replicas.proxy import running_proxy
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


# ---- ACME orders: conformance/bench/acme.py's flows, behind a round-robin TCP proxy ------


async def _acme_orders(cluster: Cluster, label: str, proxy_port: int, args: argparse.Namespace,
                       tokens: Path, responder_pid: int
                       ) -> tuple[acme.Run | None, Counter[int], str, float | None]:
    """ACME orders (acme.py's flows and load processes) through the proxy, every replica
    behind it; the server CPU is that of all replicas (with their workers). Also acme.py's
    line for the run (phases, cores of server, clients, responder and the machine) and the
    cores the replicas used idle (their background jobs) over ``IDLE_SECONDS`` before."""
    backends = []
    for replica in cluster.replicas:
        port = urllib.parse.urlsplit(replica.https_url).port
        assert port is not None and replica.process is not None
        backends.append(("127.0.0.1", port))
    first = cluster.replicas[0]
    assert first.process is not None
    target = acme.Target("postgres", label,
                         directory=f"https://127.0.0.1:{proxy_port}/acme/{{org}}/directory",
                         ca_file=cluster.data_dir / "ca" / "root.pem",
                         pids=[r.process.pid for r in cluster.replicas if r.process])
    # New accounts beyond one organization's hourly limit go to organizations made
    # through the store (acme.OrgPool); its Gateway is only read for its environment.
    target.orgs = acme.OrgPool(Gateway(cluster.env, cluster.data_dir, first.http_url,
                                       first.https_url, "", first.process))
    idle0, t0 = acme._server_cpu(target), time.monotonic()
    await asyncio.sleep(IDLE_SECONDS)  # a measured idle window, not a wait for a state
    idle1, t1 = acme._server_cpu(target), time.monotonic()
    idle = None if idle0 is None or idle1 is None else (idle1 - idle0) / (t1 - t0)
    with running_proxy(proxy_port, backends) as spread:
        run = await acme.measure_target(target, args.acme_variant, args.acme_clients, args,
                                        tokens, responder_pid, round_no=1)
    detail = "" if run is None else acme.describe(target, args.acme_variant,
                                                   args.acme_clients, run)
    return run, spread, detail, idle


IDLE_SECONDS = 3.0


def _ms_per_order(run: acme.Run) -> float | None:
    if run.server_cpu is None or not run.count:
        return None
    return run.server_cpu * run.seconds / run.count * 1000


KINDS = ("issue", "ocsp", "acme")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--acme-clients", type=int, default=16,
                        help="concurrent ACME clients (acme.py --clients)")
    parser.add_argument("--acme-variant", choices=acme.VARIANTS, default="reuse-account",
                        help="reuse-account: orders only, accounts made before the window")
    parser.add_argument("--acme-warmup", dest="warmup", type=float, default=2.0,
                        help="seconds of ACME load before each measured window")
    parser.add_argument("--load-procs", type=int, default=2,
                        help="ACME load processes (acme.py --load-procs)")
    parser.add_argument("--poll-ms", type=float, default=20.0)
    parser.add_argument("--flow-timeout", type=float, default=30.0)
    parser.add_argument("--expect-rate", type=float, default=150.0,
                        help="orders/s new-account organizations are made for")
    args = parser.parse_args()
    rows = []
    use_wrk = shutil.which("wrk") is not None
    print(f"OCSP load: {'wrk, one per replica' if use_wrk else 'asyncio (wrk not installed)'}"
          f"; {args.clients} clients, {args.seconds:g} s per row; ACME: {args.acme_variant}, "
          f"{args.acme_clients} clients over {args.load_procs} load processes through a "
          f"round-robin TCP proxy, VCC_PKI_HTTP_KEEPALIVE_REQUESTS=100", flush=True)
    tokens = acme._tmpfs_dir("vcc-pki-bench-replicas-tokens-")
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as records:
        stack.callback(shutil.rmtree, tokens, True)
        http01_port, dns_port, responder_pid = stack.enter_context(
            acme.running_responder(tokens, Path(records)))
        for name, count, env in SETUPS:
            dsn = await create_throwaway_database()
            prefix = unique_prefix()
            proxy_port = free_port()
            acme_env = {k: v for k, v in acme.gateway_env(Path(records), dsn, http01_port,
                                                           dns_port).items()
                        if k.startswith("VCC_PKI_ACME_")}
            try:
                with tempfile.TemporaryDirectory() as tmp, running_cluster(
                        Path(tmp) / "data", dsn, count=count,
                        extra_env={"VCC_PKI_REDIS_URL": REDIS_URL,
                                   "VCC_PKI_REDIS_KEY_PREFIX": prefix, **acme_env,
                                   # ACME URLs name the proxy (the balancer); every 100th
                                   # answer closes its connection (the ha-postgres overlay).
                                   "VCC_PKI_PUBLIC_HTTPS_URL": f"https://127.0.0.1:{proxy_port}",
                                   "VCC_PKI_HTTP_KEEPALIVE_REQUESTS": "100",
                                   **env}) as cluster:
                    for kind in args.kinds:
                        load1 = os.getloadavg()[0]
                        extra = ""
                        if kind == "acme":
                            run, spread, detail, idle = await _acme_orders(
                                cluster, name, proxy_port, args, tokens, responder_pid)
                            if run is None:
                                print(f"{name:32} acme   failed", flush=True)
                                continue
                            per_second, failed = run.rate, sum(run.errors.values())
                            p50, p99 = run.p50_ms, run.p99_ms
                            cpu = _ms_per_order(run)
                            extra = (f"  server CPU {cpu or 0.0:.1f} ms/order, "
                                     f"{run.requests_per_flow:.1f} req/order, badNonce "
                                     f"retries {run.bad_nonce_retries}, connections per "
                                     f"replica {'/'.join(str(spread[i]) for i in range(count))}")
                            if idle is not None and run.rate:
                                extra += (f"\n    idle replicas {idle:.3f} cores before the "
                                          f"load, {idle / run.rate * 1000:.1f} ms/order of it")
                            extra += f"\n    {detail}"
                            for sample in run.samples:
                                extra += f"\n    error sample: {sample}"
                        elif kind == "ocsp" and use_wrk:
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
                              f"(load average before {load1:.2f}){extra}", flush=True)
            finally:
                await drop_database(dsn)
                await delete_prefix(prefix)
    print("\nper kind, relative to 1 process (noisy shared 2-core machine: read loosely):")
    for kind in args.kinds:
        base = next((r[2] for r in rows if r[1] == kind), 0.0)
        print(f"  {kind:6} " + "  ".join(f"{r[0]}: {r[2] / base:.2f}x"
                                          for r in rows if r[1] == kind and base))


if __name__ == "__main__":
    asyncio.run(main())
