"""Issuance, revocation and authorization rules of the Authority (SQLite, software keys)."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from ca_core.authority import IssuanceRequest, parse_serial, serial_hex
from ca_core.errors import (
    BadCSR,
    BadCSRSignature,
    BadPublicKey,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PolicyViolation,
    Unauthorized,
    Unavailable,
    UnknownProfile,
    ValidityTooLong,
)
from ca_core.hierarchy import ensure_hierarchy, ensure_organization
from ca_core.principal import Principal
from ca_core.records import AuditEvent
from db.audit_chain import verify_chain
from tests.conftest import Pki
from tests.helpers import ListenerRecorder, fail_certificate_writes, make_csr, make_key

SYSTEM = Principal.system("test")


async def _counts(pki: Pki) -> tuple[int, int]:
    entries = await pki.store.audit_entries()
    certs = sum(n for _, _, n in await pki.store.count_active_certificates(
        dt.datetime.now(dt.UTC)))
    return len(entries), certs


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


async def test_issued_certificate_verifies_with_openssl(pki: Pki, tmp_path: Path) -> None:
    issued = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(ips=("10.1.2.3",)), profile="vcc_service"), SYSTEM
    )
    root = (await pki.authority.ca("root")).certificate
    (tmp_path / "root.pem").write_bytes(_pem(root))
    (tmp_path / "chain.pem").write_text(issued.chain_pem)
    (tmp_path / "leaf.pem").write_text(issued.certificate_pem)
    result = subprocess.run(
        ["openssl", "verify", "-purpose", "sslserver", "-CAfile", tmp_path / "root.pem",
         "-untrusted", tmp_path / "chain.pem", tmp_path / "leaf.pem"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    # stored before returned
    stored = await pki.store.get_certificate(issued.record.issuer_ca_id, issued.record.serial_hex)
    assert stored is not None and stored.certificate_der == issued.record.certificate_der


async def test_a_failed_certificate_write_returns_no_certificate(
        pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """DESIGN.md's first invariant, recorded before returned: when the store fails at the
    certificate write itself (everything before it worked), issue raises Unavailable and
    neither the caller nor any listener (OCSP precompute) gets the certificate."""
    listener = ListenerRecorder()
    pki.authority.add_listener(listener)
    audit_before, certs_before = await _counts(pki)
    attempts = fail_certificate_writes(monkeypatch, pki.store)
    with pytest.raises(Unavailable) as raised:
        await pki.authority.issue(
            IssuanceRequest(csr=make_csr(), profile="vcc_service"), SYSTEM)
    assert len(attempts) == 1  # the write was reached, and not retried as a serial clash
    assert raised.value.detail == "the certificate store is not available"
    assert listener.issued == []
    monkeypatch.undo()  # the store works again: nothing of the failed issuance is in it
    assert await pki.store.find_certificates_by_serial(attempts[0].serial_hex) == []
    assert await _counts(pki) == (audit_before, certs_before)


async def test_certificate_contents_follow_the_profile(pki: Pki) -> None:
    issued = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(key=make_key("rsa-2048")), profile="vcc_service",
                        validity_days=30),
        SYSTEM,
    )
    cert = issued.certificate
    assert 64 <= cert.serial_number.bit_length() <= 160 and cert.serial_number > 0
    ext = {e.oid: e for e in cert.extensions}
    assert ext[ExtensionOID.BASIC_CONSTRAINTS].critical
    assert ext[ExtensionOID.KEY_USAGE].value.key_encipherment  # RSA subject key
    assert list(ext[ExtensionOID.EXTENDED_KEY_USAGE].value) == [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    issuer = await pki.authority.ca("default-issuing")
    aki = ext[ExtensionOID.AUTHORITY_KEY_IDENTIFIER].value
    ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ski.value.digest
    assert ExtensionOID.SUBJECT_KEY_IDENTIFIER in ext
    aia = ext[ExtensionOID.AUTHORITY_INFORMATION_ACCESS].value
    assert {d.access_location.value for d in aia} == {
        "http://127.0.0.1:8080/ocsp", "http://127.0.0.1:8080/ca/default-issuing.der"}
    cdp = ext[ExtensionOID.CRL_DISTRIBUTION_POINTS].value
    assert cdp[0].full_name[0].value == "http://127.0.0.1:8080/crl/default-issuing.crl"
    validity = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= validity <= dt.timedelta(days=30, minutes=6)


async def test_ec_subject_keys_get_no_key_encipherment(pki: Pki) -> None:
    issued = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(), profile="vcc_service"), SYSTEM)
    usage = issued.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment


async def test_cn_only_csr_gets_the_cn_as_san(pki: Pki) -> None:
    issued = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(cn="legacy.example.test", dns=()), profile="vcc_service"),
        SYSTEM)
    assert issued.record.san == {"dns": ["legacy.example.test"]}


async def test_timestamp_profile_has_critical_time_stamping_eku(pki: Pki) -> None:
    issued = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(cn="TSA", dns=()), profile="timestamp_authority"), SYSTEM)
    eku = issued.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]


async def test_ed25519_allowed_only_where_the_profile_says(pki: Pki) -> None:
    await pki.authority.issue(
        IssuanceRequest(csr=make_csr(key=make_key("ed25519")), profile="vcc_service"), SYSTEM)
    with pytest.raises(BadPublicKey):
        await pki.authority.issue(IssuanceRequest(
            csr=make_csr(cn="dev", dns=(), key=make_key("ed25519")), profile="code_signing"),
            SYSTEM)


async def test_validity_is_capped_by_the_issuer(pki: Pki) -> None:
    issuer = (await pki.authority.ca("default-issuing")).certificate
    late = issuer.not_valid_after_utc - dt.timedelta(days=10)
    pki.authority.clock = lambda: late
    issued = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(), profile="vcc_service", validity_days=90), SYSTEM)
    assert issued.certificate.not_valid_after_utc == issuer.not_valid_after_utc


@pytest.mark.parametrize(
    ("csr", "profile", "days", "error"),
    [
        (b"garbage", "vcc_service", None, BadCSR),
        (make_csr()[:200], "vcc_service", None, BadCSR),
        (make_csr(pem=False)[:-20], "vcc_service", None, BadCSR),
        (make_csr(key=make_key("rsa-1024")), "vcc_service", None, BadPublicKey),
        (make_csr(key=make_key("ec-p521")), "vcc_service", None, BadPublicKey),
        (make_csr(), "no_such_profile", None, UnknownProfile),
        (make_csr(emails=("a@example.test",)), "vcc_service", None, PolicyViolation),
        (make_csr(dns=("bad_name!.example",)), "vcc_service", None, PolicyViolation),
        (make_csr(cn=None, dns=()), "vcc_service", None, PolicyViolation),
        (make_csr(), "vcc_service", 398, ValidityTooLong),
        (make_csr(), "vcc_service", -1, BadRequest),
    ],
    ids=["garbage", "truncated-pem", "truncated-der", "rsa-1024", "p521", "unknown-profile",
         "email-san", "bad-dns", "no-subject", "too-long", "negative-days"],
)
async def test_bad_requests_are_refused_and_store_nothing(
    pki: Pki, csr: bytes, profile: str, days: int | None, error: type[Exception]
) -> None:
    before = await _counts(pki)
    with pytest.raises(error):
        await pki.authority.issue(
            IssuanceRequest(csr=csr, profile=profile, validity_days=days), SYSTEM)
    assert await _counts(pki) == before


async def test_bad_csr_signature(pki: Pki) -> None:
    der = bytearray(make_csr(pem=False))
    der[-5] ^= 0x01  # inside the signature BIT STRING
    with pytest.raises(BadCSRSignature):
        await pki.authority.issue(IssuanceRequest(csr=bytes(der), profile="vcc_service"),
                                  SYSTEM)


async def test_internal_profiles_are_not_requestable(pki: Pki) -> None:
    created = await pki.authority.create_token("default", "cert_manager", principal=SYSTEM)
    principal = await pki.authority.authenticate(created.token)
    with pytest.raises(Forbidden) as raised:
        await pki.authority.issue(
            IssuanceRequest(csr=make_csr(cn="ocsp", dns=()), profile="ocsp_signing"), principal)
    assert raised.value.detail == "profile ocsp_signing is issued by the CA itself only"
    with pytest.raises(Forbidden) as raised:
        await pki.authority.issue(
            IssuanceRequest(csr=make_csr(), profile="vcc_service", ca="intermediate"), SYSTEM)
    assert raised.value.detail == "CA intermediate does not issue end-entity certificates"


async def test_revoke_and_status(pki: Pki) -> None:
    issued = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(), profile="vcc_service"), SYSTEM)
    ca_id = issued.record.issuer_ca_id
    serial = issued.certificate.serial_number
    assert (await pki.authority.status(ca_id, serial)).status == "good"
    assert (await pki.authority.status(ca_id, serial + 1)).status == "unknown"
    revoked = await pki.authority.revoke(issued.serial, "keyCompromise", SYSTEM)
    assert revoked.status == "revoked" and revoked.revocation_reason == "key_compromise"
    status = await pki.authority.status(ca_id, serial)
    assert status.status == "revoked"
    assert [r.serial_hex for r in await pki.store.list_revocations(ca_id)] == [
        serial_hex(serial)]
    with pytest.raises(Conflict):
        await pki.authority.revoke(issued.serial, "superseded", SYSTEM)
    with pytest.raises(NotFound):
        await pki.authority.revoke("01ABCDEF", "superseded", SYSTEM)
    with pytest.raises(BadRequest):
        await pki.authority.revoke(issued.serial, "no-such-reason", SYSTEM)
    with pytest.raises(BadRequest):
        await pki.authority.revoke("not-hex", "superseded", SYSTEM)


def test_serial_forms() -> None:
    assert parse_serial("0A:1B") == parse_serial("0a1b") == parse_serial("serial=0A1B") == "a1b"
    with pytest.raises(BadRequest):
        parse_serial("0")


async def _caller(pki: Pki, org: str, role: str) -> Principal:
    """The principal of a fresh API token for ``role`` in ``org``."""
    created = await pki.authority.create_token(org, role, principal=SYSTEM)
    return await pki.authority.authenticate(created.token)


async def test_tenants_are_isolated(pki: Pki) -> None:
    await ensure_organization(pki.authority, "health", "Health Ministry")
    a = await _caller(pki, "default", "cert_manager")
    b = await _caller(pki, "health", "cert_manager")
    issued_a = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(), profile="vcc_service"), a)
    issued_b = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(), profile="vcc_service"), b)
    assert issued_b.chain[0].subject != issued_a.chain[0].subject  # own issuing CA
    with pytest.raises(NotFound):
        await pki.authority.find_certificate(issued_a.serial, b)
    with pytest.raises(NotFound):
        await pki.authority.revoke(issued_a.serial, "superseded", b)
    with pytest.raises(Forbidden):
        await pki.authority.issue(
            IssuanceRequest(csr=make_csr(), profile="vcc_service", org="default"), b)
    with pytest.raises(Forbidden) as raised:
        await pki.authority.issue(
            IssuanceRequest(csr=make_csr(), profile="vcc_service", ca="default-issuing"), b)
    assert raised.value.detail == "that CA belongs to another organization"
    # who acted is recorded as the caller it was (an API token), not as the system
    events = {e.event.resource_id: e.event for e in await pki.store.audit_entries()}
    assert events[issued_b.record.cert_id].actor_type == b.actor_type == "api"
    assert (await pki.authority.find_certificate(issued_a.serial, a)).status == "active"


async def test_service_accounts_see_only_their_own(pki: Pki) -> None:
    one = await _caller(pki, "default", "service_account")
    two = await _caller(pki, "default", "service_account")
    issued = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(), profile="vcc_service"), one)
    assert (await pki.authority.find_certificate(issued.serial, one)).serial_hex
    with pytest.raises(NotFound):
        await pki.authority.find_certificate(issued.serial, two)
    with pytest.raises(NotFound):
        await pki.authority.revoke(issued.serial, "superseded", two)


async def test_roles_without_the_permission_are_forbidden(pki: Pki) -> None:
    auditor = await _caller(pki, "default", "auditor")
    with pytest.raises(Forbidden):
        await pki.authority.issue(
            IssuanceRequest(csr=make_csr(), profile="vcc_service"), auditor)


async def test_tokens(pki: Pki) -> None:
    created = await pki.authority.create_token("default", "pki_admin", principal=SYSTEM)
    assert created.record.secret_hash not in created.token  # only the hash is stored
    principal = await pki.authority.authenticate(created.token)
    assert principal.role == "pki_admin"
    for bad in ("", "vcc..", "vcc.x.y", created.token + "x", "Bearer abc"):
        with pytest.raises(Unauthorized):
            await pki.authority.authenticate(bad)
    with pytest.raises(BadRequest):
        await pki.authority.create_token("default", "emperor", principal=SYSTEM)
    with pytest.raises(NotFound):
        await pki.authority.create_token("nope", "auditor", principal=SYSTEM)


async def test_a_token_is_made_by_the_principal_its_caller_names(pki: Pki) -> None:
    """No default creator: the caller's principal is checked and recorded in the audit log."""
    admin = await _caller(pki, "default", "pki_admin")
    created = await pki.authority.create_token("default", "auditor", principal=admin)
    (event,) = [e.event for e in await pki.store.audit_entries()
                if e.event.resource_id == created.record.token_id]
    assert (event.actor_type, event.actor_id) == (admin.actor_type, admin.actor_id)
    with pytest.raises(Forbidden):  # an organization's admin makes no super admins
        await pki.authority.create_token("default", "pki_super_admin", principal=admin)
    manager = await _caller(pki, "default", "cert_manager")
    with pytest.raises(Forbidden):  # nor does a role without token:create
        await pki.authority.create_token("default", "auditor", principal=manager)


async def test_hierarchy_is_idempotent_and_audited(pki: Pki) -> None:
    assert await ensure_hierarchy(pki.authority) == []
    cas = {ca.name: ca for ca in await pki.store.list_cas()}
    # ... and the time-stamping authority (ca_core.tsa), named by its creation time
    (tsa,) = [name for name, ca in cas.items() if ca.ca_type == "tsa"]
    assert set(cas) == {"root", "intermediate", "default-issuing", tsa}
    root = x509.load_der_x509_certificate(cas["root"].certificate_der)
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 2
    entries = await pki.store.audit_entries()
    assert [e.event.event_type for e in entries].count("ca.created") == 3
    assert [e.event.event_type for e in entries].count("tsa.created") == 1
    assert verify_chain(entries, await pki.store.audit_head()) == []


async def test_reserved_and_malformed_organization_slugs_are_refused(pki: Pki) -> None:
    """An organization named like an ACME path segment would have its directory shadowed
    (/acme/cert/new-order is a certificate URL)."""
    from ca_core.hierarchy import ensure_organization

    for slug in ("cert", "acct", "new-order", "directory", "Upper", "-dash", ""):
        with pytest.raises(BadRequest):
            await ensure_organization(pki.authority, slug)
    assert await pki.store.get_organization("cert") is None
    assert await ensure_organization(pki.authority, "certs")  # only the exact words


async def test_only_end_entity_certificates_name_the_ocsp_responder(pki: Pki) -> None:
    """The responder answers for the issuing CAs' certificates; a CA certificate that
    named it would get "unauthorized" from it. CA certificates keep caIssuers and the CDP."""
    from cryptography.x509.oid import AuthorityInformationAccessOID

    def access(certificate: x509.Certificate) -> set[x509.ObjectIdentifier]:
        aia = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
        return {a.access_method for a in aia.value}

    for name in ("intermediate", "default-issuing"):
        ca = (await pki.authority.ca(name)).certificate
        assert access(ca) == {AuthorityInformationAccessOID.CA_ISSUERS}, name
        ca.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    issued = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(), profile="vcc_service"), Principal.system("test"))
    assert access(issued.certificate) == {AuthorityInformationAccessOID.OCSP,
                                          AuthorityInformationAccessOID.CA_ISSUERS}


def test_what_a_common_name_names() -> None:
    from ca_core.x509build import common_name_identifier

    assert common_name_identifier("192.0.2.1") == ("ip", "192.0.2.1")
    assert common_name_identifier("2001:DB8::1") == ("ip", "2001:db8::1")
    assert common_name_identifier("Svc.Example.Test") == ("dns", "svc.example.test")
    assert common_name_identifier("*.example.test") == ("dns", "*.example.test")
    for neither in ("fe80::1%eth0", "not a name", "example.test.", "Jane Doe"):
        assert common_name_identifier(neither) is None, neither


@pytest.mark.parametrize("address", ["192.0.2.7", "2001:db8::7"])
async def test_an_address_only_in_the_common_name_becomes_an_ip_san(pki: Pki,
                                                                    address: str) -> None:
    issued = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(cn=address, dns=()), profile="vcc_service"), SYSTEM)
    sans = issued.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == []
    assert [str(i) for i in sans.get_values_for_type(x509.IPAddress)] == [address]
    assert issued.record.san == {"ip": [address]}


def _sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


class _FailingListener(ListenerRecorder):
    async def certificate_issued(self, issued: Any) -> None:
        raise RuntimeError("listener down")

    async def certificate_revoked(self, record: Any) -> None:
        raise RuntimeError("listener down")


async def test_issue_and_revoke_count_audit_and_tell_listeners(
        pki: Pki, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The pki_* metrics carry organization, profile and outcome; every listener hears of
    the certificate even after one fails (the failure is logged with the serial); the
    revocation is stored and audited exactly as asked."""
    issued_name = "pki_cert_requests_total"
    before = {status: _sample(issued_name, org_id=org, purpose=purpose, status=status)
              for org, purpose, status in [("default", "vcc_service", "issued"),
                                           ("unknown", "unknown", "rejected"),
                                           ("default", "vcc_service", "error")]}
    timings = _sample("pki_cert_issuance_duration_seconds_count", org_id="default",
                      purpose="vcc_service")
    listener = ListenerRecorder()
    pki.authority.add_listener(_FailingListener())
    pki.authority.add_listener(listener)
    with caplog.at_level("ERROR", logger="ca_core.authority"):
        issued = await pki.authority.issue(
            IssuanceRequest(csr=make_csr(), profile="vcc_service"), SYSTEM)
    assert listener.issued == [issued]
    assert [r.getMessage() for r in caplog.records] == [
        f"certificate listener failed after issuing {issued.serial}"]
    with pytest.raises(UnknownProfile):
        await pki.authority.issue(IssuanceRequest(csr=make_csr(), profile="nope"), SYSTEM)

    async def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(pki.authority, "_issue", broken)
    with pytest.raises(RuntimeError):
        await pki.authority.issue(
            IssuanceRequest(csr=make_csr(), profile="vcc_service", org="default"), SYSTEM)
    monkeypatch.undo()
    assert _sample(issued_name, org_id="default", purpose="vcc_service", status="issued") \
        == before["issued"] + 1
    assert _sample(issued_name, org_id="unknown", purpose="unknown", status="rejected") \
        == before["rejected"] + 1
    assert _sample(issued_name, org_id="default", purpose="vcc_service", status="error") \
        == before["error"] + 1
    assert _sample("pki_cert_issuance_duration_seconds_count", org_id="default",
                   purpose="vcc_service") == timings + 1
    # A duration, not a point in time: well below the 10 s bucket.
    assert _sample("pki_cert_issuance_duration_seconds_bucket", org_id="default",
                   purpose="vcc_service", le="10.0") == timings + 1

    now = dt.datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=dt.UTC)
    pki.authority.clock = lambda: now
    revocations = _sample("pki_cert_revocations_total", org_id="default",
                          reason="key_compromise")
    caplog.clear()
    with caplog.at_level("ERROR", logger="ca_core.authority"):
        # an invalidity date of exactly now is not in the future
        revoked = await pki.authority.revoke(issued.serial, "keyCompromise", SYSTEM,
                                             invalidity_date=now)
    assert listener.revoked == [revoked]
    assert [r.getMessage() for r in caplog.records] == [
        f"certificate listener failed after revoking {issued.serial}"]
    assert _sample("pki_cert_revocations_total", org_id="default",
                   reason="key_compromise") == revocations + 1
    ca_id = issued.record.issuer_ca_id
    (stored,) = await pki.store.list_revocations(ca_id)
    assert stored.revoked_at == now.replace(microsecond=0)
    assert (stored.ca_id, stored.serial_hex, stored.cert_id, stored.reason,
            stored.invalidity_date, stored.crl_partition) == (
        ca_id, issued.record.serial_hex, issued.record.cert_id, "key_compromise", now, 0)
    (event,) = [e.event for e in await pki.store.audit_entries()
                if e.event.event_type == "certificate.revoked"]
    assert event == AuditEvent(
        event_type="certificate.revoked", category="certificate", action="revoke",
        actor_type="system", actor_id="test", org_id=issued.record.org_id,
        resource_type="certificate", resource_id=issued.record.cert_id,
        data={"serial": issued.record.serial_hex, "reason": "key_compromise"})

    with pytest.raises(Conflict, match=f"certificate {issued.serial} is already revoked"):
        await pki.authority.revoke(issued.serial, "superseded", SYSTEM)
    other = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(), profile="vcc_service"), SYSTEM)
    with pytest.raises(BadRequest, match=r"^the invalidity date lies in the future$"):
        await pki.authority.revoke(other.serial, "superseded", SYSTEM,
                                   invalidity_date=now + dt.timedelta(seconds=1))
    auditor = await _caller(pki, "default", "auditor")
    with pytest.raises(Forbidden, match=r"^this credential may not revoke certificates$"):
        await pki.authority.revoke(other.serial, "superseded", auditor)


async def test_issuance_audit_subject_and_serial_collisions(
        pki: Pki, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The certificate.issued event names what was issued; a CSR without CN is named by its
    first SAN under the organization's name; a serial clash draws a new serial, three
    times at most; a failed write is logged."""
    issued = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(cn=None, dns=("a.example.test", "b.example.test")),
                        profile="vcc_service"), SYSTEM)
    record = issued.record
    assert record.common_name == "a.example.test"
    assert issued.certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0] \
        .value == "a.example.test"
    org = await pki.authority.organization("default")
    assert issued.certificate.subject.get_attributes_for_oid(
        x509.NameOID.ORGANIZATION_NAME)[0].value == org.name
    assert record.created_at is not None and record.crl_partition == 0
    (event,) = [e.event for e in await pki.store.audit_entries()
                if e.event.resource_id == record.cert_id]
    assert event == AuditEvent(
        event_type="certificate.issued", category="certificate", action="issue",
        actor_type="system", actor_id="test", org_id=org.org_id,
        resource_type="certificate", resource_id=record.cert_id,
        data={"serial": record.serial_hex, "ca": "default-issuing", "profile": "vcc_service",
              "subject": record.subject_dn, "san": record.san,
              "not_after": record.not_after.isoformat()})
    ip_only = await pki.authority.issue(
        IssuanceRequest(csr=make_csr(cn=None, dns=(), ips=("10.9.8.7",)),
                        profile="vcc_service"), SYSTEM)
    assert ip_only.record.common_name == "10.9.8.7"
    with pytest.raises(PolicyViolation,
                       match=r"^the request names no subject: give a CN or a SAN$"):
        await pki.authority.issue(
            IssuanceRequest(csr=make_csr(cn=None, dns=()), profile="code_signing"), SYSTEM)

    from ca_core.storage import StoreConflict

    store_add = pki.store.add_certificate
    attempts: list[Any] = []

    async def clashing(cert: Any, audit: Any, clashes: int = 2) -> None:
        attempts.append(cert)
        if len(attempts) <= clashes:
            raise StoreConflict("serial taken")
        await store_add(cert, audit)

    monkeypatch.setattr(pki.store, "add_certificate", clashing)
    with caplog.at_level("WARNING", logger="ca_core.authority"):
        third = await pki.authority.issue(
            IssuanceRequest(csr=make_csr(), profile="vcc_service"), SYSTEM)
    assert len(attempts) == 3 and len({a.serial_hex for a in attempts}) == 3
    assert third.record == attempts[2]
    assert [r.getMessage() for r in caplog.records] == [
        "serial collision on CA default-issuing; drawing a new serial"] * 2
    attempts.clear()
    monkeypatch.setattr(pki.store, "add_certificate",
                        lambda cert, audit: clashing(cert, audit, clashes=99))
    with pytest.raises(Unavailable, match=r"^could not allocate a unique serial number$"):
        await pki.authority.issue(IssuanceRequest(csr=make_csr(), profile="vcc_service"),
                                  SYSTEM)
    assert len(attempts) == 3

    caplog.clear()
    fail_certificate_writes(monkeypatch, pki.store)
    with caplog.at_level("ERROR", logger="ca_core.authority"), pytest.raises(Unavailable):
        await pki.authority.issue(IssuanceRequest(csr=make_csr(), profile="vcc_service"),
                                  SYSTEM)
    assert [r.getMessage() for r in caplog.records] == [
        "storing an issued certificate failed: "
        "simulated: the database went away at the certificate write"]
    auditor = await _caller(pki, "default", "auditor")
    with pytest.raises(Forbidden, match=r"^this credential may not request certificates$"):
        await pki.authority.issue(IssuanceRequest(csr=make_csr(), profile="vcc_service"),
                                  auditor)


def test_san_rules() -> None:
    """x509build.check_sans: the profile's SAN types, well-formed names, at most 100."""
    import dataclasses

    from ca_core.profiles import BUILTIN_PROFILES
    from ca_core.x509build import SubjectAltNames, check_sans

    service = next(p for p in BUILTIN_PROFILES if p.name == "vcc_service")
    every = dataclasses.replace(service, name="every", san_types=("dns", "ip", "email", "uri"))
    check_sans(SubjectAltNames(dns=("a.test",), email=("ops@a.test",), uri=("urn:x:1",),
                               ip=("10.0.0.1",)), every)
    refused = [
        (SubjectAltNames(email=("a@b.test",), uri=("urn:a",)),
         dataclasses.replace(service, san_types=("dns",)),
         "profile vcc_service does not allow SAN types email, uri"),
        (SubjectAltNames(dns=("bad name",)), every, "invalid DNS name in SAN: 'bad name'"),
        (SubjectAltNames(email=("not-an-address",)), every,
         "invalid email address in SAN: 'not-an-address'"),
        (SubjectAltNames(uri=("relative/path",)), every,
         "SAN URI must be absolute: 'relative/path'"),
        (SubjectAltNames(uri=(":nothing",)), every, "SAN URI must be absolute: ':nothing'"),
        (SubjectAltNames(), every, "profile every requires a subject alternative name"),
    ]
    # 101 names, of every kind: the count is their sum
    many = SubjectAltNames(dns=tuple(f"h{i}.test" for i in range(25)),
                           ip=tuple(f"10.0.0.{i}" for i in range(25)),
                           email=tuple(f"u{i}@a.test" for i in range(25)),
                           uri=tuple(f"urn:x:{i}" for i in range(26)))
    refused.append((many, every, "at most 100 subject alternative names"))
    for sans, profile, message in refused:
        with pytest.raises(PolicyViolation) as raised:
            check_sans(sans, profile)
        assert raised.value.detail == message
    check_sans(dataclasses.replace(many, uri=many.uri[:25]), every)  # exactly 100
    assert SubjectAltNames(email=("a@b.test",), uri=("urn:a",)).general_names() == [
        x509.RFC822Name("a@b.test"), x509.UniformResourceIdentifier("urn:a")]


async def test_leaf_builder_rules(pki: Pki) -> None:
    """x509build.leaf_builder: a positive validity within the issuer's, a critical
    keyUsage, a SAN that is critical only under an empty subject (RFC 5280 4.2.1.6), a
    non-critical OCSP no-check, and any extra extension non-critical."""
    import dataclasses

    from ca_core.keys import KeySpec
    from ca_core.profiles import BUILTIN_PROFILES
    from ca_core.x509build import LeafTemplate, SubjectAltNames, leaf_builder

    ca = await pki.authority.ca("default-issuing")
    issuer = ca.issuer_context(pki.authority.settings)
    key = make_key()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    profiles = {p.name: p for p in BUILTIN_PROFILES}
    template = LeafTemplate(
        subject=x509.Name([]), public_key=key.public_key(),
        subject_key=KeySpec.parse("ec-p256"), sans=SubjectAltNames(dns=("a.test",)),
        not_before=now, not_after=now + dt.timedelta(days=1), serial=12345,
        profile=profiles["vcc_service"], extra_extensions=(x509.TLSFeature(
            [x509.TLSFeatureType.status_request]),))
    certificate = leaf_builder(template, issuer).sign(
        ca.signer.builder_key(), ca.signer.key_spec.hash_algorithm)  # type: ignore[arg-type]
    critical = {e.oid: e.critical for e in certificate.extensions}
    assert critical[ExtensionOID.KEY_USAGE] is True
    assert critical[ExtensionOID.SUBJECT_ALTERNATIVE_NAME] is True
    assert critical[ExtensionOID.TLS_FEATURE] is False
    named = dataclasses.replace(template, subject=x509.Name(
        [x509.NameAttribute(x509.NameOID.COMMON_NAME, "a.test")]))
    certificate = leaf_builder(named, issuer).sign(
        ca.signer.builder_key(), ca.signer.key_spec.hash_algorithm)  # type: ignore[arg-type]
    assert certificate.extensions.get_extension_for_oid(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME).critical is False
    responder = dataclasses.replace(named, profile=profiles["ocsp_signing"],
                                    sans=SubjectAltNames())
    certificate = leaf_builder(responder, issuer).sign(
        ca.signer.builder_key(), ca.signer.key_spec.hash_algorithm)  # type: ignore[arg-type]
    assert certificate.extensions.get_extension_for_oid(ExtensionOID.OCSP_NO_CHECK) \
        .critical is False
    for bad, message in [
            (dataclasses.replace(named, not_after=now), "notAfter must be after notBefore"),
            (dataclasses.replace(named, not_after=ca.certificate.not_valid_after_utc
                                 + dt.timedelta(seconds=1)),
             "certificate would outlive its issuer")]:
        with pytest.raises(PolicyViolation) as raised:
            leaf_builder(bad, issuer)
        assert raised.value.detail == message


async def test_find_certificate_skips_only_what_the_caller_may_not_see(
        pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several records can share a serial (one per issuing CA): the caller's is found past
    another tenant's or another service account's; status carries the record."""
    await ensure_organization(pki.authority, "health", "Health Ministry")
    a = await _caller(pki, "default", "cert_manager")
    b = await _caller(pki, "health", "cert_manager")
    mine_a = await pki.authority.issue(IssuanceRequest(csr=make_csr(), profile="vcc_service"), a)
    mine_b = await pki.authority.issue(IssuanceRequest(csr=make_csr(), profile="vcc_service"), b)
    one = await _caller(pki, "default", "service_account")
    two = await _caller(pki, "default", "service_account")
    of_one = await pki.authority.issue(IssuanceRequest(csr=make_csr(), profile="vcc_service"),
                                       one)
    of_two = await pki.authority.issue(IssuanceRequest(csr=make_csr(), profile="vcc_service"),
                                       two)
    shared = [mine_a.record, of_one.record, mine_b.record, of_two.record]

    async def same_serial(serial: str, org_id: str | None = None,
                          requester: str | None = None,
                          org_ids: frozenset[str] | None = None) -> list[Any]:
        # The scope is the store query's (as db.sql applies it in its WHERE clause)
        return [r for r in shared if org_id in (None, r.org_id)
                and (org_ids is None or r.org_id in org_ids)
                and requester in (None, r.requester)]

    monkeypatch.setattr(pki.store, "find_certificates_by_serial", same_serial)
    assert await pki.authority.find_certificate(mine_a.serial, b) == mine_b.record
    assert await pki.authority.find_certificate(mine_a.serial, two) == of_two.record
    assert await pki.authority.find_certificate(mine_a.serial, a) == mine_a.record
    shared[:] = [mine_a.record, of_one.record]
    with pytest.raises(Conflict) as conflict:
        await pki.authority.revoke(mine_a.serial, "superseded", SYSTEM)
    assert conflict.value.detail == "several issuers used this serial; revoke through the issuer"
    nobody = Principal("api", "nobody", None, "no_such_role")
    with pytest.raises(Forbidden) as raised:
        await pki.authority.find_certificate(mine_a.serial, nobody)
    assert raised.value.detail == "this credential may not read certificates"
    monkeypatch.undo()
    status = await pki.authority.status(mine_a.record.issuer_ca_id,
                                        mine_a.certificate.serial_number)
    assert (status.status, status.record) == ("good", mine_a.record)
    # a cert_manager revokes what a service account of its organization requested
    revoked = await pki.authority.revoke(of_one.serial, "superseded", a)
    assert revoked.cert_id == of_one.record.cert_id and revoked.status == "revoked"
    (event,) = [e.event for e in await pki.store.audit_entries()
                if e.event.event_type == "certificate.revoked"]
    assert (event.actor_type, event.actor_id) == ("api", a.actor_id)

    async def lost_race(*args: Any) -> None:
        return None  # another process revoked it between the read and the write

    monkeypatch.setattr(pki.store, "revoke_certificate", lost_race)
    with pytest.raises(Conflict) as lost:
        await pki.authority.revoke(of_two.serial, "superseded", SYSTEM)
    assert lost.value.detail == f"certificate {of_two.serial} is already revoked"


async def test_subject_of_email_and_uri_only_requests_and_crl_partitions(pki: Pki) -> None:
    """Without CN the subject is named by the first SAN of any kind; a parsed CSR object is
    taken as it is; with CRL partitions a certificate is fixed to its serial's partition
    and names that partition's CRL."""
    import dataclasses

    from cryptography.hazmat.primitives import hashes

    def csr_with(*names: x509.GeneralName) -> x509.CertificateSigningRequest:
        return (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
                .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
                .sign(make_key(), hashes.SHA256()))

    by_email = await pki.authority.issue(IssuanceRequest(
        csr=csr_with(x509.RFC822Name("signer@example.test")), profile="code_signing"), SYSTEM)
    assert by_email.record.common_name == "signer@example.test"
    by_uri = await pki.authority.issue(IssuanceRequest(
        csr=csr_with(x509.UniformResourceIdentifier("spiffe://example.test/svc")),
        profile="code_signing"), SYSTEM)
    assert by_uri.record.common_name == "spiffe://example.test/svc"

    pki.authority.settings = dataclasses.replace(pki.authority.settings, crl_partitions=4)
    (await pki.authority.ca("default-issuing"))._context = None  # made again with them
    for _ in range(3):
        issued = await pki.authority.issue(
            IssuanceRequest(csr=make_csr(), profile="vcc_service"), SYSTEM)
        partition = issued.certificate.serial_number % 4 + 1
        assert issued.record.crl_partition == partition
        cdp = issued.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
        assert cdp.value[0].full_name == [x509.UniformResourceIdentifier(
            pki.authority.settings.crl_url("default-issuing", partition))]
    # the revocation keeps the certificate's partition: its CRL is the one that lists it
    await pki.authority.revoke(issued.serial, "superseded", SYSTEM)
    (revocation,) = await pki.store.list_revocations(issued.record.issuer_ca_id, partition)
    assert revocation.crl_partition == partition and revocation.cert_id == issued.record.cert_id


async def test_principals_and_organization_scope(pki: Pki) -> None:
    """The system principal is a super admin of every organization; ``only_own`` is true
    only for a role whose permission is the ``_own`` form; another organization, named or
    unknown, is refused alike to a scoped caller."""
    assert Principal.system() == Principal("system", "vcc-pki", None, "pki_super_admin")
    assert Principal.system("cron") == Principal("system", "cron", None, "pki_super_admin")
    service = Principal("api", "s", "org", "service_account")
    auditor = Principal("api", "a", "org", "auditor")
    admin = Principal("api", "m", "org", "pki_admin")
    assert service.only_own("cert:revoke") and service.can("cert:revoke")
    assert not auditor.only_own("cert:revoke") and not auditor.can("cert:revoke")
    assert not admin.only_own("cert:revoke") and admin.can("cert:revoke")
    assert admin.sees_org("org") and not admin.sees_org("other")
    assert Principal.system().sees_org("any")

    await ensure_organization(pki.authority, "health", "Health Ministry")
    scoped = await _caller(pki, "health", "cert_manager")
    for org in ("default", "no-such-org"):
        with pytest.raises(Forbidden) as raised:
            await pki.authority.issue(
                IssuanceRequest(csr=make_csr(), profile="vcc_service", org=org), scoped)
        assert raised.value.detail == "not permitted for that organization"
    with pytest.raises(NotFound):  # the system is told the truth
        await pki.authority.issue(
            IssuanceRequest(csr=make_csr(), profile="vcc_service", org="no-such-org"), SYSTEM)
