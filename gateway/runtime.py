"""Wiring: from a Config to an open Store, KeyBackend and Authority."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from ca_core.acme import AcmeService
from ca_core.acme_state import AcmeState
from ca_core.admin import AdminService
from ca_core.authority import Authority
from ca_core.code_signing import CodeSigningService
from ca_core.crl import CrlPublisher, CrlSettings
from ca_core.est import EstService
from ca_core.ocsp import OcspResponder, OcspSettings
from ca_core.response_cache import ResponseCache
from ca_core.scep import ScepService
from ca_core.services import ServiceRegistry
from ca_core.sessions import SessionTable
from ca_core.signers.base import KeyBackend, KeyBackendError
from ca_core.signers.software import SoftwareKeyBackend
from ca_core.storage import Store
from ca_core.tsa import TimeStampAuthority
from db.acme_state import MemoryAcmeState, RedisAcmeState
from db.audit_chain import verify_chain
from db.cache import MemoryResponseCache, RedisResponseCache
from db.nonce_routing import RoutedAcmeState, socket_address
from db.sessions import RedisSessions, SqlSessions
from db.sql import SqlStore
from gateway.config import Config, ConfigError
from va.validator import Validator

log = logging.getLogger(__name__)


class NoPki(ConfigError):
    """Nothing where the configuration points: ``vcc-pki init`` makes a PKI there."""


def require_pki(config: Config) -> None:
    """Refuse, before anything is created, a SQLite database that does not exist: a command
    run in the wrong directory must not leave an empty data directory behind. (A PostgreSQL
    database is looked at once open: see ``require_cas``.)"""
    url = config.effective_database_url
    if not url.startswith("sqlite:///"):
        return
    path = url.removeprefix("sqlite:///")
    if path != ":memory:" and not Path(path).exists():
        raise NoPki(f"no PKI here: {path} does not exist. Run `vcc-pki init` to create one, "
                    "or point VCC_PKI_DATA_DIR (or VCC_PKI_DATABASE_URL) at an existing one")


async def require_cas(store: Store) -> None:
    if not await store.list_cas():
        raise NoPki("no PKI in this database (VCC_PKI_DATABASE_URL): it holds no CA. "
                    "Run `vcc-pki init` to create one")


def make_store(config: Config) -> Store:
    url = config.effective_database_url
    if url.startswith("sqlite:"):
        from db.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        from db.postgres import PostgresStore

        return PostgresStore.from_url(url)
    raise ConfigError("VCC_PKI_DATABASE_URL must start with sqlite:/// or postgresql://")


def _passphrase(config: Config, create: bool) -> bytes:
    if config.key_passphrase:
        return config.key_passphrase.encode()
    path = config.passphrase_path
    if path.exists():
        return path.read_text(encoding="utf-8").strip().encode()
    if not create:
        raise ConfigError(
            f"no key passphrase: set VCC_PKI_KEY_PASSPHRASE or create {path} (vcc-pki init does)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secret + "\n")
    log.warning("created a random key passphrase in %s (demo setup; use a secret store in "
                "production)", path)
    return secret.encode()


def make_key_backend(config: Config, create: bool = False) -> KeyBackend:
    if config.key_backend == "pkcs11":
        from ca_core.signers.pkcs11 import Pkcs11KeyBackend

        if not config.pkcs11_pin:
            raise ConfigError("VCC_PKI_PKCS11_PIN is required with the pkcs11 key backend")
        return Pkcs11KeyBackend(
            config.pkcs11_module, config.pkcs11_token_label, config.pkcs11_pin,
            max_sessions=config.pkcs11_max_sessions,
        )
    return SoftwareKeyBackend(config.data_dir / "keys", _passphrase(config, create))


def make_response_cache(config: Config) -> ResponseCache:
    """Redis when VCC_PKI_REDIS_URL is set (shared by replicas), else in-process."""
    if config.redis_url:
        return RedisResponseCache(config.redis_url, prefix=f"{config.redis_key_prefix}ocsp:")
    return MemoryResponseCache(max_entries=config.ocsp_cache_max_entries)


def make_acme_state(config: Config, worker: int | None = None) -> AcmeState:
    """Nonces and rate-limit counters: in Redis when set (shared by replicas). Else in the
    process; for serving worker ``worker`` of several, nonces routed to the worker that
    issued them (db.nonce_routing; ``serve`` starts its listener once it holds its ports:
    a second ``serve`` refused on a port in use must not take a running one's socket)."""
    if config.redis_url:
        return RedisAcmeState(config.redis_url, prefix=f"{config.redis_key_prefix}acme:")
    if worker is not None and config.workers > 1:
        return RoutedAcmeState(worker, [socket_address(config.data_dir, i)
                                        for i in range(config.workers)])
    return MemoryAcmeState()


def make_session_table(services: Services) -> SessionTable | None:
    """Where the admin web page's sessions live: Redis when set; the database when several
    serving processes run without it (a sign-in holds on every worker); else None, the
    process's memory (ca_core.sessions.MemorySessions)."""
    config, store = services.config, services.store
    if config.redis_url:
        return RedisSessions(config.redis_url, prefix=f"{config.redis_key_prefix}session:")
    if services.worker is not None and config.workers > 1 and isinstance(store, SqlStore):
        return SqlSessions(store)
    return None


def crl_settings(config: Config) -> CrlSettings:
    return CrlSettings(next_update=dt.timedelta(hours=config.crl_next_update_hours),
                       partitions=config.crl_partitions)


def ocsp_settings(config: Config) -> OcspSettings:
    return OcspSettings(
        validity=dt.timedelta(days=config.ocsp_validity_days),
        nonce=config.ocsp_nonce,
        live_concurrency=config.ocsp_live_concurrency,
        responder_validity_days=config.ocsp_responder_validity_days,
        front_cache_seconds=config.ocsp_front_cache_ms / 1000,
    )


@dataclass
class Services:
    config: Config
    store: Store
    keys: KeyBackend
    authority: Authority
    cache: ResponseCache
    ocsp: OcspResponder
    crls: CrlPublisher
    acme: AcmeService
    est: EstService
    scep: ScepService
    admin: AdminService  # the CLI's and the REST API's one admin service (ca_core.admin)
    signatures: CodeSigningService  # code signing with time-stamps (issue 14)
    registry: ServiceRegistry  # the service registry (issue 14)
    # Set on SIGTERM with VCC_PKI_DRAIN_SECONDS: /ready answers 503 (still serving).
    draining: bool = False
    # This serving process's index among VCC_PKI_WORKERS (0: the primary); None outside
    # `serve` (the other commands, in-process tests).
    worker: int | None = None


@asynccontextmanager
async def open_services(config: Config, create: bool = False, worker: int | None = None
                        ) -> AsyncIterator[Services]:
    """Open the store and key backend; ``create`` (init) allows making a new PKI: the data
    directory, the database, the passphrase file. Without it, NoPki where there is none.
    ``worker``: the index of this serving process (``serve``; 0 the primary), None in the
    other commands."""
    if create:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    else:
        require_pki(config)
    store = make_store(config)
    try:
        keys = await asyncio.to_thread(make_key_backend, config, create)
    except KeyBackendError as exc:
        raise ConfigError(f"key backend: {exc}") from exc
    try:
        await store.open()
        try:
            authority = Authority(store, keys, config.ca_settings())
            cache = make_response_cache(config)
            ocsp = OcspResponder(authority, cache, ocsp_settings(config))
            authority.add_listener(ocsp)
            acme_state = make_acme_state(config, worker)  # serve starts a routed one
            acme = AcmeService(authority, acme_state,
                               Validator(config.acme_validation_settings()),
                               config.acme_settings())
            est = EstService(authority, store, config.est_settings())
            scep = ScepService(authority, store, config.scep_settings())
            try:
                yield Services(config, store, keys, authority, cache, ocsp,
                               CrlPublisher(authority, crl_settings(config)), acme, est, scep,
                               admin=AdminService(authority, verify_chain, est, scep),
                               signatures=CodeSigningService(authority, TimeStampAuthority(
                                   authority, config.tsa_settings())),
                               registry=ServiceRegistry(authority), worker=worker)
            finally:
                await acme.aclose()
                await acme_state.close()
                await ocsp.aclose()
                await cache.close()
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(keys.close)
