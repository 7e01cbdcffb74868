"""EST core (ca_core.est, RFC 7030): labels, one-time secrets, client certificates, channel
binding, re-enrollment, server key generation, CSR attributes and manual approval, on the
real store (SQLite; the secret race on PostgreSQL too). Every refusal is a CAError kind and
leaves no certificate issued and no secret spent."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import core, parser
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import ocsp
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import AttributeOID, NameOID

from ca_core import authority as authority_module
from ca_core.authority import hash_secret
from ca_core.cms import decrypt_enveloped, verify_signed
from ca_core.der import sequence as der_sequence
from ca_core.errors import (
    BadCSR,
    BadCSRSignature,
    BadRequest,
    CAError,
    Conflict,
    Forbidden,
    NotFound,
    PolicyViolation,
    Unauthorized,
    Unavailable,
)
from ca_core.est import (
    ASYMM_DECRYPT_KEY_ID,
    DECRYPT_KEY_ID,
    AuthMethod,
    CreatedSecret,
    EstCredentials,
    EstLabel,
    EstService,
    EstSettings,
)
from ca_core.hierarchy import activate_issuing_ca, ensure_organization, rollover_issuing_ca
from ca_core.keys import KeySpec
from ca_core.ocsp import cache_key
from ca_core.principal import Principal
from ca_core.signers.base import SoftwareSigner
from ca_core.storage import StoreUnavailable
from gateway.runtime import Services
from tests.helpers import bridge_root, fresh_services, make_key
from tests.pg import create_throwaway_database, drop_database, require_postgres

ADMIN = Principal.system("test-operator")
DNS = "dev1.devices.example"


def csr(cn: str = DNS, dns: tuple[str, ...] = (DNS,), key: Any = None,
        challenge: str | None = None, attributes: tuple[tuple[str, bytes], ...] = (),
        emails: tuple[str, ...] = (), subject: x509.Name | None = None) -> bytes:
    key = key or make_key()
    name = subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.RFC822Name(e) for e in emails]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    for oid, value in attributes:
        builder = builder.add_attribute(x509.ObjectIdentifier(oid), value,
                                        _tag=_ASN1Type.OctetString)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def basic(secret: CreatedSecret, **more: Any) -> EstCredentials:
    return EstCredentials(basic_user=secret.user, basic_password=secret.password, **more)


def leaf(issuer_key: CertificateIssuerPrivateKeyTypes, issuer: x509.Certificate,
         cn: str = "SN-0001", key: Any = None, days: int = 365,
         start: dt.datetime | None = None) -> tuple[Any, x509.Certificate]:
    """A manufacturer's device certificate (IDevID-like)."""
    key = key or make_key()
    start = start or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
        .sign(issuer_key, hashes.SHA256()))
    return key, certificate


@pytest.fixture
async def pki(tmp_path: Path) -> AsyncIterator[Services]:
    async with fresh_services(tmp_path) as opened:
        yield opened


def service(pki: Services, **settings: Any) -> EstService:
    return EstService(pki.authority, pki.store, EstSettings(**settings))


async def certificates(pki: Services) -> int:
    """End-entity certificates issued (not the PKI's own OCSP and TSA certificates)."""
    return sum(n for _, profile, n in await pki.store.count_active_certificates(
        dt.datetime.now(dt.UTC)) if profile not in ("ocsp_signing", "timestamp_authority"))


async def spent(pki: Services, secret: CreatedSecret) -> bool:
    stored = await pki.store.get_enrollment_secret(secret.user)
    assert stored is not None
    return stored.used_at is not None


async def label(est: EstService, pki: Services, name: str = "routers", **policy: Any
                ) -> EstLabel:
    org = await pki.authority.organization("default")
    made = EstLabel(name, org.org_id, policy.pop("profile", "vcc_service"), **policy)
    await est.set_label(made, ADMIN)
    found = await est.resolve_label(name)
    assert found.policy() == made.policy()
    return found


# --- labels, cacerts, csrattrs ----------------------------------------------------------

async def test_default_label_cacerts_and_unknown_labels(pki: Services) -> None:
    est = service(pki)
    default = await est.resolve_label("")
    org = await pki.authority.organization("default")
    assert (default.org_id, default.profile) == (org.org_id, "vcc_service")
    chain = await est.ca_certificates("")
    assert "Issuing CA default" in chain[0].subject.rfc4514_string()
    assert chain[-1].subject == chain[-1].issuer  # the root (RFC 7030 4.1.3)
    for child, parent in itertools.pairwise(chain):
        child.verify_directly_issued_by(parent)
    for unknown in ("nope", "cacerts", "../x", "a" * 200):
        with pytest.raises(NotFound):
            await est.resolve_label(unknown)
        with pytest.raises(NotFound):
            await est.ca_certificates(unknown)


async def test_cacerts_follow_an_issuing_ca_rollover(pki: Services) -> None:
    # /cacerts names the CA that signs what the label enrolls: the active one.
    est = service(pki)
    await rollover_issuing_ca(pki.authority, "default")
    assert "Issuing CA default" in (await est.ca_certificates(""))[0].subject.rfc4514_string()
    await activate_issuing_ca(pki.authority, "default-issuing-g2")
    chain = await est.ca_certificates("")
    assert "Issuing CA default G2" in chain[0].subject.rfc4514_string()
    secret = await est.create_secret("default", "", None, None, ADMIN)
    result = await est.enroll("", csr(), basic(secret))
    assert result.certificate is not None
    assert result.certificate.issuer == chain[0].subject


async def test_set_label_checks_and_audits(pki: Services) -> None:
    est = service(pki)
    org = await pki.authority.organization("default")
    before = len(await pki.store.audit_entries())
    made = await label(est, pki, accept=frozenset({AuthMethod.CERTIFICATE}),
                       require_approval=True, key_type="ec-p384")
    assert made.accept == frozenset({AuthMethod.CERTIFICATE}) and made.require_approval
    entries = (await pki.store.audit_entries())[before:]
    assert [(e.event.event_type, e.event.actor_id, e.event.resource_id)
            for e in entries] == [("est.label_set", "test-operator", "routers")]
    assert [x.label for x in await est.list_labels()] == ["routers"]
    good = EstLabel("x", org.org_id, "vcc_service")
    bad: list[tuple[EstLabel, type[CAError]]] = [
        (dataclasses.replace(good, label="simpleenroll"), BadRequest),
        (dataclasses.replace(good, label="a/b"), BadRequest),
        (dataclasses.replace(good, profile="nope"), BadRequest),
        (dataclasses.replace(good, profile="ocsp_signing"), BadRequest),
        (dataclasses.replace(good, key_type="dsa-1024"), BadRequest),
        (dataclasses.replace(good, profile="code_signing", key_type="rsa-2048"), BadRequest),
        (dataclasses.replace(good, accept=frozenset()), BadRequest),
        (dataclasses.replace(good, require_both=True,
                             accept=frozenset({AuthMethod.BASIC})), BadRequest),
        (dataclasses.replace(good, org_id="no-such-org"), NotFound),
    ]
    for wrong, kind in bad:
        with pytest.raises(kind):
            await est.set_label(wrong, ADMIN)
    with pytest.raises(Forbidden):
        await est.set_label(good, Principal("api", "t", org.org_id, "cert_manager"))
    assert [x.label for x in await est.list_labels()] == ["routers"]


def _children(encoded: bytes) -> list[bytes]:
    """The encoded elements inside a SEQUENCE or SET."""
    contents = parser.parse(encoded)[4]
    found = []
    while contents:
        _, _, _, header, inner, trailer = parser.parse(contents, strict=False)
        size = len(header) + len(inner) + len(trailer)
        found.append(contents[:size])
        contents = contents[size:]
    return found


def _csr_attrs(encoded: bytes) -> list[Any]:
    """CsrAttrs read generically: an OID string, or (type, [value OIDs])."""
    found: list[Any] = []
    for item in _children(encoded):
        if item[0] == 0x06:
            found.append(core.ObjectIdentifier.load(item).dotted)
            continue
        kind, values = _children(item)
        found.append((core.ObjectIdentifier.load(kind).dotted,
                      [core.ObjectIdentifier.load(v).dotted for v in _children(values)]))
    return found


async def test_csr_attributes(pki: Services) -> None:
    est = service(pki)
    assert _csr_attrs(await est.csr_attributes("")) == [
        ("1.2.840.10045.2.1", ["1.2.840.10045.3.1.7"]),  # id-ecPublicKey, P-256
        ("1.2.840.113549.1.9.14", ["2.5.29.17"]),  # extensionRequest: subjectAltName
        "1.2.840.10045.4.3.2",  # ecdsa-with-SHA256
    ]
    await label(est, pki, "bound", require_channel_binding=True, key_type="rsa-3072",
                profile="external_integration")
    assert _csr_attrs(await est.csr_attributes("bound")) == [
        "1.2.840.113549.1.9.7",  # challengePassword: channel binding required
        "1.2.840.113549.1.1.1",  # rsaEncryption
        "1.2.840.113549.1.1.11",  # sha256WithRSAEncryption
    ]
    with pytest.raises(NotFound):
        await est.csr_attributes("nope")


# --- secrets ----------------------------------------------------------------------------

async def test_secret_enrolls_once(pki: Services) -> None:
    est = service(pki)
    secret = await est.create_secret("default", "", None, None, ADMIN)
    assert secret.record.secret_hash == hash_secret(secret.password)
    assert secret.password not in repr(await pki.store.get_enrollment_secret(secret.user))
    result = await est.enroll("", csr(), basic(secret))
    assert result.certificate is not None and result.retry_after is None
    assert result.certificate.subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)[0].value == DNS
    record = (await pki.store.find_certificates_by_serial(
        format(result.certificate.serial_number, "x")))[0]
    assert record.requester == f"est:secret:{secret.user}"
    assert await spent(pki, secret)
    assert [e.event.event_type for e in (await pki.store.audit_entries())[-2:]] == [
        "est.secret_used", "certificate.issued"]
    with pytest.raises(Unauthorized, match="used already"):
        await est.enroll("", csr(), basic(secret))
    assert await certificates(pki) == 1


async def test_bad_credentials_are_unauthorized_and_issue_nothing(pki: Services) -> None:
    est = service(pki)
    secret = await est.create_secret("default", "", None, None, ADMIN)
    for credentials in (EstCredentials(),
                        EstCredentials(basic_user=secret.user, basic_password="wrong"),
                        EstCredentials(basic_user="est-nobody", basic_password=secret.password),
                        EstCredentials(basic_user="", basic_password="")):
        with pytest.raises(Unauthorized):
            await est.enroll("", csr(), credentials)
    assert not await spent(pki, secret)
    assert await certificates(pki) == 0


async def test_expired_secret(pki: Services) -> None:
    est = service(pki)
    secret = await est.create_secret("default", "", None, dt.timedelta(minutes=5), ADMIN)
    later = EstService(pki.authority, pki.store, clock=lambda: dt.datetime.now(dt.UTC)
                       + dt.timedelta(minutes=6))
    with pytest.raises(Unauthorized, match="expired"):
        await later.enroll("", csr(), basic(secret))
    assert not await spent(pki, secret) and await certificates(pki) == 0
    for lifetime in (dt.timedelta(0), dt.timedelta(days=91)):
        with pytest.raises(BadRequest):
            await est.create_secret("default", "", None, lifetime, ADMIN)


async def test_refusals_spend_no_secret(pki: Services) -> None:
    est = service(pki)
    secret = await est.create_secret("default", "", "CN=" + DNS, None, ADMIN)
    good = csr()
    broken = bytearray(good)
    broken[-5] ^= 0xFF  # the signature
    refusals: list[tuple[bytes, type[CAError]]] = [
        (b"not a csr", BadCSR),
        (bytes(broken), BadCSRSignature),
        (csr(cn="other.devices.example", dns=("other.devices.example",)), BadRequest),
        (csr(emails=("a@devices.example",)), PolicyViolation),  # vcc_service: no email SAN
    ]
    for body, kind in refusals:
        with pytest.raises(kind):
            await est.enroll("", body, basic(secret))
    assert not await spent(pki, secret) and await certificates(pki) == 0
    assert (await est.enroll("", good, basic(secret))).certificate is not None


async def test_bad_subject_pin_is_refused(pki: Services) -> None:
    with pytest.raises(BadRequest):
        await service(pki).create_secret("default", "", "not a name", None, ADMIN)
    with pytest.raises(NotFound):
        await service(pki).create_secret("nope", "", None, None, ADMIN)
    with pytest.raises(NotFound):
        await service(pki).create_secret("default", "nope", None, None, ADMIN)


async def test_store_failure_at_the_write_leaves_the_secret_unused(
        pki: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    est = service(pki)
    secret = await est.create_secret("default", "", None, None, ADMIN)
    real = pki.store.add_certificate_consuming_secret

    async def unavailable(*args: Any) -> bool:
        raise StoreUnavailable("simulated: the database went away at the write")

    monkeypatch.setattr(pki.store, "add_certificate_consuming_secret", unavailable)
    with pytest.raises(Unavailable):
        await est.enroll("", csr(), basic(secret))
    monkeypatch.setattr(pki.store, "add_certificate_consuming_secret", real)
    assert not await spent(pki, secret) and await certificates(pki) == 0
    assert (await est.enroll("", csr(), basic(secret))).certificate is not None


async def _race(pki: Services) -> None:
    est = service(pki)
    secret = await est.create_secret("default", "", None, None, ADMIN)
    results = await asyncio.gather(
        *(est.enroll("", csr(), basic(secret)) for _ in range(8)), return_exceptions=True)
    issued = [r for r in results if not isinstance(r, BaseException)]
    assert len(issued) == 1, results
    assert all(isinstance(r, Unauthorized) for r in results if r not in issued)
    assert await certificates(pki) == 1


async def test_one_secret_at_once_yields_one_certificate(pki: Services) -> None:
    await _race(pki)


@pytest.mark.postgres
async def test_one_secret_at_once_yields_one_certificate_on_postgres(tmp_path: Path) -> None:
    require_postgres()
    dsn = await create_throwaway_database()
    try:
        async with fresh_services(tmp_path, VCC_PKI_DATABASE_URL=dsn) as opened:
            assert opened.store.backend == "postgresql"
            await _race(opened)
    finally:
        await drop_database(dsn)


async def test_secret_of_another_organization_or_label(pki: Services) -> None:
    est = service(pki)
    await ensure_organization(pki.authority, "globex")
    other = await est.create_secret("globex", "", None, None, ADMIN)
    with pytest.raises(Forbidden):
        await est.enroll("", csr(), basic(other))
    await label(est, pki, "routers")
    await label(est, pki, "cameras")
    for_routers = await est.create_secret("default", "routers", None, None, ADMIN)
    with pytest.raises(Forbidden):
        await est.enroll("cameras", csr(), basic(for_routers))
    assert not await spent(pki, other) and not await spent(pki, for_routers)
    assert (await est.enroll("routers", csr(), basic(for_routers))).certificate is not None
    with pytest.raises(BadRequest):  # a label of another organization
        await est.create_secret("globex", "routers", None, None, ADMIN)
    with pytest.raises(Forbidden):
        await est.create_secret("default", "", None, None,
                                Principal("api", "t", None, "service_account"))


# --- client certificates ----------------------------------------------------------------

async def test_manufacturer_certificates_from_the_trust_store(pki: Services) -> None:
    maker_key, maker = bridge_root("Maker Device CA")
    _, device = leaf(maker_key, maker)
    stranger_key, stranger = bridge_root("Stranger CA")
    _, untrusted = leaf(stranger_key, stranger)
    _, expired = leaf(maker_key, maker, start=dt.datetime.now(dt.UTC)
                      - dt.timedelta(days=400))
    est = service(pki, trust_store=(maker,))
    result = await est.enroll("", csr(), EstCredentials(client_certificate=device))
    assert result.certificate is not None
    forged = leaf(make_key(), maker)[1]  # names the maker, signed by another key
    for refused in (untrusted, expired, forged):
        with pytest.raises(Unauthorized):
            await est.enroll("", csr(), EstCredentials(client_certificate=refused))
    with pytest.raises(Unauthorized, match="TRUST_STORE"):
        await service(pki).enroll("", csr(), EstCredentials(client_certificate=device))
    # an intermediate the client presents, below the trusted root
    mid_key, mid = leaf(maker_key, maker, cn="Maker Line 3")
    mid = (x509.CertificateBuilder().subject_name(mid.subject).issuer_name(maker.subject)
           .public_key(mid_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(mid.not_valid_before_utc).not_valid_after(mid.not_valid_after_utc)
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .sign(maker_key, hashes.SHA256()))
    _, line_device = leaf(mid_key, mid, cn="SN-0002")
    with pytest.raises(Unauthorized):  # without the intermediate there is no path
        await est.enroll("", csr(), EstCredentials(client_certificate=line_device))
    assert (await est.enroll("", csr(), EstCredentials(
        client_certificate=line_device, client_chain=(mid,)))).certificate is not None
    assert await certificates(pki) == 2


async def test_policy_accept_and_require_both(pki: Services) -> None:
    maker_key, maker = bridge_root("Maker Device CA")
    _, device = leaf(maker_key, maker)
    est = service(pki, trust_store=(maker,))
    await label(est, pki, "certonly", accept=frozenset({AuthMethod.CERTIFICATE}))
    await label(est, pki, "both", require_both=True)
    secret = await est.create_secret("default", "", None, None, ADMIN)
    with pytest.raises(Unauthorized, match="accepts only certificate"):
        await est.enroll("certonly", csr(), basic(secret))
    with pytest.raises(Unauthorized, match="both"):
        await est.enroll("both", csr(), basic(secret))
    with pytest.raises(Unauthorized, match="both"):
        await est.enroll("both", csr(), EstCredentials(client_certificate=device))
    assert not await spent(pki, secret)
    result = await est.enroll("both", csr(), basic(secret, client_certificate=device))
    assert result.certificate is not None and await spent(pki, secret)


async def test_reenroll_with_the_certificate_being_renewed(pki: Services) -> None:
    est = service(pki)
    secret = await est.create_secret("default", "", None, None, ADMIN)
    first = await est.enroll("", csr(), basic(secret))
    assert first.certificate is not None
    mine = EstCredentials(client_certificate=first.certificate)
    # re-key: a new key, the same subject and SAN
    renewed = await est.reenroll("", csr(key=make_key("ec-p384")), mine)
    assert renewed.certificate is not None
    assert renewed.certificate.subject == first.certificate.subject
    assert renewed.certificate.public_key() != first.certificate.public_key()
    # the full subject of the certificate is the same subject too
    assert (await est.reenroll("", csr(subject=first.certificate.subject), mine)).certificate
    # a changed subject or SAN is refused, and issues nothing
    count = await certificates(pki)
    for changed in (csr(cn="evil.devices.example", dns=("evil.devices.example",)),
                    csr(dns=(DNS, "extra.devices.example")),
                    csr(subject=x509.Name([
                        x509.NameAttribute(NameOID.COMMON_NAME, DNS),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil")]))):
        with pytest.raises(BadRequest, match="differs"):
            await est.reenroll("", changed, mine)
    assert await certificates(pki) == count
    await label(est, pki, "flexible", allow_subject_change=True)
    moved = await est.reenroll("flexible", csr(cn="new.devices.example",
                                               dns=("new.devices.example",)), mine)
    assert moved.certificate is not None
    # neither Basic nor a foreign certificate re-enrolls
    with pytest.raises(Unauthorized):
        await est.reenroll("", csr(), basic(secret))
    maker_key, maker = bridge_root("Maker")
    with pytest.raises(Unauthorized, match="not issued by this PKI"):
        await est.reenroll("", csr(), EstCredentials(client_certificate=leaf(
            maker_key, maker)[1]))
    # a forgery with our issuer's name and a real serial is not ours
    forged = (x509.CertificateBuilder().subject_name(first.certificate.subject)
              .issuer_name(first.certificate.issuer).public_key(make_key().public_key())
              .serial_number(first.certificate.serial_number)
              .not_valid_before(first.certificate.not_valid_before_utc)
              .not_valid_after(first.certificate.not_valid_after_utc)
              .sign(make_key(), hashes.SHA256()))
    with pytest.raises(Unauthorized):
        await est.reenroll("", csr(), EstCredentials(client_certificate=forged))
    # expired, then revoked
    later = EstService(pki.authority, pki.store, clock=lambda: dt.datetime.now(dt.UTC)
                       + dt.timedelta(days=400))
    with pytest.raises(Unauthorized, match="expired"):
        await later.reenroll("", csr(), mine)
    await pki.authority.revoke(format(first.certificate.serial_number, "x"),
                               "superseded", ADMIN)
    count = await certificates(pki)
    with pytest.raises(Unauthorized, match="revoked"):
        await est.reenroll("", csr(), mine)
    with pytest.raises(Unauthorized, match="revoked"):  # nor does it enroll
        await est.enroll("", csr(), mine)
    assert await certificates(pki) == count


async def test_rekey_supersedes_on_a_label_that_says_so(pki: Services) -> None:
    """simplereenroll with a new key on a ``supersede_on_reenroll`` label revokes the
    renewed certificate (superseded) with the new one's write; OCSP says so at once. A
    renewal with the same key, or a label without the flag, leaves it valid."""
    await pki.ocsp.load(create=True)
    est = service(pki)
    await label(est, pki, "rekey", supersede_on_reenroll=True)
    secret = await est.create_secret("default", "", None, None, ADMIN)
    old_key = make_key()
    first = await est.enroll("rekey", csr(key=old_key), basic(secret))
    assert first.certificate is not None
    mine = EstCredentials(client_certificate=first.certificate)
    # the same key: a renewal, the old certificate stays valid
    renewed = await est.reenroll("rekey", csr(key=old_key), mine)
    assert renewed.certificate is not None
    assert (await _status(pki, first.certificate)) == "active"
    # a new key: superseded
    before = len(await pki.store.audit_entries())
    rekeyed = await est.reenroll("rekey", csr(key=make_key()), mine)
    assert rekeyed.certificate is not None
    status = await pki.authority.status(_issuer_id(pki, first.certificate),
                                        first.certificate.serial_number)
    assert status.status == "revoked" and status.record is not None
    assert status.record.revocation_reason == "superseded"
    assert (await _status(pki, rekeyed.certificate)) == "active"
    events = [e.event for e in (await pki.store.audit_entries())[before:]]
    assert {(e.event_type, e.data.get("reason")) for e in events} >= {
        ("certificate.revoked", "superseded"), ("certificate.issued", None)}
    revoked_event = next(e for e in events if e.event_type == "certificate.revoked")
    assert revoked_event.actor_id.startswith("est:certificate:")
    crl = await pki.store.list_revocations(_issuer_id(pki, first.certificate))
    assert [r.reason for r in crl] == ["superseded"]
    # OCSP follows: the precomputed response says revoked, superseded
    issuer = pki.ocsp._by_ca_id[_issuer_id(pki, first.certificate)]
    entry = await pki.cache.get(cache_key("sha1", issuer.key_id,
                                          first.certificate.serial_number))
    assert entry is not None and entry.revoked
    answer = ocsp.load_der_ocsp_response(entry.der)
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason is x509.ReasonFlags.superseded
    # the superseded certificate re-keys no more, and issues nothing
    count = await certificates(pki)
    with pytest.raises(Unauthorized, match="revoked"):
        await est.reenroll("rekey", csr(key=make_key()), mine)
    assert await certificates(pki) == count
    # a label without the flag: a re-key leaves the old certificate valid
    assert rekeyed.certificate is not None
    await est.reenroll("", csr(key=make_key()), EstCredentials(
        client_certificate=rekeyed.certificate))
    assert (await _status(pki, rekeyed.certificate)) == "active"


async def test_two_rekeys_of_one_certificate_at_once_yield_one(pki: Services) -> None:
    est = service(pki)
    await label(est, pki, "rekey", supersede_on_reenroll=True)
    secret = await est.create_secret("default", "", None, None, ADMIN)
    first = await est.enroll("rekey", csr(), basic(secret))
    mine = EstCredentials(client_certificate=first.certificate)
    count = await certificates(pki)
    results = await asyncio.gather(
        *(est.reenroll("rekey", csr(key=make_key()), mine) for _ in range(2)),
        return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["EnrollmentResult", "Unauthorized"]
    assert await certificates(pki) == count  # one new, one superseded


def _issuer_id(pki: Services, certificate: x509.Certificate) -> str:
    return next(ca.record.ca_id for ca in pki.authority.loaded_cas()
                if ca.certificate.subject == certificate.issuer)


async def _status(pki: Services, certificate: x509.Certificate) -> str:
    found = await pki.authority.status(_issuer_id(pki, certificate), certificate.serial_number)
    return "revoked" if found.status == "revoked" else "active"


async def test_certificate_of_another_organization(pki: Services) -> None:
    est = service(pki)
    await ensure_organization(pki.authority, "globex")
    globex = await pki.authority.organization("globex")
    await est.set_label(EstLabel("globex", globex.org_id, "vcc_service"), ADMIN)
    secret = await est.create_secret("default", "", None, None, ADMIN)
    first = await est.enroll("", csr(), basic(secret))
    mine = EstCredentials(client_certificate=first.certificate)
    with pytest.raises(Forbidden):
        await est.reenroll("globex", csr(), mine)
    with pytest.raises(Forbidden):
        await est.enroll("globex", csr(), mine)


# --- channel binding --------------------------------------------------------------------

async def test_channel_binding(pki: Services) -> None:
    est = service(pki)
    await label(est, pki, "bound", require_channel_binding=True)
    unique = bytes(range(12))
    binding = base64.b64encode(unique).decode()
    secret = await est.create_secret("default", "", None, None, ADMIN)
    refusals: list[tuple[bytes, EstCredentials, str]] = [
        (csr(), basic(secret, tls_unique=unique), "challengePassword must hold"),
        (csr(challenge=binding), basic(secret), "TLS 1.3"),
        (csr(challenge=base64.b64encode(b"other").decode()),
         basic(secret, tls_unique=unique), "not this TLS session"),
    ]
    for body, credentials, why in refusals:
        with pytest.raises(BadRequest, match=why):
            await est.enroll("bound", body, credentials)
    assert not await spent(pki, secret) and await certificates(pki) == 0
    result = await est.enroll("bound", csr(challenge=binding),
                              basic(secret, tls_unique=unique))
    assert result.certificate is not None
    # a label without the requirement still checks a binding the CSR carries
    other = await est.create_secret("default", "", None, None, ADMIN)
    with pytest.raises(BadRequest, match="not this TLS session"):
        await est.enroll("", csr(challenge="c3RhbGU="), basic(other, tls_unique=unique))
    assert (await est.enroll("", csr(challenge="anything"), basic(other))).certificate


# --- serverkeygen -----------------------------------------------------------------------

async def test_server_keygen(pki: Services) -> None:
    est = service(pki)
    secret = await est.create_secret("default", "", None, None, ADMIN)
    result = await est.server_keygen("", csr(), basic(secret))
    assert result.certificate is not None and result.private_key_pkcs8 is not None
    assert result.encrypted_key is None
    key = serialization.load_der_private_key(result.private_key_pkcs8, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == result.certificate.public_key()
    assert result.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [DNS]
    assert await spent(pki, secret)
    await label(est, pki, "rsa", key_type="rsa-2048")
    other = await est.create_secret("default", "", None, None, ADMIN)
    rsa_result = await est.server_keygen("rsa", csr(), basic(other))
    assert rsa_result.private_key_pkcs8 is not None
    rsa_key = serialization.load_der_private_key(rsa_result.private_key_pkcs8, None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048


async def test_server_keygen_encrypted_to_the_client(pki: Services, tmp_path: Path) -> None:
    """RFC 7030 4.4.2: EnvelopedData (to the key the AsymmetricDecryptKeyIdentifier names,
    the TLS client certificate's) of a SignedData of the AsymmetricKeyPackage, signed with
    the new key under its new certificate; openssl cms decrypts and verifies it."""
    maker_key, maker = bridge_root("Maker Device CA")
    client_key, device = leaf(maker_key, maker, key=make_key("rsa-2048"))
    ski = x509.SubjectKeyIdentifier.from_public_key(device.public_key()).digest
    est = service(pki, trust_store=(maker,))
    asks = ((ASYMM_DECRYPT_KEY_ID, ski),)  # csr() wraps it in an OCTET STRING
    result = await est.server_keygen(
        "", csr(attributes=asks), EstCredentials(client_certificate=device))
    assert result.private_key_pkcs8 is None and result.encrypted_key is not None
    assert result.certificate is not None
    info = asn1_cms.ContentInfo.load(result.encrypted_key)
    assert info["content_type"].native == "enveloped_data"
    [recipient] = info["content"]["recipient_infos"]
    # no subjectKeyIdentifier extension in the device certificate: issuerAndSerialNumber
    assert recipient.chosen["rid"].name == "issuer_and_serial_number"
    assert info["content"]["encrypted_content_info"]["content_type"].native == "signed_data"
    signer = SoftwareSigner(client_key, KeySpec.parse("rsa-2048"), "client")
    signed_data = await decrypt_enveloped(result.encrypted_key, signer, device)
    signed = asn1_cms.SignedData.load(signed_data)
    assert signed["encap_content_info"]["content_type"].dotted == \
        "2.16.840.1.101.2.1.2.78.5"  # id-ct-KP-aKeyPackage
    signed_info = asn1_cms.ContentInfo({"content_type": "signed_data",
                                        "content": signed}).dump()
    package = verify_signed(signed_info, certificates=[result.certificate]).content
    [pkcs8] = _children(package)  # AsymmetricKeyPackage of one key
    key = serialization.load_der_private_key(pkcs8, None)
    assert key.public_key() == result.certificate.public_key()
    await _openssl_opens(tmp_path, result.encrypted_key, client_key, device,
                         await est.ca_certificates(""), pkcs8)
    # a device certificate that states its key identifier is named by it
    stated = (x509.CertificateBuilder().subject_name(device.subject)
              .issuer_name(maker.subject).public_key(device.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(device.not_valid_before_utc)
              .not_valid_after(device.not_valid_after_utc)
              .add_extension(x509.SubjectKeyIdentifier(ski), critical=False)
              .sign(maker_key, hashes.SHA256()))
    again = await est.server_keygen("", csr(attributes=asks),
                                    EstCredentials(client_certificate=stated))
    assert again.encrypted_key is not None
    [recipient] = asn1_cms.ContentInfo.load(again.encrypted_key)["content"]["recipient_infos"]
    assert recipient.chosen["rid"].chosen.native == ski
    assert await decrypt_enveloped(again.encrypted_key, signer, stated)
    count = await certificates(pki)
    _, ec_device = leaf(maker_key, maker)
    await label(est, pki, "edwards", key_type="ed25519")
    for where, body, credentials in (
            ("", csr(attributes=asks), EstCredentials(client_certificate=ec_device)),
            ("", csr(attributes=((DECRYPT_KEY_ID, b"\x04\x02ab"),)),
             EstCredentials(client_certificate=device)),
            ("", csr(attributes=((ASYMM_DECRYPT_KEY_ID, b"\x04\x02ab"),)),
             EstCredentials(client_certificate=device)),
            ("", csr(attributes=((ASYMM_DECRYPT_KEY_ID, b"\x0c\x02ab"),)),
             EstCredentials(client_certificate=device)),
            ("edwards", csr(attributes=asks), EstCredentials(client_certificate=device))):
        with pytest.raises(BadRequest):
            await est.server_keygen(where, body, credentials)
    secret = await est.create_secret("default", "", None, None, ADMIN)
    with pytest.raises(BadRequest, match="client's certificate"):
        await est.server_keygen("", csr(attributes=asks), basic(secret))
    await label(est, pki, "approved", require_approval=True)
    with pytest.raises(Forbidden):
        await est.server_keygen("approved", csr(), basic(secret))
    assert not await spent(pki, secret) and await certificates(pki) == count


async def _openssl_opens(tmp_path: Path, enveloped: bytes, client_key: Any,
                         device: x509.Certificate, cas: tuple[x509.Certificate, ...],
                         pkcs8: bytes) -> None:
    """openssl cms -decrypt with the client's key, then -verify of the SignedData inside
    against the PKI's root: the package it prints is the key."""
    pem = serialization.Encoding.PEM
    (tmp_path / "client.key").write_bytes(client_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "client.pem").write_bytes(device.public_bytes(pem))
    (tmp_path / "key.p7m").write_bytes(enveloped)
    (tmp_path / "root.pem").write_bytes(cas[-1].public_bytes(pem))
    await _run("openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "key.p7m"),
               "-recip", str(tmp_path / "client.pem"), "-inkey", str(tmp_path / "client.key"),
               "-out", str(tmp_path / "signed.der"))
    # the decrypted content is the SignedData value: openssl reads it as a ContentInfo
    signed = (tmp_path / "signed.der").read_bytes()
    (tmp_path / "signed.p7m").write_bytes(asn1_cms.ContentInfo(
        {"content_type": "signed_data", "content": asn1_cms.SignedData.load(signed)}).dump())
    await _run("openssl", "cms", "-verify", "-inform", "DER", "-in",
               str(tmp_path / "signed.p7m"), "-CAfile", str(tmp_path / "root.pem"),
               "-purpose", "any", "-out", str(tmp_path / "package.der"))
    assert (tmp_path / "package.der").read_bytes() == der_sequence(pkcs8)


async def _run(*argv: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, (argv, out, err)


# --- manual approval --------------------------------------------------------------------

async def test_manual_approval(pki: Services) -> None:
    est = service(pki, approval_retry_after=30)
    await label(est, pki, "approved", require_approval=True)
    secret = await est.create_secret("default", "", None, None, ADMIN)
    body = csr()
    first = await est.enroll("approved", body, basic(secret))
    assert first.retry_after == 30 and first.certificate is None
    assert await spent(pki, secret) and await certificates(pki) == 0
    again = await est.enroll("approved", body, basic(secret))  # the same request: still 202
    assert again.retry_after == 30
    waiting = await est.pending()
    assert [(p.requester, p.status, p.csr_der) for p in waiting] == [
        (f"secret:{secret.user}", "pending", body)]
    with pytest.raises(Unauthorized):  # another request with the spent secret
        await est.enroll("approved", csr(), basic(secret))
    with pytest.raises(Unauthorized):  # the same request with a wrong password
        await est.enroll("approved", body, EstCredentials(basic_user=secret.user,
                                                          basic_password="x"))
    decided = await est.decide(waiting[0].request_id, True, ADMIN)
    assert decided.status == "issued" and decided.cert_id is not None
    issued = await est.enroll("approved", body, basic(secret))
    assert issued.certificate is not None and issued.chain
    record = await pki.store.get_certificate_by_id(decided.cert_id)
    assert record is not None and record.certificate_der == issued.certificate.public_bytes(
        serialization.Encoding.DER)
    assert record.requester == f"est:secret:{secret.user}"
    assert await est.pending() == []
    with pytest.raises(Conflict):
        await est.decide(waiting[0].request_id, False, ADMIN)
    with pytest.raises(NotFound):
        await est.decide("nope", True, ADMIN)
    assert await certificates(pki) == 1


async def test_rejected_request(pki: Services) -> None:
    maker_key, maker = bridge_root("Maker Device CA")
    _, device = leaf(maker_key, maker)
    est = service(pki, trust_store=(maker,))
    await label(est, pki, "approved", require_approval=True)
    body = csr()
    credentials = EstCredentials(client_certificate=device)
    assert (await est.enroll("approved", body, credentials)).retry_after == 60
    [waiting] = await est.pending("default")
    assert waiting.requester.startswith("certificate:")
    with pytest.raises(Forbidden):
        await est.decide(waiting.request_id, True,
                         Principal("api", "t", waiting.org_id, "service_account"))
    rejected = await est.decide(waiting.request_id, False, ADMIN)
    assert rejected.status == "rejected" and rejected.decided_at is not None
    with pytest.raises(Forbidden, match="rejected"):
        await est.enroll("approved", body, credentials)
    with pytest.raises(Conflict):
        await est.decide(waiting.request_id, True, ADMIN)
    assert await certificates(pki) == 0


async def test_issuer_names_are_looked_up_once_and_a_new_ca_is_found(
        pki: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """_issued_here keeps this PKI's issuing CAs by name: manufacturer certificates do not
    list the CAs per request; a CA the Authority loads later is found at once."""
    maker_key, maker = bridge_root("Maker Device CA")
    est = service(pki, trust_store=(maker,))
    # The Authority reads the organization's issuing CAs (rollover) every few seconds with
    # list_cas too: read once before counting, and not again however slow this machine.
    monkeypatch.setattr(authority_module, "ISSUING_CA_REFRESH_SECONDS", 3600.0)
    await pki.authority.issuing_cas(await pki.authority.organization("default"))
    listed = 0
    real = pki.store.list_cas

    async def counting() -> Any:
        nonlocal listed
        listed += 1
        return await real()

    monkeypatch.setattr(pki.store, "list_cas", counting)
    for _ in range(3):
        assert (await est.enroll("", csr(), EstCredentials(
            client_certificate=leaf(maker_key, maker)[1]))).certificate is not None
    assert listed == 1  # the maker's name, once
    await ensure_organization(pki.authority, "globex")
    globex = await pki.authority.organization("globex")
    await est.set_label(EstLabel("globex", globex.org_id, "vcc_service"), ADMIN)
    secret = await est.create_secret("globex", "", None, None, ADMIN)
    first = await est.enroll("globex", csr(), basic(secret))  # loads globex's issuing CA
    renewed = await est.reenroll("globex", csr(), EstCredentials(
        client_certificate=first.certificate))
    assert renewed.certificate is not None
