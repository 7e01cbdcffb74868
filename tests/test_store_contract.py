"""The Store contract, run against both backends: SQLite (a temp file) and PostgreSQL (one
throwaway database per session, a clean schema per test). Tampering goes through raw SQL
on the backend's own connection, never through the store."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import fcntl
import hashlib
import logging
import os
import re
import secrets
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import db.sqlite as sqlite_module
from ca_core.est import AuthMethod, EnrollmentSecretRecord, EstLabel, PendingEnrollment
from ca_core.records import (
    AcmeAccount,
    AcmeAuthorization,
    AcmeChallenge,
    AcmeOrder,
    ApiToken,
    AuditEvent,
    CARecord,
    CertificateRecord,
    CodeSignatureRecord,
    CodeSignerRecord,
    CrossCertificateRecord,
    EabKey,
    Organization,
    Revocation,
    ServiceRecord,
    TemplateRecord,
    TimeStampRecord,
)
from ca_core.scep import ScepChallenge, ScepRaRecord, ScepTransaction
from ca_core.storage import (
    StoreConflict,
    StoreError,
    StoreInvalid,
    StoreOrganizationInactive,
    StoreUnavailable,
)
from db.audit_chain import verify_chain
from db.dialect import Stmt
from db.migrations import migrations
from db.postgres import OUTAGE, PostgresStore
from db.sqlite import SqliteStore
from db.store import Store
from tests.pg import create_throwaway_database, drop_database, require_postgres

UTC = dt.UTC
CEST = dt.timezone(dt.timedelta(hours=2))
T0 = dt.datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)


@dataclass(frozen=True)
class Location:
    """Where a test's store lives: a SQLite file or a PostgreSQL DSN."""

    backend: str
    target: str


# --- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """One throwaway database for the whole session (dropped at the end)."""
    require_postgres()
    dsn = asyncio.run(create_throwaway_database())
    yield dsn
    asyncio.run(drop_database(dsn))


@pytest.fixture
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    """Resolved outside the event loop (the session fixture runs asyncio.run)."""
    backend: str = request.node.callspec.params["store"]
    if backend == "sqlite":
        return Location("sqlite", str(tmp_path / "store.db"))
    return Location("postgresql", request.getfixturevalue("pg_database"))


async def reset_schema(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()


def make_store(where: Location) -> Store:
    if where.backend == "sqlite":
        return SqliteStore(where.target)
    return PostgresStore(where.target, min_size=1, max_size=10)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def store(location: Location) -> AsyncIterator[Store]:
    if location.backend == "postgresql":
        await reset_schema(location.target)
    opened = make_store(location)
    await opened.open()
    yield opened
    await opened.close()


async def raw_sql(where: Location, sql: str) -> list[tuple[Any, ...]]:
    """One statement on the backend's own connection, behind the store's back."""
    if where.backend == "sqlite":
        def run() -> list[tuple[Any, ...]]:
            conn = sqlite3.connect(where.target, isolation_level=None)
            try:
                return [tuple(row) for row in conn.execute(sql).fetchall()]
            finally:
                conn.close()
        return await asyncio.to_thread(run)
    conn = await asyncpg.connect(where.target)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


# --- records ----------------------------------------------------------------------------

def event(event_type: str = "certificate.issued", **data: Any) -> AuditEvent:
    category, action = event_type.split(".", 1)
    return AuditEvent(
        event_type=event_type, category=category, action=action, actor_type="api",
        actor_id="token-ops-1", resource_type=category, resource_id=str(uuid.uuid4()),
        data=data,
    )


def make_org(slug: str = "acme", created_at: dt.datetime = T0) -> Organization:
    return Organization(
        org_id=str(uuid.uuid4()), slug=slug, name=f"{slug.title()} Corp.",
        config={"allowed_domains": [f"{slug}.example", f"*.{slug}.example"],
                "max_validity_days": 397, "acme": {"eab_required": True}},
        created_at=created_at,
    )


def make_ca(
    name: str, ca_type: str, org: Organization | None, parent: CARecord | None,
    created_at: dt.datetime = T0,
) -> CARecord:
    return CARecord(
        ca_id=str(uuid.uuid4()), name=name, ca_type=ca_type,
        org_id=org.org_id if org else None, parent_ca_id=parent.ca_id if parent else None,
        subject_dn=f"CN={name},O=VCC,C=DE", serial_hex=secrets.token_hex(16),
        certificate_der=b"\x30\x82\x01\x0a" + secrets.token_bytes(262),
        key_ref=f"pkcs11:token=vcc;object={name}", key_backend="pkcs11",
        key_algorithm="ec", key_size=384,
        not_before=T0 - dt.timedelta(days=1), not_after=T0 + dt.timedelta(days=3650),
        created_at=created_at,
    )


def make_cert(
    issuer: CARecord, org: Organization, serial_hex: str | None = None,
    cn: str = "svc.acme.example", profile: str = "tls-server",
    not_after: dt.datetime | None = None,
) -> CertificateRecord:
    return CertificateRecord(
        cert_id=str(uuid.uuid4()), issuer_ca_id=issuer.ca_id, org_id=org.org_id,
        serial_hex=serial_hex or secrets.token_hex(16), subject_dn=f"CN={cn}",
        common_name=cn, profile=profile,
        certificate_der=b"\x30\x82\x02\x1c" + secrets.token_bytes(540),
        key_algorithm="ec", key_size=256,
        san={"dns": [cn, f"www.{cn}"], "ip": ["192.0.2.10", "2001:db8::10"]},
        not_before=T0, not_after=not_after or T0 + dt.timedelta(days=90),
        requester="acme:account/42",
    )


@dataclass(frozen=True)
class Seed:
    org: Organization
    root: CARecord
    issuing: CARecord


@pytest.fixture
async def seed(store: Store) -> Seed:
    org = make_org()
    root = make_ca("VCC Root CA 2025", "root", None, None, created_at=T0)
    issuing = make_ca("VCC Issuing CA 1", "issuing", org, root,
                      created_at=T0 + dt.timedelta(seconds=1))
    await store.add_organization(org, event("organization.created", slug=org.slug))
    await store.add_ca(root, event("ca.created", name=root.name))
    await store.add_ca(issuing, event("ca.created", name=issuing.name))
    return Seed(org, root, issuing)


async def chain_ok(store: Store) -> int:
    """Assert the audit chain is intact; returns its length."""
    entries = await store.audit_entries()
    head = await store.audit_head()
    assert verify_chain(entries, head) == []
    return len(entries)


# --- migrations, ping, lifecycle --------------------------------------------------------

async def test_fresh_store_has_empty_chain(store: Store) -> None:
    assert await store.audit_entries() == []
    assert await store.audit_head() is None
    assert await store.list_organizations() == []


async def test_migrations_are_idempotent(store: Store, seed: Seed, location: Location) -> None:
    again = make_store(location)
    await again.open()
    try:
        assert await again.get_organization("acme") == await store.get_organization("acme")
        assert await chain_ok(again) == 3
    finally:
        await again.close()
    rows = await raw_sql(location, "SELECT version, name FROM schema_migrations ORDER BY version")
    dialect = "sqlite" if location.backend == "sqlite" else "postgres"
    assert rows == [(version, name) for version, name, _ in migrations(dialect)]


@pytest.mark.postgres
async def test_certificate_search_uses_trigram_indexes_on_postgresql() -> None:
    """The admin list's substring search (q) has pg_trgm indexes on PostgreSQL (migration
    0016), and the planner takes them for a search over many certificates."""
    require_postgres()
    dsn = await asyncio.to_thread(asyncio.run, create_throwaway_database())
    try:
        store = PostgresStore(dsn, min_size=1, max_size=2)
        await store.open()
        await store.close()
        conn = await asyncpg.connect(dsn)
        try:
            indexes = {r["indexname"] for r in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'certificates'")}
            assert "idx_certificates_search_trgm" in indexes
            await conn.execute("SET enable_seqscan = off")
            plan = "\n".join(r[0] for r in await conn.fetch(
                "EXPLAIN SELECT * FROM certificates WHERE"
                " LOWER(subject_dn || ' ' || CAST(san AS TEXT)) LIKE $1 ESCAPE '\\'",
                "%host12345%"))
            assert "idx_certificates_search_trgm" in plan, plan
        finally:
            await conn.close()
    finally:
        await drop_database(dsn)


@pytest.mark.postgres
async def test_concurrent_open_applies_migrations_once() -> None:
    """Gateway processes starting together: the advisory lock lets one migrate."""
    require_postgres()
    dsn = await asyncio.to_thread(asyncio.run, create_throwaway_database())
    try:
        stores = [PostgresStore(dsn, min_size=1, max_size=2) for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        for s in stores:
            await s.close()
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations")
            head = await conn.fetchrow("SELECT seq, audit_hash FROM audit_head")
        finally:
            await conn.close()
        assert sorted(r["version"] for r in rows) == [v for v, _, _ in migrations("postgres")]
        assert head is not None and head["seq"] == 0
    finally:
        await asyncio.to_thread(asyncio.run, drop_database(dsn))


async def test_ping(store: Store) -> None:
    info = await store.ping()
    assert info["backend"] == store.backend
    assert isinstance(info["query_time_ms"], float)
    if store.backend == "postgresql":
        assert isinstance(info["pool_size"], int) and info["pool_size"] >= 1
        assert isinstance(info["pool_idle"], int)


async def test_closed_store_is_unavailable(store: Store, location: Location) -> None:
    other = make_store(location)
    await other.open()
    await other.close()
    with pytest.raises(StoreUnavailable):
        await other.ping()
    with pytest.raises(StoreUnavailable):
        await other.append_audit(event("authentication.failed"))
    with pytest.raises(StoreUnavailable):  # a key lookup (inline on SQLite) as well
        await other.get_organization("acme")
    with pytest.raises(StoreUnavailable):
        await other.list_organizations()


def test_postgres_from_url() -> None:
    assert isinstance(PostgresStore.from_url("postgresql://u:p@db:5432/pki"), PostgresStore)
    assert isinstance(PostgresStore.from_url("postgres://u@db/pki?sslmode=require"),
                      PostgresStore)
    with pytest.raises(ValueError):
        PostgresStore.from_url("mysql://u@db/pki")


async def test_postgres_unreachable_is_unavailable() -> None:
    unreachable = PostgresStore("postgresql://postgres@127.0.0.1:1/postgres", min_size=1)
    with pytest.raises(StoreUnavailable):
        await unreachable.open()


# --- organizations, CAs -----------------------------------------------------------------

async def test_organizations(store: Store) -> None:
    acme = make_org("acme", created_at=T0)
    globex = make_org("globex", created_at=T0 + dt.timedelta(minutes=5))
    await store.add_organization(acme, event("organization.created", slug="acme"))
    await store.add_organization(globex, event("organization.created", slug="globex"))
    assert await store.get_organization("acme") == acme
    assert await store.get_organization_by_id(globex.org_id) == globex
    assert await store.get_organization("initech") is None
    assert await store.get_organization_by_id(str(uuid.uuid4())) is None
    assert await store.list_organizations() == [acme, globex]
    with pytest.raises(StoreConflict):
        await store.add_organization(make_org("acme"), event("organization.created"))
    assert await chain_ok(store) == 2


async def test_organization_created_at_defaults_to_now(store: Store) -> None:
    before = dt.datetime.now(UTC)
    await store.add_organization(replace(make_org(), created_at=None), event("organization.x"))
    got = await store.get_organization("acme")
    assert got is not None and got.created_at is not None
    assert before <= got.created_at <= dt.datetime.now(UTC)


async def test_certificate_authorities(store: Store, seed: Seed) -> None:
    assert await store.get_ca(seed.root.name) == seed.root
    assert await store.get_ca_by_id(seed.issuing.ca_id) == seed.issuing
    assert await store.get_ca("nope") is None
    assert await store.get_ca_by_id(str(uuid.uuid4())) is None
    assert await store.list_cas() == [seed.root, seed.issuing]
    duplicate = make_ca(seed.root.name, "root", None, None)
    with pytest.raises(StoreConflict):
        await store.add_ca(duplicate, event("ca.created"))
    assert await chain_ok(store) == 3


async def test_cross_certificates(store: Store, seed: Seed) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cross = CrossCertificateRecord(
        cross_id=str(uuid.uuid4()), ca_id=seed.issuing.ca_id, fingerprint="ab" * 32,
        chain_pem="-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
        top_issuer="CN=Bridge Root", not_after=now + dt.timedelta(days=365))
    assert await store.list_cross_certificates() == []
    await store.add_cross_certificate(cross, event("ca.cross_certificate_added"))
    got = await store.list_cross_certificates([seed.issuing.ca_id])
    assert len(got) == 1 and got[0] == replace(cross, created_at=got[0].created_at)
    assert got[0].not_after == cross.not_after and got[0].created_at is not None
    assert await store.list_cross_certificates([seed.root.ca_id]) == []
    assert await store.list_cross_certificates([]) == []
    assert await store.list_cross_certificates() == got
    with pytest.raises(StoreConflict):  # the same cross-certificate twice
        await store.add_cross_certificate(replace(cross, cross_id=str(uuid.uuid4())),
                                          event("ca.cross_certificate_added"))
    assert await chain_ok(store) == 4


# --- certificates -----------------------------------------------------------------------

async def test_certificates_add_get_find(store: Store, seed: Seed) -> None:
    cert = make_cert(seed.issuing, seed.org)
    await store.add_certificate(cert, event(serial=cert.serial_hex))
    got = await store.get_certificate(seed.issuing.ca_id, cert.serial_hex)
    assert got is not None
    assert got == replace(cert, created_at=got.created_at)
    assert got.created_at is not None and got.created_at.tzinfo is not None
    assert await store.find_certificates_by_serial(cert.serial_hex) == [got]
    assert await store.get_certificate(seed.root.ca_id, cert.serial_hex) is None
    assert await store.find_certificates_by_serial("00" * 16) == []
    assert await chain_ok(store) == 4


async def test_duplicate_serial_conflicts_and_leaves_audit_alone(
    store: Store, seed: Seed
) -> None:
    cert = make_cert(seed.issuing, seed.org)
    await store.add_certificate(cert, event(serial=cert.serial_hex))
    entries, head = await store.audit_entries(), await store.audit_head()
    clash = make_cert(seed.issuing, seed.org, serial_hex=cert.serial_hex, cn="other.example")
    with pytest.raises(StoreConflict):
        await store.add_certificate(clash, event(serial=cert.serial_hex))
    assert await store.audit_entries() == entries
    assert await store.audit_head() == head
    assert await store.find_certificates_by_serial(cert.serial_hex) == [
        await store.get_certificate(seed.issuing.ca_id, cert.serial_hex)
    ]
    # The store is still usable after the failed transaction.
    await store.add_certificate(make_cert(seed.issuing, seed.org), event())
    assert await chain_ok(store) == 5


async def test_unknown_references_conflict(store: Store, seed: Seed) -> None:
    orphan = make_cert(seed.issuing, make_org("ghost"))
    with pytest.raises(StoreOrganizationInactive):  # an unknown organization is not active
        await store.add_certificate(orphan, event())
    unknown_issuer = dataclasses.replace(seed.issuing, ca_id=str(uuid.uuid4()))
    with pytest.raises(StoreConflict):
        await store.add_certificate(make_cert(unknown_issuer, seed.org), event())
    assert await chain_ok(store) == 3


async def test_a_disabled_organization_gets_no_certificate(store: Store, seed: Seed) -> None:
    """The certificate's write itself checks that its organization is active (the
    Authority keeps no read of its own per issuance): disabled, nothing is written, by
    every write that adds a certificate; enabled again, it is."""
    await store.update_organization(seed.org.org_id, seed.org.name, "disabled",
                                    seed.org.config, event("organization.updated"))
    refused = make_cert(seed.issuing, seed.org)
    with pytest.raises(StoreOrganizationInactive):
        await store.add_certificate(refused, event())
    assert await store.get_certificate_by_id(refused.cert_id) is None
    assert await chain_ok(store) == 4
    await store.update_organization(seed.org.org_id, seed.org.name, "active",
                                    seed.org.config, event("organization.updated"))
    await store.add_certificate(refused, event())
    assert await store.get_certificate_by_id(refused.cert_id) is not None
    assert await chain_ok(store) == 6


async def test_same_serial_under_two_issuers(store: Store, seed: Seed) -> None:
    serial = secrets.token_hex(16)
    a = make_cert(seed.issuing, seed.org, serial_hex=serial)
    b = make_cert(seed.root, seed.org, serial_hex=serial, profile="sub-ca")
    await store.add_certificate(a, event(serial=serial))
    await store.add_certificate(b, event(serial=serial))
    found = await store.find_certificates_by_serial(serial)
    assert sorted(c.cert_id for c in found) == sorted([a.cert_id, b.cert_id])
    assert await chain_ok(store) == 5


async def test_revoke(store: Store, seed: Seed) -> None:
    cert = make_cert(seed.issuing, seed.org)
    await store.add_certificate(cert, event(serial=cert.serial_hex))
    revocation = Revocation(
        ca_id=seed.issuing.ca_id, serial_hex=cert.serial_hex, cert_id=cert.cert_id,
        revoked_at=T0 + dt.timedelta(days=3, microseconds=17), reason="key_compromise",
        invalidity_date=(T0 + dt.timedelta(days=2)).astimezone(CEST),
    )
    updated = await store.revoke_certificate(revocation, event("certificate.revoked"))
    assert updated is not None
    assert updated.status == "revoked"
    assert updated.revoked_at == revocation.revoked_at
    assert updated.revocation_reason == "key_compromise"
    assert updated.invalidity_date == revocation.invalidity_date
    assert updated.created_at is not None
    assert updated == replace(
        cert, status="revoked", revoked_at=revocation.revoked_at,
        revocation_reason="key_compromise", invalidity_date=revocation.invalidity_date,
        created_at=updated.created_at,
    )
    assert await store.get_certificate(seed.issuing.ca_id, cert.serial_hex) == updated
    assert await store.list_revocations(seed.issuing.ca_id) == [revocation]
    assert await store.list_revocations(seed.root.ca_id) == []
    assert await chain_ok(store) == 5

    again = replace(revocation, revoked_at=T0 + dt.timedelta(days=9), reason="superseded")
    assert await store.revoke_certificate(again, event("certificate.revoked")) is None
    assert await store.get_certificate(seed.issuing.ca_id, cert.serial_hex) == updated
    assert await store.list_revocations(seed.issuing.ca_id) == [revocation]
    assert await chain_ok(store) == 5


async def test_crl_partition_is_kept_and_copied_into_the_crl_entry(
        store: Store, seed: Seed) -> None:
    cert = replace(make_cert(seed.issuing, seed.org), crl_partition=7)
    await store.add_certificate(cert, event(serial=cert.serial_hex))
    stored = await store.get_certificate(seed.issuing.ca_id, cert.serial_hex)
    assert stored is not None and stored.crl_partition == 7
    # The store takes the partition from the certificate, whatever the caller says.
    revocation = Revocation(seed.issuing.ca_id, cert.serial_hex, cert.cert_id, T0,
                            "superseded")
    updated = await store.revoke_certificate(revocation, event("certificate.revoked"))
    assert updated is not None and updated.crl_partition == 7
    (entry,) = await store.list_revocations(seed.issuing.ca_id)
    assert entry.crl_partition == 7
    assert await store.list_revocations(seed.issuing.ca_id, 7) == [entry]
    assert await store.list_revocations(seed.issuing.ca_id, 3) == []
    (since,) = await store.revocations_since(0)
    assert since.revocation.crl_partition == 7


async def test_revoke_unknown(store: Store, seed: Seed) -> None:
    unknown = Revocation(
        ca_id=seed.issuing.ca_id, serial_hex=secrets.token_hex(16),
        cert_id=str(uuid.uuid4()), revoked_at=T0, reason="unspecified",
    )
    assert await store.revoke_certificate(unknown, event("certificate.revoked")) is None
    assert await store.list_revocations(seed.issuing.ca_id) == []
    assert await chain_ok(store) == 3


async def test_add_certificate_superseding(store: Store, seed: Seed) -> None:
    """The new certificate and the old one's revocation in one transaction: both or
    neither."""
    old = make_cert(seed.issuing, seed.org)
    await store.add_certificate(old, event(serial=old.serial_hex))
    revocation = Revocation(seed.issuing.ca_id, old.serial_hex, old.cert_id, T0,
                            "superseded")
    new = make_cert(seed.issuing, seed.org)
    revoked = await store.add_certificate_superseding(
        new, event(serial=new.serial_hex), revocation, event("certificate.revoked"))
    assert revoked is not None and revoked.cert_id == old.cert_id
    assert revoked.status == "revoked" and revoked.revocation_reason == "superseded"
    assert await store.get_certificate(seed.issuing.ca_id, new.serial_hex) is not None
    assert await store.list_revocations(seed.issuing.ca_id) == [revocation]
    assert await chain_ok(store) == 6
    # the old one revoked already: nothing is written
    newer = make_cert(seed.issuing, seed.org)
    assert await store.add_certificate_superseding(
        newer, event(), revocation, event("certificate.revoked")) is None
    assert await store.get_certificate(seed.issuing.ca_id, newer.serial_hex) is None
    # a serial clash of the new one: nothing is written, the old one stays active
    live = make_cert(seed.issuing, seed.org)
    await store.add_certificate(live, event())
    clash = make_cert(seed.issuing, seed.org, serial_hex=new.serial_hex)
    with pytest.raises(StoreConflict):
        await store.add_certificate_superseding(
            clash, event(), Revocation(seed.issuing.ca_id, live.serial_hex, live.cert_id, T0,
                                       "superseded"), event("certificate.revoked"))
    still = await store.get_certificate(seed.issuing.ca_id, live.serial_hex)
    assert still is not None and still.status == "active"
    assert await store.list_revocations(seed.issuing.ca_id) == [revocation]
    assert await chain_ok(store) == 7


async def test_count_active_certificates(store: Store, seed: Seed) -> None:
    now = T0 + dt.timedelta(days=30)
    other = make_org("globex")
    await store.add_organization(other, event("organization.created"))
    certs = [
        make_cert(seed.issuing, seed.org),
        make_cert(seed.issuing, seed.org),
        make_cert(seed.issuing, seed.org, profile="tls-client"),
        make_cert(seed.issuing, other),
        # expired (not_after == now counts as expired too)
        make_cert(seed.issuing, seed.org, not_after=now - dt.timedelta(microseconds=1)),
        make_cert(seed.issuing, other, not_after=now),
    ]
    revoked = make_cert(seed.issuing, seed.org)
    for cert in [*certs, revoked]:
        await store.add_certificate(cert, event(serial=cert.serial_hex))
    await store.revoke_certificate(
        Revocation(seed.issuing.ca_id, revoked.serial_hex, revoked.cert_id, now, "superseded"),
        event("certificate.revoked"),
    )
    counts = sorted(await store.count_active_certificates(now))
    assert counts == sorted([
        (seed.org.org_id, "tls-server", 2),
        (seed.org.org_id, "tls-client", 1),
        (other.org_id, "tls-server", 1),
    ])


# --- templates, tokens ------------------------------------------------------------------

async def test_templates_upsert(store: Store, seed: Seed) -> None:
    """Built-ins are published (and re-published) per (scope, slug); not audited."""
    server = TemplateRecord(
        slug="tls-server", name="TLS server", purpose="server",
        definition={"key_usage": ["digitalSignature"], "eku": ["serverAuth"],
                    "max_validity_days": 397},
    )
    client = TemplateRecord(
        slug="acme-client", name="Client", purpose="client",
        definition={"eku": ["clientAuth"]}, org_id=seed.org.org_id,
    )
    await store.upsert_template(server)
    await store.upsert_template(client)

    def key(r: TemplateRecord) -> tuple[Any, ...]:
        return (r.slug, r.name, r.purpose, r.definition, r.org_id, r.base, r.status)
    assert [key(r) for r in await store.list_templates()] == [key(client), key(server)]
    changed = replace(server, name="TLS server (short)",
                      definition={**server.definition, "max_validity_days": 90})
    await store.upsert_template(changed)
    listed = await store.list_templates()
    assert [key(r) for r in listed] == [key(client), key(changed)]
    assert listed[1].template_id == "/tls-server" and listed[1].created_at is not None
    assert await chain_ok(store) == 3  # templates are configuration, not audited here


def make_template(slug: str, org: Organization | None, n: int = 0,
                  **changes: Any) -> TemplateRecord:
    record = TemplateRecord(
        slug=slug, name=slug, purpose="vcc_service",
        definition={"name": slug, "max_validity_days": 30 + n}, org_id=org and org.org_id,
        template_id=f"tpl-{slug}-{org.slug if org else 'global'}", base="vcc_service",
        description=f"{slug} {n}", created_by="token:ops",
        created_at=T0 + dt.timedelta(seconds=n), updated_at=T0 + dt.timedelta(seconds=n))
    return replace(record, **changes)


async def test_operator_templates(store: Store, seed: Seed) -> None:
    """Per-organization names, global ones, the resolution order (the organization's,
    else the global one; never another organization's), status, update and delete, each
    write audited in its transaction."""
    other = make_org("other", T0)
    await store.add_organization(other, event("organization.created", slug="other"))
    builtin = TemplateRecord(slug="vcc_service", name="vcc_service", purpose="vcc_service",
                             definition={"name": "vcc_service"})
    await store.upsert_template(builtin)
    mine = make_template("web", seed.org, 1)
    theirs = make_template("web", other, 2)
    shared = make_template("web", None, 3)
    only_global = make_template("db", None, 4)
    for record in (mine, theirs, shared, only_global):
        await store.add_template(record, event("template.created", name=record.slug))
    with pytest.raises(StoreConflict):  # one name per scope, NULL (global) included
        await store.add_template(replace(shared, template_id="tpl-dup"),
                                 event("template.created"))
    with pytest.raises(StoreConflict):
        await store.add_template(replace(mine, template_id="tpl-dup"),
                                 event("template.created"))

    found = await store.get_template("web", seed.org.org_id)
    assert found == mine
    assert await store.get_template("web", None) == shared
    assert await store.get_template("db", seed.org.org_id) is None  # exact scope only
    assert await store.resolve_template("web", seed.org.org_id) == mine
    assert await store.resolve_template("web", other.org_id) == theirs
    assert await store.resolve_template("db", seed.org.org_id) == only_global
    assert await store.resolve_template("nope", seed.org.org_id) is None
    assert await store.resolve_template("web", "no-such-org") == shared

    # lists: an organization sees its own, the global ones and the built-ins
    visible = await store.list_templates_page(seed.org.org_id)
    assert {r.template_id for r in visible} == {"/vcc_service", mine.template_id,
                                                shared.template_id, only_global.template_id}
    everything = await store.list_templates_page(None, limit=100)
    assert len(everything) == 5
    first = await store.list_templates_page(None, limit=2)
    rest = await store.list_templates_page(
        None, (first[-1].created_at, first[-1].template_id), 100)  # type: ignore[arg-type]
    assert [r.template_id for r in first + rest] == [r.template_id for r in everything]

    # a disabled template resolves no more: the global one of that name applies
    disabled = await store.update_template(
        replace(mine, status="disabled", description="off",
                updated_at=T0 + dt.timedelta(hours=1)), event("template.updated"))
    assert disabled is not None and disabled.status == "disabled"
    assert disabled.description == "off" and disabled.created_at == mine.created_at
    assert await store.resolve_template("web", seed.org.org_id) == shared
    # built-ins are not written through update/delete
    assert await store.update_template(
        replace(builtin, template_id="/vcc_service"), event("template.updated")) is None
    assert await store.delete_template("/vcc_service", event("template.deleted")) is False

    assert await store.delete_template(shared.template_id, event("template.deleted"))
    assert not await store.delete_template(shared.template_id, event("template.deleted"))
    assert await store.resolve_template("web", seed.org.org_id) is None
    assert await store.resolve_template("web", other.org_id) == theirs
    # seed: 3; other org: 1; 4 created, 1 updated, 1 deleted; refusals wrote nothing
    assert await chain_ok(store) == 10


@pytest.mark.parametrize(
    "store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_template_migration_keeps_published_profiles(
        store: str, location: Location, monkeypatch: pytest.MonkeyPatch) -> None:
    """0013 rebuilds certificate_templates (slug was its primary key): a store migrated
    from 0012 keeps its rows as built-ins (global, no base) under the new unique index."""
    import db.postgres
    import db.sqlite
    if location.backend == "postgresql":
        await reset_schema(location.target)
    for module in (db.sqlite, db.postgres):
        monkeypatch.setattr(module, "migrations",
                            lambda dialect: [m for m in migrations(dialect) if m[0] < 13])
    old = make_store(location)
    await old.open()
    await old.close()
    await raw_sql(location, "INSERT INTO certificate_templates (slug, org_id, name, purpose,"
                  " definition, updated_at) VALUES ('vcc_service', NULL, 'vcc_service',"
                  " 'vcc_service', '{\"name\": \"vcc_service\"}', '2025-03-14T09:26:53Z')")
    monkeypatch.undo()
    migrated = make_store(location)
    await migrated.open()
    try:
        [row] = await migrated.list_templates()
        assert (row.slug, row.org_id, row.base, row.status, row.template_id) == (
            "vcc_service", None, None, "active", "/vcc_service")
        assert row.definition == {"name": "vcc_service"}
        await migrated.upsert_template(replace(row, definition={"name": "vcc_service",
                                                                "v": 2}))
        [row] = await migrated.list_templates()
        assert row.definition["v"] == 2
    finally:
        await migrated.close()


async def test_tokens(store: Store, seed: Seed) -> None:
    token = ApiToken(
        token_id="tok_" + secrets.token_hex(8), org_id=seed.org.org_id, role="operator",
        secret_hash="sha256:" + secrets.token_hex(32), name="ci pipeline",
        created_at=T0, expires_at=(T0 + dt.timedelta(days=365)).astimezone(CEST),
    )
    forever = replace(token, token_id="tok_" + secrets.token_hex(8), expires_at=None,
                      revoked=True, role="auditor")
    await store.add_token(token, event("authentication.token_created"))
    await store.add_token(forever, event("authentication.token_created"))
    assert await store.get_token(token.token_id) == token
    assert await store.get_token(forever.token_id) == forever
    assert await store.get_token("tok_missing") is None
    with pytest.raises(StoreConflict):
        await store.add_token(token, event("authentication.token_created"))
    assert await chain_ok(store) == 5


# --- audit chain ------------------------------------------------------------------------

async def test_audit_append_and_entries(store: Store, seed: Seed) -> None:
    failed = AuditEvent(
        event_type="authentication.failed", category="authentication", action="login",
        actor_type="user", actor_id="mallory", org_id=seed.org.org_id, status="failure",
        data={"remote": "198.51.100.7", "reason": "bad token", "attempt": 3,
              "nested": {"ok": False, "ratio": 0.25, "tags": ["x", "ü"]}},
    )
    entry = await store.append_audit(failed)
    entries = await store.audit_entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert entries[-1] == entry
    assert entry.timestamp.tzinfo is not None
    assert entry.event == failed
    head = await store.audit_head()
    assert head is not None and (head.seq, head.audit_hash) == (4, entry.audit_hash)
    assert verify_chain(entries, head) == []
    assert [e.seq for e in await store.audit_entries(after_seq=1, limit=2)] == [2, 3]


TAMPERING = {
    "edit": ["UPDATE audit_log SET event_data = '{\"name\": \"Evil CA\"}' WHERE seq = 2"],
    "delete_middle": ["DELETE FROM audit_log WHERE seq = 3"],
    "swap": [
        "UPDATE audit_log SET seq = 1000 WHERE seq = 2",
        "UPDATE audit_log SET seq = 2 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 1000",
    ],
    "delete_tail": ["DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)"],
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
@pytest.mark.tampers_audit
async def test_tampering_is_detected(
    store: Store, seed: Seed, location: Location, tampering: str
) -> None:
    for n in range(3):
        await store.append_audit(event("authentication.failed", attempt=n))
    assert await chain_ok(store) == 6
    for statement in TAMPERING[tampering]:
        await raw_sql(location, statement)
    problems = verify_chain(await store.audit_entries(), await store.audit_head())
    assert problems, tampering


# One edit of every column of audit_log, made to one row in the middle of the chain (seq 4
# of 6): each must be caught by verify_chain. Nullable columns are also set to NULL. A
# column added to the table without a case here fails test_every_audit_column_is_tampered.
AUDIT_COLUMN_EDITS: dict[str, str | None] = {
    "seq": "seq = 1000",
    "audit_id": "audit_id = '00000000-0000-4000-8000-000000000000'",
    "timestamp": None,  # one microsecond later, in the backend's own form (below)
    "org_id": "org_id = 'another-organization'",
    "event_type": "event_type = 'certificate.revoked'",
    "category": "category = 'ca'",
    "action": "action = 'revoke'",
    "actor_type": "actor_type = 'user'",
    "actor_id": "actor_id = 'mallory'",
    "resource_type": "resource_type = 'api_token'",
    "resource_id": "resource_id = 'another-resource'",
    "status": "status = 'failure'",
    "event_data": "event_data = '{\"attempt\": 99}'",
    "previous_hash": f"previous_hash = '{'1' * 64}'",
    "audit_hash": f"audit_hash = '{'1' * 64}'",
}
AUDIT_NULLABLE = ("org_id", "actor_id", "resource_type", "resource_id")
AUDIT_CASES = [*AUDIT_COLUMN_EDITS, *(f"{c}=NULL" for c in AUDIT_NULLABLE)]
TAMPERED_SEQ = 4


async def _audit_columns(where: Location) -> set[str]:
    if where.backend == "sqlite":
        return {row[1] for row in await raw_sql(where, "PRAGMA table_info(audit_log)")}
    return {row[0] for row in await raw_sql(
        where, "SELECT column_name FROM information_schema.columns"
               " WHERE table_schema = 'public' AND table_name = 'audit_log'")}


@pytest.mark.tampers_audit
async def test_every_audit_column_is_tampered(store: Store, location: Location) -> None:
    assert await _audit_columns(location) == set(AUDIT_COLUMN_EDITS)


async def _tamper_audit_column(where: Location, case: str) -> None:
    row = f"WHERE seq = {TAMPERED_SEQ}"
    if case.endswith("=NULL"):
        await raw_sql(where, f"UPDATE audit_log SET {case.removesuffix('=NULL')} = NULL {row}")
        return
    edit = AUDIT_COLUMN_EDITS[case]
    if edit is not None:
        await raw_sql(where, f"UPDATE audit_log SET {edit} {row}")
    elif where.backend == "postgresql":
        await raw_sql(where, f"UPDATE audit_log SET timestamp = timestamp"
                             f" + interval '1 microsecond' {row}")
    else:
        ((text,),) = await raw_sql(where, f"SELECT timestamp FROM audit_log {row}")
        later = dt.datetime.fromisoformat(text) + dt.timedelta(microseconds=1)
        new = later.astimezone(UTC).isoformat(timespec="microseconds")
        if text.endswith("Z"):
            new = new.removesuffix("+00:00") + "Z"
        await raw_sql(where, f"UPDATE audit_log SET timestamp = '{new}' {row}")


@pytest.mark.parametrize("case", AUDIT_CASES)
@pytest.mark.tampers_audit
async def test_an_edit_of_any_audit_column_is_detected(
    store: Store, seed: Seed, location: Location, case: str
) -> None:
    """A row whose every field is set (seed wrote seq 1-3), edited in one column behind the
    store's back: verify_chain must report it, and only at that row when the column is
    hashed content (the link and sequence columns also break their neighbours' checks)."""
    full = AuditEvent(
        event_type="certificate.issued", category="certificate", action="issue",
        actor_type="api", actor_id="token-ops-1", org_id=seed.org.org_id,
        resource_type="certificate", resource_id=str(uuid.uuid4()), status="success",
        data={"attempt": 1, "serial": "0a1b"},
    )
    entry = await store.append_audit(full)
    assert entry.seq == TAMPERED_SEQ
    for n in range(2):
        await store.append_audit(event("authentication.failed", attempt=n))
    before = await store.audit_entries()
    assert verify_chain(before, await store.audit_head()) == []
    await _tamper_audit_column(location, case)
    after = await store.audit_entries()
    assert after != before, "the edit changed nothing the store reads"
    problems = verify_chain(after, await store.audit_head())
    assert problems, case
    if case not in ("seq", "previous_hash", "audit_hash"):
        assert {p.seq for p in problems} == {TAMPERED_SEQ}, problems


async def test_concurrent_writes_keep_the_chain(store: Store, seed: Seed) -> None:
    before = await chain_ok(store)
    certs = [make_cert(seed.issuing, seed.org, cn=f"host{i}.acme.example") for i in range(50)]
    await asyncio.gather(*(store.add_certificate(c, event(serial=c.serial_hex)) for c in certs))
    assert await chain_ok(store) == before + 50
    head = await store.audit_head()
    assert head is not None and head.seq == before + 50
    for cert in certs:
        assert await store.get_certificate(seed.issuing.ca_id, cert.serial_hex) is not None


async def test_values_the_database_cannot_hold_are_store_invalid(
    store: Store, seed: Seed
) -> None:
    """A lone surrogate (a JSON \\ud800 escape) cannot be encoded by either backend: it
    is StoreInvalid, not a raw driver error, for lookups, scans and writes alike."""
    for lookup in (store.get_acme_account("\ud800"), store.get_organization("\ud800"),
                   store.find_certificates_by_serial("\ud800"),
                   store.list_cross_certificates(["\ud800"])):
        with pytest.raises(StoreInvalid):
            await lookup
    before = await chain_ok(store)
    with pytest.raises(StoreInvalid):
        await store.add_organization(replace(make_org(slug="bad"), name="\ud800"), event())
    assert await store.get_organization("bad") is None
    assert await chain_ok(store) == before


async def test_two_processes_writing_at_once_neither_deadlock_nor_fork_the_chain(
    store: Store, seed: Seed, location: Location
) -> None:
    """Two gateway processes on one database: one commits batches (an audit row, then a
    revocation), the other lone revocations. Lock order must be the same in both, or
    PostgreSQL aborts one as a deadlock (after deadlock_timeout) and a caller gets it."""
    other = make_store(location)
    await other.open()
    try:
        certs = [make_cert(seed.issuing, seed.org) for _ in range(80)]
        await asyncio.gather(*(store.add_certificate(c, event()) for c in certs))

        def revocation(cert: CertificateRecord) -> Revocation:
            return Revocation(seed.issuing.ca_id, cert.serial_hex, cert.cert_id, T0,
                              "superseded")

        async def batches() -> None:
            for cert in certs[:40]:
                await asyncio.gather(store.append_audit(event("authentication.failed")),
                                     store.revoke_certificate(revocation(cert), event()))

        async def lone_writes() -> None:
            for cert in certs[40:]:
                await other.revoke_certificate(revocation(cert), event())

        await asyncio.gather(batches(), lone_writes())
        stored = [await store.get_certificate(seed.issuing.ca_id, c.serial_hex) for c in certs]
        # every certificate is still there (a lost row is a failure, not skipped), revoked
        assert [r.status if r is not None else None for r in stored] == ["revoked"] * 80
        assert await chain_ok(store) == 3 + 80 + 40 * 2 + 40
    finally:
        await other.close()


async def test_concurrent_conflicts_keep_the_chain(store: Store, seed: Seed) -> None:
    serial = secrets.token_hex(16)
    certs = [make_cert(seed.issuing, seed.org, serial_hex=serial) for _ in range(10)]
    results = await asyncio.gather(
        *(store.add_certificate(c, event(serial=serial)) for c in certs),
        *(store.append_audit(event("authentication.failed", n=n)) for n in range(10)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results[:10]) == 1
    assert all(isinstance(r, StoreConflict) for r in results[:10] if r is not None)
    assert await chain_ok(store) == 3 + 1 + 10


# --- datetimes --------------------------------------------------------------------------

async def test_datetimes_round_trip(store: Store, seed: Seed) -> None:
    not_before = dt.datetime(2025, 6, 30, 23, 59, 59, 999999, tzinfo=CEST)
    not_after = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # RFC 5280 "no expiry"
    created = dt.datetime(2025, 7, 1, 0, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=-7)))
    cert = replace(make_cert(seed.issuing, seed.org), not_before=not_before,
                   not_after=not_after, created_at=created)
    await store.add_certificate(cert, event())
    got = await store.get_certificate(seed.issuing.ca_id, cert.serial_hex)
    assert got is not None
    assert got == cert
    for value in (got.not_before, got.not_after, got.created_at):
        assert value is not None and value.utcoffset() == dt.timedelta(0)
    assert got.not_before.microsecond == 999999
    orgs = await store.list_organizations()
    assert orgs[0].created_at == T0 and orgs[0].created_at.utcoffset() == dt.timedelta(0)
    entries = await store.audit_entries()
    assert all(e.timestamp.utcoffset() == dt.timedelta(0) for e in entries)


# --- time-stamp tokens (RFC 3161) -------------------------------------------------------

async def test_timestamps_add_get_conflict(store: Store, seed: Seed) -> None:
    tsa = make_ca("tsa-20250314092653", "tsa", seed.org, seed.issuing)
    await store.add_ca(tsa, event("ca.created", name=tsa.name))
    record = TimeStampRecord(
        serial_hex=secrets.token_hex(20).lstrip("0") or "1", tsa_ca_id=tsa.ca_id,
        policy_oid="1.3.6.1.4.1.55555.1.1", hash_algorithm="sha256",
        message_imprint=secrets.token_bytes(32),
        gen_time=dt.datetime(2025, 3, 14, 11, 26, 53, 589000, tzinfo=CEST), has_nonce=True,
        cert_req=False,
    )
    entries = await chain_ok(store)
    await store.add_timestamp(record)
    got = await store.get_timestamp(record.serial_hex)
    assert got == record and got.gen_time.utcoffset() == dt.timedelta(0)
    assert await store.get_timestamp("1234") is None
    with pytest.raises(StoreConflict):
        await store.add_timestamp(replace(record, has_nonce=False))
    with pytest.raises(StoreConflict):  # the signing TSA must exist
        await store.add_timestamp(replace(record, serial_hex="abc", tsa_ca_id="nope"))
    assert await store.get_timestamp(record.serial_hex) == record
    assert await chain_ok(store) == entries  # tokens are their own record, not audit rows


async def test_concurrent_timestamps(store: Store, seed: Seed) -> None:
    tsa = make_ca("tsa-1", "tsa", seed.org, seed.issuing)
    await store.add_ca(tsa, event("ca.created", name=tsa.name))
    records = [
        TimeStampRecord(serial_hex=format(n + 1, "x"), tsa_ca_id=tsa.ca_id, policy_oid="1.2.3",
                        hash_algorithm="sha512", message_imprint=bytes(64), gen_time=T0,
                        has_nonce=bool(n % 2), cert_req=True)
        for n in range(50)
    ]
    results = await asyncio.gather(*(store.add_timestamp(r) for r in [*records, records[0]]),
                                   return_exceptions=True)
    assert results[:50] == [None] * 50 and isinstance(results[50], StoreConflict)
    assert [await store.get_timestamp(r.serial_hex) for r in records] == records


# --- ACME -------------------------------------------------------------------------------

def make_account(org: Organization, eab_kid: str | None = None) -> AcmeAccount:
    return AcmeAccount(
        account_id=secrets.token_urlsafe(12), org_id=org.org_id,
        key_thumbprint=secrets.token_urlsafe(32),
        jwk={"kty": "EC", "crv": "P-256", "x": "eA", "y": "eQ"},
        contact=("mailto:ops@acme.example",), tos_agreed=True, eab_kid=eab_kid,
        created_at=T0,
    )


def make_authz(account: AcmeAccount, value: str, status: str = "pending",
               expires: dt.datetime = T0 + dt.timedelta(days=7)) -> AcmeAuthorization:
    return AcmeAuthorization(
        authz_id=secrets.token_urlsafe(12), account_id=account.account_id,
        identifier_type="dns", identifier_value=value, wildcard=False, status=status,
        expires=expires, created_at=T0,
        challenges=(AcmeChallenge("http-01", secrets.token_urlsafe(32)),
                    AcmeChallenge("dns-01", secrets.token_urlsafe(32))),
    )


async def test_update_organization_config(store: Store, seed: Seed) -> None:
    config = {"acme": {"allowed_domains": ["example.org"], "allowed_ips": ["10.0.0.0/8"]}}
    await store.update_organization_config(seed.org.org_id, config, event("organization.updated"))
    org = await store.get_organization_by_id(seed.org.org_id)
    assert org is not None and org.config == config
    with pytest.raises(StoreConflict):
        await store.update_organization_config("nope", config, event("organization.updated"))
    assert await chain_ok(store) == 4


async def test_acme_accounts_and_eab(store: Store, seed: Seed) -> None:
    account = make_account(seed.org)
    await store.add_acme_account(account, event("acme.account_created"))
    assert await store.get_acme_account(account.account_id) == account
    assert await store.find_acme_account(account.key_thumbprint) == account
    assert await store.find_acme_account("unknown") is None
    with pytest.raises(StoreConflict):  # the same key twice
        await store.add_acme_account(replace(account, account_id="other"),
                                     event("acme.account_created"))

    key = EabKey(kid="kid-1", org_id=seed.org.org_id, hmac_key=secrets.token_bytes(32),
                 created_at=T0)
    await store.add_eab_key(key, event("acme.eab_created"))
    assert await store.get_eab_key("kid-1") == key
    bound = make_account(seed.org, eab_kid="kid-1")
    await store.add_acme_account(bound, event("acme.account_created"))
    stored_key = await store.get_eab_key("kid-1")
    assert stored_key is not None and stored_key.account_id == bound.account_id
    for eab_kid in ("kid-1", "no-such-kid"):  # single use; unknown
        with pytest.raises(StoreConflict):
            await store.add_acme_account(make_account(seed.org, eab_kid=eab_kid),
                                         event("acme.account_created"))

    rolled = replace(account, key_thumbprint="new-thumbprint", jwk={"kty": "OKP"},
                     contact=(), status="deactivated")
    await store.update_acme_account(rolled, event("acme.account_updated"))
    assert await store.get_acme_account(account.account_id) == rolled
    with pytest.raises(StoreConflict):  # another account's key
        await store.update_acme_account(replace(rolled, key_thumbprint=bound.key_thumbprint),
                                        event("acme.account_updated"))
    assert await chain_ok(store) == 3 + 4


async def test_acme_account_with_its_organization_in_one_read(store: Store,
                                                               seed: Seed) -> None:
    """What every kid-signed ACME request reads: the account and its organization as
    stored now (a deactivation, key rollover or disabled organization shows at once)."""
    account = make_account(seed.org)
    await store.add_acme_account(account, event("acme.account_created"))
    org = await store.get_organization_by_id(seed.org.org_id)
    assert await store.get_acme_account_with_org(account.account_id) == (account, org)
    assert await store.get_acme_account_with_org("no-such-account") is None
    rolled = replace(account, key_thumbprint="rolled", jwk={"kty": "OKP"},
                     status="deactivated")
    await store.update_acme_account(rolled, event("acme.account_updated"))
    assert org is not None
    disabled = await store.update_organization(org.org_id, org.name, "disabled", org.config,
                                               event("organization.updated"))
    assert disabled is not None and disabled.status == "disabled"
    assert await store.get_acme_account_with_org(account.account_id) == (rolled, disabled)


async def test_admin_lists_of_eab_keys_accounts_and_cas(store: Store, seed: Seed) -> None:
    """The admin API's queries (issue 13): scoped by org_id in the query, keyset pages by
    (created_at, id); an EAB key is revoked (deleted) only while unused; an account is
    deactivated only while valid; each write audited with it, none when nothing changed."""
    other = make_org("globex")
    await store.add_organization(other, event("organization.created"))
    keys = [EabKey(kid=f"kid-{n}", org_id=(seed.org if n < 3 else other).org_id,
                   hmac_key=secrets.token_bytes(32), created_at=T0 + dt.timedelta(seconds=n))
            for n in range(4)]
    for key in keys:
        await store.add_eab_key(key, event("acme.eab_created"))
    assert [k.kid for k in await store.list_eab_keys()] == ["kid-0", "kid-1", "kid-2", "kid-3"]
    mine = await store.list_eab_keys(seed.org.org_id, limit=2)
    assert [k.kid for k in mine] == ["kid-0", "kid-1"]
    rest = await store.list_eab_keys(seed.org.org_id, (mine[-1].created_at, mine[-1].kid))
    assert [k.kid for k in rest] == ["kid-2"]
    bound = replace(make_account(seed.org, eab_kid="kid-1"), created_at=T0)
    await store.add_acme_account(bound, event("acme.account_created"))
    before = await chain_ok(store)
    # another organization's, then one bound to an account: nothing written
    assert await store.delete_eab_key("kid-3", seed.org.org_id, event("acme.admin")) is None
    assert await store.delete_eab_key("kid-1", None, event("acme.admin")) is None
    assert await chain_ok(store) == before
    assert await store.delete_eab_key("kid-0", seed.org.org_id, event("acme.admin")) == keys[0]
    assert await store.get_eab_key("kid-0") is None and await chain_ok(store) == before + 1

    theirs = replace(make_account(other), created_at=T0 + dt.timedelta(seconds=1))
    await store.add_acme_account(theirs, event("acme.account_created"))
    assert [a.account_id for a in await store.list_acme_accounts()] == [
        bound.account_id, theirs.account_id]
    assert [a.account_id for a in await store.list_acme_accounts(other.org_id)] == [
        theirs.account_id]
    assert await store.list_acme_accounts(None, (theirs.created_at or T0,
                                                 theirs.account_id)) == []
    before = await chain_ok(store)
    assert await store.deactivate_acme_account(theirs.account_id, seed.org.org_id,
                                               event("acme.admin")) is None
    done = await store.deactivate_acme_account(theirs.account_id, None, event("acme.admin"))
    assert done == replace(theirs, status="deactivated")
    assert await store.deactivate_acme_account(theirs.account_id, None, event("acme.admin")) is None
    assert await chain_ok(store) == before + 1

    theirs_ca = make_ca("Globex Issuing", "issuing", other, seed.root,
                        created_at=T0 + dt.timedelta(seconds=2))
    await store.add_ca(theirs_ca, event("ca.created"))
    everything = await store.list_cas_page()
    assert [c.name for c in everything] == [seed.root.name, seed.issuing.name, theirs_ca.name]
    assert [c.name for c in await store.list_cas_page(seed.org.org_id)] == [
        seed.root.name, seed.issuing.name]
    first = await store.list_cas_page(None, None, 1)
    assert [c.name for c in await store.list_cas_page(
        None, (first[0].created_at or T0, first[0].ca_id), 1)] == [seed.issuing.name]


async def test_acme_orders_and_authorizations(store: Store, seed: Seed) -> None:
    account = make_account(seed.org)
    await store.add_acme_account(account, event("acme.account_created"))
    first, second = make_authz(account, "a.acme.example"), make_authz(account, "b.acme.example")
    order = AcmeOrder(
        order_id=secrets.token_urlsafe(12), account_id=account.account_id,
        org_id=seed.org.org_id, status="pending", expires=T0 + dt.timedelta(days=7),
        identifiers=(("dns", "a.acme.example"), ("dns", "b.acme.example")),
        authz_ids=(first.authz_id, second.authz_id), profile="vcc_service",
        not_after=T0 + dt.timedelta(days=30), replaces="aki.serial", created_at=T0,
    )
    await store.add_acme_order(order, [first, second])
    assert await store.get_acme_order(order.order_id) == order
    assert await store.get_acme_authorizations([second.authz_id, "nope", first.authz_id]) == [
        second, first]

    done = replace(first, status="valid", challenges=(
        replace(first.challenges[0], status="valid", validated=T0 + dt.timedelta(minutes=1),
                started=T0),
        replace(first.challenges[1], error={"type": "urn:ietf:params:acme:error:dns"})))
    assert await store.update_acme_authorization(done, "pending")
    assert not await store.update_acme_authorization(done, "pending")  # compare and set
    assert await store.get_acme_authorizations([first.authz_id]) == [done]
    assert await store.find_valid_acme_authorization(
        account.account_id, "dns", "a.acme.example", False, T0) == done
    assert await store.find_valid_acme_authorization(
        account.account_id, "dns", "a.acme.example", True, T0) is None
    assert await store.find_valid_acme_authorization(
        account.account_id, "dns", "a.acme.example", False, T0 + dt.timedelta(days=8)) is None
    assert await store.find_valid_acme_authorization(
        account.account_id, "dns", "b.acme.example", False, T0) is None

    cert = make_cert(seed.issuing, seed.org)
    await store.add_certificate(cert, event(serial=cert.serial_hex))
    valid = replace(order, status="valid", cert_id=cert.cert_id)
    assert not await store.update_acme_order(valid, "ready")
    assert await store.update_acme_order(valid, "pending")
    assert await store.get_acme_order(order.order_id) == valid
    assert await store.find_acme_order_by_cert(cert.cert_id) == valid
    stored = await store.get_certificate_by_id(cert.cert_id)
    assert stored is not None and stored.serial_hex == cert.serial_hex
    assert await store.get_certificate_by_id("nope") is None
    failed = replace(valid, status="invalid", error={"type": "x", "detail": "y"})
    assert await store.update_acme_order(failed, "valid")
    assert (await store.get_acme_order(order.order_id)) == failed


async def test_sqlite_busy_lookup_moves_to_the_reader_thread(tmp_path: Path) -> None:
    """Key lookups run on the event loop's thread but never wait there: when SQLite says
    busy (in WAL mode only a checkpoint or another process's exclusive lock does), the
    lookup is retried on the reader thread, which may wait."""
    store = SqliteStore(tmp_path / "busy.db")
    await store.open()
    try:
        org = Organization(org_id=str(uuid.uuid4()), slug="busy", name="Busy")
        await store.add_organization(org, event("org.created"))
        assert await store.get_organization("busy") == replace(
            org, created_at=(await store.get_organization("busy") or org).created_at)
        loop_thread = threading.get_ident()
        threads: list[int] = []

        class Busy:
            def execute(self, *args: object) -> None:
                threads.append(threading.get_ident())
                raise sqlite3.OperationalError("database is locked")

        real, store.dialect._lookup_conn = store.dialect._lookup_conn, Busy()  # type: ignore[assignment]
        try:
            found = await store.get_organization("busy")
        finally:
            store.dialect._lookup_conn = real
        assert found is not None and found.org_id == org.org_id
        assert threads == [loop_thread]  # tried on the loop once, then read elsewhere
    finally:
        await store.close()


async def test_sqlite_writers_in_several_processes_queue_on_the_write_lock(
        tmp_path: Path) -> None:
    """Two stores on one file (two workers) take turns through ``<file>.write-lock``: a
    write waits while another holder has the lock, goes ahead when it is released, and
    writes racing from both stores all land with one unbroken audit chain."""
    path = tmp_path / "shared.db"
    first, second = SqliteStore(path), SqliteStore(path)
    await first.open()
    await second.open()
    try:
        holder = os.open(f"{path}.write-lock", os.O_RDWR)
        try:
            fcntl.flock(holder, fcntl.LOCK_EX)
            org = Organization(org_id=str(uuid.uuid4()), slug="queued", name="Queued")
            waiting = asyncio.ensure_future(second.add_organization(org, event("org.created")))
            await asyncio.sleep(0.2)
            assert not waiting.done()  # queued on the lock, not failed as busy
            fcntl.flock(holder, fcntl.LOCK_UN)
            await waiting
        finally:
            os.close(holder)
        await asyncio.gather(*(
            store.add_organization(
                Organization(org_id=str(uuid.uuid4()), slug=f"race-{i}", name=f"Race {i}"),
                event("org.created"))
            for i in range(40) for store in (first if i % 2 else second,)))
        slugs = {o.slug for o in await first.list_organizations()}
        assert {"queued"} | {f"race-{i}" for i in range(40)} <= slugs
        assert verify_chain(await second.audit_entries(), await second.audit_head()) == []
    finally:
        await first.close()
        await second.close()


async def test_sqlite_lock_file_belongs_to_the_database_owner(tmp_path: Path) -> None:
    """The write lock is made beside the file, 0600, owned like the database (made by root,
    it is handed to the database's owner); one that cannot be opened makes the store
    unavailable, with the path in the message, not an OSError from deep inside."""
    path = tmp_path / "owned.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    lock = Path(f"{path}.write-lock")
    assert lock.stat().st_mode & 0o777 == 0o600
    assert (lock.stat().st_uid, lock.stat().st_gid) == (path.stat().st_uid, path.stat().st_gid)
    if os.geteuid() == 0:  # root hands a lock it makes to the database's owner
        os.chown(path, 4321, 4321)
        lock.unlink()
        store = SqliteStore(path)
        await store.open()
        await store.close()
        assert (lock.stat().st_uid, lock.stat().st_gid) == (4321, 4321)
    blocked = tmp_path / "blocked.db"
    Path(f"{blocked}.write-lock").mkdir()  # a directory where the lock file should be
    with pytest.raises(StoreUnavailable, match=r"blocked\.db"):
        await SqliteStore(blocked).open()


async def test_sqlite_checkpoints_run_off_the_writer(tmp_path: Path) -> None:
    """Writes commit on the event loop's thread when nothing is in the way, and the
    writer connection never checkpoints on commit: the checkpoints still happen (the
    main file takes the rows in while the store stays open) on a thread of their own."""
    path = tmp_path / "checkpointed.db"
    store = SqliteStore(path)
    await store.open()
    try:
        loop_thread = threading.get_ident()
        threads: set[int] = set()
        real = sqlite_module._execute

        def spy(conn: Any, sql: str, stmt: Any) -> Any:
            threads.add(threading.get_ident())
            return real(conn, sql, stmt)

        size_before = path.stat().st_size
        sqlite_module._execute = spy  # type: ignore[assignment]
        try:
            for i in range(120):  # one at a time: each its own commit
                await store.add_organization(
                    Organization(org_id=str(uuid.uuid4()), slug=f"ckpt-{i}", name=f"C {i}"),
                    event("org.created"))
        finally:
            sqlite_module._execute = real
        assert threads == {loop_thread}
        for _ in range(200):
            if path.stat().st_size > size_before:
                break
            await asyncio.sleep(0.01)
        assert path.stat().st_size > size_before
        assert len(await store.list_organizations()) >= 120
    finally:
        await store.close()


async def test_sqlite_a_long_write_is_finished_by_the_writer_thread(tmp_path: Path) -> None:
    """A write begun on the loop's thread hands the rest of its transaction to the writer
    thread after a few dozen statements: one transaction all the same (all or nothing),
    and the locks it held are free again afterwards."""
    store = SqliteStore(tmp_path / "long.db")
    await store.open()
    try:
        loop_thread = threading.get_ident()
        threads: list[int] = []
        real = sqlite_module._execute

        def spy(conn: Any, sql: str, stmt: Any) -> Any:
            threads.append(threading.get_ident())
            return real(conn, sql, stmt)

        sqlite_module._execute = spy  # type: ignore[assignment]
        try:
            orgs = [Organization(org_id=str(uuid.uuid4()), slug=f"long-{i}", name=f"L {i}")
                    for i in range(60)]
            await asyncio.gather(*(store.add_organization(o, event("org.created"))
                                   for o in orgs))
            assert threads[0] == loop_thread and threads[-1] != loop_thread

            def failing(tx: Any) -> Any:  # 80 statements, then a failure: nothing stays
                for i in range(80):
                    yield Stmt("INSERT INTO job_locks (name, holder, expires_at)"
                               " VALUES (?, 'x', 0)", (f"job-{i}",), "none")
                raise RuntimeError("the body fails after the hand-over")

            with pytest.raises(Exception, match="hand-over"):
                await store._write(failing)
        finally:
            sqlite_module._execute = real
        assert {o.slug for o in await store.list_organizations()} >= {o.slug for o in orgs}
        assert tuple(await store._read(Stmt("SELECT COUNT(*) FROM job_locks", (), "one"))) == (0,)
        # The locks are free: a write runs on the loop's thread again.
        threads.clear()
        await store.add_organization(
            Organization(org_id=str(uuid.uuid4()), slug="after", name="After"),
            event("org.created"))
        assert await store.get_organization("after") is not None
        assert verify_chain(await store.audit_entries(), await store.audit_head()) == []
    finally:
        await store.close()


async def test_acme_state_changes_are_audited_only_when_they_happen(
        store: Store, seed: Seed) -> None:
    """Order and authorization transitions carry their audit event into the same
    transaction: one entry per change that happened, none for a lost compare-and-set."""
    account = make_account(seed.org)
    await store.add_acme_account(account, event("acme.account_created"))
    authz = make_authz(account, "audited.acme.example")
    order = AcmeOrder(
        order_id=secrets.token_urlsafe(12), account_id=account.account_id,
        org_id=seed.org.org_id, status="pending", expires=T0 + dt.timedelta(days=7),
        identifiers=(("dns", "audited.acme.example"),), authz_ids=(authz.authz_id,),
        profile="vcc_service", created_at=T0)
    before = len(await store.audit_entries())
    await store.add_acme_order(order, [authz], event("acme.order.pending"))
    valid = replace(authz, status="valid")
    assert await store.update_acme_authorization(valid, "pending",
                                                 event("acme.authorization.valid"))
    assert not await store.update_acme_authorization(valid, "pending",
                                                     event("acme.authorization.lost"))
    ready = replace(order, status="ready")
    assert await store.update_acme_order(ready, "pending", event("acme.order.ready"))
    assert not await store.update_acme_order(ready, "pending", event("acme.order.lost"))
    entries = (await store.audit_entries())[before:]
    assert [e.event.event_type for e in entries] == [
        "acme.order.pending", "acme.authorization.valid", "acme.order.ready"]
    await chain_ok(store)


async def test_acme_order_merged_writes(store: Store, seed: Seed) -> None:
    """The ACME service's merged transactions: an order update with several audit events
    (finalize of a pending order: ready, then processing), and a certificate recorded
    with the order that names it (only while the order is processing; all or nothing)."""
    account = make_account(seed.org)
    await store.add_acme_account(account, event("acme.account_created"))
    authz = make_authz(account, "merged.acme.example", status="valid")
    order = AcmeOrder(
        order_id=secrets.token_urlsafe(12), account_id=account.account_id,
        org_id=seed.org.org_id, status="pending", expires=T0 + dt.timedelta(days=7),
        identifiers=(("dns", "merged.acme.example"),), authz_ids=(authz.authz_id,),
        profile="vcc_service", created_at=T0)
    await store.add_acme_order(order, [authz], event("acme.order.pending"))
    before = len(await store.audit_entries())
    processing = replace(order, status="processing")
    assert await store.update_acme_order(
        processing, "pending", [event("acme.order.ready"), event("acme.order.processing")])
    cert = make_cert(seed.issuing, seed.org, cn="merged.acme.example")
    valid = replace(processing, status="valid", cert_id=cert.cert_id)
    assert not await store.add_certificate_for_acme_order(  # not "ready": nothing written
        cert, event("certificate.issued"), valid, "ready", event("acme.order.valid"))
    assert await store.get_certificate_by_id(cert.cert_id) is None
    with pytest.raises(StoreConflict):  # the serial exists: the order stays processing
        taken = make_cert(seed.issuing, seed.org, serial_hex=cert.serial_hex)
        await store.add_certificate(taken, event("certificate.issued"))
        await store.add_certificate_for_acme_order(
            cert, event("certificate.issued"), valid, "processing", event("acme.order.valid"))
    assert (await store.get_acme_order(order.order_id)) == processing
    cert = replace(cert, serial_hex=secrets.token_hex(16))
    assert await store.add_certificate_for_acme_order(
        cert, event("certificate.issued"), valid, "processing", event("acme.order.valid"))
    assert await store.get_acme_order(order.order_id) == valid
    assert await store.find_acme_order_by_cert(cert.cert_id) == valid
    stored = await store.get_certificate_by_id(cert.cert_id)
    assert stored is not None and stored.serial_hex == cert.serial_hex
    entries = (await store.audit_entries())[before:]
    assert [e.event.event_type for e in entries] == [
        "acme.order.ready", "acme.order.processing", "certificate.issued",
        "certificate.issued", "acme.order.valid"]
    await chain_ok(store)


@pytest.mark.postgres
async def test_a_postgresql_outage_is_one_warning_each_way_and_no_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """While the database refuses connections, every call is StoreUnavailable, the log
    gets one WARNING when it goes and one when it is back, and the pool's reconnect
    attempts leave no traceback (asyncpg logs one per attempt)."""
    require_postgres()
    dsn = await asyncio.to_thread(asyncio.run, create_throwaway_database())
    name = dsn.rsplit("/", 1)[1]
    store = PostgresStore(dsn, min_size=2, max_size=4)
    await store.open()
    admin = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    caplog.set_level(logging.INFO)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = $1", name)
        deadline = asyncio.get_running_loop().time() + 10
        suppressed = OUTAGE.suppressed
        # Until the pool has tried (and failed) to restore its floor at least once.
        while OUTAGE.suppressed == suppressed:
            assert asyncio.get_running_loop().time() < deadline, "the pool never retried"
            with pytest.raises(StoreUnavailable):
                await store.get_organization("x")
            await asyncio.sleep(0.2)
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert await store.get_organization("x") is None
        assert await store.get_organization("x") is None
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await store.close()
        await asyncio.to_thread(asyncio.run, drop_database(dsn))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("PostgreSQL is unavailable")
    assert warnings[1] == "PostgreSQL is available again"
    assert not [r for r in caplog.records if r.exc_info]


# --- EST (RFC 7030): labels, one-time secrets, requests awaiting approval ---------------

def make_secret(org: Organization, label: str = "", expires_at: dt.datetime | None = None,
                subject: str | None = None) -> EnrollmentSecretRecord:
    return EnrollmentSecretRecord(
        secret_id=secrets.token_hex(8), org_id=org.org_id, label=label,
        secret_hash=secrets.token_hex(32), expires_at=expires_at or T0 + dt.timedelta(days=1),
        subject=subject, created_at=T0)


def make_pending(org: Organization, requester: str = "secret:abc", label: str = "routers"
                 ) -> PendingEnrollment:
    csr = secrets.token_bytes(300)
    return PendingEnrollment(
        request_id=secrets.token_hex(8), label=label, org_id=org.org_id, csr_der=csr,
        requester=requester, status="pending", created_at=T0,
        csr_fingerprint=hashlib.sha256(csr).hexdigest())


async def test_est_labels(store: Store, seed: Seed) -> None:
    before = await chain_ok(store)
    routers = EstLabel("routers", seed.org.org_id, "vcc_service",
                       accept=frozenset({AuthMethod.CERTIFICATE}), require_both=False,
                       require_channel_binding=True, require_approval=True,
                       allow_subject_change=True, key_type="rsa-3072", created_at=T0)
    default = EstLabel("", seed.org.org_id, "mtls_service", created_at=T0)
    await store.set_est_label(routers, event("est.label_set", label="routers"))
    await store.set_est_label(default, event("est.label_set", label=""))
    assert await store.get_est_label("routers") == routers
    assert await store.get_est_label("") == default
    assert await store.get_est_label("nope") is None
    changed = replace(routers, profile="external_integration", require_approval=False,
                      accept=frozenset(AuthMethod), created_at=T0 + dt.timedelta(days=1))
    await store.set_est_label(changed, event("est.label_set", label="routers"))
    # replaced, but it keeps its creation time
    assert await store.get_est_label("routers") == replace(changed, created_at=T0)
    assert [x.label for x in await store.list_est_labels()] == ["", "routers"]
    with pytest.raises(StoreConflict):  # no such organization
        await store.set_est_label(replace(routers, label="x", org_id=str(uuid.uuid4())),
                                  event("est.label_set"))
    assert await chain_ok(store) == before + 3


async def test_est_secret_is_spent_once_and_not_after_expiry(store: Store, seed: Seed) -> None:
    before = await chain_ok(store)
    secret = make_secret(seed.org, label="routers", subject="CN=dev-1")
    await store.add_enrollment_secret(secret, event("est.secret_created"))
    assert await store.get_enrollment_secret(secret.secret_id) == secret
    assert await store.get_enrollment_secret("nope") is None
    with pytest.raises(StoreConflict):
        await store.add_enrollment_secret(secret, event("est.secret_created"))
    expired = make_secret(seed.org, expires_at=T0 + dt.timedelta(minutes=1))
    await store.add_enrollment_secret(expired, event("est.secret_created"))
    now = T0 + dt.timedelta(minutes=1)  # expires_at is exclusive
    assert await store.consume_secret(expired.secret_id, now, event("est.secret_used")) is None
    used = await store.consume_secret(secret.secret_id, now, event("est.secret_used"))
    assert used == replace(secret, used_at=now)
    assert await store.consume_secret(secret.secret_id, now, event("est.secret_used")) is None
    assert await store.consume_secret("nope", now, event("est.secret_used")) is None
    assert await store.get_enrollment_secret(secret.secret_id) == used
    # two secret inserts and one spend; the refused spends left no audit entry
    assert await chain_ok(store) == before + 3


async def test_est_secret_race_yields_one_certificate(
        store: Store, seed: Seed, location: Location) -> None:
    """Twenty requests spend one secret at once, half through a second store (another
    gateway process): exactly one certificate is recorded."""
    other = make_store(location)
    await other.open()
    try:
        secret = make_secret(seed.org)
        await store.add_enrollment_secret(secret, event("est.secret_created"))
        before = await chain_ok(store)
        certs = [make_cert(seed.issuing, seed.org, cn=f"dev{i}.acme.example")
                 for i in range(20)]
        results = await asyncio.gather(*(
            (store if i % 2 else other).add_certificate_consuming_secret(
                cert, event(serial=cert.serial_hex), secret.secret_id, T0,
                event("est.secret_used"))
            for i, cert in enumerate(certs)))
        assert sum(results) == 1
        winner = certs[results.index(True)]
        recorded = [c for c in certs
                    if await store.get_certificate(seed.issuing.ca_id, c.serial_hex)]
        assert recorded == [winner]
        stored = await store.get_enrollment_secret(secret.secret_id)
        assert stored is not None and stored.used_at == T0
        assert await chain_ok(store) == before + 2
    finally:
        await other.close()


async def test_est_failed_certificate_write_leaves_the_secret_unused(
        store: Store, seed: Seed) -> None:
    secret = make_secret(seed.org)
    await store.add_enrollment_secret(secret, event("est.secret_created"))
    taken = make_cert(seed.issuing, seed.org)
    await store.add_certificate(taken, event())
    before = await chain_ok(store)
    clash = make_cert(seed.issuing, seed.org, serial_hex=taken.serial_hex)
    with pytest.raises(StoreConflict):
        await store.add_certificate_consuming_secret(
            clash, event(), secret.secret_id, T0, event("est.secret_used"))
    assert await store.get_enrollment_secret(secret.secret_id) == secret  # still unused
    assert await chain_ok(store) == before
    fresh = make_cert(seed.issuing, seed.org)
    assert await store.add_certificate_consuming_secret(
        fresh, event(), secret.secret_id, T0, event("est.secret_used"))
    assert await store.get_certificate_by_id(fresh.cert_id) is not None


async def test_est_pending_requests(store: Store, seed: Seed) -> None:
    secret = make_secret(seed.org)
    await store.add_enrollment_secret(secret, event("est.secret_created"))
    before = await chain_ok(store)
    first = make_pending(seed.org, requester=f"secret:{secret.secret_id}")
    consume = (secret.secret_id, T0, event("est.secret_used"))
    assert await store.add_pending_enrollment(first, event("est.pending"), consume)
    # the secret is spent now: a second request with it records nothing
    second = make_pending(seed.org, requester=f"secret:{secret.secret_id}")
    assert not await store.add_pending_enrollment(second, event("est.pending"), consume)
    assert await store.get_pending_enrollment(second.request_id) is None
    with pytest.raises(StoreConflict):  # the same CSR from the same requester: one row
        await store.add_pending_enrollment(
            replace(first, request_id="other"), event("est.pending"))
    by_cert = make_pending(seed.org, requester="certificate:ab12")
    assert await store.add_pending_enrollment(by_cert, event("est.pending"))
    assert await store.get_pending_enrollment(first.request_id) == first
    assert await store.find_pending_enrollment(first.csr_fingerprint, first.requester) == first
    assert await store.find_pending_enrollment(first.csr_fingerprint, "secret:x") is None
    assert [p.request_id for p in await store.list_pending_enrollments()] == sorted(
        [first.request_id, by_cert.request_id])
    assert await store.list_pending_enrollments(org_id=str(uuid.uuid4())) == []
    assert await chain_ok(store) == before + 3  # pending, secret used, pending

    decided = T0 + dt.timedelta(hours=1)
    certs = [make_cert(seed.issuing, seed.org) for _ in range(4)]
    results = await asyncio.gather(*(
        store.add_certificate_for_pending(c, event(), first.request_id, decided,
                                          event("est.pending_issued")) for c in certs))
    assert sum(results) == 1  # concurrent approvals: one certificate
    winner = certs[results.index(True)]
    assert await store.get_pending_enrollment(first.request_id) == replace(
        first, status="issued", cert_id=winner.cert_id, decided_at=decided)
    assert [c.cert_id for c in certs
            if await store.get_certificate_by_id(c.cert_id)] == [winner.cert_id]
    assert await store.reject_pending_enrollment(first.request_id, decided,
                                                 event("est.rejected")) is None
    rejected = await store.reject_pending_enrollment(by_cert.request_id, decided,
                                                     event("est.rejected"))
    assert rejected == replace(by_cert, status="rejected", decided_at=decided)
    assert not await store.add_certificate_for_pending(
        make_cert(seed.issuing, seed.org), event(), by_cert.request_id, decided, event())
    assert await store.list_pending_enrollments() == []
    everything = await store.list_pending_enrollments(org_id=seed.org.org_id, status=None)
    assert {(p.request_id, p.status) for p in everything} == {
        (first.request_id, "issued"), (by_cert.request_id, "rejected")}
    assert [p.request_id for p in everything] == sorted(p.request_id for p in everything)
    assert await chain_ok(store) == before + 3 + 2 + 1


def test_common_migrations_render_every_token_for_both_dialects() -> None:
    """Migrations written once (db/migrations/common) leave no type token unrendered, and
    both dialects apply the same versions under the same names."""
    for dialect in ("sqlite", "postgres"):
        for _, _, sql in migrations(dialect):
            assert re.search(r"\{(time|bytes|json|bool|false|true|bigint|double|"
                             r"without_rowid|collate_c)\}", sql) is None
    assert [(v, n) for v, n, _ in migrations("sqlite")] == [
        (v, n) for v, n, _ in migrations("postgres")]


# --- SCEP (RFC 8894): RA certificates, one-time challenges, transactions ------------------

def make_challenge(org: Organization, expires_at: dt.datetime | None = None
                   ) -> ScepChallenge:
    return ScepChallenge(
        challenge_id=secrets.token_hex(8), org_id=org.org_id, profile="external_integration",
        secret_hash=secrets.token_hex(32), expires_at=expires_at or T0 + dt.timedelta(hours=1),
        created_at=T0)


def make_transaction(org: Organization, tid: str = "tid-1", key: str = "key-a",
                     request: str = "req-1") -> ScepTransaction:
    return ScepTransaction(transaction_id=tid, key_fingerprint=key,
                           request_fingerprint=request, org_id=org.org_id, status="success",
                           created_at=T0, updated_at=T0)


async def test_scep_ra_certificates(store: Store, seed: Seed) -> None:
    before = await chain_ok(store)
    certs = [make_cert(seed.issuing, seed.org, profile="scep_ra") for _ in range(2)]
    ras = []
    for i, cert in enumerate(certs):
        await store.add_certificate(cert, event())
        ra = ScepRaRecord(
            ra_id=str(uuid.uuid4()), ca_id=seed.issuing.ca_id, cert_id=cert.cert_id,
            key_ref=f"ra-{i}", key_backend="software", certificate_der=cert.certificate_der,
            not_before=T0, not_after=T0 + dt.timedelta(days=100 + i), created_at=T0)
        await store.add_scep_ra(ra, event("scep_ra.created"))
        ras.append(ra)
    assert await store.list_scep_ra(seed.issuing.ca_id) == [ras[1], ras[0]]  # longest first
    assert await store.list_scep_ra(seed.root.ca_id) == []
    with pytest.raises(StoreConflict):  # no such CA
        await store.add_scep_ra(replace(ras[0], ra_id="x", ca_id=str(uuid.uuid4())),
                                event("scep_ra.created"))
    assert await chain_ok(store) == before + 4


async def test_scep_challenge_is_spent_once_with_its_certificate(
        store: Store, seed: Seed) -> None:
    challenge = make_challenge(seed.org)
    await store.add_scep_challenge(challenge, event("scep.challenge_created"))
    assert await store.find_scep_challenge(challenge.secret_hash) == challenge
    assert await store.find_scep_challenge("nope") is None
    with pytest.raises(StoreConflict):  # the same hash twice
        await store.add_scep_challenge(replace(challenge, challenge_id="other"),
                                       event("scep.challenge_created"))
    before = await chain_ok(store)
    now = T0 + dt.timedelta(minutes=5)
    first = make_cert(seed.issuing, seed.org)
    assert await store.add_certificate_for_scep(
        first, event(), make_transaction(seed.org),
        (challenge.challenge_id, now, event("scep.challenge_used"))) == "recorded"
    assert await store.find_scep_challenge(challenge.secret_hash) == replace(
        challenge, used_at=now)
    stored = await store.get_scep_transaction("tid-1")
    assert stored is not None and stored.cert_id is None and stored.key_fingerprint == "key-a"
    # spent: another transaction with the same challenge writes nothing
    second = make_cert(seed.issuing, seed.org)
    assert await store.add_certificate_for_scep(
        second, event(), make_transaction(seed.org, tid="tid-2"),
        (challenge.challenge_id, now, event("scep.challenge_used"))) == "challenge_spent"
    assert await store.get_certificate_by_id(second.cert_id) is None
    assert await store.get_scep_transaction("tid-2") is None
    # expired (expires_at is exclusive)
    expired = make_challenge(seed.org, expires_at=now)
    await store.add_scep_challenge(expired, event("scep.challenge_created"))
    assert await store.add_certificate_for_scep(
        second, event(), make_transaction(seed.org, tid="tid-2"),
        (expired.challenge_id, now, event("scep.challenge_used"))) == "challenge_spent"
    assert await chain_ok(store) == before + 3  # used, certificate, created


async def test_scep_transaction_is_bound_to_its_key(store: Store, seed: Seed) -> None:
    first = make_cert(seed.issuing, seed.org)
    transaction = replace(make_transaction(seed.org), cert_id=first.cert_id)
    assert await store.add_certificate_for_scep(first, event(), transaction) == "recorded"
    assert await store.get_scep_transaction("tid-1") == transaction
    before = await chain_ok(store)
    challenge = make_challenge(seed.org)
    await store.add_scep_challenge(challenge, event("scep.challenge_created"))
    # another key: refused, and the challenge it came with stays unused
    other = make_cert(seed.issuing, seed.org)
    assert await store.add_certificate_for_scep(
        other, event(), replace(transaction, key_fingerprint="key-b", cert_id=other.cert_id),
        (challenge.challenge_id, T0, event("scep.challenge_used"))) == "transaction_taken"
    assert await store.get_certificate_by_id(other.cert_id) is None
    unused = await store.find_scep_challenge(challenge.secret_hash)
    assert unused is not None and unused.used_at is None
    # the same request again (a concurrent twin): nothing recorded
    assert await store.add_certificate_for_scep(
        other, event(), replace(transaction, cert_id=other.cert_id)) == "transaction_taken"
    # the same key with another request (a renewal): the row follows the new certificate
    later = T0 + dt.timedelta(days=1)
    renewed = replace(transaction, request_fingerprint="req-2", cert_id=other.cert_id,
                      created_at=later, updated_at=later)
    assert await store.add_certificate_for_scep(other, event(), renewed) == "recorded"
    assert await store.get_scep_transaction("tid-1") == replace(renewed, created_at=T0)
    assert await chain_ok(store) == before + 2  # challenge created, renewed certificate


async def test_scep_transaction_race_yields_one_certificate(
        store: Store, seed: Seed, location: Location) -> None:
    """Ten copies of one request at once, half through a second store: one certificate."""
    other = make_store(location)
    await other.open()
    try:
        certs = [make_cert(seed.issuing, seed.org) for _ in range(10)]
        results = await asyncio.gather(*(
            (store if i % 2 else other).add_certificate_for_scep(
                cert, event(), replace(make_transaction(seed.org), cert_id=cert.cert_id))
            for i, cert in enumerate(certs)))
        assert results.count("recorded") == 1
        assert results.count("transaction_taken") == 9
        recorded = [c for c in certs if await store.get_certificate_by_id(c.cert_id)]
        assert len(recorded) == 1
        stored = await store.get_scep_transaction("tid-1")
        assert stored is not None and stored.cert_id == recorded[0].cert_id
    finally:
        await other.close()


# --- admin API queries (issue 13) --------------------------------------------------------

async def test_list_certificates_scoped_filtered_keyset(store: Store, seed: Seed) -> None:
    from ca_core.records import CertificateQuery

    other = make_org("globex")
    await store.add_organization(other, event("organization.created"))
    certs = []
    for n in range(5):
        cert = replace(make_cert(seed.issuing, seed.org, cn=f"host{n}.acme.example",
                                 profile="tls-server" if n % 2 else "tls-client"),
                       created_at=T0 + dt.timedelta(seconds=n))
        await store.add_certificate(cert, event())
        certs.append(cert)
    foreign = replace(make_cert(seed.issuing, other, cn="secret.globex.example"),
                      created_at=T0 + dt.timedelta(seconds=9))
    await store.add_certificate(foreign, event())
    now = T0 + dt.timedelta(days=1)

    async def ids(**kw: Any) -> list[str]:
        return [c.cert_id for c in await store.list_certificates(
            CertificateQuery(**{"now": now, **kw}))]

    newest_first = [c.cert_id for c in reversed(certs)]
    assert await ids(org_id=seed.org.org_id) == newest_first
    assert await ids() == [foreign.cert_id, *newest_first]
    page = await store.list_certificates(CertificateQuery(now=now, org_id=seed.org.org_id,
                                                          limit=2))
    after = (page[-1].created_at, page[-1].cert_id)
    assert page[-1].created_at is not None
    assert await ids(org_id=seed.org.org_id, before=after) == newest_first[2:]
    assert await ids(org_id=seed.org.org_id, profile="tls-server") == [
        certs[3].cert_id, certs[1].cert_id]
    assert await ids(text="HOST2") == [certs[2].cert_id]  # subject, any case
    assert await ids(text="www.host4.acme") == [certs[4].cert_id]  # a SAN
    assert await ids(text="%") == [] and await ids(text="_") == []  # no wildcards
    assert await ids(org_id=seed.org.org_id, text="globex") == []  # scope holds
    assert await ids(status="revoked") == []
    assert len(await ids(status="active")) == 6
    assert await ids(status="expired", now=T0 + dt.timedelta(days=91)) != []
    assert await ids(expiring_before=T0) == []
    assert await ids(requester="nobody") == []
    assert await store.find_certificates_by_serial(foreign.serial_hex,
                                                   org_id=seed.org.org_id) == []
    # a scope of several organizations (a reader's own and those sharing with it)
    both = frozenset({seed.org.org_id, other.org_id})
    assert await ids(org_ids=both) == [foreign.cert_id, *newest_first]
    assert await ids(org_ids=frozenset({other.org_id})) == [foreign.cert_id]
    assert await ids(org_ids=frozenset({other.org_id}), org_id=seed.org.org_id) == []
    assert await ids(org_ids=frozenset()) == []
    assert await ids(org_ids=frozenset({"no-such-org"})) == []
    assert await ids(org_ids=both, org_id=other.org_id, text="secret") == [foreign.cert_id]
    assert [c.cert_id for c in await store.find_certificates_by_serial(
        foreign.serial_hex, org_ids=both)] == [foreign.cert_id]
    assert await store.find_certificates_by_serial(
        foreign.serial_hex, org_ids=frozenset({seed.org.org_id})) == []
    assert await store.find_certificates_by_serial(foreign.serial_hex,
                                                   org_ids=frozenset()) == []


async def test_tokens_list_revoke_and_org_status(store: Store, seed: Seed) -> None:
    from ca_core.records import AuditQuery

    other = make_org("globex")
    await store.add_organization(other, event("organization.created"))
    mine = ApiToken(token_id="t1", org_id=seed.org.org_id, role="pki_admin",
                    secret_hash="h", name="a", created_at=T0)
    theirs = replace(mine, token_id="t2", org_id=other.org_id,
                     created_at=T0 + dt.timedelta(seconds=1))
    await store.add_token(mine, event("token.created"))
    await store.add_token(theirs, event("token.created"))
    assert [t.token_id for t in await store.list_tokens()] == ["t1", "t2"]
    assert [t.token_id for t in await store.list_tokens(seed.org.org_id)] == ["t1"]
    assert [t.token_id for t in await store.list_tokens(after=(T0, "t1"))] == ["t2"]
    assert await store.revoke_token("t2", seed.org.org_id, event("token.revoked")) is None
    revoked = await store.revoke_token("t2", None, event("token.revoked"))
    assert revoked is not None and revoked.revoked
    assert await store.revoke_token("t2", None, event("token.revoked")) is None
    updated = await store.update_organization(other.org_id, "Globex", "disabled",
                                              {"isolation": "strict"}, event("org.updated"))
    assert updated is not None and updated.status == "disabled"
    got = await store.get_token("t2")
    assert got is not None and got.org_status == "disabled"
    assert await store.update_organization("missing", "x", "active", {},
                                           event("org.updated")) is None
    assert [o.slug for o in await store.list_organizations(other.org_id)] == ["globex"]
    entries = await store.query_audit(AuditQuery(action="revoked"))
    assert [e.event.event_type for e in entries] == ["token.revoked"]
    assert await store.query_audit(AuditQuery(org_id="nobody")) == []
    assert len(await store.query_audit(AuditQuery(limit=2))) == 2
    assert await chain_ok(store) == len(await store.audit_entries())


async def test_scep_pending_failure_and_decisions(store: Store, seed: Seed) -> None:
    pending = replace(make_transaction(seed.org, tid="tid-p"), status="pending",
                      profile="external_integration", csr_der=b"\x30\x00",
                      requester="static")
    challenge = make_challenge(seed.org)
    await store.add_scep_challenge(challenge, event("scep.challenge_created"))
    assert await store.record_scep_transaction(
        pending, event("scep.request_pending"),
        (challenge.challenge_id, T0, event("scep.challenge_used"))) == "recorded"
    assert (await store.find_scep_challenge(challenge.secret_hash) or challenge).used_at == T0
    assert await store.get_scep_transaction("tid-p") == pending
    assert await store.list_scep_transactions(seed.org.org_id) == [pending]
    assert await store.list_scep_transactions(str(uuid.uuid4())) == []
    # a pending row is never replaced, not even by the same key with another request
    assert await store.record_scep_transaction(
        replace(pending, request_fingerprint="req-2"), event("scep.request_pending")
    ) == "transaction_taken"
    # approving: only the pending row of this very request moves, with its certificate
    cert = make_cert(seed.issuing, seed.org)
    assert not await store.add_certificate_for_scep_pending(
        cert, event(), "tid-p", "req-other", T0, event("scep.request_approved"))
    assert await store.get_certificate_by_id(cert.cert_id) is None
    assert await store.add_certificate_for_scep_pending(
        cert, event(), "tid-p", "req-1", T0, event("scep.request_approved"))
    approved = await store.get_scep_transaction("tid-p")
    assert approved is not None and (approved.status, approved.cert_id) == (
        "success", cert.cert_id)
    assert not await store.add_certificate_for_scep_pending(
        make_cert(seed.issuing, seed.org), event(), "tid-p", "req-1", T0,
        event("scep.request_approved"))
    assert await store.reject_scep_pending("tid-p", "2", T0, event("scep.request_rejected")) \
        is None
    # a failure replaces only a failure of the same key
    failed = replace(make_transaction(seed.org, tid="tid-f"), status="failure", fail_info="2")
    assert await store.record_scep_transaction(failed, event("scep.request_failed")) == \
        "recorded"
    assert await store.record_scep_transaction(
        replace(failed, request_fingerprint="req-2", fail_info="0"),
        event("scep.request_failed")) == "recorded"
    assert (await store.get_scep_transaction("tid-f") or failed).fail_info == "0"
    assert await store.record_scep_transaction(
        replace(failed, key_fingerprint="key-b", request_fingerprint="req-3"),
        event("scep.request_failed")) == "transaction_taken"
    assert await store.record_scep_transaction(
        replace(failed, transaction_id="tid-p", request_fingerprint="req-9"),
        event("scep.request_failed")) == "transaction_taken"  # tid-p holds a certificate
    rejecting = replace(pending, transaction_id="tid-r")
    await store.record_scep_transaction(rejecting, event("scep.request_pending"))
    rejected = await store.reject_scep_pending("tid-r", "2", T0, event("scep.request_rejected"))
    assert rejected is not None and (rejected.status, rejected.fail_info, rejected.decided_at) \
        == ("rejected", "2", T0)


async def test_scep_endpoint_policy(store: Store, seed: Seed) -> None:
    org = seed.org.org_id
    assert await store.get_scep_endpoint(org, "p") is None
    await store.set_scep_secret(org, "p", "scrypt$x", T0, event("scep.secret_set"))
    await store.set_scep_approval(org, "p", True, T0, event("scep.endpoint_set"))
    found = await store.get_scep_endpoint(org, "p")
    assert found is not None and (found.require_approval, found.secret_hash) == (
        True, "scrypt$x")
    await store.set_scep_secret(org, "p", None, T0, event("scep.secret_cleared"))
    found = await store.get_scep_endpoint(org, "p")
    assert found is not None and (found.require_approval, found.secret_hash) == (True, None)
    assert [e.profile for e in await store.list_scep_endpoints()] == ["p"]
    with pytest.raises(StoreConflict):  # no such organization
        await store.set_scep_approval(str(uuid.uuid4()), "p", True, T0, event("scep.x"))


async def test_issuing_ca_activation(store: Store, seed: Seed) -> None:
    intermediate = make_ca("int-x", "intermediate", None, seed.root)
    await store.add_ca(intermediate, event("ca.created"))
    successor = replace(make_ca("org-issuing-g2", "issuing", seed.org, intermediate),
                        status="next")
    await store.add_ca(successor, event("ca.created"))
    before = await chain_ok(store)
    assert not await store.activate_issuing_ca(seed.org.org_id, seed.issuing.ca_id,
                                               event("ca.activated"))  # not "next"
    assert await store.activate_issuing_ca(seed.org.org_id, successor.ca_id,
                                           event("ca.activated"))
    statuses = {ca.ca_id: ca.status for ca in await store.list_cas()}
    assert (statuses[seed.issuing.ca_id], statuses[successor.ca_id]) == ("retired", "active")
    assert not await store.activate_issuing_ca(seed.org.org_id, successor.ca_id,
                                               event("ca.activated"))
    assert await chain_ok(store) == before + 1


async def test_service_accounts(store: Store, seed: Seed) -> None:
    """Bindings: one live binding per fingerprint (a second is a conflict, a revoked one
    frees it), keyset pages per organization, a scoped revoke, and the organization's
    status read with the binding (a disabled organization's stop at once)."""
    from ca_core.records import ServiceAccount

    other = make_org("globex")
    await store.add_organization(other, event("organization.created"))
    mine = ServiceAccount(
        account_id="sa-1", org_id=seed.org.org_id, role="service_account", name="billing",
        fingerprint="ab" * 32, subject_dn="CN=billing", issuer_dn="CN=Other CA",
        serial_hex="0a1b", not_after=T0 + dt.timedelta(days=90), created_at=T0)
    theirs = replace(mine, account_id="sa-2", org_id=other.org_id, fingerprint="cd" * 32,
                     role="cert_manager", created_at=T0 + dt.timedelta(seconds=1))
    await store.add_service_account(mine, event("service_account.created"))
    await store.add_service_account(theirs, event("service_account.created"))
    with pytest.raises(StoreConflict):  # the same certificate bound twice
        await store.add_service_account(replace(mine, account_id="sa-3"),
                                        event("service_account.created"))
    with pytest.raises(StoreConflict):  # an organization that does not exist
        await store.add_service_account(replace(mine, account_id="sa-4", org_id="missing",
                                                fingerprint="ef" * 32),
                                        event("service_account.created"))
    assert await store.get_service_account("sa-1") == mine
    assert await store.find_service_account("ab" * 32) == mine
    assert await store.find_service_account("00" * 32) is None
    assert await store.get_service_account("sa-missing") is None
    assert [a.account_id for a in await store.list_service_accounts()] == ["sa-1", "sa-2"]
    assert [a.account_id for a in await store.list_service_accounts(other.org_id)] == ["sa-2"]
    assert [a.account_id for a in await store.list_service_accounts(
        after=(T0, "sa-1"))] == ["sa-2"]
    assert [a.account_id for a in await store.list_service_accounts(limit=1)] == ["sa-1"]
    # scoped: another organization's binding is not revoked (and nothing is written)
    length = await chain_ok(store)
    assert await store.revoke_service_account("sa-2", seed.org.org_id,
                                              event("service_account.revoked")) is None
    assert await chain_ok(store) == length
    revoked = await store.revoke_service_account("sa-1", seed.org.org_id,
                                                 event("service_account.revoked"))
    assert revoked is not None and revoked.revoked
    assert await store.revoke_service_account("sa-1", None,
                                              event("service_account.revoked")) is None
    assert await store.find_service_account("ab" * 32) is None
    got = await store.get_service_account("sa-1")
    assert got is not None and got.revoked
    # the revoked binding frees its certificate for a new one
    await store.add_service_account(replace(mine, account_id="sa-5"),
                                    event("service_account.created"))
    found = await store.find_service_account("ab" * 32)
    assert found is not None and found.account_id == "sa-5"
    await store.update_organization(other.org_id, "Globex", "disabled", {},
                                    event("org.updated"))
    disabled = await store.find_service_account("cd" * 32)
    assert disabled is not None and disabled.org_status == "disabled"
    assert await chain_ok(store) == length + 3


# --- code signing (issue 14) -------------------------------------------------------------

def make_signature(cert: CertificateRecord, artifact_hash: str, **changes: Any
                   ) -> CodeSignatureRecord:
    record = CodeSignatureRecord(
        signature_id=str(uuid.uuid4()), org_id=cert.org_id, cert_id=cert.cert_id,
        artifact_type="lora_adapter", artifact_name="adapters/clara-de-v3.safetensors",
        artifact_hash=artifact_hash, hash_algorithm="sha256",
        signature_der=b"\x30\x82\x05\x00" + secrets.token_bytes(1280),
        signature_algorithm="ecdsa-with-SHA256", timestamp_token=secrets.token_bytes(900),
        tsa_ca_id=None, metadata={"model": "clara", "größe": 3, "tags": ["de", "legal"]},
        signed_at=T0.astimezone(CEST), created_at=T0)
    return replace(record, **changes)


async def test_code_signers_and_signatures(store: Store, seed: Seed) -> None:
    cert = make_cert(seed.issuing, seed.org, profile="code_signing", cn="Acme Code Signing")
    renewed = make_cert(seed.issuing, seed.org, profile="code_signing", cn="Acme Code Signing",
                        not_after=T0 + dt.timedelta(days=400))
    for c in (cert, renewed):
        await store.add_certificate(c, event("certificate.issued", serial=c.serial_hex))
    signers = [CodeSignerRecord(
        signer_id=str(uuid.uuid4()), org_id=seed.org.org_id, cert_id=c.cert_id,
        key_ref=f"pkcs11:object=codesign-{n}", key_backend="pkcs11", not_before=c.not_before,
        not_after=c.not_after, created_at=T0) for n, c in enumerate((cert, renewed))]
    for signer in signers:
        await store.add_code_signer(signer, event("code_signer.created"))
    assert await store.list_code_signers(seed.org.org_id) == signers[::-1]  # longest first
    assert await store.list_code_signers(str(uuid.uuid4())) == []

    digest = hashlib.sha256(b"adapter").hexdigest()
    record = make_signature(cert, digest)
    await store.add_code_signature(record, event("code_signature.created"))
    stored = await store.get_code_signature(record.signature_id)
    assert stored == replace(record, signed_at=T0)  # read back in UTC
    assert await store.find_code_signature(digest, cert.cert_id) == stored
    assert await store.find_code_signature(digest, renewed.cert_id) is None
    length = await chain_ok(store)

    # The seed's UNIQUE (artifact_hash, cert_id): a second row is refused, nothing written.
    with pytest.raises(StoreConflict):
        await store.add_code_signature(make_signature(cert, digest), event("code_signature.x"))
    assert await chain_ok(store) == length
    # The same hash by another certificate is another signature.
    other = make_signature(renewed, digest, hash_algorithm="sha256", metadata={})
    await store.add_code_signature(other, event("code_signature.created"))

    later = T0 + dt.timedelta(hours=1)
    counted = await store.record_code_verification(record.signature_id, later,
                                                   event("code_signature.verified"))
    assert counted is not None
    assert (counted.verified_count, counted.last_verified_at) == (1, later)
    counted = await store.record_code_verification(record.signature_id, later,
                                                   event("code_signature.verified"))
    assert counted is not None and counted.verified_count == 2
    assert await store.record_code_verification(str(uuid.uuid4()), later,
                                                event("code_signature.verified")) is None
    assert await chain_ok(store) == length + 3  # other, and two counted verifications


@pytest.mark.parametrize("change", [{"artifact_type": "firmware"},
                                    {"hash_algorithm": "md5"}])
async def test_code_signature_check_constraints(store: Store, seed: Seed,
                                                change: dict[str, str]) -> None:
    cert = make_cert(seed.issuing, seed.org, profile="code_signing")
    await store.add_certificate(cert, event("certificate.issued"))
    length = await chain_ok(store)
    # The core refuses these before the store; the table holds the seed's lists too.
    with pytest.raises(StoreError):
        await store.add_code_signature(make_signature(cert, "ab" * 32, **change),
                                       event("code_signature.created"))
    assert await chain_ok(store) == length


# --- service registry (issue 14) ----------------------------------------------------------

def make_service(org: Organization, slug: str, created_at: dt.datetime = T0,
                 by: str = "token:ops") -> ServiceRecord:
    return ServiceRecord(
        service_id=str(uuid.uuid4()), org_id=org.org_id, name=slug.title(), slug=slug,
        service_type="api", endpoints=[f"https://{slug}.example"],
        health_check_url=f"https://{slug}.example/health", version="1.0",
        environment="production", metadata={"team": "x", "ü": [1, 2]}, created_by=by,
        created_at=created_at, updated_at=created_at)


async def test_service_registry(store: Store, seed: Seed) -> None:
    clara = make_service(seed.org, "clara")
    await store.add_service(clara, event("service.registered"), "mtls:sa-1")
    assert await store.get_service(seed.org.org_id, "clara") == clara
    assert await store.get_service_by_id(clara.service_id) == clara
    assert await store.service_of_actor("mtls:sa-1") == clara.service_id
    assert await store.service_of_actor("mtls:sa-2") is None
    with pytest.raises(StoreConflict):  # slug unique per organization
        await store.add_service(make_service(seed.org, "clara"), event("service.registered"))
    with pytest.raises(StoreConflict):  # one service per acting principal
        await store.add_service(make_service(seed.org, "other"), event("service.registered"),
                                "mtls:sa-1")
    other_org = make_org("beta")
    await store.add_organization(other_org, event("organization.created"))
    covina = make_service(other_org, "clara", T0 + dt.timedelta(seconds=1))  # same slug
    await store.add_service(covina, event("service.registered"))
    assert await store.list_services() == [clara, covina]
    assert await store.list_services(other_org.org_id) == [covina]
    assert await store.list_services(after=(clara.created_at, clara.service_id)) == [covina]
    assert await store.list_services(limit=1) == [clara]
    changed = dataclasses.replace(clara, name="Clara 2", endpoints=[], metadata={},
                                  version=None, status="inactive",
                                  updated_at=T0 + dt.timedelta(hours=1))
    assert await store.update_service(changed, event("service.updated")) == changed
    assert await store.update_service(make_service(seed.org, "ghost"),
                                      event("service.updated")) is None
    await store.add_service_principal(clara.service_id, "token:robot", T0,
                                      event("service.principal_added"))
    with pytest.raises(StoreConflict):
        await store.add_service_principal(covina.service_id, "token:robot", T0,
                                          event("service.principal_added"))

    # heartbeats: upserted
    await store.record_heartbeat(clara.service_id, T0, "healthy", "1.1", None)
    await store.record_heartbeat(clara.service_id, T0 + dt.timedelta(minutes=1), "degraded",
                                 None, event("service.health_changed"))
    beat = await store.get_service_by_id(clara.service_id)
    assert beat is not None
    assert (beat.last_seen, beat.health_status, beat.reported_version) == (
        T0 + dt.timedelta(minutes=1), "degraded", None)

    # certificates: at most one active (a link), every one remembered
    first = make_cert(seed.issuing, seed.org, not_after=T0 + dt.timedelta(days=20))
    await store.add_service_certificate(clara.service_id, first, event(),
                                        event("service.certificate_linked"))
    second = make_cert(seed.issuing, seed.org, not_after=T0 + dt.timedelta(days=200))
    await store.add_service_certificate(clara.service_id, second, event(),
                                        event("service.certificate_linked"))
    linked = await store.get_service_by_id(clara.service_id)
    assert linked is not None
    assert (linked.active_cert_id, linked.cert_serial_hex, linked.cert_not_after,
            linked.cert_status) == (second.cert_id, second.serial_hex, second.not_after,
                                    "active")
    with pytest.raises(StoreConflict):  # no such service: the certificate is not stored
        await store.add_service_certificate(str(uuid.uuid4()), make_cert(
            seed.issuing, seed.org), event(), event("service.certificate_linked"))
    third = make_cert(seed.issuing, other_org, not_after=T0 + dt.timedelta(days=10))
    await store.add_service_certificate(covina.service_id, third, event(),
                                        event("service.certificate_linked"))

    # the due query: active certificates ending before the bound, soonest first
    due = await store.services_due(T0, T0 + dt.timedelta(days=30))
    assert [s.service_id for s in due] == [covina.service_id]
    due = await store.services_due(T0, T0 + dt.timedelta(days=365))
    assert [s.service_id for s in due] == [covina.service_id, clara.service_id]
    assert [s.service_id for s in await store.services_due(
        T0, T0 + dt.timedelta(days=365), seed.org.org_id)] == [clara.service_id]
    await store.revoke_certificate(Revocation(
        ca_id=seed.issuing.ca_id, serial_hex=third.serial_hex, cert_id=third.cert_id,
        revoked_at=T0, reason="superseded", crl_partition=0), event("certificate.revoked"))
    assert [s.service_id for s in await store.services_due(
        T0, T0 + dt.timedelta(days=365))] == [clara.service_id]

    # certificates without a registered service (for compliance reports)
    loose = [make_cert(seed.issuing, seed.org) for _ in range(3)]
    for cert in loose:
        await store.add_certificate(cert, event())
    count, ids = await store.certificates_without_service(None, T0)
    assert count == 3 and set(ids) == {c.cert_id for c in loose}
    count, ids = await store.certificates_without_service(seed.org.org_id, T0, limit=2)
    assert count == 3 and len(ids) == 2
    assert await store.certificates_without_service(other_org.org_id, T0) == (0, [])
    assert (await store.certificates_without_service(None, T0 + dt.timedelta(days=91)))[0] \
        == 0  # expired ones are not counted
    await chain_ok(store)
