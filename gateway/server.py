"""``vcc-pki serve``: the HTTP, HTTPS and EST listeners, background jobs, graceful shutdown on
SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_core.errors import CAError
from ca_core.metrics import (
    ACTIVE_CERTIFICATES,
    ACTIVE_CERTIFICATES_EXPIRING,
    AUDIT_CHAIN_CHECKED,
    AUDIT_CHAIN_INTACT,
    CA_NOT_AFTER,
    CERTIFICATES_EXPIRING,
    CRL_NEXT_UPDATE,
    CRL_THIS_UPDATE,
)
from ca_core.signing import limit_signatures
from ca_core.storage import Store
from ca_core.tsa import ensure_tsa
from db.audit_chain import ChainProblem, ChainWalk
from db.nonce_routing import RoutedAcmeState
from gateway.app import build_est_app, build_http_app, build_https_app
from gateway.config import Config, ConfigError
from gateway.guard import ConnectionLimiter, GuardedSite
from gateway.observability import tracing_from
from gateway.runtime import Services, open_services
from gateway.status_jobs import run_status_jobs
from gateway.tls import ensure_server_certificate, export_ca_files
from protocols.est import tls_shim
from protocols.rest import api as rest_api

log = logging.getLogger("vcc_pki.server")

ACTIVE_GAUGE_INTERVAL = 60.0
# A full audit chain verification reads every entry: once an hour, in one process of all
# replicas (a lease in the store).
AUDIT_CHECK_INTERVAL = 3600.0
AUDIT_LOCK = "audit-verify"
AUDIT_BATCH = 10_000
EXPIRY_WINDOW = dt.timedelta(days=30)
# Set in the environment of the extra worker processes that `serve --workers N` starts: the
# worker's index, 1..N-1 (the primary is 0; db.nonce_routing routes nonces by it).
WORKER_ENV = "VCC_PKI_WORKER_CHILD"


async def _background_jobs(services: Services, primary: bool) -> None:
    jobs = [_refresh_active_gauge(services), run_status_jobs(services, primary)]
    if primary:
        jobs.append(_check_audit_chain(services))
    await asyncio.gather(*jobs)


async def _refresh_active_gauge(services: Services) -> None:
    """pki_active_certificates from the store, once a minute (a scrape never queries)."""
    while True:
        try:
            counts = await services.store.count_active_certificates(services.authority.clock())
            orgs = {o.org_id: o.slug for o in await services.store.list_organizations()}
            ACTIVE_CERTIFICATES.clear()
            for org_id, profile, count in counts:
                ACTIVE_CERTIFICATES.labels(orgs.get(org_id, org_id), profile).set(count)
            await _refresh_status_gauges(services, counts, orgs)
        except Exception as exc:  # a failed refresh must not stop the gateway
            log.warning("refreshing pki_active_certificates failed: %s", exc)
        try:
            await refresh_expiring_gauge(services)
        except Exception as exc:
            log.warning("refreshing pki_certificates_expiring failed: %s", exc)
        await asyncio.sleep(ACTIVE_GAUGE_INTERVAL)


async def refresh_expiring_gauge(services: Services) -> None:
    """pki_certificates_expiring from the registry's due query (in every process, as the
    gauge above: each process's /metrics answers for itself; one indexed read a minute)."""
    counts = await services.registry.expiring()
    CERTIFICATES_EXPIRING.clear()
    for (org, service, days), count in counts.items():
        CERTIFICATES_EXPIRING.labels(org, service, str(days)).set(count)


async def _refresh_status_gauges(services: Services, active: list[tuple[str, str, int]],
                                  orgs: dict[str, str]) -> None:
    """CA expiry, CRL freshness and certificates expiring soon (deploy/prometheus alerts)."""
    store = services.store
    # Still active a window from now, subtracted from active now: expiring within it.
    later = {(o, p): n for o, p, n in await store.count_active_certificates(
        services.authority.clock() + EXPIRY_WINDOW)}
    ACTIVE_CERTIFICATES_EXPIRING.clear()
    for org_id, profile, count in active:
        ACTIVE_CERTIFICATES_EXPIRING.labels(orgs.get(org_id, org_id), profile).set(
            count - later.get((org_id, profile), 0))
    cas = await store.list_cas()
    names = {ca.ca_id: ca.name for ca in cas}
    CA_NOT_AFTER.clear()
    for ca in cas:
        CA_NOT_AFTER.labels(ca.name, ca.ca_type, ca.status).set(ca.not_after.timestamp())
    CRL_THIS_UPDATE.clear()
    CRL_NEXT_UPDATE.clear()
    for head in await store.list_crl_heads():
        labels = (names.get(head.ca_id, head.ca_id), str(head.partition))
        CRL_THIS_UPDATE.labels(*labels).set(head.this_update.timestamp())
        CRL_NEXT_UPDATE.labels(*labels).set(head.next_update.timestamp())


async def verify_audit_chain(store: Store) -> list[ChainProblem]:
    """The whole audit chain, as `vcc-pki audit verify` checks it, but read batch by batch
    (memory of one batch, not of the log) and hashed off the event loop."""
    walk = ChainWalk()
    reread = False
    while True:
        batch = await store.audit_entries(after_seq=walk.last_seq, limit=AUDIT_BATCH)
        if batch:
            await asyncio.to_thread(walk.feed, batch)
            reread = False
            continue
        head = await store.audit_head()
        if head is not None and head.seq > walk.last_seq and not reread:
            reread = True  # entries written since the last batch: read them (once)
            continue
        return walk.finish(head)


async def _check_audit_chain(services: Services) -> None:
    """pki_audit_chain_intact, hourly. The lease lets one process of all replicas verify
    per interval; the others keep their last check time (0 if never), which the alert
    rules read."""
    holder = services.ocsp.instance_id
    while True:
        try:
            if await services.store.try_lock(AUDIT_LOCK, holder, AUDIT_CHECK_INTERVAL * 0.9):
                problems = await verify_audit_chain(services.store)
                AUDIT_CHAIN_INTACT.set(0 if problems else 1)
                AUDIT_CHAIN_CHECKED.set_to_current_time()
                if problems:
                    log.error("audit chain broken: %s", problems[:5])
        except Exception as exc:  # a failed check must not stop the gateway
            log.warning("verifying the audit chain failed: %s", exc)
        await asyncio.sleep(AUDIT_CHECK_INTERVAL)


class _BadRequestLines(logging.Filter):
    """aiohttp logs every request it cannot parse (a request line or header over the
    limits, non-ASCII in the URL) at ERROR with a traceback, before it answers 400: any
    client could flood the log. Such a record becomes one INFO line without the traceback;
    every other record passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            said = record.getMessage()
            record.msg = "%s: answered %s (%s)"
            record.args = (said, exc.code, type(exc).__name__)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


HTTP_PROTOCOL_LOG = logging.getLogger("vcc_pki.http")
HTTP_PROTOCOL_LOG.addFilter(_BadRequestLines())


def runner_options(config: Config) -> dict[str, Any]:
    """What every listener's AppRunner gets: no access log, a bounded shutdown, the
    parsing limits of the configuration and the quiet protocol logger."""
    return {"access_log": None, "shutdown_timeout": 10, "logger": HTTP_PROTOCOL_LOG,
            # aiohttp's keep-alive timer also closes a connection whose request headers
            # are still incomplete when it fires: the slowloris bound (gateway.guard).
            "keepalive_timeout": config.http_keepalive_seconds,
            "max_line_size": config.http_max_line_bytes,
            "max_field_size": config.http_max_field_bytes,
            "max_headers": config.http_max_headers}


def limit_keepalive_requests(app: web.Application, limit: int) -> None:
    """After ``limit`` requests on one connection, the answer carries ``Connection: close``
    (VCC_PKI_HTTP_KEEPALIVE_REQUESTS; 0: no limit), so that a client behind a layer-4
    balancer reconnects and may land on another replica. Clients honour it: unlike a
    connection closed under them, it leaves nothing to retry (Go does not retry a POST)."""
    if limit <= 0:
        return

    async def close_after_limit(request: web.BaseRequest, response: web.StreamResponse
                                ) -> None:
        # aiohttp counts the requests each connection has carried (its RequestHandler;
        # pipelined ones as they arrive, so a pipelining client may see the close early,
        # which HTTP allows); tests/test_keepalive_requests.py pins that this still holds.
        if request.protocol._request_count >= limit:
            response.force_close()  # the connection ends after this answer
            # aiohttp (3.14) has made the headers by the time this hook runs: say it.
            response.headers[hdrs.CONNECTION] = "close"

    app.on_response_prepare.append(close_after_limit)


def _ssl_context(services: Services) -> ssl.SSLContext:
    tls_dir = services.config.tls_dir
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls_dir / "server.pem", tls_dir / "server.key")
    return context


async def est_ssl_context(services: Services,
                          trust_store: Sequence[x509.Certificate] = ()) -> ssl.SSLContext:
    """The EST listener's TLS (RFC 7030 3.3): TLS 1.2 and 1.3, the same server certificate,
    and a client certificate *requested* (CERT_OPTIONAL), never required. The 8443
    listener's context never asks for a certificate. The REST API served on this listener
    too takes a client certificate bound to a service account (issue 13,
    ``Authority.authenticate_certificate``: pinned by fingerprint, so any CA's; without the
    shim, only certificates that chain to this PKI or the EST trust store get through the
    handshake).

    The handshake accepts any client certificate (``protocols.est.tls_shim``): the EST core
    verifies it (chain to this PKI's CAs or the EST trust store, validity, revocation) and
    refuses a bad one with a 401 and a plain-text reason. Where the shim is unavailable
    (logged once), OpenSSL verifies a presented certificate against this PKI's CAs and the
    trust store as before and ends the handshake on one that does not chain (an "unknown
    ca" or "certificate expired" alert); the core still checks it."""
    context = _ssl_context(services)
    if tls_shim.accept_any_client_certificate(context):
        return context
    anchors = [x509.load_der_x509_certificate(r.certificate_der)
               for r in await services.store.list_cas()]
    anchors = [c for c in anchors if _is_ca(c)] + list(trust_store)
    context.load_verify_locations(
        cadata="".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in anchors))
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _listener_url(scheme: str, bind: str, port: int) -> str:
    return f"{scheme}://{f'[{bind}]' if ':' in bind else bind}:{port}"


def banner(config: Config, root_path: Path | None, database: str, key_backend: str
           ) -> list[str]:
    """What ``serve`` prints once it listens: where each service is. The listeners are where
    this process binds; the service URLs are the public ones (``VCC_PKI_PUBLIC_*``), which
    certificates and the ACME directory name, and which clients must use."""
    http = _listener_url("http", config.bind, config.http_port)
    https = _listener_url("https", config.bind, config.https_port)
    est = _listener_url("https", config.bind, config.est_port)
    public_http = config.effective_public_http_url
    public_https = config.effective_public_https_url
    return [
        "VCC-PKI gateway is serving",
        f"  HTTP   {http}   CA certificates {public_http}/ca/root.pem, "
        f"health {http}/health, metrics {http}/metrics",
        f"  HTTPS  {https}  REST API {public_https}/api/v1/certificates, "
        f"health {https}/api/v1/health",
        f"  Admin  {public_https}/admin/ (the web admin page: sign in with a bearer token)",
        f"  ACME   {public_https}/acme/directory (RFC 8555; another organization's: "
        "/acme/<org>/directory)",
        f"  EST    {est}/.well-known/est/ (RFC 7030; labels: /.well-known/est/<label>/; "
        "client certificates are requested on this port only)",
        f"  mTLS   {est}/api/v1/certificates (the REST API with a client certificate bound "
        "to a service account: vcc-pki service-account create)",
        f"  OCSP   {public_http}/ocsp   CRLs {public_http}/crl/<ca>.crl (and .pem)",
        f"  TSA    {public_http}/tsa (RFC 3161; openssl ts)   chain {public_http}/tsa/chain.pem",
        f"  Root certificate: {root_path}",
        f"  Database: {database}; key backend: {key_backend}; workers: {config.workers}",
    ]


async def _listen(runner: web.AppRunner, config: Config, port: int, setting: str,
                  ssl_context: ssl.SSLContext | None, reuse_port: bool) -> None:
    """Bind one listener; a port that cannot be had is a configuration error naming the
    setting that chose it (the OSError alone says only "address already in use")."""
    try:
        await GuardedSite(runner, config.bind, port, ssl_context=ssl_context,
                          reuse_port=reuse_port,
                          limiter=ConnectionLimiter(config.http_max_connections_per_client)
                          ).start()
    except OSError as exc:
        where = f"{config.bind}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} is in use on {config.bind} (another vcc-pki serve?): "
                              f"stop it, or set {setting} to a free port") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"no permission to listen on {where} (ports below 1024 need "
                              f"privileges): set {setting} to a port above 1023") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"cannot listen on {config.bind}: not an address of this "
                              "machine; set VCC_PKI_BIND") from None
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {where} ({reason}); check VCC_PKI_BIND and "
                          f"{setting}") from None


def _start_worker(index: int) -> subprocess.Popen[bytes]:
    """An extra serving process: it opens its own store connection and key sessions and
    binds the same ports (SO_REUSEPORT); the kernel spreads connections over them."""
    env = {**os.environ, WORKER_ENV: str(index)}
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env)


def _start_workers(count: int) -> list[subprocess.Popen[bytes]]:
    """Workers 1..count (the primary is worker 0)."""
    return [_start_worker(index) for index in range(1, count + 1)]


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()


# A worker that exits while the gateway serves is started again, at most once per slot in
# this many seconds (a worker that cannot start at all is not restarted in a tight loop).
WORKER_RESTART_SECONDS = 5.0
_SUPERVISE_INTERVAL = 1.0


async def _supervise(workers: list[subprocess.Popen[bytes]]) -> None:
    """Keep ``workers`` (replaced in place) running until cancelled. With workers as the
    default (issue 18), a worker lost to a crash or the OOM killer would otherwise take its
    share of the ports' capacity away until the next restart, unnoticed."""
    started = [time.monotonic()] * len(workers)
    while True:
        await asyncio.sleep(_SUPERVISE_INTERVAL)  # poll() is cheap; no SIGCHLD handler
        for slot, worker in enumerate(workers):
            code = worker.poll()
            if code is None or time.monotonic() - started[slot] < WORKER_RESTART_SECONDS:
                continue
            log.warning("worker process %d exited with %s; starting another", worker.pid,
                        code)
            workers[slot] = _start_worker(slot + 1)  # the same index: its nonce prefix
            started[slot] = time.monotonic()


async def _exit_with_primary(stop: asyncio.Event, primary: int) -> None:
    """In a worker: stop when the primary process is gone (SIGKILL, a crash), so that no
    orphan keeps serving the ports with settings nobody can stop any more."""
    while os.getppid() == primary:
        await asyncio.sleep(_SUPERVISE_INTERVAL)
    log.warning("the primary process %d is gone: this worker stops", primary)
    stop.set()


async def run_server(config: Config, ready: asyncio.Event | None = None) -> None:
    index = int(os.environ.get(WORKER_ENV) or 0)
    limit_signatures(config.max_signatures_in_flight)
    # Each serving process (workers too: they start as `vcc-pki serve`) sends its own spans.
    with tracing_from(config):
        await _run_server(config, index, ready)


async def _run_server(config: Config, index: int, ready: asyncio.Event | None) -> None:
    is_child = index > 0
    async with open_services(config, worker=index) as services:
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

        est_settings = services.est.settings
        https_app = build_https_app(services)
        apps = [build_http_app(services), https_app,
                build_est_app(services, services.est, est_settings,
                              https_app[rest_api.SESSIONS])]
        for app in apps:
            limit_keepalive_requests(app, config.http_keepalive_requests)
        http_runner, https_runner, est_runner = (
            web.AppRunner(app, **runner_options(config)) for app in apps)
        runners = [http_runner, https_runner, est_runner]
        for runner in runners:
            await runner.setup()
        reuse_port = config.workers > 1 or is_child
        try:
            await _listen(http_runner, config, config.http_port, "VCC_PKI_HTTP_PORT", None,
                          reuse_port)
            await _listen(https_runner, config, config.https_port, "VCC_PKI_HTTPS_PORT",
                          _ssl_context(services), reuse_port)
            await _listen(est_runner, config, config.est_port, "VCC_PKI_EST_PORT",
                          await est_ssl_context(services, est_settings.trust_store),
                          reuse_port)
        except BaseException:
            for runner in reversed(runners):
                await runner.cleanup()
            raise
        if isinstance(services.acme.state, RoutedAcmeState):
            # Other workers' questions about this one's nonces (before the workers start).
            await services.acme.state.start()
        # The other processes start once this one holds its ports (SO_REUSEPORT lets them
        # bind too), so that a port in use stops one process, not a family of them.
        workers = _start_workers(config.workers - 1) if not is_child else []
        if workers and not config.redis_url:
            log.info("%d serving processes without VCC_PKI_REDIS_URL: ACME nonces are routed "
                     "to the process that issued them, admin web sessions are kept in the "
                     "database, ACME rate limits count per process", config.workers)
        # The gauge and the OCSP/CRL jobs run (and are cancelled) together.
        gauge_task = asyncio.create_task(_background_jobs(services, primary=not is_child))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if is_child:
            watch = asyncio.create_task(_exit_with_primary(stop, os.getppid()))
            try:
                await _serve_until(stop, runners, gauge_task, [], services)
            finally:
                watch.cancel()
            return

        for line in banner(config, root_path, services.store.backend, services.keys.name):
            print(line, flush=True)
        if ready is not None:
            ready.set()
        await _serve_until(stop, runners, gauge_task, workers, services)


async def _serve_until(
    stop: asyncio.Event,
    runners: list[web.AppRunner],
    gauge_task: asyncio.Task[None],
    workers: list[subprocess.Popen[bytes]],
    services: Services,
) -> None:
    """Serve until SIGTERM/SIGINT, then, in the order a load balancer needs: /ready 503 for
    VCC_PKI_DRAIN_SECONDS while still serving; stop the background jobs (their leases are
    released as they end); stop accepting and finish what is in flight (bounded by the
    runners' shutdown_timeout). The worker processes get SIGTERM first and do the same,
    at the same time."""
    loop = asyncio.get_running_loop()
    supervisor = asyncio.create_task(_supervise(workers)) if workers else None
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if supervisor is not None:  # no restarts from here on
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        # The workers drain at the same time (each is a `vcc-pki serve` with these settings).
        stopping = asyncio.create_task(asyncio.to_thread(_stop_workers, workers))
        drain = services.config.drain_seconds
        if drain:
            services.draining = True
            log.info("draining: /ready answers 503 for %d s, requests are still served",
                     drain)
            # A second signal ends the drain at once.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            stop.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), drain)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("shutting down")
        gauge_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gauge_task
        # Stop accepting, let in-flight requests finish (shutdown_timeout), then close.
        for runner in reversed(runners):
            await runner.cleanup()
        await stopping
