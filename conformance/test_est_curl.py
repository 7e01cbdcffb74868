"""EST (RFC 7030, RFC 8951) with curl and openssl against `vcc-pki serve` (est_curl.sh):
every endpoint, labels, wrapped and unwrapped base64, Basic and client certificates, re-key,
serverkeygen, the 202 flow, TLS 1.2 with tls-unique channel binding, a trusted proxy's
certificate header, and every kind of bad input as a plain-text 4xx that issues nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conformance.gateway import assert_clean_log, run_script, running_gateway

SCRIPT = Path(__file__).with_name("est_curl.sh")


def _manufacturer_ca(directory: Path) -> Path:
    """A device manufacturer's CA (the EST trust store): its IDevIDs may enroll."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Devices"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Example Devices IDevID CA")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    (directory / "mfg-ca.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "mfg-ca.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return directory


# The script runs `vcc-pki audit verify` around every refusal (~60 CLI starts): about a
# minute on a quiet machine, more under load.
@pytest.mark.timeout(300)
def test_est_with_curl_and_openssl(tmp_path: Path) -> None:
    _est_script(tmp_path, {})


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_est_on_two_workers_postgresql(tmp_path: Path) -> None:
    """The same script against two serving processes (SO_REUSEPORT) on PostgreSQL: secrets,
    labels, pending requests and re-enrollment hold across them through the store."""
    from tests.pg import create_throwaway_database, drop_database, require_postgres

    require_postgres()
    dsn = asyncio.run(create_throwaway_database())
    try:
        _est_script(tmp_path, {"VCC_PKI_DATABASE_URL": dsn, "VCC_PKI_WORKERS": "2"})
    finally:
        asyncio.run(drop_database(dsn))


def _est_script(tmp_path: Path, extra: dict[str, str]) -> None:
    mfg = _manufacturer_ca(tmp_path / "mfg")
    env = {"VCC_PKI_KEY_PASSPHRASE": "conformance",
           "VCC_PKI_EST_TRUST_STORE": str(mfg / "mfg-ca.pem"),
           "VCC_PKI_EST_TRUSTED_PROXIES": "127.0.0.2", **extra}
    with running_gateway(tmp_path / "data", env) as gateway:
        output = run_script(SCRIPT, gateway, MFG_DIR=str(mfg))
        pending = gateway.cli("est", "pending", "list").stdout
    assert "== channel binding" in output
    # the one pending request was approved and issued: none left waiting
    assert pending.strip().splitlines()[1:] == []
    assert_clean_log(tmp_path / "data")


def test_every_worker_serves_est(tmp_path: Path) -> None:
    """``VCC_PKI_WORKERS=2``: both processes bind the EST port (SO_REUSEPORT), like the
    others. Request ids start with a prefix per process, so two prefixes are two workers."""
    import ssl
    import urllib.request

    with running_gateway(tmp_path / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance",
                                             "VCC_PKI_WORKERS": "2"}) as gateway:
        context = ssl.create_default_context(cafile=str(tmp_path / "data" / "ca" / "root.pem"))
        prefixes: set[str] = set()
        for _ in range(400):  # the second worker starts after the first one listens
            with urllib.request.urlopen(f"{gateway.est_url}/.well-known/est/cacerts",
                                        context=context, timeout=10) as response:
                assert response.status == 200
                prefixes.add(response.headers["X-Request-ID"][:16])
            if len(prefixes) == 2:
                break
    assert len(prefixes) == 2
