"""ACME nonces across replicas (issue 16: "a nonce replayed across replicas"). Two gateway
processes, here two sets of services with their own apps, share one PostgreSQL store and
one Redis (VCC_PKI_REDIS_URL), as replicas behind a load balancer do: a nonce that one
replica handed out is good once at either, and a replay at either replica is badNonce.
Without Redis each process knows only its own nonces: another's is badNonce, which ACME
clients answer by retrying with the fresh nonce that comes with it (RFC 8555 6.5)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import build_https_app
from tests.acme_client import AccountKey, Client
from tests.helpers import fresh_services
from tests.pg import create_throwaway_database, drop_database, require_postgres
from tests.redisutil import REDIS_URL, delete_prefix, require_redis, unique_prefix

ClientFactory = Callable[..., Any]
BAD_NONCE = "urn:ietf:params:acme:error:badNonce"

pytestmark = [pytest.mark.postgres]


async def _replicas(tmp_path: Path, aiohttp_client: ClientFactory, stack: AsyncExitStack,
                    **env: str) -> tuple[TestClient, TestClient]:
    require_postgres()
    dsn = await create_throwaway_database()
    stack.push_async_callback(drop_database, dsn)
    clients = []
    for _replica in ("a", "b"):  # each: its own services, app and in-process state
        services = await stack.enter_async_context(fresh_services(
            tmp_path, VCC_PKI_DATABASE_URL=dsn, **env))
        clients.append(await aiohttp_client(build_https_app(services)))
    return clients[0], clients[1]


async def _register(client: TestClient, key: AccountKey, nonce: str) -> Any:
    acme = Client(client, key)
    await acme.load()
    return await acme.post(acme.directory["newAccount"], {
        "termsOfServiceAgreed": True}, use_jwk=True, nonce=nonce)


async def _nonce(client: TestClient) -> str:
    return str((await client.head("/acme/default/new-nonce")).headers["Replay-Nonce"])


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    require_redis()
    prefix = unique_prefix()
    yield prefix
    await delete_prefix(prefix)


@pytest.mark.redis
async def test_a_nonce_is_good_once_across_replicas_sharing_redis(
        tmp_path: Path, aiohttp_client: ClientFactory, redis_prefix: str) -> None:
    async with AsyncExitStack() as stack:
        a, b = await _replicas(tmp_path, aiohttp_client, stack,
                               VCC_PKI_REDIS_URL=REDIS_URL,
                               VCC_PKI_REDIS_KEY_PREFIX=redis_prefix)
        key = AccountKey.make("ec-p256")
        nonce = await _nonce(a)
        first = await _register(b, key, nonce)  # issued by a, used at b
        assert first.status == 201, await first.text()
        for replica in (a, b):  # replayed at either
            replay = await _register(replica, key, nonce)
            assert replay.status == 400
            assert (await replay.json(content_type=None))["type"] == BAD_NONCE
            assert replay.headers["Replay-Nonce"]  # a fresh one to retry with


async def test_without_redis_another_replicas_nonce_is_bad_and_retry_works(
        tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    async with AsyncExitStack() as stack:
        a, b = await _replicas(tmp_path, aiohttp_client, stack)
        key = AccountKey.make("ec-p256")
        refused = await _register(b, key, await _nonce(a))
        assert refused.status == 400
        assert (await refused.json(content_type=None))["type"] == BAD_NONCE
        retry = await _register(b, key, refused.headers["Replay-Nonce"])
        assert retry.status == 201, await retry.text()
        replay = await _register(a, key, refused.headers["Replay-Nonce"])
        assert (await replay.json(content_type=None))["type"] == BAD_NONCE
