"""Job leases of the background jobs (gateway/status_jobs.py, issue 15): a lease is renewed
while its job runs, released after it, and a holder that dies (SIGKILL: no release) blocks
the job for ``LEASE_SECONDS`` at most, well within the 10 s in which another replica must
take the job over. Before, the CRL lease lasted 60 s and the OCSP refresh lease 180 s, so a
replica killed while publishing stopped CRL publishing for a minute."""

from __future__ import annotations

import asyncio
from pathlib import Path

from db.sqlite import SqliteStore
from gateway.status_jobs import CRL_LOCK, LEASE_SECONDS, held_lease


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
