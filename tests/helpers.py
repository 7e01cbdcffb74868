"""Test helpers: CSRs and keys made on the fly (no fixture files whose origin is unknown)."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from ca_core.authority import IssuedCertificate
from ca_core.hierarchy import ensure_hierarchy
from ca_core.storage import StoreUnavailable
from gateway.config import load_config
from gateway.runtime import Services, open_services


def make_key(kind: str = "ec-p256") -> CertificateIssuerPrivateKeyTypes:
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ec-p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind.startswith("rsa-"):
        return rsa.generate_private_key(65537, int(kind[4:]))
    raise ValueError(kind)


def make_csr(
    cn: str | None = "svc.example.test",
    dns: tuple[str, ...] = ("svc.example.test",),
    ips: tuple[str, ...] = (),
    emails: tuple[str, ...] = (),
    key: CertificateIssuerPrivateKeyTypes | None = None,
    pem: bool = True,
) -> bytes:
    key = key or make_key()
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    names += [x509.RFC822Name(e) for e in emails]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, algorithm)  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER)


def bridge_root(common_name: str = "State Bridge Root",
                key: CertificateIssuerPrivateKeyTypes | None = None
                ) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
    """Another authority's self-signed root, to cross-certify our CAs in tests."""
    import datetime as dt

    key = key or make_key("ec-p256")
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "State Bridge"),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def cross_certify(csr_pem: bytes, issuer_key: CertificateIssuerPrivateKeyTypes,
                  issuer: x509.Certificate, days: int = 365, ca: bool = True
                  ) -> x509.Certificate:
    """What the other authority does with our CA's CSR: a CA certificate for its key."""
    import datetime as dt

    csr = x509.load_pem_x509_csr(csr_pem)
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder().subject_name(csr.subject).issuer_name(issuer.subject)
        .public_key(csr.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(issuer_key, hashes.SHA256())
    )


def pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


@contextlib.asynccontextmanager
async def fresh_services(tmp_path: Path, **env: str) -> AsyncIterator[Services]:
    """Gateway services on a fresh PKI in ``tmp_path`` as `vcc-pki init` makes it (SQLite,
    software keys, P-256 root and intermediate); ``env`` adds or overrides VCC_PKI_*."""
    config = load_config(environ={
        "VCC_PKI_DATA_DIR": str(tmp_path / "data"),
        "VCC_PKI_KEY_PASSPHRASE": "test-passphrase",
        "VCC_PKI_ROOT_KEY_TYPE": "ec-p256",
        "VCC_PKI_INTERMEDIATE_KEY_TYPE": "ec-p256",
        **env,
    })
    async with open_services(config, create=True) as opened:
        await ensure_hierarchy(opened.authority, config.tsa_settings())
        await opened.authority.load()
        yield opened


def fail_certificate_writes(monkeypatch: pytest.MonkeyPatch, store: Any,
                            method: str = "add_certificate") -> list[Any]:
    """Make ``store.add_certificate`` raise StoreUnavailable, as a database lost at exactly
    the issuance write would, while every other call of the store keeps working (closing
    the store instead fails the request long before it reaches that write). Returns the
    records whose write was attempted, so a test can see that issuance got that far."""
    attempts: list[Any] = []

    async def unavailable(cert: Any, audit: Any, *more: Any) -> None:
        attempts.append(cert)
        raise StoreUnavailable("simulated: the database went away at the certificate write")

    # ``method``: another of the store's certificate writes (they all take cert, audit
    # first), e.g. add_certificate_for_acme_order
    monkeypatch.setattr(store, method, unavailable)
    return attempts


class ListenerRecorder:
    """A CertificateListener that keeps what it is told: the OCSP precompute and everything
    else that hears of an issuance hear of it through this interface."""

    def __init__(self) -> None:
        self.issued: list[IssuedCertificate] = []
        self.revoked: list[Any] = []

    async def certificate_issued(self, issued: IssuedCertificate) -> None:
        self.issued.append(issued)

    async def certificate_revoked(self, record: Any) -> None:
        self.revoked.append(record)
