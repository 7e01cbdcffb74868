"""What tracing costs (issue 15): the disabled path per instrumented call and per request,
and, for contrast, the enabled path. A benchmark, not a test: prints figures, never fails.

    .venv/bin/python -m conformance.bench.tracing [--calls 200000] [--requests 300]

1. Micro: an awaited coroutine raw, through ``ca_core.tracing.traced`` and in a
   ``tracing.span()`` block, tracing off (the shipped default) and on (SDK, in-memory
   exporter); the gateway middleware's own check is the same shape (one global read, one
   coroutine frame).
2. Spans per request: how many instrumented points an OCSP POST, a TSA stamp and a REST
   issuance pass (counted with tracing on), so that off-cost per request = points x
   per-point cost + one middleware check.
3. In-process requests (aiohttp TestClient, SQLite, software keys): mean time of OCSP
   POSTs and REST issuances with tracing off and on. Noisy on a shared machine: compare the
   off/on ratio of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509

from ca_core import tracing
from ca_core.principal import Principal
from gateway import observability
from gateway.app import build_http_app, build_https_app
from gateway.runtime import Services
from tests.helpers import fresh_services, make_csr
from tests.test_ocsp import ocsp_request
from tests.test_tsa import QUERY, request_der


async def _work() -> int:
    return 1


@tracing.traced("bench.call")
async def _traced_work() -> int:
    return 1


async def _in_span() -> int:
    with tracing.span("bench.block"):
        return 1


async def _per_call(call: Callable[[], Awaitable[int]], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls * 1e9  # ns


async def micro(calls: int) -> None:
    print(f"1. per call, mean of {calls} (ns)")
    raw = min([await _per_call(_work, calls) for _ in range(3)])
    print(f"   await raw coroutine           {raw:8.0f}")
    for label in ("off", "on"):
        exporter: Any = None
        provider = None
        if label == "on":
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter,
            )
            exporter = InMemorySpanExporter()
            provider = observability.start_tracing("", exporter=exporter)
        try:
            count = calls if label == "off" else calls // 20
            wrapped = min([await _per_call(_traced_work, count) for _ in range(3)])
            block = min([await _per_call(_in_span, count) for _ in range(3)])
        finally:
            observability.stop_tracing(provider)
        print(f"   tracing {label:3}: @traced        {wrapped:8.0f}  (+{wrapped - raw:.0f})")
        print(f"   tracing {label:3}: span() block   {block:8.0f}  (+{block - raw:.0f})")


async def _clients(services: Services) -> tuple[TestClient, TestClient, str, bytes]:
    api = TestClient(TestServer(build_https_app(services)))
    http = TestClient(TestServer(build_http_app(services)))
    await api.start_server()
    await http.start_server()
    token = (await services.authority.create_token(
        "default", "cert_manager", principal=Principal.system("bench"))).token
    response = await api.post("/api/v1/certificates", headers={"Authorization": f"Bearer {token}"},
                              json={"csr": make_csr().decode(), "profile": "vcc_service"})
    issued = await response.json()
    cert = x509.load_pem_x509_certificate(issued["certificate_pem"].encode())
    issuer = x509.load_pem_x509_certificate(issued["chain_pem"].encode())
    return api, http, token, ocsp_request(cert, issuer)


async def requests(count: int) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    with tempfile.TemporaryDirectory() as tmp:
        async with fresh_services(Path(tmp)) as services:
            api, http, token, ocsp_body = await _clients(services)
            csrs = [make_csr().decode() for _ in range(count)]
            auth = {"Authorization": f"Bearer {token}"}

            async def ocsp() -> None:
                response = await http.post("/ocsp", data=ocsp_body,
                                           headers={"Content-Type": "application/ocsp-request"})
                assert response.status == 200
                await response.read()

            async def tsa() -> None:
                response = await http.post("/tsa", data=request_der(),
                                           headers={"Content-Type": QUERY})
                assert response.status == 200
                await response.read()

            issued = itertools.cycle(csrs)

            async def issue() -> None:
                response = await api.post("/api/v1/certificates", headers=auth, json={
                    "csr": next(issued), "profile": "vcc_service"})
                assert response.status == 201
                await response.read()

            exporter = InMemorySpanExporter()
            provider = observability.start_tracing("", exporter=exporter)
            print("2. instrumented points (spans) per request")
            for name, call in (("OCSP POST", ocsp), ("TSA stamp", tsa), ("REST issue", issue)):
                exporter.clear()
                await call()
                names = sorted(s.name for s in exporter.get_finished_spans())
                print(f"   {name:11} {len(names):3}: {', '.join(names)}")
            observability.stop_tracing(provider)

            print(f"3. in-process request time, mean of {count} (µs), off / on")
            for name, call in (("OCSP POST", ocsp), ("REST issue", issue)):
                means = {}
                for label in ("off", "on", "off", "on"):  # interleaved against drift
                    provider = (observability.start_tracing("", exporter=exporter)
                                if label == "on" else None)
                    started = time.perf_counter()
                    for _ in range(count):
                        await call()
                    elapsed = (time.perf_counter() - started) / count * 1e6
                    observability.stop_tracing(provider)
                    exporter.clear()
                    means[label] = min(means.get(label, elapsed), elapsed)
                print(f"   {name:11} {means['off']:8.0f} / {means['on']:8.0f}  "
                      f"(on: {means['on'] / means['off']:.2f}x)")
            await api.close()
            await http.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(micro(args.calls))
    asyncio.run(requests(args.requests))


if __name__ == "__main__":
    main()
