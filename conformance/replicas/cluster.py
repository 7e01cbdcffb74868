"""Several ``vcc-pki serve`` processes on one store (issue 15): the harness of the replica
tests and of ``conformance/bench/replicas.py``.

``vcc-pki init`` runs once in a data directory the replicas share (software keys on one
volume, as in the ha-postgres overlay); then each replica is started the normal way on ports
of its own, with its own log. Replicas are stopped with SIGTERM (or killed by a test).
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from conformance.gateway import BIN, _wait_ready, free_port


@dataclass
class Replica:
    name: str
    env: dict[str, str]
    http_url: str
    https_url: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([str(BIN), "serve"], env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT)
        log.close()

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.process is not None
        _wait_ready(f"{self.http_url}/ready", self.process, timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Cluster:
    data_dir: Path
    env: dict[str, str]
    replicas: list[Replica] = field(default_factory=list)

    def cli(self, *args: str) -> str:
        return subprocess.run([str(BIN), *args], env=self.env, capture_output=True,
                              text=True, check=True, timeout=120).stdout

    def token(self, role: str = "cert_manager") -> str:
        return self.cli("token", "create", "--org", "default", "--role", role).strip()

    def session(self, limit: int = 100) -> aiohttp.ClientSession:
        """A client trusting the deployment's root (the REST API is on HTTPS only);
        ``limit``: its connections at once (0: no limit)."""
        context = ssl.create_default_context(cafile=str(self.data_dir / "ca" / "root.pem"))
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=limit),
            timeout=aiohttp.ClientTimeout(total=30))


def base_env(data_dir: Path, database_url: str, extra: dict[str, str] | None = None
             ) -> dict[str, str]:
    return {
        **os.environ,
        "VCC_PKI_DATA_DIR": str(data_dir),
        "VCC_PKI_DATABASE_URL": database_url,
        "VCC_PKI_KEY_PASSPHRASE": "replicas",
        # P-256 everywhere: init and issuance stay cheap on a busy 2-core machine.
        "VCC_PKI_ROOT_KEY_TYPE": "ec-p256",
        "VCC_PKI_INTERMEDIATE_KEY_TYPE": "ec-p256",
        # a replica is one process (a SIGKILL of it kills all it serves with), whatever
        # the default with Redis (one per core) would be
        "VCC_PKI_WORKERS": "1",
        "PATH": f"{BIN.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **(extra or {}),
    }


@contextmanager
def running_cluster(data_dir: Path, database_url: str, count: int = 3,
                    extra_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """``vcc-pki init`` once, then ``count`` replicas of ``vcc-pki serve`` on their own
    ports; all stopped on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = base_env(data_dir, database_url, extra_env)
    subprocess.run([str(BIN), "init"], env=env, check=True, capture_output=True, timeout=300)
    cluster = Cluster(data_dir, env)
    try:
        for index in range(count):
            http_port, https_port, est_port = free_port(), free_port(), free_port()
            replica_env = {**env, "VCC_PKI_HTTP_PORT": str(http_port),
                           "VCC_PKI_HTTPS_PORT": str(https_port),
                           "VCC_PKI_EST_PORT": str(est_port)}
            replica = Replica(chr(ord("A") + index), replica_env,
                              f"http://127.0.0.1:{http_port}",
                              f"https://localhost:{https_port}",
                              data_dir / f"serve-{chr(ord('a') + index)}.log")
            replica.start()
            cluster.replicas.append(replica)
        for replica in cluster.replicas:
            replica.wait_ready()
        yield cluster
    finally:
        for replica in cluster.replicas:
            replica.stop()


# ---- client side helpers (what any relying party or REST client would do) ----------------

def make_csr(common_name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def issue(session: aiohttp.ClientSession, base_url: str, token: str, csr: str
                ) -> tuple[int, dict[str, object], dict[str, str]]:
    async with session.post(f"{base_url}/api/v1/certificates",
                            json={"csr": csr, "profile": "vcc_service", "validity_days": 30},
                            headers={"Authorization": f"Bearer {token}"}) as response:
        try:
            body = await response.json(content_type=None)
        except ValueError:
            body = {}
        return response.status, body, dict(response.headers)


async def revoke(session: aiohttp.ClientSession, base_url: str, token: str, serial: object,
                 reason: str = "keyCompromise") -> tuple[int, str]:
    """Revoke through the REST API: (status, body)."""
    async with session.post(f"{base_url}/api/v1/certificates/{serial}/revoke",
                            json={"reason": reason},
                            headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, await response.text()


@dataclass
class Issued:
    """A certificate a test issued and the OCSP request that asks about it."""

    body: dict[str, object]
    leaf: x509.Certificate
    issuer: x509.Certificate
    ocsp_request: bytes

    @property
    def serial(self) -> str:
        return str(self.body["serial"])


async def issue_checked(session: aiohttp.ClientSession, base_url: str, token: str,
                        common_name: str, revoked: bool = False) -> Issued:
    """Issue a certificate (201 or the test fails), revoke it (keyCompromise) when asked."""
    status, body, _ = await issue(session, base_url, token, make_csr(common_name))
    assert status == 201, body
    leaf, issuer = chain_certificates(body)
    issued = Issued(body, leaf, issuer, ocsp_request_der(leaf, issuer))
    if revoked:
        status, text = await revoke(session, base_url, token, issued.serial)
        assert status == 200, text
    return issued


def ocsp_request_der(certificate: x509.Certificate, issuer: x509.Certificate) -> bytes:
    return (ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1())
            .build().public_bytes(serialization.Encoding.DER))


async def ocsp_status(session: aiohttp.ClientSession, base_url: str, request_der: bytes
                      ) -> str:
    """``good``, ``revoked``, ``unknown``, or the response status / HTTP status when it is
    not a successful answer."""
    async with session.post(f"{base_url}/ocsp", data=request_der,
                            headers={"Content-Type": "application/ocsp-request"}) as response:
        if response.status != 200:
            return f"http-{response.status}"
        body = await response.read()
    parsed = ocsp.load_der_ocsp_response(body)
    if parsed.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return parsed.response_status.name
    return parsed.certificate_status.name.lower()


async def fetch_crl(session: aiohttp.ClientSession, url: str
                    ) -> x509.CertificateRevocationList | None:
    async with session.get(url) as response:
        if response.status != 200:
            return None
        body = await response.read()
    return x509.load_der_x509_crl(body)


async def crl_number(session: aiohttp.ClientSession, url: str) -> int | None:
    crl = await fetch_crl(session, url)
    if crl is None:
        return None
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


async def poll(check: Callable[[], Awaitable[bool]], timeout: float,
               interval: float = 0.02) -> float:
    """Call ``check`` until it is true; the seconds that took. Raises TimeoutError."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not true after {timeout} s")
        await asyncio.sleep(interval)  # polling interval, not a fixed wait


async def until(condition: Callable[[], bool], timeout: float) -> float:
    """``poll`` for a condition that needs no I/O (a counter the load has reached)."""

    async def check() -> bool:
        return condition()

    return await poll(check, timeout)


def chain_certificates(body: dict[str, object]) -> tuple[x509.Certificate, x509.Certificate]:
    leaf = x509.load_pem_x509_certificate(str(body["certificate_pem"]).encode())
    issuer = x509.load_pem_x509_certificates(str(body["chain_pem"]).encode())[0]
    return leaf, issuer


def crl_url(certificate: x509.Certificate) -> str:
    points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    name = points[0].full_name
    assert name is not None
    return str(name[0].value)
