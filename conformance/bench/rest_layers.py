"""CPU per request of the layers the REST issuance path adds around ``Authority.issue``.

Run ``python -m conformance.bench.rest_layers [--count N]``. Prints figures; never asserts.

``conformance.bench.cpu --rest`` gives the server's CPU per certificate and py-spy's shares;
on a loaded machine py-spy's shares are wall-clock shares (a thread waiting for the GIL or a
core is charged to the frame it waits in). This measures each layer alone, in this process,
as ``time.process_time`` over ``--count`` calls: the bearer-token lookup
(``Authority.authenticate``), the JSON body, the 201 answer (``certificate_json`` and
``json_response``), and the gateway middleware (request id, body guard, metrics) around a
handler that does nothing (a mocked request: no socket, no TLS, no HTTP parsing). What is
left of the REST-minus-direct gap is aiohttp's HTTP and uvloop's TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from ca_core.authority import IssuanceRequest
from ca_core.hierarchy import ensure_hierarchy
from ca_core.principal import Principal
from conformance.bench.cpu import CONFIG
from conformance.bench.issuance import PROFILE, _env, make_csrs, rest_body
from gateway import app as gateway_app
from gateway.config import load_config
from gateway.runtime import open_services
from protocols.rest import api


async def cpu_us(call: Callable[[], Awaitable[object]], count: int) -> float:
    await call()
    started = time.process_time()
    for _ in range(count):
        await call()
    return (time.process_time() - started) / count * 1e6


async def run(count: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="vcc-pki-rest-layers-"))
    try:
        config = load_config(environ=_env(CONFIG, base, "", None))
        async with open_services(config, create=True) as services:
            authority = services.authority
            await ensure_hierarchy(authority)
            await authority.load()
            system = Principal.system("bench")
            token = (await authority.create_token("default", "cert_manager",
                                                  principal=system)).token
            csr = make_csrs(1)[0]
            body = rest_body(csr).encode()
            issued = await authority.issue(IssuanceRequest(csr=csr, profile=PROFILE), system)
            middleware = gateway_app._middleware("https", config.http_body_timeout_seconds)
            request = make_mocked_request("POST", "/api/v1/certificates",
                                          headers={"Authorization": "Bearer x"})
            done = web.Response(status=201)

            async def nothing(_: web.Request) -> web.StreamResponse:
                return done

            async def parse() -> object:
                return json.loads(body)

            async def answer() -> object:
                return web.json_response(
                    api.certificate_json(issued.record, issued.chain_pem), status=201)

            layers: list[tuple[str, Callable[[], Awaitable[object]], int]] = [
                ("bearer token (Authority.authenticate)",
                 lambda: authority.authenticate(token), count),
                ("JSON body (json.loads)", parse, count),
                ("201 answer (certificate_json + json_response)", answer, count),
                ("gateway middleware (id, guard, metrics)",
                 lambda: middleware(request, nothing), count),
                ("Authority.issue, one at a time (for scale)",
                 lambda: authority.issue(IssuanceRequest(csr=csr, profile=PROFILE), system),
                 max(count // 10, 10)),
            ]
            for label, call, n in layers:
                print(f"  {label:<48} {await cpu_us(call, n):8.1f} us CPU", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m conformance.bench.rest_layers",
                                     description="CPU per request of the REST layers")
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args(argv)
    asyncio.run(run(args.count))


if __name__ == "__main__":
    main()
