"""The store: one SQL implementation of every storage interface the core declares
(``ca_core.storage``), over a dialect (``db.dialect``: SQLite or PostgreSQL).

Queries are written here once, in SQLite's spelling; the dialect adapts placeholders, time
values, list membership, locking and how a transaction or read runs. A write is a
transaction body (a generator of statements, see ``db.dialect``) that takes the audit event
describing the change and appends it to the hash-chained audit log in the same transaction,
so a change and its audit row are never apart.

Group commit: writes that arrive while a batch is in flight wait and go in the next batch,
one transaction (and on SQLite one thread hop) for all of them. Failures are rare (a
duplicate slug, a serial collision), so a batch runs without savepoints; if one write
fails, the batch is rolled back and each write runs again in a transaction of its own, so
only the failing one fails. When the database itself is unavailable the whole batch fails.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from ca_core.est import EnrollmentSecretRecord, EstLabel, PendingEnrollment
from ca_core.records import (
    AcmeAccount,
    AcmeAuthorization,
    AcmeOrder,
    ApiToken,
    AuditEntry,
    AuditEvent,
    AuditHead,
    AuditQuery,
    CARecord,
    CertificateQuery,
    CertificateRecord,
    CertificateStatusRecord,
    CodeSignatureRecord,
    CodeSignerRecord,
    CrlHead,
    CrlRecord,
    CrossCertificateRecord,
    EabKey,
    OcspResponderRecord,
    Organization,
    Revocation,
    RevocationEvent,
    ServiceAccount,
    ServiceRecord,
    TemplateRecord,
    TimeStampRecord,
)
from ca_core.scep import (
    ScepChallenge,
    ScepEndpointPolicy,
    ScepRaRecord,
    ScepRecorded,
    ScepTransaction,
)
from ca_core.sessions import StoredSession
from ca_core.storage import StoreConflict, StoreOrganizationInactive, StoreUnavailable
from ca_core.tracing import traced
from db.acme_rows import (
    challenges_from_json,
    challenges_to_json,
    identifiers_from_json,
    identifiers_to_json,
)
from db.audit_chain import chain_hash, data_json
from db.dialect import Body, Dialect, Stmt, one, rows, run
from db.reports_sql import ReportQueries

T = TypeVar("T")

# A write: given the batch's transaction state, a body that yields statements.
Write = Callable[["Tx"], Body[T]]

_MAX_BATCH = 256

_CONSUME_SECRET = (
    "UPDATE est_secrets SET used_at = ? WHERE secret_id = ? AND used_at IS NULL"
    " AND expires_at > ? RETURNING *"
)
_HEAD = "SELECT seq, audit_hash FROM audit_head WHERE id = 1 FOR UPDATE"
_APPEND_AUDIT = (
    "INSERT INTO audit_log (seq, audit_id, timestamp, org_id, event_type, category, action,"
    " actor_type, actor_id, resource_type, resource_id, status, event_data, previous_hash,"
    " audit_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


class _Refused(Exception):
    """Raised inside a write body to roll back what it wrote and report ``outcome``."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json(value: Any) -> str:
    return json.dumps(value)


def _where(conditions: list[str]) -> str:
    return " WHERE " + " AND ".join(conditions) if conditions else ""


def _org_in(org_ids: frozenset[str], where: list[str], params: list[Any]) -> None:
    """``org_id IN (...)``: a caller's scope of several organizations, in the query (sorted,
    so the statement text is the same for the same set; an empty set matches nothing)."""
    if not org_ids:
        where.append("1 = 0")
        return
    where.append(f"org_id IN ({', '.join('?' * len(org_ids))})")
    params.extend(sorted(org_ids))


def _keyset(time_column: str, id_column: str, after: tuple[dt.datetime, str] | None, op: str,
            d: Dialect) -> tuple[list[str], list[Any]]:
    """A keyset page condition: rows whose (time, id) sort after (``>``) or before (``<``)
    the last row seen, as one row-value comparison that an index on (time, id) answers."""
    if after is None:
        return [], []
    return [f"({time_column}, {id_column}) {op} (?, ?)"], [d.t(after[0]), after[1]]


class Tx:
    """The audit chain head as one write transaction (a batch) sees it.

    The head is read (and on PostgreSQL locked) once per batch, then kept here: each
    appended entry moves it, and a trigger moves the stored head row with every INSERT.
    """

    __slots__ = ("d", "head_hash", "head_seq", "loaded")

    def __init__(self, dialect: Dialect) -> None:
        self.d = dialect
        self.loaded = False
        self.head_seq = 0
        self.head_hash = ""

    def load_head(self) -> Body[None]:
        if self.loaded:
            return
        row = yield one(_HEAD)
        if row is None:
            raise StoreUnavailable("the audit chain head row is missing: the log was altered")
        self.head_seq, self.head_hash, self.loaded = row[0], row[1], True

    def append_audit(self, event: AuditEvent) -> Body[AuditEntry]:
        """Chain ``event`` onto the log inside this transaction."""
        yield from self.load_head()
        previous_hash = self.head_hash
        seq = self.head_seq + 1
        audit_id = str(uuid.uuid4())
        # Both dialects keep microseconds, as datetime does: the hashed time is the stored one.
        timestamp = _now()
        # The data serialised once: the hashed text is the stored text.
        data_text = data_json(event.data)
        digest = chain_hash(seq, audit_id, timestamp, event, previous_hash, data_text)
        yield run(
            _APPEND_AUDIT, seq, audit_id, self.d.t(timestamp), event.org_id, event.event_type,
            event.category, event.action, event.actor_type, event.actor_id,
            event.resource_type, event.resource_id, event.status,
            data_text, previous_hash, digest,
        )
        self.head_seq, self.head_hash = seq, digest
        return AuditEntry(seq, audit_id, timestamp, event, previous_hash, digest)


class SqlStore(ReportQueries):
    """Every aggregate's storage on one database; see the module docstring. (The compliance
    reports' aggregates are in ``db.reports_sql``.)"""

    def __init__(self, dialect: Dialect) -> None:
        self._d = dialect
        self.backend = dialect.backend
        self._pending: list[tuple[Write[Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._open = False

    # lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and apply pending migrations."""
        await self._d.open()
        self._open = True

    async def close(self) -> None:
        self._open = False
        if self._flusher is not None and not self._flusher.done():
            await self._flusher
        await self._d.close()

    async def ping(self) -> dict[str, object]:
        """Run a trivial query; returns details such as pool size. Raises StoreUnavailable."""
        return await self._d.ping()

    # group commit --------------------------------------------------------------------

    async def _write(self, write: Write[T]) -> T:
        if not self._open:
            raise StoreUnavailable("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((write, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        result: T = await future
        return result

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[:_MAX_BATCH]
            del self._pending[:_MAX_BATCH]
            try:
                outcomes = await self._run_batch([write for write, _ in batch])
            except Exception as exc:  # the whole batch failed (unavailable, closed store)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _batch(self, writes: Sequence[Write[Any]]) -> Callable[[], Body[list[Any]]]:
        def body() -> Body[list[Any]]:
            tx = Tx(self._d)
            if self._d.lock_head_first:
                # The head first, in every write transaction: see db.postgres.
                yield from tx.load_head()
            results = []
            for write in writes:
                results.append((yield from write(tx)))
            return results
        return body

    @traced("store.write", lambda _, writes: {"db.batch_size": len(writes)}, root=False)
    async def _run_batch(self, writes: list[Write[Any]]) -> list[tuple[bool, Any]]:
        try:
            return [(True, r) for r in await self._d.transaction(self._batch(writes))]
        except StoreUnavailable:
            raise
        except Exception as exc:
            if len(writes) == 1:
                return [(False, exc)]
        outcomes: list[tuple[bool, Any]] = []
        for write in writes:
            try:
                outcomes.append((True, (await self._d.transaction(self._batch([write])))[0]))
            except StoreUnavailable:
                raise
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes

    @traced("store.read", root=False)
    async def _lookup(self, stmt: Stmt) -> Any:
        if not self._open:
            raise StoreUnavailable("store is not open")
        return await self._d.lookup(stmt)

    @traced("store.read", root=False)
    async def _read(self, stmt: Stmt) -> Any:
        if not self._open:
            raise StoreUnavailable("store is not open")
        return await self._d.read(stmt)

    # row mappers ---------------------------------------------------------------------

    def _org(self, row: Any) -> Organization:
        return Organization(
            org_id=row["org_id"], slug=row["slug"], name=row["name"], status=row["status"],
            config=json.loads(row["config"]), created_at=self._d.time(row["created_at"]),
        )

    def _ca(self, row: Any) -> CARecord:
        d = self._d
        return CARecord(
            ca_id=row["ca_id"], name=row["name"], ca_type=row["ca_type"],
            org_id=row["org_id"], parent_ca_id=row["parent_ca_id"],
            subject_dn=row["subject_dn"], serial_hex=row["serial_hex"],
            certificate_der=bytes(row["certificate_der"]), key_ref=row["key_ref"],
            key_backend=row["key_backend"], key_algorithm=row["key_algorithm"],
            key_size=row["key_size"], not_before=d.time(row["not_before"]),
            not_after=d.time(row["not_after"]), status=row["status"],
            created_at=d.time(row["created_at"]),
        )

    def _cert(self, row: Any) -> CertificateRecord:
        d = self._d
        return CertificateRecord(
            cert_id=row["cert_id"], issuer_ca_id=row["issuer_ca_id"], org_id=row["org_id"],
            serial_hex=row["serial_hex"], subject_dn=row["subject_dn"],
            common_name=row["common_name"], profile=row["profile"],
            certificate_der=bytes(row["certificate_der"]), key_algorithm=row["key_algorithm"],
            key_size=row["key_size"], san=json.loads(row["san"]),
            not_before=d.time(row["not_before"]), not_after=d.time(row["not_after"]),
            requester=row["requester"], status=row["status"],
            revoked_at=d.time_opt(row["revoked_at"]),
            revocation_reason=row["revocation_reason"],
            invalidity_date=d.time_opt(row["invalidity_date"]),
            created_at=d.time(row["created_at"]), crl_partition=row["crl_partition"],
        )

    def _revocation(self, row: Any) -> Revocation:
        return Revocation(
            ca_id=row["ca_id"], serial_hex=row["serial_hex"], cert_id=row["cert_id"],
            revoked_at=self._d.time(row["revoked_at"]), reason=row["reason"],
            invalidity_date=self._d.time_opt(row["invalidity_date"]),
            crl_partition=row["crl_partition"],
        )

    def _token(self, row: Any) -> ApiToken:
        return ApiToken(
            token_id=row["token_id"], org_id=row["org_id"], role=row["role"],
            secret_hash=row["secret_hash"], name=row["name"],
            created_at=self._d.time(row["created_at"]),
            expires_at=self._d.time_opt(row["expires_at"]), revoked=bool(row["revoked"]),
            org_status=row["org_status"] if "org_status" in row.keys() else "active",
        )

    def _audit(self, row: Any) -> AuditEntry:
        event = AuditEvent(
            event_type=row["event_type"], category=row["category"], action=row["action"],
            actor_type=row["actor_type"], actor_id=row["actor_id"], org_id=row["org_id"],
            resource_type=row["resource_type"], resource_id=row["resource_id"],
            status=row["status"], data=json.loads(row["event_data"]),
        )
        return AuditEntry(
            seq=row["seq"], audit_id=row["audit_id"], timestamp=self._d.time(row["timestamp"]),
            event=event, previous_hash=row["previous_hash"], audit_hash=row["audit_hash"],
        )

    def _ocsp_responder(self, row: Any) -> OcspResponderRecord:
        d = self._d
        return OcspResponderRecord(
            responder_id=row["responder_id"], ca_id=row["ca_id"], cert_id=row["cert_id"],
            key_ref=row["key_ref"], key_backend=row["key_backend"],
            certificate_der=bytes(row["certificate_der"]),
            not_before=d.time(row["not_before"]), not_after=d.time(row["not_after"]),
            created_at=d.time(row["created_at"]),
        )

    def _status(self, row: Any) -> CertificateStatusRecord:
        return CertificateStatusRecord(
            issuer_ca_id=row["issuer_ca_id"], serial_hex=row["serial_hex"],
            status=row["status"], not_after=self._d.time(row["not_after"]),
            revoked_at=self._d.time_opt(row["revoked_at"]),
            revocation_reason=row["revocation_reason"],
        )

    def _crl_head(self, row: Any) -> CrlHead:
        return CrlHead(
            ca_id=row["ca_id"], partition=row["partition"], crl_number=row["crl_number"],
            this_update=self._d.time(row["this_update"]),
            next_update=self._d.time(row["next_update"]),
            source_generation=row["source_generation"], entries=row["entries"],
        )

    def _acme_account(self, row: Any) -> AcmeAccount:
        return AcmeAccount(
            account_id=row["account_id"], org_id=row["org_id"],
            key_thumbprint=row["key_thumbprint"], jwk=json.loads(row["jwk"]),
            status=row["status"], contact=tuple(json.loads(row["contact"])),
            tos_agreed=bool(row["tos_agreed"]), eab_kid=row["eab_kid"],
            created_at=self._d.time(row["created_at"]),
        )

    def _acme_authz(self, row: Any) -> AcmeAuthorization:
        return AcmeAuthorization(
            authz_id=row["authz_id"], account_id=row["account_id"],
            identifier_type=row["identifier_type"], identifier_value=row["identifier_value"],
            wildcard=bool(row["wildcard"]), status=row["status"],
            expires=self._d.time(row["expires"]),
            challenges=challenges_from_json(json.loads(row["challenges"])),
            created_at=self._d.time(row["created_at"]),
        )

    def _acme_order(self, row: Any) -> AcmeOrder:
        d = self._d
        return AcmeOrder(
            order_id=row["order_id"], account_id=row["account_id"], org_id=row["org_id"],
            status=row["status"], expires=d.time(row["expires"]),
            identifiers=identifiers_from_json(json.loads(row["identifiers"])),
            authz_ids=tuple(json.loads(row["authz_ids"])), profile=row["profile"],
            not_before=d.time_opt(row["not_before"]), not_after=d.time_opt(row["not_after"]),
            replaces=row["replaces"],
            error=None if row["error"] is None else json.loads(row["error"]),
            cert_id=row["cert_id"], created_at=d.time(row["created_at"]),
        )

    # organizations (tenants) -----------------------------------------------------------

    async def add_organization(self, org: Organization, audit: AuditEvent) -> None:
        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO organizations (org_id, slug, name, status, config, created_at)"
                " VALUES (?,?,?,?,?,?)",
                org.org_id, org.slug, org.name, org.status, _json(org.config),
                self._d.t(org.created_at or _now()))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def get_organization(self, slug: str) -> Organization | None:
        row = await self._lookup(one("SELECT * FROM organizations WHERE slug = ?", slug))
        return None if row is None else self._org(row)

    async def get_organization_by_id(self, org_id: str) -> Organization | None:
        row = await self._lookup(one("SELECT * FROM organizations WHERE org_id = ?", org_id))
        return None if row is None else self._org(row)

    async def _page(self, table: str, id_column: str, org_id: str | None,
                    after: tuple[dt.datetime, str] | None, limit: int,
                    org_condition: str = "org_id = ?") -> list[Any]:
        """One keyset page of ``table`` by (created_at, ``id_column``), after ``after``,
        scoped in the query by ``org_condition`` when ``org_id`` is given. The table and
        columns are this module's constants, never a caller's input."""
        where, params = _keyset("created_at", id_column, after, ">", self._d)
        if org_id is not None:
            where.append(org_condition)
            params.append(org_id)
        found: list[Any] = await self._read(rows(
            f"SELECT * FROM {table}" + _where(where)
            + f" ORDER BY created_at, {id_column} LIMIT ?", *params, limit))
        return found

    async def list_organizations(
        self, org_id: str | None = None, after: tuple[dt.datetime, str] | None = None,
        limit: int = 1000,
    ) -> list[Organization]:
        """Organizations (only ``org_id`` when given) by (created_at, org_id), after
        ``after``."""
        found = await self._page("organizations", "org_id", org_id, after, limit)
        return [self._org(r) for r in found]

    async def update_organization(
        self, org_id: str, name: str, status: str, config: dict[str, Any], audit: AuditEvent
    ) -> Organization | None:
        """Replace name, status and config; the updated row, or None when it does not
        exist (nothing written)."""
        def write(tx: Tx) -> Body[Organization | None]:
            row = yield one(
                "UPDATE organizations SET name = ?, status = ?, config = ? WHERE org_id = ?"
                " RETURNING *", name, status, _json(config), org_id)
            if row is None:
                return None
            yield from tx.append_audit(audit)
            return self._org(row)
        return await self._write(write)

    async def update_organization_config(
        self, org_id: str, config: dict[str, Any], audit: AuditEvent
    ) -> None:
        """Replace the organization's config document; StoreConflict if it does not exist."""
        def write(tx: Tx) -> Body[None]:
            found = yield one("UPDATE organizations SET config = ? WHERE org_id = ? RETURNING 1",
                              _json(config), org_id)
            if found is None:
                raise StoreConflict(f"no organization {org_id}")
            yield from tx.append_audit(audit)
        await self._write(write)

    # certificate authorities and cross-certificates ------------------------------------

    async def add_ca(self, ca: CARecord, audit: AuditEvent) -> None:
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO certificate_authorities (ca_id, name, ca_type, org_id,"
                " parent_ca_id, subject_dn, serial_hex, certificate_der, key_ref, key_backend,"
                " key_algorithm, key_size, not_before, not_after, status, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                ca.ca_id, ca.name, ca.ca_type, ca.org_id, ca.parent_ca_id, ca.subject_dn,
                ca.serial_hex, ca.certificate_der, ca.key_ref, ca.key_backend,
                ca.key_algorithm, ca.key_size, d.t(ca.not_before), d.t(ca.not_after),
                ca.status, d.t(ca.created_at or _now()))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def get_ca(self, name: str) -> CARecord | None:
        row = await self._lookup(
            one("SELECT * FROM certificate_authorities WHERE name = ?", name))
        return None if row is None else self._ca(row)

    async def get_ca_by_id(self, ca_id: str) -> CARecord | None:
        row = await self._lookup(
            one("SELECT * FROM certificate_authorities WHERE ca_id = ?", ca_id))
        return None if row is None else self._ca(row)

    async def list_cas(self) -> list[CARecord]:
        found = await self._read(rows(
            'SELECT * FROM certificate_authorities ORDER BY created_at, name COLLATE "C"'))
        return [self._ca(r) for r in found]

    async def list_cas_page(self, org_id: str | None = None,
                            after: tuple[dt.datetime, str] | None = None, limit: int = 100
                            ) -> list[CARecord]:
        found = await self._page("certificate_authorities", "ca_id", org_id, after, limit,
                                 org_condition="(org_id = ? OR org_id IS NULL)")
        return [self._ca(r) for r in found]

    async def activate_issuing_ca(self, org_id: str, ca_id: str, audit: AuditEvent) -> bool:
        """An issuing CA rollover: "next" -> "active", the organization's other active
        issuing CAs -> "retired", in one transaction; False (nothing changes) when ``ca_id``
        is not the organization's "next" issuing CA."""
        def write(tx: Tx) -> Body[bool]:
            moved = yield one(
                "UPDATE certificate_authorities SET status = 'active' WHERE ca_id = ?"
                " AND org_id = ? AND ca_type = 'issuing' AND status = 'next' RETURNING 1",
                ca_id, org_id)
            if moved is None:
                return False
            yield run(
                "UPDATE certificate_authorities SET status = 'retired' WHERE org_id = ?"
                " AND ca_type = 'issuing' AND status = 'active' AND ca_id <> ?",
                org_id, ca_id)
            yield from tx.append_audit(audit)
            return True
        return await self._write(write)

    async def add_cross_certificate(self, cross: CrossCertificateRecord,
                                    audit: AuditEvent) -> None:
        """Record a cross-certificate chain; StoreConflict when that cross-certificate is
        recorded already (a duplicate fingerprint)."""
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO ca_cross_certificates (cross_id, ca_id, fingerprint, chain_pem,"
                " top_issuer, not_after, created_at) VALUES (?,?,?,?,?,?,?)",
                cross.cross_id, cross.ca_id, cross.fingerprint, cross.chain_pem,
                cross.top_issuer, d.t(cross.not_after), d.t(cross.created_at or _now()))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def list_cross_certificates(
        self, ca_ids: Sequence[str] | None = None
    ) -> list[CrossCertificateRecord]:
        """Cross-certificates of these CAs (or of all), oldest first."""
        order = " ORDER BY created_at, cross_id"
        if ca_ids is None:  # all of them: a scan
            found = await self._read(rows("SELECT * FROM ca_cross_certificates" + order))
        elif not ca_ids:
            return []
        else:  # some CAs' cross-certificates: a lookup
            where, params = self._d.any_of("ca_id", ca_ids)
            found = await self._lookup(rows(
                f"SELECT * FROM ca_cross_certificates WHERE {where}{order}", *params))
        return [CrossCertificateRecord(
            cross_id=r["cross_id"], ca_id=r["ca_id"], fingerprint=r["fingerprint"],
            chain_pem=r["chain_pem"], top_issuer=r["top_issuer"],
            not_after=self._d.time(r["not_after"]), created_at=self._d.time(r["created_at"]))
            for r in found]

    # certificates and revocation ---------------------------------------------------------

    async def add_certificate(self, cert: CertificateRecord, audit: AuditEvent) -> None:
        """Record an issued certificate; StoreConflict if (issuer, serial) exists."""
        def write(tx: Tx) -> Body[None]:
            yield from self._insert_certificate(cert)
            yield from tx.append_audit(audit)
        await self._write(write)

    def _insert_certificate(self, cert: CertificateRecord) -> Body[None]:
        """Insert ``cert`` if its organization is active as this transaction sees it, else
        StoreOrganizationInactive (the transaction rolls back): the authoritative check that
        a disabled organization issues nothing, from the moment it is disabled and in
        every process, without a read of its own before the write."""
        d = self._d
        inserted = yield one(
            "INSERT INTO certificates (cert_id, issuer_ca_id, org_id, serial_hex,"
            " subject_dn, common_name, profile, certificate_der, key_algorithm, key_size,"
            " san, not_before, not_after, requester, status, created_at, crl_partition)"
            " SELECT ?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,? WHERE EXISTS (SELECT 1 FROM"
            " organizations WHERE org_id = ? AND status = 'active') RETURNING cert_id",
            cert.cert_id, cert.issuer_ca_id, cert.org_id, cert.serial_hex,
            cert.subject_dn, cert.common_name, cert.profile, cert.certificate_der,
            cert.key_algorithm, cert.key_size, _json(cert.san), d.t(cert.not_before),
            d.t(cert.not_after), cert.requester, cert.status,
            d.t(cert.created_at or _now()), cert.crl_partition, cert.org_id)
        if inserted is None:
            raise StoreOrganizationInactive(f"organization {cert.org_id} is not active")

    async def get_certificate(self, issuer_ca_id: str, serial_hex: str) -> CertificateRecord | None:
        row = await self._lookup(one(
            "SELECT * FROM certificates WHERE issuer_ca_id = ? AND serial_hex = ?",
            issuer_ca_id, serial_hex))
        return None if row is None else self._cert(row)

    async def get_certificate_by_id(self, cert_id: str) -> CertificateRecord | None:
        row = await self._lookup(one("SELECT * FROM certificates WHERE cert_id = ?", cert_id))
        return None if row is None else self._cert(row)

    async def find_certificates_by_serial(
        self, serial_hex: str, org_id: str | None = None, requester: str | None = None,
        org_ids: frozenset[str] | None = None,
    ) -> list[CertificateRecord]:
        """All certificates with this serial, across issuers (serials are random, so
        normally one); only those of ``org_id`` / ``requester`` / one of ``org_ids`` when
        given."""
        where, params = ["serial_hex = ?"], [serial_hex]
        if org_ids is not None:
            _org_in(org_ids, where, params)
        if org_id is not None:
            where.append("org_id = ?")
            params.append(org_id)
        if requester is not None:
            where.append("requester = ?")
            params.append(requester)
        found = await self._lookup(rows(
            "SELECT * FROM certificates" + _where(where) + " ORDER BY created_at, cert_id",
            *params))
        return [self._cert(r) for r in found]

    async def list_certificates(self, query: CertificateQuery) -> list[CertificateRecord]:
        """One page of certificates, newest first (see CertificateQuery)."""
        d = self._d
        where, params = _keyset("created_at", "cert_id", query.before, "<", d)
        if query.org_ids is not None:
            _org_in(query.org_ids, where, params)
        for column, value in (("org_id", query.org_id), ("requester", query.requester),
                              ("profile", query.profile)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.status == "revoked":
            where.append("status = 'revoked'")
        elif query.status == "active":
            where.append("status = 'active' AND not_after > ?")
            params.append(d.t(query.now))
        elif query.status == "expired":
            where.append("status = 'active' AND not_after <= ?")
            params.append(d.t(query.now))
        if query.expiring_before is not None:
            where.append("not_after < ?")
            params.append(d.t(query.expiring_before))
        if query.text:
            # LIKE with its wildcards escaped: the text is a plain substring. The SAN column
            # is JSON (JSONB on PostgreSQL): searched as its text form.
            pattern = "%" + (query.text.lower().replace("\\", "\\\\").replace("%", "\\%")
                             .replace("_", "\\_")) + "%"
            # One expression over subject and SAN: PostgreSQL's one trigram index on it
            # (migration 0016) answers it with one index scan, where an OR of two indexed
            # columns took two scans and a BitmapAnd with the organization: 48-77 ms -> 8-15 ms
            # over 1,000,000 certificates.
            where.append("LOWER(subject_dn || ' ' || CAST(san AS TEXT)) LIKE ? ESCAPE '\\'")
            params.append(pattern)
        found = await self._read(rows(
            "SELECT * FROM certificates" + _where(where)
            + " ORDER BY created_at DESC, cert_id DESC LIMIT ?", *params, query.limit))
        return [self._cert(r) for r in found]

    async def revoke_certificate(
        self, revocation: Revocation, audit: AuditEvent
    ) -> CertificateRecord | None:
        """Mark revoked and add the CRL entry. Returns the updated record, or None when
        the certificate is unknown or already revoked (nothing changes then)."""
        def write(tx: Tx) -> Body[CertificateRecord | None]:
            return (yield from self._revoke(tx, revocation, audit))
        return await self._write(write)

    def _revoke(self, tx: Tx, revocation: Revocation, audit: AuditEvent
                ) -> Body[CertificateRecord | None]:
        d = self._d
        row = yield one(
            "UPDATE certificates SET status = 'revoked', revoked_at = ?,"
            " revocation_reason = ?, invalidity_date = ?"
            " WHERE issuer_ca_id = ? AND serial_hex = ? AND status = 'active' RETURNING *",
            d.t(revocation.revoked_at), revocation.reason,
            d.t_opt(revocation.invalidity_date), revocation.ca_id, revocation.serial_hex)
        if row is None:
            return None
        yield run(
            "INSERT INTO crl_entries (ca_id, serial_hex, cert_id, revoked_at, reason,"
            " invalidity_date, crl_partition) VALUES (?,?,?,?,?,?,?)",
            revocation.ca_id, revocation.serial_hex, revocation.cert_id,
            d.t(revocation.revoked_at), revocation.reason,
            d.t_opt(revocation.invalidity_date), row["crl_partition"])
        yield from tx.append_audit(audit)
        return self._cert(row)

    async def add_certificate_superseding(
        self, cert: CertificateRecord, audit: AuditEvent, revocation: Revocation,
        revocation_audit: AuditEvent,
    ) -> CertificateRecord | None:
        """``revoke_certificate`` of the certificate ``cert`` replaces, and
        ``add_certificate``, in one transaction: the revoked record, or None (nothing
        written) when that certificate is unknown or revoked already; StoreConflict
        (nothing written) when (issuer, serial) of ``cert`` exists."""
        def write(tx: Tx) -> Body[CertificateRecord | None]:
            revoked = yield from self._revoke(tx, revocation, revocation_audit)
            if revoked is None:
                return None
            yield from self._insert_certificate(cert)
            yield from tx.append_audit(audit)
            return revoked
        return await self._write(write)

    async def list_revocations(
        self, ca_id: str, crl_partition: int | None = None
    ) -> list[Revocation]:
        """CRL entries of a CA (or of one CRL partition of it), oldest first."""
        order = ' ORDER BY revoked_at, serial_hex COLLATE "C"'
        if crl_partition is None:
            stmt = rows("SELECT * FROM crl_entries WHERE ca_id = ?" + order, ca_id)
        else:
            stmt = rows("SELECT * FROM crl_entries WHERE ca_id = ? AND crl_partition = ?"
                        + order, ca_id, crl_partition)
        return [self._revocation(r) for r in await self._read(stmt)]

    async def count_active_certificates(self, now: dt.datetime) -> list[tuple[str, str, int]]:
        """(org_id, profile, count) of unrevoked, unexpired certificates."""
        found = await self._read(rows(
            "SELECT org_id, profile, COUNT(*) FROM certificates"
            " WHERE status = 'active' AND not_after > ? GROUP BY org_id, profile"
            ' ORDER BY org_id COLLATE "C", profile COLLATE "C"', self._d.t(now)))
        return [(r[0], r[1], r[2]) for r in found]

    async def revocation_generation(self, ca_id: str | None = None) -> int:
        """Generation of the newest revocation (of one CA, or of any); 0 when there is none."""
        if ca_id is None:
            row = await self._read(one("SELECT generation FROM revocation_state WHERE id = 1"))
        else:
            row = await self._read(one(
                "SELECT MAX(generation) FROM crl_entries WHERE ca_id = ?", ca_id))
        return int(row[0]) if row is not None and row[0] is not None else 0

    async def revocations_since(self, generation: int, limit: int = 1000) -> list[RevocationEvent]:
        """Revocations with a generation above ``generation``, in generation order."""
        found = await self._read(rows(
            "SELECT * FROM crl_entries WHERE generation > ? ORDER BY generation LIMIT ?",
            generation, limit))
        return [RevocationEvent(r["generation"], self._revocation(r)) for r in found]

    async def certificate_statuses(
        self, issuer_ca_id: str, serial_hexes: Sequence[str]
    ) -> list[CertificateStatusRecord]:
        """Status of the given certificates of one issuer (unknown serials are left out)."""
        wanted = list(dict.fromkeys(serial_hexes))
        # An OCSP request's few serials are a lookup; the refresher's thousands are not.
        fetch = self._lookup if len(wanted) <= 16 else self._read
        found: list[Any] = []
        for start in range(0, len(wanted), self._d.max_list):
            where, params = self._d.any_of("serial_hex", wanted[start:start + self._d.max_list])
            found += await fetch(rows(
                "SELECT issuer_ca_id, serial_hex, status, not_after, revoked_at,"
                f" revocation_reason FROM certificates WHERE issuer_ca_id = ? AND {where}",
                issuer_ca_id, *params))
        return [self._status(r) for r in found]

    async def list_certificate_statuses(
        self, issuer_ca_id: str, valid_at: dt.datetime, after_serial_hex: str = "",
        limit: int = 1000,
    ) -> list[CertificateStatusRecord]:
        """One page of the issuer's certificates not expired at ``valid_at``, ordered by
        serial_hex (byte order) after ``after_serial_hex``."""
        found = await self._read(rows(
            "SELECT issuer_ca_id, serial_hex, status, not_after, revoked_at, revocation_reason"
            ' FROM certificates WHERE issuer_ca_id = ? AND serial_hex COLLATE "C" > ?'
            ' AND not_after > ? ORDER BY serial_hex COLLATE "C" LIMIT ?',
            issuer_ca_id, after_serial_hex, self._d.t(valid_at), limit))
        return [self._status(r) for r in found]

    # OCSP responders ---------------------------------------------------------------------

    async def add_ocsp_responder(self, responder: OcspResponderRecord, audit: AuditEvent) -> None:
        """Record a delegated OCSP signing certificate (already stored in ``certificates``)."""
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO ocsp_responders (responder_id, ca_id, cert_id, key_ref,"
                " key_backend, certificate_der, not_before, not_after, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                responder.responder_id, responder.ca_id, responder.cert_id, responder.key_ref,
                responder.key_backend, responder.certificate_der, d.t(responder.not_before),
                d.t(responder.not_after), d.t(responder.created_at or _now()))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def list_ocsp_responders(self, ca_id: str | None = None) -> list[OcspResponderRecord]:
        """Responders of one CA (or all), the longest-lived first (by not_after)."""
        order = " ORDER BY not_after DESC, created_at DESC"
        if ca_id is None:
            stmt = rows("SELECT * FROM ocsp_responders" + order)
        else:
            stmt = rows("SELECT * FROM ocsp_responders WHERE ca_id = ?" + order, ca_id)
        return [self._ocsp_responder(r) for r in await self._read(stmt)]

    # CRLs --------------------------------------------------------------------------------

    async def save_crl(self, crl: CrlRecord, audit: AuditEvent) -> bool:
        """Keep ``crl`` as the newest of its (CA, partition) if its CRL number is higher than
        the stored one's; False (and nothing changes) otherwise."""
        head, d = crl.head, self._d

        def write(tx: Tx) -> Body[bool]:
            saved = yield one(
                "INSERT INTO crls (ca_id, partition, crl_number, this_update, next_update,"
                " source_generation, entries, crl_der) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT (ca_id, partition) DO UPDATE SET crl_number = excluded.crl_number,"
                " this_update = excluded.this_update, next_update = excluded.next_update,"
                " source_generation = excluded.source_generation, entries = excluded.entries,"
                " crl_der = excluded.crl_der WHERE excluded.crl_number > crls.crl_number"
                " RETURNING crl_number",
                head.ca_id, head.partition, head.crl_number, d.t(head.this_update),
                d.t(head.next_update), head.source_generation, head.entries, crl.crl_der)
            if saved is None:
                return False
            yield from tx.append_audit(audit)
            return True
        return await self._write(write)

    async def get_crl(self, ca_id: str, partition: int = 0) -> CrlRecord | None:
        row = await self._read(one(
            "SELECT * FROM crls WHERE ca_id = ? AND partition = ?", ca_id, partition))
        return None if row is None else CrlRecord(self._crl_head(row), bytes(row["crl_der"]))

    async def get_crl_head(self, ca_id: str, partition: int = 0) -> CrlHead | None:
        """The head of one stored CRL, without the DER (a cheap freshness check)."""
        row = await self._lookup(one(
            "SELECT ca_id, partition, crl_number, this_update, next_update, source_generation,"
            " entries FROM crls WHERE ca_id = ? AND partition = ?", ca_id, partition))
        return None if row is None else self._crl_head(row)

    async def list_crl_heads(self) -> list[CrlHead]:
        """Number, times and source generation of every stored CRL (without the DER)."""
        found = await self._read(rows(
            "SELECT ca_id, partition, crl_number, this_update, next_update, source_generation,"
            ' entries FROM crls ORDER BY ca_id COLLATE "C", partition'))
        return [self._crl_head(r) for r in found]

    # admin web sessions (db.sessions.SqlSessions) ------------------------------------------

    async def get_web_session(self, key: str, now: dt.datetime) -> StoredSession | None:
        """The session under ``key`` unless it is past its forget time at ``now``."""
        d = self._d
        row = await self._lookup(one(
            "SELECT sealed_token, csrf, created_at, last_used, expires_at FROM web_sessions"
            " WHERE session_key = ? AND forget_at > ?", key, d.t(now)))
        if row is None:
            return None
        return StoredSession(bytes(row["sealed_token"]), row["csrf"],
                             d.time(row["created_at"]), d.time(row["last_used"]),
                             d.time(row["expires_at"]))

    async def put_web_session(self, key: str, session: StoredSession,
                              forget_at: dt.datetime) -> None:
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO web_sessions (session_key, sealed_token, csrf, created_at,"
                " last_used, expires_at, forget_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (session_key) DO UPDATE SET sealed_token = excluded.sealed_token,"
                " csrf = excluded.csrf, created_at = excluded.created_at,"
                " last_used = excluded.last_used, expires_at = excluded.expires_at,"
                " forget_at = excluded.forget_at",
                key, session.sealed_token, session.csrf, d.t(session.created_at),
                d.t(session.last_used), d.t(session.expires_at), d.t(forget_at))
        await self._write(write)

    async def delete_web_sessions(self, key: str | None = None,
                                  forgotten_before: dt.datetime | None = None) -> None:
        """Delete the session under ``key``, or every session past its forget time."""
        d = self._d

        def write(tx: Tx) -> Body[None]:
            if key is not None:
                yield run("DELETE FROM web_sessions WHERE session_key = ?", key)
            if forgotten_before is not None:
                yield run("DELETE FROM web_sessions WHERE forget_at <= ?",
                          d.t(forgotten_before))
        await self._write(write)

    # job leases --------------------------------------------------------------------------

    async def try_lock(self, name: str, holder: str, ttl_seconds: float) -> bool:
        """Take (or, for its holder, extend) the lease ``name`` for ``ttl_seconds``; False
        while another holder's lease has not expired. Times are the database's clock."""
        def write(tx: Tx) -> Body[bool]:
            row = yield one(
                "INSERT INTO job_locks (name, holder, expires_at) VALUES (?, ?, now_epoch() + ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at"
                " WHERE job_locks.expires_at < now_epoch() OR job_locks.holder = excluded.holder"
                " RETURNING holder",
                name, holder, float(ttl_seconds))
            return row is not None
        return await self._write(write)

    async def release_lock(self, name: str, holder: str) -> None:
        """End the lease if ``holder`` holds it."""
        def write(tx: Tx) -> Body[None]:
            yield run("DELETE FROM job_locks WHERE name = ? AND holder = ?", name, holder)
        await self._write(write)

    # templates and API tokens ------------------------------------------------------------

    async def upsert_template(self, template: TemplateRecord) -> None:
        """Publish a built-in profile (``vcc-pki init``): insert, or replace the definition
        of the row with the same (organization, slug)."""
        now = self._d.t(_now())

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO certificate_templates (template_id, org_id, slug, name, purpose,"
                " base, description, status, definition, created_by, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT ((COALESCE(org_id, '')), slug) DO UPDATE SET"
                " name = excluded.name, purpose = excluded.purpose,"
                " definition = excluded.definition, updated_at = excluded.updated_at",
                template.template_id or f"{template.org_id or ''}/{template.slug}",
                template.org_id, template.slug, template.name, template.purpose,
                template.base, template.description, template.status,
                json.dumps(template.definition, sort_keys=True), template.created_by, now, now)
        await self._write(write)

    async def list_templates(self) -> list[TemplateRecord]:
        """Every row (built-ins and operator templates of all organizations), by slug."""
        found = await self._read(rows(
            'SELECT * FROM certificate_templates ORDER BY slug COLLATE "C", template_id'))
        return [self._template(r) for r in found]

    async def list_templates_page(
        self, org_id: str | None = None, after: tuple[dt.datetime, str] | None = None,
        limit: int = 100,
    ) -> list[TemplateRecord]:
        """Templates by (created_at, template_id), after ``after``: all, or those an
        organization sees (its own, the global ones and the built-ins) when ``org_id``."""
        found = await self._page("certificate_templates", "template_id", org_id, after, limit,
                                 "(org_id IS NULL OR org_id = ?)")
        return [self._template(r) for r in found]

    async def get_template(self, slug: str, org_id: str | None) -> TemplateRecord | None:
        """The template ``slug`` of exactly this scope (an organization, or None: global or
        built-in)."""
        row = await self._lookup(one(
            "SELECT * FROM certificate_templates WHERE COALESCE(org_id, '') = ? AND slug = ?",
            org_id or "", slug))
        return None if row is None else self._template(row)

    async def resolve_template(self, slug: str, org_id: str) -> TemplateRecord | None:
        """The active template ``slug`` an organization issues from: its own, else the
        global one. One probe of the (organization, slug) index."""
        row = await self._lookup(one(
            "SELECT * FROM certificate_templates WHERE COALESCE(org_id, '') IN (?, '')"
            " AND slug = ? AND status = 'active' ORDER BY (org_id IS NULL) LIMIT 1",
            org_id, slug))
        return None if row is None else self._template(row)

    async def add_template(self, template: TemplateRecord, audit: AuditEvent) -> None:
        """Record an operator template; StoreConflict if its scope has that slug."""
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO certificate_templates (template_id, org_id, slug, name, purpose,"
                " base, description, status, definition, created_by, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                template.template_id, template.org_id, template.slug, template.name,
                template.purpose, template.base, template.description, template.status,
                json.dumps(template.definition, sort_keys=True), template.created_by,
                d.t(template.created_at or _now()), d.t(template.updated_at or _now()))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def update_template(self, template: TemplateRecord,
                              audit: AuditEvent) -> TemplateRecord | None:
        """Replace base, description, status and definition of the operator template
        ``template.template_id``; the updated row, or None (nothing written) when there is
        none (a built-in is never updated here)."""
        d = self._d

        def write(tx: Tx) -> Body[TemplateRecord | None]:
            row = yield one(
                "UPDATE certificate_templates SET purpose = ?, base = ?, description = ?,"
                " status = ?, definition = ?, updated_at = ?"
                " WHERE template_id = ? AND base IS NOT NULL RETURNING *",
                template.purpose, template.base, template.description, template.status,
                json.dumps(template.definition, sort_keys=True),
                d.t(template.updated_at or _now()), template.template_id)
            if row is None:
                return None
            yield from tx.append_audit(audit)
            return self._template(row)
        return await self._write(write)

    async def delete_template(self, template_id: str, audit: AuditEvent) -> bool:
        """Delete an operator template; False (nothing written) when there is none."""
        def write(tx: Tx) -> Body[bool]:
            row = yield one("DELETE FROM certificate_templates WHERE template_id = ?"
                            " AND base IS NOT NULL RETURNING template_id", template_id)
            if row is None:
                return False
            yield from tx.append_audit(audit)
            return True
        return await self._write(write)

    def _template(self, row: Any) -> TemplateRecord:
        d = self._d
        definition = row["definition"]
        return TemplateRecord(
            slug=row["slug"], name=row["name"], purpose=row["purpose"],
            definition=json.loads(definition) if isinstance(definition, str) else definition,
            org_id=row["org_id"], template_id=row["template_id"], base=row["base"],
            description=row["description"], status=row["status"],
            created_by=row["created_by"], created_at=d.time(row["created_at"]),
            updated_at=d.time(row["updated_at"]))

    async def add_token(self, token: ApiToken, audit: AuditEvent) -> None:
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO api_tokens (token_id, org_id, role, secret_hash, name, created_at,"
                " expires_at, revoked) VALUES (?,?,?,?,?,?,?,?)",
                token.token_id, token.org_id, token.role, token.secret_hash, token.name,
                d.t(token.created_at), d.t_opt(token.expires_at), token.revoked)
            yield from tx.append_audit(audit)
        await self._write(write)

    async def get_token(self, token_id: str) -> ApiToken | None:
        """The token with its organization's status (``org_status``)."""
        row = await self._lookup(one(
            "SELECT t.*, o.status AS org_status FROM api_tokens t"
            " JOIN organizations o ON o.org_id = t.org_id WHERE t.token_id = ?", token_id))
        return None if row is None else self._token(row)

    async def list_tokens(
        self, org_id: str | None = None, after: tuple[dt.datetime, str] | None = None,
        limit: int = 100,
    ) -> list[ApiToken]:
        """Tokens (of one organization, or all) by (created_at, token_id), after ``after``."""
        found = await self._page("api_tokens", "token_id", org_id, after, limit)
        return [self._token(r) for r in found]

    async def revoke_token(self, token_id: str, org_id: str | None,
                           audit: AuditEvent) -> ApiToken | None:
        """Mark the token revoked if it exists (in ``org_id`` when given) and is not revoked
        yet; the updated token, or None (nothing written)."""
        where, params = ["token_id = ?", "revoked = ?"], [token_id, False]
        if org_id is not None:
            where.append("org_id = ?")
            params.append(org_id)

        def write(tx: Tx) -> Body[ApiToken | None]:
            row = yield one("UPDATE api_tokens SET revoked = ?" + _where(where)
                            + " RETURNING *", True, *params)
            if row is None:
                return None
            yield from tx.append_audit(audit)
            return self._token(row)
        return await self._write(write)

    # service accounts (client certificates pinned by fingerprint) ---------------------------

    def _service_account(self, row: Any) -> ServiceAccount:
        d = self._d
        return ServiceAccount(
            account_id=row["account_id"], org_id=row["org_id"], role=row["role"],
            name=row["name"], fingerprint=row["fingerprint"], subject_dn=row["subject_dn"],
            issuer_dn=row["issuer_dn"], serial_hex=row["serial_hex"],
            not_after=d.time(row["not_after"]), created_at=d.time(row["created_at"]),
            revoked=bool(row["revoked"]),
            org_status=row["org_status"] if "org_status" in row.keys() else "active",
        )

    async def add_service_account(self, account: ServiceAccount, audit: AuditEvent) -> None:
        """StoreConflict when a live binding of the same fingerprint exists or the
        organization does not."""
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO service_accounts (account_id, org_id, role, name, fingerprint,"
                " subject_dn, issuer_dn, serial_hex, not_after, created_at, revoked)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                account.account_id, account.org_id, account.role, account.name,
                account.fingerprint, account.subject_dn, account.issuer_dn, account.serial_hex,
                d.t(account.not_after), d.t(account.created_at), account.revoked)
            yield from tx.append_audit(audit)
        await self._write(write)

    async def get_service_account(self, account_id: str) -> ServiceAccount | None:
        """The binding (live or revoked) with its organization's status."""
        row = await self._lookup(one(
            "SELECT s.*, o.status AS org_status FROM service_accounts s"
            " JOIN organizations o ON o.org_id = s.org_id WHERE s.account_id = ?", account_id))
        return None if row is None else self._service_account(row)

    async def find_service_account(self, fingerprint: str) -> ServiceAccount | None:
        """The live binding of a certificate fingerprint, with its organization's status
        (one keyed read per mTLS request: the partial unique index on live fingerprints)."""
        row = await self._lookup(one(
            "SELECT s.*, o.status AS org_status FROM service_accounts s"
            " JOIN organizations o ON o.org_id = s.org_id"
            " WHERE s.fingerprint = ? AND s.revoked = ?", fingerprint, False))
        return None if row is None else self._service_account(row)

    async def list_service_accounts(
        self, org_id: str | None = None, after: tuple[dt.datetime, str] | None = None,
        limit: int = 100,
    ) -> list[ServiceAccount]:
        """Bindings (of one organization, or all) by (created_at, account_id), after
        ``after``."""
        found = await self._page("service_accounts", "account_id", org_id, after, limit)
        return [self._service_account(r) for r in found]

    async def revoke_service_account(self, account_id: str, org_id: str | None,
                                     audit: AuditEvent) -> ServiceAccount | None:
        """Mark the binding revoked if it exists (in ``org_id`` when given) and is live; the
        updated binding, or None (nothing written)."""
        where, params = ["account_id = ?", "revoked = ?"], [account_id, False]
        if org_id is not None:
            where.append("org_id = ?")
            params.append(org_id)

        def write(tx: Tx) -> Body[ServiceAccount | None]:
            row = yield one("UPDATE service_accounts SET revoked = ?" + _where(where)
                            + " RETURNING *", True, *params)
            if row is None:
                return None
            yield from tx.append_audit(audit)
            return self._service_account(row)
        return await self._write(write)

    # audit log ---------------------------------------------------------------------------

    async def append_audit(self, audit: AuditEvent) -> AuditEntry:
        """Append an event that changes no other table (e.g. a failed login)."""
        def write(tx: Tx) -> Body[AuditEntry]:
            return (yield from tx.append_audit(audit))
        return await self._write(write)

    async def audit_entries(self, after_seq: int = 0, limit: int = 10_000) -> list[AuditEntry]:
        """Entries in chain order (by seq), for verification and export."""
        found = await self._read(rows(
            "SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", after_seq, limit))
        return [self._audit(r) for r in found]

    async def audit_head(self) -> AuditHead | None:
        """The last seq and hash, kept apart from the rows so that a deleted tail shows."""
        row = await self._read(one("SELECT seq, audit_hash FROM audit_head WHERE id = 1"))
        # seq 0 is the genesis row the migrations create: no entry yet.
        return None if row is None or row[0] == 0 else AuditHead(row[0], row[1])

    async def query_audit(self, query: AuditQuery) -> list[AuditEntry]:
        """One page of entries matching ``query``, in chain order."""
        d = self._d
        where: list[str] = ["seq > ?"]
        params: list[Any] = [query.after_seq]
        for column, value in (("org_id", query.org_id), ("actor_id", query.actor_id),
                              ("action", query.action), ("resource_id", query.resource_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.since is not None:
            where.append("timestamp >= ?")
            params.append(d.t(query.since))
        if query.until is not None:
            where.append("timestamp < ?")
            params.append(d.t(query.until))
        found = await self._read(rows(
            "SELECT * FROM audit_log" + _where(where) + " ORDER BY seq LIMIT ?",
            *params, query.limit))
        return [self._audit(r) for r in found]

    # RFC 3161 time-stamp tokens ----------------------------------------------------------

    async def add_timestamp(self, record: TimeStampRecord) -> None:
        """Record an issued time-stamp token; StoreConflict if its serial exists. No audit
        event per token: this table is the TSA's record of issued tokens (see README)."""
        stmt = run(
            "INSERT INTO timestamp_tokens (serial_hex, tsa_ca_id, policy_oid, hash_algorithm,"
            " message_imprint, gen_time, has_nonce, cert_req) VALUES (?,?,?,?,?,?,?,?)",
            record.serial_hex, record.tsa_ca_id, record.policy_oid, record.hash_algorithm,
            record.message_imprint, self._d.t(record.gen_time), record.has_nonce,
            record.cert_req)
        if self._d.autocommit_single:
            if not self._open:
                raise StoreUnavailable("store is not open")
            await self._d.autocommit(stmt)
            return

        def write(tx: Tx) -> Body[None]:
            yield stmt
        await self._write(write)

    async def get_timestamp(self, serial_hex: str) -> TimeStampRecord | None:
        row = await self._lookup(one(
            "SELECT * FROM timestamp_tokens WHERE serial_hex = ?", serial_hex))
        if row is None:
            return None
        return TimeStampRecord(
            serial_hex=row["serial_hex"], tsa_ca_id=row["tsa_ca_id"],
            policy_oid=row["policy_oid"], hash_algorithm=row["hash_algorithm"],
            message_imprint=bytes(row["message_imprint"]),
            gen_time=self._d.time(row["gen_time"]), has_nonce=bool(row["has_nonce"]),
            cert_req=bool(row["cert_req"]),
        )

    # code signing (issue 14): signers and signatures -------------------------------------

    def _code_signer(self, row: Any) -> CodeSignerRecord:
        d = self._d
        return CodeSignerRecord(
            signer_id=row["signer_id"], org_id=row["org_id"], cert_id=row["cert_id"],
            key_ref=row["key_ref"], key_backend=row["key_backend"],
            not_before=d.time(row["not_before"]), not_after=d.time(row["not_after"]),
            created_at=d.time(row["created_at"]))

    def _code_signature(self, row: Any) -> CodeSignatureRecord:
        d = self._d
        token = row["timestamp_token"]
        return CodeSignatureRecord(
            signature_id=row["signature_id"], org_id=row["org_id"], cert_id=row["cert_id"],
            artifact_type=row["artifact_type"], artifact_name=row["artifact_path"],
            artifact_hash=row["artifact_hash"], hash_algorithm=row["hash_algorithm"],
            signature_der=bytes(row["signature_data"]),
            signature_algorithm=row["signature_algorithm"],
            timestamp_token=None if token is None else bytes(token),
            tsa_ca_id=row["timestamp_authority_id"], metadata=json.loads(row["vcc_metadata"]),
            signed_at=d.time(row["signed_at"]), created_at=d.time(row["created_at"]),
            service_id=row["service_id"], verified_count=row["verified_count"],
            last_verified_at=d.time_opt(row["last_verified_at"]))

    async def add_code_signer(self, signer: CodeSignerRecord, audit: AuditEvent) -> None:
        """Record a code-signing key whose certificate is already stored."""
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO code_signers (signer_id, org_id, cert_id, key_ref, key_backend,"
                " not_before, not_after, created_at) VALUES (?,?,?,?,?,?,?,?)",
                signer.signer_id, signer.org_id, signer.cert_id, signer.key_ref,
                signer.key_backend, d.t(signer.not_before), d.t(signer.not_after),
                d.t(signer.created_at))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def list_code_signers(self, org_id: str) -> list[CodeSignerRecord]:
        """The organization's signers, the longest-lived first (by not_after)."""
        found = await self._read(rows(
            "SELECT * FROM code_signers WHERE org_id = ?"
            " ORDER BY not_after DESC, created_at DESC", org_id))
        return [self._code_signer(r) for r in found]

    async def add_code_signature(self, record: CodeSignatureRecord, audit: AuditEvent
                                 ) -> None:
        """Record a signature; StoreConflict when its (artifact_hash, cert_id) exists."""
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO vcc_code_signatures (signature_id, cert_id, service_id, org_id,"
                " artifact_type, artifact_path, artifact_hash, hash_algorithm, signature_data,"
                " signature_algorithm, timestamp_token, timestamp_authority_id, vcc_metadata,"
                " signed_at, verified_count, last_verified_at, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                record.signature_id, record.cert_id, record.service_id, record.org_id,
                record.artifact_type, record.artifact_name, record.artifact_hash,
                record.hash_algorithm, record.signature_der, record.signature_algorithm,
                record.timestamp_token, record.tsa_ca_id, _json(record.metadata),
                d.t(record.signed_at), record.verified_count,
                None if record.last_verified_at is None else d.t(record.last_verified_at),
                d.t(record.created_at))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def find_code_signature(self, artifact_hash: str, cert_id: str
                                  ) -> CodeSignatureRecord | None:
        """The signature of this artifact hash by this certificate, if recorded."""
        row = await self._lookup(one(
            "SELECT * FROM vcc_code_signatures WHERE artifact_hash = ? AND cert_id = ?",
            artifact_hash, cert_id))
        return None if row is None else self._code_signature(row)

    async def get_code_signature(self, signature_id: str) -> CodeSignatureRecord | None:
        row = await self._lookup(one(
            "SELECT * FROM vcc_code_signatures WHERE signature_id = ?", signature_id))
        return None if row is None else self._code_signature(row)

    async def record_code_verification(self, signature_id: str, when: dt.datetime,
                                       audit: AuditEvent) -> CodeSignatureRecord | None:
        """Count one verification; the updated record, or None when it does not exist."""
        def write(tx: Tx) -> Body[CodeSignatureRecord | None]:
            row = yield one(
                "UPDATE vcc_code_signatures SET verified_count = verified_count + 1,"
                " last_verified_at = ? WHERE signature_id = ? RETURNING *",
                self._d.t(when), signature_id)
            if row is None:
                return None
            yield from tx.append_audit(audit)
            return self._code_signature(row)
        return await self._write(write)

    # service registry (issue 14): services, who acts for them, certificates, heartbeats --

    _SERVICE_SELECT = (
        "SELECT s.*, c.serial_hex AS cert_serial_hex, c.not_after AS cert_not_after,"
        " c.status AS cert_status, r.last_seen AS last_seen, r.status AS health_status,"
        " r.version AS reported_version FROM vcc_services s"
        " LEFT JOIN certificates c ON c.cert_id = s.active_cert_id"
        " LEFT JOIN service_registry r ON r.service_id = s.service_id")

    def _service(self, row: Any) -> ServiceRecord:
        d = self._d
        return ServiceRecord(
            service_id=row["service_id"], org_id=row["org_id"], name=row["service_name"],
            slug=row["service_slug"], service_type=row["service_type"],
            endpoints=json.loads(row["endpoints"]), health_check_url=row["health_check_url"],
            version=row["version"], environment=row["environment"],
            metadata=json.loads(row["metadata"]), created_by=row["created_by"],
            created_at=d.time(row["created_at"]), updated_at=d.time(row["updated_at"]),
            status=row["status"], active_cert_id=row["active_cert_id"],
            cert_serial_hex=row["cert_serial_hex"],
            cert_not_after=d.time_opt(row["cert_not_after"]), cert_status=row["cert_status"],
            last_seen=d.time_opt(row["last_seen"]), health_status=row["health_status"],
            reported_version=row["reported_version"])

    async def add_service(self, service: ServiceRecord, audit: AuditEvent,
                          acting: str | None = None) -> None:
        """StoreConflict when the slug exists in the organization or the registering
        principal acts for another service already."""
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO vcc_services (service_id, org_id, service_name, service_slug,"
                " service_type, endpoints, health_check_url, active_cert_id, version,"
                " environment, metadata, status, created_by, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                service.service_id, service.org_id, service.name, service.slug,
                service.service_type, _json(service.endpoints), service.health_check_url,
                service.active_cert_id, service.version, service.environment,
                _json(service.metadata), service.status, service.created_by,
                d.t(service.created_at), d.t(service.updated_at))
            if acting is not None:
                yield run("INSERT INTO vcc_service_principals (actor_id, service_id,"
                          " created_at) VALUES (?,?,?)", acting, service.service_id,
                          d.t(service.created_at))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def get_service(self, org_id: str, slug: str) -> ServiceRecord | None:
        row = await self._lookup(one(
            self._SERVICE_SELECT + " WHERE s.org_id = ? AND s.service_slug = ?", org_id, slug))
        return None if row is None else self._service(row)

    async def get_service_by_id(self, service_id: str) -> ServiceRecord | None:
        row = await self._lookup(one(self._SERVICE_SELECT + " WHERE s.service_id = ?",
                                     service_id))
        return None if row is None else self._service(row)

    async def list_services(self, org_id: str | None = None,
                            after: tuple[dt.datetime, str] | None = None,
                            limit: int = 100) -> list[ServiceRecord]:
        """Services (of one organization, or all) by (created_at, service_id)."""
        where, params = _keyset("s.created_at", "s.service_id", after, ">", self._d)
        if org_id is not None:
            where.append("s.org_id = ?")
            params.append(org_id)
        found = await self._read(rows(
            self._SERVICE_SELECT + _where(where)
            + " ORDER BY s.created_at, s.service_id LIMIT ?", *params, limit))
        return [self._service(r) for r in found]

    async def update_service(self, service: ServiceRecord, audit: AuditEvent
                             ) -> ServiceRecord | None:
        """Replace the descriptive fields; the updated record, or None (nothing written)."""
        d = self._d

        def write(tx: Tx) -> Body[bool]:
            row = yield one(
                "UPDATE vcc_services SET service_name = ?, service_type = ?, endpoints = ?,"
                " health_check_url = ?, version = ?, environment = ?, metadata = ?,"
                " status = ?, updated_at = ? WHERE service_id = ? RETURNING service_id",
                service.name, service.service_type, _json(service.endpoints),
                service.health_check_url, service.version, service.environment,
                _json(service.metadata), service.status, d.t(service.updated_at),
                service.service_id)
            if row is None:
                return False
            yield from tx.append_audit(audit)
            return True
        if not await self._write(write):
            return None
        return await self.get_service_by_id(service.service_id)

    async def service_of_actor(self, actor_id: str) -> str | None:
        row = await self._lookup(one(
            "SELECT service_id FROM vcc_service_principals WHERE actor_id = ?", actor_id))
        return None if row is None else str(row["service_id"])

    async def add_service_principal(self, service_id: str, actor_id: str, when: dt.datetime,
                                    audit: AuditEvent) -> None:
        """StoreConflict when ``actor_id`` acts for a service already."""
        def write(tx: Tx) -> Body[None]:
            yield run("INSERT INTO vcc_service_principals (actor_id, service_id, created_at)"
                      " VALUES (?,?,?)", actor_id, service_id, self._d.t(when))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def add_service_certificate(self, service_id: str, cert: CertificateRecord,
                                      audit: AuditEvent, link_audit: AuditEvent) -> None:
        """``add_certificate`` and the link, in one transaction."""
        def write(tx: Tx) -> Body[None]:
            yield from self._insert_certificate(cert)
            yield from tx.append_audit(audit)
            linked = yield one(
                "UPDATE vcc_services SET active_cert_id = ?, updated_at = ?"
                " WHERE service_id = ? RETURNING service_id",
                cert.cert_id, self._d.t(cert.created_at or _now()), service_id)
            if linked is None:
                raise StoreConflict(f"no service {service_id}")
            yield run("INSERT INTO vcc_service_certificates (cert_id, service_id, created_at)"
                      " VALUES (?,?,?)", cert.cert_id, service_id,
                      self._d.t(cert.created_at or _now()))
            yield from tx.append_audit(link_audit)
        await self._write(write)

    async def record_heartbeat(self, service_id: str, when: dt.datetime, status: str,
                               version: str | None, audit: AuditEvent | None) -> None:
        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO service_registry (service_id, last_seen, status, version)"
                " VALUES (?,?,?,?) ON CONFLICT (service_id) DO UPDATE SET"
                " last_seen = excluded.last_seen, status = excluded.status,"
                " version = excluded.version", service_id, self._d.t(when), status, version)
            if audit is not None:
                yield from tx.append_audit(audit)
        await self._write(write)

    async def services_due(self, now: dt.datetime, before: dt.datetime,
                           org_id: str | None = None) -> list[ServiceRecord]:
        """Services whose active, unrevoked certificate ends before ``before``."""
        where, params = ["c.status = 'active'", "c.not_after < ?"], [self._d.t(before)]
        if org_id is not None:
            where.append("s.org_id = ?")
            params.append(org_id)
        found = await self._read(rows(
            self._SERVICE_SELECT + _where(where) + " ORDER BY c.not_after, s.service_id",
            *params))
        return [self._service(r) for r in found]

    async def certificates_without_service(self, org_id: str | None, now: dt.datetime,
                                           limit: int = 100) -> tuple[int, list[str]]:
        """Live certificates never issued for a registered service: count and some ids."""
        where = ["c.status = 'active'", "c.not_after > ?",
                 "NOT EXISTS (SELECT 1 FROM vcc_service_certificates v"
                 " WHERE v.cert_id = c.cert_id)"]
        params: list[Any] = [self._d.t(now)]
        if org_id is not None:
            where.append("c.org_id = ?")
            params.append(org_id)
        count = await self._read(one("SELECT COUNT(*) AS n FROM certificates c"
                                     + _where(where), *params))
        found = await self._read(rows(
            "SELECT c.cert_id FROM certificates c" + _where(where)
            + " ORDER BY c.created_at, c.cert_id LIMIT ?", *params, limit))
        return int(count["n"]), [str(r["cert_id"]) for r in found]

    # ACME (RFC 8555): accounts, EAB keys, orders and authorizations ----------------------

    async def add_acme_account(self, account: AcmeAccount, audit: AuditEvent) -> None:
        """StoreConflict if the key is already an account's, or if ``account.eab_kid`` names
        a key that is unknown or bound already (it is bound to this account atomically)."""
        def write(tx: Tx) -> Body[None]:
            if account.eab_kid is not None:
                bound = yield one(
                    "UPDATE acme_eab_keys SET account_id = ?"
                    " WHERE kid = ? AND account_id IS NULL AND org_id = ? RETURNING 1",
                    account.account_id, account.eab_kid, account.org_id)
                if bound is None:
                    raise StoreConflict("the EAB key is unknown or used already")
            yield run(
                "INSERT INTO acme_accounts (account_id, org_id, key_thumbprint, jwk, status,"
                " contact, tos_agreed, eab_kid, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                account.account_id, account.org_id, account.key_thumbprint,
                _json(account.jwk), account.status, _json(list(account.contact)),
                account.tos_agreed, account.eab_kid,
                self._d.t(account.created_at or _now()))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def get_acme_account(self, account_id: str) -> AcmeAccount | None:
        row = await self._lookup(one(
            "SELECT * FROM acme_accounts WHERE account_id = ?", account_id))
        return None if row is None else self._acme_account(row)

    async def get_acme_account_with_org(
        self, account_id: str
    ) -> tuple[AcmeAccount, Organization | None] | None:
        """The account and its organization as stored now, in one read (a JOIN): every
        kid-signed ACME request needs both (the account's status and key, the
        organization's status); None for no account, (account, None) for an account whose
        organization is gone."""
        row = await self._lookup(one(
            "SELECT a.*, o.slug AS o_slug, o.name AS o_name, o.status AS o_status,"
            " o.config AS o_config, o.created_at AS o_created_at, o.org_id AS o_org_id"
            " FROM acme_accounts a LEFT JOIN organizations o ON o.org_id = a.org_id"
            " WHERE a.account_id = ?", account_id))
        if row is None:
            return None
        org = None if row["o_org_id"] is None else Organization(
            org_id=row["o_org_id"], slug=row["o_slug"], name=row["o_name"],
            status=row["o_status"], config=json.loads(row["o_config"]),
            created_at=self._d.time(row["o_created_at"]))
        return self._acme_account(row), org

    async def find_acme_account(self, key_thumbprint: str) -> AcmeAccount | None:
        row = await self._lookup(one(
            "SELECT * FROM acme_accounts WHERE key_thumbprint = ?", key_thumbprint))
        return None if row is None else self._acme_account(row)

    async def update_acme_account(self, account: AcmeAccount, audit: AuditEvent) -> None:
        """Contact, status, key (StoreConflict if the new key is another account's)."""
        def write(tx: Tx) -> Body[None]:
            found = yield one(
                "UPDATE acme_accounts SET key_thumbprint = ?, jwk = ?, status = ?,"
                " contact = ?, tos_agreed = ? WHERE account_id = ? RETURNING 1",
                account.key_thumbprint, _json(account.jwk), account.status,
                _json(list(account.contact)), account.tos_agreed, account.account_id)
            if found is None:
                raise StoreConflict(f"no ACME account {account.account_id}")
            yield from tx.append_audit(audit)
        await self._write(write)

    async def add_eab_key(self, key: EabKey, audit: AuditEvent) -> None:
        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO acme_eab_keys (kid, org_id, hmac_key, account_id, created_at)"
                " VALUES (?,?,?,?,?)",
                key.kid, key.org_id, key.hmac_key, key.account_id, self._d.t(key.created_at))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def get_eab_key(self, kid: str) -> EabKey | None:
        row = await self._lookup(one("SELECT * FROM acme_eab_keys WHERE kid = ?", kid))
        return None if row is None else self._eab_key(row)

    def _eab_key(self, row: Any) -> EabKey:
        return EabKey(kid=row["kid"], org_id=row["org_id"], hmac_key=bytes(row["hmac_key"]),
                      created_at=self._d.time(row["created_at"]), account_id=row["account_id"])

    async def list_eab_keys(self, org_id: str | None = None,
                            after: tuple[dt.datetime, str] | None = None, limit: int = 100
                            ) -> list[EabKey]:
        found = await self._page("acme_eab_keys", "kid", org_id, after, limit)
        return [self._eab_key(r) for r in found]

    async def delete_eab_key(self, kid: str, org_id: str | None, audit: AuditEvent
                             ) -> EabKey | None:
        where, params = ["kid = ?", "account_id IS NULL"], [kid]
        if org_id is not None:
            where.append("org_id = ?")
            params.append(org_id)

        def write(tx: Tx) -> Body[EabKey | None]:
            row = yield one("DELETE FROM acme_eab_keys" + _where(where) + " RETURNING *",
                            *params)
            if row is None:
                return None
            yield from tx.append_audit(audit)
            return self._eab_key(row)
        return await self._write(write)

    async def list_acme_accounts(self, org_id: str | None = None,
                                 after: tuple[dt.datetime, str] | None = None,
                                 limit: int = 100) -> list[AcmeAccount]:
        found = await self._page("acme_accounts", "account_id", org_id, after, limit)
        return [self._acme_account(r) for r in found]

    async def deactivate_acme_account(self, account_id: str, org_id: str | None,
                                      audit: AuditEvent) -> AcmeAccount | None:
        where, params = ["account_id = ?", "status = ?"], [account_id, "valid"]
        if org_id is not None:
            where.append("org_id = ?")
            params.append(org_id)

        def write(tx: Tx) -> Body[AcmeAccount | None]:
            row = yield one("UPDATE acme_accounts SET status = ?" + _where(where)
                            + " RETURNING *", "deactivated", *params)
            if row is None:
                return None
            yield from tx.append_audit(audit)
            return self._acme_account(row)
        return await self._write(write)

    async def add_acme_order(
        self, order: AcmeOrder, new_authorizations: Sequence[AcmeAuthorization],
        audit: AuditEvent | None = None,
    ) -> None:
        d = self._d

        def write(tx: Tx) -> Body[None]:
            for authz in new_authorizations:
                yield run(
                    "INSERT INTO acme_authorizations (authz_id, account_id, identifier_type,"
                    " identifier_value, wildcard, status, expires, challenges, created_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?)",
                    authz.authz_id, authz.account_id, authz.identifier_type,
                    authz.identifier_value, authz.wildcard, authz.status, d.t(authz.expires),
                    _json(challenges_to_json(authz.challenges)),
                    d.t(authz.created_at or _now()))
            yield run(
                "INSERT INTO acme_orders (order_id, account_id, org_id, status, expires,"
                " identifiers, authz_ids, profile, not_before, not_after, replaces, error,"
                " cert_id, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                order.order_id, order.account_id, order.org_id, order.status,
                d.t(order.expires), _json(identifiers_to_json(order.identifiers)),
                _json(list(order.authz_ids)), order.profile, d.t_opt(order.not_before),
                d.t_opt(order.not_after), order.replaces,
                None if order.error is None else _json(order.error), order.cert_id,
                d.t(order.created_at or _now()))
            if audit is not None:
                yield from tx.append_audit(audit)
        await self._write(write)

    async def get_acme_order(self, order_id: str) -> AcmeOrder | None:
        row = await self._lookup(one("SELECT * FROM acme_orders WHERE order_id = ?", order_id))
        return None if row is None else self._acme_order(row)

    async def update_acme_order(self, order: AcmeOrder, expect_status: str,
                                audit: AuditEvent | Sequence[AuditEvent] | None = None
                                ) -> bool:
        """Store ``order`` (and append ``audit``: one event, or several in their order) if
        the stored one still has ``expect_status``; False (and nothing changes) otherwise."""
        events = () if audit is None else (audit,) if isinstance(audit, AuditEvent) \
            else tuple(audit)

        def write(tx: Tx) -> Body[bool]:
            found = yield from self._set_acme_order(order, expect_status)
            if found:
                for event in events:
                    yield from tx.append_audit(event)
            return found
        return await self._write(write)

    def _set_acme_order(self, order: AcmeOrder, expect_status: str) -> Body[bool]:
        found = yield one(
            "UPDATE acme_orders SET status = ?, error = ?, cert_id = ?"
            " WHERE order_id = ? AND status = ? RETURNING 1",
            order.status, None if order.error is None else _json(order.error),
            order.cert_id, order.order_id, expect_status)
        return found is not None

    async def add_certificate_for_acme_order(
        self, cert: CertificateRecord, audit: AuditEvent, order: AcmeOrder,
        expect_status: str, order_audit: AuditEvent,
    ) -> bool:
        # The contract is AcmeStore's (ca_core.storage).
        def write(tx: Tx) -> Body[bool]:
            # The compare-and-set first (nothing written when it is lost), the link after
            # the certificate row (acme_orders.cert_id references it).
            if not (yield from self._set_acme_order(replace(order, cert_id=None),
                                                    expect_status)):
                return False
            yield from self._insert_certificate(cert)
            yield run("UPDATE acme_orders SET cert_id = ? WHERE order_id = ?",
                      order.cert_id, order.order_id)
            yield from tx.append_audit(audit)
            yield from tx.append_audit(order_audit)
            return True
        return await self._write(write)

    async def find_acme_order_by_cert(self, cert_id: str) -> AcmeOrder | None:
        row = await self._lookup(one("SELECT * FROM acme_orders WHERE cert_id = ?", cert_id))
        return None if row is None else self._acme_order(row)

    async def get_acme_authorizations(
        self, authz_ids: Sequence[str]
    ) -> list[AcmeAuthorization]:
        """The authorizations that exist among ``authz_ids``, in that order."""
        if not authz_ids:
            return []
        where, params = self._d.any_of("authz_id", authz_ids)
        found = await self._lookup(rows(
            f"SELECT * FROM acme_authorizations WHERE {where}", *params))
        by_id = {row["authz_id"]: self._acme_authz(row) for row in found}
        return [by_id[i] for i in authz_ids if i in by_id]

    async def update_acme_authorization(
        self, authz: AcmeAuthorization, expect_status: str, audit: AuditEvent | None = None
    ) -> bool:
        """Store ``authz`` (and append ``audit``) if the stored one still has
        ``expect_status``; False (and nothing changes) otherwise."""
        def write(tx: Tx) -> Body[bool]:
            found = yield one(
                "UPDATE acme_authorizations SET status = ?, expires = ?, challenges = ?"
                " WHERE authz_id = ? AND status = ? RETURNING 1",
                authz.status, self._d.t(authz.expires),
                _json(challenges_to_json(authz.challenges)), authz.authz_id, expect_status)
            if found is not None and audit is not None:
                yield from tx.append_audit(audit)
            return found is not None
        return await self._write(write)

    async def find_valid_acme_authorization(
        self, account_id: str, identifier_type: str, identifier_value: str, wildcard: bool,
        valid_at: dt.datetime,
    ) -> AcmeAuthorization | None:
        """A valid authorization of the account for the identifier, unexpired at
        ``valid_at`` (the one that expires last), for reuse in new orders."""
        row = await self._lookup(one(
            "SELECT * FROM acme_authorizations WHERE account_id = ? AND identifier_type = ?"
            " AND identifier_value = ? AND wildcard = ? AND status = 'valid' AND expires > ?"
            " ORDER BY expires DESC LIMIT 1",
            account_id, identifier_type, identifier_value, wildcard, self._d.t(valid_at)))
        return None if row is None else self._acme_authz(row)

    # EST (RFC 7030): labels, one-time enrollment secrets, requests awaiting approval -----

    def _est_label(self, row: Any) -> EstLabel:
        return EstLabel.from_policy(row["label"], row["org_id"], row["profile"],
                                    json.loads(row["policy"]), self._d.time(row["created_at"]))

    def _secret(self, row: Any) -> EnrollmentSecretRecord:
        d = self._d
        return EnrollmentSecretRecord(
            secret_id=row["secret_id"], org_id=row["org_id"], label=row["label"],
            secret_hash=row["secret_hash"], expires_at=d.time(row["expires_at"]),
            subject=row["subject"], used_at=d.time_opt(row["used_at"]),
            created_at=d.time(row["created_at"]),
        )

    def _pending_row(self, row: Any) -> PendingEnrollment:
        d = self._d
        return PendingEnrollment(
            request_id=row["request_id"], label=row["label"], org_id=row["org_id"],
            csr_der=bytes(row["csr_der"]), requester=row["requester"], status=row["status"],
            cert_id=row["cert_id"], created_at=d.time(row["created_at"]),
            decided_at=d.time_opt(row["decided_at"]), csr_fingerprint=row["csr_fingerprint"],
        )

    async def set_est_label(self, label: EstLabel, audit: AuditEvent) -> None:
        """Create or replace a label (its organization must exist: StoreConflict)."""
        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO est_labels (label, org_id, profile, policy, created_at)"
                " VALUES (?,?,?,?,?) ON CONFLICT (label) DO UPDATE SET"
                " org_id = excluded.org_id, profile = excluded.profile,"
                " policy = excluded.policy",
                label.label, label.org_id, label.profile,
                json.dumps(label.policy(), sort_keys=True),
                self._d.t(label.created_at or _now()))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def get_est_label(self, label: str) -> EstLabel | None:
        row = await self._lookup(one("SELECT * FROM est_labels WHERE label = ?", label))
        return None if row is None else self._est_label(row)

    async def list_est_labels(self) -> list[EstLabel]:
        """Every label, by name."""
        found = await self._read(rows('SELECT * FROM est_labels ORDER BY label COLLATE "C"'))
        return [self._est_label(r) for r in found]

    async def add_enrollment_secret(self, secret: EnrollmentSecretRecord,
                                    audit: AuditEvent) -> None:
        """StoreConflict if the id exists or the organization does not."""
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO est_secrets (secret_id, org_id, label, secret_hash, subject,"
                " expires_at, used_at, created_at) VALUES (?,?,?,?,?,?,?,?)",
                secret.secret_id, secret.org_id, secret.label, secret.secret_hash,
                secret.subject, d.t(secret.expires_at), d.t_opt(secret.used_at),
                d.t(secret.created_at or _now()))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def get_enrollment_secret(self, secret_id: str, org_id: str | None = None
                                    ) -> EnrollmentSecretRecord | None:
        where, params = ["secret_id = ?"], [secret_id]
        if org_id is not None:
            where.append("org_id = ?")
            params.append(org_id)
        row = await self._lookup(one("SELECT * FROM est_secrets" + _where(where), *params))
        return None if row is None else self._secret(row)

    async def list_enrollment_secrets(self, org_id: str | None = None,
                                      after: tuple[dt.datetime, str] | None = None,
                                      limit: int = 100) -> list[EnrollmentSecretRecord]:
        """Secrets (of one organization, or all) by (created_at, secret_id), after
        ``after``; whatever their state."""
        found = await self._page("est_secrets", "secret_id", org_id, after, limit)
        return [self._secret(r) for r in found]

    async def delete_enrollment_secret(self, secret_id: str, org_id: str | None,
                                       audit: AuditEvent) -> EnrollmentSecretRecord | None:
        """Delete an unused secret (in ``org_id`` when given); the deleted record, or None
        (nothing written: unknown, another organization's, or used). The DELETE is
        conditional, like ``_CONSUME_SECRET``: of a revocation and an enrollment with the
        same secret, one finds the row gone or spent."""
        where, params = ["secret_id = ?", "used_at IS NULL"], [secret_id]
        if org_id is not None:
            where.append("org_id = ?")
            params.append(org_id)

        def write(tx: Tx) -> Body[EnrollmentSecretRecord | None]:
            row = yield one("DELETE FROM est_secrets" + _where(where) + " RETURNING *",
                            *params)
            if row is None:
                return None
            yield from tx.append_audit(audit)
            return self._secret(row)
        return await self._write(write)

    def _consume(self, tx: Tx, secret_id: str, now: dt.datetime, audit: AuditEvent
                 ) -> Body[EnrollmentSecretRecord | None]:
        # The conditional UPDATE is the lock: of two transactions spending one secret, the
        # second finds used_at set (SQLite: writers are serial; PostgreSQL: it waits for the
        # row lock, then re-checks the WHERE against the committed row).
        row = yield one(_CONSUME_SECRET, self._d.t(now), secret_id, self._d.t(now))
        if row is None:
            return None
        yield from tx.append_audit(audit)
        return self._secret(row)

    async def consume_secret(self, secret_id: str, now: dt.datetime, audit: AuditEvent
                             ) -> EnrollmentSecretRecord | None:
        """Mark the secret used at ``now`` if it is unused and unexpired at ``now``; the
        used record, or None (and nothing changes, no audit) otherwise."""
        def write(tx: Tx) -> Body[EnrollmentSecretRecord | None]:
            return (yield from self._consume(tx, secret_id, now, audit))
        return await self._write(write)

    async def add_certificate_consuming_secret(
        self, cert: CertificateRecord, audit: AuditEvent, secret_id: str, now: dt.datetime,
        secret_audit: AuditEvent,
    ) -> bool:
        """``consume_secret`` and ``add_certificate`` in one transaction: False (nothing
        written) when the secret is used or expired; StoreConflict (nothing written, the
        secret unused) when (issuer, serial) exists."""
        def write(tx: Tx) -> Body[bool]:
            if (yield from self._consume(tx, secret_id, now, secret_audit)) is None:
                return False
            yield from self._insert_certificate(cert)
            yield from tx.append_audit(audit)
            return True
        return await self._write(write)

    async def add_pending_enrollment(
        self, pending: PendingEnrollment, audit: AuditEvent,
        consume: tuple[str, dt.datetime, AuditEvent] | None = None,
    ) -> bool:
        """Record a request waiting for approval, spending the secret ``consume`` names
        (secret id, now, its audit event) in the same transaction: False (nothing written)
        when that secret is used or expired; StoreConflict when a request with the same
        CSR fingerprint and requester exists."""
        d = self._d

        def write(tx: Tx) -> Body[bool]:
            if consume is not None and (yield from self._consume(tx, *consume)) is None:
                return False
            yield run(
                "INSERT INTO est_pending (request_id, label, org_id, csr_der,"
                " csr_fingerprint, requester, status, cert_id, created_at, decided_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                pending.request_id, pending.label, pending.org_id, pending.csr_der,
                pending.csr_fingerprint, pending.requester, pending.status, pending.cert_id,
                d.t(pending.created_at or _now()), d.t_opt(pending.decided_at))
            yield from tx.append_audit(audit)
            return True
        return await self._write(write)

    async def get_pending_enrollment(self, request_id: str, org_id: str | None = None
                                     ) -> PendingEnrollment | None:
        where, params = ["request_id = ?"], [request_id]
        if org_id is not None:
            where.append("org_id = ?")
            params.append(org_id)
        row = await self._lookup(one("SELECT * FROM est_pending" + _where(where), *params))
        return None if row is None else self._pending_row(row)

    async def find_pending_enrollment(self, csr_fingerprint: str, requester: str
                                      ) -> PendingEnrollment | None:
        """The request with this CSR and requester, whatever its status."""
        row = await self._lookup(one(
            "SELECT * FROM est_pending WHERE csr_fingerprint = ? AND requester = ?",
            csr_fingerprint, requester))
        return None if row is None else self._pending_row(row)

    async def list_pending_enrollments(
        self, org_id: str | None = None, status: str | None = "pending",
        after: tuple[dt.datetime, str] | None = None, limit: int | None = None,
    ) -> list[PendingEnrollment]:
        """Requests (of one organization, in one status; None: all), oldest first; a keyset
        page by (created_at, request_id) after ``after`` when ``limit`` is given."""
        where, params = _keyset("created_at", "request_id", after, ">", self._d)
        where.append("1 = 1")
        if org_id is not None:
            where.append("org_id = ?")
            params.append(org_id)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        query = f"SELECT * FROM est_pending WHERE {' AND '.join(where)}" \
            " ORDER BY created_at, request_id"
        if limit is not None:
            query, params = query + " LIMIT ?", [*params, limit]
        found = await self._read(rows(query, *params))
        return [self._pending_row(r) for r in found]

    async def add_certificate_for_pending(
        self, cert: CertificateRecord, audit: AuditEvent, request_id: str,
        now: dt.datetime, pending_audit: AuditEvent,
    ) -> bool:
        """Move a pending request to issued (with ``cert``'s id, decided at ``now``) and
        add ``cert`` in one transaction; False (nothing written) when it is not pending."""
        def write(tx: Tx) -> Body[bool]:
            moved = yield one(
                "UPDATE est_pending SET status = 'issued', cert_id = ?, decided_at = ?"
                " WHERE request_id = ? AND status = 'pending' RETURNING 1",
                cert.cert_id, self._d.t(now), request_id)
            if moved is None:
                return False
            yield from tx.append_audit(pending_audit)
            yield from self._insert_certificate(cert)
            yield from tx.append_audit(audit)
            return True
        return await self._write(write)

    async def reject_pending_enrollment(self, request_id: str, now: dt.datetime,
                                        audit: AuditEvent) -> PendingEnrollment | None:
        """Move a pending request to rejected; the updated request, or None (nothing
        changes) when it is not pending."""
        def write(tx: Tx) -> Body[PendingEnrollment | None]:
            row = yield one(
                "UPDATE est_pending SET status = 'rejected', decided_at = ?"
                " WHERE request_id = ? AND status = 'pending' RETURNING *",
                self._d.t(now), request_id)
            if row is None:
                return None
            yield from tx.append_audit(audit)
            return self._pending_row(row)
        return await self._write(write)

    # SCEP (RFC 8894): RA certificates, one-time challenges, transactions -----------------

    def _scep_ra(self, row: Any) -> ScepRaRecord:
        d = self._d
        return ScepRaRecord(
            ra_id=row["ra_id"], ca_id=row["ca_id"], cert_id=row["cert_id"],
            key_ref=row["key_ref"], key_backend=row["key_backend"],
            certificate_der=bytes(row["certificate_der"]),
            not_before=d.time(row["not_before"]), not_after=d.time(row["not_after"]),
            created_at=d.time(row["created_at"]),
        )

    def _scep_challenge(self, row: Any) -> ScepChallenge:
        d = self._d
        return ScepChallenge(
            challenge_id=row["challenge_id"], org_id=row["org_id"], profile=row["profile"],
            secret_hash=row["secret_hash"], expires_at=d.time(row["expires_at"]),
            used_at=d.time_opt(row["used_at"]), created_at=d.time(row["created_at"]),
        )

    def _scep_transaction(self, row: Any) -> ScepTransaction:
        d = self._d
        return ScepTransaction(
            transaction_id=row["transaction_id"], key_fingerprint=row["key_fingerprint"],
            request_fingerprint=row["request_fingerprint"], org_id=row["org_id"],
            status=row["status"], cert_id=row["cert_id"], fail_info=row["fail_info"],
            created_at=d.time(row["created_at"]), updated_at=d.time(row["updated_at"]),
            profile=row["profile"],
            csr_der=None if row["csr_der"] is None else bytes(row["csr_der"]),
            requester=row["requester"], decided_at=d.time_opt(row["decided_at"]),
        )

    def _scep_endpoint(self, row: Any) -> ScepEndpointPolicy:
        return ScepEndpointPolicy(
            org_id=row["org_id"], profile=row["profile"],
            require_approval=bool(row["require_approval"]), secret_hash=row["secret_hash"],
            updated_at=self._d.time(row["updated_at"]),
        )

    def _upsert_scep_transaction(self, t: ScepTransaction) -> Stmt:
        """Record ``t``: a new transactionID, or one of the same key whose stored request
        is another one and is not waiting for an operator; RETURNING a row when written.
        A row of another key, of this very request (recorded by a concurrent twin) or
        pending is left alone, and a failure replaces only a failure (a certificate or a
        decision stays what the transaction answers)."""
        d = self._d
        return one(
            "INSERT INTO scep_transactions (transaction_id, key_fingerprint,"
            " request_fingerprint, org_id, status, cert_id, fail_info, created_at,"
            " updated_at, profile, csr_der, requester, decided_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (transaction_id) DO UPDATE SET"
            " request_fingerprint = excluded.request_fingerprint,"
            " org_id = excluded.org_id, status = excluded.status,"
            " cert_id = excluded.cert_id, fail_info = excluded.fail_info,"
            " updated_at = excluded.updated_at, profile = excluded.profile,"
            " csr_der = excluded.csr_der, requester = excluded.requester,"
            " decided_at = excluded.decided_at"
            " WHERE scep_transactions.key_fingerprint = excluded.key_fingerprint"
            " AND scep_transactions.request_fingerprint <> excluded.request_fingerprint"
            " AND scep_transactions.status <> 'pending'"
            " AND (excluded.status <> 'failure' OR scep_transactions.status = 'failure')"
            " RETURNING 1",
            t.transaction_id, t.key_fingerprint, t.request_fingerprint, t.org_id,
            t.status, t.cert_id, t.fail_info, d.t(t.created_at or _now()),
            d.t(t.updated_at or _now()), t.profile, t.csr_der, t.requester,
            d.t_opt(t.decided_at))

    def _spend_scep_challenge(self, tx: Tx, consume: tuple[str, dt.datetime, AuditEvent]
                              ) -> Body[bool]:
        challenge_id, now, challenge_audit = consume
        d = self._d
        # The conditional UPDATE is the lock (see _consume).
        spent = yield one(
            "UPDATE scep_challenges SET used_at = ? WHERE challenge_id = ?"
            " AND used_at IS NULL AND expires_at > ? RETURNING 1",
            d.t(now), challenge_id, d.t(now))
        if spent is None:
            return False
        yield from tx.append_audit(challenge_audit)
        return True

    async def add_scep_ra(self, ra: ScepRaRecord, audit: AuditEvent) -> None:
        """Record an RA certificate (already stored in ``certificates``)."""
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO scep_ra_certificates (ra_id, ca_id, cert_id, key_ref,"
                " key_backend, certificate_der, not_before, not_after, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                ra.ra_id, ra.ca_id, ra.cert_id, ra.key_ref, ra.key_backend,
                ra.certificate_der, d.t(ra.not_before), d.t(ra.not_after),
                d.t(ra.created_at or _now()))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def list_scep_ra(self, ca_id: str) -> list[ScepRaRecord]:
        """The RA certificates of one CA, the longest-lived first."""
        found = await self._read(rows(
            "SELECT * FROM scep_ra_certificates WHERE ca_id = ?"
            " ORDER BY not_after DESC, created_at DESC", ca_id))
        return [self._scep_ra(r) for r in found]

    async def add_scep_challenge(self, challenge: ScepChallenge, audit: AuditEvent) -> None:
        """StoreConflict if the id or hash exists, or the organization does not."""
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO scep_challenges (challenge_id, org_id, profile, secret_hash,"
                " expires_at, used_at, created_at) VALUES (?,?,?,?,?,?,?)",
                challenge.challenge_id, challenge.org_id, challenge.profile,
                challenge.secret_hash, d.t(challenge.expires_at), d.t_opt(challenge.used_at),
                d.t(challenge.created_at or _now()))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def find_scep_challenge(self, secret_hash: str) -> ScepChallenge | None:
        """The challenge with this password hash, whatever its state."""
        row = await self._lookup(one("SELECT * FROM scep_challenges WHERE secret_hash = ?",
                                     secret_hash))
        return None if row is None else self._scep_challenge(row)

    async def get_scep_challenge(self, challenge_id: str, org_id: str | None = None
                                 ) -> ScepChallenge | None:
        where, params = ["challenge_id = ?"], [challenge_id]
        if org_id is not None:
            where.append("org_id = ?")
            params.append(org_id)
        row = await self._lookup(one("SELECT * FROM scep_challenges" + _where(where),
                                     *params))
        return None if row is None else self._scep_challenge(row)

    async def list_scep_challenges(self, org_id: str | None = None,
                                   after: tuple[dt.datetime, str] | None = None,
                                   limit: int = 100) -> list[ScepChallenge]:
        """Challenges (of one organization, or all) by (created_at, challenge_id), after
        ``after``; whatever their state."""
        found = await self._page("scep_challenges", "challenge_id", org_id, after, limit)
        return [self._scep_challenge(r) for r in found]

    async def delete_scep_challenge(self, challenge_id: str, org_id: str | None,
                                    audit: AuditEvent) -> ScepChallenge | None:
        """Delete an unused challenge (in ``org_id`` when given); the deleted record, or
        None (nothing written: unknown, another organization's, or used)."""
        where, params = ["challenge_id = ?", "used_at IS NULL"], [challenge_id]
        if org_id is not None:
            where.append("org_id = ?")
            params.append(org_id)

        def write(tx: Tx) -> Body[ScepChallenge | None]:
            row = yield one("DELETE FROM scep_challenges" + _where(where) + " RETURNING *",
                            *params)
            if row is None:
                return None
            yield from tx.append_audit(audit)
            return self._scep_challenge(row)
        return await self._write(write)

    async def get_scep_transaction(self, transaction_id: str, org_id: str | None = None
                                   ) -> ScepTransaction | None:
        where, params = ["transaction_id = ?"], [transaction_id]
        if org_id is not None:
            where.append("org_id = ?")
            params.append(org_id)
        row = await self._lookup(one("SELECT * FROM scep_transactions" + _where(where),
                                     *params))
        return None if row is None else self._scep_transaction(row)

    async def add_certificate_for_scep(
        self, cert: CertificateRecord, audit: AuditEvent, transaction: ScepTransaction,
        consume: tuple[str, dt.datetime, AuditEvent] | None = None,
    ) -> ScepRecorded:
        """In one transaction: spend the challenge ``consume`` names (id, now, its audit
        event; "challenge_spent" and nothing written when it is used or expired), record
        ``transaction`` (new, or replacing a row of the same transactionID and key for
        another request; "transaction_taken" and nothing written otherwise) and add
        ``cert``. StoreConflict (nothing written) when (issuer, serial) exists."""
        def write(tx: Tx) -> Body[ScepRecorded]:
            if consume is not None and not (yield from self._spend_scep_challenge(tx,
                                                                                  consume)):
                return "challenge_spent"
            kept = yield self._upsert_scep_transaction(transaction)
            if kept is None:
                raise _Refused("transaction_taken")  # rolls the challenge's spend back
            yield from self._insert_certificate(cert)
            yield from tx.append_audit(audit)
            return "recorded"
        try:
            return await self._write(write)
        except _Refused as refused:
            return "transaction_taken" if refused.outcome == "transaction_taken" \
                else "challenge_spent"

    async def record_scep_transaction(
        self, transaction: ScepTransaction, audit: AuditEvent,
        consume: tuple[str, dt.datetime, AuditEvent] | None = None,
    ) -> ScepRecorded:
        """A transaction without a certificate (pending, failure), under the rules of
        ``add_certificate_for_scep`` (the challenge spent, the same transactionID and key
        only, another request than the stored one). A pending row is never replaced."""
        def write(tx: Tx) -> Body[ScepRecorded]:
            if consume is not None and not (yield from self._spend_scep_challenge(tx,
                                                                                  consume)):
                return "challenge_spent"
            kept = yield self._upsert_scep_transaction(transaction)
            if kept is None:
                raise _Refused("transaction_taken")
            yield from tx.append_audit(audit)
            return "recorded"
        try:
            return await self._write(write)
        except _Refused:
            return "transaction_taken"

    async def list_scep_transactions(self, org_id: str | None = None,
                                     status: str | None = "pending",
                                     after: tuple[dt.datetime, str] | None = None,
                                     limit: int | None = None) -> list[ScepTransaction]:
        """Transactions (of one organization, in one status; None: all), oldest first; a
        keyset page by (created_at, transaction_id) after ``after`` when ``limit`` is
        given."""
        where, args = _keyset("created_at", "transaction_id", after, ">", self._d)
        where.append("1 = 1")
        if org_id is not None:
            where, args = [*where, "org_id = ?"], [*args, org_id]
        if status is not None:
            where, args = [*where, "status = ?"], [*args, status]
        query = "SELECT * FROM scep_transactions" + _where(where) \
            + " ORDER BY created_at, transaction_id"
        if limit is not None:
            query, args = query + " LIMIT ?", [*args, limit]
        found = await self._read(rows(query, *args))
        return [self._scep_transaction(r) for r in found]

    async def add_certificate_for_scep_pending(
        self, cert: CertificateRecord, audit: AuditEvent, transaction_id: str,
        request_fingerprint: str, now: dt.datetime, pending_audit: AuditEvent,
    ) -> bool:
        """Move a pending transaction (of this request) to success with ``cert``'s id,
        decided at ``now``, and add ``cert``, in one transaction; False (nothing written)
        when it is not pending (decided meanwhile) or holds another request."""
        d = self._d

        def write(tx: Tx) -> Body[bool]:
            moved = yield one(
                "UPDATE scep_transactions SET status = 'success', cert_id = ?,"
                " decided_at = ?, updated_at = ? WHERE transaction_id = ?"
                " AND status = 'pending' AND request_fingerprint = ? RETURNING 1",
                cert.cert_id, d.t(now), d.t(now), transaction_id, request_fingerprint)
            if moved is None:
                return False
            yield from tx.append_audit(pending_audit)
            yield from self._insert_certificate(cert)
            yield from tx.append_audit(audit)
            return True
        return await self._write(write)

    async def reject_scep_pending(self, transaction_id: str, fail_info: str,
                                  now: dt.datetime, audit: AuditEvent
                                  ) -> ScepTransaction | None:
        """Move a pending transaction to rejected with ``fail_info``; the updated row, or
        None (nothing changes) when it is not pending."""
        d = self._d

        def write(tx: Tx) -> Body[ScepTransaction | None]:
            row = yield one(
                "UPDATE scep_transactions SET status = 'rejected', fail_info = ?,"
                " decided_at = ?, updated_at = ? WHERE transaction_id = ?"
                " AND status = 'pending' RETURNING *",
                fail_info, d.t(now), d.t(now), transaction_id)
            if row is None:
                return None
            yield from tx.append_audit(audit)
            return self._scep_transaction(row)
        return await self._write(write)

    async def get_scep_endpoint(self, org_id: str, profile: str
                                ) -> ScepEndpointPolicy | None:
        row = await self._lookup(one(
            "SELECT * FROM scep_endpoints WHERE org_id = ? AND profile = ?", org_id, profile))
        return None if row is None else self._scep_endpoint(row)

    async def list_scep_endpoints(self) -> list[ScepEndpointPolicy]:
        """Every endpoint an operator configured, by organization and profile."""
        found = await self._read(rows(
            "SELECT * FROM scep_endpoints ORDER BY org_id, profile"))
        return [self._scep_endpoint(r) for r in found]

    async def set_scep_approval(self, org_id: str, profile: str, require_approval: bool,
                                now: dt.datetime, audit: AuditEvent) -> None:
        """Set an endpoint's manual approval (creating its row; its secret unchanged).
        StoreConflict when the organization does not exist."""
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO scep_endpoints (org_id, profile, require_approval, secret_hash,"
                " updated_at) VALUES (?,?,?,NULL,?) ON CONFLICT (org_id, profile) DO UPDATE"
                " SET require_approval = excluded.require_approval,"
                " updated_at = excluded.updated_at",
                org_id, profile, require_approval, d.t(now))
            yield from tx.append_audit(audit)
        await self._write(write)

    async def set_scep_secret(self, org_id: str, profile: str, secret_hash: str | None,
                              now: dt.datetime, audit: AuditEvent) -> None:
        """Set (None: clear) an endpoint's static challenge hash (creating its row; its
        approval unchanged). StoreConflict when the organization does not exist."""
        d = self._d

        def write(tx: Tx) -> Body[None]:
            yield run(
                "INSERT INTO scep_endpoints (org_id, profile, require_approval, secret_hash,"
                " updated_at) VALUES (?,?,?,?,?) ON CONFLICT (org_id, profile) DO UPDATE"
                " SET secret_hash = excluded.secret_hash, updated_at = excluded.updated_at",
                org_id, profile, False, secret_hash, d.t(now))
            yield from tx.append_audit(audit)
        await self._write(write)
