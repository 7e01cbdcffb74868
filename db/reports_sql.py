"""The compliance reports' queries (``ca_core.storage.ReportStore``), a part of the one SQL
store (``db.sql.SqlStore`` inherits it): aggregates computed by the database, so that a
report over a million certificates reads a few hundred rows, not a million.

The certificate_lifecycle figures take six statements (and two for renewals):

1. certificates issued in the period grouped by (profile, protocol), with the longest
   validity of each group, and by issuance bar (the chart);
2. the median validity: the middle row(s) of the period's validities (ORDER BY ... LIMIT 2
   OFFSET (n-1)/2: one spelling for SQLite and PostgreSQL, which lack a common median);
3. revocations in the period by reason; 4. expirations in the period;
5. the expiry histogram: one pass over the certificates valid now, a SUM(CASE) per edge.

Renewals are read from where they are recorded: the certificate.issued audit events that
name ``renews`` (indexed by time), and ACME orders naming ``replaces``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from ca_core.records import AuditEvent
from ca_core.reports import LifecycleFigures, LifecycleQuery, ReportRecord, SigningKeyRow
from db.dialect import Body, Dialect, Stmt, one, rows, run

if TYPE_CHECKING:
    from db.sql import Tx, Write

# The requester's prefix names the protocol (see ca_core.reports).
_PROTOCOL = (
    "CASE WHEN requester LIKE 'acme:%' THEN 'acme' WHEN requester LIKE 'est:%' THEN 'est'"
    " WHEN requester LIKE 'scep:%' THEN 'scep' WHEN requester LIKE 'token:%' THEN 'token'"
    " WHEN requester LIKE 'mtls:%' THEN 'mtls' ELSE 'other' END")

# The key in the audit event's data as stored: compact ('"renews":', db.audit_chain.data_json)
# since the chain's own text is stored, '"renews": ' (json.dumps' default) in older rows.
_RENEWS = '%"renews":%'

_REPORT_COLUMNS = (
    "report_id, org_id, report_type, report_period_start, report_period_end, report_format,"
    " report_data, content_sha256, report_status, generated_at, generated_by, file_path,"
    " LENGTH(content) AS content_size")


class ReportQueries:
    """Mixed into SqlStore; uses its dialect, reads and writes."""

    _d: Dialect

    if TYPE_CHECKING:  # SqlStore's
        async def _read(self, stmt: Stmt) -> Any: ...
        async def _lookup(self, stmt: Stmt) -> Any: ...
        async def _write(self, write: Write[Any]) -> Any: ...

    def _validity(self) -> str:
        return f"({self._d.epoch('not_after')} - {self._d.epoch('not_before')})"

    async def lifecycle_figures(self, query: LifecycleQuery) -> LifecycleFigures:
        d = self._d
        scope, scope_params = ("", []) if query.org_id is None else (
            " AND org_id = ?", [query.org_id])
        period = [d.t(query.start), d.t(query.end)]
        # Two grouped scans, not one over (profile, protocol, bar): PostgreSQL hashes a few
        # dozen groups twice faster than a few thousand once (0.3 s against 0.65 s over
        # 200,000 rows). The statements are independent: on PostgreSQL they run at once on
        # the pool (SQLite's reader thread takes them in turn).
        bar = d.floor(f"(({d.epoch('created_at')} - ?) / ?)")
        edges = query.histogram_edges[1:]
        sums = ", ".join("SUM(CASE WHEN not_after < ? THEN 1 ELSE 0 END)" for _ in edges)
        grouped, bars, revoked, expired, histogram, renewed = await asyncio.gather(
            self._read(rows(
                f"SELECT profile, {_PROTOCOL} AS protocol, COUNT(*) AS n,"
                f" MAX({self._validity()}) AS longest FROM certificates"
                f" WHERE created_at >= ? AND created_at < ?{scope} GROUP BY profile, protocol",
                *period, *scope_params)),
            self._read(rows(
                f"SELECT {bar} AS bar, COUNT(*) AS n FROM certificates"
                f" WHERE created_at >= ? AND created_at < ?{scope} GROUP BY bar",
                query.start.timestamp(), float(query.bucket_seconds), *period,
                *scope_params)),
            self._read(rows(
                "SELECT revocation_reason, COUNT(*) AS n FROM certificates"
                f" WHERE revoked_at >= ? AND revoked_at < ?{scope} GROUP BY revocation_reason",
                *period, *scope_params)),
            self._read(one(
                "SELECT COUNT(*) FROM certificates WHERE not_after >= ? AND not_after < ?"
                f"{scope} AND (revoked_at IS NULL OR revoked_at >= not_after)",
                d.t(query.start), d.t(min(query.end, query.now)), *scope_params)),
            self._read(one(
                f"SELECT COUNT(*), {sums} FROM certificates"
                f" WHERE status = 'active' AND not_after > ?{scope}",
                *[d.t(e) for e in edges], d.t(query.now), *scope_params)),
            self._renewed(query, scope, scope_params))
        issued = 0
        by_profile: dict[str, int] = {}
        by_protocol: dict[str, int] = {}
        longest: float | None = None
        for row in grouped:
            n = int(row["n"])
            issued += n
            by_profile[row["profile"]] = by_profile.get(row["profile"], 0) + n
            by_protocol[row["protocol"]] = by_protocol.get(row["protocol"], 0) + n
            if row["longest"] is not None:
                longest = max(longest or 0.0, float(row["longest"]))
        series = {int(row["bar"]): int(row["n"]) for row in bars}
        median: float | None = None
        if issued:
            middle = await self._read(rows(
                f"SELECT {self._validity()} AS v FROM certificates"
                f" WHERE created_at >= ? AND created_at < ?{scope} ORDER BY v LIMIT 2 OFFSET ?",
                *period, *scope_params, (issued - 1) // 2))
            values = [float(r["v"]) for r in middle]
            median = values[0] if issued % 2 else (values[0] + values[-1]) / 2
        below = [int(histogram[i + 1] or 0) for i in range(len(edges))]
        total = int(histogram[0] or 0)
        buckets = [b - a for a, b in zip([0, *below], [*below, total], strict=True)]
        return LifecycleFigures(
            issued=issued, renewed=renewed,
            revoked_by_reason={r["revocation_reason"] or "unspecified": int(r["n"])
                               for r in revoked},
            expired=int(expired[0]), by_profile=by_profile, by_protocol=by_protocol,
            validity_median_seconds=median, validity_longest_seconds=longest,
            expiry_histogram=tuple(buckets), issuance_series=series)

    async def _renewed(self, query: LifecycleQuery, scope: str, params: list[Any]) -> int:
        d = self._d
        audited = await self._read(one(
            "SELECT COUNT(*) FROM audit_log WHERE timestamp >= ? AND timestamp < ?"
            f" AND event_type = 'certificate.issued' AND event_data LIKE ?{scope}",
            d.t(query.start), d.t(query.end), _RENEWS, *params))
        acme = await self._read(one(
            "SELECT COUNT(*) FROM acme_orders o JOIN certificates c ON c.cert_id = o.cert_id"
            " WHERE o.replaces IS NOT NULL AND c.created_at >= ? AND c.created_at < ?"
            + scope.replace("org_id", "c.org_id"),
            d.t(query.start), d.t(query.end), *params))
        return int(audited[0]) + int(acme[0])

    async def signing_keys(self, org_id: str | None) -> list[SigningKeyRow]:
        d = self._d
        # An organization's scope: its own CAs and signers, and the shared hierarchy
        # (root, intermediates, TSA: org_id NULL).
        ca_scope, params = ("", []) if org_id is None else (
            " WHERE (ca.org_id = ? OR ca.org_id IS NULL)", [org_id])
        found: list[SigningKeyRow] = []
        cas = await self._read(rows(
            "SELECT ca.*,"
            " (SELECT MAX(created_at) FROM certificates c WHERE c.issuer_ca_id = ca.ca_id)"
            " AS last_certificate,"
            " (SELECT MAX(created_at) FROM certificate_authorities ch"
            " WHERE ch.parent_ca_id = ca.ca_id) AS last_ca,"
            " (SELECT MAX(this_update) FROM crls WHERE crls.ca_id = ca.ca_id) AS last_crl,"
            " (SELECT MAX(gen_time) FROM timestamp_tokens t WHERE t.tsa_ca_id = ca.ca_id)"
            " AS last_timestamp"
            f" FROM certificate_authorities ca{ca_scope} ORDER BY ca.created_at, ca.ca_id",
            *params))
        for r in cas:
            last, source = _newest(d, (r["last_certificate"], "certificate"),
                                   (r["last_ca"], "certificate"), (r["last_crl"], "crl"),
                                   (r["last_timestamp"], "timestamp"))
            found.append(SigningKeyRow(
                kind=r["ca_type"], name=r["name"], org_id=r["org_id"], ca_name=None,
                subject_dn=r["subject_dn"], key_algorithm=r["key_algorithm"],
                key_size=r["key_size"], key_backend=r["key_backend"], key_ref=r["key_ref"],
                not_before=d.time(r["not_before"]), not_after=d.time(r["not_after"]),
                status=r["status"], last_signature=last, last_signature_source=source))
        for table, kind in (("ocsp_responders", "ocsp_responder"),
                            ("scep_ra_certificates", "scep_ra")):
            signers = await self._read(rows(
                "SELECT s.key_ref, s.key_backend, s.not_before, s.not_after, c.common_name,"
                " c.subject_dn, c.key_algorithm, c.key_size, c.status, ca.name AS ca_name,"
                f" ca.org_id FROM {table} s JOIN certificates c ON c.cert_id = s.cert_id"
                f" JOIN certificate_authorities ca ON ca.ca_id = s.ca_id{ca_scope}"
                " ORDER BY s.created_at", *params))
            found += [SigningKeyRow(
                kind=kind, name=r["common_name"], org_id=r["org_id"], ca_name=r["ca_name"],
                subject_dn=r["subject_dn"], key_algorithm=r["key_algorithm"],
                key_size=r["key_size"], key_backend=r["key_backend"], key_ref=r["key_ref"],
                not_before=d.time(r["not_before"]), not_after=d.time(r["not_after"]),
                status=r["status"], last_signature=None, last_signature_source=None)
                for r in signers]
        signer_scope, params = ("", []) if org_id is None else (" WHERE s.org_id = ?", [org_id])
        code = await self._read(rows(
            "SELECT s.key_ref, s.key_backend, s.not_before, s.not_after, s.org_id,"
            " c.common_name, c.subject_dn, c.key_algorithm, c.key_size, c.status,"
            " ca.name AS ca_name,"
            " (SELECT MAX(signed_at) FROM vcc_code_signatures v WHERE v.cert_id = s.cert_id)"
            " AS last_signature"
            " FROM code_signers s JOIN certificates c ON c.cert_id = s.cert_id"
            f" JOIN certificate_authorities ca ON ca.ca_id = c.issuer_ca_id{signer_scope}"
            " ORDER BY s.created_at", *params))
        found += [SigningKeyRow(
            kind="code_signer", name=r["common_name"], org_id=r["org_id"],
            ca_name=r["ca_name"], subject_dn=r["subject_dn"],
            key_algorithm=r["key_algorithm"], key_size=r["key_size"],
            key_backend=r["key_backend"], key_ref=r["key_ref"],
            not_before=d.time(r["not_before"]), not_after=d.time(r["not_after"]),
            status=r["status"], last_signature=d.time_opt(r["last_signature"]),
            last_signature_source=None if r["last_signature"] is None else "code_signature")
            for r in code]
        return found

    # stored reports ------------------------------------------------------------------------

    async def add_compliance_report(self, report: ReportRecord, audit: AuditEvent) -> None:
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO compliance_reports (report_id, org_id, report_type,"
                " report_period_start, report_period_end, report_format, report_data,"
                " content, content_sha256, report_status, generated_at, generated_by,"
                " file_path) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                report.report_id, report.org_id, report.report_type,
                d.t(report.period_start), d.t(report.period_end), report.report_format,
                json.dumps(report.report_data), report.content, report.content_sha256,
                report.report_status, d.t(report.generated_at), report.generated_by,
                report.file_path)
            yield from tx.append_audit(audit)
        await self._write(write)

    def _report(self, row: Any, content: bytes = b"") -> ReportRecord:
        d = self._d
        return ReportRecord(
            report_id=row["report_id"], org_id=row["org_id"], report_type=row["report_type"],
            period_start=d.time(row["report_period_start"]),
            period_end=d.time(row["report_period_end"]),
            report_format=row["report_format"], report_data=json.loads(row["report_data"]),
            content=content, content_sha256=row["content_sha256"],
            report_status=row["report_status"], generated_at=d.time(row["generated_at"]),
            generated_by=row["generated_by"], file_path=row["file_path"],
            content_size=int(row["content_size"]))

    async def list_compliance_reports(
        self, org_id: str | None = None, after: tuple[dt.datetime, str] | None = None,
        limit: int = 1000,
    ) -> list[ReportRecord]:
        where: list[str] = []
        params: list[Any] = []
        if after is not None:
            where.append("(generated_at, report_id) > (?, ?)")
            params += [self._d.t(after[0]), after[1]]
        if org_id is not None:
            where.append("org_id = ?")
            params.append(org_id)
        found = await self._read(rows(
            f"SELECT {_REPORT_COLUMNS} FROM compliance_reports"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY generated_at, report_id LIMIT ?", *params, limit))
        return [self._report(r) for r in found]

    async def get_compliance_report(self, report_id: str) -> ReportRecord | None:
        row = await self._lookup(one(
            f"SELECT {_REPORT_COLUMNS}, content FROM compliance_reports WHERE report_id = ?",
            report_id))
        return None if row is None else self._report(row, bytes(row["content"]))


def _newest(d: Dialect, *candidates: tuple[Any, str]
            ) -> tuple[dt.datetime | None, str | None]:
    found = [(d.time(value), source) for value, source in candidates if value is not None]
    if not found:
        return None, None
    return max(found, key=lambda pair: pair[0])
