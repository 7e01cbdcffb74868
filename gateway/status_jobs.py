"""Background jobs of the revocation-status services (OCSP responder, CRL publisher).

- **watcher**: polls the store for revocations by anyone (this process, the CLI, other
  replicas) every ``revocation_poll_ms`` and makes the OCSP cache say "revoked" for each,
  and schedules the affected CRLs; so a revocation is visible in OCSP from every process
  within about a second of the revoke call returning.
- **refresher**: every ``ocsp_refresh_interval_seconds``, picks up new CAs and responder
  certificates, renews responder certificates before they expire, re-signs cached responses
  past half their validity, and regenerates CRLs before their nextUpdate. With a shared
  (Redis) cache one process at a time refreshes, under a lease in the store.
- **warm**: once at start, precomputes the responses missing from the cache.
- **CRLs**: every ``crl_debounce_ms``, makes the CRLs that are missing, behind a revocation
  (by any process) or past half their validity; revocations within one interval go into one
  new CRL. One process at a time publishes, under a lease in the store.

Each job logs and carries on after an error: a failed round must not stop the gateway.

Leases are short (``LEASE_SECONDS``) and renewed while the job runs (``held_lease``, in
ca_core.leases, which the OCSP responder's certificate renewal uses too): a
replica killed while holding one (SIGKILL, OOM, a lost node) blocks the job for at most that
long, so another replica takes the job over within seconds (issue 15: within 10 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

# Re-exported: the jobs and their tests name them here.
from ca_core.leases import LEASE_SECONDS as LEASE_SECONDS
from ca_core.leases import held_lease as held_lease
from ca_core.response_cache import CacheUnavailable
from gateway.runtime import Services

log = logging.getLogger("vcc_pki.status_jobs")

REFRESH_LOCK = "ocsp-refresh"
CRL_LOCK = "crl-publish"
WARM_LOCK = "ocsp-warm"
REFRESH_BATCH = 500
def _cancelling() -> bool:
    """True when this task has been asked to stop. redis-py's asyncio client (8.1) swallows
    a CancelledError that hits it mid-command and returns normally (measured: 3 of 4
    cancellations during an MGET), so every loop checks this itself, or it would never
    stop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _stop_if_cancelled() -> None:
    if _cancelling():
        raise asyncio.CancelledError


async def run_status_jobs(services: Services, primary: bool = True) -> None:
    """Run every job until cancelled. ``primary``: the first process of a gateway (extra
    worker processes leave one-off work to it when the cache is shared)."""
    jobs = [watch_revocations(services), refresh_loop(services), crl_loop(services)]
    if services.config.ocsp_warm and (primary or not services.cache.shared):
        jobs.append(warm(services))
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _start_generation(services: Services) -> int:
    """Where the watcher starts: the store's newest revocation, or (shared cache) the last
    one known to be in the cache, whichever is older, so that revocations made while no
    process could write the cache are replayed."""
    current = await services.store.revocation_generation()
    try:
        applied = await services.cache.applied_generation()
    except CacheUnavailable:
        applied = None
    return current if applied is None else min(current, applied)


async def watch_revocations(services: Services) -> None:
    interval = services.config.revocation_poll_ms / 1000
    cursor: int | None = None
    while True:
        _stop_if_cancelled()
        try:
            if cursor is None:
                cursor = await _start_generation(services)
            events = await services.store.revocations_since(cursor, 1000)
            if events:
                await services.ocsp.apply_revocations(events)
                cursor = events[-1].generation
                if not services.ocsp.has_pending:
                    try:
                        await services.cache.set_applied_generation(cursor)
                    except CacheUnavailable:
                        pass
                if len(events) == 1000:
                    continue  # more waiting: no pause
            elif services.ocsp.has_pending:
                await services.ocsp.apply_revocations([])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _cancelling():
                raise asyncio.CancelledError from exc
            log.warning("revocation watcher: %s", exc)
        await asyncio.sleep(interval)


async def refresh_once(services: Services) -> int:
    """One refresher round; returns how many OCSP responses were re-signed."""
    ocsp = services.ocsp
    await ocsp.maintain()
    store = services.store
    shared = services.cache.shared
    refreshed = 0
    async with held_lease(store, REFRESH_LOCK, ocsp.instance_id) if shared else _no_lease() \
            as held:
        if not held:
            return 0
        while True:
            count = await ocsp.refresh_due(REFRESH_BATCH)
            refreshed += count
            if count < REFRESH_BATCH:
                break
            _stop_if_cancelled()
            await asyncio.sleep(0)
    return refreshed


@asynccontextmanager
async def _no_lease() -> AsyncIterator[bool]:
    """In-process cache: every process refreshes its own, no lease."""
    yield True


async def _every(interval: float, job: str, round_: Callable[[], Awaitable[object]],
                 first_after: float | None = None) -> None:
    """Run ``round_`` every ``interval`` seconds (the first after ``first_after``) until
    cancelled; a failed round is logged and the next one comes as usual."""
    delay = interval if first_after is None else first_after
    while True:
        await asyncio.sleep(delay)
        delay = interval
        _stop_if_cancelled()
        try:
            await round_()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _cancelling():
                raise asyncio.CancelledError from exc
            log.warning("%s: %s", job, exc)


async def refresh_loop(services: Services) -> None:
    async def round_() -> None:
        started = time.perf_counter()
        refreshed = await refresh_once(services)
        if refreshed:
            log.info("re-signed %d OCSP responses in %.2f s", refreshed,
                     time.perf_counter() - started)

    await _every(services.config.ocsp_refresh_interval_seconds, "OCSP refresher", round_)


async def warm(services: Services) -> None:
    store = services.store
    ocsp = services.ocsp
    shared = services.cache.shared
    try:
        if shared and not await store.try_lock(WARM_LOCK, ocsp.instance_id, 3600):
            return
        try:
            started = time.perf_counter()
            limit = None if shared else services.config.ocsp_cache_max_entries
            signed = await ocsp.warm(limit=limit)
            if signed:
                log.info("precomputed %d OCSP responses in %.2f s", signed,
                         time.perf_counter() - started)
        finally:
            if shared:
                await store.release_lock(WARM_LOCK, ocsp.instance_id)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if _cancelling():
            raise asyncio.CancelledError from exc
        log.warning("OCSP cache warm-up: %s", exc)


async def publish_crls_once(services: Services) -> int:
    """One CRL round under the store lease; returns how many CRLs were published."""
    crls = services.crls
    if not await crls.due():
        return 0
    async with held_lease(services.store, CRL_LOCK, services.ocsp.instance_id) as held:
        if not held:
            return 0  # another process is publishing; it sees the same revocations
        published = await crls.publish_due()
    for crl in published:
        log.info("published CRL %d of %s%s: %d entries, %d bytes, in %.3f s",
                 crl.crl_number, crl.ca_name, f" partition {crl.partition}"
                 if crl.partition else "", crl.entries, crl.der_bytes, crl.seconds)
    return len(published)


async def crl_loop(services: Services) -> None:
    # The first round runs at once: a new gateway publishes its CRLs right away.
    await _every(services.config.crl_debounce_ms / 1000, "CRL publisher",
                 lambda: publish_crls_once(services), first_after=0)
