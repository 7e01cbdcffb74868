"""The dialect seam of the one SQL store (``db.sql``): what differs between SQLite and
PostgreSQL, and nothing else.

The store's queries are written once, in SQLite's spelling with ``?`` placeholders. A
dialect supplies:

- ``prepare(sql)``: the query in its own spelling (cached). PostgreSQL numbers the
  placeholders (``$1``...); SQLite drops ``COLLATE "C"`` (it compares TEXT bytewise already)
  and ``FOR UPDATE`` (a write transaction locks the whole file). Both spell ``now_epoch()``,
  the database's clock in seconds since the epoch, for job leases.
- time encoding (``t``: a datetime for a parameter; ``time``: a column back to an aware UTC
  datetime): SQLite keeps UTC text that sorts like the instant, PostgreSQL TIMESTAMPTZ;
- ``any_of(column, values)``: a membership test over a list parameter;
- how a transaction runs: SQLite runs it whole on its writer thread (one hop, ``BEGIN
  IMMEDIATE``), PostgreSQL on a pooled connection, head-first (``lock_head_first``);
- how reads run: SQLite's indexed lookups on the event loop's own thread (``lookup``) and
  scans on a reader thread (``read``); PostgreSQL both on the pool, released without the
  reset query;
- how driver errors become the core's ``StoreConflict`` / ``StoreInvalid`` /
  ``StoreUnavailable``.

A transaction body is a generator (sans-I/O): it yields ``Stmt`` values and receives their
results, so one body runs synchronously on SQLite's thread and asynchronously on asyncpg.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Callable, Generator, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

T = TypeVar("T")

Fetch = Literal["none", "one", "all"]


class Stmt(NamedTuple):
    """One statement: SQL in the store's spelling, its parameters, and what to fetch. (A
    tuple: made for every query, it must cost next to nothing.)"""

    sql: str
    params: Sequence[Any] = ()
    fetch: Fetch = "none"


def run(sql: str, *params: Any) -> Stmt:
    """A statement whose rows nobody reads."""
    return Stmt(sql, params, "none")


def one(sql: str, *params: Any) -> Stmt:
    """A statement whose first row (or None) is the result."""
    return Stmt(sql, params, "one")


def rows(sql: str, *params: Any) -> Stmt:
    """A statement whose rows (a list) are the result."""
    return Stmt(sql, params, "all")


# A transaction as a generator: yields statements, receives their results, returns T.
Body = Generator[Stmt, Any, T]


class Dialect(abc.ABC):
    """One database engine's side of the store; see the module docstring."""

    backend: str  # reported by ping() and Store.backend: "sqlite" | "postgresql"
    migrations: str  # folder of db/migrations with this dialect's SQL
    lock_head_first: bool  # lock the audit head at the start of every write transaction
    autocommit_single: bool  # a lone audit-free insert needs no transaction of its own
    max_list: int  # the most values any_of() takes at once
    # open() applies migrations up to this version only (None: all). A restore of an older
    # archive loads it into the schema it was made with, then migrates (db.backup).
    migrate_upto: int | None = None

    def __init__(self) -> None:
        self._prepared: dict[str, str] = {}

    def prepare(self, sql: str) -> str:
        prepared = self._prepared.get(sql)
        if prepared is None:
            prepared = self._prepared[sql] = self._rewrite(sql)
        return prepared

    @abc.abstractmethod
    def _rewrite(self, sql: str) -> str: ...

    @abc.abstractmethod
    def t(self, value: dt.datetime) -> Any:
        """A datetime as this engine's parameter."""

    @abc.abstractmethod
    def time(self, value: Any) -> dt.datetime:
        """A time column as an aware UTC datetime."""

    @abc.abstractmethod
    def epoch(self, column: str) -> str:
        """SQL for a time column as seconds since the epoch (a float), for aggregates."""

    @abc.abstractmethod
    def floor(self, expression: str) -> str:
        """SQL for the integer floor of a non-negative number."""

    def t_opt(self, value: dt.datetime | None) -> Any:
        return None if value is None else self.t(value)

    def time_opt(self, value: Any) -> dt.datetime | None:
        return None if value is None else self.time(value)

    @abc.abstractmethod
    def any_of(self, column: str, values: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        """``column`` is one of ``values`` (at most ``max_list``): SQL and parameters."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> dict[str, object]: ...

    @abc.abstractmethod
    async def transaction(self, body: Callable[[], Body[T]]) -> T:
        """Run a fresh ``body()`` in one transaction; any failure rolls it back and is
        raised as a store error."""

    @abc.abstractmethod
    async def autocommit(self, stmt: Stmt) -> Any:
        """One statement on its own, committed by itself."""

    @abc.abstractmethod
    async def lookup(self, stmt: Stmt) -> Any:
        """A bounded read by key (a row, or a few)."""

    @abc.abstractmethod
    async def read(self, stmt: Stmt) -> Any:
        """A read that may scan or return large rows."""
