"""Job leases held for as long as a job runs (issue 15).

A background job that must run in one process at a time (OCSP refresh, CRL publishing,
responder certificate renewal) takes a short lease in the store and renews it while it runs
(``held_lease``). A holder killed while holding one (SIGKILL, OOM, a lost node) blocks the
job for ``LEASE_SECONDS`` at most, so another replica takes the job over within seconds.
Here, not in gateway/, because ca_core's OCSP responder renews its certificates under one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from ca_core.storage import LeaseStore

log = logging.getLogger("vcc_pki.leases")

# How long a dead holder's lease blocks a job; renewed every third of it while held.
LEASE_SECONDS = 6.0


@asynccontextmanager
async def held_lease(store: LeaseStore, name: str, holder: str,
                     ttl: float = LEASE_SECONDS) -> AsyncIterator[bool]:
    """Take the lease ``name`` (yields False when another holder has it) and renew it every
    ``ttl / 3`` seconds until the block ends, then release it. A long job keeps its lease; a
    holder that dies loses it ``ttl`` seconds later at most."""
    if not await store.try_lock(name, holder, ttl):
        yield False
        return

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                await store.try_lock(name, holder, ttl)
            except Exception as exc:  # the store is down: the job itself will notice
                log.warning("renewing lease %s: %s", name, exc)

    renewer = asyncio.create_task(renew(), name=f"lease-renewal:{name}")
    try:
        yield True
    finally:
        renewer.cancel()
        with suppress(asyncio.CancelledError):
            await renewer
        await store.release_lock(name, holder)
