"""The web admin page (issue 17) in headless Chromium (Debian's ``chromium``, driven by
Playwright), against ``vcc-pki serve`` started the normal way: sign in; issue through the
API; find the certificate in the page; revoke it there; ``openssl ocsp`` answers revoked;
the audit row appears. Also: an auditor cannot revoke, another organization's certificate is
not visible, an expired session goes back to sign-in. The services, ACME (EAB key shown
once, an account registered with it and deactivated in the page), reports (generated,
downloaded, hash checked) and live-rates views; client-certificate sign-in on the EST
listener (Playwright's client_certificates). axe-core (bundled by
axe-playwright-python) finds no serious or critical violation in any view; no console
errors. Screenshots of every view go to ``artefacts/web-admin/`` (git-ignored; printed).

Under CI=true a missing chromium or Playwright is a failure, never a skip."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import re
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conformance.gateway import Gateway, assert_clean_log, running_gateway
from tests.acme_client import AccountKey, jws, mac_jws
from tests.helpers import make_csr
from tests.redisutil import REDIS_URL, delete_prefix, require_redis, unique_prefix

CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = Path(__file__).resolve().parent.parent / "artefacts" / "web-admin"
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}

if os.environ.get("CI") == "true":
    assert CHROMIUM.exists(), "chromium is missing (make system-deps)"
    from axe_playwright_python.sync_playwright import Axe
    from playwright.sync_api import Browser, Page, expect, sync_playwright
else:
    if not CHROMIUM.exists():
        pytest.skip("chromium is missing (make system-deps)", allow_module_level=True)
    pytest.importorskip("playwright")
    from axe_playwright_python.sync_playwright import Axe
    from playwright.sync_api import Browser, Page, expect, sync_playwright


class Site:
    def __init__(self, gateway: Gateway, workdir: Path) -> None:
        self.gateway = gateway
        self.workdir = workdir
        root = workdir / "root.pem"
        with urllib.request.urlopen(f"{gateway.http_url}/ca/root.pem", timeout=10) as r:
            root.write_bytes(r.read())
        self.root = root
        self.tls = ssl.create_default_context(cafile=str(root))

    def token(self, role: str, org: str = "default") -> str:
        return self.gateway.cli("token", "create", "--org", org, "--role", role).stdout.strip()

    def api(self, method: str, path: str, token: str, body: dict[str, Any] | None = None
            ) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.gateway.https_url}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30, context=self.tls) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def issue(self, token: str, name: str) -> dict[str, Any]:
        return self.api("POST", "/api/v1/certificates", token,
                        {"csr": make_csr(name, (name,)).decode(), "profile": "vcc_service",
                         "validity_days": 30})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("webadmin")
    with running_gateway(workdir / "data", {"VCC_PKI_KEY_PASSPHRASE": "conformance"}) as gw:
        gw.cli("org", "create", "other")
        yield Site(gw, workdir)
    assert_clean_log(workdir / "data")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nweb admin screenshots: {ARTEFACTS}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=["--no-sandbox"])
        yield launched
        launched.close()


class Console:
    """Console errors and uncaught exceptions of a page (a CSP violation is one too)."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))


def _open(browser: Browser, site: Site, viewport: dict[str, int] = WIDE) -> tuple[Page, Console]:
    context = browser.new_context(ignore_https_errors=True, viewport=viewport)  # type: ignore[arg-type]
    page = context.new_page()
    console = Console(page)
    page.goto(f"{site.gateway.https_url}/admin/")
    return page, console


def _sign_in(page: Page, token: str) -> None:
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Bearer token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Views")).to_be_visible()


def _axe(page: Page, name: str, counts: dict[str, dict[str, int]]) -> None:
    results = Axe().run(page)
    violations = results.response["violations"]
    assert results.response["passes"], "axe-core checked nothing"  # it did run
    by_impact: dict[str, int] = {}
    for violation in violations:
        impact = violation.get("impact") or "unknown"
        by_impact[impact] = by_impact.get(impact, 0) + len(violation["nodes"])
    counts[name] = by_impact
    serious = [(v["id"], v["help"], [n["target"] for n in v["nodes"]]) for v in violations
               if v.get("impact") in ("serious", "critical")]
    assert not serious, (name, serious)


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


def _find(page: Page, common_name: str) -> None:
    page.get_by_role("link", name="Certificates").click()
    page.get_by_label("Search (name or serial)").fill(common_name)
    page.get_by_role("button", name="Search").click()


def _ocsp(site: Site, issued: dict[str, Any]) -> str:
    work = site.workdir
    (work / "leaf.pem").write_text(issued["certificate_pem"])
    (work / "chain.pem").write_text(issued["chain_pem"])
    issuing = issued["chain_pem"].split("-----END CERTIFICATE-----")[0] + \
        "-----END CERTIFICATE-----\n"
    (work / "issuing.pem").write_text(issuing)
    result = subprocess.run(
        ["openssl", "ocsp", "-issuer", "issuing.pem", "-cert", "leaf.pem", "-url",
         f"{site.gateway.http_url}/ocsp", "-CAfile", "root.pem", "-verify_other",
         "chain.pem", "-no_nonce"], cwd=work, capture_output=True, text=True, timeout=60,
        check=False)
    return result.stdout + result.stderr


def test_sign_in_find_revoke_ocsp_audit_and_every_view(browser: Browser, site: Site) -> None:
    manager = site.token("cert_manager")
    issued = site.issue(manager, "web-revoke.example.test")
    serial = issued["serial"]
    assert "leaf.pem: good" in _ocsp(site, issued)
    page, console = _open(browser, site)
    counts: dict[str, dict[str, int]] = {}
    _shot(page, "0-sign-in")
    _axe(page, "sign-in", counts)
    expect(page.get_by_label("Bearer token")).to_be_focused()  # ready to type
    page.keyboard.press("Shift+Tab")  # the first stop of the page skips to the content
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    _sign_in(page, site.token("pki_super_admin"))

    _find(page, "web-revoke.example.test")
    row_button = page.get_by_role("button", name=f"Details of {serial}")
    expect(row_button).to_be_visible()
    _shot(page, "2-certificates")
    _axe(page, "certificates", counts)
    row_button.press("Enter")  # keyboard, not only the mouse
    expect(page.get_by_role("heading", name=f"Certificate {serial}")).to_be_focused()
    download = page.get_by_role("link", name="Download PEM (with chain)")
    assert download.get_attribute("href") == f"/api/v1/certificates/{serial}?format=pem"
    with page.expect_download() as downloading:  # the API's DER, with the session cookie
        page.get_by_role("link", name="Download DER").click()
    der = Path(downloading.value.path()).read_bytes()
    assert x509.load_der_x509_certificate(der).serial_number == int(serial, 16)
    assert downloading.value.suggested_filename == f"{serial}.cer"
    _shot(page, "3-certificate-detail")
    _axe(page, "certificate-detail", counts)
    page.get_by_label("Revocation reason").select_option("key_compromise")
    page.get_by_role("button", name="Revoke").click()
    expect(page.get_by_text("Revoked (key_compromise).")).to_be_visible()
    expect(page.locator("dl.detail")).to_contain_text("key_compromise")
    _shot(page, "4-certificate-revoked")
    out = _ocsp(site, issued)
    assert "leaf.pem: revoked" in out and "Response verify OK" in out, out

    page.get_by_role("link", name="Audit trail").click()
    expect(page.locator("#chain-status")).to_contain_text("Hash chain intact")
    expect(page.locator("#audit-results tbody tr").filter(
        has_text="certificate.revoked").first).to_be_visible()
    _shot(page, "5-audit")
    _axe(page, "audit", counts)

    page.get_by_role("link", name="CA hierarchy").click()
    expect(page.get_by_role("cell", name="default-issuing")).to_be_visible()
    expect(page.locator("#view table")).to_contain_text("software")
    _shot(page, "1-ca-hierarchy")
    _axe(page, "ca-hierarchy", counts)

    page.get_by_role("link", name="Expiry timeline").click()
    chart = page.get_by_role("img", name="Certificates expiring per day")
    expect(chart).to_be_visible()
    assert page.locator("svg.timeline rect.bar").count() >= 1
    _shot(page, "6-expiry-timeline")
    _axe(page, "timeline", counts)

    page.set_viewport_size(NARROW)
    _find(page, "web-revoke.example.test")
    expect(page.get_by_role("button", name=f"Details of {serial}")).to_be_visible()
    _shot(page, "7-certificates-narrow")
    _axe(page, "certificates-narrow", counts)
    # nothing wider than the narrow screen but the tables, which scroll in their box
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW["width"], width
    page.get_by_label("Status").select_option("revoked")  # filter
    page.get_by_label("Search (name or serial)").fill("")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("button", name=f"Details of {serial}")).to_be_visible()
    expect(page.locator("#cert-results tbody")).not_to_contain_text("active")
    page.get_by_role("link", name="Expiry timeline").click()
    expect(page.get_by_role("img", name="Certificates expiring per day")).to_be_visible()
    _shot(page, "7-timeline-narrow")
    page.set_viewport_size(WIDE)

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    print(f"axe violations by impact, per view: {counts}")
    assert console.errors == [], console.errors


def test_an_auditor_cannot_revoke(browser: Browser, site: Site) -> None:
    issued = site.issue(site.token("cert_manager"), "web-auditor.example.test")
    serial = issued["serial"]
    page, console = _open(browser, site)
    _sign_in(page, site.token("auditor"))
    _find(page, "web-auditor.example.test")
    page.get_by_role("button", name=f"Details of {serial}").click()
    expect(page.get_by_role("heading", name=f"Certificate {serial}")).to_be_visible()
    expect(page.get_by_role("button", name="Revoke")).to_have_count(0)
    _shot(page, "8-auditor-detail")
    # and the API refuses it even with the session's CSRF token
    csrf = page.request.get(f"{site.gateway.https_url}/admin/session").json()["csrf"]
    refused = page.request.post(f"{site.gateway.https_url}/api/v1/certificates/{serial}/revoke",
                                headers={"X-CSRF-Token": csrf}, data={"reason": "superseded"})
    assert refused.status == 403, refused.text()
    assert console.errors == [], console.errors


def test_another_organizations_certificate_is_not_visible(browser: Browser,
                                                          site: Site) -> None:
    issued = site.issue(site.token("cert_manager"), "web-tenant.example.test")
    page, console = _open(browser, site)
    _sign_in(page, site.token("cert_manager", "other"))
    _find(page, "web-tenant.example.test")
    expect(page.locator("#cert-results caption")).to_have_text("0 certificate(s)")
    _shot(page, "9-other-organization")
    seen = page.request.get(
        f"{site.gateway.https_url}/api/v1/certificates/{issued['serial']}")
    assert seen.status == 404
    assert console.errors == [], console.errors


def test_an_expired_session_goes_back_to_sign_in(browser: Browser,
                                                 tmp_path: Path) -> None:
    env = {"VCC_PKI_KEY_PASSPHRASE": "conformance", "VCC_PKI_ADMIN_SESSION_IDLE_SECONDS": "2",
           "VCC_PKI_ADMIN_SESSION_LIFETIME_SECONDS": "2"}
    with running_gateway(tmp_path / "data", env) as gateway:
        site = Site(gateway, tmp_path)
        page, _ = _open(browser, site)
        # a wrong token is refused in the form, with nothing signed in
        page.get_by_label("Bearer token").fill("vcc.nope.nope")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#signin-error")).to_contain_text("Sign-in failed (401")
        expect(page.get_by_role("navigation", name="Views")).to_be_hidden()
        _sign_in(page, site.token("cert_manager"))
        # Navigate between views until the server has ended the session (polling: the
        # page is sent back to sign-in by the first API answer 401 after 2 s).
        sign_in = page.get_by_role("heading", name="Sign in")
        for attempt in range(200):
            if sign_in.is_visible():
                break
            page.get_by_role("link", name="CA hierarchy" if attempt % 2 else
                             "Certificates").click()
            page.wait_for_timeout(100)
        expect(sign_in).to_be_visible()
        expect(page.get_by_role("alert")).to_contain_text("Your session has ended")
        _shot(page, "10-session-expired")
        page.reload()  # and a reload asks again too
        expect(sign_in).to_be_visible()


@pytest.mark.parametrize("store", [pytest.param("redis", marks=pytest.mark.redis),
                                   "sql"])
def test_two_workers_share_sessions(browser: Browser, tmp_path: Path, store: str) -> None:
    """With VCC_PKI_WORKERS=2 the kernel spreads connections over both processes; sessions
    in Redis, or without Redis in the database (db.sessions.SqlSessions), are known to
    each (in-process ones would sign the page out at random)."""
    prefix = ""
    env = {"VCC_PKI_KEY_PASSPHRASE": "conformance", "VCC_PKI_WORKERS": "2"}
    if store == "redis":
        require_redis()
        prefix = unique_prefix()
        env |= {"VCC_PKI_REDIS_URL": REDIS_URL, "VCC_PKI_REDIS_KEY_PREFIX": prefix}
    try:
        with running_gateway(tmp_path / "data", env) as gateway:
            site = Site(gateway, tmp_path)
            first, _ = _open(browser, site)
            _sign_in(first, site.token("pki_super_admin"))
            cookies = first.context.cookies()
            first.context.close()
            # A new browser context per round: new connections, which the kernel hashes
            # over both workers; the session cookie alone must keep the page signed in.
            # Which process answered each signed-in API call: its X-Request-ID prefix.
            answered: set[str] = set()

            def record(response: Any) -> None:
                request_id = response.headers.get("x-request-id", "")
                if "/api/" in response.url and response.status == 200 and request_id:
                    answered.add(request_id[:16])

            for _ in range(8):
                context = browser.new_context(ignore_https_errors=True, viewport=WIDE)  # type: ignore[arg-type]
                context.add_cookies(cookies)  # type: ignore[arg-type]
                page = context.new_page()
                page.on("response", record)
                page.goto(f"{gateway.https_url}/admin/#cas")
                expect(page.locator("#view")).to_contain_text("default-issuing")
                page.get_by_role("link", name="Audit trail").click()
                expect(page.locator("#view")).to_contain_text("Hash chain intact")
                context.close()
            # Both processes answered signed-in calls: each knew the session.
            assert len(answered) == 2, answered
    finally:
        # Playwright's sync API keeps an event loop in this thread: clean up from another.
        if prefix:
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, delete_prefix(prefix)).result()


# ------------------------------------------------------------------ services, ACME, reports, rates

def _acme_account(site: Site, kid: str, hmac_key: str) -> str:
    """Register an ACME account bound to the EAB key (RFC 8555 7.3.4), as certbot would;
    its account URL."""
    def send(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            url, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/jose+json"})
        return urllib.request.urlopen(request, timeout=30, context=site.tls)

    with send("GET", f"{site.gateway.https_url}/acme/directory") as response:
        directory = json.loads(response.read())
    with send("HEAD", directory["newNonce"]) as response:
        nonce = response.headers["Replay-Nonce"]
    key = AccountKey.make()
    url = directory["newAccount"]
    secret = base64.urlsafe_b64decode(hmac_key + "=" * (-len(hmac_key) % 4))
    payload = {"termsOfServiceAgreed": True, "contact": ["mailto:web@example.org"],
               "externalAccountBinding": mac_jws(kid, secret, key.jwk, url)}
    with send("POST", url, jws(key, payload, {"nonce": nonce, "url": url,
                                              "jwk": key.jwk})) as response:
        assert response.status == 201
        location: str = response.headers["Location"]
        return location


def test_services_acme_reports_and_live_rates(browser: Browser, site: Site) -> None:
    admin = site.token("pki_super_admin")
    # a service whose certificate is due for renewal (10 days < 30), with a heartbeat, and
    # one without a certificate
    site.api("POST", "/api/v1/services", admin,
             {"name": "Billing API", "slug": "web-billing", "organization": "default"})
    site.api("POST", "/api/v1/services/web-billing/certificate?organization=default", admin,
             {"csr": make_csr("web-billing.example.test",
                              ("web-billing.example.test",)).decode(), "validity_days": 10})
    site.api("POST", "/api/v1/services/web-billing/heartbeat?organization=default", admin,
             {"status": "healthy"})
    site.api("POST", "/api/v1/services", admin,
             {"name": "Ledger", "slug": "web-ledger", "organization": "default"})
    issued = site.issue(admin, "web-rates.example.test")
    assert "leaf.pem: good" in _ocsp(site, issued)  # some OCSP traffic for the rates

    page, console = _open(browser, site)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    counts: dict[str, dict[str, int]] = {}
    _sign_in(page, admin)

    page.get_by_role("link", name="Services").click()
    billing = page.locator("#view tbody tr").filter(has_text="web-billing")
    expect(billing).to_contain_text("due")
    expect(billing).to_contain_text(re.compile(r"\d+ s ago"))  # the heartbeat's age
    expect(billing).to_contain_text("healthy")
    expect(page.locator("#view tbody tr").filter(has_text="web-ledger")).to_contain_text(
        "no certificate")
    expect(page.locator("#renewal-summary")).to_contain_text("1 due for renewal")
    _shot(page, "11-services")
    _axe(page, "services", counts)
    page.set_viewport_size(NARROW)
    expect(billing).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
    _shot(page, "11-services-narrow")
    _axe(page, "services-narrow", counts)
    page.set_viewport_size(WIDE)

    # ACME: an EAB key is created and its HMAC shown once, copyable
    page.get_by_role("link", name="ACME").click()
    page.get_by_label("Organization (slug or id)").fill("default")
    page.get_by_role("button", name="Create EAB key").click()
    expect(page.get_by_role("heading", name=re.compile("^New EAB key"))).to_be_focused()
    kid = page.locator("#eab-kid").inner_text()
    hmac_key = page.get_by_label("HMAC key (base64url)").input_value()
    assert len(base64.urlsafe_b64decode(hmac_key + "=" * (-len(hmac_key) % 4))) >= 32
    page.get_by_role("button", name="Copy HMAC key").click()
    expect(page.locator("#eab-copied")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == hmac_key
    keys = page.locator("#eab-keys")
    expect(keys).to_contain_text(kid)
    assert hmac_key not in keys.inner_text()  # listed without its HMAC
    _shot(page, "12-acme-eab-created")
    _axe(page, "acme", counts)
    # an ACME client registers with it; the page shows the binding and deactivates it
    _acme_account(site, kid, hmac_key)
    page.reload()
    expect(keys.locator("tr").filter(has_text=kid)).to_contain_text("bound")
    expect(page.get_by_text("New EAB key")).to_have_count(0)  # shown once: gone
    account = page.locator("#acme-accounts tbody tr").filter(has_text=kid)
    expect(account).to_contain_text("valid")
    account.get_by_role("button", name=re.compile("^Deactivate account")).click()
    expect(page.locator("#acme-message")).to_contain_text("deactivated")
    expect(account).to_contain_text("deactivated")
    # an unused key can be revoked
    page.get_by_role("button", name="Create EAB key").click()
    spare = page.locator("#eab-kid").inner_text()
    page.get_by_role("button", name=f"Revoke EAB key {spare}").click()
    expect(page.locator("#acme-message")).to_have_text(f"EAB key {spare} revoked.")
    _shot(page, "13-acme-accounts")
    _axe(page, "acme-accounts", counts)

    # reports: generate, then download; the bytes are the ones the API hashed
    page.get_by_role("link", name="Reports").click()
    page.get_by_label("Report", exact=True).select_option("crypto_inventory")
    page.get_by_label("Format").select_option("json")
    page.get_by_role("button", name="Generate").click()
    sha = page.locator("#report-sha")
    expect(sha).to_have_text(re.compile("^[0-9a-f]{64}$"))
    with page.expect_download() as downloading:
        page.locator("#report-result").get_by_role("link", name=re.compile("^Download")).click()
    data = Path(downloading.value.path()).read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha.inner_text()
    assert json.loads(data)["report"] == "crypto_inventory"
    newest = page.locator("#report-list tbody tr").first
    expect(newest).to_contain_text("crypto_inventory")
    expect(newest).to_contain_text(sha.inner_text())
    report_id = page.locator("#report-title").inner_text().removeprefix("Report ")
    with page.expect_download() as downloading:  # the stored copy, from the list
        newest.get_by_role("link", name=f"Download report {report_id}").click()
    assert Path(downloading.value.path()).read_bytes() == data
    _shot(page, "14-reports")
    _axe(page, "reports", counts)

    # live rates: totals at once, rates from the second sample (the page polls every 5 s)
    page.get_by_role("link", name="Live rates").click()
    rates = page.locator("#rates-table")
    expect(rates).to_contain_text("OCSP cache hit ratio")
    issued_row = rates.locator("tr").filter(has_text="Certificates issued")
    assert int(issued_row.locator("td").last.inner_text()) >= 2
    assert int(rates.locator("tr").filter(has_text="OCSP responses").locator(
        "td").last.inner_text()) >= 1
    expect(page.locator("#rates-status")).to_contain_text("rates over the last",
                                                          timeout=20_000)
    _shot(page, "15-live-rates")
    _axe(page, "live-rates", counts)
    page.get_by_role("link", name="Certificates").click()  # the poller stops with the view
    print(f"axe violations by impact, per view: {counts}")
    assert console.errors == [], console.errors


def test_views_an_auditor_may_not_use_say_so(browser: Browser, site: Site) -> None:
    page, console = _open(browser, site)
    _sign_in(page, site.token("auditor"))
    page.get_by_role("link", name="ACME").click()
    expect(page.locator("#view")).to_contain_text("need the token:create permission")
    page.get_by_role("link", name="Live rates").click()
    expect(page.locator("#rates-status")).to_contain_text("gateway-wide")
    expect(page.locator("#rates-table")).not_to_contain_text("OCSP")
    _shot(page, "16-live-rates-auditor")
    assert console.errors == [], console.errors  # no 403 asked for


def _client_certificate(workdir: Path) -> tuple[Path, Path]:
    """A self-signed client certificate and its key (a binding pins the certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web operator")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256()))
    cert_path, key_path = workdir / "operator.pem", workdir / "operator.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_client_certificate_sign_in(browser: Browser, site: Site) -> None:
    """On the EST listener (it requests client certificates) the page signs in with a
    certificate bound to a service account; the session is that account's, checked again
    on every request: revoking the binding sends the page back to sign-in."""
    cert_path, key_path = _client_certificate(site.workdir)
    account_id = site.gateway.cli(
        "service-account", "create", "--org", "default", "--name", "web operator",
        "--cert", str(cert_path), "--role", "auditor").stdout.strip()
    context = browser.new_context(  # type: ignore[call-arg]
        ignore_https_errors=True, viewport=WIDE,  # type: ignore[arg-type]
        client_certificates=[{"origin": site.gateway.est_url, "certPath": str(cert_path),
                              "keyPath": str(key_path)}])
    page = context.new_page()
    console = Console(page)
    page.goto(f"{site.gateway.est_url}/admin/")
    button = page.get_by_role("button", name="Sign in with the client certificate")
    expect(button).to_be_visible()
    counts: dict[str, dict[str, int]] = {}
    _axe(page, "sign-in-certificate", counts)
    button.click()
    expect(page.get_by_role("navigation", name="Views")).to_be_visible()
    expect(page.locator("#who-text")).to_contain_text("auditor")
    page.get_by_role("link", name="Services").click()
    expect(page.locator("#renewal-summary")).to_be_visible()
    _shot(page, "17-client-certificate-session")
    session = page.request.get(f"{site.gateway.est_url}/admin/session").json()
    assert session["actor_id"] == f"mtls:{account_id}" and session["role"] == "auditor"
    assert console.errors == [], console.errors
    # without a certificate the same listener offers only the token form
    plain = browser.new_context(ignore_https_errors=True).new_page()
    plain.goto(f"{site.gateway.est_url}/admin/")
    expect(plain.get_by_label("Bearer token")).to_be_visible()
    expect(plain.get_by_role("button", name="Sign in with the client certificate")).to_be_hidden()
    plain.context.close()
    site.gateway.cli("service-account", "revoke", account_id)
    page.get_by_role("link", name="Certificates").click()  # a 401: back to sign-in
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("Your session has ended")
    context.close()
    print(f"axe violations by impact: {counts}")
