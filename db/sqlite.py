"""SQLite store (the embedded default): WAL mode, one connection on one worker thread.

Every call runs a whole transaction in one hop to the worker thread, so the event loop
never blocks on disk and writes are serialised the way SQLite wants them anyway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ca_core.records import (
    AcmeAccount,
    AcmeAuthorization,
    AcmeOrder,
    ApiToken,
    AuditEntry,
    AuditEvent,
    AuditHead,
    CARecord,
    CertificateRecord,
    CertificateStatusRecord,
    CrlHead,
    CrlRecord,
    CrossCertificateRecord,
    EabKey,
    OcspResponderRecord,
    Organization,
    Revocation,
    RevocationEvent,
    TemplateRecord,
    TimeStampRecord,
)
from ca_core.storage import StoreConflict, StoreInvalid, StoreUnavailable
from db.acme_rows import (
    challenges_from_json,
    challenges_to_json,
    identifiers_from_json,
    identifiers_to_json,
)
from db.audit_chain import GENESIS_HASH, chain_hash
from db.migrations import migrations
from db.store import Store

T = TypeVar("T")

def _t(value: dt.datetime) -> str:
    # isoformat is several times faster than strftime and gives the same text.
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")[:26] + "Z"


def _t_opt(value: dt.datetime | None) -> str | None:
    return None if value is None else _t(value)


def _p(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _p_opt(text: str | None) -> dt.datetime | None:
    return None if text is None else _p(text)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _org(row: sqlite3.Row) -> Organization:
    return Organization(
        org_id=row["org_id"], slug=row["slug"], name=row["name"], status=row["status"],
        config=json.loads(row["config"]), created_at=_p(row["created_at"]),
    )


def _ca(row: sqlite3.Row) -> CARecord:
    return CARecord(
        ca_id=row["ca_id"], name=row["name"], ca_type=row["ca_type"], org_id=row["org_id"],
        parent_ca_id=row["parent_ca_id"], subject_dn=row["subject_dn"],
        serial_hex=row["serial_hex"], certificate_der=bytes(row["certificate_der"]),
        key_ref=row["key_ref"], key_backend=row["key_backend"],
        key_algorithm=row["key_algorithm"], key_size=row["key_size"],
        not_before=_p(row["not_before"]), not_after=_p(row["not_after"]),
        status=row["status"], created_at=_p(row["created_at"]),
    )


def _cert(row: sqlite3.Row) -> CertificateRecord:
    return CertificateRecord(
        cert_id=row["cert_id"], issuer_ca_id=row["issuer_ca_id"], org_id=row["org_id"],
        serial_hex=row["serial_hex"], subject_dn=row["subject_dn"],
        common_name=row["common_name"], profile=row["profile"],
        certificate_der=bytes(row["certificate_der"]), key_algorithm=row["key_algorithm"],
        key_size=row["key_size"], san=json.loads(row["san"]),
        not_before=_p(row["not_before"]), not_after=_p(row["not_after"]),
        requester=row["requester"], status=row["status"],
        revoked_at=_p_opt(row["revoked_at"]), revocation_reason=row["revocation_reason"],
        invalidity_date=_p_opt(row["invalidity_date"]), created_at=_p(row["created_at"]),
        crl_partition=row["crl_partition"],
    )


def _revocation(row: sqlite3.Row) -> Revocation:
    return Revocation(
        ca_id=row["ca_id"], serial_hex=row["serial_hex"], cert_id=row["cert_id"],
        revoked_at=_p(row["revoked_at"]), reason=row["reason"],
        invalidity_date=_p_opt(row["invalidity_date"]), crl_partition=row["crl_partition"],
    )


def _token(row: sqlite3.Row) -> ApiToken:
    return ApiToken(
        token_id=row["token_id"], org_id=row["org_id"], role=row["role"],
        secret_hash=row["secret_hash"], name=row["name"], created_at=_p(row["created_at"]),
        expires_at=_p_opt(row["expires_at"]), revoked=bool(row["revoked"]),
    )


def _audit(row: sqlite3.Row) -> AuditEntry:
    event = AuditEvent(
        event_type=row["event_type"], category=row["category"], action=row["action"],
        actor_type=row["actor_type"], actor_id=row["actor_id"], org_id=row["org_id"],
        resource_type=row["resource_type"], resource_id=row["resource_id"],
        status=row["status"], data=json.loads(row["event_data"]),
    )
    return AuditEntry(
        seq=row["seq"], audit_id=row["audit_id"], timestamp=_p(row["timestamp"]),
        event=event, previous_hash=row["previous_hash"], audit_hash=row["audit_hash"],
    )


class _Tx:
    """A write inside a batch: the connection plus the audit chain head of the batch.

    The head is read at the batch's first audit row (under BEGIN IMMEDIATE nobody else can
    move it) and written back once at the end, instead of a read and a write per audit
    row; a batch without audit rows (time-stamps, leases, ACME state) touches it not at all.
    """

    __slots__ = ("conn", "head_hash", "head_loaded", "head_seq")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.head_seq = 0
        self.head_hash = GENESIS_HASH
        self.head_loaded = False

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def load_head(self) -> None:
        if not self.head_loaded:
            row = self.conn.execute(
                "SELECT seq, audit_hash FROM audit_head WHERE id = 1").fetchone()
            if row:
                self.head_seq, self.head_hash = row[0], row[1]
            self.head_loaded = True

    def save_head(self) -> None:
        if self.head_loaded:
            self.conn.execute(
                "INSERT INTO audit_head (id, seq, audit_hash) VALUES (1, ?, ?) ON CONFLICT (id)"
                " DO UPDATE SET seq = excluded.seq, audit_hash = excluded.audit_hash",
                (self.head_seq, self.head_hash),
            )


def _append_audit(tx: _Tx, event: AuditEvent) -> AuditEntry:
    tx.load_head()
    previous_hash = tx.head_hash
    seq = tx.head_seq + 1
    audit_id = str(uuid.uuid4())
    # Round to what the column keeps, so the hash recomputes from the stored row.
    timestamp = _now()
    digest = chain_hash(seq, audit_id, timestamp, event, previous_hash)
    tx.execute(
        "INSERT INTO audit_log (seq, audit_id, timestamp, org_id, event_type, category, action,"
        " actor_type, actor_id, resource_type, resource_id, status, event_data, previous_hash,"
        " audit_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            seq, audit_id, _t(timestamp), event.org_id, event.event_type, event.category,
            event.action, event.actor_type, event.actor_id, event.resource_type,
            event.resource_id, event.status, json.dumps(event.data, sort_keys=True),
            previous_hash, digest,
        ),
    )
    tx.head_seq, tx.head_hash = seq, digest
    return AuditEntry(seq, audit_id, timestamp, event, previous_hash, digest)


_MAX_BATCH = 256


def _map_error(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreConflict(str(exc))
    if isinstance(exc, sqlite3.Error | AttributeError):
        return StoreUnavailable(str(exc))
    if isinstance(exc, UnicodeError | OverflowError):  # a lone surrogate, an int >= 2**63
        return StoreInvalid(str(exc))
    return exc


def _run_in_transaction(
    conn: sqlite3.Connection, fns: list[Callable[[_Tx], Any]]
) -> list[tuple[bool, Any]]:
    """All fns in one transaction; any failure rolls all of them back and re-raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        tx = _Tx(conn)
        outcomes = [(True, fn(tx)) for fn in fns]
        tx.save_head()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _run_batch(
    conn: sqlite3.Connection | None, fns: list[Callable[[_Tx], Any]]
) -> list[tuple[bool, Any]]:
    """Worker thread: the batch in one transaction.

    Failures are rare (a duplicate slug, a serial collision), so the batch runs without
    per-write savepoints; if one write fails, the batch is rolled back and each write is
    run again in a transaction of its own, so only the failing one fails.
    """
    if conn is None:
        raise StoreUnavailable("store is not open")
    try:
        return _run_in_transaction(conn, fns)
    except sqlite3.OperationalError:
        raise  # the database itself is unusable: fail the whole batch
    except Exception as exc:
        if len(fns) == 1:
            return [(False, _map_error(exc))]
    outcomes: list[tuple[bool, Any]] = []
    for fn in fns:
        try:
            outcomes.extend(_run_in_transaction(conn, [fn]))
        except sqlite3.OperationalError:
            raise
        except Exception as exc:
            outcomes.append((False, _map_error(exc)))
    return outcomes


class SqliteStore(Store):
    backend = "sqlite"

    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        # Reads on a second connection and thread (WAL: readers never wait for the writer),
        # so a slow read (a count over a million rows) does not hold up the write batches,
        # nor a write batch the reads. A read sees every write whose call has returned.
        self._read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-r")
        self._read_conn: sqlite3.Connection | None = None
        self._lookup_conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[[_Tx], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """SQLAlchemy's convention: ``sqlite:///relative.db``, ``sqlite:////absolute.db``."""
        if not url.startswith("sqlite:///"):
            raise ValueError(f"not a sqlite URL: {url!r}")
        return cls(url.removeprefix("sqlite:///"))

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, conn)

    async def _write(self, fn: Callable[[_Tx], T]) -> T:
        """Run ``fn`` in a write transaction, committed together with concurrent writes.

        Group commit: writes that arrive while a batch is on the worker thread wait and go
        in the next batch, one COMMIT (and one thread hop) for all of them. Each write runs
        in its own SAVEPOINT, so a conflict in one rolls back only that one.
        """
        if self._conn is None:
            raise StoreUnavailable("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fn, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        result: T = await future
        return result

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[:_MAX_BATCH]
            del self._pending[:_MAX_BATCH]
            try:
                outcomes = await loop.run_in_executor(
                    self._executor, _run_batch, self._conn, [fn for fn, _ in batch])
            except BaseException as exc:  # the whole batch failed (COMMIT, closed store)
                error = _map_error(exc) if isinstance(exc, Exception) else exc
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self._read_conn
            if conn is None:  # ":memory:" has one connection only
                return await self._run(fn)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._read_executor, fn, conn)
        except (sqlite3.Error, UnicodeError, OverflowError) as exc:
            raise _map_error(exc) from exc

    async def _lookup(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A bounded read by key (one row, or a few) on the event loop's own thread.

        An indexed lookup costs about 8 µs here; handing it to the reader thread and back
        costs about 130 µs of CPU, most of a small request's store time. WAL readers do not
        wait for the writer, so this does not stall the loop; should the database be busy
        anyway (a checkpoint, another process's exclusive lock), the read goes to the
        reader thread, which may wait. Scans and large rows always use ``_read``.
        """
        conn = self._lookup_conn
        if conn is None:
            return await self._read(fn)
        try:
            return fn(conn)
        except sqlite3.OperationalError:
            return await self._read(fn)
        except (sqlite3.Error, UnicodeError, OverflowError) as exc:
            raise _map_error(exc) from exc

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            # Under the write lock, so that processes opening a new file at once apply each
            # migration exactly once.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations"
                    " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
                for version, name, sql in migrations("sqlite"):
                    if version in done:
                        continue
                    for statement in sql.split(";\n"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                        (version, name, _t(_now())),
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return conn

        def connect_reader(busy_timeout_ms: int = 30000) -> sqlite3.Connection:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                                   timeout=busy_timeout_ms / 1000)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
            conn.execute("PRAGMA query_only=ON")
            return conn

        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, connect)
            if self._path != ":memory:":
                self._read_conn = await loop.run_in_executor(self._read_executor,
                                                             connect_reader)
                self._lookup_conn = connect_reader(0)  # busy: fall back, never wait here
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self._path}: {exc}") from exc

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            await self._flusher
        loop = asyncio.get_running_loop()
        if self._lookup_conn is not None:
            lookup, self._lookup_conn = self._lookup_conn, None
            lookup.close()
        if self._read_conn is not None:
            reader, self._read_conn = self._read_conn, None
            await loop.run_in_executor(self._read_executor, reader.close)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await loop.run_in_executor(self._executor, conn.close)
        self._read_executor.shutdown(wait=True)
        self._executor.shutdown(wait=True)

    async def ping(self) -> dict[str, object]:
        started = time.perf_counter()
        await self._read(lambda c: c.execute("SELECT 1").fetchone())
        return {"backend": "sqlite", "path": self._path,
                "query_time_ms": round((time.perf_counter() - started) * 1000, 3)}

    # organizations
    async def add_organization(self, org: Organization, audit: AuditEvent) -> None:
        def tx(c: _Tx) -> None:
            c.execute(
                "INSERT INTO organizations (org_id, slug, name, status, config, created_at)"
                " VALUES (?,?,?,?,?,?)",
                (org.org_id, org.slug, org.name, org.status, json.dumps(org.config),
                 _t(org.created_at or _now())),
            )
            _append_audit(c, audit)
        await self._write(tx)

    async def get_organization(self, slug: str) -> Organization | None:
        row = await self._lookup(
            lambda c: c.execute("SELECT * FROM organizations WHERE slug = ?", (slug,)).fetchone()
        )
        return None if row is None else _org(row)

    async def get_organization_by_id(self, org_id: str) -> Organization | None:
        row = await self._lookup(
            lambda c: c.execute(
                "SELECT * FROM organizations WHERE org_id = ?", (org_id,)
            ).fetchone()
        )
        return None if row is None else _org(row)

    async def list_organizations(self) -> list[Organization]:
        rows = await self._read(
            lambda c: c.execute("SELECT * FROM organizations ORDER BY created_at").fetchall()
        )
        return [_org(r) for r in rows]

    # certificate authorities
    async def add_ca(self, ca: CARecord, audit: AuditEvent) -> None:
        def tx(c: _Tx) -> None:
            c.execute(
                "INSERT INTO certificate_authorities (ca_id, name, ca_type, org_id, parent_ca_id,"
                " subject_dn, serial_hex, certificate_der, key_ref, key_backend, key_algorithm,"
                " key_size, not_before, not_after, status, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (ca.ca_id, ca.name, ca.ca_type, ca.org_id, ca.parent_ca_id, ca.subject_dn,
                 ca.serial_hex, ca.certificate_der, ca.key_ref, ca.key_backend,
                 ca.key_algorithm, ca.key_size, _t(ca.not_before), _t(ca.not_after),
                 ca.status, _t(ca.created_at or _now())),
            )
            _append_audit(c, audit)
        await self._write(tx)

    async def get_ca(self, name: str) -> CARecord | None:
        row = await self._lookup(
            lambda c: c.execute(
                "SELECT * FROM certificate_authorities WHERE name = ?", (name,)
            ).fetchone()
        )
        return None if row is None else _ca(row)

    async def get_ca_by_id(self, ca_id: str) -> CARecord | None:
        row = await self._lookup(
            lambda c: c.execute(
                "SELECT * FROM certificate_authorities WHERE ca_id = ?", (ca_id,)
            ).fetchone()
        )
        return None if row is None else _ca(row)

    async def list_cas(self) -> list[CARecord]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT * FROM certificate_authorities ORDER BY created_at, name"
            ).fetchall()
        )
        return [_ca(r) for r in rows]

    # certificates
    async def add_certificate(self, cert: CertificateRecord, audit: AuditEvent) -> None:
        def tx(c: _Tx) -> None:
            c.execute(
                "INSERT INTO certificates (cert_id, issuer_ca_id, org_id, serial_hex, subject_dn,"
                " common_name, profile, certificate_der, key_algorithm, key_size, san,"
                " not_before, not_after, requester, status, created_at, crl_partition)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (cert.cert_id, cert.issuer_ca_id, cert.org_id, cert.serial_hex,
                 cert.subject_dn, cert.common_name, cert.profile, cert.certificate_der,
                 cert.key_algorithm, cert.key_size, json.dumps(cert.san),
                 _t(cert.not_before), _t(cert.not_after), cert.requester, cert.status,
                 _t(cert.created_at or _now()), cert.crl_partition),
            )
            _append_audit(c, audit)
        await self._write(tx)

    async def get_certificate(self, issuer_ca_id: str, serial_hex: str) -> CertificateRecord | None:
        row = await self._lookup(
            lambda c: c.execute(
                "SELECT * FROM certificates WHERE issuer_ca_id = ? AND serial_hex = ?",
                (issuer_ca_id, serial_hex),
            ).fetchone()
        )
        return None if row is None else _cert(row)

    async def get_certificate_by_id(self, cert_id: str) -> CertificateRecord | None:
        row = await self._lookup(lambda c: c.execute(
            "SELECT * FROM certificates WHERE cert_id = ?", (cert_id,)).fetchone())
        return None if row is None else _cert(row)

    async def find_certificates_by_serial(self, serial_hex: str) -> list[CertificateRecord]:
        rows = await self._lookup(
            lambda c: c.execute(
                "SELECT * FROM certificates WHERE serial_hex = ?", (serial_hex,)
            ).fetchall()
        )
        return [_cert(r) for r in rows]

    async def revoke_certificate(
        self, revocation: Revocation, audit: AuditEvent
    ) -> CertificateRecord | None:
        def tx(c: _Tx) -> CertificateRecord | None:
            updated = c.execute(
                "UPDATE certificates SET status = 'revoked', revoked_at = ?,"
                " revocation_reason = ?, invalidity_date = ?"
                " WHERE issuer_ca_id = ? AND serial_hex = ? AND status = 'active'",
                (_t(revocation.revoked_at), revocation.reason,
                 _t_opt(revocation.invalidity_date), revocation.ca_id, revocation.serial_hex),
            )
            if updated.rowcount != 1:
                return None
            c.execute(
                "INSERT INTO crl_entries (ca_id, serial_hex, cert_id, revoked_at, reason,"
                " invalidity_date, crl_partition)"
                " SELECT ?,?,?,?,?,?, crl_partition FROM certificates"
                " WHERE issuer_ca_id = ? AND serial_hex = ?",
                (revocation.ca_id, revocation.serial_hex, revocation.cert_id,
                 _t(revocation.revoked_at), revocation.reason,
                 _t_opt(revocation.invalidity_date), revocation.ca_id, revocation.serial_hex),
            )
            _append_audit(c, audit)
            row = c.execute(
                "SELECT * FROM certificates WHERE issuer_ca_id = ? AND serial_hex = ?",
                (revocation.ca_id, revocation.serial_hex),
            ).fetchone()
            return _cert(row)
        return await self._write(tx)

    async def list_revocations(
        self, ca_id: str, crl_partition: int | None = None
    ) -> list[Revocation]:
        where = "ca_id = ?"
        params: list[object] = [ca_id]
        if crl_partition is not None:
            where += " AND crl_partition = ?"
            params.append(crl_partition)
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT * FROM crl_entries WHERE {where} ORDER BY revoked_at, serial_hex",
                params,
            ).fetchall()
        )
        return [_revocation(r) for r in rows]

    async def count_active_certificates(self, now: dt.datetime) -> list[tuple[str, str, int]]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT org_id, profile, COUNT(*) FROM certificates"
                " WHERE status = 'active' AND not_after > ? GROUP BY org_id, profile",
                (_t(now),),
            ).fetchall()
        )
        return [(r[0], r[1], r[2]) for r in rows]

    # templates
    async def upsert_template(self, template: TemplateRecord) -> None:
        def tx(c: _Tx) -> None:
            c.execute(
                "INSERT INTO certificate_templates (slug, org_id, name, purpose, definition,"
                " updated_at) VALUES (?,?,?,?,?,?) ON CONFLICT (slug) DO UPDATE SET"
                " org_id = excluded.org_id, name = excluded.name, purpose = excluded.purpose,"
                " definition = excluded.definition, updated_at = excluded.updated_at",
                (template.slug, template.org_id, template.name, template.purpose,
                 json.dumps(template.definition, sort_keys=True), _t(_now())),
            )
        await self._write(tx)

    async def list_templates(self) -> list[TemplateRecord]:
        rows = await self._read(
            lambda c: c.execute("SELECT * FROM certificate_templates ORDER BY slug").fetchall()
        )
        return [
            TemplateRecord(slug=r["slug"], name=r["name"], purpose=r["purpose"],
                           definition=json.loads(r["definition"]), org_id=r["org_id"])
            for r in rows
        ]

    # tokens
    async def add_token(self, token: ApiToken, audit: AuditEvent) -> None:
        def tx(c: _Tx) -> None:
            c.execute(
                "INSERT INTO api_tokens (token_id, org_id, role, secret_hash, name, created_at,"
                " expires_at, revoked) VALUES (?,?,?,?,?,?,?,?)",
                (token.token_id, token.org_id, token.role, token.secret_hash, token.name,
                 _t(token.created_at), _t_opt(token.expires_at), int(token.revoked)),
            )
            _append_audit(c, audit)
        await self._write(tx)

    async def get_token(self, token_id: str) -> ApiToken | None:
        row = await self._lookup(
            lambda c: c.execute(
                "SELECT * FROM api_tokens WHERE token_id = ?", (token_id,)
            ).fetchone()
        )
        return None if row is None else _token(row)

    # audit
    async def append_audit(self, audit: AuditEvent) -> AuditEntry:
        return await self._write(lambda c: _append_audit(c, audit))

    async def audit_entries(self, after_seq: int = 0, limit: int = 10_000) -> list[AuditEntry]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            ).fetchall()
        )
        return [_audit(r) for r in rows]

    async def audit_head(self) -> AuditHead | None:
        row = await self._read(
            lambda c: c.execute("SELECT seq, audit_hash FROM audit_head WHERE id = 1").fetchone()
        )
        return None if row is None else AuditHead(row[0], row[1])

    # OCSP responders, revocation order, CRLs, job leases
    async def add_cross_certificate(self, cross: CrossCertificateRecord,
                                    audit: AuditEvent) -> None:
        def tx(c: _Tx) -> None:
            c.execute(  # a duplicate fingerprint is an IntegrityError: StoreConflict
                "INSERT INTO ca_cross_certificates (cross_id, ca_id, fingerprint, chain_pem,"
                " top_issuer, not_after, created_at) VALUES (?,?,?,?,?,?,?)",
                (cross.cross_id, cross.ca_id, cross.fingerprint, cross.chain_pem,
                 cross.top_issuer, _t(cross.not_after), _t(cross.created_at or _now())))
            _append_audit(c, audit)
        await self._write(tx)

    async def list_cross_certificates(
        self, ca_ids: Sequence[str] | None = None
    ) -> list[CrossCertificateRecord]:
        if ca_ids is not None and not ca_ids:
            return []
        where = "" if ca_ids is None else f"WHERE ca_id IN ({','.join('?' * len(ca_ids))})"
        params = () if ca_ids is None else tuple(ca_ids)
        def read(c: sqlite3.Connection) -> list[sqlite3.Row]:
            return c.execute(
                f"SELECT * FROM ca_cross_certificates {where} ORDER BY created_at, cross_id",
                params).fetchall()
        # Some CAs' cross-certificates are a lookup; all of them a scan.
        rows = await (self._read(read) if ca_ids is None else self._lookup(read))
        return [CrossCertificateRecord(
            cross_id=r["cross_id"], ca_id=r["ca_id"], fingerprint=r["fingerprint"],
            chain_pem=r["chain_pem"], top_issuer=r["top_issuer"],
            not_after=_p(r["not_after"]), created_at=_p(r["created_at"])) for r in rows]

    async def add_ocsp_responder(self, responder: OcspResponderRecord, audit: AuditEvent) -> None:
        def tx(c: _Tx) -> None:
            c.execute(
                "INSERT INTO ocsp_responders (responder_id, ca_id, cert_id, key_ref, key_backend,"
                " certificate_der, not_before, not_after, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (responder.responder_id, responder.ca_id, responder.cert_id, responder.key_ref,
                 responder.key_backend, responder.certificate_der, _t(responder.not_before),
                 _t(responder.not_after), _t(responder.created_at or _now())),
            )
            _append_audit(c, audit)
        await self._write(tx)

    async def list_ocsp_responders(self, ca_id: str | None = None) -> list[OcspResponderRecord]:
        params: tuple[str, ...] = () if ca_id is None else (ca_id,)
        where = "" if ca_id is None else "WHERE ca_id = ?"
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT * FROM ocsp_responders {where} ORDER BY not_after DESC, created_at DESC",
                params,
            ).fetchall()
        )
        return [_ocsp_responder(r) for r in rows]

    async def revocation_generation(self, ca_id: str | None = None) -> int:
        params: tuple[str, ...] = () if ca_id is None else (ca_id,)
        sql = ("SELECT generation FROM revocation_state WHERE id = 1" if ca_id is None
               else "SELECT MAX(generation) FROM crl_entries WHERE ca_id = ?")
        row = await self._read(lambda c: c.execute(sql, params).fetchone())
        return int(row[0]) if row is not None and row[0] is not None else 0

    async def revocations_since(self, generation: int, limit: int = 1000) -> list[RevocationEvent]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT * FROM crl_entries WHERE generation > ? ORDER BY generation LIMIT ?",
                (generation, limit),
            ).fetchall()
        )
        return [RevocationEvent(r["generation"], _revocation(r)) for r in rows]

    async def certificate_statuses(
        self, issuer_ca_id: str, serial_hexes: Sequence[str]
    ) -> list[CertificateStatusRecord]:
        wanted = list(dict.fromkeys(serial_hexes))

        def read(c: sqlite3.Connection) -> list[sqlite3.Row]:
            rows: list[sqlite3.Row] = []
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                rows += c.execute(
                    "SELECT issuer_ca_id, serial_hex, status, not_after, revoked_at,"
                    " revocation_reason FROM certificates WHERE issuer_ca_id = ?"
                    f" AND serial_hex IN ({','.join('?' * len(chunk))})",
                    (issuer_ca_id, *chunk),
                ).fetchall()
            return rows
        # An OCSP request's few serials are a lookup; the refresher's thousands are not.
        rows = await (self._lookup(read) if len(wanted) <= 16 else self._read(read))
        return [_status(r) for r in rows]

    async def list_certificate_statuses(
        self, issuer_ca_id: str, valid_at: dt.datetime, after_serial_hex: str = "",
        limit: int = 1000,
    ) -> list[CertificateStatusRecord]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT issuer_ca_id, serial_hex, status, not_after, revoked_at,"
                " revocation_reason FROM certificates WHERE issuer_ca_id = ? AND serial_hex > ?"
                " AND not_after > ? ORDER BY serial_hex LIMIT ?",
                (issuer_ca_id, after_serial_hex, _t(valid_at), limit),
            ).fetchall()
        )
        return [_status(r) for r in rows]

    async def save_crl(self, crl: CrlRecord, audit: AuditEvent) -> bool:
        head = crl.head

        def tx(c: _Tx) -> bool:
            saved = c.execute(
                "INSERT INTO crls (ca_id, partition, crl_number, this_update, next_update,"
                " source_generation, entries, crl_der) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT (ca_id, partition) DO UPDATE SET crl_number = excluded.crl_number,"
                " this_update = excluded.this_update, next_update = excluded.next_update,"
                " source_generation = excluded.source_generation, entries = excluded.entries,"
                " crl_der = excluded.crl_der WHERE excluded.crl_number > crls.crl_number",
                (head.ca_id, head.partition, head.crl_number, _t(head.this_update),
                 _t(head.next_update), head.source_generation, head.entries, crl.crl_der),
            )
            if saved.rowcount != 1:
                return False
            _append_audit(c, audit)
            return True
        return await self._write(tx)

    async def get_crl(self, ca_id: str, partition: int = 0) -> CrlRecord | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT * FROM crls WHERE ca_id = ? AND partition = ?", (ca_id, partition)
            ).fetchone()
        )
        return None if row is None else CrlRecord(_crl_head(row), bytes(row["crl_der"]))

    async def get_crl_head(self, ca_id: str, partition: int = 0) -> CrlHead | None:
        row = await self._lookup(
            lambda c: c.execute(
                "SELECT ca_id, partition, crl_number, this_update, next_update,"
                " source_generation, entries FROM crls WHERE ca_id = ? AND partition = ?",
                (ca_id, partition),
            ).fetchone()
        )
        return None if row is None else _crl_head(row)

    async def list_crl_heads(self) -> list[CrlHead]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT ca_id, partition, crl_number, this_update, next_update,"
                " source_generation, entries FROM crls ORDER BY ca_id, partition"
            ).fetchall()
        )
        return [_crl_head(r) for r in rows]

    async def try_lock(self, name: str, holder: str, ttl_seconds: float) -> bool:
        def tx(c: _Tx) -> bool:
            now = time.time()
            taken = c.execute(
                "INSERT INTO job_locks (name, holder, expires_at) VALUES (?,?,?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at"
                " WHERE job_locks.expires_at < ? OR job_locks.holder = excluded.holder",
                (name, holder, now + ttl_seconds, now),
            )
            return taken.rowcount == 1
        return await self._write(tx)

    async def release_lock(self, name: str, holder: str) -> None:
        def tx(c: _Tx) -> None:
            c.execute("DELETE FROM job_locks WHERE name = ? AND holder = ?", (name, holder))
        await self._write(tx)

    # RFC 3161 time-stamp tokens
    async def add_timestamp(self, record: TimeStampRecord) -> None:
        # One INSERT in the group commit: concurrent stamps share a transaction and a
        # thread hop, so recording costs no round trip of its own per stamp.
        def tx(c: _Tx) -> None:
            c.execute(
                "INSERT INTO timestamp_tokens (serial_hex, tsa_ca_id, policy_oid,"
                " hash_algorithm, message_imprint, gen_time, has_nonce, cert_req)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (record.serial_hex, record.tsa_ca_id, record.policy_oid,
                 record.hash_algorithm, record.message_imprint, _t(record.gen_time),
                 int(record.has_nonce), int(record.cert_req)),
            )
        await self._write(tx)

    async def get_timestamp(self, serial_hex: str) -> TimeStampRecord | None:
        row = await self._lookup(
            lambda c: c.execute(
                "SELECT * FROM timestamp_tokens WHERE serial_hex = ?", (serial_hex,)
            ).fetchone()
        )
        if row is None:
            return None
        return TimeStampRecord(
            serial_hex=row["serial_hex"], tsa_ca_id=row["tsa_ca_id"],
            policy_oid=row["policy_oid"], hash_algorithm=row["hash_algorithm"],
            message_imprint=bytes(row["message_imprint"]), gen_time=_p(row["gen_time"]),
            has_nonce=bool(row["has_nonce"]), cert_req=bool(row["cert_req"]),
        )

    # organizations' settings
    async def update_organization_config(
        self, org_id: str, config: dict[str, Any], audit: AuditEvent
    ) -> None:
        def tx(c: _Tx) -> None:
            updated = c.execute("UPDATE organizations SET config = ? WHERE org_id = ?",
                                (json.dumps(config), org_id))
            if updated.rowcount != 1:
                raise StoreConflict(f"no organization {org_id}")
            _append_audit(c, audit)
        await self._write(tx)

    # ACME
    async def add_acme_account(self, account: AcmeAccount, audit: AuditEvent) -> None:
        def tx(c: _Tx) -> None:
            if account.eab_kid is not None:
                bound = c.execute(
                    "UPDATE acme_eab_keys SET account_id = ?"
                    " WHERE kid = ? AND account_id IS NULL AND org_id = ?",
                    (account.account_id, account.eab_kid, account.org_id))
                if bound.rowcount != 1:
                    raise StoreConflict("the EAB key is unknown or used already")
            c.execute(
                "INSERT INTO acme_accounts (account_id, org_id, key_thumbprint, jwk, status,"
                " contact, tos_agreed, eab_kid, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (account.account_id, account.org_id, account.key_thumbprint,
                 json.dumps(account.jwk), account.status, json.dumps(list(account.contact)),
                 int(account.tos_agreed), account.eab_kid, _t(account.created_at or _now())))
            _append_audit(c, audit)
        await self._write(tx)

    async def get_acme_account(self, account_id: str) -> AcmeAccount | None:
        row = await self._lookup(lambda c: c.execute(
            "SELECT * FROM acme_accounts WHERE account_id = ?", (account_id,)).fetchone())
        return None if row is None else _acme_account(row)

    async def find_acme_account(self, key_thumbprint: str) -> AcmeAccount | None:
        row = await self._lookup(lambda c: c.execute(
            "SELECT * FROM acme_accounts WHERE key_thumbprint = ?", (key_thumbprint,)
        ).fetchone())
        return None if row is None else _acme_account(row)

    async def update_acme_account(self, account: AcmeAccount, audit: AuditEvent) -> None:
        def tx(c: _Tx) -> None:
            updated = c.execute(
                "UPDATE acme_accounts SET key_thumbprint = ?, jwk = ?, status = ?, contact = ?,"
                " tos_agreed = ? WHERE account_id = ?",
                (account.key_thumbprint, json.dumps(account.jwk), account.status,
                 json.dumps(list(account.contact)), int(account.tos_agreed),
                 account.account_id))
            if updated.rowcount != 1:
                raise StoreConflict(f"no ACME account {account.account_id}")
            _append_audit(c, audit)
        await self._write(tx)

    async def add_eab_key(self, key: EabKey, audit: AuditEvent) -> None:
        def tx(c: _Tx) -> None:
            c.execute(
                "INSERT INTO acme_eab_keys (kid, org_id, hmac_key, account_id, created_at)"
                " VALUES (?,?,?,?,?)",
                (key.kid, key.org_id, key.hmac_key, key.account_id, _t(key.created_at)))
            _append_audit(c, audit)
        await self._write(tx)

    async def get_eab_key(self, kid: str) -> EabKey | None:
        row = await self._lookup(lambda c: c.execute(
            "SELECT * FROM acme_eab_keys WHERE kid = ?", (kid,)).fetchone())
        if row is None:
            return None
        return EabKey(kid=row["kid"], org_id=row["org_id"], hmac_key=bytes(row["hmac_key"]),
                      created_at=_p(row["created_at"]), account_id=row["account_id"])

    async def add_acme_order(
        self, order: AcmeOrder, new_authorizations: Sequence[AcmeAuthorization]
    ) -> None:
        def tx(c: _Tx) -> None:
            for authz in new_authorizations:
                c.execute(
                    "INSERT INTO acme_authorizations (authz_id, account_id, identifier_type,"
                    " identifier_value, wildcard, status, expires, challenges, created_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?)",
                    (authz.authz_id, authz.account_id, authz.identifier_type,
                     authz.identifier_value, int(authz.wildcard), authz.status,
                     _t(authz.expires), json.dumps(challenges_to_json(authz.challenges)),
                     _t(authz.created_at or _now())))
            c.execute(
                "INSERT INTO acme_orders (order_id, account_id, org_id, status, expires,"
                " identifiers, authz_ids, profile, not_before, not_after, replaces, error,"
                " cert_id, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (order.order_id, order.account_id, order.org_id, order.status,
                 _t(order.expires), json.dumps(identifiers_to_json(order.identifiers)),
                 json.dumps(list(order.authz_ids)), order.profile, _t_opt(order.not_before),
                 _t_opt(order.not_after), order.replaces,
                 None if order.error is None else json.dumps(order.error), order.cert_id,
                 _t(order.created_at or _now())))
        await self._write(tx)

    async def get_acme_order(self, order_id: str) -> AcmeOrder | None:
        row = await self._lookup(lambda c: c.execute(
            "SELECT * FROM acme_orders WHERE order_id = ?", (order_id,)).fetchone())
        return None if row is None else _acme_order(row)

    async def update_acme_order(self, order: AcmeOrder, expect_status: str) -> bool:
        def tx(c: _Tx) -> bool:
            updated = c.execute(
                "UPDATE acme_orders SET status = ?, error = ?, cert_id = ?"
                " WHERE order_id = ? AND status = ?",
                (order.status, None if order.error is None else json.dumps(order.error),
                 order.cert_id, order.order_id, expect_status))
            return bool(updated.rowcount == 1)
        return await self._write(tx)

    async def find_acme_order_by_cert(self, cert_id: str) -> AcmeOrder | None:
        row = await self._lookup(lambda c: c.execute(
            "SELECT * FROM acme_orders WHERE cert_id = ?", (cert_id,)).fetchone())
        return None if row is None else _acme_order(row)

    async def get_acme_authorizations(
        self, authz_ids: Sequence[str]
    ) -> list[AcmeAuthorization]:
        if not authz_ids:
            return []
        marks = ",".join("?" * len(authz_ids))
        rows = await self._lookup(lambda c: c.execute(
            f"SELECT * FROM acme_authorizations WHERE authz_id IN ({marks})",
            tuple(authz_ids)).fetchall())
        found = {row["authz_id"]: _acme_authz(row) for row in rows}
        return [found[i] for i in authz_ids if i in found]

    async def update_acme_authorization(
        self, authz: AcmeAuthorization, expect_status: str
    ) -> bool:
        def tx(c: _Tx) -> bool:
            updated = c.execute(
                "UPDATE acme_authorizations SET status = ?, expires = ?, challenges = ?"
                " WHERE authz_id = ? AND status = ?",
                (authz.status, _t(authz.expires),
                 json.dumps(challenges_to_json(authz.challenges)), authz.authz_id,
                 expect_status))
            return bool(updated.rowcount == 1)
        return await self._write(tx)

    async def find_valid_acme_authorization(
        self, account_id: str, identifier_type: str, identifier_value: str, wildcard: bool,
        valid_at: dt.datetime,
    ) -> AcmeAuthorization | None:
        row = await self._lookup(lambda c: c.execute(
            "SELECT * FROM acme_authorizations WHERE account_id = ? AND identifier_type = ?"
            " AND identifier_value = ? AND wildcard = ? AND status = 'valid' AND expires > ?"
            " ORDER BY expires DESC LIMIT 1",
            (account_id, identifier_type, identifier_value, int(wildcard), _t(valid_at)),
        ).fetchone())
        return None if row is None else _acme_authz(row)


def _ocsp_responder(row: sqlite3.Row) -> OcspResponderRecord:
    return OcspResponderRecord(
        responder_id=row["responder_id"], ca_id=row["ca_id"], cert_id=row["cert_id"],
        key_ref=row["key_ref"], key_backend=row["key_backend"],
        certificate_der=bytes(row["certificate_der"]), not_before=_p(row["not_before"]),
        not_after=_p(row["not_after"]), created_at=_p(row["created_at"]),
    )


def _status(row: sqlite3.Row) -> CertificateStatusRecord:
    return CertificateStatusRecord(
        issuer_ca_id=row["issuer_ca_id"], serial_hex=row["serial_hex"], status=row["status"],
        not_after=_p(row["not_after"]), revoked_at=_p_opt(row["revoked_at"]),
        revocation_reason=row["revocation_reason"],
    )


def _crl_head(row: sqlite3.Row) -> CrlHead:
    return CrlHead(
        ca_id=row["ca_id"], partition=row["partition"], crl_number=row["crl_number"],
        this_update=_p(row["this_update"]), next_update=_p(row["next_update"]),
        source_generation=row["source_generation"], entries=row["entries"],
    )


def _acme_account(row: sqlite3.Row) -> AcmeAccount:
    return AcmeAccount(
        account_id=row["account_id"], org_id=row["org_id"],
        key_thumbprint=row["key_thumbprint"], jwk=json.loads(row["jwk"]),
        status=row["status"], contact=tuple(json.loads(row["contact"])),
        tos_agreed=bool(row["tos_agreed"]), eab_kid=row["eab_kid"],
        created_at=_p(row["created_at"]),
    )


def _acme_authz(row: sqlite3.Row) -> AcmeAuthorization:
    return AcmeAuthorization(
        authz_id=row["authz_id"], account_id=row["account_id"],
        identifier_type=row["identifier_type"], identifier_value=row["identifier_value"],
        wildcard=bool(row["wildcard"]), status=row["status"], expires=_p(row["expires"]),
        challenges=challenges_from_json(json.loads(row["challenges"])),
        created_at=_p(row["created_at"]),
    )


def _acme_order(row: sqlite3.Row) -> AcmeOrder:
    return AcmeOrder(
        order_id=row["order_id"], account_id=row["account_id"], org_id=row["org_id"],
        status=row["status"], expires=_p(row["expires"]),
        identifiers=identifiers_from_json(json.loads(row["identifiers"])),
        authz_ids=tuple(json.loads(row["authz_ids"])), profile=row["profile"],
        not_before=_p_opt(row["not_before"]), not_after=_p_opt(row["not_after"]),
        replaces=row["replaces"],
        error=None if row["error"] is None else json.loads(row["error"]),
        cert_id=row["cert_id"], created_at=_p(row["created_at"]),
    )
