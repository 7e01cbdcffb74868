"""CRL generation benchmark: how long a CA takes to make, sign and store a full CRL with 10k
and 100k revoked entries, per key backend and store, beside ``openssl ca -gencrl`` making a
CRL of the same size from an index file (the do-it-yourself peer).

Run ``python -m conformance.bench.crl [--sizes 10000 100000] [--repeat 3]
[--only software-ec-p256 softhsm2-ec-p256 sqlite postgres]``. It prints figures and never
asserts on them (see ``conformance/bench/README.md``).

For every configuration a PKI is built the way the product does (``load_config`` ->
``open_services`` -> ``ensure_hierarchy``); revoked certificates are seeded through the
Store API (``add_certificate`` + ``revoke_certificate`` with synthetic records: no
certificate is signed, which would only make seeding slow), then
``CrlPublisher.generate`` runs ``--repeat`` times per size. Columns:

- **read ms**: ``list_revocations`` of the CA (the store's share),
- **build+sign ms**: ``CertificateRevocationListBuilder`` with every entry, signed through
  the CA's Signer (one signature, so the key backend hardly matters),
- **total ms**: the whole ``generate`` (read, build, sign, store the CRL with its audit event),
- **KiB**: size of the DER CRL,
- **openssl ms**: ``openssl ca -gencrl`` with an index.txt of as many revoked entries, the
  same curve and digest (a subprocess; includes its start-up, about 5 ms),
- **ratio**: total / openssl.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca_core.authority import LoadedCA, issuing_ca_name
from ca_core.crl import crl_builder
from ca_core.hierarchy import ensure_hierarchy
from ca_core.records import AuditEvent, CertificateRecord, Revocation
from conformance.bench.issuance import CONFIGS, HsmTokens, KeyConfig, Postgres, _env
from gateway.config import load_config
from gateway.runtime import Services, open_services

SEED_BATCH = 500  # concurrent store writes: the stores group-commit them
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
REASONS = ("key_compromise", "superseded", "cessation_of_operation", "unspecified",
           "affiliation_changed")


@dataclass
class Row:
    name: str
    size: int
    read_ms: list[float] = field(default_factory=list)
    build_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    der_bytes: int = 0
    openssl_ms: list[float] = field(default_factory=list)
    seed_s: float = 0.0
    skipped: str = ""


def _event(kind: str, serial: str) -> AuditEvent:
    return AuditEvent(event_type=kind, category="certificate", action=kind.split(".")[1],
                      actor_type="system", actor_id="bench", data={"serial": serial})


async def seed_revocations(services: Services, count: int) -> float:
    """``count`` more revoked certificates of the default issuing CA; returns seconds."""
    authority = services.authority
    ca = await authority.ca(issuing_ca_name(services.config.default_org))
    org_id = ca.record.org_id
    assert org_id is not None
    store = services.store
    started = time.perf_counter()

    async def one(i: int) -> None:
        serial = secrets.token_hex(19)
        cert = CertificateRecord(
            cert_id=str(uuid.uuid4()), issuer_ca_id=ca.record.ca_id, org_id=org_id,
            serial_hex=serial, subject_dn=f"CN=bench{i}", common_name=f"bench{i}",
            profile="vcc_service", certificate_der=b"\x30\x00", key_algorithm="ec",
            key_size=256, san={}, not_before=T0, not_after=T0 + dt.timedelta(days=3650),
            requester="bench")
        await store.add_certificate(cert, _event("certificate.issued", serial))
        await store.revoke_certificate(Revocation(
            ca.record.ca_id, serial, cert.cert_id, T0 + dt.timedelta(seconds=i),
            REASONS[i % len(REASONS)],
            invalidity_date=T0 if i % 7 == 0 else None), _event("certificate.revoked", serial))

    for start in range(0, count, SEED_BATCH):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + SEED_BATCH))))
    return time.perf_counter() - started


async def _build_and_sign(services: Services, ca: LoadedCA,
                          revocations: Sequence[Revocation]) -> bytes:
    issuer = ca.issuer_context(services.authority.settings)
    now = services.authority.clock()
    signer = ca.signer

    def build() -> bytes:
        crl = crl_builder(issuer, 1, now, now + dt.timedelta(days=1), revocations).sign(
            signer.builder_key(), signer.key_spec.hash_algorithm)  # type: ignore[arg-type]
        return crl.public_bytes(serialization.Encoding.DER)

    return await signer.run(build)


async def measure(services: Services, row: Row, repeat: int) -> None:
    authority = services.authority
    ca = await authority.ca(issuing_ca_name(services.config.default_org))
    for _ in range(repeat):
        started = time.perf_counter()
        revocations = await services.store.list_revocations(ca.record.ca_id)
        row.read_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await _build_and_sign(services, ca, revocations)
        row.build_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        published = await services.crls.generate(ca, 0)
        row.total_ms.append((time.perf_counter() - started) * 1000)
        assert published is not None and published.entries == row.size, published
        row.der_bytes = published.der_bytes


def openssl_gencrl(work: Path, size: int, repeat: int) -> list[float]:
    """``openssl ca -gencrl`` over an index.txt with ``size`` revoked entries (P-256 CA)."""
    work.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    (work / "ca.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    subprocess.run(["openssl", "req", "-x509", "-new", "-key", str(work / "ca.key"),
                    "-subj", "/CN=bench CA", "-days", "30", "-out", str(work / "ca.pem")],
                   check=True, capture_output=True)
    lines = []
    for i in range(size):
        revoked = (T0 + dt.timedelta(seconds=i)).strftime("%y%m%d%H%M%SZ")
        reason = ("keyCompromise", "superseded", "cessationOfOperation", "unspecified",
                  "affiliationChanged")[i % 5]
        lines.append(f"R\t360101000000Z\t{revoked},{reason}\t{secrets.token_hex(19).upper()}"
                     f"\tunknown\t/CN=bench{i}\n")
    (work / "index.txt").write_text("".join(lines))
    (work / "crlnumber").write_text("1000\n")
    (work / "ca.cnf").write_text(f"""[ca]
default_ca = bench
[bench]
database = {work}/index.txt
crlnumber = {work}/crlnumber
certificate = {work}/ca.pem
private_key = {work}/ca.key
default_md = sha256
default_crl_days = 1
crl_extensions = crl_ext
[crl_ext]
authorityKeyIdentifier = keyid:always
""")
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(["openssl", "ca", "-gencrl", "-config", str(work / "ca.cnf"),
                        "-out", str(work / "crl.pem")], check=True, capture_output=True)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def print_table(rows: list[Row]) -> None:
    print()
    print(f"{'configuration':<30} {'entries':>8} {'read ms':>9} {'build+sign ms':>14} "
          f"{'total ms':>10} {'KiB':>7} {'openssl ms':>11} {'ratio':>6}  seed s")
    for row in rows:
        if row.skipped:
            print(f"{row.name:<30} {row.size:>8,}  skipped: {row.skipped}")
            continue
        total, peer = _median(row.total_ms), _median(row.openssl_ms)
        ratio = f"{total / peer:.2f}" if total and peer else "-"
        print(f"{row.name:<30} {row.size:>8,} {_ms(_median(row.read_ms)):>9} "
              f"{_ms(_median(row.build_ms)):>14} {_ms(total):>10} "
              f"{row.der_bytes / 1024:>7,.0f} {_ms(peer):>11} {ratio:>6}  {row.seed_s:.1f}")
    print("\nmedians over --repeat runs; ratio = total / openssl ca -gencrl (lower is faster)")


async def run(args: argparse.Namespace) -> None:
    configs = [c for c in CONFIGS if c.issuing_key == "ec-p256"
               and (not args.only or c.name in args.only
                    or not set(args.only) & {x.name for x in CONFIGS})]
    stores = [s for s in ("sqlite", "postgres")
              if not args.only or s in args.only or not set(args.only) & {"sqlite", "postgres"}]
    sizes = sorted(args.sizes)
    base = Path(tempfile.mkdtemp(prefix="vcc-crl-bench-"))
    pg, hsm = Postgres(), HsmTokens(base)
    rows: list[Row] = []
    peer = {size: openssl_gencrl(base / f"openssl-{size}", size, args.repeat)
            for size in sizes} if shutil.which("openssl") else {}
    try:
        pg_reason = await pg.available() if "postgres" in stores else ""
        if any(c.backend == "pkcs11" for c in configs):
            hsm.prepare()
        for config in configs:
            for store in stores:
                await _run_combo(config, store, sizes, args.repeat, base, pg, pg_reason, hsm,
                                 peer, rows)
    finally:
        await pg.drop_all()
        shutil.rmtree(base, ignore_errors=True)
    print_table(rows)


async def _run_combo(config: KeyConfig, store: str, sizes: list[int], repeat: int, base: Path,
                     pg: Postgres, pg_reason: str, hsm: HsmTokens,
                     peer: dict[int, list[float]], rows: list[Row]) -> None:
    name = f"{config.name}/{store}"
    reason = pg_reason if store == "postgres" else ""
    if config.backend == "pkcs11" and hsm.reason:
        reason = hsm.reason
    if reason:
        rows.extend(Row(name, size, skipped=reason) for size in sizes)
        return
    url = await pg.create(f"crl_{config.name}") if store == "postgres" else ""
    token = hsm.local if config.backend == "pkcs11" else None
    env = _env(config, base / name.replace("/", "-"), url, token)
    async with contextlib.AsyncExitStack() as stack:
        services = await stack.enter_async_context(
            open_services(load_config(environ=env), create=True))
        await ensure_hierarchy(services.authority)
        await services.authority.load()
        seeded = 0
        for size in sizes:
            row = Row(name, size)
            row.seed_s = await seed_revocations(services, size - seeded)
            seeded = size
            await measure(services, row, repeat)
            row.openssl_ms = peer.get(size, [])
            rows.append(row)
            print(f"{name} {size:,} entries: total {_ms(_median(row.total_ms))} ms "
                  f"(seeded in {row.seed_s:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=[],
                        help="configurations (software-ec-p256, softhsm2-ec-p256) and/or "
                             "stores (sqlite, postgres)")
    args = parser.parse_args(argv)
    os.environ.setdefault("VCC_PKI_LOG_LEVEL", "WARNING")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
