"""The floor under every ACME request: aiohttp + uvloop + TLS answering with no logic.

Run ``python -m conformance.bench.http_floor [--seconds S] [--clients N]``. Prints figures;
never asserts on them. See ``conformance/bench/README.md`` (ACME section).

The ACME benchmark (``conformance.bench.acme``) prints the server CPU per order for
vcc-pki and for Pebble. How much of vcc-pki's is the protocol's work and how much is the
price of serving HTTPS from CPython at all? This serves the shape of an ACME exchange with
nothing behind it: ``POST`` of a ~500-byte ``application/jose+json`` body over a keep-alive TLS
connection, read and JSON-decoded, answered with a ~600-byte JSON document and the
``Replay-Nonce``, ``Link`` and ``Cache-Control`` headers, on the event loop and TLS stack
the gateway uses (uvloop, Python's ``ssl``), driven like the ACME benchmark drives its
servers (aiohttp clients in separate processes, one request in flight per client). The
server's CPU per request, times the requests an order takes, is what an order costs this
design before it does anything: no JWS check, no store, no signature.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from conformance.bench.acme import _probe, make_listener_tls
from conformance.bench.cpu import proc_cpu_seconds
from conformance.gateway import free_port

# An ACME POST-as-GET or order body signed with ES256, and a typical order document.
REQUEST_BODY = json.dumps({
    "protected": "eyJhbGciOiJFUzI1NiIsIm5vbmNlIjoi" + "A" * 180,
    "payload": "eyJpZGVudGlmaWVycyI6W3sidHlwZSI6ImRucyIsInZhbHVlIjoi" + "B" * 120,
    "signature": "C" * 86,
})
ANSWER = {
    "status": "pending", "expires": "2026-12-14T00:00:00Z",
    "identifiers": [{"type": "dns", "value": "load-00001.bench.test"}],
    "authorizations": ["https://127.0.0.1:8443/acme/default/authz/" + "D" * 22],
    "finalize": "https://127.0.0.1:8443/acme/default/order/" + "E" * 22 + "/finalize",
}


def serve(port: int, cert: str, key: str) -> None:
    """The floor server (run in its own process by ``main``)."""
    import uvloop
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        json.loads(await request.read())
        response = web.json_response(ANSWER, status=201)
        response.headers["Replay-Nonce"] = secrets.token_urlsafe(24)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Link"] = '<https://127.0.0.1:8443/acme/default/directory>;rel="index"'
        return response

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def run() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_post("/floor", answer)
        app.router.add_get("/ready", ready)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        await asyncio.Event().wait()

    uvloop.run(run())


def _client_main(conn: Connection, url: str, cafile: str, clients: int, seconds: float
                 ) -> None:
    import aiohttp

    async def run() -> tuple[int, list[float]]:
        context = ssl.create_default_context(cafile=cafile)
        latencies: list[float] = []
        headers = {"Content-Type": "application/jose+json"}
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=context)) as session:
            deadline = time.perf_counter() + seconds

            async def one() -> None:
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    async with session.post(url, data=REQUEST_BODY, headers=headers) as resp:
                        await resp.read()
                        if resp.status != 201:
                            raise RuntimeError(f"floor answered {resp.status}")
                    latencies.append(time.perf_counter() - started)

            await asyncio.gather(*(one() for _ in range(clients)))
        return len(latencies), latencies

    conn.send(asyncio.run(run()))
    conn.close()


def measure(seconds: float, clients: int, processes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vcc-pki-http-floor-") as work:
        ca, cert, key = make_listener_tls(Path(work))
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "conformance.bench.http_floor", "--serve", str(port),
             str(cert), str(key)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            context = ssl.create_default_context(cafile=str(ca))
            _probe(f"https://localhost:{port}/ready", context, process=server)
            url = f"https://localhost:{port}/floor"
            per = [clients // processes + (1 if i < clients % processes else 0)
                   for i in range(processes)]
            ctx = multiprocessing.get_context("spawn")
            pipes, procs = [], []
            cpu_before = proc_cpu_seconds(server.pid)
            started = time.perf_counter()
            for count in per:
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(target=_client_main,
                                   args=(theirs, url, str(ca), count, seconds))
                proc.start()
                pipes.append(ours)
                procs.append(proc)
            results = [pipe.recv() for pipe in pipes]
            elapsed = time.perf_counter() - started
            cpu = proc_cpu_seconds(server.pid) - cpu_before
            for proc in procs:
                proc.join()
        finally:
            server.terminate()
            server.wait(timeout=10)
    requests = sum(n for n, _ in results)
    latencies = sorted(x for _, lat in results for x in lat)
    return {
        "requests": requests, "rate": requests / elapsed,
        "cpu_us": 1e6 * cpu / max(requests, 1),
        "server_cores": cpu / elapsed,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.bench.http_floor",
        description="aiohttp + uvloop + TLS with no logic: the floor under an ACME request "
                    "(prints figures; never asserts on them).")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="length of each measurement (default 10)")
    parser.add_argument("--clients", type=int, default=16,
                        help="concurrent clients, one request in flight each (default 16)")
    parser.add_argument("--load-procs", type=int, default=2,
                        help="client processes sharing the clients (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements (default 2)")
    parser.add_argument("--requests-per-order", type=float, default=7.0,
                        help="requests one ACME order takes on vcc-pki (the ACME bench "
                             "prints it as req/flow; default 7.0)")
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "CERT", "KEY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], args.serve[2])
        return
    print(f"HTTPS floor: aiohttp + uvloop + TLS, POST ~{len(REQUEST_BODY)} B jose+json -> "
          f"201 JSON, {args.clients} clients over {args.load_procs} process(es), "
          f"{args.rounds} x {args.seconds:.0f} s; CPUs {os.cpu_count()}", flush=True)
    runs = []
    for round_no in range(1, args.rounds + 1):
        run = measure(args.seconds, args.clients, args.load_procs)
        runs.append(run)
        print(f"round {round_no}: {run['rate']:,.0f} req/s  p50 {run['p50_ms']:.1f} ms  "
              f"p99 {run['p99_ms']:.1f} ms  server CPU {run['cpu_us']:.0f} µs/request  "
              f"server cores {run['server_cores']:.2f}", flush=True)
    cpu_us = statistics.median(r["cpu_us"] for r in runs)
    print(f"median: {cpu_us:.0f} µs of server CPU per request; x {args.requests_per_order:g} "
          f"requests per order = {cpu_us * args.requests_per_order / 1000:.2f} ms per order "
          f"before any ACME work (compare the ACME bench's server CPU ms/order)")


if __name__ == "__main__":
    main()
