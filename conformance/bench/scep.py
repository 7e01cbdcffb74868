"""SCEP enrollment benchmark (issue 12): PKCSReq enrollments per second, with p50 and p99
latency, at --concurrency clients against `vcc-pki serve`, with the RA key in software and
in SoftHSM2, on SQLite and PostgreSQL (a throwaway database), with VCC_PKI_WORKERS 1 and the
number of cores; the serving processes' memory beside. A benchmark, not a test: it prints
figures and never fails.

    .venv/bin/python -m conformance.bench.scep --seconds 5 --concurrency 16 \
        [--only software|softhsm2] [--stores sqlite postgres] [--workers 1 2]

Setup, not measured: `vcc-pki init` + `serve` (conformance.gateway.running_gateway) with a
static challenge; the RA certificate from GetCACert; pkiMessages made in advance (16 RSA
keys, one distinct CSR and transactionID per message, AES-256 + PKCS#1 v1.5, as an
OpenSSL-based client sends them). Measured: POST /scep?operation=PKIOperation from
--concurrency aiohttp tasks on keep-alive connections, each reply checked to be a signed
CertRep SUCCESS (its pkiStatus attribute is read; the envelope is not decrypted: that is
the client's cost). The load generator shares the machine's CPUs with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AttributeOID, NameOID

from ca_core import scep_attributes as sa
from ca_core.cms import encrypt_enveloped, sign_data, unverified_signed_attributes
from ca_core.keys import spec_of
from ca_core.signers.base import SoftwareSigner
from conformance.bench.issuance import Postgres
from conformance.bench.ocsp import rss_kb, with_children
from conformance.gateway import running_gateway, softhsm_env

CHALLENGE = "bench-static-challenge"


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))


async def _messages(ra: x509.Certificate, count: int) -> list[bytes]:
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(16)]
    holders = [(k, _self_signed(k)) for k in keys]
    made = []
    for i in range(count):
        key, certificate = holders[i % len(holders)]
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dev{i}")]))
               .add_attribute(AttributeOID.CHALLENGE_PASSWORD, CHALLENGE.encode())
               .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
        envelope = encrypt_enveloped(csr, [ra], cipher="aes256_cbc")
        signer = SoftwareSigner(key, spec_of(key.public_key()), "file:bench")
        made.append(await sign_data(
            signer, certificate, envelope, certificates=[certificate],
            signed_attrs=[sa.printable(sa.TRANSACTION_ID, secrets.token_hex(16)),
                          sa.printable(sa.MESSAGE_TYPE, "19"),
                          sa.octets(sa.SENDER_NONCE, secrets.token_bytes(16))]))
    return made


async def _ra_certificate(session: aiohttp.ClientSession, url: str) -> x509.Certificate:
    from asn1crypto import cms as asn1_cms

    async with session.get(url, params={"operation": "GetCACert"}) as response:
        signed = asn1_cms.ContentInfo.load(await response.read())["content"]
    for choice in signed["certificates"]:
        certificate = x509.load_der_x509_certificate(choice.chosen.dump())
        if "SCEP RA" in certificate.subject.rfc4514_string():
            return certificate
    raise RuntimeError("no RA certificate in GetCACert")


async def _run(url: str, seconds: float, concurrency: int, pid: int) -> str:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        ra = await _ra_certificate(session, url)
        messages = await _messages(ra, int(seconds * 400) + 200)
        # warm-up: the RA key loaded, connections open
        await asyncio.gather(*(_enroll(session, url, messages.pop()) for _ in range(concurrency)))
        latencies: list[float] = []
        failures = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal failures
            while messages and time.perf_counter() < deadline:
                message = messages.pop()
                started = time.perf_counter()
                if await _enroll(session, url, message):
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

        rss_before = rss_kb(with_children(pid))[0]
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        rss_after, peak = rss_kb(with_children(pid))
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    before, after, high = (f"{v / 1024:.0f}" if v else "?" for v in (rss_before, rss_after, peak))
    return (f"{len(latencies) / elapsed:7.1f} {p50:7.1f} {p99:7.1f} {len(latencies):6} "
            f"{failures:5} {before:>5}/{after:>5}/{high:>5}"
            f"{'  (ran out of messages)' if not messages else ''}")


async def _enroll(session: aiohttp.ClientSession, url: str, message: bytes) -> bool:
    async with session.post(url, params={"operation": "PKIOperation"}, data=message,
                            headers={"Content-Type": "application/x-pki-message"}) as r:
        body = await r.read()
    if r.status != 200:
        return False
    return sa.read_text(unverified_signed_attributes(body), sa.PKI_STATUS) == "0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--only", choices=("software", "softhsm2"))
    parser.add_argument("--stores", nargs="+", choices=("sqlite", "postgres"),
                        default=["sqlite", "postgres"])
    parser.add_argument("--workers", type=int, nargs="+",
                        default=sorted({1, os.cpu_count() or 1}))
    args = parser.parse_args()
    env = {"VCC_PKI_SCEP_CHALLENGE": CHALLENGE}
    pg = Postgres()
    pg_reason = asyncio.run(pg.available()) if "postgres" in args.stores else ""
    print(f"SCEP PKCSReq enrollments (AES-256, RSA-2048 requesters), {args.concurrency} "
          f"clients, {args.seconds:g} s each, {os.cpu_count()} cores; target >= 200/s")
    print(f"{'RA key':<9} {'store':<9} {'workers':>7} {'per s':>7} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'ok':>6} {'fail':>5} {'RSS MB before/after/peak':>24}", flush=True)
    try:
        for backend in ("software", "softhsm2"):
            if args.only not in (None, backend):
                continue
            for store in args.stores:
                for workers in args.workers:
                    row = f"{backend:<9} {store:<9} {workers:>7} "
                    if store == "postgres" and pg_reason:
                        print(row + f"skipped: {pg_reason}")
                        continue
                    print(row + _setup(backend, store, workers, env, pg, args), flush=True)
    finally:
        asyncio.run(pg.drop_all())


def _setup(backend: str, store: str, workers: int, env: dict[str, str], pg: Postgres,
           args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        extra = {**env, "VCC_PKI_KEY_PASSPHRASE": "bench", "VCC_PKI_WORKERS": str(workers)}
        if backend == "softhsm2":
            from tests.softhsm import make_softhsm_token

            try:
                token = make_softhsm_token(Path(tmp) / "hsm", label="vcc-bench-scep")
            except Exception as exc:  # no SoftHSM2 here: say so, go on
                return f"skipped: {exc}"
            extra = {**extra, **softhsm_env(token)}
        if store == "postgres":
            extra["VCC_PKI_DATABASE_URL"] = asyncio.run(
                pg.create(f"scep_{backend}_w{workers}"))
        with running_gateway(Path(tmp) / "data", extra) as gateway:
            return asyncio.run(_run(f"{gateway.http_url}/scep", args.seconds,
                                    args.concurrency, gateway.process.pid))


if __name__ == "__main__":
    main()
