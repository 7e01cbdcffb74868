"""The in-process ACME nonce store (db/acme_state.MemoryAcmeState): a nonce is good once,
only as issued, until it expires or is pushed out by newer ones; and a flood of nonces
costs a bitmap, not memory per nonce (the hostile run of issue 16 saw the process grow
18 MiB while an ACME client sent garbage)."""

from __future__ import annotations

import tracemalloc

from db.acme_state import NONCE_TTL_SECONDS, MemoryAcmeState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_nonce_is_good_once() -> None:
    state = MemoryAcmeState()
    first, second = await state.issue_nonce(), await state.issue_nonce()
    assert first != second and len(first) == 32
    assert await state.consume_nonce(second)
    assert await state.consume_nonce(first)
    assert not await state.consume_nonce(first)
    assert not await state.consume_nonce(second)


async def test_only_nonces_as_issued_by_this_store() -> None:
    state = MemoryAcmeState()
    nonce = await state.issue_nonce()
    other = await MemoryAcmeState().issue_nonce()  # the same counter, another key
    flipped = nonce[:-1] + ("A" if nonce[-1] != "A" else "B")
    for bad in (other, flipped, nonce + "A", nonce[:-1], "", "é" * 32, nonce[:-1] + "=",
                nonce[:-1] + "+", "A" * 32, "\x00" * 32):
        assert not await state.consume_nonce(bad), bad
    assert await state.consume_nonce(nonce)


async def test_the_oldest_go_beyond_the_bound() -> None:
    state = MemoryAcmeState(max_nonces=16)
    nonces = [await state.issue_nonce() for _ in range(40)]
    assert not any([await state.consume_nonce(n) for n in nonces[:24]])
    assert all([await state.consume_nonce(n) for n in nonces[24:]])


async def test_nonces_expire() -> None:
    clock = Clock()
    state = MemoryAcmeState(clock=clock)
    old = await state.issue_nonce()
    clock.now += NONCE_TTL_SECONDS / 2
    young = await state.issue_nonce()
    clock.now += NONCE_TTL_SECONDS / 2 + 1
    assert not await state.consume_nonce(old)
    assert await state.consume_nonce(young)
    kept = await state.issue_nonce()
    clock.now += NONCE_TTL_SECONDS * 10  # long idle: everything outstanding expires at once
    fresh = await state.issue_nonce()
    assert not await state.consume_nonce(kept)
    assert await state.consume_nonce(fresh)


async def test_a_flood_of_nonces_costs_no_memory_per_nonce() -> None:
    state = MemoryAcmeState()
    await state.issue_nonce()
    tracemalloc.start()
    try:
        for _ in range(200_000):  # twice the bound: the ring wraps
            await state.issue_nonce()
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grown < 256 * 1024, grown  # the old store: about 190 bytes a nonce (18 MiB)
    last = await state.issue_nonce()
    assert await state.consume_nonce(last)
