"""Compliance report benchmark (issue 14): both reports over many certificates on
PostgreSQL, through the service the REST API and the CLI call (``ReportService.generate``:
aggregate, render, store with its hash, audit).

Run ``python -m conformance.bench.reports [--rows 1000000] [--orgs 20] [--runs 3]``. It makes
a throwaway database (``vcc_pki_test_*``, dropped at the end) and bulk-loads with
``generate_series`` (like ``conformance.bench.api``): ``--rows`` certificates over ``--orgs``
organizations issued over the last year (validity 1 to 400 days, every 47th revoked with
one of four reasons, requesters of every protocol, three profiles) and one
certificate.issued audit event per certificate (every 10th naming ``renews``), then
ANALYZEs. Prints the median time of ``--runs`` generations per report, scope and format.
Asserts only that the figures add up (issued over the year = the rows loaded).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from ca_core.authority import Authority
from ca_core.principal import Principal
from ca_core.reports import ReportRequest, ReportService
from ca_core.signers.software import SoftwareKeyBackend
from db.postgres import PostgresStore
from tests.pg import create_throwaway_database, drop_database

_CERTIFICATES = """
INSERT INTO certificates (cert_id, issuer_ca_id, org_id, serial_hex, subject_dn, common_name,
  profile, certificate_der, key_algorithm, key_size, san, not_before, not_after, requester,
  status, created_at, crl_partition, revoked_at, revocation_reason)
SELECT md5(i::text), 'ca', 'org' || (i % $2), to_hex(i) || 'ab', 'CN=host' || i || '.example',
  'host' || i || '.example',
  (ARRAY['vcc_service', 'tls_client', 'mtls_service'])[i % 3 + 1],
  '\\x3082'::bytea, 'ec', 256, '{}'::jsonb,
  $3::timestamptz + i * $4::interval, $3::timestamptz + i * $4::interval
    + (i % 400 + 1) * interval '1 day',
  (ARRAY['acme:a', 'est:d', 'scep:r', 'token:t', 'mtls:m', 'vcc-pki cli'])[i % 6 + 1],
  CASE WHEN i % 47 = 0 THEN 'revoked' ELSE 'active' END,
  $3::timestamptz + i * $4::interval, 0,
  CASE WHEN i % 47 = 0 THEN $3::timestamptz + i * $4::interval + interval '1 day' END,
  CASE WHEN i % 47 = 0 THEN (ARRAY['keyCompromise', 'superseded', 'cessationOfOperation',
    'affiliationChanged'])[i % 4 + 1] END
FROM generate_series(1, $1) AS i
"""

# One certificate.issued event per certificate; the head is set to the last one after, so
# that the reports' own events chain on (the chain of the loaded rows is not valid: the
# bench never verifies it).
_AUDIT = """
INSERT INTO audit_log (seq, audit_id, timestamp, org_id, event_type, category, action,
  actor_type, actor_id, resource_type, resource_id, status, event_data, previous_hash,
  audit_hash)
SELECT i, md5(i::text), $3::timestamptz + i * $4::interval, 'org' || (i % $2),
  'certificate.issued', 'certificate', 'issue', 'api', 'token:t', 'certificate', md5(i::text),
  'success',
  CASE WHEN i % 10 = 0 THEN '{"profile": "vcc_service", "renews": "' || to_hex(i - 1)
    || 'ab", "serial": "' || to_hex(i) || 'ab"}'
  ELSE '{"profile": "vcc_service", "serial": "' || to_hex(i) || 'ab"}' END,
  md5((i - 1)::text) || md5((i - 1)::text), md5(i::text) || md5(i::text)
FROM generate_series(1, $1) AS i
"""


async def _load(dsn: str, rows: int, orgs: int, start: dt.datetime) -> None:
    step = dt.timedelta(days=365) / rows
    conn = await asyncpg.connect(dsn)
    try:
        for n in range(orgs):
            await conn.execute(
                "INSERT INTO organizations (org_id, slug, name, created_at) VALUES ($1,$2,$2,$3)",
                f"org{n}", f"org-{n}", start)
        await conn.execute(
            "INSERT INTO certificate_authorities (ca_id, name, ca_type, subject_dn, serial_hex,"
            " certificate_der, key_ref, key_backend, key_algorithm, key_size, not_before,"
            " not_after, created_at) VALUES ('ca','ca','issuing','CN=ca','1','\\x30'::bytea,"
            " 'file:ca','software','ec',256,$1::timestamptz,"
            " $1::timestamptz + interval '10 years', $1::timestamptz)", start)
        await conn.execute(_CERTIFICATES, rows, orgs, start, step)
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_moves_head")
        await conn.execute(_AUDIT, rows, orgs, start, step)
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_moves_head")
        await conn.execute("UPDATE audit_head SET seq = $1, audit_hash = md5($2) || md5($2)"
                           " WHERE id = 1", rows, str(rows))
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--orgs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(days=365)
    dsn = await create_throwaway_database()
    store = PostgresStore(dsn)
    try:
        await store.open()
        began = time.perf_counter()
        await _load(dsn, args.rows, args.orgs, start)
        print(f"loaded {args.rows} certificates and audit events in "
              f"{time.perf_counter() - began:.1f} s")
        with tempfile.TemporaryDirectory() as keys:
            service = ReportService(Authority(store, SoftwareKeyBackend(Path(keys), b"bench")))
            operator = Principal.system("bench")
            year = (start.isoformat(), now.isoformat())
            month = ((now - dt.timedelta(days=30)).isoformat(), now.isoformat())
            cases = [
                ("certificate_lifecycle", "all orgs, 1 year", None, year),
                ("certificate_lifecycle", "all orgs, 30 days", None, month),
                ("certificate_lifecycle", "one org, 1 year", "org-1", year),
                ("certificate_lifecycle", "one org, 30 days", "org-1", month),
                ("crypto_inventory", "all orgs", None, month),
            ]
            print(f"{'report':<22} {'scope':<20} {'json':>9} {'csv':>9} {'html':>9}"
                  f"  (ms, median of {args.runs}; {args.rows} certificates, {args.orgs} "
                  "organizations)")
            for name, label, org, (since, until) in cases:
                cells = []
                for fmt in ("json", "csv", "html"):
                    samples = []
                    for _ in range(args.runs):
                        began = time.perf_counter()
                        generated = await service.generate(operator, ReportRequest(
                            name, fmt, org, since, until))
                        samples.append((time.perf_counter() - began) * 1000)
                    cells.append(statistics.median(samples))
                    if name == "certificate_lifecycle" and org is None and since == year[0]:
                        figures = generated.record.report_data["figures"]
                        assert figures["issued"] >= args.rows - 1, figures["issued"]
                print(f"{name:<22} {label:<20} " + " ".join(f"{c:>9.0f}" for c in cells))
    finally:
        await store.close()
        await drop_database(dsn)


if __name__ == "__main__":
    asyncio.run(main())
