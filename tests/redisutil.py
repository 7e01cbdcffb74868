"""Redis for tests: the server on 127.0.0.1:6379 (``VCC_PKI_TEST_REDIS_URL`` overrides),
never a mock.

Tests share the server with others, so each test works under its own random key prefix
(``unique_prefix``) and ``delete_prefix`` removes exactly those keys afterwards: nothing
here flushes a database. ``require_redis`` skips a test when the server is not there, and
fails it in CI (CI=true), like ``require_postgres`` and ``require_softhsm``.
"""

from __future__ import annotations

import functools
import os
import secrets

import pytest
import redis
import redis.asyncio as aioredis

REDIS_URL = os.environ.get("VCC_PKI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_PREFIX = "vcc-pki-test-"


@functools.cache
def _redis_problem(url: str) -> str | None:
    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require_redis(url: str = REDIS_URL) -> None:
    problem = _redis_problem(url)
    if problem is None:
        return
    message = f"Redis is not reachable at {url}: {problem}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def unique_prefix() -> str:
    return f"{_PREFIX}{secrets.token_hex(6)}:"


async def delete_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Delete the keys under ``prefix`` (a test prefix only)."""
    if not prefix.startswith(_PREFIX) or len(prefix) < len(_PREFIX) + 8:
        raise ValueError(f"refusing to delete keys under {prefix!r}: not a test prefix")
    client = aioredis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()
