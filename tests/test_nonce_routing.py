"""db.nonce_routing: nonces of several workers without a shared store, routed over real
unix sockets to the worker that issued them (issue 18)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from db.nonce_routing import RoutedAcmeState, socket_address


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[RoutedAcmeState, RoutedAcmeState]]:
    addresses = [socket_address(tmp_path, i) for i in range(2)]
    one, two = RoutedAcmeState(0, addresses), RoutedAcmeState(1, addresses)
    await one.start()
    await two.start()
    try:
        yield one, two
    finally:
        await one.close()
        await two.close()


async def test_a_nonce_is_good_once_on_any_worker(
        pair: tuple[RoutedAcmeState, RoutedAcmeState]) -> None:
    one, two = pair
    for issuer, other in ((one, two), (two, one)):
        routed, local = await issuer.issue_nonce(), await issuer.issue_nonce()
        assert await other.consume_nonce(routed)  # asked of its issuer over the socket
        assert not await other.consume_nonce(routed)
        assert not await issuer.consume_nonce(routed)
        assert await issuer.consume_nonce(local)  # its own: in memory
        assert not await other.consume_nonce(local)


async def test_a_forged_prefix_is_refused(
        pair: tuple[RoutedAcmeState, RoutedAcmeState]) -> None:
    one, two = pair
    raw = bytearray(base64.urlsafe_b64decode(await one.issue_nonce()))
    raw[0] = 1  # claims to be worker 1's: its MAC does not hold there
    forged = base64.urlsafe_b64encode(bytes(raw)).decode()
    assert not await one.consume_nonce(forged)
    assert not await two.consume_nonce(forged)
    raw[0] = 7  # no such worker
    assert not await one.consume_nonce(base64.urlsafe_b64encode(bytes(raw)).decode())
    for junk in ("", "a\nb" * 11, "é" * 32, "x" * 200):
        assert not await two.consume_nonce(junk)


async def test_an_unreachable_owner_means_bad_nonce(tmp_path: Path) -> None:
    addresses = [socket_address(tmp_path, i) for i in range(2)]
    one, two = RoutedAcmeState(0, addresses), RoutedAcmeState(1, addresses)
    await one.start()
    try:
        assert not await one.consume_nonce(await two.issue_nonce())  # two never listened
        await two.start()
        nonce = await two.issue_nonce()
        assert await one.consume_nonce(nonce)
        await two.close()  # a worker restarting: its connection goes, then the socket
        assert not await one.consume_nonce(await two.issue_nonce())
        restarted = RoutedAcmeState(1, addresses)
        await restarted.start()
        try:
            assert not await one.consume_nonce(nonce)  # its predecessor's
            assert await one.consume_nonce(await restarted.issue_nonce())
        finally:
            await restarted.close()
    finally:
        await one.close()


def test_a_long_data_dir_gets_an_abstract_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    assert socket_address(deep, 3).startswith("\0vcc-pki-nonce-")
    assert socket_address(deep, 3) != socket_address(deep, 2)
    assert socket_address(tmp_path, 0).endswith("/run/nonce-0.sock")


async def test_many_questions_at_once_share_one_connection(
        pair: tuple[RoutedAcmeState, RoutedAcmeState]) -> None:
    one, two = pair
    nonces = [await two.issue_nonce() for _ in range(200)]
    answers = await asyncio.gather(*(one.consume_nonce(n) for n in nonces + nonces[:50]))
    assert sum(answers) == 200  # each once, in whichever order the answers come
    assert len(one._peers) == 1


def test_serve_routes_only_with_several_workers_and_no_redis(tmp_path: Path) -> None:
    from db.acme_state import MemoryAcmeState, RedisAcmeState
    from gateway.config import load_config
    from gateway.runtime import make_acme_state

    config = load_config({"VCC_PKI_DATA_DIR": str(tmp_path), "VCC_PKI_WORKERS": "3"})
    routed = make_acme_state(config, worker=2)
    assert isinstance(routed, RoutedAcmeState) and routed.index == 2
    assert isinstance(make_acme_state(config), MemoryAcmeState)  # not `serve`: no socket
    single = load_config({"VCC_PKI_DATA_DIR": str(tmp_path), "VCC_PKI_WORKERS": "1"})
    assert isinstance(make_acme_state(single, worker=0), MemoryAcmeState)
    redis = load_config({"VCC_PKI_DATA_DIR": str(tmp_path), "VCC_PKI_WORKERS": "3",
                         "VCC_PKI_REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert isinstance(make_acme_state(redis, worker=1), RedisAcmeState)
