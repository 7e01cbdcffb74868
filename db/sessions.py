"""The web admin page's sessions where every gateway process sees them: in Redis
(``VCC_PKI_REDIS_URL``; every process and replica knows every session, as they know every
ACME nonce, ``db.acme_state``), or, with several workers and no Redis, in the database
(``SqlSessions``, table ``web_sessions``). An entry is what ``ca_core.sessions`` hands over
(keyed by a hash of the session id, the token sealed under a key derived from it) and
expires with the session.

Errors::

    Unavailable   Redis or the database cannot be reached (the caller answers 503)
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable

from ca_core.errors import Unavailable
from ca_core.sessions import StoredSession
from ca_core.storage import StoreUnavailable
from db.sql import SqlStore

# Rows past their forget time are deleted at most this often, by whichever process puts a
# session then (a read never returns one, whether deleted yet or not).
SQL_CLEANUP_SECONDS = 60.0


def _dump(session: StoredSession) -> bytes:
    return json.dumps({
        "token": base64.b64encode(session.sealed_token).decode(), "csrf": session.csrf,
        "created_at": session.created_at.isoformat(), "last_used": session.last_used.isoformat(),
        "expires_at": session.expires_at.isoformat()}).encode()


def _load(raw: bytes | str) -> StoredSession | None:
    try:
        body = json.loads(raw)
        return StoredSession(base64.b64decode(body["token"]), str(body["csrf"]),
                             dt.datetime.fromisoformat(body["created_at"]),
                             dt.datetime.fromisoformat(body["last_used"]),
                             dt.datetime.fromisoformat(body["expires_at"]))
    except (ValueError, KeyError, TypeError):
        return None  # not ours, or damaged: no session


class RedisSessions:
    name = "redis"

    def __init__(self, url: str, prefix: str = "vcc-pki:session:", timeout: float = 1.0
                 ) -> None:
        # redis is imported by the Redis backend alone: every `vcc-pki` command opens the
        # services, few use Redis, and the import cost each command start ~0.12 s.
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        self._redis_error: type[Exception] = RedisError
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._prefix = prefix

    async def get(self, key: str) -> StoredSession | None:
        try:
            raw = await self._redis.get(self._prefix + key)
        except (self._redis_error, OSError) as exc:
            raise Unavailable(f"session table: {exc}") from exc
        return None if raw is None else _load(raw)

    async def put(self, key: str, session: StoredSession, ttl: dt.timedelta) -> None:
        try:
            await self._redis.set(self._prefix + key, _dump(session),
                                  px=max(1000, int(ttl.total_seconds() * 1000)))
        except (self._redis_error, OSError) as exc:
            raise Unavailable(f"session table: {exc}") from exc

    async def delete(self, key: str) -> None:
        try:
            await self._redis.delete(self._prefix + key)
        except (self._redis_error, OSError) as exc:
            raise Unavailable(f"session table: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()


class SqlSessions:
    """Sessions in the store's ``web_sessions`` table (migration 0021): what several
    workers without Redis share. A read per admin request and a write per request that
    uses a session (its last use); the admin page's traffic, not a protocol's."""

    name = "sql"

    def __init__(self, store: SqlStore,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._store = store
        self._clock = clock
        self._cleaned: dt.datetime | None = None

    async def get(self, key: str) -> StoredSession | None:
        try:
            return await self._store.get_web_session(key, self._clock())
        except StoreUnavailable as exc:
            raise Unavailable(f"session table: {exc}") from exc

    async def put(self, key: str, session: StoredSession, ttl: dt.timedelta) -> None:
        now = self._clock()
        due = self._cleaned is None or (now - self._cleaned).total_seconds() \
            >= SQL_CLEANUP_SECONDS
        try:
            await self._store.put_web_session(key, session, now + ttl)
            if due:
                self._cleaned = now
                await self._store.delete_web_sessions(forgotten_before=now)
        except StoreUnavailable as exc:
            raise Unavailable(f"session table: {exc}") from exc

    async def delete(self, key: str) -> None:
        try:
            await self._store.delete_web_sessions(key=key)
        except StoreUnavailable as exc:
            raise Unavailable(f"session table: {exc}") from exc

    async def close(self) -> None:
        pass  # the store is the gateway's, closed with it
