"""Compliance reports (issue 14): each report's figures against a data set built here
(certificates with known dates, profiles, revocation reasons and requesters), the same
figures in JSON, CSV and HTML, the stored hash against the bytes served, the audit event,
bad inputs and refusals over REST, the CLI, PostgreSQL, a PKCS#11 key's extractability, and
a headless Chromium screenshot of the HTML report (saved under test-artifacts/)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ca_core.code_signing import SignRequest
from ca_core.errors import BadRequest
from ca_core.hierarchy import ensure_organization
from ca_core.principal import Principal
from ca_core.records import AcmeAccount, AcmeOrder, AuditEvent, CertificateRecord, Revocation
from ca_core.reports import ReportRequest, ReportService, bucket_seconds, parse_bound, period
from gateway import cli
from gateway.app import build_https_app
from gateway.runtime import Services
from tests.helpers import fresh_services

SYSTEM = Principal.system("test")
DAY = dt.timedelta(days=1)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


async def _add(services: Services, slug: str, *, created: dt.datetime, days: float,
               profile: str = "vcc_service", requester: str = "vcc-pki cli",
               revoked: tuple[dt.datetime, str] | None = None,
               renews: str | None = None) -> CertificateRecord:
    """A certificate row with these dates (the data set: its figures are known)."""
    org = await services.authority.organization(slug)
    ca = (await services.authority.issuing_cas(org)).active
    ca_record = await services.store.get_ca(ca)
    assert ca_record is not None
    record = CertificateRecord(
        cert_id=str(uuid.uuid4()), issuer_ca_id=ca_record.ca_id, org_id=org.org_id,
        serial_hex=uuid.uuid4().hex, subject_dn=f"CN={slug}-{days}", common_name=slug,
        profile=profile, certificate_der=b"\x30\x00", key_algorithm="ECDSA", key_size=256,
        san={}, not_before=created, not_after=created + dt.timedelta(days=days),
        requester=requester, created_at=created)
    await services.store.add_certificate(record, AuditEvent(
        event_type="certificate.issued", category="certificate", action="issue",
        actor_type="system", actor_id=requester, org_id=org.org_id,
        resource_type="certificate", resource_id=record.cert_id,
        data={"serial": record.serial_hex, **({"renews": renews} if renews else {})}))
    if revoked is not None:
        await services.store.revoke_certificate(Revocation(
            ca_id=ca_record.ca_id, serial_hex=record.serial_hex, cert_id=record.cert_id,
            revoked_at=revoked[0], reason=revoked[1]), AuditEvent(
            event_type="certificate.revoked", category="certificate", action="revoke",
            actor_type="system", actor_id="test", org_id=org.org_id,
            resource_type="certificate", resource_id=record.cert_id))
    return record


async def _data_set(services: Services, now: dt.datetime) -> tuple[str, str]:
    """alpha's certificates (and beta's, which alpha's report must not count). The period
    is [now - 30 days, now + 1 minute); the expected figures are in EXPECTED."""
    for slug in ("alpha", "beta"):
        await ensure_organization(services.authority, slug, slug.title(), SYSTEM)
    t = now + dt.timedelta(hours=1)  # off the day edges of the issuance bars
    acme = await _add(services, "alpha", created=t - 20 * DAY, days=90, requester="acme:acct1")
    await _acme_renewal(services, acme)
    await _add(services, "alpha", created=t - 10 * DAY, days=30, requester="est:device-7")
    await _add(services, "alpha", created=t - 5 * DAY, days=10, profile="mtls_client",
               requester="token:0123abcd")
    await _add(services, "alpha", created=t - 3 * DAY, days=365, profile="code_signing",
               requester="scep:router-1", revoked=(now - DAY, "keyCompromise"))
    old = await _add(services, "alpha", created=t - 60 * DAY, days=50)  # expires in period
    await _add(services, "alpha", created=t - 2 * DAY, days=90, requester="mtls:acct-9",
               renews=old.serial_hex)
    await _add(services, "alpha", created=t - 100 * DAY, days=145,  # revoked before
               revoked=(now - 40 * DAY, "superseded"))
    await _add(services, "alpha", created=t - 50 * DAY, days=150,
               revoked=(now - 15 * DAY, "superseded"))
    await _add(services, "alpha", created=t - 80 * DAY, days=45)  # expired before the period
    await _add(services, "beta", created=t - 5 * DAY, days=30, requester="acme:b",
               revoked=(now - DAY, "keyCompromise"))
    await _add(services, "beta", created=t - 60 * DAY, days=40)
    return _iso(now - 30 * DAY), _iso(now + dt.timedelta(minutes=1))


async def _acme_renewal(services: Services, cert: CertificateRecord) -> None:
    """An ACME order naming ``replaces`` (RFC 9773) that issued ``cert``: a renewal."""
    account = AcmeAccount(account_id="acct1", org_id=cert.org_id, key_thumbprint="tp-acct1",
                          jwk={"kty": "EC"}, created_at=cert.created_at)
    event = AuditEvent(event_type="acme.test", category="acme", action="test",
                       actor_type="system", actor_id="test", org_id=cert.org_id)
    await services.store.add_acme_account(account, event)
    await services.store.add_acme_order(AcmeOrder(
        order_id="order1", account_id="acct1", org_id=cert.org_id, status="valid",
        expires=services.authority.clock() + DAY, identifiers=(("dns", "a.example"),),
        authz_ids=(), profile=cert.profile, replaces="aaaa.bbbb", cert_id=cert.cert_id,
        created_at=cert.created_at), [], event)


# The data set's own figures (alpha's report adds what the organization held before it:
# its OCSP responder's certificate, made with the organization; see _expected).
DATA_SET: dict[str, Any] = {
    "issued": 5, "renewed": 2, "revoked": 2,
    "revoked_by_reason": {"keyCompromise": 1, "superseded": 1},
    "expired": 1, "expiring": {"30": 2, "60": 2, "90": 4},
    "by_profile": {"code_signing": 1, "mtls_client": 1, "vcc_service": 3},
    "by_protocol": {"acme": 1, "est": 1, "scep": 1, "token": 1, "mtls": 1, "other": 0},
    "certificates_without_service": 4,
}
DATA_SET_VALIDITIES = [90, 30, 10, 365, 90]  # of the certificates issued in the period
# days left of the valid certificates: 10-5=5, 30-10=20, 90-20=70, 90-2=88 (minus an hour)
DATA_SET_HISTOGRAM = [1, 0, 1, 0, 2, 0, 0, 0]
DATA_SET_ISSUANCE = {10: 1, 20: 1, 25: 1, 27: 1, 28: 1}  # bar index (day) -> certificates


def _plus(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        return {k: _plus(a.get(k, 0), b.get(k, 0)) for k in {*a, *b}}
    return a + b


def _expected(baseline: dict[str, Any]) -> dict[str, Any]:
    return {key: _plus(value, baseline["figures"][key]) for key, value in DATA_SET.items()}


def _check_lifecycle(document: dict[str, Any], baseline: dict[str, Any]) -> None:
    figures = document["figures"]
    for key, value in _expected(baseline).items():
        assert figures[key] == value, (key, figures[key], value)
    validities = sorted(DATA_SET_VALIDITIES + (
        [baseline["figures"]["validity_days"]["longest"]] if baseline["figures"]["issued"]
        else []))
    middle = len(validities) // 2
    median = validities[middle] if len(validities) % 2 else \
        (validities[middle - 1] + validities[middle]) / 2
    assert figures["validity_days"]["median"] == pytest.approx(median, abs=0.002)
    assert figures["validity_days"]["longest"] == max(validities)
    assert [b["count"] for b in document["charts"]["expiry_histogram"]] == [
        a + b for a, b in zip(DATA_SET_HISTOGRAM, [
            b["count"] for b in baseline["charts"]["expiry_histogram"]], strict=True)]
    issuance = document["charts"]["issuance"]
    assert len(issuance) == 31 and document["charts"]["issuance_bucket_days"] == 1
    for index, count in DATA_SET_ISSUANCE.items():
        assert issuance[index]["count"] == count
    assert sum(b["count"] for b in issuance) == figures["issued"]


async def _baseline(services: Services) -> dict[str, Any]:
    """What alpha holds before the data set (its OCSP responder's certificate)."""
    generated = await ReportService(services.authority).generate(SYSTEM, ReportRequest(
        "certificate_lifecycle", organization="alpha"))
    document: dict[str, Any] = generated.record.report_data
    assert document["figures"]["issued"] <= 1
    return document


async def _lifecycle_checks(services: Services, client: TestClient) -> None:
    now = services.authority.clock()
    for slug in ("alpha", "beta"):
        await ensure_organization(services.authority, slug, slug.title(), SYSTEM)
    baseline = await _baseline(services)
    start, end = await _data_set(services, now)
    expected = _expected(baseline)
    auditor = await _token(services, "auditor", "alpha")
    params = {"organization": "alpha", "from": start, "to": end}
    answers: dict[str, Any] = {}
    for fmt in ("json", "csv", "html"):
        response = await client.get("/api/v1/reports/certificate_lifecycle", headers=auditor,
                                    params={**params, "format": fmt})
        body = await response.read()
        assert response.status == 200, body
        assert response.headers["Content-Type"].startswith(
            {"json": "application/json", "csv": "text/csv", "html": "text/html"}[fmt])
        digest = response.headers["X-Report-SHA256"]
        assert hashlib.sha256(body).hexdigest() == digest
        report_id = response.headers["X-Report-Id"]
        stored = await services.store.get_compliance_report(report_id)
        assert stored is not None and stored.content == body
        assert stored.content_sha256 == digest and stored.report_format == fmt
        org = await services.authority.organization("alpha")
        assert stored.org_id == org.org_id
        events = [e for e in await services.store.audit_entries()
                  if e.event.event_type == "report.generated"
                  and e.event.resource_id == report_id]
        assert len(events) == 1 and events[0].event.data["sha256"] == digest
        assert events[0].event.org_id == org.org_id
        answers[fmt] = body
    document = json.loads(answers["json"])
    assert document["organization"] == "alpha"
    _check_lifecycle(document, baseline)
    # CSV: the same figures, row by row.
    rows = list(csv.reader(io.StringIO(answers["csv"].decode())))
    assert rows[0] == ["section", "key", "value"]
    table = {(r[0], r[1]): r[2] for r in rows[1:]}
    for key in ("issued", "renewed", "revoked", "expired", "certificates_without_service"):
        assert table[("figures", key)] == str(expected[key])
    for section in ("revoked_by_reason", "expiring", "by_profile", "by_protocol"):
        for key, value in expected[section].items():
            assert table[(section, key)] == str(value), (section, key)
    for key, value in document["figures"]["validity_days"].items():
        assert table[("validity_days", key)] == str(value)
    assert [int(r[2]) for r in rows if r[0] == "expiry_histogram"] == [
        b["count"] for b in document["charts"]["expiry_histogram"]]
    assert sum(int(r[2]) for r in rows if r[0] == "issuance") == expected["issued"]
    # HTML: self-contained, both charts, the same figures.
    page = answers["html"].decode()
    assert page.count("<svg") == 2 and "Expiry histogram" in page and "Issuance" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<script" not in page
    for reason, count in expected["revoked_by_reason"].items():
        assert f"<td>{reason}</td><td class=\"n\">{count}</td>" in page
    _screenshot(answers["html"], "certificate_lifecycle")
    # Every organization (the super admin's default): alpha's and beta's together.
    admin = await _token(services, "pki_super_admin", "default")
    response = await client.get("/api/v1/reports/certificate_lifecycle", headers=admin,
                                params={"from": start, "to": end})
    everything = json.loads(await response.read())
    assert everything["organization"] is None
    assert everything["figures"]["issued"] >= 6
    assert everything["figures"]["revoked_by_reason"]["keyCompromise"] == 2
    # The stored reports, listed: alpha's three for alpha's auditor.
    response = await client.get("/api/v1/reports", headers=auditor)
    listed = (await response.json())["items"]
    assert response.status == 200 and len(listed) == 4  # the baseline's too
    assert {r["format"] for r in listed} == {"json", "csv", "html"}
    response = await client.get("/api/v1/reports", headers=admin, params={"limit": "2"})
    page_one = await response.json()
    assert len(page_one["items"]) == 2 and page_one["next"]
    response = await client.get("/api/v1/reports", headers=admin,
                                params={"limit": "100", "cursor": page_one["next"]})
    assert len((await response.json())["items"]) == 3


async def _token(services: Services, role: str, org: str) -> dict[str, str]:
    created = await services.authority.create_token(org, role, principal=SYSTEM)
    return {"Authorization": f"Bearer {created.token}"}


async def test_lifecycle_figures_in_every_format(services: Services,
                                                 aiohttp_client: Any) -> None:
    client = await aiohttp_client(build_https_app(services))
    await _lifecycle_checks(services, client)


@pytest.mark.postgres
async def test_lifecycle_figures_on_postgresql(tmp_path: Path, aiohttp_client: Any) -> None:
    from tests.pg import create_throwaway_database, drop_database, require_postgres

    require_postgres()
    dsn = await create_throwaway_database()
    try:
        async with fresh_services(tmp_path, VCC_PKI_DATABASE_URL=dsn) as services:
            client = await aiohttp_client(build_https_app(services))
            await _lifecycle_checks(services, client)
            await _inventory_checks(services)
    finally:
        await drop_database(dsn)


async def _inventory_checks(services: Services) -> None:
    org = await services.authority.organization("default")
    await ensure_organization(services.authority, "other", "Other", SYSTEM)
    signed = await services.signatures.sign(
        SignRequest(hashlib.sha256(b"x").hexdigest(), "helm_chart", "x.tgz"),
        Principal("api", "inventory-signer", org.org_id, "code_signer"))
    generated = await ReportService(services.authority).generate(
        Principal("api", "token:aud", org.org_id, "auditor"),
        ReportRequest("crypto_inventory", format="json"))
    keys = generated.record.report_data["keys"]
    kinds = {k["kind"] for k in keys}
    assert {"root", "intermediate", "issuing", "tsa", "code_signer"} <= kinds, kinds
    other = await services.authority.organization("other")
    assert all(k["organization_id"] in (None, org.org_id) for k in keys)
    assert not any(k["organization_id"] == other.org_id for k in keys)
    for key in keys:
        assert key["algorithm"] and key["key_size"] > 0 and key["not_after"]
        if services.keys.name == "software":
            assert key["protection"] == "software (encrypted file)"
            assert key["extractable"] is None
    signer = next(k for k in keys if k["kind"] == "code_signer")
    assert signer["last_signature_source"] == "code_signature"
    assert dt.datetime.fromisoformat(signer["last_signature"]) == signed.record.signed_at
    # The intermediate signed the issuing CAs: its last signature is the newest of them.
    intermediate = next(k for k in keys if k["kind"] == "intermediate")
    assert intermediate["last_signature_source"] == "certificate"
    issuing = next(k for k in keys if k["kind"] == "issuing"
                   and k["organization_id"] == org.org_id)
    # The code signer's certificate is the issuing CA's newest.
    assert issuing["last_signature"] is not None
    tsa = next(k for k in keys if k["kind"] == "tsa")
    assert tsa["last_signature_source"] == "timestamp"  # the signature's time-stamp
    rendered = {fmt: (await ReportService(services.authority).generate(
        SYSTEM, ReportRequest("crypto_inventory", format=fmt, organization="default"))
    ).record.content for fmt in ("csv", "html")}
    rows = list(csv.DictReader(io.StringIO(rendered["csv"].decode())))
    assert len(rows) == len(keys)
    assert {r["kind"] for r in rows} == kinds
    assert rendered["html"].decode().count("<tr>") == len(keys) + 1


async def test_crypto_inventory(services: Services) -> None:
    await _inventory_checks(services)
    generated = await ReportService(services.authority).generate(
        SYSTEM, ReportRequest("crypto_inventory", format="html"))
    _screenshot(generated.record.content, "crypto_inventory")


@pytest.mark.softhsm
async def test_crypto_inventory_reads_the_token(tmp_path: Path,
                                                tmp_path_factory: pytest.TempPathFactory
                                                ) -> None:
    from tests.softhsm import session_token

    token = session_token(tmp_path_factory)
    async with fresh_services(tmp_path, VCC_PKI_KEY_BACKEND="pkcs11",
                              VCC_PKI_PKCS11_MODULE=token.module_path,
                              VCC_PKI_PKCS11_TOKEN_LABEL=token.label,
                              VCC_PKI_PKCS11_PIN=token.pin) as services:
        generated = await ReportService(services.authority).generate(
            SYSTEM, ReportRequest("crypto_inventory"))
        keys = generated.record.report_data["keys"]
        assert keys
        for key in keys:
            assert key["key_backend"] == "pkcs11"
            assert key["pkcs11_module"] == token.module_path and key["pkcs11_label"]
            assert key["extractable"] is False and key["sensitive"] is True
            assert "not extractable" in key["protection"]


# ------------------------------------------------------------------------- bad input


async def test_bad_inputs_and_refusals(services: Services, aiohttp_client: Any) -> None:
    client = await aiohttp_client(build_https_app(services))
    await ensure_organization(services.authority, "beta", "Beta", SYSTEM)
    auditor = await _token(services, "auditor", "default")

    async def get(path: str, headers: dict[str, str], **params: str) -> tuple[int, Any]:
        response = await client.get(path, headers=headers, params=params)
        return response.status, await response.json(content_type=None)

    denials = len([e for e in await services.store.audit_entries()
                   if e.event.status == "denied"])
    cases: list[tuple[str, dict[str, str], int]] = [
        ("/api/v1/reports/nope", {}, 404),
        ("/api/v1/reports/certificate_lifecycle", {"format": "pdf"}, 400),
        ("/api/v1/reports/certificate_lifecycle", {"from": "yesterday"}, 400),
        ("/api/v1/reports/certificate_lifecycle", {"from": "2026-02-30"}, 400),
        ("/api/v1/reports/certificate_lifecycle", {"to": "2026-01-01T00:00:00"}, 400),
        ("/api/v1/reports/certificate_lifecycle",
         {"from": "2026-03-01", "to": "2026-02-01"}, 400),
        ("/api/v1/reports/certificate_lifecycle",
         {"from": "2026-03-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, 400),
        ("/api/v1/reports/certificate_lifecycle", {"from": "1900-01-01", "to": "2026-01-01"},
         400),
        ("/api/v1/reports/certificate_lifecycle", {"to": "9999-12-31"}, 400),
        ("/api/v1/reports/certificate_lifecycle", {"from": "0001-01-01T00:00:00+01:00"},
         400),
        ("/api/v1/reports/crypto_inventory", {"organization": "beta"}, 404),
        ("/api/v1/reports/crypto_inventory", {"organization": "no-such-org"}, 404),
        ("/api/v1/reports", {"organization": "beta"}, 404),
        ("/api/v1/reports", {"cursor": "!!"}, 400),
        ("/api/v1/reports", {"limit": "0"}, 400),
    ]
    for path, params, expected in cases:
        status, problem = await get(path, auditor, **params)
        assert status == expected, (path, params, status, problem)
        assert problem["status"] == expected and "detail" in problem
    for role in ("cert_manager", "service_account", "code_signer"):
        status, problem = await get("/api/v1/reports/certificate_lifecycle",
                                    await _token(services, role, "default"))
        assert status == 403, (role, problem)
        status, _ = await get("/api/v1/reports", await _token(services, role, "default"))
        assert status == 403
    status, _ = await get("/api/v1/reports/certificate_lifecycle", {})
    assert status == 401
    denied = [e for e in await services.store.audit_entries() if e.event.status == "denied"]
    # another or no such organization (3: two reports, one list), every role refused (6)
    assert len(denied) - denials == 3 + 6, [
        (e.event.event_type, e.event.action, e.event.resource_id) for e in denied]
    assert not [r for r in await services.store.list_compliance_reports()]


def test_period_parsing() -> None:
    now = dt.datetime(2026, 6, 15, 12, tzinfo=dt.UTC)
    assert period(None, None, now) == (now - 30 * DAY, now)
    assert period("2026-01-01", "2026-01-31", now) == (
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC))
    assert parse_bound("2026-01-01T10:00:00+02:00", "from", end=False) == \
        dt.datetime(2026, 1, 1, 8, tzinfo=dt.UTC)
    for bad in ("", "2026-13-01", "2026-01-01T00:00:00", "01/02/2026", "\x00"):
        with pytest.raises(BadRequest):
            parse_bound(bad, "from", end=False)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert bucket_seconds(start, start + 92 * DAY) == 86400
    assert bucket_seconds(start, start + 400 * DAY) == 7 * 86400
    assert bucket_seconds(start, start + 2000 * DAY) == 30 * 86400


# ------------------------------------------------------------------------------ CLI


def test_cli_report(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init"]) == 0
    capsys.readouterr()
    out = tmp_path / "lifecycle.html"
    assert cli.main(["report", "certificate_lifecycle", "--format", "html", "--org",
                     "default", "--from", "2026-01-01", "--to", "2026-12-31",
                     "--out", str(out)]) == 0
    err = capsys.readouterr().err
    digest = re.search(r"sha256 ([0-9a-f]{64})", err)
    assert digest and hashlib.sha256(out.read_bytes()).hexdigest() == digest.group(1)
    assert out.read_bytes().startswith(b"<!DOCTYPE html>")
    assert cli.main(["report", "crypto_inventory", "--format", "csv"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("report_id,generated_at,organization,kind,")
    assert cli.main(["report", "certificate_lifecycle"]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == "certificate_lifecycle"
    assert cli.main(["report", "certificate_lifecycle", "--org", "nope"]) == 1
    assert "no organization" in capsys.readouterr().err
    assert cli.main(["report", "certificate_lifecycle", "--from", "2026-05-01",
                     "--to", "2026-04-01"]) == 1
    assert "before" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["report", "dsgvo_art30"])


# ------------------------------------------------------------------- the screenshot

def _screenshot(page: bytes, name: str) -> None:
    """Render the HTML report in headless Chromium and keep the PNG as a test artefact.
    Without chromium the test is skipped, except in CI (CI=true), where it fails."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (make system-deps installs it)")
        pytest.skip("chromium is not installed (make system-deps installs it)")
    ARTIFACTS.mkdir(exist_ok=True)
    source = ARTIFACTS / f"{name}.html"
    source.write_bytes(page)
    target = ARTIFACTS / f"{name}.png"
    target.unlink(missing_ok=True)
    profile = ARTIFACTS / f".chromium-{name}"
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1600,1600",
         f"--screenshot={target}", source.as_uri()],
        capture_output=True, timeout=120, check=False)
    shutil.rmtree(profile, ignore_errors=True)
    assert target.exists() and target.stat().st_size > 10_000, done.stderr[-2000:]
    assert target.read_bytes().startswith(b"\x89PNG")
    print(f"screenshot of the {name} report: {target}")
