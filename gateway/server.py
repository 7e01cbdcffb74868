"""``vcc-pki serve``: both listeners, background jobs, graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import subprocess
import sys

from aiohttp import web

from ca_core.errors import CAError
from ca_core.metrics import ACTIVE_CERTIFICATES
from ca_core.tsa import ensure_tsa
from gateway.app import build_http_app, build_https_app
from gateway.config import Config
from gateway.runtime import Services, open_services
from gateway.status_jobs import run_status_jobs
from gateway.tls import ensure_server_certificate, export_ca_files

log = logging.getLogger("vcc_pki.server")

ACTIVE_GAUGE_INTERVAL = 60.0
# Set in the environment of the extra worker processes that `serve --workers N` starts.
WORKER_ENV = "VCC_PKI_WORKER_CHILD"


async def _background_jobs(services: Services, primary: bool) -> None:
    await asyncio.gather(_refresh_active_gauge(services), run_status_jobs(services, primary))


async def _refresh_active_gauge(services: Services) -> None:
    """pki_active_certificates from the store, once a minute (a scrape never queries)."""
    while True:
        try:
            counts = await services.store.count_active_certificates(services.authority.clock())
            orgs = {o.org_id: o.slug for o in await services.store.list_organizations()}
            ACTIVE_CERTIFICATES.clear()
            for org_id, profile, count in counts:
                ACTIVE_CERTIFICATES.labels(orgs.get(org_id, org_id), profile).set(count)
        except Exception as exc:  # a failed refresh must not stop the gateway
            log.warning("refreshing pki_active_certificates failed: %s", exc)
        await asyncio.sleep(ACTIVE_GAUGE_INTERVAL)


def _ssl_context(services: Services) -> ssl.SSLContext:
    tls_dir = services.config.tls_dir
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls_dir / "server.pem", tls_dir / "server.key")
    return context


def _start_workers(count: int) -> list[subprocess.Popen[bytes]]:
    """Extra serving processes: each opens its own store connection and key sessions and
    binds the same ports (SO_REUSEPORT); the kernel spreads connections over them."""
    env = {**os.environ, WORKER_ENV: "1"}
    return [
        subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env)
        for _ in range(count)
    ]


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()


async def run_server(config: Config, ready: asyncio.Event | None = None) -> None:
    is_child = os.environ.get(WORKER_ENV) == "1"
    async with open_services(config) as services:
        authority = services.authority
        await authority.load()
        if not authority.loaded_cas():
            raise CAError("no CA found: run `vcc-pki init` first")
        await services.ocsp.load(create=not is_child)
        if not is_child:
            await ensure_server_certificate(services)
            # Create or renew the TSA before workers start, so that they all load the same.
            await ensure_tsa(authority, config.tsa_settings())
        root_path = await export_ca_files(services) if not is_child else None
        workers = _start_workers(config.workers - 1) if not is_child else []

        http_runner = web.AppRunner(build_http_app(services), access_log=None,
                                    shutdown_timeout=10)
        https_runner = web.AppRunner(build_https_app(services), access_log=None,
                                     shutdown_timeout=10)
        await http_runner.setup()
        await https_runner.setup()
        reuse_port = config.workers > 1 or is_child
        await web.TCPSite(http_runner, config.bind, config.http_port,
                          reuse_port=reuse_port).start()
        await web.TCPSite(https_runner, config.bind, config.https_port,
                          ssl_context=_ssl_context(services), reuse_port=reuse_port).start()
        # The gauge and the OCSP/CRL jobs run (and are cancelled) together.
        gauge_task = asyncio.create_task(_background_jobs(services, primary=not is_child))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if is_child:
            await _serve_until(stop, http_runner, https_runner, gauge_task, [])
            return

        http_url = f"http://{config.bind}:{config.http_port}"
        https_url = f"https://{config.bind}:{config.https_port}"
        print("VCC-PKI gateway is serving", flush=True)
        print(f"  HTTP   {http_url}   CA certificates {http_url}/ca/root.pem, "
              f"health {http_url}/health, metrics {http_url}/metrics", flush=True)
        print(f"  HTTPS  {https_url}  REST API {https_url}/api/v1/certificates, "
              f"health {https_url}/api/v1/health", flush=True)
        print(f"  OCSP   {http_url}/ocsp   CRLs {http_url}/crl/<ca>.crl (and .pem)",
              flush=True)
        print(f"  TSA    {http_url}/tsa (RFC 3161; openssl ts)   chain {http_url}/tsa/chain.pem",
              flush=True)
        print(f"  Root certificate: {root_path}", flush=True)
        print(f"  Database: {services.store.backend}; key backend: {services.keys.name}; "
              f"workers: {config.workers}", flush=True)
        if ready is not None:
            ready.set()
        await _serve_until(stop, http_runner, https_runner, gauge_task, workers)


async def _serve_until(
    stop: asyncio.Event,
    http_runner: web.AppRunner,
    https_runner: web.AppRunner,
    gauge_task: asyncio.Task[None],
    workers: list[subprocess.Popen[bytes]],
) -> None:
    loop = asyncio.get_running_loop()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        gauge_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gauge_task
        stopping = asyncio.create_task(asyncio.to_thread(_stop_workers, workers))
        # Stop accepting, let in-flight requests finish (shutdown_timeout), then close.
        await https_runner.cleanup()
        await http_runner.cleanup()
        await stopping
