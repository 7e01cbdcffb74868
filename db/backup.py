"""Dump and load of the whole store, table by table, for ``vcc-pki backup`` and ``vcc-pki
restore`` (issue 15; the archive around it is ``gateway.backup_cli``'s).

A dump is one JSON object per row (JSON Lines), keyed by column name, in a form that both
dialects read back: times as UTC text with microseconds (``2026-12-06T22:04:57.097000Z``,
what the SQLite dialect stores and the audit hash covers), bytes in base64, booleans as
JSON booleans (SQLite's 0/1 are turned into them by the target's column type), JSON
columns as their text. So a dump of SQLite loads into PostgreSQL and back.

What is read, and how it stays consistent:

- every table of the schema, found in the database's own catalog (a table added by a later
  migration is dumped without a change here), except ``schema_migrations`` (the archive
  names the schema version instead) and ``job_locks`` (leases of running processes: a
  restored lease would hold a job back until it expired) and ``web_sessions`` (admin page
  sign-ins: they end with the gateway they were made on, not with a restore);
- in ONE read transaction: PostgreSQL ``REPEATABLE READ READ ONLY``, SQLite a read
  transaction (WAL: a snapshot that writers do not disturb), so the certificates, the
  revocations and the audit chain that records them agree.

How it is loaded: in one transaction, tables in foreign-key order (rows of a table that
refers to itself, the CA hierarchy, parents first). Two things the schema does by trigger
are set back to what was dumped afterwards: the audit head (moved by every audit insert)
and the revocation generation of each CRL entry (given by a trigger from a counter). The
rows the migrations seed (``SEEDED``) are replaced, not added. PostgreSQL sequences behind
any serial column are moved past the loaded rows.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from db.migrations import common_versions

# One row each, made by the migrations; a load replaces them, after every other table
# (their values are what triggers of other tables move: the audit head, the revocation
# generation counter).
SEEDED = ("audit_head", "revocation_state")
# Not data: the schema version (in the manifest instead) and running processes' leases.
SKIPPED = ("schema_migrations", "job_locks", "web_sessions")
# Columns a trigger sets on insert, set back to the dumped value after the load:
# table -> (column, key columns).
TRIGGER_SET: dict[str, tuple[str, tuple[str, ...]]] = {
    "crl_entries": ("generation", ("ca_id", "serial_hex")),
}

Kind = Literal["time", "bytes", "bool", "json", "int", "float", "text"]
Progress = Callable[[str, int, int], None]  # table, rows done, rows in all

_BATCH = 1000


class BackupError(Exception):
    """A dump or load that cannot go on; the message says why, for the operator."""


class NotEmpty(BackupError):
    """The target database holds data already (restore without --force)."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # primary key columns (may be empty)
    parents: tuple[str, ...]  # tables its foreign keys refer to (not itself)
    self_refs: tuple[tuple[str, str], ...]  # (column, referenced column) within the table

    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def time_text(value: dt.datetime) -> str:
    """A time as the dump writes it (the SQLite dialect's own text)."""
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")[:26] + "Z"


def schema_version(applied: Iterable[int]) -> int:
    """The data shape of a database: its newest applied migration that is written for both
    dialects (``common/``). Dialect files add triggers and indexes only, so a SQLite and a
    PostgreSQL database at the same version hold the same tables and columns."""
    common = set(common_versions())
    return max((v for v in applied if v in common), default=0)


def latest_schema_version() -> int:
    return max(common_versions())


def order_tables(tables: Iterable[Table]) -> list[Table]:
    """Tables in foreign-key order (a table after those it refers to), the seeded ones
    last; ties by name, so the order is the same on both dialects."""
    pending = {t.name: t for t in tables if t.name not in SEEDED}
    seeded = sorted((t for t in tables if t.name in SEEDED), key=lambda t: t.name)
    ordered: list[Table] = []
    while pending:
        ready = sorted(name for name, t in pending.items()
                       if not any(p in pending for p in t.parents))
        if not ready:
            raise BackupError(f"foreign keys form a cycle among {sorted(pending)}")
        ordered.extend(pending.pop(name) for name in ready)
    return ordered + seeded


def _parents_first(table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a table that refers to itself, each after the row it refers to."""
    if not table.self_refs:
        return rows
    present = {(ref, row.get(ref)) for row in rows for _, ref in table.self_refs}
    placed: set[tuple[str, Any]] = set()
    ordered: list[dict[str, Any]] = []
    pending = rows
    while pending:
        later = []
        for row in pending:
            # A reference to a row not in the dump is left to the foreign key to refuse.
            if all(row.get(col) is None or (ref, row.get(col)) in placed
                   or (ref, row.get(col)) not in present
                   for col, ref in table.self_refs):
                ordered.append(row)
                placed.update((ref, row.get(ref)) for _, ref in table.self_refs)
            else:
                later.append(row)
        if len(later) == len(pending):
            raise BackupError(f"{table.name}: rows refer to each other in a cycle")
        pending = later
    return ordered


# --- value encoding -------------------------------------------------------------------------

def encode_value(value: Any, kind: Kind) -> Any:
    """A column value as the dump writes it."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return time_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def _encoders(columns: Iterable[Column]) -> list[tuple[int, Callable[[Any], Any]]]:
    """(position, encoder) of the columns whose values JSON cannot take as they come: only
    these are looked at per row (a dump of a million rows is mostly this loop)."""
    found: list[tuple[int, Callable[[Any], Any]]] = []
    for i, column in enumerate(columns):
        if column.kind == "bytes":
            found.append((i, lambda v: base64.b64encode(bytes(v)).decode("ascii")))
        elif column.kind == "time":
            found.append((i, time_text))
    return found


def _integer(value: Any) -> int:
    if isinstance(value, int):  # bool too: SQLite keeps booleans as 0/1
        return int(value)
    raise ValueError(f"{value!r} is not an integer")


def _real(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{value!r} is not a number")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"{value!r} is not text")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"{value!r} is not a boolean")


def _moment(value: Any) -> dt.datetime:
    moment = dt.datetime.fromisoformat(_text(value))
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return moment.astimezone(dt.UTC)


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _decode_for(kind: Kind, dialect: str) -> Callable[[Any], Any]:
    """How a dumped value of a target column of ``kind`` becomes a parameter. A value of
    the wrong type is refused (ValueError), not stored as whatever SQLite would take."""
    if kind == "bytes":
        return lambda v: base64.b64decode(_text(v), validate=True)
    if kind == "int":
        return _integer
    if kind == "float":
        return _real
    if dialect == "sqlite" or kind == "text":
        return _text  # SQLite keeps times and JSON as text too
    if kind == "time":
        return _moment
    if kind == "bool":
        return _boolean
    return _json_text


# --- sources and targets --------------------------------------------------------------------

class Snapshot(Protocol):
    """One consistent read of a database."""

    dialect: str

    async def tables(self) -> list[Table]: ...

    async def applied_migrations(self) -> list[int]: ...

    async def count(self, table: Table) -> int: ...

    def rows(self, table: Table) -> AsyncIterator[list[tuple[Any, ...]]]: ...


def _sqlite_kind(declared: str) -> Kind:
    declared = declared.upper()
    if declared == "BLOB":
        return "bytes"
    if declared == "INTEGER":
        return "int"
    if declared == "REAL":
        return "float"
    return "text"  # times, JSON and text are all TEXT; the dump keeps them as they are


_PG_KINDS: dict[str, Kind] = {
    "bytea": "bytes", "timestamp with time zone": "time", "boolean": "bool",
    "jsonb": "json", "json": "json", "bigint": "int", "integer": "int", "smallint": "int",
    "double precision": "float", "real": "float",
}


def _sqlite_tables(conn: sqlite3.Connection) -> list[Table]:
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name")]
    tables = []
    for name in names:
        if name in SKIPPED:
            continue
        info = conn.execute(f'PRAGMA table_info("{name}")').fetchall()
        columns = tuple(Column(r[1], _sqlite_kind(r[2])) for r in info)
        key = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
        fks = conn.execute(f'PRAGMA foreign_key_list("{name}")').fetchall()
        parents = tuple(sorted({r[2] for r in fks if r[2] != name}))
        self_refs = tuple((r[3], r[4]) for r in fks if r[2] == name)
        tables.append(Table(name, columns, key, parents, self_refs))
    return tables


class SqliteSnapshot:
    """A read transaction on a SQLite file (WAL: a snapshot; writers go on meanwhile)."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    async def __aenter__(self) -> SqliteSnapshot:
        def begin() -> sqlite3.Connection:
            uri = Path(self.path).resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True,
                                   isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("BEGIN")
            # The snapshot starts with the first read, not with BEGIN: read now.
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        self._conn = await asyncio.to_thread(begin)
        return self

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(conn.close)

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BackupError("snapshot is not open")
        return self._conn

    async def tables(self) -> list[Table]:
        return await asyncio.to_thread(_sqlite_tables, self._c())

    async def applied_migrations(self) -> list[int]:
        found = await asyncio.to_thread(
            lambda: self._c().execute("SELECT version FROM schema_migrations").fetchall())
        return sorted(r[0] for r in found)

    async def count(self, table: Table) -> int:
        row = await asyncio.to_thread(
            lambda: self._c().execute(f'SELECT COUNT(*) FROM "{table.name}"').fetchone())
        return int(row[0])

    async def rows(self, table: Table) -> AsyncIterator[list[tuple[Any, ...]]]:
        cols = ", ".join(f'"{c}"' for c in table.column_names())
        order = f" ORDER BY {', '.join(table.key)}" if table.key else ""
        cursor = await asyncio.to_thread(
            self._c().execute, f'SELECT {cols} FROM "{table.name}"{order}')
        while True:
            batch = await asyncio.to_thread(cursor.fetchmany, _BATCH)
            if not batch:
                return
            yield [tuple(r) for r in batch]


_PG_TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname = current_schema() ORDER BY c.relname
"""
_PG_COLUMNS = """
SELECT column_name, data_type FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position
"""
_PG_KEY = """
SELECT a.attname FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)
"""
_PG_FKS = """
SELECT cl.relname AS parent, a.attname AS col, af.attname AS ref
FROM pg_constraint co
JOIN pg_class cl ON cl.oid = co.confrelid
JOIN pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = co.conkey[1]
JOIN pg_attribute af ON af.attrelid = co.confrelid AND af.attnum = co.confkey[1]
WHERE co.contype = 'f' AND co.conrelid = $1::regclass
"""


async def _pg_tables(conn: Any) -> list[Table]:
    tables = []
    for record in await conn.fetch(_PG_TABLES):
        name = record[0]
        if name in SKIPPED:
            continue
        columns = tuple(Column(r[0], _PG_KINDS.get(r[1], "text"))
                        for r in await conn.fetch(_PG_COLUMNS, name))
        key = tuple(r[0] for r in await conn.fetch(_PG_KEY, f'"{name}"'))
        fks = await conn.fetch(_PG_FKS, f'"{name}"')
        parents = tuple(sorted({r["parent"] for r in fks if r["parent"] != name}))
        self_refs = tuple((r["col"], r["ref"]) for r in fks if r["parent"] == name)
        tables.append(Table(name, columns, key, parents, self_refs))
    return tables


class PostgresSnapshot:
    """A REPEATABLE READ, READ ONLY transaction: one snapshot for every table."""

    dialect = "postgresql"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: Any = None
        self._tx: Any = None

    async def __aenter__(self) -> PostgresSnapshot:
        import asyncpg

        self._conn = await asyncpg.connect(self.dsn)
        self._tx = self._conn.transaction(isolation="repeatable_read", readonly=True)
        await self._tx.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._tx is not None:
            await self._tx.rollback()
        if self._conn is not None:
            await self._conn.close()
        self._conn = self._tx = None

    async def tables(self) -> list[Table]:
        return await _pg_tables(self._conn)

    async def applied_migrations(self) -> list[int]:
        return sorted(r[0] for r in await self._conn.fetch(
            "SELECT version FROM schema_migrations"))

    async def count(self, table: Table) -> int:
        return int(await self._conn.fetchval(f'SELECT COUNT(*) FROM "{table.name}"'))

    async def rows(self, table: Table) -> AsyncIterator[list[tuple[Any, ...]]]:
        cols = ", ".join(f'"{c}"' for c in table.column_names())
        order = f" ORDER BY {', '.join(table.key)}" if table.key else ""
        cursor = await self._conn.cursor(f'SELECT {cols} FROM "{table.name}"{order}')
        while True:
            batch = await cursor.fetch(_BATCH)
            if not batch:
                return
            yield [tuple(r) for r in batch]


def snapshot(url: str) -> SqliteSnapshot | PostgresSnapshot:
    """A snapshot of the database at ``url`` (the gateway's VCC_PKI_DATABASE_URL)."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path == ":memory:":
            raise BackupError("an in-memory SQLite database cannot be backed up")
        return SqliteSnapshot(path)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresSnapshot(url)
    raise BackupError(f"unknown database URL {url!r}")


# --- dump -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TableDump:
    name: str
    rows: int
    columns: tuple[Column, ...]
    path: Path


@dataclass(frozen=True, slots=True)
class Dump:
    dialect: str
    schema_version: int
    migrations: tuple[int, ...]
    tables: tuple[TableDump, ...]  # in load order
    pkcs11_keys: tuple[dict[str, str], ...]  # key references only: the keys stay in the HSM


async def dump(url: str, out_dir: Path, progress: Progress | None = None) -> Dump:
    """Every table of the database at ``url`` into ``out_dir/<table>.jsonl``, from one
    snapshot."""
    dumps: list[TableDump] = []
    hsm: list[dict[str, str]] = []
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    async with snapshot(url) as snap:
        applied = await snap.applied_migrations()
        for table in order_tables(await snap.tables()):
            total = await snap.count(table)
            encoders = _encoders(table.columns)
            names = table.column_names()
            key_cols = ("key_backend" in names and "key_ref" in names)
            done = 0
            path = out_dir / f"{table.name}.jsonl"
            with path.open("w", encoding="utf-8") as fh:
                async for batch in snap.rows(table):
                    for values in batch:
                        row = list(values)
                        for i, encode in encoders:
                            if row[i] is not None:
                                row[i] = encode(row[i])
                        record = dict(zip(names, row, strict=True))
                        fh.write(encoder.encode(record))
                        fh.write("\n")
                        if key_cols and record["key_backend"] == "pkcs11":
                            hsm.append({"table": table.name, "key_ref": record["key_ref"]})
                    done += len(batch)
                    if progress is not None:
                        progress(table.name, done, total)
            if progress is not None and done == 0:
                progress(table.name, 0, 0)
            dumps.append(TableDump(table.name, done, table.columns, path))
    return Dump(snap.dialect, schema_version(applied), tuple(applied), tuple(dumps),
                tuple(hsm))


# --- load -----------------------------------------------------------------------------------

def _read_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise BackupError(f"{path.name} line {number}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise BackupError(f"{path.name} line {number}: not a JSON object")
            yield row


def _batches(table: Table, path: Path, dialect: str) -> Iterator[list[tuple[Any, ...]]]:
    """Rows of a dump file as parameter tuples in ``table``'s column order."""
    names = table.column_names()
    decoders = [_decode_for(c.kind, dialect) for c in table.columns]
    source: Iterable[dict[str, Any]] = _read_rows(path)
    if table.self_refs:
        try:
            source = _parents_first(table, list(source))
        except TypeError:  # a list or object where a key belongs
            raise BackupError(f"{table.name}: a key column holds a list or object") from None
    batch: list[tuple[Any, ...]] = []
    for row in source:
        if set(row) != set(names):
            raise BackupError(
                f"{table.name}: the archive's columns ({', '.join(sorted(row))}) are not the "
                f"database's ({', '.join(sorted(names))})")
        try:
            batch.append(tuple(None if row[n] is None else decode(row[n])
                               for n, decode in zip(names, decoders, strict=True)))
        except (ValueError, TypeError) as exc:
            raise BackupError(f"{table.name}: a value cannot be read back ({exc})") from None
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _fixups(table: Table, path: Path, dialect: str) -> Iterator[tuple[Any, ...]]:
    """(value, key...) of the trigger-set column of each row, to set it back."""
    column, key = TRIGGER_SET[table.name]
    for row in _read_rows(path):
        yield (row[column], *(row[k] for k in key))


@dataclass(frozen=True, slots=True)
class LoadPlan:
    files: dict[str, Path]  # table name -> dump file
    expected: dict[str, int]  # table name -> rows, from the manifest
    force: bool


def _check_plan(tables: list[Table], plan: LoadPlan) -> None:
    have = {t.name for t in tables}
    missing = sorted(set(plan.files) - have)
    if missing:
        raise BackupError(f"the database has no table {', '.join(missing)} (an archive of "
                          "another schema)")


def _sqlite_load(path: str, plan: LoadPlan, progress: Progress | None) -> dict[str, int]:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = order_tables(_sqlite_tables(conn))
            _check_plan(tables, plan)
            counts = {t.name: conn.execute(f'SELECT COUNT(*) FROM "{t.name}"').fetchone()[0]
                      for t in tables}
            head = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_head").fetchone()[0]
            for sql in _refuse_or_clear(tables, counts, head, plan.force):
                conn.execute(sql)
            loaded: dict[str, int] = {}
            for table in tables:
                file = plan.files.get(table.name)
                if file is None:
                    continue
                if table.name in SEEDED:
                    conn.execute(f'DELETE FROM "{table.name}"')
                cols = table.column_names()
                sql = (f'INSERT INTO "{table.name}" ({", ".join(cols)}) VALUES '
                       f'({", ".join("?" * len(cols))})')
                done = 0
                for batch in _batches(table, file, "sqlite"):
                    conn.executemany(sql, batch)
                    done += len(batch)
                    if progress is not None:
                        progress(table.name, done, plan.expected.get(table.name, done))
                if table.name in TRIGGER_SET:
                    column, key = TRIGGER_SET[table.name]
                    where = " AND ".join(f"{k} = ?" for k in key)
                    conn.executemany(f'UPDATE "{table.name}" SET {column} = ? WHERE {where}',
                                     _fixups(table, file, "sqlite"))
                if progress is not None and done == 0:
                    progress(table.name, 0, 0)
                loaded[table.name] = done
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise BackupError(f"loading into {path}: {exc}") from exc
    finally:
        conn.close()
    return loaded


def _refuse_or_clear(tables: list[Table], counts: dict[str, int], head_seq: int,
                     force: bool) -> list[str]:
    """Refuse a database that holds data (unless ``force``); with ``force``, the statements
    that empty it. Seeded rows do not count: a fresh database has them (the audit head at
    seq 0)."""
    if not force:
        for table in tables:
            if table.name not in SEEDED and counts[table.name]:
                raise NotEmpty(f"the target database is not empty ({table.name} has rows); "
                               "restore into a new database, or use --force to replace "
                               "everything in it")
        if head_seq:
            raise NotEmpty("the target database is not empty (its audit log has entries)")
        return []
    return [f'DELETE FROM "{t.name}"' for t in reversed(tables) if t.name not in SEEDED]


async def _pg_load(dsn: str, plan: LoadPlan, progress: Progress | None) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            tables = order_tables(await _pg_tables(conn))
            _check_plan(tables, plan)
            # The gateways' write transactions take the audit head first (db.postgres): a
            # gateway still running on this database waits instead of interleaving.
            await conn.execute("LOCK TABLE audit_head IN EXCLUSIVE MODE")
            counts = {t.name: int(await conn.fetchval(f'SELECT COUNT(*) FROM "{t.name}"'))
                      for t in tables}
            head = int(await conn.fetchval("SELECT COALESCE(MAX(seq), 0) FROM audit_head"))
            for sql in _refuse_or_clear(tables, counts, head, plan.force):
                await conn.execute(sql)
            loaded: dict[str, int] = {}
            for table in tables:
                file = plan.files.get(table.name)
                if file is None:
                    continue
                if table.name in SEEDED:
                    await conn.execute(f'DELETE FROM "{table.name}"')
                cols = table.column_names()
                done = 0
                for batch in _batches(table, file, "postgresql"):
                    # COPY fires the row triggers as INSERT does (the audit head, the CRL
                    # generation), and is the fastest way in.
                    await conn.copy_records_to_table(table.name, records=batch, columns=cols)
                    done += len(batch)
                    if progress is not None:
                        progress(table.name, done, plan.expected.get(table.name, done))
                if table.name in TRIGGER_SET:
                    column, key = TRIGGER_SET[table.name]
                    where = " AND ".join(f"{k} = ${i}" for i, k in enumerate(key, 2))
                    await conn.executemany(
                        f'UPDATE "{table.name}" SET {column} = $1 WHERE {where}',
                        list(_fixups(table, file, "postgresql")))
                if progress is not None and done == 0:
                    progress(table.name, 0, 0)
                loaded[table.name] = done
            # Sequences behind serial/identity columns, past the loaded rows.
            for record in await conn.fetch(
                    "SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema()"
                    " AND (column_default LIKE 'nextval(%' OR is_identity = 'YES')"):
                table_name, column = record[0], record[1]
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('\"{table_name}\"', '{column}'),"
                    f' COALESCE((SELECT MAX("{column}") FROM "{table_name}"), 0) + 1, false)')
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError, TypeError) as exc:
        # InterfaceError includes asyncpg's DataError: a value of the wrong type for COPY.
        raise BackupError(f"loading into PostgreSQL: {exc}") from exc
    finally:
        await conn.close()
    return loaded


async def load(url: str, plan: LoadPlan, progress: Progress | None = None) -> dict[str, int]:
    """Load dump files into the (migrated) database at ``url`` in one transaction; the rows
    loaded per table. Raises NotEmpty for a database with data (unless ``plan.force``)."""
    if url.startswith("sqlite:///"):
        return await asyncio.to_thread(
            _sqlite_load, url.removeprefix("sqlite:///"), plan, progress)
    if url.startswith(("postgresql://", "postgres://")):
        return await _pg_load(url, plan, progress)
    raise BackupError(f"unknown database URL {url!r}")


async def count_rows(url: str) -> dict[str, int]:
    """Rows per dumped table now (what restore compares with the manifest)."""
    async with snapshot(url) as snap:
        return {t.name: await snap.count(t) for t in await snap.tables()}


def column_document(columns: Iterable[Column]) -> list[dict[str, str]]:
    return [dataclasses.asdict(c) for c in columns]
