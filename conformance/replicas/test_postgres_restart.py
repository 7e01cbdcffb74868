"""Issue 15: PostgreSQL restarted under issuance load. The PostgreSQL here is one this test
starts itself (initdb + pg_ctl from the Debian package's /usr/lib/postgresql/*/bin, a
scratch data directory, a port of its own), never the machine's server on 5432. initdb
refuses to run as root, so as root the test runs the PostgreSQL tools as the ``postgres``
user (``runuser -u postgres``), in a scratch directory that user owns.

While it is down (with REST issuance load running all along), REST answers 503 with
Retry-After, ACME serverInternal with Retry-After, the TSA systemFailure, and OCSP answers
from the cache; the gateway issues again within 5 s of PostgreSQL returning."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from asn1crypto import core, tsp

from conformance.gateway import free_port
from conformance.replicas.cluster import (
    issue,
    issue_checked,
    make_csr,
    ocsp_status,
    poll,
    running_cluster,
    until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        pytest.fail("pg_ctl is missing: the postgresql package (make test-services)")
    return Path(found[-1]).parent


class ScratchPostgres:
    def __init__(self, directory: Path, port: int) -> None:
        self.directory, self.port, self.bin = directory, port, _pg_bin()
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.directory / "pg"), "-A", "trust",
                  "-U", "postgres", "--no-sync")

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.directory / "pg"), "-w", "-l",
                  str(self.directory / "pg.log"), "-o",
                  f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
                  " -c fsync=off", "start")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.directory / "pg"), "-w", "-m",
                  "fast", "stop")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@contextmanager
def scratch_postgres() -> Iterator[ScratchPostgres]:
    directory = Path(tempfile.mkdtemp(prefix="vcc-pki-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    server = ScratchPostgres(directory, free_port())
    server.init()
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(directory, ignore_errors=True)


def _tsa_query() -> bytes:
    import hashlib

    request: bytes = tsp.TimeStampReq({
        "version": "v1",
        "message_imprint": {"hash_algorithm": {"algorithm": "sha256"},
                            "hashed_message": hashlib.sha256(b"replicas").digest()},
        "cert_req": True,
    }).dump()
    return request


async def test_postgres_restart_under_issuance_load(
        tmp_path: Path, redis_env: dict[str, str]) -> None:
    with scratch_postgres() as postgres, running_cluster(
            tmp_path / "data", postgres.dsn, count=1, extra_env=redis_env) as cluster:
        (replica,) = cluster.replicas
        token = cluster.token()
        statuses: Counter[str] = Counter()
        async with cluster.session() as session:
            request = (await issue_checked(session, replica.https_url, token,
                                           "cached.example.test")).ocsp_request
            assert await ocsp_status(session, replica.http_url, request) == "good"

            # Issuance load all along: what it sees is counted, nothing may be a 500.
            stop_load = asyncio.Event()

            async def load() -> None:
                csr = make_csr("load.example.test")
                while not stop_load.is_set():
                    try:
                        status, _, headers = await issue(session, replica.https_url, token,
                                                         csr)
                    except aiohttp.ClientError as exc:
                        statuses[f"load {type(exc).__name__}"] += 1
                        continue
                    statuses[f"load {status}"] += 1
                    if status == 503:
                        assert headers.get("Retry-After"), headers
                        await asyncio.sleep(0.05)  # a client backing off, not a wait

            loaders = [asyncio.create_task(load()) for _ in range(3)]
            await until(lambda: statuses["load 201"] >= 10, timeout=60)
            postgres.stop()
            down: dict[str, Any] = {}
            # REST: 503 with Retry-After (poll: the pool notices the lost connections).
            async def rest_unavailable() -> bool:
                status, problem, headers = await issue(session, replica.https_url, token,
                                                       make_csr("down.example.test"))
                statuses[f"REST {status}"] += 1
                down["rest"] = (status, headers.get("Retry-After"), problem.get("type"))
                return status == 503
            await poll(rest_unavailable, timeout=30)
            assert down["rest"][1], down
            async with session.post(f"{replica.http_url}/tsa", data=_tsa_query(), headers={
                    "Content-Type": "application/timestamp-query"}) as response:
                # A rejection has no token, which asn1crypto's TimeStampResp requires:
                # read the PKIStatusInfo alone.
                info = tsp.PKIStatusInfo.load(
                    core.Sequence.load(await response.read())[0].dump())
                down["tsa"] = (response.status, info["status"].native,
                               info["fail_info"].native)
            statuses[f"TSA {down['tsa']}"] += 1
            assert down["tsa"][1] == "rejection" and "system_failure" in down["tsa"][2], down
            down["acme"] = await _acme_new_account(session, replica.https_url)
            statuses[f"ACME {down['acme'][0]} {down['acme'][2]}"] += 1
            assert down["acme"][0] >= 500 and down["acme"][1], down
            assert down["acme"][2] == "urn:ietf:params:acme:error:serverInternal", down
            ocsp_down = [await ocsp_status(session, replica.http_url, request)
                         for _ in range(20)]
            statuses.update(f"OCSP {s}" for s in ocsp_down)
            assert ocsp_down == ["good"] * 20, ocsp_down

            postgres.start()
            back = time.monotonic()

            async def issuing_again() -> bool:
                try:
                    status, _, _ = await issue(session, replica.https_url, token,
                                               make_csr("back.example.test"))
                except aiohttp.ClientError as exc:
                    statuses[type(exc).__name__] += 1
                    return False
                statuses[f"REST {status}"] += 1
                return status == 201
            recovery = await poll(issuing_again, timeout=30, interval=0.05)
            stop_load.set()
            await asyncio.gather(*loaders)
        print(f"\nPostgreSQL stopped and started: while down {down}; requests "
              f"{dict(statuses)}; issuing again {recovery:.2f} s after PostgreSQL was back "
              f"({time.monotonic() - back:.2f} s)")
        assert recovery < 5
        assert not any(k.startswith("load 5") and k != "load 503" for k in statuses), statuses


async def _acme_new_account(session: aiohttp.ClientSession, base_url: str
                            ) -> tuple[int, str | None, str | None]:
    """newAccount (a write): status, Retry-After and problem type. The nonce comes from
    Redis, so the request gets as far as the store."""
    from tests.acme_client import AccountKey, jws

    async with session.get(f"{base_url}/acme/directory") as response:
        directory = await response.json()
    async with session.head(directory["newNonce"]) as response:
        nonce = response.headers["Replay-Nonce"]
    key = AccountKey.make()
    body = jws(key, {"termsOfServiceAgreed": True},
               {"nonce": nonce, "url": directory["newAccount"], "jwk": key.jwk})
    async with session.post(directory["newAccount"], data=json.dumps(body),
                            headers={"Content-Type": "application/jose+json"}) as response:
        problem = await response.json(content_type=None)
        return response.status, response.headers.get("Retry-After"), problem.get("type")
