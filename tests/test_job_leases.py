"""Job leases of the background jobs (gateway/status_jobs.py, issue 15): a lease is renewed
while its job runs, released after it, and a holder that dies (SIGKILL: no release) blocks
the job for ``LEASE_SECONDS`` at most, well within the 10 s in which another replica must
take the job over. Before, the CRL lease lasted 60 s and the OCSP refresh lease 180 s, so a
replica killed while publishing stopped CRL publishing for a minute; the OCSP responder
certificate renewal (``ocsp-responder:<ca>``) held an unrenewed 120 s lease until it too
moved to ``held_lease``."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from ca_core.ocsp import OcspResponder, responder_lease
from db.cache import MemoryResponseCache
from db.sqlite import SqliteStore
from gateway.status_jobs import CRL_LOCK, LEASE_SECONDS, held_lease
from tests.helpers import fresh_services


class RecordingLeases:
    """Only the two calls held_lease makes, recorded (the SQL behind them has the store
    contract tests)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.holder: str | None = None

    async def try_lock(self, name: str, holder: str, ttl_seconds: float) -> bool:
        self.calls.append(("lock", name, holder))
        if self.holder in (None, holder):
            self.holder = holder
            return True
        return False

    async def release_lock(self, name: str, holder: str) -> None:
        self.calls.append(("release", name, holder))
        if self.holder == holder:
            self.holder = None


async def test_a_held_lease_is_renewed_until_released() -> None:
    leases = RecordingLeases()
    async with held_lease(leases, "job", "me", ttl=0.06) as held:
        assert held
        while sum(call[0] == "lock" for call in leases.calls) < 3:  # taken, renewed twice
            await asyncio.sleep(0.01)  # polling interval
    assert leases.calls[-1] == ("release", "job", "me")
    # The renewal task is gone with the block: no renewal after the release.
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "lease-renewal:job"]


async def test_a_lease_held_elsewhere_is_not_taken_nor_released() -> None:
    leases = RecordingLeases()
    leases.holder = "other"
    async with held_lease(leases, "job", "me") as held:
        assert not held
    assert leases.calls == [("lock", "job", "me")]
    assert leases.holder == "other"


async def test_a_dead_holders_crl_lease_frees_within_10_s(tmp_path: Path) -> None:
    """The dead replica took the lease as publish_crls_once does and never released it."""
    assert LEASE_SECONDS < 10
    store = SqliteStore(tmp_path / "pki.db")
    await store.open()
    try:
        assert await store.try_lock(CRL_LOCK, "killed-replica", LEASE_SECONDS)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not await store.try_lock(CRL_LOCK, "survivor", LEASE_SECONDS):
            assert loop.time() - started < 10, "the dead holder's lease outlived 10 s"
            await asyncio.sleep(0.1)  # polling interval
    finally:
        await store.close()


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


async def test_a_dead_holders_responder_renewal_is_taken_over_within_10_s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The responder certificate renewal takes the short renewed lease (not 120 s): a
    replica killed while renewing (its lease taken as the responder takes it, never
    released) delays the renewal on the survivor by LEASE_SECONDS at most."""
    async with fresh_services(tmp_path) as services:
        store = services.authority.store
        clock = Clock()
        services.authority.clock = clock
        survivor = OcspResponder(services.authority, MemoryResponseCache(), clock=clock)
        await survivor.load(create=True)
        issuer = next(iter(survivor._by_ca_id.values()))
        assert issuer.responder is not None
        old = issuer.responder.record
        lease = responder_lease(issuer.ca_id)
        ttls: list[float] = []
        try_lock = store.try_lock

        async def recording(name: str, holder: str, ttl_seconds: float) -> Any:
            if name == lease:
                ttls.append(ttl_seconds)
            return await try_lock(name, holder, ttl_seconds)

        monkeypatch.setattr(store, "try_lock", recording)
        assert await store.try_lock(lease, "killed-replica", LEASE_SECONDS)
        # The responder certificate is due: the survivor wants to renew it.
        clock.now = old.not_after - dt.timedelta(days=8)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            await survivor.maintain()
            assert issuer.responder is not None
            if issuer.responder.record.responder_id != old.responder_id:
                break
            assert loop.time() - started < 10, "the dead holder's lease outlived 10 s"
            await asyncio.sleep(0.2)  # polling interval
        print(f"\nresponder renewal taken over after {loop.time() - started:.1f} s")
        assert ttls and set(ttls) == {LEASE_SECONDS}, ttls
