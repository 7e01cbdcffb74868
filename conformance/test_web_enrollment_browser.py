"""The web admin page's enrollment view (issue 17) in headless Chromium, against ``vcc-pki
serve`` started the normal way (the fixtures of ``test_web_admin_browser``): create an EST
secret in the page (its password shown once), enroll with it with curl on the EST port (a
label that requires approval: 202), approve the request in the page, and curl gets the
certificate; reject another; create and revoke a SCEP challenge; an auditor is offered
none of it. axe-core finds no serious violation; no console errors; screenshots in
``artefacts/web-admin/``; the gateway's log holds no secret (``assert_clean_log``)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.serialization import pkcs7

from conformance import test_web_admin_browser as web
from conformance.test_web_admin_browser import NARROW, WIDE, Site, _axe, _open, _shot, _sign_in
from tests.helpers import make_csr

# The page tests' fixtures: a gateway (with organization "other") and Chromium.
site, browser = web.site, web.browser


def _enroll(site: Site, user: str, password: str, csr: bytes, out: Path) -> str:
    """simpleenroll with curl and HTTP Basic on the EST listener; the HTTP status."""
    body = site.workdir / f"{out.name}.b64"
    body.write_bytes(base64.b64encode(csr))
    result = subprocess.run(
        ["curl", "-sS", "--cacert", str(site.root), "-o", str(out), "-w", "%{http_code}",
         "-H", "Content-Type: application/pkcs10", "--user", f"{user}:{password}",
         "--data-binary", f"@{body}", f"{site.gateway.est_url}/.well-known/est/gated/simpleenroll"],
        capture_output=True, text=True, timeout=60, check=False)
    return result.stdout.strip() or result.stderr


def _create_secret(page: web.Page) -> tuple[str, str]:
    page.get_by_label("Label (optional)").fill("gated")
    page.get_by_role("button", name="Create EST secret").click()
    panel = page.locator("#est-created")
    web.expect(panel.get_by_role("heading")).to_be_focused()
    values = panel.locator("dd code")
    return values.nth(0).inner_text(), values.nth(1).inner_text()


def _open_enrollment(page: web.Page) -> None:
    page.get_by_role("link", name="Enrollment").click()
    web.expect(page.get_by_role("heading", name="Enrollment: EST and SCEP")).to_be_visible()
    web.expect(page.locator("#est-org")).to_have_value("default")  # the slug, not the id
    web.expect(page.locator("#est-pending caption")).to_be_visible()


def _refresh(page: web.Page, expected: str) -> None:
    """The lists as they are now; ``expected`` the EST queue's caption then."""
    page.get_by_role("button", name="Refresh the lists").click()
    web.expect(page.locator("#est-pending caption")).to_have_text(expected)


def test_create_secret_enroll_approve_reject_and_challenges(browser: web.Browser,
                                                            site: Site) -> None:
    site.gateway.cli("est", "label", "set", "gated", "--org", "default", "--profile",
                     "vcc_service", "--require-approval")
    page, console = _open(browser, site)
    counts: dict[str, dict[str, int]] = {}
    _sign_in(page, site.token("pki_admin"))
    _open_enrollment(page)
    _shot(page, "21-enrollment")
    _axe(page, "enrollment", counts)

    user, password = _create_secret(page)
    assert user.startswith("est-") and len(password) >= 32
    web.expect(page.locator("#est-list")).to_contain_text(user)
    assert password not in page.locator("#est-list").inner_text()  # listed without it
    _shot(page, "22-enrollment-secret-created")
    _axe(page, "enrollment-secret-created", counts)

    csr = make_csr("gated-device.example.test", ("gated-device.example.test",), pem=False)
    assert _enroll(site, user, password, csr, site.workdir / "first") == "202"
    _refresh(page, "1 EST request(s) waiting, oldest first")
    approve = page.get_by_role("button", name="Approve EST request")
    web.expect(approve).to_have_count(1)
    web.expect(page.locator("#est-pending")).to_contain_text("CN=gated-device.example.test")
    _shot(page, "23-enrollment-pending")
    approve.press("Enter")  # keyboard, not only the mouse
    web.expect(page.locator("#est-queue-message")).to_contain_text("certificate")
    web.expect(page.locator("#est-pending caption")).to_have_text(
        "0 EST request(s) waiting, oldest first")
    _shot(page, "24-enrollment-approved")
    assert _enroll(site, user, password, csr, site.workdir / "issued") == "200"
    [certificate] = pkcs7.load_der_pkcs7_certificates(
        base64.b64decode((site.workdir / "issued").read_bytes()))
    assert certificate.subject.rfc4514_string().startswith("CN=gated-device.example.test")
    serial = f"{certificate.serial_number:X}"
    message = page.locator("#est-queue-message").inner_text().replace(":", "")
    assert serial in message, (serial, message)
    web.expect(page.locator("#est-list")).to_contain_text("used")

    # another request, rejected: its retries are refused
    other_user, other_password = _create_secret(page)
    other = make_csr("gated-other.example.test", ("gated-other.example.test",), pem=False)
    assert _enroll(site, other_user, other_password, other, site.workdir / "other") == "202"
    _refresh(page, "1 EST request(s) waiting, oldest first")
    page.get_by_role("button", name="Reject EST request").click()
    web.expect(page.locator("#est-queue-message")).to_contain_text("Rejected EST request")
    assert _enroll(site, other_user, other_password, other, site.workdir / "other2") == "403"

    # a SCEP challenge: shown once, then revoked
    page.get_by_role("button", name="Create SCEP challenge").click()
    challenge = page.locator("#scep-created dd code").inner_text()
    assert len(challenge) == 64
    revoke = page.get_by_role("button", name="Revoke SCEP challenge")
    web.expect(revoke).to_have_count(1)
    revoke.click()
    web.expect(page.locator("#scep-message")).to_contain_text("Revoked SCEP challenge")
    web.expect(page.locator("#scep-list caption")).to_have_text("0 SCEP challenge(s), oldest first")
    # an unused EST secret too
    spare, _ = _create_secret(page)
    page.get_by_role("button", name=f"Revoke EST secret {spare}").click()
    web.expect(page.locator("#est-message")).to_contain_text(f"Revoked EST secret {spare}")
    web.expect(page.locator("#est-created")).to_be_empty()  # its password is gone too
    _shot(page, "25-enrollment-revoked")
    _axe(page, "enrollment-after", counts)

    page.set_viewport_size(NARROW)
    _refresh(page, "0 EST request(s) waiting, oldest first")
    _shot(page, "26-enrollment-narrow")
    _axe(page, "enrollment-narrow", counts)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW["width"], width
    page.set_viewport_size(WIDE)
    print(f"axe violations by impact, enrollment views: {counts}")
    assert console.errors == [], console.errors


def test_an_auditor_is_offered_no_enrollment_actions(browser: web.Browser,
                                                      site: Site) -> None:
    page, console = _open(browser, site)
    _sign_in(page, site.token("auditor"))
    page.get_by_role("link", name="Enrollment").click()
    web.expect(page.locator("#view")).to_contain_text("for administrators")
    web.expect(page.get_by_role("button", name="Create EST secret")).to_have_count(0)
    _shot(page, "27-enrollment-auditor")
    # and the API refuses it even with the session's CSRF token
    csrf = page.request.get(f"{site.gateway.https_url}/admin/session").json()["csrf"]
    refused = page.request.post(f"{site.gateway.https_url}/api/v1/est/secrets",
                                headers={"X-CSRF-Token": csrf},
                                data={"organization": "default"})
    assert refused.status == 403, refused.text()
    assert console.errors == [], console.errors
