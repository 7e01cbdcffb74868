"""The status gauges behind the alert rules in deploy/prometheus (issue 15): CA notAfter,
CRL thisUpdate/nextUpdate, certificates expiring within 30 days, and the audit chain check
(gateway.server). The rules' promtool tests assume these meanings."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import pytest

from ca_core.authority import IssuanceRequest
from ca_core.metrics import (
    ACTIVE_CERTIFICATES_EXPIRING,
    AUDIT_CHAIN_CHECKED,
    AUDIT_CHAIN_INTACT,
    CA_NOT_AFTER,
    CRL_NEXT_UPDATE,
    CRL_THIS_UPDATE,
)
from ca_core.principal import Principal
from gateway import server
from gateway.runtime import Services
from tests.helpers import make_csr

SYSTEM = Principal.system("test")


def _value(gauge: object, *labels: str) -> float:
    # prometheus_client keeps no public read accessor for one child's value
    return float(gauge.labels(*labels)._value.get())  # type: ignore[attr-defined]


async def _refresh(services: Services) -> None:
    counts = await services.store.count_active_certificates(services.authority.clock())
    orgs = {o.org_id: o.slug for o in await services.store.list_organizations()}
    await server._refresh_status_gauges(services, counts, orgs)


async def test_ca_crl_and_expiry_gauges(services: Services) -> None:
    for days in (10, 60, 60):
        await services.authority.issue(IssuanceRequest(
            csr=make_csr(), profile="vcc_service", validity_days=days), SYSTEM)
    await services.crls.publish_all("default-issuing")
    await _refresh(services)
    for ca in await services.store.list_cas():
        assert _value(CA_NOT_AFTER, ca.name, ca.ca_type, ca.status) == ca.not_after.timestamp()
    issuing = await services.store.get_ca("default-issuing")
    assert issuing is not None
    head = next(h for h in await services.store.list_crl_heads()
                if h.ca_id == issuing.ca_id and h.partition == 0)
    assert _value(CRL_THIS_UPDATE, "default-issuing", "0") == head.this_update.timestamp()
    assert _value(CRL_NEXT_UPDATE, "default-issuing", "0") == head.next_update.timestamp()
    # one of the three within 30 days
    assert _value(ACTIVE_CERTIFICATES_EXPIRING, "default", "vcc_service") == 1


@pytest.mark.tampers_audit
async def test_audit_chain_gauge(services: Services) -> None:
    async def one_check() -> None:
        # the lease of the last round would keep this one from checking before the hour
        await services.store.release_lock(server.AUDIT_LOCK, services.ocsp.instance_id)
        task = asyncio.create_task(server._check_audit_chain(services))
        before = AUDIT_CHAIN_CHECKED._value.get()  # type: ignore[attr-defined]
        while AUDIT_CHAIN_CHECKED._value.get() == before:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)  # polling for the first round to finish
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    await one_check()
    assert AUDIT_CHAIN_INTACT._value.get() == 1  # type: ignore[attr-defined]
    with sqlite3.connect(services.config.data_dir / "vcc-pki.db") as conn:
        conn.execute("UPDATE audit_log SET actor_id = 'mallory' WHERE seq = 2")
    await one_check()
    assert AUDIT_CHAIN_INTACT._value.get() == 0  # type: ignore[attr-defined]


@pytest.mark.tampers_audit
async def test_audit_chain_read_in_batches(services: Services,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch by batch, it finds what `vcc-pki audit verify` finds: intact, then a changed
    entry, then a deleted tail (the head names an entry that is gone)."""
    monkeypatch.setattr(server, "AUDIT_BATCH", 2)
    entries = len(await services.store.audit_entries(limit=100))
    assert entries > 4  # several batches
    assert await server.verify_audit_chain(services.store) == []
    path = services.config.data_dir / "vcc-pki.db"
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)")
    [problem] = await server.verify_audit_chain(services.store)
    assert problem.problem.startswith("head says seq")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit_log SET actor_id = 'mallory' WHERE seq = 3")
    problems = await server.verify_audit_chain(services.store)
    assert [p.seq for p in problems][:1] == [3]
