"""Short-lived ACME state that is not worth a database row: replay nonces and rate-limit
counters. In-process by default; in Redis (``VCC_PKI_REDIS_URL``) when several gateway
processes must agree (a nonce issued by one process is accepted by every other).

Errors::

    StateUnavailable   Redis cannot be reached (the caller answers serverInternal)
"""

from __future__ import annotations

import time
from collections import OrderedDict

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ca_core.acme_state import AcmeState, StateUnavailable, new_nonce

NONCE_TTL_SECONDS = 3600
MAX_MEMORY_NONCES = 100_000


class MemoryAcmeState(AcmeState):
    name = "memory"

    def __init__(self, max_nonces: int = MAX_MEMORY_NONCES) -> None:
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._max = max_nonces
        self._windows: dict[str, tuple[float, int]] = {}

    async def issue_nonce(self) -> str:
        nonce = new_nonce()
        now = time.monotonic()
        self._nonces[nonce] = now + NONCE_TTL_SECONDS
        # Oldest first: drop expired ones, and the oldest beyond the bound.
        while self._nonces:
            oldest, expires = next(iter(self._nonces.items()))
            if expires > now and len(self._nonces) <= self._max:
                break
            del self._nonces[oldest]
        return nonce

    async def consume_nonce(self, nonce: str) -> bool:
        expires = self._nonces.pop(nonce, None)
        return expires is not None and expires > time.monotonic()

    async def hit(self, key: str, limit: int, window_seconds: int) -> float | None:
        now = time.time()
        window_start = now - now % window_seconds
        start, count = self._windows.get(key, (window_start, 0))
        if start != window_start:
            start, count = window_start, 0
        count += 1
        self._windows[key] = (start, count)
        if len(self._windows) > 100_000:
            self._windows = {k: v for k, v in self._windows.items() if v[0] == window_start}
        if count > limit:
            return start + window_seconds - now
        return None


class RedisAcmeState(AcmeState):
    name = "redis"

    def __init__(self, url: str, prefix: str = "vcc-pki:acme:", timeout: float = 1.0) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._prefix = prefix

    async def issue_nonce(self) -> str:
        nonce = new_nonce()
        try:
            await self._redis.set(f"{self._prefix}nonce:{nonce}", b"1", ex=NONCE_TTL_SECONDS)
        except (RedisError, OSError) as exc:
            raise StateUnavailable(str(exc)) from exc
        return nonce

    async def consume_nonce(self, nonce: str) -> bool:
        if len(nonce) > 64:
            return False
        try:
            deleted = await self._redis.delete(f"{self._prefix}nonce:{nonce}")
        except (RedisError, OSError) as exc:
            raise StateUnavailable(str(exc)) from exc
        return bool(deleted == 1)

    async def hit(self, key: str, limit: int, window_seconds: int) -> float | None:
        now = time.time()
        window_start = int(now - now % window_seconds)
        redis_key = f"{self._prefix}rate:{key}:{window_start}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(redis_key)
                pipe.expire(redis_key, window_seconds + 5)
                count, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StateUnavailable(str(exc)) from exc
        if int(count) > limit:
            return window_start + window_seconds - now
        return None

    async def close(self) -> None:
        await self._redis.aclose()
