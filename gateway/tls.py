"""The gateway's own HTTPS certificate, issued by ``vcc-pki init`` from its own CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_core.authority import IssuanceRequest
from ca_core.hierarchy import ROOT
from ca_core.principal import Principal
from gateway.runtime import Services

RENEW_BEFORE = dt.timedelta(days=30)


def server_names(services: Services) -> tuple[list[str], list[str]]:
    config = services.config
    dns = list(dict.fromkeys([*config.tls_hostnames, "localhost"]))
    ips = ["127.0.0.1", "::1"]
    try:
        ipaddress.ip_address(config.bind)
        if config.bind not in ("0.0.0.0", "::"):
            ips.append(config.bind)
    except ValueError:
        dns.append(config.bind)
    hostname = socket.gethostname().lower()
    if hostname and "." not in hostname and hostname.replace("-", "").isalnum():
        dns.append(hostname)
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


def _needs_new(cert_path: Path, dns: list[str], ips: list[str], now: dt.datetime) -> bool:
    if not cert_path.exists():
        return True
    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return True
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    return (cert.not_valid_after_utc - now < RENEW_BEFORE
            or not set(dns) <= have_dns or not set(ips) <= have_ips)


async def ensure_server_certificate(services: Services) -> Path:
    """Issue (or renew) ``<data_dir>/tls/server.pem`` + ``server.key``; returns the dir."""
    tls_dir = services.config.tls_dir
    cert_path, key_path = tls_dir / "server.pem", tls_dir / "server.key"
    dns, ips = server_names(services)
    if not _needs_new(cert_path, dns, ips, services.authority.clock()):
        return tls_dir
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    issued = await services.authority.issue(
        IssuanceRequest(csr=csr.public_bytes(serialization.Encoding.PEM),
                        profile="vcc_service", validity_days=365),
        Principal.system("vcc-pki init"),
    )
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp_key = key_path.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.replace(tmp_key, key_path)
    cert_path.write_text(issued.certificate_pem + issued.chain_pem, encoding="utf-8")
    return tls_dir


async def export_ca_files(services: Services) -> Path:
    """Write ``<data_dir>/ca/<name>.pem`` for every CA; returns the root's path."""
    ca_dir = services.config.data_dir / "ca"
    ca_dir.mkdir(parents=True, exist_ok=True)
    for record in await services.store.list_cas():
        cert = x509.load_der_x509_certificate(record.certificate_der)
        (ca_dir / f"{record.name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca_dir / f"{ROOT}.pem"
