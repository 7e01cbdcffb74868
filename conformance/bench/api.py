"""Admin API listing benchmark (issue 13): certificate list queries over many rows in
PostgreSQL, through the store (``SqlStore.list_certificates``, the query the REST list runs).

Run ``python -m conformance.bench.api [--rows 1000000] [--orgs 20] [--queries 200]``. It makes
a throwaway database (``vcc_pki_test_*``, dropped at the end), bulk-loads ``--rows``
certificates spread over ``--orgs`` organizations with ``generate_series`` (dummy DER: the
query never reads it back into X.509), ANALYZEs, and prints p50/p99 of the first page and of
a deep cursor page (the page after row ``rows/orgs/2`` of one organization) for unfiltered
and filtered lists, scoped to an organization and unscoped. Then the cost of isolation
levels: ``Authority.readable_orgs`` (the fresh read of the organizations every certificate
list and read makes; half of them federated), and the first page scoped by an org set
(``org_id IN (...)``) of 1 and of ``orgs/2`` organizations beside ``org_id = ?``. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from ca_core.authority import Authority
from ca_core.principal import Principal
from ca_core.records import CertificateQuery
from ca_core.signers.software import SoftwareKeyBackend
from db.postgres import PostgresStore
from tests.pg import create_throwaway_database, drop_database

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

_LOAD = """
INSERT INTO certificates (cert_id, issuer_ca_id, org_id, serial_hex, subject_dn, common_name,
  profile, certificate_der, key_algorithm, key_size, san, not_before, not_after, requester,
  status, created_at, crl_partition)
SELECT md5(i::text), 'ca', 'org' || (i % $2), to_hex(i) || 'ab', 'CN=host' || i || '.example',
  'host' || i || '.example', CASE WHEN i % 3 = 0 THEN 'tls_client' ELSE 'vcc_service' END,
  '\\x3082'::bytea, 'ec', 256, jsonb_build_object('dns', jsonb_build_array('host' || i
  || '.example')), $3::timestamptz, $3::timestamptz + (i % 400 + 1) * interval '1 day',
  'token:x', CASE WHEN i % 47 = 0 THEN 'revoked' ELSE 'active' END,
  $3::timestamptz + i * interval '1 second', 0
FROM generate_series(1, $1) AS i
"""


async def _load(dsn: str, rows: int, orgs: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for n in range(orgs):
            await conn.execute(
                "INSERT INTO organizations (org_id, slug, name, created_at) VALUES ($1,$2,$2,$3)",
                f"org{n}", f"org-{n}", T0)
        await conn.execute(
            "INSERT INTO certificate_authorities (ca_id, name, ca_type, subject_dn, serial_hex,"
            " certificate_der, key_ref, key_backend, key_algorithm, key_size, not_before,"
            " not_after, created_at) VALUES ('ca','ca','issuing','CN=ca','1','\\x30'::bytea,"
            " 'k','software','ec',256,$1::timestamptz,"
            " $1::timestamptz + interval '10 years', $1::timestamptz)", T0)
        await conn.execute(_LOAD, rows, orgs, T0)
        await conn.execute("ANALYZE certificates")
    finally:
        await conn.close()


async def _timed(call: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--orgs", type=int, default=20)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    dsn = await create_throwaway_database()
    store = PostgresStore(dsn)
    try:
        await store.open()
        started = time.perf_counter()
        await _load(dsn, args.rows, args.orgs)
        print(f"loaded {args.rows} certificates in {time.perf_counter() - started:.1f} s")
        now = T0 + dt.timedelta(days=30)
        deep_page = await store.list_certificates(CertificateQuery(
            now=now, org_id="org1", limit=max(1, args.rows // args.orgs // 2)))
        deep = (deep_page[-1].created_at, deep_page[-1].cert_id)
        assert deep[0] is not None
        cases: dict[str, dict[str, Any]] = {
            "org, no filter": {"org_id": "org1"},
            "org, status=active": {"org_id": "org1", "status": "active"},
            "org, status=revoked": {"org_id": "org1", "status": "revoked"},
            "org, profile": {"org_id": "org1", "profile": "tls_client"},
            "org, expiring_before": {"org_id": "org1",
                                     "expiring_before": T0 + dt.timedelta(days=10)},
            "org, q=host12345": {"org_id": "org1", "text": "host12345"},
            "all orgs, no filter": {},
            "all orgs, status=revoked": {"status": "revoked"},
        }
        print(f"{'query':<28} {'first p50':>10} {'first p99':>10} {'deep p50':>10} "
              f"{'deep p99':>10}  (ms, limit 100, {args.queries} queries each)")
        for name, filters in cases.items():
            first = await _timed(lambda f=filters: store.list_certificates(  # type: ignore[misc]
                CertificateQuery(now=now, limit=101, **f)), args.queries)
            later = await _timed(lambda f=filters: store.list_certificates(  # type: ignore[misc]
                CertificateQuery(now=now, limit=101, before=deep, **f)), args.queries)
            print(f"{name:<28} {first[0]:>10.2f} {first[1]:>10.2f} {later[0]:>10.2f} "
                  f"{later[1]:>10.2f}")
        await _sharing(dsn, store, args, now)
    finally:
        await store.close()
        await drop_database(dsn)


async def _sharing(dsn: str, store: PostgresStore, args: argparse.Namespace,
                   now: dt.datetime) -> None:
    """What isolation levels add to a certificate list: one read of the organizations
    (``readable_orgs``) and an ``IN`` scope instead of ``=``."""
    half = max(1, args.orgs // 2)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE organizations SET config = '{\"isolation\": \"federated\"}'"
                           " WHERE org_id = ANY($1::text[])", [f"org{n}" for n in range(half)])
    finally:
        await conn.close()
    with tempfile.TemporaryDirectory() as keys:
        authority = Authority(store, SoftwareKeyBackend(Path(keys), b"bench"))
        reader = Principal("api", "token:bench", "org1", "auditor")
        readable = await authority.readable_orgs(reader)
        assert readable is not None and len(readable) == half
        rows = {
            "readable_orgs (org read)": lambda: authority.readable_orgs(reader),
            "list org_id = org1": lambda: store.list_certificates(CertificateQuery(
                now=now, limit=101, org_id="org1")),
            "list org_ids {org1}": lambda: store.list_certificates(CertificateQuery(
                now=now, limit=101, org_ids=frozenset({"org1"}))),
            f"list org_ids ({half} orgs)": lambda: store.list_certificates(CertificateQuery(
                now=now, limit=101, org_ids=readable)),
            f"q=host12345, {half} orgs": lambda: store.list_certificates(CertificateQuery(
                now=now, limit=101, org_ids=readable, text="host12345")),
        }
        print(f"\n{'isolation levels':<28} {'p50':>10} {'p99':>10}  (ms, {args.orgs} "
              f"organizations, {half} federated, {args.queries} calls each)")
        for name, call in rows.items():
            p50, p99 = await _timed(call, args.queries)
            print(f"{name:<28} {p50:>10.2f} {p99:>10.2f}")


if __name__ == "__main__":
    asyncio.run(main())
