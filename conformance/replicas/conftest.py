"""Fixtures of the replica tests: a throwaway PostgreSQL database, a Redis key prefix."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.pg import create_throwaway_database, drop_database, require_postgres
from tests.redisutil import REDIS_URL, delete_prefix, require_redis, unique_prefix


@pytest.fixture
def database_url() -> Iterator[str]:
    require_postgres()
    dsn = asyncio.run(create_throwaway_database())
    try:
        yield dsn
    finally:
        asyncio.run(drop_database(dsn))


@pytest.fixture
def redis_env() -> Iterator[dict[str, str]]:
    require_redis()
    prefix = unique_prefix()
    try:
        yield {"VCC_PKI_REDIS_URL": REDIS_URL, "VCC_PKI_REDIS_KEY_PREFIX": prefix}
    finally:
        asyncio.run(delete_prefix(prefix))
