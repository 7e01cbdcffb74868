"""Cross-certificates: the CA's CSR, the checks on an imported chain, the alternate chains."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca_core.authority import IssuanceRequest
from ca_core.cross import (
    add_cross_certificate,
    alternate_chains,
    check_cross_chain,
    cross_certification_request,
)
from ca_core.errors import BadRequest, Conflict
from ca_core.principal import Principal
from tests.conftest import Pki
from tests.helpers import bridge_root, cross_certify, make_csr, make_key, pem

ADMIN = Principal.system("test")


async def test_csr_is_signed_by_the_ca_key_and_names_the_ca(pki: Pki) -> None:
    intermediate = await pki.authority.ca("intermediate")
    csr = x509.load_pem_x509_csr(await cross_certification_request(pki.authority,
                                                                    "intermediate"))
    assert csr.is_signature_valid
    assert csr.subject == intermediate.certificate.subject
    assert csr.public_key() == intermediate.certificate.public_key()
    constraints = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca


async def test_alternate_chain_through_a_cross_certified_intermediate(pki: Pki) -> None:
    authority = pki.authority
    bridge_key, bridge = bridge_root()
    cross = cross_certify(await cross_certification_request(authority, "intermediate"),
                          bridge_key, bridge)
    issuing = await authority.ca("default-issuing")
    assert await alternate_chains(authority, issuing) == []

    # The other root at the end of the file is left out of the chain.
    record = await add_cross_certificate(authority, "intermediate", pem(cross, bridge), ADMIN)
    assert record.top_issuer == bridge.subject.rfc4514_string()
    assert x509.load_pem_x509_certificates(record.chain_pem.encode()) == [cross]

    chains = await alternate_chains(authority, issuing)
    assert chains == [(issuing.certificate, cross)]
    # A leaf of the issuing CA verifies up to the bridge root through the alternate chain.
    issued = await authority.issue(IssuanceRequest(csr=make_csr(), profile="vcc_service"),
                                   ADMIN)
    issued.certificate.verify_directly_issued_by(chains[0][0])
    chains[0][0].verify_directly_issued_by(cross)
    cross.verify_directly_issued_by(bridge)

    # A cross-certificate of the root (root rollover) gives a chain through our whole path.
    old_key, old_root = bridge_root("Old Root")
    root_cross = cross_certify(await cross_certification_request(authority, "root"),
                               old_key, old_root)
    await add_cross_certificate(authority, "root", pem(root_cross), ADMIN)
    chains = await alternate_chains(authority, issuing)
    assert chains[1] == (*issuing.chain, root_cross)

    with pytest.raises(Conflict):
        await add_cross_certificate(authority, "intermediate", pem(cross), ADMIN)
    entries = await pki.store.audit_entries()
    assert [e.event.event_type for e in entries].count("ca.cross_certificate_added") == 2


async def test_expired_cross_certificates_are_not_offered(pki: Pki) -> None:
    authority = pki.authority
    bridge_key, bridge = bridge_root()
    cross = cross_certify(await cross_certification_request(authority, "intermediate"),
                          bridge_key, bridge, days=1)
    await add_cross_certificate(authority, "intermediate", pem(cross), ADMIN)
    issuing = await authority.ca("default-issuing")
    assert len(await alternate_chains(authority, issuing)) == 1
    real_clock = authority.clock
    authority.clock = lambda: real_clock() + dt.timedelta(days=2)
    assert await alternate_chains(authority, issuing) == []


async def test_bad_cross_chains_are_refused(pki: Pki) -> None:
    authority = pki.authority
    intermediate = await authority.ca("intermediate")
    now = authority.clock()
    bridge_key, bridge = bridge_root()
    csr = await cross_certification_request(authority, "intermediate")
    good = cross_certify(csr, bridge_key, bridge)

    def refused(data: bytes, match: str) -> None:
        with pytest.raises(BadRequest, match=match):
            check_cross_chain(intermediate.certificate, data, now)

    refused(b"", "no PEM certificates")
    refused(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
            "no PEM certificates")
    refused(pem(intermediate.certificate), "own certificate")
    # another key under the same name
    other_csr = x509.CertificateSigningRequestBuilder().subject_name(
        intermediate.certificate.subject).sign(make_key(), hashes.SHA256())
    wrong_key = cross_certify(other_csr.public_bytes(serialization.Encoding.PEM),
                              bridge_key, bridge)
    refused(pem(wrong_key), "same subject")
    # the issuing CA's CSR cross-certified, offered as the intermediate's
    issuing_csr = await cross_certification_request(authority, "default-issuing")
    refused(pem(cross_certify(issuing_csr, bridge_key, bridge)), "same subject")
    refused(pem(cross_certify(csr, bridge_key, bridge, ca=False)), "not a CA certificate")
    expired = cross_certify(csr, bridge_key, bridge, days=1)
    with pytest.raises(BadRequest, match="not valid now"):
        check_cross_chain(intermediate.certificate, pem(expired), now + dt.timedelta(days=2))
    # the certificate after the cross-certificate is not its issuer
    _, stranger = bridge_root("Stranger Root")
    _, stranger_ca = bridge_root("Stranger CA")
    refused(pem(good, stranger_ca, stranger), "is not issued by")
    refused(pem(*[good] * 9), "at most")
    # a trailing root must have issued the certificate before it, though it is left out
    refused(pem(good, stranger), "is not issued by")
    forged_key, _ = bridge_root()  # claims to be the bridge, signed by another key
    forged = cross_certify(csr, forged_key, bridge)
    refused(pem(forged, bridge), "is not issued by")
    # the good one passes, and nothing was recorded by the refusals
    assert check_cross_chain(intermediate.certificate, pem(good, bridge), now) == (good,)
    assert await pki.store.list_cross_certificates() == []


async def test_the_time_stamping_key_is_no_certificate_authority(pki: Pki) -> None:
    """The TSA is stored as a CA record; it must get no CA CSR and no cross-certificate."""
    from ca_core.hierarchy import ensure_hierarchy

    await ensure_hierarchy(pki.authority)  # the fixture's hierarchy has the TSA too
    tsa = next(r for r in await pki.store.list_cas() if r.ca_type == "tsa")
    with pytest.raises(BadRequest, match="not a certificate authority"):
        await cross_certification_request(pki.authority, tsa.name)
    _, bridge = bridge_root()
    with pytest.raises(BadRequest, match="not a certificate authority"):
        await add_cross_certificate(pki.authority, tsa.name, pem(bridge), ADMIN)
