"""A mutation probe against a gateway started the normal way: every surface gets mutated
requests (bit flips, truncations, insertions, repeated chunks, random bytes, oversized and
empty bodies, wrong content types, mangled paths) grown from valid seeds, and must answer
each in its own error form (problem+json for every /api/ error): no 500, no 503 for bad
input, no traceback or ERROR in the log.

    python -m conformance.hostile_probe --per-surface 5000            # SQLite
    python -m conformance.hostile_probe --per-surface 5000 --postgres  # a throwaway database

Prints the responses counted by status per surface and exits 1 on any 500 or 503 or a
traceback in the gateway's log. The RNG is seeded (``--seed``), so a run can be repeated.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import random
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from asn1crypto import tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from conformance.gateway import Gateway, running_gateway
from tests.acme_client import AccountKey, jws
from tests.helpers import make_csr

Mutator = Callable[[random.Random, bytes], bytes]


def _flip(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return b"\x00"
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(len(data))] if data else b""


def _insert(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 32)) + data[at:]


def _repeat(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    start = rng.randrange(len(data))
    chunk = data[start:start + rng.randint(1, 64)]
    return data[:start] + chunk * rng.randint(2, 50) + data[start:]


def _random(rng: random.Random, data: bytes) -> bytes:
    return rng.randbytes(max(1, len(data)))


def _oversized(rng: random.Random, data: bytes) -> bytes:
    return (data or b"x") * (300_000 // max(1, len(data)) + 2)


def _empty(rng: random.Random, data: bytes) -> bytes:
    return b""


MUTATORS: tuple[Mutator, ...] = (_flip, _flip, _flip, _truncate, _truncate, _insert,
                                 _repeat, _random, _oversized, _empty)


@dataclass
class Surface:
    name: str
    method: str
    base: str  # "http" or "https"
    path: str
    seed: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    mutate_path: bool = False
    counts: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)


async def _seeds(gateway: Gateway, session: aiohttp.ClientSession) -> list[Surface]:
    token = gateway.cli("token", "create", "--org", "default", "--role", "cert_manager"
                        ).stdout.strip().splitlines()[-1]
    rest_body = json.dumps({"csr": make_csr().decode(), "profile": "vcc_service"}).encode()
    async with session.post(f"{gateway.https_url}/api/v1/certificates", data=rest_body,
                            headers={"Authorization": f"Bearer {token}",
                                     "Content-Type": "application/json"}) as response:
        issued = await response.json()
    certificate = x509.load_pem_x509_certificate(issued["certificate_pem"].encode())
    issuer = x509.load_pem_x509_certificate(issued["chain_pem"].encode())
    ocsp_der = ocsp.OCSPRequestBuilder().add_certificate(
        certificate, issuer, hashes.SHA1()).build().public_bytes(serialization.Encoding.DER)
    tsq = tsp.TimeStampReq({"version": 1, "message_imprint": {
        "hash_algorithm": {"algorithm": "sha256"}, "hashed_message": b"\x11" * 32},
        "nonce": 12345, "cert_req": True}).dump()
    async with session.get(f"{gateway.https_url}/acme/directory") as response:
        directory = await response.json()
    async with session.head(directory["newNonce"]) as response:
        nonce = response.headers["Replay-Nonce"]
    key = AccountKey.make()
    account = json.dumps(jws(key, {"termsOfServiceAgreed": True}, {
        "nonce": nonce, "url": directory["newAccount"], "jwk": key.jwk})).encode()
    acme_path = directory["newAccount"].split("/", 3)[3]
    order_path = directory["newOrder"].split("/", 3)[3]
    jose = "application/jose+json"
    secret = gateway.cli("est", "secret", "create", "--org", "default").stdout.split()
    basic = base64.b64encode(
        f"{secret[secret.index('user') + 1]}:{secret[secret.index('password') + 1]}".encode()
    ).decode()
    est_csr = base64.b64encode(
        x509.load_pem_x509_csr(make_csr()).public_bytes(serialization.Encoding.DER))
    return [
        Surface("rest-issue", "POST", "https", "/api/v1/certificates", rest_body,
                "application/json", {"Authorization": f"Bearer {token}"}),
        Surface("rest-get", "GET", "https", f"/api/v1/certificates/{issued['serial']}", b"",
                "", {"Authorization": f"Bearer {token}"}, mutate_path=True),
        Surface("acme-account", "POST", "https", "/" + acme_path, account, jose),
        Surface("acme-order", "POST", "https", "/" + order_path, account, jose),
        Surface("ocsp-post", "POST", "http", "/ocsp", ocsp_der, "application/ocsp-request"),
        Surface("ocsp-get", "GET", "http", "/ocsp/" + base64.b64encode(ocsp_der).decode(),
                b"", "", mutate_path=True),
        Surface("tsa", "POST", "http", "/tsa", tsq, "application/timestamp-query"),
        Surface("crl", "GET", "http", "/crl/default-issuing.crl", b"", "", mutate_path=True),
        # EST (its own listener): the body of an enrollment, with a real one-time secret,
        # and the paths; SCEP: PKIOperation bodies and GET query strings.
        Surface("est-enroll", "POST", "est", "/.well-known/est/simpleenroll", est_csr,
                "application/pkcs10", {"Authorization": f"Basic {basic}"}),
        Surface("est-path", "GET", "est", "/.well-known/est/cacerts", b"", "",
                mutate_path=True),
        Surface("scep-post", "POST", "http", "/scep?operation=PKIOperation", ocsp_der,
                "application/x-pki-message"),
        Surface("scep-get", "GET", "http",
                "/scep?operation=PKIOperation&message=" + base64.b64encode(ocsp_der).decode(),
                b"", "", mutate_path=True),
    ]


def _mutated_path(rng: random.Random, path: str) -> str:
    raw = path.encode()
    mutated = rng.choice(MUTATORS[:8])(rng, raw)[:4000]
    # Keep it a path the HTTP client will send: percent-encode what is not printable.
    text = "".join(chr(b) if 0x21 <= b < 0x7F and b not in (0x23, 0x3F) else f"%{b:02X}"
                   for b in mutated)
    return text if text.startswith("/") else "/" + text


async def _probe_one(session: aiohttp.ClientSession, gateway: Gateway, surface: Surface,
                     rng: random.Random) -> None:
    base = {"https": gateway.https_url, "http": gateway.http_url,
            "est": gateway.est_url}[surface.base]
    headers = dict(surface.headers)
    body = surface.seed
    path = surface.path
    if surface.mutate_path and "&message=" in path:  # SCEP GET: the message, not the route
        prefix, message = path.split("&message=", 1)
        path = prefix + "&message=" + _mutated_path(rng, message).lstrip("/")
    elif surface.mutate_path:
        path = _mutated_path(rng, path)
    else:
        body = rng.choice(MUTATORS)(rng, surface.seed)
    roll = rng.random()
    if surface.content_type:
        headers["Content-Type"] = surface.content_type if roll > 0.05 else rng.choice(
            ["text/plain", "application/json", "", "application/octet-stream; x=\x01"])
    try:
        async with session.request(surface.method, base + path, data=body or None,
                                   headers=headers) as response:
            await response.read()
            status = response.status
            kind = response.content_type
    except (aiohttp.ClientError, ValueError) as exc:
        # The client refused to send it (a header it considers invalid), or the server
        # closed the connection on an oversized body: not an answer to count as an error.
        surface.counts[0] += 1
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            surface.failures.append(f"disconnected: {surface.method} {path[:80]}")
        return
    surface.counts[status] += 1
    if path.startswith("/api/") and status >= 400 and kind != "application/problem+json":
        surface.failures.append(f"{status} as {kind}, not problem+json: {path[:80]}")
    if status >= 500:
        surface.failures.append(f"{status}: {surface.method} {path[:80]} ({len(body)} bytes)")


async def probe(gateway: Gateway, per_surface: int, seed: int, concurrency: int = 16
                ) -> list[Surface]:
    root = gateway.data_dir / "ca" / "root.pem"
    context = ssl.create_default_context(cafile=str(root))
    connector = aiohttp.TCPConnector(ssl=context, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        surfaces = await _seeds(gateway, session)
        rng = random.Random(seed)
        semaphore = asyncio.Semaphore(concurrency)

        async def bounded(surface: Surface, child: random.Random) -> None:
            async with semaphore:
                await _probe_one(session, gateway, surface, child)

        await asyncio.gather(*(bounded(surface, random.Random(rng.random()))
                               for surface in surfaces for _ in range(per_surface)))
    return surfaces


def report(surfaces: list[Surface], log_text: str, seconds: float) -> int:
    statuses = sorted({s for surface in surfaces for s in surface.counts})
    print(f"{'surface':14} {'sent':>6} " + " ".join(f"{s or 'none':>6}" for s in statuses))
    for surface in surfaces:
        sent = sum(surface.counts.values())
        print(f"{surface.name:14} {sent:>6} "
              + " ".join(f"{surface.counts.get(s, 0):>6}" for s in statuses))
    tracebacks = log_text.count("Traceback")
    errors = sum(1 for line in log_text.splitlines() if " ERROR " in line)
    failures = [f for surface in surfaces for f in surface.failures]
    print(f"{sum(sum(s.counts.values()) for s in surfaces)} requests in {seconds:.1f} s; "
          f"5xx or disconnects: {len(failures)}; tracebacks in the log: {tracebacks}; "
          f"ERROR lines: {errors}")
    for failure in failures[:20]:
        print("  ", failure)
    if tracebacks:
        at = log_text.index("Traceback")
        print(log_text[max(0, log_text.rfind("\n", 0, at - 200)):at + 3000])
    return 1 if failures or tracebacks or errors else 0


def run(per_surface: int, seed: int, env: dict[str, str], data_dir: Path) -> int:
    with running_gateway(data_dir, env) as gateway:
        started = time.monotonic()
        surfaces = asyncio.run(probe(gateway, per_surface, seed))
        seconds = time.monotonic() - started
    return report(surfaces, (data_dir / "serve.log").read_text(errors="replace"), seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-surface", type=int, default=1000,
                        help="mutated requests per surface (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="RNG seed (default 1)")
    parser.add_argument("--postgres", action="store_true",
                        help="run the gateway on a throwaway PostgreSQL database")
    args = parser.parse_args(argv)
    env = {"VCC_PKI_KEY_PASSPHRASE": "probe"}
    with tempfile.TemporaryDirectory(prefix="vcc-pki-probe-") as tmp:
        if not args.postgres:
            return run(args.per_surface, args.seed, env, Path(tmp) / "data")
        from tests.pg import create_throwaway_database, drop_database
        dsn = asyncio.run(create_throwaway_database())
        try:
            return run(args.per_surface, args.seed, {**env, "VCC_PKI_DATABASE_URL": dsn},
                       Path(tmp) / "data")
        finally:
            asyncio.run(drop_database(dsn))


if __name__ == "__main__":
    sys.exit(main())
