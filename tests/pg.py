"""Throwaway PostgreSQL databases for tests (the server on 127.0.0.1:5432, never a mock).

``create_throwaway_database`` makes ``vcc_pki_test_<random hex>`` and returns its DSN;
``drop_database`` drops it again (and refuses any database not named like that).
``require_postgres`` skips a test when the server is not there, and fails it in CI.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import threading
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
_PREFIX = "vcc_pki_test_"


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def _database_of(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


async def create_throwaway_database(admin_dsn: str = ADMIN_DSN) -> str:
    """Create an empty ``vcc_pki_test_<hex>`` database; returns its DSN."""
    name = _PREFIX + secrets.token_hex(8)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_database(admin_dsn, name)


async def drop_database(dsn: str, admin_dsn: str | None = None) -> None:
    """Drop the database of ``dsn`` (a throwaway one only), ending its sessions first."""
    name = _database_of(dsn)
    if not name.startswith(_PREFIX) or not name[len(_PREFIX):].isalnum():
        raise ValueError(f"refusing to drop {name!r}: not a throwaway test database")
    conn = await asyncpg.connect(admin_dsn or _with_database(dsn, "postgres"))
    try:
        for attempt in range(5):
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                return
            except asyncpg.ObjectInUseError:  # a session was still going away
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await conn.close()


@functools.cache
def _postgres_problem(admin_dsn: str) -> str | None:
    """Why the server cannot be used, or None. Probed once, on a thread of its own so that
    it works from inside a running event loop too."""
    problem: list[str | None] = [None]

    async def probe() -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
        await conn.close()

    def run() -> None:
        try:
            asyncio.run(probe())
        except Exception as exc:
            problem[0] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run, name="postgres-probe")
    thread.start()
    thread.join()
    return problem[0]


def require_postgres(admin_dsn: str = ADMIN_DSN) -> None:
    """Skip the calling test when PostgreSQL cannot be reached; in CI, fail it instead (a
    test that cannot run in CI is a failure, not a pass)."""
    problem = _postgres_problem(admin_dsn)
    if problem is None:
        return
    message = f"PostgreSQL is not reachable at {admin_dsn}: {problem}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
