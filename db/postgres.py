"""PostgreSQL dialect: an asyncpg pool, for several gateway processes on one database.

The audit chain is serialised across processes by the row lock on ``audit_head``. Every
write transaction takes that lock first (``lock_head_first``: ``SELECT ... FOR UPDATE``),
before any state row: a batch holds the head while it goes on to later writes' rows, so
taking it last in a lone write elsewhere (rows, then head) would be the opposite order and
deadlock.

Migrations run at ``open()`` in one transaction under ``pg_advisory_xact_lock``, so gateway
processes that start together apply them once. JSON columns travel as text (asyncpg's
default for json and jsonb), exactly as on SQLite.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from ca_core.storage import StoreConflict, StoreInvalid, StoreUnavailable
from db.dialect import Body, Dialect, Stmt
from db.migrations import migrations
from db.sql import SqlStore

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
    asyncpg.InternalClientError,  # a connection terminated in the middle of an operation
)

_PLACEHOLDER = re.compile(r"\?")

log = logging.getLogger(__name__)


class _Outage(logging.Filter):
    """One WARNING line per change of PostgreSQL's reachability (down, back), instead of
    a traceback for every connection the pool fails to restore while it is down.

    It filters asyncpg's pool logger (whose "Failed to restore the pool connection floor"
    carries a traceback per attempt) and is told by the dialect of failures and successes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.suppressed = 0  # reconnect failures logged by the pool and kept out of the log

    def failed(self, cause: object) -> None:
        if not self.down:
            self.down = True
            log.warning("PostgreSQL is unavailable (%s); retrying", cause)

    def succeeded(self) -> None:
        if self.down:
            self.down = False
            log.warning("PostgreSQL is available again")

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Failed to restore the pool connection floor"):
            exc = record.exc_info[1] if record.exc_info else None
            self.failed(exc or "the pool cannot reconnect")
            self.suppressed += 1
            return False
        return True


OUTAGE = _Outage()
logging.getLogger("asyncpg.pool").addFilter(OUTAGE)


async def _keep_session(conn: Any) -> None:
    """Pool release without asyncpg's default reset query (advisory unlock, CLOSE ALL,
    UNLISTEN, RESET ALL): that is one more round trip per query, and this store keeps no
    session state (its only advisory lock is transaction-scoped; no SET, LISTEN or
    cursors). An open transaction is still rolled back by the pool before this runs."""


async def _execute(conn: Any, sql: str, stmt: Stmt) -> Any:
    if stmt.fetch == "one":
        return await conn.fetchrow(sql, *stmt.params)
    if stmt.fetch == "all":
        return list(await conn.fetch(sql, *stmt.params))
    await conn.execute(sql, *stmt.params)
    return None


class PostgresDialect(Dialect):
    backend = "postgresql"
    migrations = "postgres"
    lock_head_first = True
    autocommit_single = True  # no BEGIN/COMMIT round trips for a lone time-stamp row
    max_list = 10_000

    def __init__(self, dsn: str, min_size: int = 2, max_size: int = 10) -> None:
        super().__init__()
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._pool: Any = None

    def _rewrite(self, sql: str) -> str:
        numbers = iter(range(1, 10_000))
        sql = sql.replace("now_epoch()", "extract(epoch FROM clock_timestamp())")
        return _PLACEHOLDER.sub(lambda _: f"${next(numbers)}", sql)

    def t(self, value: dt.datetime) -> dt.datetime:
        # The same instant the SQLite dialect writes (naive values are taken as local time).
        return value.astimezone(dt.UTC)

    def time(self, value: Any) -> dt.datetime:
        # asyncpg returns TIMESTAMPTZ in UTC already; this only pins the tzinfo object.
        moment: dt.datetime = value.astimezone(dt.UTC)
        return moment

    def epoch(self, column: str) -> str:
        return f"EXTRACT(EPOCH FROM {column})::float8"

    def floor(self, expression: str) -> str:
        return f"FLOOR({expression})::bigint"

    def any_of(self, column: str, values: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        return f"{column} = ANY(?::text[])", (list(values),)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; asyncpg errors become the core's store errors."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("store is not open")
        try:
            conn = await pool.acquire()
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            # Any refusal while connecting (shut down, not accepting connections, too
            # many clients, authentication) means the database cannot be used now.
            OUTAGE.failed(exc)
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
        try:
            yield conn
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise StoreConflict(str(exc)) from exc
        except asyncpg.DataError as exc:  # 22xxx: a NUL byte, bad encoding, out of range
            raise StoreInvalid(str(exc)) from exc
        except _UNAVAILABLE as exc:
            OUTAGE.failed(exc)
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
        finally:
            await pool.release(conn)
        if OUTAGE.down:
            OUTAGE.succeeded()

    async def transaction(self, body: Callable[[], Body[T]]) -> T:
        async with self._connection() as conn, conn.transaction():
            steps = body()
            try:
                stmt = next(steps)
                while True:
                    result = await _execute(conn, self.prepare(stmt.sql), stmt)
                    stmt = steps.send(result)
            except StopIteration as done:
                value: T = done.value
                return value

    async def autocommit(self, stmt: Stmt) -> Any:
        async with self._connection() as conn:
            return await _execute(conn, self.prepare(stmt.sql), stmt)

    async def lookup(self, stmt: Stmt) -> Any:
        async with self._connection() as conn:
            return await _execute(conn, self.prepare(stmt.sql), stmt)

    read = lookup

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self._dsn, min_size=self._min_size, max_size=self._max_size,
                reset=_keep_session, server_settings={"application_name": "vcc-pki"},
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
            upto = self.migrate_upto
            for version, name, sql in migrations(self.migrations):
                if version in done or (upto is not None and version > upto):
                    continue
                await conn.execute(sql)  # no arguments: simple protocol, several statements
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at)"
                    " VALUES ($1, $2, $3)",
                    version, name, dt.datetime.now(dt.UTC),
                )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except TimeoutError:
            pool.terminate()

    async def ping(self) -> dict[str, object]:
        started = time.perf_counter()
        await self.lookup(Stmt("SELECT 1", (), "one"))
        elapsed = round((time.perf_counter() - started) * 1000, 3)
        pool = self._pool
        return {
            "backend": "postgresql",
            "pool_size": pool.get_size() if pool is not None else 0,
            "pool_idle": pool.get_idle_size() if pool is not None else 0,
            "query_time_ms": elapsed,
        }


class PostgresStore(SqlStore):
    """The store on a PostgreSQL database."""

    def __init__(self, dsn: str, min_size: int = 2, max_size: int = 10) -> None:
        self.dialect: PostgresDialect = PostgresDialect(dsn, min_size, max_size)
        super().__init__(self.dialect)

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """``postgresql://user:password@host:port/database?sslmode=...`` (or ``postgres://``),
        handed to asyncpg as the DSN."""
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"not a postgresql URL: {url!r}")
        return cls(url)
