"""PostgreSQL store: an asyncpg pool, for several gateway processes on one database.

Each write is one transaction holding the state change and its audit row; writes that
arrive together share one transaction (group commit). The audit chain is serialised across
processes by the row lock on ``audit_head`` (id 1, created by the migration with seq 0 and
the genesis hash). Every write transaction takes that lock first (``SELECT ... FOR
UPDATE``), before any state row: a batch holds the head while it goes on to later writes'
rows, so taking it last in a lone write elsewhere (rows, then head) would be the opposite
order and deadlock. Each entry is hashed (``db.audit_chain``), inserted, and the head moved
before COMMIT.

Migrations run at ``open()`` in one transaction under ``pg_advisory_xact_lock``, so gateway
processes that start together apply them once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

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
from db.audit_chain import chain_hash
from db.migrations import migrations
from db.store import Store

T = TypeVar("T")

# Key of the advisory lock that serialises migrations ("vccpki" in ASCII).
_MIGRATION_LOCK = 0x766363706B69

# Errors meaning "the database cannot be reached or refused the operation". Anything else
# from asyncpg (syntax, undefined table ...) is a bug and is not disguised.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError too
    asyncpg.PostgresConnectionError,  # 08xxx
    asyncpg.InterfaceError,  # connection closed, pool closed, ...
    asyncpg.exceptions.OperatorInterventionError,  # 57xxx: shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: too many connections, disk full
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby after failover
)


def _t(value: dt.datetime) -> dt.datetime:
    # The same instant the SQLite store writes (naive values are taken as local time).
    return value.astimezone(dt.UTC)


def _t_opt(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else _t(value)


def _p(value: dt.datetime) -> dt.datetime:
    # asyncpg returns TIMESTAMPTZ in UTC already; this only pins the tzinfo object.
    return value.astimezone(dt.UTC)


def _p_opt(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else _p(value)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _org(row: Any) -> Organization:
    return Organization(
        org_id=row["org_id"], slug=row["slug"], name=row["name"], status=row["status"],
        config=row["config"], created_at=_p(row["created_at"]),
    )


def _ca(row: Any) -> CARecord:
    return CARecord(
        ca_id=row["ca_id"], name=row["name"], ca_type=row["ca_type"], org_id=row["org_id"],
        parent_ca_id=row["parent_ca_id"], subject_dn=row["subject_dn"],
        serial_hex=row["serial_hex"], certificate_der=bytes(row["certificate_der"]),
        key_ref=row["key_ref"], key_backend=row["key_backend"],
        key_algorithm=row["key_algorithm"], key_size=row["key_size"],
        not_before=_p(row["not_before"]), not_after=_p(row["not_after"]),
        status=row["status"], created_at=_p(row["created_at"]),
    )


def _cert(row: Any) -> CertificateRecord:
    return CertificateRecord(
        cert_id=row["cert_id"], issuer_ca_id=row["issuer_ca_id"], org_id=row["org_id"],
        serial_hex=row["serial_hex"], subject_dn=row["subject_dn"],
        common_name=row["common_name"], profile=row["profile"],
        certificate_der=bytes(row["certificate_der"]), key_algorithm=row["key_algorithm"],
        key_size=row["key_size"], san=row["san"],
        not_before=_p(row["not_before"]), not_after=_p(row["not_after"]),
        requester=row["requester"], status=row["status"],
        revoked_at=_p_opt(row["revoked_at"]), revocation_reason=row["revocation_reason"],
        invalidity_date=_p_opt(row["invalidity_date"]), created_at=_p(row["created_at"]),
        crl_partition=row["crl_partition"],
    )


def _revocation(row: Any) -> Revocation:
    return Revocation(
        ca_id=row["ca_id"], serial_hex=row["serial_hex"], cert_id=row["cert_id"],
        revoked_at=_p(row["revoked_at"]), reason=row["reason"],
        invalidity_date=_p_opt(row["invalidity_date"]), crl_partition=row["crl_partition"],
    )


def _token(row: Any) -> ApiToken:
    return ApiToken(
        token_id=row["token_id"], org_id=row["org_id"], role=row["role"],
        secret_hash=row["secret_hash"], name=row["name"], created_at=_p(row["created_at"]),
        expires_at=_p_opt(row["expires_at"]), revoked=bool(row["revoked"]),
    )


def _audit(row: Any) -> AuditEntry:
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


_INSERT_AUDIT = (
    "WITH entry AS (INSERT INTO audit_log (seq, audit_id, timestamp, org_id, event_type,"
    " category, action, actor_type, actor_id, resource_type, resource_id, status, event_data,"
    " previous_hash, audit_hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15))"
    " UPDATE audit_head SET seq = $1, audit_hash = $15 WHERE id = 1"
)


class _BatchConnection:
    """A connection inside a batch transaction that remembers the audit head it locked,
    so the second and later audit rows of a batch need no SELECT ... FOR UPDATE."""

    __slots__ = ("conn", "head")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.head: tuple[int, str] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


async def _append_audit(conn: Any, event: AuditEvent) -> AuditEntry:
    """Chain ``event`` onto the log; must run inside the caller's transaction."""
    cached = conn.head if isinstance(conn, _BatchConnection) else None
    if cached is not None:
        previous_seq, previous_hash = cached
    else:
        head = await conn.fetchrow(
            "SELECT seq, audit_hash FROM audit_head WHERE id = 1 FOR UPDATE")
        if head is None:
            raise StoreUnavailable(
                "the audit chain head row is missing: the audit log was altered")
        previous_seq, previous_hash = head["seq"], head["audit_hash"]
    seq: int = previous_seq + 1
    audit_id = str(uuid.uuid4())
    # TIMESTAMPTZ keeps microseconds, as does datetime: the hashed time is the stored time.
    timestamp = _now()
    digest = chain_hash(seq, audit_id, timestamp, event, previous_hash)
    await conn.execute(
        _INSERT_AUDIT,
        seq, audit_id, timestamp, event.org_id, event.event_type, event.category,
        event.action, event.actor_type, event.actor_id, event.resource_type,
        event.resource_id, event.status, json.dumps(event.data, sort_keys=True),
        previous_hash, digest,
    )
    if isinstance(conn, _BatchConnection):
        conn.head = (seq, digest)
    return AuditEntry(seq, audit_id, timestamp, event, previous_hash, digest)


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def _keep_session(conn: Any) -> None:
    """Pool release without asyncpg's default reset query (advisory unlock, CLOSE ALL,
    UNLISTEN, RESET ALL): that is one more round trip per query, and this store keeps no
    session state (its only advisory lock is transaction-scoped; no SET, LISTEN or
    cursors). An open transaction is still rolled back by the pool before this runs."""


_MAX_BATCH = 256


class PostgresStore(Store):
    backend = "postgresql"

    def __init__(self, dsn: str, min_size: int = 2, max_size: int = 10) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._pool: Any = None
        self._pending: list[tuple[Callable[[Any], Awaitable[Any]], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """``postgresql://user:password@host:port/database?sslmode=...`` (or ``postgres://``),
        handed to asyncpg as the DSN."""
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"not a postgresql URL: {url!r}")
        return cls(url)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; asyncpg errors become StoreConflict / StoreUnavailable."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("store is not open")
        try:
            async with pool.acquire() as conn:
                yield conn
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise StoreConflict(str(exc)) from exc
        except asyncpg.DataError as exc:  # 22xxx: a NUL byte, bad encoding, out of range
            raise StoreInvalid(str(exc)) from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc

    async def _write(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn`` (a state change plus its audit row) in a transaction, committed
        together with the writes that arrive meanwhile.

        Group commit, as in the SQLite store: the audit chain makes every write take the
        head row's lock, so one transaction per write serialises on it (about 500
        writes/s here). Batches take the lock and pay the commit once. If any write in a
        batch fails, the batch is rolled back and each write runs again on its own.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fn, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        result: T = await future
        return result

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[:_MAX_BATCH]
            del self._pending[:_MAX_BATCH]
            try:
                outcomes = await self._run_batch([fn for fn, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if not future.done():
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)

    async def _run_batch(
        self, fns: list[Callable[[Any], Awaitable[Any]]]
    ) -> list[tuple[bool, Any]]:
        try:
            return await self._in_transaction(fns)
        except StoreUnavailable:
            raise
        except Exception as exc:
            if len(fns) == 1:
                return [(False, exc)]
        outcomes: list[tuple[bool, Any]] = []
        for fn in fns:
            try:
                outcomes.extend(await self._in_transaction([fn]))
            except StoreUnavailable:
                raise
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes

    async def _in_transaction(
        self, fns: list[Callable[[Any], Awaitable[Any]]]
    ) -> list[tuple[bool, Any]]:
        async with self._connection() as conn, conn.transaction():
            batch = _BatchConnection(conn)
            # The head first, in every write transaction: a batch holds it while it takes
            # later writes' row locks, so a lone write elsewhere taking a row lock first
            # and the head second would deadlock with it (and wait out deadlock_timeout).
            head = await conn.fetchrow(
                "SELECT seq, audit_hash FROM audit_head WHERE id = 1 FOR UPDATE")
            if head is None:
                raise StoreUnavailable(
                    "the audit chain head row is missing: the audit log was altered")
            batch.head = (head["seq"], head["audit_hash"])
            return [(True, await fn(batch)) for fn in fns]

    async def _fetchrow(self, sql: str, *args: object) -> Any:
        async with self._connection() as conn:
            return await conn.fetchrow(sql, *args)

    async def _fetch(self, sql: str, *args: object) -> list[Any]:
        async with self._connection() as conn:
            return list(await conn.fetch(sql, *args))

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self._dsn, min_size=self._min_size, max_size=self._max_size,
                init=_init_connection, reset=_keep_session,
                server_settings={"application_name": "vcc-pki"},
            )
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        except asyncpg.PostgresError as exc:  # e.g. unknown database, authentication failed
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        self._pool = pool
        try:
            await self._migrate()
        except BaseException:
            self._pool = None
            pool.terminate()
            raise

    async def _migrate(self) -> None:
        async with self._connection() as conn, conn.transaction():
            # Processes that start together queue here; the lock ends with the transaction.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
            )
            done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations("postgres"):
                if version in done:
                    continue
                await conn.execute(sql)  # no arguments: simple protocol, several statements
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at)"
                    " VALUES ($1, $2, $3)",
                    version, name, _now(),
                )

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            await self._flusher
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except TimeoutError:
            pool.terminate()

    async def ping(self) -> dict[str, object]:
        started = time.perf_counter()
        await self._fetchrow("SELECT 1")
        elapsed = round((time.perf_counter() - started) * 1000, 3)
        pool = self._pool
        return {
            "backend": "postgresql",
            "pool_size": pool.get_size() if pool is not None else 0,
            "pool_idle": pool.get_idle_size() if pool is not None else 0,
            "query_time_ms": elapsed,
        }

    # organizations
    async def add_organization(self, org: Organization, audit: AuditEvent) -> None:
        async def tx(c: Any) -> None:
            await c.execute(
                "INSERT INTO organizations (org_id, slug, name, status, config, created_at)"
                " VALUES ($1,$2,$3,$4,$5,$6)",
                org.org_id, org.slug, org.name, org.status, org.config,
                _t(org.created_at or _now()),
            )
            await _append_audit(c, audit)
        await self._write(tx)

    async def get_organization(self, slug: str) -> Organization | None:
        row = await self._fetchrow("SELECT * FROM organizations WHERE slug = $1", slug)
        return None if row is None else _org(row)

    async def get_organization_by_id(self, org_id: str) -> Organization | None:
        row = await self._fetchrow("SELECT * FROM organizations WHERE org_id = $1", org_id)
        return None if row is None else _org(row)

    async def list_organizations(self) -> list[Organization]:
        rows = await self._fetch(
            'SELECT * FROM organizations ORDER BY created_at, slug COLLATE "C"'
        )
        return [_org(r) for r in rows]

    # certificate authorities
    async def add_ca(self, ca: CARecord, audit: AuditEvent) -> None:
        async def tx(c: Any) -> None:
            await c.execute(
                "INSERT INTO certificate_authorities (ca_id, name, ca_type, org_id,"
                " parent_ca_id, subject_dn, serial_hex, certificate_der, key_ref, key_backend,"
                " key_algorithm, key_size, not_before, not_after, status, created_at)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)",
                ca.ca_id, ca.name, ca.ca_type, ca.org_id, ca.parent_ca_id, ca.subject_dn,
                ca.serial_hex, ca.certificate_der, ca.key_ref, ca.key_backend,
                ca.key_algorithm, ca.key_size, _t(ca.not_before), _t(ca.not_after),
                ca.status, _t(ca.created_at or _now()),
            )
            await _append_audit(c, audit)
        await self._write(tx)

    async def get_ca(self, name: str) -> CARecord | None:
        row = await self._fetchrow("SELECT * FROM certificate_authorities WHERE name = $1", name)
        return None if row is None else _ca(row)

    async def get_ca_by_id(self, ca_id: str) -> CARecord | None:
        row = await self._fetchrow(
            "SELECT * FROM certificate_authorities WHERE ca_id = $1", ca_id
        )
        return None if row is None else _ca(row)

    async def list_cas(self) -> list[CARecord]:
        rows = await self._fetch(
            'SELECT * FROM certificate_authorities ORDER BY created_at, name COLLATE "C"'
        )
        return [_ca(r) for r in rows]

    # certificates
    async def add_certificate(self, cert: CertificateRecord, audit: AuditEvent) -> None:
        async def tx(c: Any) -> None:
            await c.execute(
                "INSERT INTO certificates (cert_id, issuer_ca_id, org_id, serial_hex,"
                " subject_dn, common_name, profile, certificate_der, key_algorithm, key_size,"
                " san, not_before, not_after, requester, status, created_at, crl_partition)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17)",
                cert.cert_id, cert.issuer_ca_id, cert.org_id, cert.serial_hex,
                cert.subject_dn, cert.common_name, cert.profile, cert.certificate_der,
                cert.key_algorithm, cert.key_size, cert.san,
                _t(cert.not_before), _t(cert.not_after), cert.requester, cert.status,
                _t(cert.created_at or _now()), cert.crl_partition,
            )
            await _append_audit(c, audit)
        await self._write(tx)

    async def get_certificate(self, issuer_ca_id: str, serial_hex: str) -> CertificateRecord | None:
        row = await self._fetchrow(
            "SELECT * FROM certificates WHERE issuer_ca_id = $1 AND serial_hex = $2",
            issuer_ca_id, serial_hex,
        )
        return None if row is None else _cert(row)

    async def get_certificate_by_id(self, cert_id: str) -> CertificateRecord | None:
        row = await self._fetchrow("SELECT * FROM certificates WHERE cert_id = $1", cert_id)
        return None if row is None else _cert(row)

    async def find_certificates_by_serial(self, serial_hex: str) -> list[CertificateRecord]:
        rows = await self._fetch(
            "SELECT * FROM certificates WHERE serial_hex = $1 ORDER BY created_at, cert_id",
            serial_hex,
        )
        return [_cert(r) for r in rows]

    async def revoke_certificate(
        self, revocation: Revocation, audit: AuditEvent
    ) -> CertificateRecord | None:
        async def tx(c: Any) -> CertificateRecord | None:
            row = await c.fetchrow(
                "UPDATE certificates SET status = 'revoked', revoked_at = $1,"
                " revocation_reason = $2, invalidity_date = $3"
                " WHERE issuer_ca_id = $4 AND serial_hex = $5 AND status = 'active'"
                " RETURNING *",
                _t(revocation.revoked_at), revocation.reason,
                _t_opt(revocation.invalidity_date), revocation.ca_id, revocation.serial_hex,
            )
            if row is None:
                return None
            await c.execute(
                "INSERT INTO crl_entries (ca_id, serial_hex, cert_id, revoked_at, reason,"
                " invalidity_date, crl_partition) VALUES ($1,$2,$3,$4,$5,$6,$7)",
                revocation.ca_id, revocation.serial_hex, revocation.cert_id,
                _t(revocation.revoked_at), revocation.reason,
                _t_opt(revocation.invalidity_date), row["crl_partition"],
            )
            await _append_audit(c, audit)
            return _cert(row)
        return await self._write(tx)

    async def list_revocations(
        self, ca_id: str, crl_partition: int | None = None
    ) -> list[Revocation]:
        if crl_partition is None:
            rows = await self._fetch(
                "SELECT * FROM crl_entries WHERE ca_id = $1"
                ' ORDER BY revoked_at, serial_hex COLLATE "C"',
                ca_id,
            )
        else:
            rows = await self._fetch(
                "SELECT * FROM crl_entries WHERE ca_id = $1 AND crl_partition = $2"
                ' ORDER BY revoked_at, serial_hex COLLATE "C"',
                ca_id, crl_partition,
            )
        return [_revocation(r) for r in rows]

    async def count_active_certificates(self, now: dt.datetime) -> list[tuple[str, str, int]]:
        rows = await self._fetch(
            "SELECT org_id, profile, COUNT(*) FROM certificates"
            " WHERE status = 'active' AND not_after > $1 GROUP BY org_id, profile"
            ' ORDER BY org_id COLLATE "C", profile COLLATE "C"',
            _t(now),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    # templates
    async def upsert_template(self, template: TemplateRecord) -> None:
        async def tx(c: Any) -> None:
            await c.execute(
                "INSERT INTO certificate_templates (slug, org_id, name, purpose, definition,"
                " updated_at) VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (slug) DO UPDATE SET"
                " org_id = excluded.org_id, name = excluded.name, purpose = excluded.purpose,"
                " definition = excluded.definition, updated_at = excluded.updated_at",
                template.slug, template.org_id, template.name, template.purpose,
                template.definition, _now(),
            )
        await self._write(tx)

    async def list_templates(self) -> list[TemplateRecord]:
        rows = await self._fetch('SELECT * FROM certificate_templates ORDER BY slug COLLATE "C"')
        return [
            TemplateRecord(slug=r["slug"], name=r["name"], purpose=r["purpose"],
                           definition=r["definition"], org_id=r["org_id"])
            for r in rows
        ]

    # tokens
    async def add_token(self, token: ApiToken, audit: AuditEvent) -> None:
        async def tx(c: Any) -> None:
            await c.execute(
                "INSERT INTO api_tokens (token_id, org_id, role, secret_hash, name, created_at,"
                " expires_at, revoked) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                token.token_id, token.org_id, token.role, token.secret_hash, token.name,
                _t(token.created_at), _t_opt(token.expires_at), token.revoked,
            )
            await _append_audit(c, audit)
        await self._write(tx)

    async def get_token(self, token_id: str) -> ApiToken | None:
        row = await self._fetchrow("SELECT * FROM api_tokens WHERE token_id = $1", token_id)
        return None if row is None else _token(row)

    # audit
    async def append_audit(self, audit: AuditEvent) -> AuditEntry:
        return await self._write(lambda c: _append_audit(c, audit))

    async def audit_entries(self, after_seq: int = 0, limit: int = 10_000) -> list[AuditEntry]:
        rows = await self._fetch(
            "SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2", after_seq, limit
        )
        return [_audit(r) for r in rows]

    async def audit_head(self) -> AuditHead | None:
        row = await self._fetchrow("SELECT seq, audit_hash FROM audit_head WHERE id = 1")
        # seq 0 is the genesis row the migration creates: no entry yet, as on SQLite.
        return None if row is None or row["seq"] == 0 else AuditHead(row["seq"], row["audit_hash"])

    # OCSP responders, revocation order, CRLs, job leases
    async def add_cross_certificate(self, cross: CrossCertificateRecord,
                                    audit: AuditEvent) -> None:
        async def tx(c: Any) -> None:
            await c.execute(  # a duplicate fingerprint: StoreConflict, from _connection
                "INSERT INTO ca_cross_certificates (cross_id, ca_id, fingerprint, chain_pem,"
                " top_issuer, not_after, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7)",
                cross.cross_id, cross.ca_id, cross.fingerprint, cross.chain_pem,
                cross.top_issuer, _t(cross.not_after), _t(cross.created_at or _now()))
            await _append_audit(c, audit)
        await self._write(tx)

    async def list_cross_certificates(
        self, ca_ids: Sequence[str] | None = None
    ) -> list[CrossCertificateRecord]:
        if ca_ids is None:
            rows = await self._fetch(
                "SELECT * FROM ca_cross_certificates ORDER BY created_at, cross_id")
        elif not ca_ids:
            return []
        else:
            rows = await self._fetch(
                "SELECT * FROM ca_cross_certificates WHERE ca_id = ANY($1::text[])"
                " ORDER BY created_at, cross_id", list(ca_ids))
        return [CrossCertificateRecord(
            cross_id=r["cross_id"], ca_id=r["ca_id"], fingerprint=r["fingerprint"],
            chain_pem=r["chain_pem"], top_issuer=r["top_issuer"],
            not_after=_p(r["not_after"]), created_at=_p(r["created_at"])) for r in rows]

    async def add_ocsp_responder(self, responder: OcspResponderRecord, audit: AuditEvent) -> None:
        async def tx(c: Any) -> None:
            await c.execute(
                "INSERT INTO ocsp_responders (responder_id, ca_id, cert_id, key_ref, key_backend,"
                " certificate_der, not_before, not_after, created_at)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                responder.responder_id, responder.ca_id, responder.cert_id, responder.key_ref,
                responder.key_backend, responder.certificate_der, _t(responder.not_before),
                _t(responder.not_after), _t(responder.created_at or _now()),
            )
            await _append_audit(c, audit)
        await self._write(tx)

    async def list_ocsp_responders(self, ca_id: str | None = None) -> list[OcspResponderRecord]:
        if ca_id is None:
            rows = await self._fetch(
                "SELECT * FROM ocsp_responders ORDER BY not_after DESC, created_at DESC")
        else:
            rows = await self._fetch(
                "SELECT * FROM ocsp_responders WHERE ca_id = $1"
                " ORDER BY not_after DESC, created_at DESC", ca_id)
        return [_ocsp_responder(r) for r in rows]

    async def revocation_generation(self, ca_id: str | None = None) -> int:
        if ca_id is None:
            row = await self._fetchrow("SELECT generation FROM revocation_state WHERE id = 1")
        else:
            row = await self._fetchrow(
                "SELECT MAX(generation) FROM crl_entries WHERE ca_id = $1", ca_id)
        return int(row[0]) if row is not None and row[0] is not None else 0

    async def revocations_since(self, generation: int, limit: int = 1000) -> list[RevocationEvent]:
        rows = await self._fetch(
            "SELECT * FROM crl_entries WHERE generation > $1 ORDER BY generation LIMIT $2",
            generation, limit,
        )
        return [RevocationEvent(r["generation"], _revocation(r)) for r in rows]

    async def certificate_statuses(
        self, issuer_ca_id: str, serial_hexes: Sequence[str]
    ) -> list[CertificateStatusRecord]:
        rows = await self._fetch(
            "SELECT issuer_ca_id, serial_hex, status, not_after, revoked_at, revocation_reason"
            " FROM certificates WHERE issuer_ca_id = $1 AND serial_hex = ANY($2::text[])",
            issuer_ca_id, list(dict.fromkeys(serial_hexes)),
        )
        return [_status(r) for r in rows]

    async def list_certificate_statuses(
        self, issuer_ca_id: str, valid_at: dt.datetime, after_serial_hex: str = "",
        limit: int = 1000,
    ) -> list[CertificateStatusRecord]:
        rows = await self._fetch(
            "SELECT issuer_ca_id, serial_hex, status, not_after, revoked_at, revocation_reason"
            ' FROM certificates WHERE issuer_ca_id = $1 AND serial_hex COLLATE "C" > $2'
            ' AND not_after > $3 ORDER BY serial_hex COLLATE "C" LIMIT $4',
            issuer_ca_id, after_serial_hex, _t(valid_at), limit,
        )
        return [_status(r) for r in rows]

    async def save_crl(self, crl: CrlRecord, audit: AuditEvent) -> bool:
        head = crl.head

        async def tx(c: Any) -> bool:
            saved = await c.fetchrow(
                "INSERT INTO crls (ca_id, partition, crl_number, this_update, next_update,"
                " source_generation, entries, crl_der) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)"
                " ON CONFLICT (ca_id, partition) DO UPDATE SET crl_number = excluded.crl_number,"
                " this_update = excluded.this_update, next_update = excluded.next_update,"
                " source_generation = excluded.source_generation, entries = excluded.entries,"
                " crl_der = excluded.crl_der WHERE excluded.crl_number > crls.crl_number"
                " RETURNING crl_number",
                head.ca_id, head.partition, head.crl_number, _t(head.this_update),
                _t(head.next_update), head.source_generation, head.entries, crl.crl_der,
            )
            if saved is None:
                return False
            await _append_audit(c, audit)
            return True
        return await self._write(tx)

    async def get_crl(self, ca_id: str, partition: int = 0) -> CrlRecord | None:
        row = await self._fetchrow(
            "SELECT * FROM crls WHERE ca_id = $1 AND partition = $2", ca_id, partition)
        return None if row is None else CrlRecord(_crl_head(row), bytes(row["crl_der"]))

    async def get_crl_head(self, ca_id: str, partition: int = 0) -> CrlHead | None:
        row = await self._fetchrow(
            "SELECT ca_id, partition, crl_number, this_update, next_update, source_generation,"
            " entries FROM crls WHERE ca_id = $1 AND partition = $2", ca_id, partition)
        return None if row is None else _crl_head(row)

    async def list_crl_heads(self) -> list[CrlHead]:
        rows = await self._fetch(
            "SELECT ca_id, partition, crl_number, this_update, next_update, source_generation,"
            ' entries FROM crls ORDER BY ca_id COLLATE "C", partition'
        )
        return [_crl_head(r) for r in rows]

    async def try_lock(self, name: str, holder: str, ttl_seconds: float) -> bool:
        async def tx(c: Any) -> bool:
            row = await c.fetchrow(
                "INSERT INTO job_locks (name, holder, expires_at)"
                " VALUES ($1, $2, extract(epoch FROM clock_timestamp()) + $3)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at"
                " WHERE job_locks.expires_at < extract(epoch FROM clock_timestamp())"
                " OR job_locks.holder = excluded.holder RETURNING holder",
                name, holder, float(ttl_seconds),
            )
            return row is not None
        return await self._write(tx)

    async def release_lock(self, name: str, holder: str) -> None:
        async def tx(c: Any) -> None:
            await c.execute("DELETE FROM job_locks WHERE name = $1 AND holder = $2", name, holder)
        await self._write(tx)

    # RFC 3161 time-stamp tokens
    async def add_timestamp(self, record: TimeStampRecord) -> None:
        # One statement, so autocommit suffices: no BEGIN/COMMIT round trips per stamp.
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO timestamp_tokens (serial_hex, tsa_ca_id, policy_oid,"
                " hash_algorithm, message_imprint, gen_time, has_nonce, cert_req)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                record.serial_hex, record.tsa_ca_id, record.policy_oid,
                record.hash_algorithm, record.message_imprint, _t(record.gen_time),
                record.has_nonce, record.cert_req,
            )

    async def get_timestamp(self, serial_hex: str) -> TimeStampRecord | None:
        row = await self._fetchrow(
            "SELECT * FROM timestamp_tokens WHERE serial_hex = $1", serial_hex
        )
        if row is None:
            return None
        return TimeStampRecord(
            serial_hex=row["serial_hex"], tsa_ca_id=row["tsa_ca_id"],
            policy_oid=row["policy_oid"], hash_algorithm=row["hash_algorithm"],
            message_imprint=bytes(row["message_imprint"]), gen_time=_p(row["gen_time"]),
            has_nonce=row["has_nonce"], cert_req=row["cert_req"],
        )

    # organizations' settings
    async def update_organization_config(
        self, org_id: str, config: dict[str, Any], audit: AuditEvent
    ) -> None:
        async def tx(c: Any) -> None:
            found = await c.fetchval(
                "UPDATE organizations SET config = $1 WHERE org_id = $2 RETURNING 1",
                config, org_id)
            if found is None:
                raise StoreConflict(f"no organization {org_id}")
            await _append_audit(c, audit)
        await self._write(tx)

    # ACME
    async def add_acme_account(self, account: AcmeAccount, audit: AuditEvent) -> None:
        async def tx(c: Any) -> None:
            if account.eab_kid is not None:
                bound = await c.fetchval(
                    "UPDATE acme_eab_keys SET account_id = $1"
                    " WHERE kid = $2 AND account_id IS NULL AND org_id = $3 RETURNING 1",
                    account.account_id, account.eab_kid, account.org_id)
                if bound is None:
                    raise StoreConflict("the EAB key is unknown or used already")
            await c.execute(
                "INSERT INTO acme_accounts (account_id, org_id, key_thumbprint, jwk, status,"
                " contact, tos_agreed, eab_kid, created_at)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                account.account_id, account.org_id, account.key_thumbprint, account.jwk,
                account.status, list(account.contact), account.tos_agreed, account.eab_kid,
                _t(account.created_at or _now()))
            await _append_audit(c, audit)
        await self._write(tx)

    async def get_acme_account(self, account_id: str) -> AcmeAccount | None:
        row = await self._fetchrow(
            "SELECT * FROM acme_accounts WHERE account_id = $1", account_id)
        return None if row is None else _acme_account(row)

    async def find_acme_account(self, key_thumbprint: str) -> AcmeAccount | None:
        row = await self._fetchrow(
            "SELECT * FROM acme_accounts WHERE key_thumbprint = $1", key_thumbprint)
        return None if row is None else _acme_account(row)

    async def update_acme_account(self, account: AcmeAccount, audit: AuditEvent) -> None:
        async def tx(c: Any) -> None:
            found = await c.fetchval(
                "UPDATE acme_accounts SET key_thumbprint = $1, jwk = $2, status = $3,"
                " contact = $4, tos_agreed = $5 WHERE account_id = $6 RETURNING 1",
                account.key_thumbprint, account.jwk, account.status, list(account.contact),
                account.tos_agreed, account.account_id)
            if found is None:
                raise StoreConflict(f"no ACME account {account.account_id}")
            await _append_audit(c, audit)
        await self._write(tx)

    async def add_eab_key(self, key: EabKey, audit: AuditEvent) -> None:
        async def tx(c: Any) -> None:
            await c.execute(
                "INSERT INTO acme_eab_keys (kid, org_id, hmac_key, account_id, created_at)"
                " VALUES ($1,$2,$3,$4,$5)",
                key.kid, key.org_id, key.hmac_key, key.account_id, _t(key.created_at))
            await _append_audit(c, audit)
        await self._write(tx)

    async def get_eab_key(self, kid: str) -> EabKey | None:
        row = await self._fetchrow("SELECT * FROM acme_eab_keys WHERE kid = $1", kid)
        if row is None:
            return None
        return EabKey(kid=row["kid"], org_id=row["org_id"], hmac_key=bytes(row["hmac_key"]),
                      created_at=_p(row["created_at"]), account_id=row["account_id"])

    async def add_acme_order(
        self, order: AcmeOrder, new_authorizations: Sequence[AcmeAuthorization]
    ) -> None:
        async def tx(c: Any) -> None:
            for authz in new_authorizations:
                await c.execute(
                    "INSERT INTO acme_authorizations (authz_id, account_id, identifier_type,"
                    " identifier_value, wildcard, status, expires, challenges, created_at)"
                    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                    authz.authz_id, authz.account_id, authz.identifier_type,
                    authz.identifier_value, authz.wildcard, authz.status, _t(authz.expires),
                    challenges_to_json(authz.challenges), _t(authz.created_at or _now()))
            await c.execute(
                "INSERT INTO acme_orders (order_id, account_id, org_id, status, expires,"
                " identifiers, authz_ids, profile, not_before, not_after, replaces, error,"
                " cert_id, created_at)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)",
                order.order_id, order.account_id, order.org_id, order.status,
                _t(order.expires), identifiers_to_json(order.identifiers),
                list(order.authz_ids), order.profile, _t_opt(order.not_before),
                _t_opt(order.not_after), order.replaces, order.error, order.cert_id,
                _t(order.created_at or _now()))
        await self._write(tx)

    async def get_acme_order(self, order_id: str) -> AcmeOrder | None:
        row = await self._fetchrow("SELECT * FROM acme_orders WHERE order_id = $1", order_id)
        return None if row is None else _acme_order(row)

    async def update_acme_order(self, order: AcmeOrder, expect_status: str) -> bool:
        async def tx(c: Any) -> bool:
            found = await c.fetchval(
                "UPDATE acme_orders SET status = $1, error = $2, cert_id = $3"
                " WHERE order_id = $4 AND status = $5 RETURNING 1",
                order.status, order.error, order.cert_id, order.order_id, expect_status)
            return found is not None
        return await self._write(tx)

    async def find_acme_order_by_cert(self, cert_id: str) -> AcmeOrder | None:
        row = await self._fetchrow("SELECT * FROM acme_orders WHERE cert_id = $1", cert_id)
        return None if row is None else _acme_order(row)

    async def get_acme_authorizations(
        self, authz_ids: Sequence[str]
    ) -> list[AcmeAuthorization]:
        if not authz_ids:
            return []
        rows = await self._fetch(
            "SELECT * FROM acme_authorizations WHERE authz_id = ANY($1::text[])",
            list(authz_ids))
        found = {row["authz_id"]: _acme_authz(row) for row in rows}
        return [found[i] for i in authz_ids if i in found]

    async def update_acme_authorization(
        self, authz: AcmeAuthorization, expect_status: str
    ) -> bool:
        async def tx(c: Any) -> bool:
            found = await c.fetchval(
                "UPDATE acme_authorizations SET status = $1, expires = $2, challenges = $3"
                " WHERE authz_id = $4 AND status = $5 RETURNING 1",
                authz.status, _t(authz.expires), challenges_to_json(authz.challenges),
                authz.authz_id, expect_status)
            return found is not None
        return await self._write(tx)

    async def find_valid_acme_authorization(
        self, account_id: str, identifier_type: str, identifier_value: str, wildcard: bool,
        valid_at: dt.datetime,
    ) -> AcmeAuthorization | None:
        row = await self._fetchrow(
            "SELECT * FROM acme_authorizations WHERE account_id = $1 AND identifier_type = $2"
            " AND identifier_value = $3 AND wildcard = $4 AND status = 'valid' AND expires > $5"
            " ORDER BY expires DESC LIMIT 1",
            account_id, identifier_type, identifier_value, wildcard, _t(valid_at))
        return None if row is None else _acme_authz(row)


def _ocsp_responder(row: Any) -> OcspResponderRecord:
    return OcspResponderRecord(
        responder_id=row["responder_id"], ca_id=row["ca_id"], cert_id=row["cert_id"],
        key_ref=row["key_ref"], key_backend=row["key_backend"],
        certificate_der=bytes(row["certificate_der"]), not_before=_p(row["not_before"]),
        not_after=_p(row["not_after"]), created_at=_p(row["created_at"]),
    )


def _status(row: Any) -> CertificateStatusRecord:
    return CertificateStatusRecord(
        issuer_ca_id=row["issuer_ca_id"], serial_hex=row["serial_hex"], status=row["status"],
        not_after=_p(row["not_after"]), revoked_at=_p_opt(row["revoked_at"]),
        revocation_reason=row["revocation_reason"],
    )


def _crl_head(row: Any) -> CrlHead:
    return CrlHead(
        ca_id=row["ca_id"], partition=row["partition"], crl_number=row["crl_number"],
        this_update=_p(row["this_update"]), next_update=_p(row["next_update"]),
        source_generation=row["source_generation"], entries=row["entries"],
    )


def _acme_account(row: Any) -> AcmeAccount:
    return AcmeAccount(
        account_id=row["account_id"], org_id=row["org_id"],
        key_thumbprint=row["key_thumbprint"], jwk=row["jwk"], status=row["status"],
        contact=tuple(row["contact"]), tos_agreed=row["tos_agreed"], eab_kid=row["eab_kid"],
        created_at=_p(row["created_at"]),
    )


def _acme_authz(row: Any) -> AcmeAuthorization:
    return AcmeAuthorization(
        authz_id=row["authz_id"], account_id=row["account_id"],
        identifier_type=row["identifier_type"], identifier_value=row["identifier_value"],
        wildcard=row["wildcard"], status=row["status"], expires=_p(row["expires"]),
        challenges=challenges_from_json(row["challenges"]), created_at=_p(row["created_at"]),
    )


def _acme_order(row: Any) -> AcmeOrder:
    return AcmeOrder(
        order_id=row["order_id"], account_id=row["account_id"], org_id=row["org_id"],
        status=row["status"], expires=_p(row["expires"]),
        identifiers=identifiers_from_json(row["identifiers"]),
        authz_ids=tuple(row["authz_ids"]), profile=row["profile"],
        not_before=_p_opt(row["not_before"]), not_after=_p_opt(row["not_after"]),
        replaces=row["replaces"], error=row["error"], cert_id=row["cert_id"],
        created_at=_p(row["created_at"]),
    )
