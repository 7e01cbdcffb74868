"""Compliance reports (issue 14): ``certificate_lifecycle`` and ``crypto_inventory``, for the
CLI (``vcc-pki report NAME``) and the REST API (``GET /api/v1/reports/{name}``) alike.

A report is one JSON document (``document``) built from figures the store aggregates in the
database (``ReportStore``: counts and groupings in SQL, never every certificate into Python,
so that it stays fast over millions of certificates). JSON, CSV and HTML are renderings of
that one document (``ca_core.report_render``), so every format carries the same data. Each
generated report is stored with the exact bytes served and their SHA-256, and the audit
event ``report.generated`` carries the hash: the audit chain vouches for the report.

Who may: ``compliance:read`` (the seed: auditor and pki_admin for their own organization, a
super admin for any or all). Another organization is 404 (existence must not leak), a role
without the permission 403; both are audited (``compliance_report.denied``).

Definitions (also written into each lifecycle report, ``definitions``):

- the period is [from, to); a date alone means midnight UTC, and ``to`` given as a date
  includes that day. Without ``from``/``to``: the 30 days up to now.
- issued: certificates recorded in the period; renewed: of those, the ones that renew
  another (``vcc-pki cert renew`` / REST renew, recorded as ``renews`` in their
  certificate.issued audit event, and ACME orders naming ``replaces``);
- revoked by reason: revocations in the period; expired: certificates whose notAfter falls in
  the period (before now) and that were not revoked before it;
- expiring in 30/60/90 days and the expiry histogram: certificates valid now, by the days
  left from the time of generation;
- by profile, by protocol, median and longest validity: of the certificates issued in the
  period. The protocol is the requester's prefix: ``acme:``, ``est:``, ``scep:``,
  ``token:`` (REST with a bearer token), ``mtls:`` (REST with a service account's client
  certificate); anything else (the CLI, the gateway itself) is ``other``.
- without a registered service: certificates valid now that no service of the registry
  holds (``ServiceRegistryStore.certificates_without_service``).

The crypto inventory's "last signature" comes from the store, not from metrics: metrics
are per process and start at zero on restart, the store keeps what every replica signed.
For a CA it is the newest of the certificates and CRLs it signed (and, for a TSA, of its
time-stamp tokens); for a code signer its newest signature. OCSP responders and SCEP RAs
sign answers that are not stored: their last signature is reported as not recorded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ca_core.admin import Page, encode_cursor, page_limit, time_id_cursor
from ca_core.errors import BadRequest, Forbidden, NotFound
from ca_core.records import AuditEvent, Organization
from ca_core.signers.base import KeyBackendError, KeyProtection

if TYPE_CHECKING:
    from ca_core.authority import Authority
    from ca_core.principal import Principal

REPORT_NAMES = ("certificate_lifecycle", "crypto_inventory")
FORMATS = ("json", "csv", "html")
CONTENT_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8",
                 "html": "text/html; charset=utf-8"}
EXPIRING_DAYS = (30, 60, 90)
# Expiry histogram buckets, in days left: [0, 7), [7, 14), ... [365, inf).
HISTOGRAM_EDGES_DAYS = (0, 7, 14, 30, 60, 90, 180, 365)
PROTOCOLS = ("acme", "est", "scep", "token", "mtls", "other")
DEFAULT_PERIOD = dt.timedelta(days=30)
MAX_PERIOD = dt.timedelta(days=3660)  # ten years: the issuance chart stays a few hundred bars
PERMISSION = "compliance:read"

DEFINITIONS = {
    "period": "[from, to) in UTC",
    "issued": "certificates recorded in the period",
    "renewed": "certificates issued in the period that renew another (renew call or ACME "
               "replaces)",
    "revoked_by_reason": "revocations in the period, by reason",
    "expired": "certificates whose notAfter falls in the period before the generation time, "
               "not revoked before it",
    "expiring": "certificates valid at the generation time expiring within N days",
    "by_profile": "certificates issued in the period, by profile",
    "by_protocol": "certificates issued in the period, by the requester's protocol",
    "validity_days": "median and longest validity (notAfter - notBefore) of the "
                     "certificates issued in the period, in days",
    "certificates_without_service": "certificates valid at the generation time that no "
                                    "registered service holds",
}


# --- what the store answers ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LifecycleQuery:
    org_id: str | None  # None: every organization
    start: dt.datetime
    end: dt.datetime
    now: dt.datetime
    bucket_seconds: int  # the width of one bar of the issuance chart
    # now + each HISTOGRAM_EDGES_DAYS: the expiry histogram's bucket edges
    histogram_edges: tuple[dt.datetime, ...]


@dataclass(frozen=True, slots=True)
class LifecycleFigures:
    issued: int
    renewed: int
    revoked_by_reason: dict[str, int]
    expired: int
    by_profile: dict[str, int]
    by_protocol: dict[str, int]
    validity_median_seconds: float | None
    validity_longest_seconds: float | None
    # one count per histogram bucket: len(histogram_edges) counts, the last one open
    expiry_histogram: tuple[int, ...]
    issuance_series: dict[int, int]  # bucket index from start -> certificates issued


@dataclass(frozen=True, slots=True)
class SigningKeyRow:
    """One key that signs for the PKI, as the store knows it."""

    kind: str  # root | intermediate | issuing | tsa | ocsp_responder | scep_ra | code_signer
    name: str
    org_id: str | None
    ca_name: str | None  # the CA a responder / RA / code signer works for
    subject_dn: str
    key_algorithm: str
    key_size: int
    key_backend: str
    key_ref: str
    not_before: dt.datetime
    not_after: dt.datetime
    status: str
    last_signature: dt.datetime | None
    last_signature_source: str | None  # certificate | crl | timestamp | code_signature


@dataclass(frozen=True, slots=True)
class ReportRecord:
    """A stored report (the seed's compliance_reports row)."""

    report_id: str
    org_id: str | None
    report_type: str
    period_start: dt.datetime
    period_end: dt.datetime
    report_format: str
    report_data: dict[str, Any]
    content: bytes
    content_sha256: str
    generated_at: dt.datetime
    generated_by: str | None
    report_status: str = "generated"
    file_path: str | None = None
    content_size: int = 0


@dataclass(frozen=True, slots=True)
class GeneratedReport:
    record: ReportRecord
    content_type: str


@dataclass(frozen=True, slots=True)
class ReportRequest:
    name: str
    format: str = "json"
    organization: str | None = None  # slug or id; None: the caller's own (a super admin: all)
    start: str | None = None  # a date or an RFC 3339 time
    end: str | None = None


# --- parsing ---------------------------------------------------------------------------------

def parse_bound(text: str, name: str, *, end: bool) -> dt.datetime:
    """A period bound: ``YYYY-MM-DD`` (midnight UTC; as ``to``, the day is included) or an
    RFC 3339 time with a zone. BadRequest otherwise."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return moment + dt.timedelta(days=1) if end else moment
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, OverflowError):
        raise BadRequest(f"{name!r} must be a date (YYYY-MM-DD) or an RFC 3339 time") from None
    if value.tzinfo is None:
        raise BadRequest(f"{name!r} needs a time zone (or give a date)")
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise BadRequest(f"{name!r} is out of range") from None


def period(start: str | None, end: str | None, now: dt.datetime
           ) -> tuple[dt.datetime, dt.datetime]:
    """[from, to) from the caller's bounds; see the module docstring."""
    to = parse_bound(end, "to", end=True) if end else now
    try:
        since = parse_bound(start, "from", end=False) if start else to - DEFAULT_PERIOD
    except OverflowError:
        raise BadRequest("'to' is out of range") from None
    if since >= to:
        raise BadRequest("'from' must lie before 'to'")
    if to - since > MAX_PERIOD:
        raise BadRequest(f"a period is at most {MAX_PERIOD.days} days")
    if since.year < 1971 or to.year > 9998:
        raise BadRequest("the period lies out of range")
    return since, to


def bucket_seconds(start: dt.datetime, end: dt.datetime) -> int:
    """Days for a period up to a quarter, weeks up to two years, else 30-day months."""
    span = end - start
    if span <= dt.timedelta(days=92):
        return 86400
    if span <= dt.timedelta(days=731):
        return 7 * 86400
    return 30 * 86400


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _days(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 86400, 3)


def histogram_labels() -> list[tuple[int, int | None]]:
    edges = HISTOGRAM_EDGES_DAYS
    return [(edges[i], edges[i + 1] if i + 1 < len(edges) else None) for i in range(len(edges))]


# --- documents -------------------------------------------------------------------------------

def lifecycle_document(figures: LifecycleFigures, without_service: int,
                       query: LifecycleQuery) -> dict[str, Any]:
    """The figures as the report's data (everything but the header)."""
    histogram = [
        {"from_days": low, "to_days": high, "count": count}
        for (low, high), count in zip(histogram_labels(), figures.expiry_histogram,
                                      strict=True)]
    expiring = {str(days): sum(count for (_, high), count in zip(
        histogram_labels(), figures.expiry_histogram, strict=True)
        if high is not None and high <= days) for days in EXPIRING_DAYS}
    bars = -(-int((query.end - query.start).total_seconds()) // query.bucket_seconds)
    issuance = [
        {"start": _iso(query.start + dt.timedelta(seconds=i * query.bucket_seconds)),
         "count": figures.issuance_series.get(i, 0)} for i in range(bars)]
    return {
        "figures": {
            "issued": figures.issued,
            "renewed": figures.renewed,
            "revoked": sum(figures.revoked_by_reason.values()),
            "revoked_by_reason": dict(sorted(figures.revoked_by_reason.items())),
            "expired": figures.expired,
            "expiring": expiring,
            "by_profile": dict(sorted(figures.by_profile.items())),
            "by_protocol": {p: figures.by_protocol.get(p, 0) for p in PROTOCOLS},
            "validity_days": {"median": _days(figures.validity_median_seconds),
                              "longest": _days(figures.validity_longest_seconds)},
            "certificates_without_service": without_service,
        },
        "charts": {
            "expiry_histogram": histogram,
            "issuance": issuance,
            "issuance_bucket_days": query.bucket_seconds // 86400,
        },
        "definitions": DEFINITIONS,
    }


def inventory_entry(row: SigningKeyRow, protection: KeyProtection) -> dict[str, Any]:
    return {
        "kind": row.kind, "name": row.name, "organization_id": row.org_id,
        "ca": row.ca_name, "subject": row.subject_dn,
        "algorithm": row.key_algorithm, "key_size": row.key_size,
        "key_backend": protection.backend, "pkcs11_module": protection.module,
        "pkcs11_label": protection.label, "extractable": protection.extractable,
        "sensitive": protection.sensitive, "protection": protection.summary,
        "not_before": _iso(row.not_before), "not_after": _iso(row.not_after),
        "status": row.status, "last_signature": _iso(row.last_signature),
        "last_signature_source": row.last_signature_source or "not recorded",
    }


LAST_SIGNATURE_BASIS = (
    "from the store: a CA's newest certificate or CRL (a TSA's newest time-stamp token), "
    "a code signer's newest signature; OCSP and SCEP answers are not stored (not recorded)")


# --- the service -----------------------------------------------------------------------------

class ReportService:
    """See the module docstring."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.store = authority.store

    async def _scope(self, principal: Principal, organization: str | None,
                     resource_id: str | None) -> Organization | None:
        """The organization a report covers (None: all, a super admin's without one)."""
        if not principal.can(PERMISSION):
            await self.authority.denied(principal, PERMISSION, "compliance_report",
                                        resource_id)
            raise Forbidden(f"this credential may not do {PERMISSION}")
        if organization is None:
            if principal.org_id is None:
                return None
            return await self.authority.organization_by_id(principal.org_id)
        org = await self._org(organization)
        if org is None or not principal.sees_org(org.org_id):
            await self.authority.denied(principal, PERMISSION, "organization",
                                        organization[:80])
            raise NotFound(f"no organization {organization[:80]!r}")
        return org

    async def _org(self, ident: str) -> Organization | None:
        from ca_core.storage import StoreInvalid

        try:
            return (await self.store.get_organization(ident)
                    or await self.store.get_organization_by_id(ident))
        except StoreInvalid:
            return None

    async def generate(self, principal: Principal, request: ReportRequest) -> GeneratedReport:
        """Build, render, store and audit one report."""
        if request.name not in REPORT_NAMES:
            raise NotFound(f"no report {request.name[:80]!r}: one of {', '.join(REPORT_NAMES)}")
        if request.format not in FORMATS:
            raise BadRequest(f"format must be one of {', '.join(FORMATS)}")
        org = await self._scope(principal, request.organization, request.name)
        now = self.authority.clock()
        start, end = period(request.start, request.end, now)
        org_id = None if org is None else org.org_id
        if request.name == "certificate_lifecycle":
            body = await self._lifecycle(org_id, start, end, now)
        else:
            body = await self._inventory(org_id)
        report_id = str(uuid.uuid4())
        document: dict[str, Any] = {
            "report": request.name, "report_id": report_id,
            "organization": None if org is None else org.slug,
            "organization_id": org_id,
            "period": {"from": _iso(start), "to": _iso(end)},
            "generated_at": _iso(now), "generated_by": principal.actor_id, **body}
        from ca_core.report_render import render

        content = render(document, request.format)
        digest = hashlib.sha256(content).hexdigest()
        record = ReportRecord(
            report_id=report_id, org_id=org_id, report_type=request.name,
            period_start=start, period_end=end, report_format=request.format,
            report_data=document, content=content, content_sha256=digest,
            generated_at=now, generated_by=principal.actor_id, content_size=len(content))
        await self.store.add_compliance_report(record, AuditEvent(
            event_type="report.generated", category="compliance", action="generate",
            actor_type=principal.actor_type, actor_id=principal.actor_id, org_id=org_id,
            resource_type="compliance_report", resource_id=report_id,
            data={"report": request.name, "format": request.format, "sha256": digest,
                  "size": len(content), "from": _iso(start), "to": _iso(end)}))
        return GeneratedReport(record, CONTENT_TYPES[request.format])

    async def _lifecycle(self, org_id: str | None, start: dt.datetime, end: dt.datetime,
                         now: dt.datetime) -> dict[str, Any]:
        query = LifecycleQuery(
            org_id=org_id, start=start, end=end, now=now,
            bucket_seconds=bucket_seconds(start, end),
            histogram_edges=tuple(now + dt.timedelta(days=d) for d in HISTOGRAM_EDGES_DAYS))
        figures, (without, _) = await asyncio.gather(
            self.store.lifecycle_figures(query),
            self.store.certificates_without_service(org_id, now, limit=0))
        return lifecycle_document(figures, without, query)

    async def _inventory(self, org_id: str | None) -> dict[str, Any]:
        rows = await self.store.signing_keys(org_id)
        keys = self.authority.keys

        def describe_all() -> list[KeyProtection]:
            found = []
            for row in rows:
                try:
                    found.append(keys.describe(row.key_ref))
                except KeyBackendError as exc:
                    # A key the backend cannot find is itself a finding of the inventory.
                    found.append(KeyProtection(backend=row.key_backend,
                                               summary=f"unavailable: {exc}"))
            return found

        protections = await asyncio.to_thread(describe_all)
        return {"keys": [inventory_entry(r, p) for r, p in zip(rows, protections, strict=True)],
                "last_signature_basis": LAST_SIGNATURE_BASIS}

    async def list_reports(self, principal: Principal, organization: str | None = None,
                           cursor: str | None = None, limit: int | None = None
                           ) -> Page[ReportRecord]:
        """Stored reports, oldest first: the caller's organization's (a super admin: all,
        or one organization's)."""
        org = await self._scope(principal, organization, None)
        size = page_limit(limit)
        found = await self.store.list_compliance_reports(
            None if org is None else org.org_id, time_id_cursor(cursor), size + 1)
        last = found[size - 1] if len(found) > size else None
        return Page(found[:size], None if last is None else
                    encode_cursor(last.generated_at, last.report_id))


    async def stored(self, principal: Principal, name: str, report_id: str
                     ) -> GeneratedReport:
        """A stored report's exact bytes (the ones its audit event hashed), to open or
        download again. Another organization's report, one over every organization for an
        organization's principal, or another report type: NotFound (audited)."""
        await self._scope(principal, None, report_id[:80])
        from ca_core.storage import StoreInvalid

        try:
            record = await self.store.get_compliance_report(report_id) \
                if len(report_id) <= 64 else None
        except StoreInvalid:
            record = None
        if record is None or record.report_type != name or not (
                principal.org_id is None or record.org_id == principal.org_id):
            await self.authority.denied(principal, PERMISSION, "compliance_report",
                                        report_id[:80])
            raise NotFound(f"no stored {name[:80]!r} report {report_id[:80]!r}")
        return GeneratedReport(record, CONTENT_TYPES[record.report_format])


def report_summary(record: ReportRecord) -> dict[str, Any]:
    """A stored report as the list shows it (without its content)."""
    return {
        "id": record.report_id, "report": record.report_type,
        "organization_id": record.org_id, "format": record.report_format,
        "period": {"from": _iso(record.period_start), "to": _iso(record.period_end)},
        "sha256": record.content_sha256, "size": record.content_size,
        "status": record.report_status, "generated_at": _iso(record.generated_at),
        "generated_by": record.generated_by,
    }
