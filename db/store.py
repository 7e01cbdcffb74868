"""The store the gateway wires: every storage interface of ``ca_core.storage`` at once,
implemented once over SQL (``db.sql``) for SQLite (``db.sqlite``) and PostgreSQL
(``db.postgres``)."""

from __future__ import annotations

from db.sql import SqlStore as Store

__all__ = ["Store"]
