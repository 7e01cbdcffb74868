"""Store contract of the OCSP/CRL additions, on SQLite and PostgreSQL: responders, the
revocation generation (commit order, per CA), status lookups, CRL numbers that only go up,
and job leases."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ca_core.records import CrlHead, CrlRecord, OcspResponderRecord, Revocation
from db.store import Store
from tests.pg import create_throwaway_database, drop_database, require_postgres
from tests.test_store_contract import (
    T0,
    Location,
    chain_ok,
    event,
    make_ca,
    make_cert,
    make_org,
    make_store,
    reset_schema,
)


@pytest.fixture(scope="session")
def ocsp_pg_database() -> Iterator[str]:
    require_postgres()
    dsn = asyncio.run(create_throwaway_database())
    yield dsn
    asyncio.run(drop_database(dsn))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "sqlite":
        return Location("sqlite", str(tmp_path / "store.db"))
    return Location("postgresql", request.getfixturevalue("ocsp_pg_database"))


@pytest.fixture
async def store(location: Location) -> AsyncIterator[Store]:
    if location.backend == "postgresql":
        await reset_schema(location.target)
    opened = make_store(location)
    await opened.open()
    yield opened
    await opened.close()


async def _seed(store: Store) -> tuple[str, str, str]:
    org = make_org()
    root = make_ca("root", "root", None, None)
    issuing = make_ca("acme-issuing", "issuing", org, root)
    other = make_ca("beta-issuing", "issuing", org, root)
    await store.add_organization(org, event("organization.created"))
    for ca in (root, issuing, other):
        await store.add_ca(ca, event("ca.created"))
    return org.org_id, issuing.ca_id, other.ca_id


async def test_revocation_generation_and_statuses(store: Store) -> None:
    org_id, ca_id, other_id = await _seed(store)
    org = dataclasses.replace(make_org(), org_id=org_id)
    issuing = dataclasses.replace(make_ca("x", "issuing", org, None), ca_id=ca_id)
    other = dataclasses.replace(make_ca("y", "issuing", org, None), ca_id=other_id)
    certs = [make_cert(issuing, org, serial_hex=f"{i:02x}aa") for i in range(1, 5)]
    certs.append(make_cert(other, org, serial_hex="05aa"))
    certs.append(dataclasses.replace(  # expired
        make_cert(issuing, org, serial_hex="06aa"),
        not_before=T0 - dt.timedelta(days=10), not_after=T0 - dt.timedelta(days=1)))
    for cert in certs:
        await store.add_certificate(cert, event("certificate.issued"))
    assert await store.revocation_generation() == 0
    assert await store.revocations_since(0) == []

    revoked = []
    for cert, reason in ((certs[2], "key_compromise"), (certs[4], "superseded"),
                         (certs[0], "unspecified")):
        revocation = Revocation(cert.issuer_ca_id, cert.serial_hex, cert.cert_id,
                                T0 + dt.timedelta(hours=1), reason)
        assert await store.revoke_certificate(revocation, event("certificate.revoked"))
        revoked.append(revocation)
    assert await store.revocation_generation() == 3
    assert await store.revocation_generation(ca_id) == 3
    assert await store.revocation_generation(other_id) == 2
    events = await store.revocations_since(0)
    assert [e.generation for e in events] == [1, 2, 3]
    assert [e.revocation for e in events] == revoked
    assert [e.generation for e in await store.revocations_since(1, limit=1)] == [2]

    statuses = {s.serial_hex: s for s in await store.certificate_statuses(
        ca_id, ["01aa", "03aa", "05aa", "ffff", "03aa"])}
    assert set(statuses) == {"01aa", "03aa"}  # 05aa is the other CA's, ffff unknown
    assert statuses["03aa"].status == "revoked"
    assert statuses["03aa"].revocation_reason == "key_compromise"
    assert statuses["03aa"].revoked_at == T0 + dt.timedelta(hours=1)
    assert statuses["01aa"].status == "revoked"
    page1 = await store.list_certificate_statuses(ca_id, T0, "", 2)
    page2 = await store.list_certificate_statuses(ca_id, T0, page1[-1].serial_hex, 2)
    page3 = await store.list_certificate_statuses(ca_id, T0, page2[-1].serial_hex, 2)
    assert [s.serial_hex for s in page1 + page2 + page3] == ["01aa", "02aa", "03aa", "04aa"]
    await chain_ok(store)


async def test_ocsp_responders(store: Store) -> None:
    org_id, ca_id, _ = await _seed(store)
    org = dataclasses.replace(make_org(), org_id=org_id)
    issuing = dataclasses.replace(make_ca("x", "issuing", org, None), ca_id=ca_id)
    records = []
    for days in (30, 60):
        cert = make_cert(issuing, org, profile="ocsp_signing")
        await store.add_certificate(cert, event("certificate.issued"))
        record = OcspResponderRecord(
            responder_id=str(uuid.uuid4()), ca_id=ca_id, cert_id=cert.cert_id,
            key_ref=f"file:vcc-ocsp-{days}", key_backend="software",
            certificate_der=cert.certificate_der, not_before=T0,
            not_after=T0 + dt.timedelta(days=days), created_at=T0,
        )
        await store.add_ocsp_responder(record, event("ocsp_responder.created"))
        records.append(record)
    assert await store.list_ocsp_responders(ca_id) == records[::-1]
    assert await store.list_ocsp_responders() == records[::-1]
    assert await store.list_ocsp_responders(str(uuid.uuid4())) == []
    await chain_ok(store)


async def test_crl_numbers_only_go_up(store: Store) -> None:
    _, ca_id, _ = await _seed(store)

    def crl(number: int, partition: int = 0) -> CrlRecord:
        return CrlRecord(CrlHead(ca_id, partition, number, T0, T0 + dt.timedelta(days=1),
                                 number * 10, number), f"crl-{number}".encode())

    assert await store.get_crl(ca_id) is None
    assert await store.get_crl_head(ca_id) is None
    assert await store.save_crl(crl(1), event("crl.published"))
    assert await store.save_crl(crl(2), event("crl.published"))
    assert not await store.save_crl(crl(2), event("crl.published"))
    assert not await store.save_crl(crl(1), event("crl.published"))
    assert await store.save_crl(crl(1, partition=3), event("crl.published"))
    assert await store.get_crl(ca_id) == crl(2)
    assert await store.get_crl(ca_id, 3) == crl(1, partition=3)
    assert await store.list_crl_heads() == [crl(2).head, crl(1, partition=3).head]
    assert await store.get_crl_head(ca_id) == crl(2).head
    assert await store.get_crl_head(ca_id, 3) == crl(1, partition=3).head
    assert await store.get_crl_head(ca_id, 4) is None
    assert await chain_ok(store) == 1 + 3 + 3  # organization, three CAs, three saved CRLs


async def test_job_leases(store: Store) -> None:
    assert await store.try_lock("job", "a", 30)
    assert await store.try_lock("job", "a", 30)  # the holder extends
    assert not await store.try_lock("job", "b", 30)
    assert await store.try_lock("other", "b", 30)
    await store.release_lock("job", "b")  # not b's: nothing happens
    assert not await store.try_lock("job", "b", 30)
    await store.release_lock("job", "a")
    assert await store.try_lock("job", "b", 0.05)
    await asyncio.sleep(0.1)  # the lease lapses by the clock; nothing to poll for
    assert await store.try_lock("job", "a", 30)
