"""SQL migrations per dialect: ``<dialect>/NNNN_name.sql``, applied in order at start."""

from __future__ import annotations

from importlib import resources


def migrations(dialect: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration of a dialect, in order."""
    found = []
    for entry in resources.files(__name__).joinpath(dialect).iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)
