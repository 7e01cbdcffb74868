"""What a nonce consumed by another worker costs (issue 18, db.nonce_routing).

Worker 1 runs in a child process (its own event loop, as a real worker), issues nonces and
answers on its unix socket; worker 0, here, consumes them: one at a time (latency of a
routed consume: wall and this process's CPU) and ``--concurrency`` at once (throughput over
the one connection). A local consume (the issuer's own nonce, in memory) is measured for
comparison. A benchmark, not a test: it prints figures and never fails on them.

    .venv/bin/python -m conformance.bench.nonces [--count 20000] [--concurrency 64]
        [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

from db.nonce_routing import RoutedAcmeState, socket_address


def _use_loop(loop: str) -> None:
    if loop == "uvloop":  # as the gateway (VCC_PKI_EVENT_LOOP=auto, uvloop installed)
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _owner(addresses: list[str], count: int, pipe: Connection, loop: str) -> None:
    _use_loop(loop)

    async def main() -> None:
        state = RoutedAcmeState(1, addresses, max_nonces=max(count, 100_000))
        await state.start()
        pipe.send([await state.issue_nonce() for _ in range(count)])
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # until told
        await state.close()

    asyncio.run(main())


def _us(values: list[float]) -> str:
    values = sorted(values)
    return (f"median {statistics.median(values) * 1e6:.1f} µs, "
            f"p99 {values[int(len(values) * 0.99)] * 1e6:.1f} µs")


async def _measure(addresses: list[str], remote: list[str], concurrency: int) -> None:
    state = RoutedAcmeState(0, addresses, max_nonces=max(len(remote), 100_000))
    await state.start()
    try:
        half = len(remote) // 2
        walls: list[float] = []
        cpu0 = time.process_time()
        for nonce in remote[:half]:
            start = time.perf_counter()
            assert await state.consume_nonce(nonce)
            walls.append(time.perf_counter() - start)
        cpu = (time.process_time() - cpu0) / half
        print(f"routed consume, one at a time: {_us(walls)}; "
              f"this worker's CPU {cpu * 1e6:.1f} µs each")
        queue = remote[half:]
        start = time.perf_counter()

        async def consumer() -> None:
            while queue:
                assert await state.consume_nonce(queue.pop())

        await asyncio.gather(*(consumer() for _ in range(concurrency)))
        took = time.perf_counter() - start
        print(f"routed consume, {concurrency} at once: {(len(remote) - half) / took:,.0f}/s")
        local = [await state.issue_nonce() for _ in range(half)]
        walls = []
        for nonce in local:
            start = time.perf_counter()
            assert await state.consume_nonce(nonce)
            walls.append(time.perf_counter() - start)
        print(f"local consume (own nonce, in memory): {_us(walls)}")
    finally:
        await state.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    _use_loop(args.loop)
    with tempfile.TemporaryDirectory() as tmp:
        addresses = [socket_address(Path(tmp), i) for i in range(2)]
        ours, theirs = multiprocessing.Pipe()
        child = multiprocessing.Process(target=_owner, args=(addresses, args.count, theirs,
                                                                args.loop))
        child.start()
        try:
            remote = ours.recv()
            asyncio.run(_measure(addresses, remote, args.concurrency))
        finally:
            ours.send("stop")
            child.join(10)


if __name__ == "__main__":
    main()
