"""Issue 15: an ACME order whose requests go round-robin across three replicas completes
with lego and with certbot, behind a round-robin TCP proxy with TLS passed through
(proxy.py). The replicas run with VCC_PKI_HTTP_KEEPALIVE_REQUESTS=1, so every request of
the client comes on a new connection and the proxy sends it to the next replica.

Nonces from any replica are accepted: each replica's JSON request log, merged in time,
shows which replica answered the request before each JWS POST (the answer whose
Replay-Nonce the client used: both clients send one request at a time; lego uses the newest
nonce, certbot one of the few it holds, so for certbot the count is an estimate); the test
counts the POSTs made with another replica's nonce and finds no ACME error (a badNonce
would be a 400) at any replica."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from conformance.gateway import free_port
from conformance.replicas.cluster import Cluster, Replica, issue, make_csr, running_cluster
from conformance.replicas.proxy import TcpRoundRobinProxy
from conformance.test_acme_clients import require_client

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

_LINE = re.compile(r"^pki_http_requests_total\{(?P<labels>.*)\} (?P<count>[0-9.e+]+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def _acme_requests(metrics: str) -> dict[str, int]:
    """ACME requests a replica answered, by status (its /metrics)."""
    counts: dict[str, int] = {}
    for line in metrics.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if labels.get("route", "").startswith("/acme"):
            status = labels["status"]
            counts[status] = counts.get(status, 0) + int(float(match["count"]))
    return counts


async def _start_proxy(cluster: Cluster, port: int) -> TcpRoundRobinProxy:
    """The proxy in front of the replicas' HTTPS listeners (REST and ACME)."""
    backends = []
    for replica in cluster.replicas:
        url = urllib.parse.urlsplit(replica.https_url)
        assert url.port is not None
        backends.append(("127.0.0.1", url.port))
    proxy = TcpRoundRobinProxy(backends)
    await proxy.start(port)
    return proxy


def _cross_replica_nonces(cluster: Cluster) -> tuple[int, int]:
    """(JWS POSTs to ACME, of them the ones whose previous ACME answer, the one that
    carried the nonce the client used, came from another replica), from the replicas' JSON
    request logs."""
    answers = []
    for replica in cluster.replicas:
        for line in replica.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("logger") == "vcc_pki.access" and \
                    str(record.get("path", "")).startswith("/acme"):
                answers.append((dt.datetime.fromisoformat(record["time"]), replica.name,
                                record["method"]))
    answers.sort()
    posts = crossed = 0
    for (_, before, _), (_, name, method) in itertools.pairwise(answers):
        if method == "POST":
            posts += 1
            crossed += before != name
    return posts, crossed


@contextmanager
def _dns(tmp_path: Path) -> Iterator[int]:
    port = free_port(socket.SOCK_DGRAM)
    txt = tmp_path / "txt"
    txt.mkdir()
    dns = subprocess.Popen([sys.executable, "-m", "conformance.testdns", "--port",
                            str(port), "--records", str(txt)],
                           cwd=Path(__file__).parent.parent.parent)
    try:
        yield port
    finally:
        dns.terminate()
        dns.wait(10)


def _acme_env(redis_env: dict[str, str], dns_port: int, http01: int, proxy_port: int
              ) -> dict[str, str]:
    return {**redis_env, "VCC_PKI_ACME_HTTP01_PORT": str(http01),
            "VCC_PKI_ACME_DNS_RESOLVER": f"127.0.0.1:{dns_port}",
            # ACME URLs name the balancer, not the replica that made them.
            "VCC_PKI_PUBLIC_HTTPS_URL": f"https://127.0.0.1:{proxy_port}",
            # Every answer closes its connection: the next request, on a new connection,
            # goes to the next replica (see proxy.py).
            "VCC_PKI_HTTP_KEEPALIVE_REQUESTS": "1",
            # One JSON line per request: the nonce count reads them.
            "VCC_PKI_LOG_FORMAT": "json"}


async def _lego(cluster: Cluster, tmp_path: Path, proxy_port: int, http01: int, domain: str
                ) -> float:
    """One lego order (http-01) through the proxy; its seconds."""
    started = time.monotonic()
    lego = await asyncio.create_subprocess_exec(
        "lego", "--server", f"https://127.0.0.1:{proxy_port}/acme/directory",
        "--email", "ops@example.org", "--accept-tos", "--path", str(tmp_path / "lego"),
        "--domains", domain, "--http", "--http.port", f":{http01}", "run",
        env={**cluster.env, "LEGO_CA_CERTIFICATES": str(cluster.data_dir / "ca" / "root.pem")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(lego.communicate(), timeout=240)
    assert lego.returncode == 0, output.decode()[-6000:]
    assert (tmp_path / "lego" / "certificates" / f"{domain}.crt").exists()
    return time.monotonic() - started


async def _certbot(cluster: Cluster, tmp_path: Path, proxy_port: int, http01: int,
                   domain: str) -> float:
    """One certbot order (certonly --standalone, http-01) through the proxy; its seconds."""
    started = time.monotonic()
    work = tmp_path / "certbot"
    certbot = await asyncio.create_subprocess_exec(
        "certbot", "--server", f"https://127.0.0.1:{proxy_port}/acme/directory",
        "--config-dir", str(work / "config"), "--work-dir", str(work / "work"),
        "--logs-dir", str(work / "logs"), "--non-interactive", "--agree-tos",
        "-m", "ops@example.org", "certonly", "--standalone", "--http-01-port", str(http01),
        "-d", domain,
        env={**cluster.env, "REQUESTS_CA_BUNDLE": str(cluster.data_dir / "ca" / "root.pem")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(certbot.communicate(), timeout=240)
    assert certbot.returncode == 0, output.decode()[-6000:]
    assert (work / "config" / "live" / domain / "fullchain.pem").exists()
    return time.monotonic() - started


_CLIENTS = {"lego": _lego, "certbot": _certbot}


async def _acme_answers(cluster: Cluster, replicas: list[Replica]) -> dict[str, dict[str, int]]:
    per_replica = {}
    async with cluster.session() as session:
        for replica in replicas:
            async with session.get(f"{replica.http_url}/metrics") as response:
                per_replica[replica.name] = _acme_requests(await response.text())
    return per_replica


@pytest.mark.timeout(300)
@pytest.mark.parametrize("client", ["lego", "certbot"])
async def test_order_round_robin_across_three_replicas(
        client: str, tmp_path: Path, database_url: str, redis_env: dict[str, str]) -> None:
    require_client(client)
    http01, proxy_port = free_port(), free_port()
    with _dns(tmp_path) as dns_port, running_cluster(
            tmp_path / "data", database_url,
            extra_env=_acme_env(redis_env, dns_port, http01, proxy_port)) as cluster:
        proxy = await _start_proxy(cluster, proxy_port)
        try:
            seconds = await _CLIENTS[client](cluster, tmp_path, proxy_port, http01,
                                             f"rr-{client}.replicas.svc.test")
            per_replica = await _acme_answers(cluster, cluster.replicas)
        finally:
            await proxy.close()
        posts, crossed = _cross_replica_nonces(cluster)
    connections = {cluster.replicas[i].name: n for i, n in sorted(proxy.per_backend().items())}
    print(f"\n{client} order through the round-robin TCP proxy in {seconds:.1f} s: "
          f"{len(proxy.connections)} connections, per replica {connections}; ACME answers "
          f"per replica by status {per_replica}; {posts} JWS POSTs, {crossed} of them with "
          f"a nonce another replica had issued")
    assert len(connections) == 3, connections  # every replica took connections
    for name, counts in per_replica.items():
        assert sum(counts.values()) > 0, f"replica {name} served no ACME request"
        errors = {s: n for s, n in counts.items() if int(s) >= 400}
        assert not errors, f"replica {name} answered ACME errors {errors}"
    # One request per connection: as many connections as ACME answers.
    assert len(proxy.connections) == sum(sum(c.values()) for c in per_replica.values())
    assert posts > 0 and crossed > 0


@pytest.mark.timeout(300)
async def test_lego_order_survives_sigkill_of_a_replica_mid_order(
        tmp_path: Path, database_url: str, redis_env: dict[str, str]) -> None:
    """Issue 15's SIGKILL under ACME load: replica C gets SIGKILL after the order's fourth
    connection (one request each: between two of lego's requests, with REST issuance load
    running on all three at that moment); the proxy skips the dead replica as a layer-4
    balancer does (its connection is refused), and the order, begun on all three, completes
    on A and B."""
    require_client("lego")
    http01, proxy_port = free_port(), free_port()
    with _dns(tmp_path) as dns_port, running_cluster(
            tmp_path / "data", database_url,
            extra_env=_acme_env(redis_env, dns_port, http01, proxy_port)) as cluster:
        a, b, c = cluster.replicas
        proxy = await _start_proxy(cluster, proxy_port)
        token = cluster.token()
        statuses: Counter[str] = Counter()
        stop = asyncio.Event()

        async def rest_load(session: aiohttp.ClientSession) -> None:
            csr = make_csr("load.example.test")
            for replica in itertools.cycle(cluster.replicas):
                if stop.is_set():
                    return
                try:
                    status, _, _ = await issue(session, replica.https_url, token, csr)
                    statuses[f"{replica.name} {status}"] += 1
                except aiohttp.ClientError as exc:
                    statuses[f"{replica.name} {type(exc).__name__}"] += 1

        async def kill_c(number: int) -> None:
            if number == 5:
                c.kill()

        proxy.before_connection = kill_c
        try:
            async with cluster.session(limit=0) as session:
                loaders = [asyncio.create_task(rest_load(session)) for _ in range(3)]
                seconds = await _lego(cluster, tmp_path, proxy_port, http01,
                                      "kill.replicas.svc.test")
                stop.set()
                await asyncio.gather(*loaders)
            per_replica = await _acme_answers(cluster, [a, b])
        finally:
            await proxy.close()
    connections = {cluster.replicas[i].name: n for i, n in sorted(proxy.per_backend().items())}
    print(f"\nlego order with C killed after its 4th connection, in {seconds:.1f} s: "
          f"connections per replica {connections}, refused by the dead one "
          f"{proxy.refused[2]}; ACME answers of A and B {per_replica}; REST load "
          f"{dict(statuses)}")
    assert c.process is not None and c.process.returncode is not None
    assert connections.get("C", 0) > 0  # part of the order was on C
    assert proxy.refused[2] > 0  # and the rest went past it
    for name, counts in per_replica.items():
        errors = {s: n for s, n in counts.items() if int(s) >= 400}
        assert not errors, f"replica {name} answered ACME errors {errors}"
    assert not [k for k in statuses if k[0] in "AB" and not k.endswith(" 201")], statuses
