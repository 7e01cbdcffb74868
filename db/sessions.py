"""The web admin page's sessions in Redis (``VCC_PKI_REDIS_URL``): every gateway process
and replica knows every session, as they know every ACME nonce (``db.acme_state``). An
entry is what ``ca_core.sessions`` hands over (keyed by a hash of the session id, the token
sealed under a key derived from it) and expires with the session.

Errors::

    Unavailable   Redis cannot be reached (the caller answers 503)
"""

from __future__ import annotations

import base64
import datetime as dt
import json

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ca_core.errors import Unavailable
from ca_core.sessions import StoredSession


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
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._prefix = prefix

    async def get(self, key: str) -> StoredSession | None:
        try:
            raw = await self._redis.get(self._prefix + key)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"session table: {exc}") from exc
        return None if raw is None else _load(raw)

    async def put(self, key: str, session: StoredSession, ttl: dt.timedelta) -> None:
        try:
            await self._redis.set(self._prefix + key, _dump(session),
                                  px=max(1000, int(ttl.total_seconds() * 1000)))
        except (RedisError, OSError) as exc:
            raise Unavailable(f"session table: {exc}") from exc

    async def delete(self, key: str) -> None:
        try:
            await self._redis.delete(self._prefix + key)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"session table: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
