"""db.sessions.SqlSessions: admin web sessions in the database, shared by the serving
processes of a gateway without Redis (issue 18), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ca_core.errors import Forbidden, Unauthorized
from ca_core.sessions import StoredSession, WebSessions
from db.sessions import SqlSessions
from db.sql import SqlStore
from gateway.runtime import Services
from tests.test_web_admin import ADMIN, Clock

T0 = dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def two_stores(request: pytest.FixtureRequest, tmp_path: Path
                     ) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    """Two stores on one database: what two worker processes hold."""
    if request.param == "sqlite":
        from db.sqlite import SqliteStore

        url = f"sqlite:///{tmp_path / 'pki.db'}"
        stores: tuple[SqlStore, SqlStore] = (SqliteStore.from_url(url),
                                             SqliteStore.from_url(url))
        drop = None
    else:
        from db.postgres import PostgresStore
        from tests.pg import create_throwaway_database, drop_database, require_postgres

        require_postgres()
        url = await create_throwaway_database()
        stores = (PostgresStore.from_url(url), PostgresStore.from_url(url))
        drop = url
    for store in stores:
        await store.open()
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()
        if drop is not None:
            await drop_database(drop)


async def test_a_session_put_by_one_process_is_read_by_the_other(
        two_stores: tuple[SqlStore, SqlStore]) -> None:
    now = [T0]
    one, two = (SqlSessions(store, clock=lambda: now[0]) for store in two_stores)
    stored = StoredSession(b"\x00sealed\xff", "csrf", T0, T0, T0 + dt.timedelta(hours=8))
    await one.put("k1", stored, dt.timedelta(minutes=30))
    assert await two.get("k1") == stored
    later = StoredSession(stored.sealed_token, "csrf", T0, T0 + dt.timedelta(minutes=5),
                          stored.expires_at)
    await two.put("k1", later, dt.timedelta(minutes=30))  # a use: the same row, updated
    assert await one.get("k1") == later
    await one.delete("k1")
    assert await two.get("k1") is None
    assert await two.get("never") is None


async def test_past_their_time_sessions_are_gone_and_cleaned_up(
        two_stores: tuple[SqlStore, SqlStore]) -> None:
    now = [T0]
    table = SqlSessions(two_stores[0], clock=lambda: now[0])
    stored = StoredSession(b"sealed", "csrf", T0, T0, T0 + dt.timedelta(hours=8))
    await table.put("old", stored, dt.timedelta(minutes=1))
    now[0] = T0 + dt.timedelta(minutes=2)
    assert await table.get("old") is None  # past its forget time: no session
    now[0] = T0 + dt.timedelta(hours=1)
    await table.put("new", stored, dt.timedelta(minutes=30))  # the cleanup is due: it runs
    now[0] = T0  # were the row still there, it would be read again
    assert await table.get("old") is None
    assert await table.get("new") == stored


async def test_sign_in_on_one_worker_holds_on_the_other(services: Services) -> None:
    clock = Clock()
    store = services.store
    assert isinstance(store, SqlStore)
    other = type(store).from_url(services.config.effective_database_url)  # type: ignore[attr-defined]
    await other.open()
    try:
        one = WebSessions(services.authority, table=SqlSessions(store, clock), clock=clock)
        two = WebSessions(services.authority, table=SqlSessions(other, clock), clock=clock)
        token = (await services.authority.create_token("default", "cert_manager",
                                                       principal=ADMIN)).token
        session, principal = await one.open(token)
        _, again = await two.resolve(session.session_id, session.csrf, True)
        assert again == principal
        with pytest.raises(Forbidden):
            await two.resolve(session.session_id, "wrong", True)
        await two.close(session.session_id)
        with pytest.raises(Unauthorized):
            await one.resolve(session.session_id, None, False)
    finally:
        await other.close()
