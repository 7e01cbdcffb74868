"""Short-lived ACME state that is not worth a database row: replay nonces and rate-limit
counters. In-process by default; in Redis (``VCC_PKI_REDIS_URL``) when several gateway
processes must agree (a nonce issued by one process is accepted by every other).

Errors::

    StateUnavailable   Redis cannot be reached (the caller answers serverInternal)
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable

from ca_core.acme_state import AcmeState, StateUnavailable, new_nonce

NONCE_TTL_SECONDS = 3600
MAX_MEMORY_NONCES = 100_000
_COUNTER_BYTES = 8
_MAC_BYTES = 16  # 128 bits: what makes a nonce unguessable (RFC 8555 6.5.1)
_NONCE_CHARS = 4 * (_COUNTER_BYTES + _MAC_BYTES) // 3  # base64url, no padding needed


class MemoryAcmeState(AcmeState):
    """Nonces of one process. A nonce is a counter and its MAC under a key of this process,
    so what must be remembered is only which outstanding counters are still unused: one bit
    each. Every ACME answer carries a fresh nonce, errors too, so a client sending garbage
    makes the gateway issue them as fast as it can send; a dictionary entry per nonce (about
    190 bytes) grew the process by 18 MiB until the bound, the bitmap costs max_nonces / 8
    bytes from the start (issue 16, the hostile run). Beyond the bound or after
    NONCE_TTL_SECONDS the oldest go first; a client holding one retries on badNonce (RFC
    8555 6.5)."""

    name = "memory"

    def __init__(self, max_nonces: int = MAX_MEMORY_NONCES,
                 clock: Callable[[], float] = time.monotonic, counter_base: int = 0) -> None:
        self._key = secrets.token_bytes(32)
        self._max = max_nonces
        self._clock = clock
        # Counters start at counter_base: db.nonce_routing puts a worker's index in the top
        # byte, inside the MACed counter, so that a nonce names its issuer unforgeably.
        self._next = counter_base  # the counter of the next nonce
        self._floor = counter_base  # counters below it are expired or evicted
        self._unused = bytearray((max_nonces + 7) // 8)  # a ring: bit n % max for counter n
        # (first counter, its expiry), at most one a second: counters from one entry up to
        # the next expire together (up to a second late, never early).
        self._issued: deque[tuple[int, float]] = deque()
        self._windows: dict[str, tuple[float, int]] = {}

    def _mac(self, counter: bytes) -> bytes:
        # hmac.digest: OpenSSL's one-shot HMAC, no HMAC object (2.4x less CPU than
        # hmac.new(...).digest(), and every ACME request issues one nonce and checks one).
        return hmac.digest(self._key, counter, "sha256")[:_MAC_BYTES]

    def _bit(self, counter: int) -> tuple[int, int]:
        slot = counter % self._max
        return slot >> 3, 1 << (slot & 7)

    def _drop_below(self, counter: int) -> None:
        if counter - self._floor >= self._max:  # all of them (after a long idle time)
            self._unused[:] = bytes(len(self._unused))
            self._floor = counter
        while self._floor < counter:
            at, mask = self._bit(self._floor)
            self._unused[at] &= ~mask
            self._floor += 1

    def _expire(self, now: float) -> None:
        while self._issued and self._issued[0][1] + 1 <= now:
            self._issued.popleft()
            self._drop_below(self._issued[0][0] if self._issued else self._next)

    async def issue_nonce(self) -> str:
        now = self._clock()
        self._expire(now)
        counter = self._next
        self._next += 1
        self._drop_below(self._next - self._max)  # the oldest beyond the bound
        at, mask = self._bit(counter)
        self._unused[at] |= mask
        expires = now + NONCE_TTL_SECONDS
        if not self._issued or self._issued[-1][1] + 1 <= expires:
            self._issued.append((counter, expires))
        raw = counter.to_bytes(_COUNTER_BYTES, "big")
        return base64.urlsafe_b64encode(raw + self._mac(raw)).decode("ascii")

    async def consume_nonce(self, nonce: str) -> bool:
        if len(nonce) != _NONCE_CHARS or not nonce.isascii():
            return False
        try:
            # validate: no character skipped, so one nonce has exactly one spelling.
            raw = base64.b64decode(nonce, altchars=b"-_", validate=True)
        except (ValueError, binascii.Error):
            return False
        counter_bytes, mac = raw[:_COUNTER_BYTES], raw[_COUNTER_BYTES:]
        if not hmac.compare_digest(mac, self._mac(counter_bytes)):
            return False
        self._expire(self._clock())
        counter = int.from_bytes(counter_bytes, "big")
        if not self._floor <= counter < self._next:
            return False
        at, mask = self._bit(counter)
        if not self._unused[at] & mask:
            return False
        self._unused[at] &= ~mask
        return True

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
        # redis is imported by the Redis backend alone: every `vcc-pki` command opens the
        # services, few use Redis, and the import cost each command start ~0.12 s.
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        self._redis_error: type[Exception] = RedisError
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._prefix = prefix

    async def issue_nonce(self) -> str:
        nonce = new_nonce()
        try:
            await self._redis.set(f"{self._prefix}nonce:{nonce}", b"1", ex=NONCE_TTL_SECONDS)
        except (self._redis_error, OSError) as exc:
            raise StateUnavailable(str(exc)) from exc
        return nonce

    async def consume_nonce(self, nonce: str) -> bool:
        if len(nonce) > 64:
            return False
        try:
            deleted = await self._redis.delete(f"{self._prefix}nonce:{nonce}")
        except (self._redis_error, OSError) as exc:
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
        except (self._redis_error, OSError) as exc:
            raise StateUnavailable(str(exc)) from exc
        if int(count) > limit:
            return window_start + window_seconds - now
        return None

    async def close(self) -> None:
        await self._redis.aclose()
