"""The backends of the OCSP response cache that ``ca_core.response_cache`` declares (its
docstring states the rules every backend keeps): ``MemoryResponseCache`` (in-process, the
default) and ``RedisResponseCache`` (``VCC_PKI_REDIS_URL``; shared by every gateway
process), chosen by configuration."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Sequence

from ca_core.response_cache import CachedResponse, CacheUnavailable, ResponseCache

log = logging.getLogger(__name__)

class MemoryResponseCache(ResponseCache):
    """A dict in this process, bounded (the oldest entries go first), with a refresh heap."""

    name = "memory"
    shared = False

    def __init__(self, max_entries: int = 200_000, clock: Callable[[], float] = time.time
                 ) -> None:
        self._max_entries = max(1, max_entries)
        self._clock = clock
        self._entries: dict[str, CachedResponse] = {}
        self._refresh_at: dict[str, int] = {}
        self._schedule: list[tuple[int, str]] = []
        self._applied: int | None = None

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is not None and entry.next_update <= self._clock():
            self._drop(key)
            return None
        return entry

    async def get_many(self, keys: Sequence[str]) -> list[CachedResponse | None]:
        return [await self.get(key) for key in keys]

    async def put(self, key: str, response: CachedResponse, refresh_at: int | None) -> bool:
        current = await self.get(key)
        if current is not None and current.revoked and not response.revoked:
            return False
        if response.next_update <= self._clock():
            self._drop(key)
            return True
        # Re-insert so that dict order is insertion order: the oldest entry is evicted first.
        self._entries.pop(key, None)
        self._entries[key] = response
        if refresh_at is None:
            self._refresh_at.pop(key, None)
        else:
            self._refresh_at[key] = refresh_at
            heapq.heappush(self._schedule, (refresh_at, key))
        while len(self._entries) > self._max_entries:
            self._drop(next(iter(self._entries)))
        if len(self._schedule) > 4 * max(len(self._refresh_at), 1024):
            # Lazy deletion leaves stale heap items behind; rebuild once they dominate.
            self._schedule = [(t, k) for k, t in self._refresh_at.items()]
            heapq.heapify(self._schedule)
        return True

    def _drop(self, key: str) -> None:
        self._entries.pop(key, None)
        self._refresh_at.pop(key, None)

    async def due(self, now: int, limit: int) -> list[str]:
        found: list[tuple[int, str]] = []
        seen: set[str] = set()
        while self._schedule and self._schedule[0][0] <= now and len(found) < limit:
            when, key = heapq.heappop(self._schedule)
            if self._refresh_at.get(key) == when and key not in seen:
                found.append((when, key))
                seen.add(key)
        for item in found:  # still due until put() or forget()
            heapq.heappush(self._schedule, item)
        return [key for _, key in found]

    async def forget(self, key: str) -> None:
        self._refresh_at.pop(key, None)

    async def applied_generation(self) -> int | None:
        return self._applied

    async def set_applied_generation(self, generation: int) -> None:
        self._applied = max(self._applied or 0, generation)

    async def ping(self) -> dict[str, object]:
        return {"backend": self.name, "entries": len(self._entries)}


# KEYS[1] entry, KEYS[2] refresh schedule (sorted set).
# ARGV[1] blob, ARGV[2] '1' if it says revoked, ARGV[3] expiry (ms since the epoch),
# ARGV[4] refresh time (s since the epoch) or '' for none, ARGV[5] schedule member.
_PUT = """
if ARGV[2] == '0' then
  local flags = redis.call('GETRANGE', KEYS[1], 0, 0)
  if flags ~= '' and string.byte(flags) % 2 == 1 then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[3])
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], ARGV[5])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
end
return 1
"""

# KEYS[1] the applied-generation key; ARGV[1] the new generation (kept if higher).
_RAISE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


class RedisResponseCache(ResponseCache):
    """Entries as Redis strings with PXAT expiry; the refresh schedule as a sorted set.

    After a failed call the cache reports itself unavailable for ``retry_after`` seconds
    instead of letting every request wait for a connection timeout; redis-py reconnects on
    the first call after that.
    """

    name = "redis"
    shared = True

    def __init__(
        self,
        url: str,
        prefix: str = "vcc-pki:ocsp:",
        timeout: float = 0.5,
        retry_after: float = 1.0,
    ) -> None:
        # redis is imported by the Redis backend alone: every `vcc-pki` command opens the
        # services, few use Redis, and the import cost each command start ~0.12 s.
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        self._redis_error: type[Exception] = RedisError
        self.prefix = prefix
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        self._schedule_key = f"{prefix}schedule"
        self._applied_key = f"{prefix}applied-generation"
        self._put_script = self._redis.register_script(_PUT)
        self._raise_script = self._redis.register_script(_RAISE)
        self._retry_after = retry_after
        self._down_until = 0.0
        self._url = url

    def _check(self) -> None:
        if self._down_until and time.monotonic() < self._down_until:
            raise CacheUnavailable("Redis is unavailable")

    def _failed(self, exc: BaseException) -> CacheUnavailable:
        if not self._down_until or time.monotonic() >= self._down_until:
            log.warning("Redis response cache unavailable: %s", exc)
        self._down_until = time.monotonic() + self._retry_after
        return CacheUnavailable(f"Redis is unavailable: {exc}")

    def _ok(self) -> None:
        if self._down_until:
            log.info("Redis response cache is back")
            self._down_until = 0.0

    async def get(self, key: str) -> CachedResponse | None:
        self._check()
        try:
            blob = await self._redis.get(self.prefix + key)
        except (self._redis_error, OSError) as exc:
            raise self._failed(exc) from exc
        if self._down_until:
            self._ok()
        return None if blob is None else CachedResponse.decode(_bytes(blob))

    async def get_many(self, keys: Sequence[str]) -> list[CachedResponse | None]:
        if not keys:
            return []
        self._check()
        try:
            blobs = await self._redis.mget([self.prefix + key for key in keys])
        except (self._redis_error, OSError) as exc:
            raise self._failed(exc) from exc
        self._ok()
        return [None if blob is None else CachedResponse.decode(_bytes(blob)) for blob in blobs]

    def _put_args(self, key: str, response: CachedResponse, refresh_at: int | None
                  ) -> tuple[list[str], list[bytes | str | int]]:
        return (
            [self.prefix + key, self._schedule_key],
            [response.encode(), "1" if response.revoked else "0",
             response.next_update * 1000, "" if refresh_at is None else refresh_at, key],
        )

    async def put(self, key: str, response: CachedResponse, refresh_at: int | None) -> bool:
        return (await self.put_many([(key, response, refresh_at)]))[0]

    async def put_many(
        self, items: Sequence[tuple[str, CachedResponse, int | None]]
    ) -> list[bool]:
        if not items:
            return []
        self._check()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, response, refresh_at in items:
                    keys, args = self._put_args(key, response, refresh_at)
                    await self._put_script(keys=keys, args=args, client=pipe)
                results = await pipe.execute()
        except (self._redis_error, OSError) as exc:
            raise self._failed(exc) from exc
        self._ok()
        return [bool(r) for r in results]

    async def due(self, now: int, limit: int) -> list[str]:
        self._check()
        try:
            members = await self._redis.zrangebyscore(
                self._schedule_key, "-inf", now, start=0, num=limit)
        except (self._redis_error, OSError) as exc:
            raise self._failed(exc) from exc
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    async def forget(self, key: str) -> None:
        self._check()
        try:
            await self._redis.zrem(self._schedule_key, key)
        except (self._redis_error, OSError) as exc:
            raise self._failed(exc) from exc

    async def applied_generation(self) -> int | None:
        self._check()
        try:
            value = await self._redis.get(self._applied_key)
        except (self._redis_error, OSError) as exc:
            raise self._failed(exc) from exc
        return None if value is None else int(value)

    async def set_applied_generation(self, generation: int) -> None:
        self._check()
        try:
            await self._raise_script(keys=[self._applied_key], args=[generation])
        except (self._redis_error, OSError) as exc:
            raise self._failed(exc) from exc

    async def ping(self) -> dict[str, object]:
        started = time.perf_counter()
        try:
            await self._redis.ping()
        except (self._redis_error, OSError) as exc:
            raise self._failed(exc) from exc
        self._ok()
        return {"backend": self.name,
                "ping_ms": round((time.perf_counter() - started) * 1000, 3)}

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._redis.aclose(), timeout=5)
        except (self._redis_error, OSError, TimeoutError) as exc:
            log.debug("closing the Redis client: %s", exc)
