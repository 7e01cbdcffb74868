"""CRLs (RFC 5280 section 5): contents, signatures, numbering, when they are made again,
partitioned CRLs with their IssuingDistributionPoint, the HTTP endpoint and bad requests."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca_core.authority import IssuanceRequest, IssuedCertificate
from ca_core.crl import CrlPublisher
from ca_core.principal import Principal
from ca_core.records import AuditEvent, CrlHead, CrlRecord
from gateway.app import build_http_app
from gateway.cli import main
from gateway.runtime import Services
from gateway.status_jobs import publish_crls_once
from tests.helpers import fresh_services, make_csr

SYSTEM = Principal.system("test")
ClientFactory = Callable[..., Any]


async def _open(tmp_path: Path, **env: str) -> AsyncIterator[Services]:
    async with fresh_services(tmp_path, **env) as opened:
        yield opened


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    async for opened in _open(tmp_path):
        yield opened


@pytest.fixture
async def partitioned(tmp_path: Path) -> AsyncIterator[Services]:
    async for opened in _open(tmp_path, VCC_PKI_CRL_PARTITIONS="4"):
        yield opened


@pytest.fixture
async def client(aiohttp_client: ClientFactory, services: Services) -> TestClient:
    client: TestClient = await aiohttp_client(build_http_app(services))
    return client


async def _issue(services: Services, name: str = "svc.example.org") -> IssuedCertificate:
    return await services.authority.issue(
        IssuanceRequest(csr=make_csr(name), profile="vcc_service"), SYSTEM)


def _issuing_key(services: Services) -> ec.EllipticCurvePublicKey:
    key = services.authority.loaded_cas()[0].signer.public_key
    for ca in services.authority.loaded_cas():
        if ca.record.name == "default-issuing":
            key = ca.signer.public_key
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


async def _crl(services: Services, ca: str = "default-issuing", partition: int = 0
               ) -> x509.CertificateRevocationList:
    record = await services.crls.get(ca, partition)
    return x509.load_der_x509_crl(record.crl_der)


async def test_full_crl_lists_revocations_with_reasons(services: Services) -> None:
    kept, compromised, plain = [await _issue(services) for _ in range(3)]
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    await services.authority.revoke(compromised.serial, "key_compromise", SYSTEM,
                                    invalidity_date=when)
    await services.authority.revoke(plain.serial, "unspecified", SYSTEM)
    published = await services.crls.publish_all()
    # root, intermediate and the issuing CA each publish their full CRL
    assert {(p.ca_name, p.partition) for p in published} == {
        ("root", 0), ("intermediate", 0), ("default-issuing", 0)}

    crl = await _crl(services)
    issuing = await services.authority.ca("default-issuing")
    assert crl.issuer == issuing.certificate.subject
    assert crl.is_signature_valid(_issuing_key(services))
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = issuing.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ski.value.digest
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(hours=24)
    assert len(crl) == 2
    assert crl.get_revoked_certificate_by_serial_number(kept.certificate.serial_number) is None
    entry = crl.get_revoked_certificate_by_serial_number(
        compromised.certificate.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
        x509.ReasonFlags.key_compromise
    assert entry.extensions.get_extension_for_class(x509.InvalidityDate).value \
        .invalidity_date_utc == when
    entry = crl.get_revoked_certificate_by_serial_number(plain.certificate.serial_number)
    assert entry is not None and len(entry.extensions) == 0  # no "unspecified" reason code

    # the issued certificate's CDP is where the CRL is served
    cdp = kept.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert cdp.value[0].full_name == [
        x509.UniformResourceIdentifier("http://127.0.0.1:8080/crl/default-issuing.crl")]
    # the root's CRL is signed by the root
    root = await services.authority.ca("root")
    root_crl = await _crl(services, "root")
    assert root_crl.is_signature_valid(root.signer.public_key) and len(root_crl) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("partitions", ["0", "4"])
async def test_crl_entries_carry_the_revocations_time_and_reason(
        tmp_path: Path, partitions: str) -> None:
    """Each entry's revocationDate and reasonCode are those of the revoke call, not the
    time the CRL is made: the clock is moved hours between revoking and publishing."""
    async with fresh_services(tmp_path, VCC_PKI_CRL_PARTITIONS=partitions) as services:
        clock = _MovingClock()
        services.authority.clock = clock
        compromised, superseded, _kept = [await _issue(services) for _ in range(3)]
        clock.now += dt.timedelta(hours=1, microseconds=250_000)
        first = await services.authority.revoke(compromised.serial, "key_compromise", SYSTEM)
        clock.now += dt.timedelta(minutes=37, seconds=11)
        second = await services.authority.revoke(superseded.serial, "superseded", SYSTEM)
        assert first.revoked_at == (clock.now - dt.timedelta(minutes=37, seconds=11)
                                    ).replace(microsecond=0)
        assert second.revoked_at == clock.now.replace(microsecond=0)
        expected = {
            compromised.certificate.serial_number: (first.revoked_at,
                                                    x509.ReasonFlags.key_compromise),
            superseded.certificate.serial_number: (second.revoked_at,
                                                   x509.ReasonFlags.superseded),
        }
        clock.now += dt.timedelta(hours=5, minutes=3)
        await services.crls.publish_all("default-issuing")
        crls = [await _crl(services)]
        if partitions != "0":
            crls += [await _crl(services, partition=p) for p in
                     {c.record.crl_partition for c in (compromised, superseded)}]
        for crl in crls:
            assert crl.last_update_utc == clock.now.replace(microsecond=0)
            listed = {entry.serial_number: (
                entry.revocation_date_utc,
                entry.extensions.get_extension_for_class(x509.CRLReason).value.reason)
                for entry in crl}
            if crl is crls[0]:
                assert listed == expected
            else:
                assert listed.items() <= expected.items() and listed


class _MovingClock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


async def test_numbers_grow_and_a_stale_crl_is_refused(services: Services) -> None:
    await services.crls.publish_all("default-issuing")
    await services.crls.publish_all("default-issuing")
    current = await services.crls.get("default-issuing")
    assert current.head.crl_number == 2
    stale = CrlRecord(CrlHead(current.head.ca_id, 0, 1, current.head.this_update,
                              current.head.next_update, 0, 0), b"stale")
    event = AuditEvent(event_type="crl.published", category="ca", action="publish_crl",
                       actor_type="system", actor_id="test")
    assert not await services.store.save_crl(stale, event)
    assert (await services.crls.get("default-issuing")).crl_der == current.crl_der
    entries = [e.event.event_type for e in await services.store.audit_entries()]
    assert entries.count("crl.published") == 2


async def test_due_after_revocation_by_anyone_and_after_half_validity(
        services: Services) -> None:
    assert {(ca.record.name, p) for ca, p in await services.crls.due()} == {
        ("root", 0), ("intermediate", 0), ("default-issuing", 0)}
    assert await publish_crls_once(services) == 3
    assert await services.crls.due() == []
    issued = await _issue(services)
    assert await services.crls.due() == []  # issuing changes no CRL

    # A revocation made by another process (another publisher on the same store).
    other = CrlPublisher(services.authority, services.crls.settings)
    await other.due()
    await services.authority.revoke(issued.serial, "superseded", SYSTEM)
    assert [(ca.record.name, p) for ca, p in await services.crls.due()] == [
        ("default-issuing", 0)]
    assert await publish_crls_once(services) == 1
    crl = await _crl(services)
    assert crl.get_revoked_certificate_by_serial_number(issued.certificate.serial_number)
    # the other publisher saw the revocation too, and sees that the CRL is already made
    assert await other.due() == []

    later = services.authority.clock() + dt.timedelta(hours=12, seconds=1)
    services.authority.clock = lambda: later
    assert len(await services.crls.due()) == 3


async def test_partitioned_crls(partitioned: Services) -> None:
    services = partitioned
    issued = [await _issue(services, f"host{i}.example.org") for i in range(12)]
    for cert in issued[:6]:
        await services.authority.revoke(cert.serial, "cessation_of_operation", SYSTEM)
    published = await services.crls.publish_all("default-issuing")
    assert sorted(p.partition for p in published) == [0, 1, 2, 3, 4]

    full = await _crl(services)
    assert len(full) == 6
    total = 0
    for partition in range(1, 5):
        crl = await _crl(services, partition=partition)
        url = f"http://127.0.0.1:8080/crl/default-issuing/{partition}.crl"
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
        assert idp.critical
        assert idp.value.full_name == [x509.UniformResourceIdentifier(url)]
        assert idp.value.only_contains_user_certs
        assert crl.is_signature_valid(_issuing_key(services))
        for entry in crl:
            assert entry.serial_number % 4 + 1 == partition
        total += len(crl)
    assert total == 6
    for cert in issued:
        partition = cert.certificate.serial_number % 4 + 1
        assert cert.record.crl_partition == partition
        cdp = cert.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
        assert cdp.value[0].full_name == [x509.UniformResourceIdentifier(
            f"http://127.0.0.1:8080/crl/default-issuing/{partition}.crl")]

    # A revocation makes only its own partition (and the full CRL) due.
    await services.crls.due()
    await services.authority.revoke(issued[6].serial, "superseded", SYSTEM)
    due = sorted(p for ca, p in await services.crls.due() if ca.record.name == "default-issuing")
    assert due == [0, issued[6].certificate.serial_number % 4 + 1]


async def test_http_endpoint(client: TestClient, services: Services,
                             caplog: pytest.LogCaptureFixture) -> None:
    assert (await client.get("/crl/default-issuing.crl")).status == 404  # not yet published
    await services.crls.publish_all()
    response = await client.get("/crl/default-issuing.crl")
    assert response.status == 200
    assert response.content_type == "application/pkix-crl"
    der = await response.read()
    assert x509.load_der_x509_crl(der).is_signature_valid(_issuing_key(services))
    assert "max-age=" in response.headers["Cache-Control"]
    assert response.headers["Last-Modified"] and response.headers["Expires"]
    etag = response.headers["ETag"]
    assert (await client.get("/crl/default-issuing.crl",
                             headers={"If-None-Match": etag})).status == 304

    pem = await client.get("/crl/intermediate.pem")
    assert pem.status == 200
    body = await pem.read()
    assert body.startswith(b"-----BEGIN X509 CRL-----\n")
    x509.load_pem_x509_crl(body)

    await services.store.close()  # the database goes away: 503, not 500 or 404
    gone = await client.get("/crl/default-issuing.crl")
    assert gone.status == 503 and gone.headers["Retry-After"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("path", [
    "/crl/nosuch.crl", "/crl/default-issuing.txt", "/crl/.crl", "/crl/default-issuing/0.crl",
    "/crl/default-issuing/x.crl", "/crl/default-issuing/1.crl", "/crl/default-issuing/-1.crl",
    "/crl/%00.crl", "/crl/default-issuing/%C2%B2.crl", "/crl/default-issuing/%D9%A1.crl",
    "/crl/default-issuing/" + "9" * 5000 + ".crl",
])
async def test_bad_paths_are_404(client: TestClient, services: Services, path: str,
                                 caplog: pytest.LogCaptureFixture) -> None:
    await services.crls.publish_all()
    response = await client.get(path)
    assert response.status == 404
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_crl_publish_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VCC_PKI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VCC_PKI_KEY_PASSPHRASE", "test-passphrase")
    assert main(["init"]) == 0
    assert main(["crl", "publish"]) == 0
    assert "CRL 1 of default-issuing: 0 entries" in capsys.readouterr().out
    assert main(["crl", "publish", "--ca", "root"]) == 0
    assert "CRL 2 of root" in capsys.readouterr().out
    assert main(["crl", "publish", "--ca", "nosuch"]) == 1


async def test_a_slow_crl_is_not_remade_back_to_back(services: Services) -> None:
    await services.crls.publish_all("default-issuing")
    issuing = await services.authority.ca("default-issuing")
    # As if the last CRL had taken 2 s to make: after a revocation, wait 20 s (busy share 0.1).
    services.crls._took[(issuing.record.ca_id, 0)] = 2.0
    issued = await _issue(services)
    await services.crls.due()
    await services.authority.revoke(issued.serial, "superseded", SYSTEM)
    assert [(ca.record.name, p) for ca, p in await services.crls.due()
            if ca.record.name == "default-issuing"] == []
    later = services.authority.clock() + dt.timedelta(seconds=21)
    services.authority.clock = lambda: later
    assert [(ca.record.name, p) for ca, p in await services.crls.due()
            if ca.record.name == "default-issuing"] == [("default-issuing", 0)]


async def test_served_crl_der_is_read_once_per_crl_number(
        client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request reads the CRL's head; the DER (megabytes for a large CA) only when the
    number moved, and a new CRL is served at once."""
    await services.crls.publish_all("default-issuing")
    store = services.store
    reads: list[tuple[str, int]] = []
    real_get_crl = store.get_crl

    async def counting(ca_id: str, partition: int = 0) -> CrlRecord | None:
        reads.append((ca_id, partition))
        return await real_get_crl(ca_id, partition)

    monkeypatch.setattr(store, "get_crl", counting)
    bodies = [await (await client.get(path)).read() for path in
              ("/crl/default-issuing.crl", "/crl/default-issuing.crl",
               "/crl/default-issuing.pem", "/crl/default-issuing.pem")]
    assert len(reads) == 1
    assert bodies[0] == bodies[1] and bodies[2] == bodies[3]
    assert x509.load_pem_x509_crl(bodies[2]).public_bytes(serialization.Encoding.DER) == \
        bodies[0]
    await services.crls.publish_all("default-issuing")  # CRL number 2
    newer = x509.load_der_x509_crl(await (await client.get("/crl/default-issuing.crl")).read())
    assert newer.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert len(reads) == 2


async def test_crl_extensions_flags_and_the_audit_event(partitioned: Services) -> None:
    """RFC 5280 5.2.3/5.3: CRLNumber, reasonCode and invalidityDate are non-critical; the
    full CRL has no IssuingDistributionPoint and a partition's is not an indirect CRL. Each
    CRL made writes its crl.published event, naming the CA, partition, number and actor."""
    services = partitioned
    cert = await _issue(services)
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    await services.authority.revoke(cert.serial, "key_compromise", SYSTEM, invalidity_date=when)
    operator = Principal("api", "crl-operator", None, "pki_super_admin")
    published = await services.crls.publish_all(principal=operator)
    # The second run also makes every stored partition again, and only the issuing CA's.
    again = await services.crls.publish_all()
    assert sorted((p.ca_name, p.partition) for p in again) == sorted(
        (p.ca_name, p.partition) for p in published) == [
        ("default-issuing", 0), ("default-issuing", 1), ("default-issuing", 2),
        ("default-issuing", 3), ("default-issuing", 4), ("intermediate", 0), ("root", 0)]

    full = await _crl(services)
    assert full.extensions.get_extension_for_class(x509.CRLNumber).critical is False
    with pytest.raises(x509.ExtensionNotFound):
        full.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    (entry,) = list(full)
    assert [e.critical for e in entry.extensions] == [False, False]
    partition = cert.certificate.serial_number % 4 + 1
    idp = (await _crl(services, partition=partition)).extensions.get_extension_for_class(
        x509.IssuingDistributionPoint).value
    assert (idp.indirect_crl, idp.only_contains_ca_certs, idp.only_some_reasons,
            idp.only_contains_attribute_certs, idp.relative_name) == (
        False, False, None, False, None)
    # The published record's thisUpdate is the CRL's, to the second.
    # (the stored full CRL is the second run's)
    made = next(p for p in again if (p.ca_name, p.partition) == ("default-issuing", 0))
    assert made.this_update == full.last_update_utc
    assert made.der_bytes == len(full.public_bytes(serialization.Encoding.DER))
    assert all(0 <= p.seconds < 60 for p in published)

    issuing = await services.authority.ca("default-issuing")
    events = [e.event for e in await services.authority.store.audit_entries()
              if e.event.event_type == "crl.published"]
    assert len(events) == 14
    first = next(e for e in events if e.resource_id == f"default-issuing/{partition}")
    assert first == AuditEvent(
        event_type="crl.published", category="ca", action="publish_crl",
        actor_type=operator.actor_type, actor_id="crl-operator", org_id=issuing.record.org_id,
        resource_type="crl", resource_id=f"default-issuing/{partition}",
        data={"ca": "default-issuing", "partition": partition, "crl_number": 1, "entries": 1,
              "next_update": next(p.next_update for p in published
                                  if p.partition == partition).isoformat()})
    second = [e for e in events if e.resource_id == "root/0"][1]
    assert (second.actor_type, second.actor_id) == ("system", "vcc-pki crl")
    assert second.data["crl_number"] == 2


async def test_generate_makes_the_full_crl_by_default(services: Services) -> None:
    issuing = await services.authority.ca("default-issuing")
    made = await services.crls.generate(issuing)
    assert made is not None and made.partition == 0
    assert (await services.crls.get("default-issuing")).head.crl_number == 1


async def test_a_crl_that_lost_the_race_is_logged_and_not_returned(
        services: Services, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    async def newer_stored(record: Any, event: Any) -> bool:
        return False

    monkeypatch.setattr(services.store, "save_crl", newer_stored)
    issuing = await services.authority.ca("default-issuing")
    with caplog.at_level("INFO", logger="ca_core.crl"):
        assert await services.crls.generate(issuing, 0) is None
    assert [r.getMessage() for r in caplog.records] == [
        "CRL 1 of default-issuing/0 lost a race to a newer one"]
