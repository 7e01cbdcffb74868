"""Issue 18: every protocol works unchanged with several serving processes.

``vcc-pki serve`` with ``VCC_PKI_WORKERS=2`` started the normal way (``running_gateway``),
on SQLite and on PostgreSQL, each with Redis, and without Redis (every test on SQLite, the
ACME order on PostgreSQL too): several workers are the default on every store
(gateway/config.py ``default_workers``); without Redis, ACME nonces are routed to the
worker that issued them (db.nonce_routing). The client
opens a new connection for every request, so the kernel (SO_REUSEPORT) spreads them over
both processes; which process answered is read from the ``X-Request-ID`` header (a random
prefix per process, then a counter: gateway/app.py). Checked across the two processes:

- an ACME order (account, order, http-01 for an IP identifier, finalize, download) whose
  requests land on both, every answer a success: a nonce from one process is accepted by
  the other;
- an EST one-time secret and a SCEP one-time challenge, each sent by several clients at
  once to both processes: exactly one enrollment succeeds;
- TSA serials: many stamps in parallel from both processes, every serial distinct;
- OCSP: after a revocation (REST, one process), both processes answer ``revoked`` and,
  once a process has answered ``revoked``, it never answers ``good`` again.

One gateway per configuration serves those tests (module-scoped fixture). A last test has
a gateway of its own: a worker killed with SIGKILL is replaced by the primary, and a worker
whose primary was killed stops by itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from asn1crypto import tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from ca_core import scep_attributes as sa
from ca_core.cms import verify_signed
from conformance.gateway import Gateway, free_port, running_gateway
from tests.acme_client import AccountKey, b64, jws
from tests.test_scep import csr_for as scep_csr
from tests.test_scep import pki_message, requester

WORKERS = 2
# How many clients race for one EST secret or SCEP challenge, and how many time-stamps.
RACERS = 6
STAMPS = 120

DEPLOYMENTS = {
    # No Redis: ACME nonces routed between the workers (db.nonce_routing), admin web
    # sessions in the database (db.sessions.SqlSessions).
    "sqlite": pytest.param("sqlite"),
    "postgres": pytest.param("postgres", marks=pytest.mark.postgres),
    "sqlite-redis": pytest.param("sqlite-redis", marks=pytest.mark.redis),
    "postgres-redis": pytest.param("postgres-redis",
                                   marks=[pytest.mark.postgres, pytest.mark.redis]),
}


def deployments(*names: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("deployment", [DEPLOYMENTS[n] for n in names],
                                   indirect=True)


@dataclass
class Deployment:
    gateway: Gateway
    http01_port: int
    root: Path
    # which process answered: X-Request-ID prefix -> requests, per protocol
    answered: dict[str, Counter[str]] = field(default_factory=dict)

    def session(self) -> aiohttp.ClientSession:
        """A new connection per request (force_close), so that either process may answer.
        enable_cleanup_closed: a TLS connection whose shutdown is still under way when the
        session closes is aborted then, not left to the garbage collector (an "unclosed
        transport" ResourceWarning failed a CI run; Python 3.11's asyncio can leak them)."""
        context = ssl.create_default_context(cafile=str(self.root))
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, force_close=True, limit=32,
                                           enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(total=60))

    def record(self, protocol: str, response: aiohttp.ClientResponse) -> None:
        self.answered.setdefault(protocol, Counter())[response.headers["X-Request-ID"][:16]] \
            += 1

    def processes(self, protocol: str) -> int:
        return len(self.answered.get(protocol, {}))


async def _every_process_listens(gateway: Gateway, root: Path) -> None:
    """The workers start once the primary listens (and /ready answered): poll every
    listener until both processes have answered there."""
    context = ssl.create_default_context(cafile=str(root))
    connector = aiohttp.TCPConnector(ssl=context, force_close=True, enable_cleanup_closed=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in (f"{gateway.http_url}/health", f"{gateway.https_url}/health",
                    f"{gateway.est_url}/.well-known/est/cacerts"):
            seen: set[str] = set()
            deadline = time.monotonic() + 60
            while len(seen) < WORKERS:
                assert time.monotonic() < deadline, f"one process only answers {url}"
                async with session.get(url) as response:
                    assert response.status == 200, url
                    seen.add(response.headers["X-Request-ID"][:16])


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Deployment]:
    name: str = request.param
    data_dir = tmp_path_factory.mktemp(name) / "data"
    http01_port = free_port()
    env = {"VCC_PKI_KEY_PASSPHRASE": "conformance", "VCC_PKI_WORKERS": str(WORKERS),
           "VCC_PKI_ROOT_KEY_TYPE": "ec-p256", "VCC_PKI_INTERMEDIATE_KEY_TYPE": "ec-p256",
           "VCC_PKI_ISSUING_KEY_TYPE": "ec-p256", "VCC_PKI_TSA_KEY_TYPE": "ec-p256",
           "VCC_PKI_ACME_HTTP01_PORT": str(http01_port)}
    cleanups: list[Callable[[], None]] = []
    if name.endswith("-redis"):
        from tests.redisutil import REDIS_URL, delete_prefix, require_redis, unique_prefix

        require_redis()
        prefix = unique_prefix()
        env |= {"VCC_PKI_REDIS_URL": REDIS_URL, "VCC_PKI_REDIS_KEY_PREFIX": prefix}
        cleanups.append(lambda: asyncio.run(delete_prefix(prefix)))
    if name.startswith("postgres"):
        from tests.pg import create_throwaway_database, drop_database, require_postgres

        require_postgres()
        dsn = asyncio.run(create_throwaway_database())
        env["VCC_PKI_DATABASE_URL"] = dsn
        cleanups.append(lambda: asyncio.run(drop_database(dsn)))
    try:
        with running_gateway(data_dir, env) as gateway:
            root = data_dir / "ca" / "root.pem"
            asyncio.run(_every_process_listens(gateway, root))
            yield Deployment(gateway, http01_port, root)
        log = (data_dir / "serve.log").read_text()
        assert "Traceback" not in log and " ERROR " not in log, log[-4000:]
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


async def _poll(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        await asyncio.sleep(0.05)  # polling interval, not a fixed wait


# ---------------------------------------------------------------------------- ACME


class _Acme:
    """RFC 8555 as a client does it, each request on a new connection, every nonce taken
    from the previous answer (whichever process gave it)."""

    def __init__(self, deployment: Deployment, session: aiohttp.ClientSession) -> None:
        self.d = deployment
        self.session = session
        self.key = AccountKey.make()
        self.kid: str | None = None
        self.nonce = ""
        self.statuses: Counter[int] = Counter()

    async def get_directory(self) -> dict[str, Any]:
        async with self.session.get(f"{self.d.gateway.https_url}/acme/directory") as response:
            self.d.record("acme", response)
            self.statuses[response.status] += 1
            directory: dict[str, Any] = await response.json()
        async with self.session.head(directory["newNonce"]) as response:
            self.d.record("acme", response)
            self.statuses[response.status] += 1
            self.nonce = response.headers["Replay-Nonce"]
        return directory

    async def post(self, url: str, payload: Any) -> tuple[int, dict[str, str], bytes]:
        protected: dict[str, Any] = {"nonce": self.nonce, "url": url}
        if self.kid is None:
            protected["jwk"] = self.key.jwk
        else:
            protected["kid"] = self.kid
        body = jws(self.key, payload, protected)
        async with self.session.post(url, data=json.dumps(body),
                                     headers={"Content-Type": "application/jose+json"}
                                     ) as response:
            self.d.record("acme", response)
            self.statuses[response.status] += 1
            self.nonce = response.headers.get("Replay-Nonce", "")
            data = await response.read()
            assert response.status < 400, data.decode(errors="replace")
            return response.status, dict(response.headers), data


async def _challenge_server(port: int, answers: dict[str, str]) -> web.AppRunner:
    async def challenge(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if token not in answers:
            raise web.HTTPNotFound()
        return web.Response(text=answers[token])

    app = web.Application()
    app.router.add_get("/.well-known/acme-challenge/{token}", challenge)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@deployments("sqlite", "postgres", "sqlite-redis", "postgres-redis")
async def test_acme_order_across_workers(deployment: Deployment) -> None:
    answers: dict[str, str] = {}
    runner = await _challenge_server(deployment.http01_port, answers)
    try:
        async with deployment.session() as session:
            acme = _Acme(deployment, session)
            directory = await acme.get_directory()
            status, headers, _ = await acme.post(directory["newAccount"], {
                "termsOfServiceAgreed": True, "contact": ["mailto:ops@example.org"]})
            assert status == 201
            acme.kid = headers["Location"]
            status, headers, body = await acme.post(directory["newOrder"], {
                "identifiers": [{"type": "ip", "value": "127.0.0.1"}]})
            assert status == 201
            order_url, order = headers["Location"], json.loads(body)
            (authz_url,) = order["authorizations"]
            _, _, body = await acme.post(authz_url, None)
            http01 = next(c for c in json.loads(body)["challenges"] if c["type"] == "http-01")
            answers[http01["token"]] = f"{http01['token']}.{acme.key.thumbprint}"
            await acme.post(http01["url"], {})

            async def authorization_valid() -> bool:
                _, _, body = await acme.post(authz_url, None)
                state = json.loads(body)["status"]
                assert state in ("pending", "valid"), body
                return bool(state == "valid")

            await _poll(authorization_valid, "authorization valid")
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                               "127.0.0.1")]))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .sign(key, hashes.SHA256()))
            await acme.post(order["finalize"], {
                "csr": b64(csr.public_bytes(serialization.Encoding.DER))})
            final: dict[str, Any] = {}

            async def order_valid() -> bool:
                _, _, body = await acme.post(order_url, None)
                final.update(json.loads(body))
                assert final["status"] in ("processing", "valid", "ready"), body
                return bool(final["status"] == "valid")

            await _poll(order_valid, "order valid")
            _, _, pem = await acme.post(final["certificate"], None)
    finally:
        await runner.cleanup()
    leaf = x509.load_pem_x509_certificates(pem)[0]
    assert leaf.public_key() == key.public_key()
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    # Every answer a success (no badNonce), and both processes answered some of them.
    assert all(status < 400 for status in acme.statuses), acme.statuses
    assert deployment.processes("acme") == WORKERS, deployment.answered["acme"]


# ---------------------------------------------------------------------------- EST, SCEP


def _est_csr(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
           .sign(key, hashes.SHA256()))
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER))


@deployments("sqlite", "sqlite-redis", "postgres-redis")
async def test_est_secret_spent_once_across_workers(deployment: Deployment) -> None:
    """RACERS clients send the same one-time secret at once: one certificate, the others
    401 (RFC 7030 3.2.3), whichever process each reached."""
    out = deployment.gateway.cli("est", "secret", "create", "--org", "default").stdout
    fields = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    basic = base64.b64encode(f"{fields['user'].strip()}:{fields['password'].strip()}"
                             .encode()).decode()
    url = f"{deployment.gateway.est_url}/.well-known/est/simpleenroll"
    bodies = [_est_csr(f"race{n}.workers.example.test") for n in range(RACERS)]
    for _ in range(3):  # both processes must be among the racers: at most a few tries
        async with deployment.session() as session:

            async def enroll(body: bytes) -> int:
                async with session.post(url, data=body,
                                        headers={"Content-Type": "application/pkcs10",
                                                 "Authorization": f"Basic {basic}"}
                                        ) as response:
                    deployment.record("est", response)
                    await response.read()
                    return response.status

            statuses = Counter(await asyncio.gather(*(enroll(b) for b in bodies)))
        if deployment.processes("est") == WORKERS:
            break
    assert deployment.processes("est") == WORKERS, deployment.answered["est"]
    # the first try spent the secret; any later try is refused whole
    assert statuses[200] <= 1 and statuses[401] >= RACERS - 1, statuses


async def _scep_ra(deployment: Deployment, session: aiohttp.ClientSession) -> x509.Certificate:
    async with session.get(f"{deployment.gateway.http_url}/scep",
                           params={"operation": "GetCACert"}) as response:
        assert response.status == 200
        der = await response.read()
    certificates = pkcs7.load_der_pkcs7_certificates(der)

    def is_ca(certificate: x509.Certificate) -> bool:
        try:
            return certificate.extensions.get_extension_for_class(
                x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            return False

    return next(c for c in certificates if not is_ca(c))


@deployments("sqlite", "sqlite-redis", "postgres-redis")
async def test_scep_challenge_spent_once_across_workers(deployment: Deployment) -> None:
    """RACERS devices (each its own key and transaction) send one one-time challenge at
    once: one SUCCESS, the others FAILURE badRequest (RFC 8894 3.3.2.2)."""
    challenge = deployment.gateway.cli("scep", "challenge", "create", "--org", "default",
                                       "--expires", "10m").stdout.strip()
    outcomes: list[tuple[str | None, str | None]] = []
    async with deployment.session() as session:
        ra = await _scep_ra(deployment, session)
        for attempt in range(3):  # both processes must be among the racers
            devices = [requester(f"race{attempt}-{n}") for n in range(RACERS)]
            messages = [await pki_message(d, ra, scep_csr(d, challenge, cn=f"dev{n}"))
                        for n, d in enumerate(devices)]

            async def enroll(message: bytes) -> tuple[str | None, str | None]:
                async with session.post(f"{deployment.gateway.http_url}/scep",
                                        params={"operation": "PKIOperation"}, data=message,
                                        headers={"Content-Type": "application/x-pki-message"}
                                        ) as response:
                    deployment.record("scep", response)
                    assert response.status == 200
                    signed = verify_signed(await response.read(), content=b"")
                return (sa.read_text(signed.signed_attrs, sa.PKI_STATUS),
                        sa.read_text(signed.signed_attrs, sa.FAIL_INFO))

            outcomes += await asyncio.gather(*(enroll(m) for m in messages))
            if deployment.processes("scep") == WORKERS:
                break
    assert deployment.processes("scep") == WORKERS, deployment.answered["scep"]
    statuses = Counter(status for status, _ in outcomes)
    assert statuses["0"] == 1, outcomes  # SUCCESS once, over every try
    assert {fail for status, fail in outcomes if status != "0"} == {"2"}, outcomes  # badRequest


# ---------------------------------------------------------------------------- TSA


@deployments("sqlite", "sqlite-redis", "postgres-redis")
async def test_tsa_serials_unique_across_workers(deployment: Deployment) -> None:
    serials: list[int] = []
    async with deployment.session() as session:

        async def stamp(number: int) -> None:
            query = tsp.TimeStampReq({
                "version": "v1",
                "message_imprint": {
                    "hash_algorithm": {"algorithm": "sha256"},
                    "hashed_message": hashlib.sha256(b"%d" % number).digest()},
                "nonce": secrets.randbits(63),
                "cert_req": False}).dump()
            async with session.post(f"{deployment.gateway.http_url}/tsa", data=query,
                                    headers={"Content-Type": "application/timestamp-query"}
                                    ) as response:
                deployment.record("tsa", response)
                assert response.status == 200
                reply = tsp.TimeStampResp.load(await response.read())
            assert reply["status"]["status"].native == "granted"
            info = reply["time_stamp_token"]["content"]["encap_content_info"]["content"]
            serials.append(info.parsed["serial_number"].native)

        semaphore = asyncio.Semaphore(16)

        async def limited(number: int) -> None:
            async with semaphore:
                await stamp(number)

        await asyncio.gather(*(limited(n) for n in range(STAMPS)))
    assert len(serials) == STAMPS and len(set(serials)) == STAMPS
    assert deployment.processes("tsa") == WORKERS, deployment.answered["tsa"]


# ---------------------------------------------------------------------------- OCSP


def _issue_request(csr_pem: str) -> dict[str, Any]:
    return {"csr": csr_pem, "profile": "vcc_service", "validity_days": 30}


@deployments("sqlite", "sqlite-redis", "postgres-redis")
async def test_ocsp_revocation_seen_by_every_worker(deployment: Deployment) -> None:
    gateway = deployment.gateway
    token = gateway.cli("token", "create", "--org", "default", "--role",
                        "cert_manager").stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                       "ocsp.workers.example.test")]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.DNSName("ocsp.workers.example.test")]), critical=False)
           .sign(key, hashes.SHA256()))
    async with deployment.session() as session:
        async with session.post(f"{gateway.https_url}/api/v1/certificates", headers=headers,
                                json=_issue_request(csr.public_bytes(
                                    serialization.Encoding.PEM).decode())) as response:
            body = await response.json()
            assert response.status == 201, body
        leaf = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
        issuer = x509.load_pem_x509_certificates(body["chain_pem"].encode())[0]
        request = (ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
                   .build().public_bytes(serialization.Encoding.DER))
        last: dict[str, str] = {}  # process -> its last answer

        async def status() -> None:
            async with session.post(f"{gateway.http_url}/ocsp", data=request,
                                    headers={"Content-Type": "application/ocsp-request"}
                                    ) as response:
                assert response.status == 200
                process = response.headers["X-Request-ID"][:16]
                parsed = ocsp.load_der_ocsp_response(await response.read())
            assert parsed.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            answer = parsed.certificate_status.name.lower()
            # once a process has said revoked, it never says good again
            assert not (last.get(process) == "revoked" and answer == "good"), last
            last[process] = answer

        async def every_process_says(answer: str) -> bool:
            await asyncio.gather(*(status() for _ in range(8)))
            return len(last) == WORKERS and set(last.values()) == {answer}

        await _poll(lambda: every_process_says("good"), "good from every process")
        async with session.post(f"{gateway.https_url}/api/v1/certificates/{body['serial']}"
                                "/revoke", headers=headers,
                                json={"reason": "keyCompromise"}) as response:
            assert response.status == 200, await response.text()
        revoked_at = time.monotonic()
        await _poll(lambda: every_process_says("revoked"), "revoked from every process")
    print(f"\nOCSP revoked from both processes {time.monotonic() - revoked_at:.2f} s after "
          f"the revoke call returned ({gateway.env.get('VCC_PKI_DATABASE_URL', 'sqlite')})")


# ---------------------------------------------------------------------------- supervision


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (its parent has not reaped it yet)


async def test_a_lost_worker_is_replaced_and_workers_end_with_the_primary(
        tmp_path: Path) -> None:
    """SIGKILL of a worker: the primary starts another (a new process answers); SIGKILL of
    the primary: its worker stops by itself instead of serving on as an orphan. SQLite, no
    Redis: the supervision does not depend on the configuration."""
    import os
    import signal

    env = {"VCC_PKI_KEY_PASSPHRASE": "conformance", "VCC_PKI_WORKERS": str(WORKERS),
           "VCC_PKI_ROOT_KEY_TYPE": "ec-p256", "VCC_PKI_INTERMEDIATE_KEY_TYPE": "ec-p256",
           "VCC_PKI_ISSUING_KEY_TYPE": "ec-p256", "VCC_PKI_TSA_KEY_TYPE": "ec-p256"}
    with running_gateway(tmp_path / "data", env) as gateway:
        root = tmp_path / "data" / "ca" / "root.pem"
        await _every_process_listens(gateway, root)
        primary = gateway.process.pid
        (worker,) = _children(primary)
        d = Deployment(gateway, 0, root)
        async with d.session() as session:

            async def answering() -> set[str]:
                prefixes = set()
                for _ in range(8):
                    async with session.get(f"{gateway.http_url}/health") as response:
                        assert response.status == 200
                        prefixes.add(response.headers["X-Request-ID"][:16])
                return prefixes

            before = await answering()
            os.kill(worker, signal.SIGKILL)
            replaced: set[int] = set()

            async def another_worker_serves() -> bool:
                replaced.clear()
                replaced.update(p for p in _children(primary) if p != worker and _alive(p))
                return bool(replaced) and bool(await answering() - before)

            await _poll(another_worker_serves, "a new worker serving", timeout=60)
        (new_worker,) = replaced
        os.kill(primary, signal.SIGKILL)
        gateway.process.wait(10)

        async def worker_gone() -> bool:
            return not _alive(new_worker)

        await _poll(worker_gone, "the orphaned worker stopping", timeout=30)
    log = (tmp_path / "data" / "serve.log").read_text()
    assert "starting another" in log and "this worker stops" in log, log[-3000:]
