"""Issue 15: Redis stopped and started under OCSP load. A ``redis-server`` this test starts
itself on its own port (never the machine's) is the shared OCSP cache of three replicas.
Every answer stays correct (good stays good, revoked stays revoked), and no client sees its
requests fail for longer than one retry interval (the cache's 1 s back-off)."""

from __future__ import annotations

import asyncio
import itertools
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
import redis

from conformance.gateway import free_port
from conformance.replicas.cluster import issue_checked, ocsp_status, running_cluster, until

pytestmark = [pytest.mark.postgres]

RETRY_INTERVAL = 1.0  # db/cache.py RedisResponseCache retry_after
WORKERS = 4


@contextmanager
def redis_server(directory: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = start_redis(directory, port)
    try:
        yield process
    finally:
        stop_redis(process)


def start_redis(directory: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing: make system-deps installs it")
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.02)  # polling interval
    client.close()
    return process


def stop_redis(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=20)


async def test_redis_restart_under_ocsp_load(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    with redis_server(tmp_path / "redis", port) as server, running_cluster(
            tmp_path / "data", database_url,
            extra_env={"VCC_PKI_REDIS_URL": f"redis://127.0.0.1:{port}/0",
                       "VCC_PKI_REDIS_KEY_PREFIX": "replicas-test:"}) as cluster:
        a = cluster.replicas[0]
        token = cluster.token()
        async with cluster.session(limit=0) as session:
            expected: list[tuple[bytes, str]] = []
            for n in range(6):
                issued = await issue_checked(session, a.https_url, token,
                                             f"o{n}.example.test", revoked=n % 3 == 0)
                expected.append((issued.ocsp_request, "revoked" if n % 3 == 0 else "good"))

            answers: Counter[str] = Counter()
            wrong: list[str] = []
            longest_failure = [0.0]
            stop = asyncio.Event()
            turn = itertools.cycle(cluster.replicas)
            rng = random.Random(15)

            async def worker() -> None:
                failing_since: float | None = None
                while not stop.is_set():
                    replica = next(turn)
                    request, want = rng.choice(expected)
                    try:
                        got = await ocsp_status(session, replica.http_url, request)
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        got = type(exc).__name__
                    answers[got] += 1
                    now = time.monotonic()
                    if got == want:
                        if failing_since is not None:
                            longest_failure[0] = max(longest_failure[0], now - failing_since)
                        failing_since = None
                    elif got in ("good", "revoked", "unknown"):
                        wrong.append(f"{replica.name}: {got} for a {want} certificate")
                    elif failing_since is None:
                        failing_since = now

            def total() -> int:
                return sum(answers.values())

            async def after(count: int, seconds: float = 0.0) -> None:
                """Until ``count`` more answers, and ``seconds`` have passed (a phase long
                enough for the cache's back-off to come and go several times)."""
                target, since = total() + count, time.monotonic()
                await until(lambda: total() >= target
                            and time.monotonic() - since >= seconds, timeout=60)

            tasks = [asyncio.create_task(worker()) for _ in range(WORKERS)]
            await after(300)
            stop_redis(server)
            down_at = time.monotonic()
            await after(300, seconds=3 * RETRY_INTERVAL)
            served_while_down = total()
            server = start_redis(tmp_path / "redis", port)
            up_at = time.monotonic()
            await after(300)
            stop.set()
            await asyncio.gather(*tasks)
        stop_redis(server)
        print(f"\nRedis stopped for {up_at - down_at:.2f} s under OCSP load on 3 replicas: "
              f"{total()} requests ({served_while_down} by the restart), answers "
              f"{dict(answers)}, {len(wrong)} wrong, longest failure "
              f"{longest_failure[0]:.3f} s")
        assert not wrong, wrong[:10]
        assert longest_failure[0] <= RETRY_INTERVAL
