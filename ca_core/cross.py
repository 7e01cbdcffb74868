"""Cross-certificates and the alternate chains they give.

A CA of ours can also be certified by another issuer: a bridge CA of another authority, or
the old root while relying parties move to a new one (root rollover). The operator imports
that cross-certificate, with the certificates above it up to the other root, and every
certificate issued below that CA then has a second chain: ours up to the cross-certified
CA, then the imported certificates. ACME offers it as ``Link: rel="alternate"`` (RFC 8555
7.4.2), which is what ``certbot --preferred-chain`` and ``lego --preferred-chain`` choose
from (by the common name of the topmost certificate's issuer).

The checks here make sure an imported chain is an alternate path for the same key and name,
and that it holds together; whether to trust the other root is the relying party's choice.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import itertools
import secrets

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ca_core.authority import Authority, LoadedCA, chain_pem
from ca_core.errors import BadRequest, Conflict
from ca_core.principal import Principal
from ca_core.records import AuditEvent, CrossCertificateRecord
from ca_core.storage import StoreConflict

MAX_CHAIN = 8


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(
            x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _self_signed(certificate: x509.Certificate) -> bool:
    if certificate.subject != certificate.issuer:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_cross_chain(ca_certificate: x509.Certificate, pem: bytes, now: dt.datetime
                      ) -> tuple[x509.Certificate, ...]:
    """The imported chain, checked: the cross-certificate (same subject and key as
    ``ca_certificate``, from another issuer), then each issuer of the one before. A
    self-signed root at the end is dropped: relying parties hold it as a trust anchor."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise BadRequest("the file holds no PEM certificates") from None
    if not certificates or len(certificates) > MAX_CHAIN:
        raise BadRequest(f"give the cross-certificate and at most {MAX_CHAIN - 1} "
                         "certificates above it")
    cross = certificates[0]
    if cross == ca_certificate:
        raise BadRequest("this is the CA's own certificate, not a cross-certificate")
    if cross.subject != ca_certificate.subject or \
            cross.public_key() != ca_certificate.public_key():
        raise BadRequest("the first certificate must certify this CA: the same subject "
                         f"({ca_certificate.subject.rfc4514_string()}) and the same key")
    if _self_signed(cross):
        raise BadRequest("the first certificate is self-signed; a cross-certificate is "
                         "issued by another CA")
    for position, certificate in enumerate(certificates):
        if not _is_ca(certificate):
            raise BadRequest(f"certificate {position + 1} is not a CA certificate")
        if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
            raise BadRequest(f"certificate {position + 1} "
                             f"({certificate.subject.rfc4514_string()}) is not valid now")
    for lower, upper in itertools.pairwise(certificates):
        try:
            lower.verify_directly_issued_by(upper)
        except (ValueError, TypeError, InvalidSignature):
            raise BadRequest(f"{lower.subject.rfc4514_string()} is not issued by the next "
                             f"certificate ({upper.subject.rfc4514_string()})") from None
    # The other root, once it has vouched for the certificate below it, stays out.
    if len(certificates) > 1 and _self_signed(certificates[-1]):
        certificates = certificates[:-1]
    return tuple(certificates)


async def _certifying_ca(authority: Authority, ca_name: str) -> LoadedCA:
    """A CA that certifies others (root, intermediate, issuing): the time-stamping key is
    stored as a CA record too, but must never become a CA key."""
    ca = await authority.ca(ca_name)
    if ca.record.ca_type not in ("root", "intermediate", "issuing"):
        raise BadRequest(f"{ca_name} is a {ca.record.ca_type} key, not a certificate authority")
    return ca


@functools.lru_cache(maxsize=256)
def _parsed(chain_pem: str) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_pem_x509_certificates(chain_pem.encode()))


async def add_cross_certificate(authority: Authority, ca_name: str, pem: bytes,
                                principal: Principal) -> CrossCertificateRecord:
    """Record a cross-certificate of CA ``ca_name``; BadRequest when the chain does not
    hold together, Conflict when it is recorded already."""
    ca = await _certifying_ca(authority, ca_name)
    now = authority.clock()
    chain = check_cross_chain(ca.certificate, pem, now)
    fingerprint = hashlib.sha256(
        chain[0].public_bytes(serialization.Encoding.DER)).hexdigest()
    record = CrossCertificateRecord(
        cross_id=secrets.token_hex(8), ca_id=ca.record.ca_id, fingerprint=fingerprint,
        chain_pem=chain_pem(chain), top_issuer=chain[-1].issuer.rfc4514_string(),
        not_after=min(c.not_valid_after_utc for c in chain), created_at=now)
    event = AuditEvent(
        event_type="ca.cross_certificate_added", category="ca", action="add_cross_certificate",
        actor_type=principal.actor_type, actor_id=principal.actor_id,
        org_id=ca.record.org_id, resource_type="certificate_authority",
        resource_id=ca.record.ca_id,
        data={"ca": ca.record.name, "fingerprint": fingerprint,
              "issuer": chain[0].issuer.rfc4514_string(), "top_issuer": record.top_issuer})
    try:
        await authority.store.add_cross_certificate(record, event)
    except StoreConflict:
        raise Conflict("this cross-certificate is recorded already") from None
    return record


async def cross_certification_request(authority: Authority, ca_name: str) -> bytes:
    """A PKCS#10 request (PEM) for the other CA to cross-certify CA ``ca_name``: its subject
    and key, signed by its key through the Signer (so a token key stays in the token)."""
    ca = await _certifying_ca(authority, ca_name)
    path_length = ca.certificate.extensions.get_extension_for_class(
        x509.BasicConstraints).value.path_length
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(ca.certificate.subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    )
    signer = ca.signer
    request = await signer.run(lambda: builder.sign(
        signer.builder_key(), signer.key_spec.hash_algorithm))  # type: ignore[arg-type]
    return request.public_bytes(serialization.Encoding.PEM)


async def _path(authority: Authority, ca: LoadedCA) -> list[LoadedCA]:
    """``ca`` and every CA above it, the root last."""
    path = [ca]
    while path[-1].record.parent_ca_id is not None and len(path) < 16:
        path.append(await authority.ca_by_id(path[-1].record.parent_ca_id))
    return path


async def alternate_chains(authority: Authority, ca: LoadedCA
                           ) -> list[tuple[x509.Certificate, ...]]:
    """The chains other than ``ca.chain`` for certificates that ``ca`` issues: for each
    live cross-certificate of ``ca`` or of a CA above it, our chain up to that CA, then the
    imported certificates. Oldest import first."""
    path = await _path(authority, ca)
    position = {loaded.record.ca_id: index for index, loaded in enumerate(path)}
    now = authority.clock()
    chains = []
    for cross in await authority.store.list_cross_certificates(list(position)):
        if cross.not_after <= now:
            continue
        chains.append(ca.chain[:position[cross.ca_id]] + _parsed(cross.chain_pem))
    return chains


async def cross_certificates(authority: Authority, ca_name: str) -> list[CrossCertificateRecord]:
    ca = await authority.ca(ca_name)
    return await authority.store.list_cross_certificates([ca.record.ca_id])
