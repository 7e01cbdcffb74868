"""Issue 15: an ACME order whose requests go round-robin across three replicas (request N
to replica N mod 3: see proxy.py for why per request) completes with lego. Nonces from any
replica are accepted: no replica answered any ACME request with an error (a badNonce would
be a 400)."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import re
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conformance.gateway import free_port
from conformance.replicas.cluster import Cluster, Replica, issue, make_csr, running_cluster
from conformance.replicas.proxy import RoundRobinProxy
from conformance.test_acme_clients import _free_udp_tcp_port, require_client

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


async def _start_proxy(cluster: Cluster, tmp_path: Path, port: int) -> RoundRobinProxy:
    """The proxy's own TLS certificate (127.0.0.1) comes from the gateway's CA, which lego
    trusts; towards the replicas it trusts the same root."""
    root = str(cluster.data_dir / "ca" / "root.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy.test")]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.DNSName("proxy.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
               critical=False)
           .sign(key, hashes.SHA256()))
    async with cluster.session() as session:
        status, body, _ = await issue(session, cluster.replicas[0].https_url, cluster.token(),
                                      csr.public_bytes(serialization.Encoding.PEM).decode())
    assert status == 201, body
    (tmp_path / "proxy.pem").write_text(str(body["certificate_pem"]) + str(body["chain_pem"]))
    (tmp_path / "proxy.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "proxy.pem", tmp_path / "proxy.key")
    proxy = RoundRobinProxy([r.https_url for r in cluster.replicas], server,
                            ssl.create_default_context(cafile=root))
    await proxy.start(port)
    return proxy


@contextmanager
def _dns(tmp_path: Path) -> Iterator[int]:
    port = _free_udp_tcp_port()
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
            "VCC_PKI_PUBLIC_HTTPS_URL": f"https://127.0.0.1:{proxy_port}"}


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


async def _acme_answers(cluster: Cluster, replicas: list[Replica]) -> dict[str, dict[str, int]]:
    per_replica = {}
    async with cluster.session() as session:
        for replica in replicas:
            async with session.get(f"{replica.http_url}/metrics") as response:
                per_replica[replica.name] = _acme_requests(await response.text())
    return per_replica


@pytest.mark.timeout(300)
async def test_lego_order_round_robin_across_three_replicas(
        tmp_path: Path, database_url: str, redis_env: dict[str, str]) -> None:
    require_client("lego")
    http01, proxy_port = free_port(), free_port()
    with _dns(tmp_path) as dns_port, running_cluster(
            tmp_path / "data", database_url,
            extra_env=_acme_env(redis_env, dns_port, http01, proxy_port)) as cluster:
        proxy = await _start_proxy(cluster, tmp_path, proxy_port)
        try:
            seconds = await _lego(cluster, tmp_path, proxy_port, http01,
                                  "rr.replicas.svc.test")
            per_replica = await _acme_answers(cluster, cluster.replicas)
        finally:
            await proxy.close()
    print(f"\nlego order through the round-robin proxy in {seconds:.1f} s: requests "
          f"per replica {dict(proxy.requests)}, ACME answers per replica by status "
          f"{per_replica}")
    for name, counts in per_replica.items():
        assert sum(counts.values()) > 0, f"replica {name} served no ACME request"
        errors = {s: n for s, n in counts.items() if int(s) >= 400}
        assert not errors, f"replica {name} answered ACME errors {errors}"


@pytest.mark.timeout(300)
async def test_lego_order_survives_sigkill_of_a_replica_mid_order(
        tmp_path: Path, database_url: str, redis_env: dict[str, str]) -> None:
    """Issue 15's SIGKILL under ACME load: replica C gets SIGKILL after the order's fourth
    request (between two of lego's requests, with REST issuance load running on all three
    at that moment); the proxy skips the dead replica as a balancer would, and the order,
    begun on all three, completes on A and B."""
    require_client("lego")
    http01, proxy_port = free_port(), free_port()
    with _dns(tmp_path) as dns_port, running_cluster(
            tmp_path / "data", database_url,
            extra_env=_acme_env(redis_env, dns_port, http01, proxy_port)) as cluster:
        a, b, c = cluster.replicas
        proxy = await _start_proxy(cluster, tmp_path, proxy_port)
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

        proxy.before_request = kill_c
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
    print(f"\nlego order with C killed after its 4th request, in {seconds:.1f} s: ACME "
          f"requests answered per replica {dict(proxy.requests)}, refused by the dead one "
          f"{dict(proxy.refused)}; ACME answers of A and B {per_replica}; REST load "
          f"{dict(statuses)}")
    assert c.process is not None and c.process.returncode is not None
    assert proxy.requests[c.https_url] > 0  # part of the order was on C
    for name, counts in per_replica.items():
        errors = {s: n for s, n in counts.items() if int(s) >= 400}
        assert not errors, f"replica {name} answered ACME errors {errors}"
    assert not [k for k in statuses if k[0] in "AB" and not k.endswith(" 201")], statuses
