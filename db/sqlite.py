"""SQLite dialect (the embedded default): WAL mode, one writer connection.

Writes are serialised on that connection the way SQLite wants them anyway (the group
commit in ``db.sql`` puts the writes that arrive meanwhile in the same transaction); where
a write transaction runs (the loop's thread or the writer thread) is below. Scans run on
a second connection and thread (WAL: readers never wait for the writer), and indexed
lookups on a third connection on the loop's own thread (see ``lookup``).

Several processes on one file (``VCC_PKI_WORKERS``, a CLI command beside a running gateway)
queue their write transactions on an ``flock`` of ``<file>.write-lock`` before ``BEGIN
IMMEDIATE``. Without it a writer that finds the file locked sleeps in SQLite's busy handler
(1, 2, 5 ... 100 ms steps, whatever the holder's transaction takes): with two workers that
sleeping was the p99 of every write (time-stamps: 4 ms p50, 70 ms p99). The kernel wakes an
flock waiter as soon as the holder lets go. The busy timeout stays as the backstop for
writers that do not take the lock (the sqlite3 shell).

A write transaction that can start at once (the connection free, the write lock free, no
other writer in SQLite) runs on the event loop's own thread: with ``synchronous=NORMAL`` a
WAL commit writes to the page cache and does not wait for the disk, so it takes about as
long as handing it to the writer thread and back would (~50 µs of CPU per hop on this
kind of machine, the largest share of a small write). Anything that would wait goes to
the writer thread, which may wait. Checkpoints (the part of WAL that does wait for the
disk) never run on the loop nor hold up a write: the writer connection does not checkpoint
on commit; a connection of its own, on a thread of its own, does every
``_CHECKPOINT_EVERY`` commits (a PASSIVE checkpoint runs beside the writer).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ca_core.storage import StoreConflict, StoreError, StoreInvalid, StoreUnavailable
from db.dialect import Body, Dialect, Stmt
from db.migrations import migrations
from db.sql import SqlStore

T = TypeVar("T")
log = logging.getLogger(__name__)

_NOW_EPOCH = "((julianday('now') - 2440587.5) * 86400.0)"
# SQLite's own autocheckpoint runs after about 1,000 WAL pages; a write here dirties 10-50.
_CHECKPOINT_EVERY = 50
# Statements a write runs on the loop's thread before the writer thread takes the rest over
# (a batch of single-row writes is 2-4 statements per write).
_INLINE_STATEMENTS = 48
_BUSY_TIMEOUT_MS = 30000


def _map_error(exc: BaseException) -> BaseException:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreConflict(str(exc))
    if isinstance(exc, sqlite3.Error | AttributeError):  # AttributeError: closed meanwhile
        return StoreUnavailable(str(exc))
    if isinstance(exc, UnicodeError | OverflowError):  # a lone surrogate, an int >= 2**63
        return StoreInvalid(str(exc))
    return exc


def _execute(conn: sqlite3.Connection, sql: str, stmt: Stmt) -> Any:
    cursor = conn.execute(sql, stmt.params)
    if stmt.fetch == "none":
        return None
    # fetchall even for one row: a RETURNING statement must run to its end.
    found = cursor.fetchall()
    if stmt.fetch == "one":
        return found[0] if found else None
    return found


class SqliteDialect(Dialect):
    backend = "sqlite"
    migrations = "sqlite"
    lock_head_first = False  # BEGIN IMMEDIATE holds the whole file already
    autocommit_single = False  # the group commit is cheaper than a commit per insert
    max_list = 500  # well under SQLITE_MAX_VARIABLE_NUMBER

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        # Reads on a second connection and thread, so a slow read (a count over a million
        # rows) does not hold up the write batches, nor a write batch the reads. A read sees
        # every write whose call has returned.
        self._read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-r")
        self._read_conn: sqlite3.Connection | None = None
        self._lookup_conn: sqlite3.Connection | None = None
        self._write_lock: int | None = None  # fd of <file>.write-lock, see the module doc
        # Held by whichever thread uses the writer connection (the loop, the writer thread).
        self._conn_lock = threading.Lock()
        self._inline = False  # file databases only: ":memory:" reads share the connection
        self._commits = 0
        self._checkpoint_due = False
        self._checkpoint_queued = False
        self._checkpoint_executor = ThreadPoolExecutor(max_workers=1,
                                                       thread_name_prefix="sqlite-ckpt")
        self._checkpoint_conn: sqlite3.Connection | None = None

    def _rewrite(self, sql: str) -> str:
        return (sql.replace(' COLLATE "C"', "").replace(" FOR UPDATE", "")
                .replace("now_epoch()", _NOW_EPOCH))

    def t(self, value: dt.datetime) -> str:
        # isoformat is several times faster than strftime and gives the same text.
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds")[:26] + "Z"

    def time(self, value: Any) -> dt.datetime:
        return dt.datetime.fromisoformat(value)

    def epoch(self, column: str) -> str:
        # julianday reads the stored UTC text; 2440587.5 is the epoch's Julian day.
        return f"((julianday({column}) - 2440587.5) * 86400.0)"

    def floor(self, expression: str) -> str:
        # CAST truncates, which is the floor for the non-negative numbers asked for here
        # (floor() itself is missing from SQLite builds without the math functions).
        return f"CAST({expression} AS INTEGER)"

    def any_of(self, column: str, values: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        return f"{column} IN ({','.join('?' * len(values))})", tuple(values)

    # transactions --------------------------------------------------------------------

    def _run(self, conn: sqlite3.Connection, steps: Body[T], stmt: Stmt | None,
             budget: int | None = None) -> tuple[bool, Any]:
        """Run a begun transaction on from ``stmt`` (the body's first statement when None).
        (True, result) once the body is done and committed; (False, next statement) when
        ``budget`` statements ran first (the transaction stays open). Any failure rolls
        back and is raised."""
        try:
            try:
                if stmt is None:
                    stmt = next(steps)
                ran = 0
                while budget is None or ran < budget:
                    stmt = steps.send(_execute(conn, self.prepare(stmt.sql), stmt))
                    ran += 1
            except StopIteration as done:
                result: T = done.value
            else:
                return False, stmt
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._committed()
        return True, result

    def _finish(self, conn: sqlite3.Connection, steps: Body[T], stmt: Stmt | None) -> T:
        """Run the rest of a begun transaction and commit (see ``_run``)."""
        result: T = self._run(conn, steps, stmt)[1]
        return result

    def _committed(self) -> None:
        self._commits += 1
        # A file database only (``_inline``): ":memory:" has no WAL to checkpoint.
        if self._inline and self._commits % _CHECKPOINT_EVERY == 0:
            self._checkpoint_due = True

    def _transaction_on_thread(self, body: Callable[[], Body[T]]) -> T:
        with self._conn_lock:
            conn = self._conn
            if conn is None:
                raise StoreUnavailable("store is not open")
            lock = self._write_lock
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError:
                    if not self._inline:
                        raise
                    # Busy (a writer outside the lock): wait for it here, off the loop.
                    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                    finally:
                        conn.execute("PRAGMA busy_timeout=0")
                return self._finish(conn, body(), None)
            finally:
                if lock is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def _resume_on_thread(self, steps: Body[T], stmt: Stmt) -> T:
        """Finish a transaction the loop began (see ``_transaction_inline``): the connection
        lock and the flock were taken for it there, and are released here."""
        try:
            conn = self._conn
            if conn is None:
                raise StoreUnavailable("store is not open")
            return self._finish(conn, steps, stmt)
        finally:
            if self._write_lock is not None:
                fcntl.flock(self._write_lock, fcntl.LOCK_UN)
            self._conn_lock.release()

    def _checkpoint_on_thread(self) -> None:
        self._checkpoint_due = self._checkpoint_queued = False
        try:
            if self._checkpoint_conn is None:
                self._checkpoint_conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=0)
            self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next one catches up; the WAL only grows meanwhile
            busy = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
            log.log(logging.DEBUG if busy else logging.WARNING, "SQLite checkpoint: %s", exc)

    def _queue_checkpoint(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._checkpoint_due and not self._checkpoint_queued and self._conn is not None:
            self._checkpoint_queued = True
            loop.run_in_executor(self._checkpoint_executor, self._checkpoint_on_thread)

    def _transaction_inline(self, body: Callable[[], Body[T]]
                            ) -> tuple[str, T | tuple[Body[T], Stmt] | None]:
        """Begin the transaction on the loop's thread if that needs no waiting, and run up
        to ``_INLINE_STATEMENTS`` of it here. ("busy", None): it could not begin (nothing
        was done); ("done", result): committed; ("paused", (steps, stmt)): still open, with
        the connection lock and the flock held for ``_resume_on_thread`` to finish it (a
        large batch does not hold the loop up for its whole length)."""
        if not self._conn_lock.acquire(blocking=False):
            return "busy", None
        handed_over = False
        try:
            conn = self._conn
            if conn is None:
                raise StoreUnavailable("store is not open")
            lock = self._write_lock
            if lock is not None:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return "busy", None
            try:
                try:
                    conn.execute("BEGIN IMMEDIATE")  # busy_timeout is 0: never waits here
                except sqlite3.OperationalError:
                    return "busy", None
                steps = body()
                finished, value = self._run(conn, steps, None, _INLINE_STATEMENTS)
                if finished:
                    return "done", value
                handed_over = True
                return "paused", (steps, value)
            finally:
                if lock is not None and not handed_over:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            if not handed_over:
                self._conn_lock.release()

    async def transaction(self, body: Callable[[], Body[T]]) -> T:
        if self._conn is None:
            raise StoreUnavailable("store is not open")
        loop = asyncio.get_running_loop()
        try:
            if self._inline:
                outcome, value = self._transaction_inline(body)
                if outcome == "done":
                    return value  # type: ignore[return-value]  # T, possibly None
                if outcome == "paused":
                    steps, stmt = value  # type: ignore[misc]
                    # Shielded: a queued job that is cancelled never runs, and this one
                    # must, to end the transaction and release the locks it holds.
                    resumed: T = await asyncio.shield(loop.run_in_executor(
                        self._executor, self._resume_on_thread, steps, stmt))
                    return resumed
            return await loop.run_in_executor(
                self._executor, self._transaction_on_thread, body)
        except Exception as exc:
            raise _map_error(exc) from exc
        finally:
            if self._checkpoint_due:
                self._queue_checkpoint(loop)

    async def autocommit(self, stmt: Stmt) -> Any:
        def single() -> Body[Any]:
            return (yield stmt)
        return await self.transaction(single)

    # reads ---------------------------------------------------------------------------

    async def read(self, stmt: Stmt) -> Any:
        sql = self.prepare(stmt.sql)
        conn = self._read_conn
        executor = self._read_executor
        if conn is None:  # ":memory:" has one connection only
            conn, executor = self._conn, self._executor
            if conn is None:
                raise StoreUnavailable("store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, _execute, conn, sql, stmt)
        except (sqlite3.Error, UnicodeError, OverflowError) as exc:
            raise _map_error(exc) from exc

    async def lookup(self, stmt: Stmt) -> Any:
        """A bounded read by key on the event loop's own thread.

        An indexed lookup costs about 8 µs here; handing it to the reader thread and back
        costs about 130 µs of CPU, most of a small request's store time. WAL readers do not
        wait for the writer, so this does not stall the loop; should the database be busy
        anyway (a checkpoint, another process's exclusive lock), the read goes to the
        reader thread, which may wait.
        """
        conn = self._lookup_conn
        if conn is None:
            return await self.read(stmt)
        try:
            return _execute(conn, self.prepare(stmt.sql), stmt)
        except sqlite3.OperationalError:
            return await self.read(stmt)
        except (sqlite3.Error, UnicodeError, OverflowError) as exc:
            raise _map_error(exc) from exc

    # lifecycle -----------------------------------------------------------------------

    def _open_write_lock(self) -> int:
        """``<file>.write-lock``, made on first use. Made by root (a `sudo vcc-pki ...` beside
        a gateway running as its own user), it is given to the database file's owner, as
        SQLite does with its -wal and -shm files, so the gateway can still open it."""
        path = f"{self.path}.write-lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.geteuid() == 0:
                owner = os.stat(self.path if os.path.exists(self.path)
                                else os.path.dirname(os.path.abspath(self.path)))
                lock = os.fstat(fd)
                if (lock.st_uid, lock.st_gid) != (owner.st_uid, owner.st_gid):
                    os.fchown(fd, owner.st_uid, owner.st_gid)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _connect_writer(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._write_lock = self._open_write_lock()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        if self.path != ":memory:":
            conn.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint_on_thread
        # Under the write lock, so that processes opening a new file at once apply each
        # migration exactly once.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            upto = self.migrate_upto
            for version, name, sql in migrations(self.migrations):
                if version in done or (upto is not None and version > upto):
                    continue
                for statement in sql.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                             (version, name, self.t(dt.datetime.now(dt.UTC))))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if self.path != ":memory:":
            conn.execute("PRAGMA busy_timeout=0")  # see _transaction_inline
            self._inline = True
        return conn

    def _connect_reader(self, busy_timeout_ms: int = 30000) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=busy_timeout_ms / 1000)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        conn.execute("PRAGMA query_only=ON")
        return conn

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, self._connect_writer)
            if self.path != ":memory:":
                self._read_conn = await loop.run_in_executor(self._read_executor,
                                                             self._connect_reader)
                self._lookup_conn = self._connect_reader(0)  # busy: fall back, never wait
        except (sqlite3.Error, OSError) as exc:  # OSError: the directory or the lock file
            if self._write_lock is not None:
                lock, self._write_lock = self._write_lock, None
                os.close(lock)
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc

    async def close(self) -> None:
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
        self._checkpoint_executor.shutdown(wait=True)
        if self._checkpoint_conn is not None:
            checkpointer, self._checkpoint_conn = self._checkpoint_conn, None
            checkpointer.close()
        if self._write_lock is not None:
            lock, self._write_lock = self._write_lock, None
            os.close(lock)

    async def ping(self) -> dict[str, object]:
        started = time.perf_counter()
        await self.read(Stmt("SELECT 1", (), "one"))
        return {"backend": "sqlite", "path": self.path,
                "query_time_ms": round((time.perf_counter() - started) * 1000, 3)}


class SqliteStore(SqlStore):
    """The store on an SQLite file (``:memory:`` for a throwaway one)."""

    def __init__(self, path: Path | str) -> None:
        self.dialect: SqliteDialect = SqliteDialect(path)
        super().__init__(self.dialect)

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """SQLAlchemy's convention: ``sqlite:///relative.db``, ``sqlite:////absolute.db``."""
        if not url.startswith("sqlite:///"):
            raise ValueError(f"not a sqlite URL: {url!r}")
        return cls(url.removeprefix("sqlite:///"))
