"""SQL migrations, applied in order at start: ``<dialect>/NNNN_name.sql`` and, written once
for both dialects, ``common/NNNN_name.sql``.

A common migration spells the column types that differ as tokens, which each dialect
renders: ``{time}`` (UTC text that sorts like the instant / TIMESTAMPTZ), ``{bytes}``
(BLOB / BYTEA), ``{json}`` (TEXT / JSONB), ``{bool}``, ``{false}``, ``{true}`` (INTEGER 0/1 /
BOOLEAN), ``{bigint}``, ``{double}``, ``{without_rowid}`` (a clustered table on SQLite) and
``{collate_c}`` (byte order on PostgreSQL; SQLite's TEXT order is bytewise). A dialect file
of the same version adds what only that dialect has (a trigger, say) after the common part.
A new table is written once.
"""

from __future__ import annotations

import re
from importlib import resources

TYPES: dict[str, dict[str, str]] = {
    "sqlite": {"time": "TEXT", "bytes": "BLOB", "json": "TEXT", "bool": "INTEGER",
               "false": "0", "true": "1", "bigint": "INTEGER", "double": "REAL",
               "without_rowid": " WITHOUT ROWID", "collate_c": ""},
    "postgres": {"time": "TIMESTAMPTZ", "bytes": "BYTEA", "json": "JSONB", "bool": "BOOLEAN",
                 "false": "FALSE", "true": "TRUE", "bigint": "BIGINT",
                 "double": "DOUBLE PRECISION", "without_rowid": "", "collate_c": ' COLLATE "C"'},
}
_TOKEN = re.compile(r"\{(" + "|".join(TYPES["sqlite"]) + r")\}")


def render(sql: str, dialect: str) -> str:
    """A common migration in ``dialect``'s spelling."""
    types = TYPES[dialect]
    return _TOKEN.sub(lambda m: types[m.group(1)], sql)


def _files(folder: str) -> dict[int, tuple[str, str]]:
    found: dict[int, tuple[str, str]] = {}
    for entry in resources.files(__name__).joinpath(folder).iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found[version] = (entry.name, entry.read_text(encoding="utf-8"))
    return found


def migrations(dialect: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration of a dialect, in order."""
    own, common = _files(dialect), _files("common")
    merged: list[tuple[int, str, str]] = []
    for version in sorted(own.keys() | common.keys()):
        if version in common:
            name, sql = common[version]
            extra = own.get(version)
            merged.append((version, name, render(sql, dialect)
                           + ("\n" + extra[1] if extra else "")))
        else:
            merged.append((version, *own[version]))
    return merged


def common_versions() -> list[int]:
    """Versions of the migrations written for both dialects: the ones that shape the tables
    (a dialect's own files add triggers and indexes). ``db.backup`` names a schema by them."""
    return sorted(_files("common"))
