"""The isolation matrix (issue 13): for every role x REST endpoint x (own organization,
other organization, sharing organization), the expected outcome comes from the one table
MATRIX below and is asserted; every refusal (403 or 404) must also be audited as
``denied``, and must change nothing.

Outcomes: ``allow`` (2xx, and the target is in the answer), ``empty`` (200, the target is
not in the answer: the scope of a list), ``hide`` (404: existence must not leak), ``deny``
(403). Tokens act from organization "alpha". "beta" is the other organization: it shares
its certificates, but with "gamma" only. "gamma" is the sharing organization: it shares
its certificates with alpha, by the isolation level the test is run with (collaborative:
alpha is its partner; federated: alpha and gamma are federated). Sharing lets principals
with ``cert:read`` read certificates; nothing else crosses. The target certificate of each
case was requested by the CA itself, so a service_account (``*_own`` permissions) never
sees it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ca_core.admin import OrganizationChange
from ca_core.authority import IssuanceRequest
from ca_core.code_signing import SignRequest
from ca_core.est import EstLabel, PendingEnrollment
from ca_core.hierarchy import ensure_organization, rollover_issuing_ca
from ca_core.principal import ROLES, Principal
from ca_core.records import AcmeAccount, AuditEvent
from ca_core.reports import ReportRequest, ReportService
from ca_core.scep import ScepTransaction
from ca_core.services import ServiceSpec
from ca_core.templates import TemplateSpec
from gateway.app import build_https_app
from gateway.runtime import Services
from tests.helpers import make_csr, make_key

ClientFactory = Callable[..., Any]
SYSTEM = Principal.system("matrix")
OWN, OTHER, SHARING = "alpha", "beta", "gamma"

A, E, H, D = "allow", "empty", "hide", "deny"
# endpoint -> role -> (own organization, other organization, sharing organization).
# The one table.
MATRIX: dict[str, dict[str, tuple[str, str, str]]] = {
    "certificates.list": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, A), "cert_manager": (A, H, A),
        "service_account": (E, H, H), "code_signer": (A, H, A), "auditor": (A, H, A)},
    "certificates.get": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, A), "cert_manager": (A, H, A),
        "service_account": (H, H, H), "code_signer": (A, H, A), "auditor": (A, H, A)},
    "certificates.issue": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, D, D), "cert_manager": (A, D, D),
        "service_account": (A, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "certificates.revoke": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (A, H, H),
        "service_account": (H, H, H), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "certificates.renew": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (A, H, H),
        "service_account": (H, H, H), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "tokens.list": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "tokens.create": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "tokens.revoke": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "service_accounts.list": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "service_accounts.create": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "service_accounts.revoke": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "cas.list": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, E, E), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "cas.chain": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "cas.create": {
        "pki_super_admin": (A, A, A), "pki_admin": (D, D, D), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "cas.create_intermediate": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "cas.activate": {
        "pki_super_admin": (A, A, A), "pki_admin": (D, D, D), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    # each organization's own template (the built-ins are everyone's: test_templates.py)
    "templates.list": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (A, H, H),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (A, H, H)},
    "templates.get": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (A, H, H),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (A, H, H)},
    "templates.get_unscoped": {  # by name alone: another organization's is not found
        "pki_super_admin": (H, H, H), "pki_admin": (A, H, H), "cert_manager": (A, H, H),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (A, H, H)},
    "templates.create": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "templates.update": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "templates.delete": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "acme_eab.list": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "acme_eab.create": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "acme_eab.revoke": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "acme_accounts.list": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "acme_accounts.deactivate": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "organizations.get": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "organizations.update": {
        "pki_super_admin": (A, A, A), "pki_admin": (D, D, D), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "audit.query": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, E, E), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (A, E, E)},
    "audit.export": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, E, E), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (A, E, E)},
    # the seed gives signature:create and signature:verify to code_signer alone
    "signatures.create": {
        "pki_super_admin": (D, D, D), "pki_admin": (D, D, D), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (A, D, D), "auditor": (D, D, D)},
    "signatures.verify": {
        "pki_super_admin": (D, D, D), "pki_admin": (D, D, D), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (A, H, H), "auditor": (D, D, D)},
    # the service registry: service:* (admins), service:read (cert_manager, auditor); a
    # service_account acts for its own service only (the target is registered by the CA,
    # so it is not its own), and registers its own; nothing crosses organizations
    "services.list": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (A, H, H),
        "service_account": (E, H, H), "code_signer": (D, D, D), "auditor": (A, H, H)},
    "services.get": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (A, H, H),
        "service_account": (H, H, H), "code_signer": (D, D, D), "auditor": (A, H, H)},
    "services.register": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (A, H, H), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "services.update": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (H, H, H), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "services.heartbeat": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (H, H, H), "code_signer": (D, D, D), "auditor": (D, D, D)},
    "services.issue": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (H, H, H), "code_signer": (D, D, D), "auditor": (D, D, D)},
    # compliance:read (the seed: auditor and pki_admin of their own organization; sharing
    # certificates does not share reports)
    "reports.generate": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (A, H, H)},
    "reports.list": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (A, H, H)},
    "reports.get": {  # a stored report again
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (A, H, H)},
    # the web page's live counters: compliance:read, scoped as the reports are
    "stats": {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (A, H, H)},
    # EST secrets and SCEP challenges and their approval queues (issue 17): managed as
    # tokens and EAB keys are (token:create: admins, their own organization's)
    **{endpoint: {
        "pki_super_admin": (A, A, A), "pki_admin": (A, H, H), "cert_manager": (D, D, D),
        "service_account": (D, D, D), "code_signer": (D, D, D), "auditor": (D, D, D)}
       for endpoint in ("est_secrets.list", "est_secrets.create", "est_secrets.revoke",
                        "est_pending.list", "est_pending.approve", "est_pending.reject",
                        "scep_challenges.list", "scep_challenges.create",
                        "scep_challenges.revoke", "scep_pending.list",
                        "scep_pending.approve", "scep_pending.reject")},
}


@dataclass
class Target:
    """The resources of one organization a case acts on (fresh for mutating endpoints)."""

    slug: str
    serial: str
    cert_id: str
    common_name: str
    token_id: str
    eab_kid: str
    account_id: str
    ca_name: str  # the organization's active issuing CA
    service_account_id: str
    template: str  # a template of the organization
    next_ca: str = ""  # a rollover's next CA (made for cas.activate only)
    signature_id: str = ""  # a code signature (made for signatures.verify only)
    signature: str = ""  # its base64 DER
    signed_hash: str = ""
    service: str = ""  # a registered service of the organization (services.* only)
    report_id: str = ""  # a stored report of the organization (reports.list and .get only)
    # EST and SCEP credentials and queued requests (est_* and scep_* only)
    est_secret: str = ""
    est_request: str = ""
    scep_challenge: str = ""
    scep_request: str = ""


@dataclass
class Answer:
    status: int
    text: str


Call = Callable[[TestClient, dict[str, str], Target], Awaitable[Answer]]


async def _answer(response: Any) -> Answer:
    return Answer(response.status, await response.text())


def _items(answer: Answer, endpoint: str) -> list[dict[str, Any]]:
    if endpoint == "audit.export":  # JSON Lines
        return [json.loads(line) for line in answer.text.splitlines()]
    items: list[dict[str, Any]] = json.loads(answer.text)["items"]
    return items


def _contains(answer: Answer, target: Target, endpoint: str) -> bool:
    """Whether a 2xx answer shows the target (lists) or is about it (single resources)."""
    if endpoint == "certificates.list":
        return target.serial in [c["serial"] for c in _items(answer, endpoint)]
    if endpoint.startswith("audit."):
        return target.cert_id in [e["resource_id"] for e in _items(answer, endpoint)]
    if endpoint == "tokens.list":
        return target.token_id in [t["id"] for t in _items(answer, endpoint)]
    if endpoint == "service_accounts.list":
        return target.service_account_id in [a["id"] for a in _items(answer, endpoint)]
    if endpoint == "cas.list":
        return target.ca_name in [c["name"] for c in _items(answer, endpoint)]
    if endpoint == "acme_eab.list":
        return target.eab_kid in [k["kid"] for k in _items(answer, endpoint)]
    if endpoint == "templates.list":
        return target.template in [t["name"] for t in _items(answer, endpoint)]
    if endpoint == "acme_accounts.list":
        return target.account_id in [a["id"] for a in _items(answer, endpoint)]
    if endpoint == "services.list":
        return target.service in [s["slug"] for s in _items(answer, endpoint)]
    if endpoint == "reports.list":
        return target.report_id in [r["id"] for r in _items(answer, endpoint)]
    if endpoint == "reports.get":
        return bool(json.loads(answer.text)["report_id"] == target.report_id)
    if endpoint == "stats":  # the figures of the organization asked for
        return bool(json.loads(answer.text)["organization"] == target.slug)
    if endpoint == "reports.generate":
        return bool(json.loads(answer.text)["organization"] == target.slug)
    listed = {"est_secrets.list": target.est_secret, "est_pending.list": target.est_request,
              "scep_challenges.list": target.scep_challenge,
              "scep_pending.list": target.scep_request}
    if endpoint in listed:
        return listed[endpoint] in [i["id"] for i in _items(answer, endpoint)]
    if endpoint == "signatures.verify":
        verdict = json.loads(answer.text)
        return bool(verdict["valid"] and verdict["signature_id"] == target.signature_id)
    return True


async def _get(client: TestClient, auth: dict[str, str], path: str,
               **params: str) -> Answer:
    return await _answer(await client.get(path, headers=auth, params=params))


CALLS: dict[str, Call] = {
    "certificates.list": lambda c, h, t: _get(c, h, "/api/v1/certificates",
                                              organization=t.slug, q=t.common_name),
    "certificates.get": lambda c, h, t: _get(c, h, f"/api/v1/certificates/{t.serial}"),
    "certificates.issue": lambda c, h, t: _post(c, h, "/api/v1/certificates", {
        "csr": make_csr(cn="new.example.test", dns=("new.example.test",)).decode(),
        "organization": t.slug}),
    "certificates.revoke": lambda c, h, t: _post(c, h,
                                                 f"/api/v1/certificates/{t.serial}/revoke"),
    "certificates.renew": lambda c, h, t: _post(c, h,
                                                f"/api/v1/certificates/{t.serial}/renew"),
    "tokens.list": lambda c, h, t: _get(c, h, "/api/v1/tokens", organization=t.slug),
    "tokens.create": lambda c, h, t: _post(c, h, "/api/v1/tokens", {
        "organization": t.slug, "role": "auditor"}),
    "tokens.revoke": lambda c, h, t: _delete(c, h, f"/api/v1/tokens/{t.token_id}"),
    "service_accounts.list": lambda c, h, t: _get(c, h, "/api/v1/service-accounts",
                                                  organization=t.slug, limit="500"),
    "service_accounts.create": lambda c, h, t: _post(c, h, "/api/v1/service-accounts", {
        "organization": t.slug, "name": "new", "certificate": _client_pem()}),
    "service_accounts.revoke": lambda c, h, t: _delete(
        c, h, f"/api/v1/service-accounts/{t.service_account_id}"),
    "cas.list": lambda c, h, t: _get(c, h, "/api/v1/cas", limit="500"),
    "cas.chain": lambda c, h, t: _get(c, h, f"/api/v1/cas/{t.ca_name}/chain"),
    "cas.create": lambda c, h, t: _post(c, h, "/api/v1/cas", {"organization": t.slug}),
    "cas.create_intermediate": lambda c, h, t: _post(c, h, "/api/v1/cas", {
        "type": "intermediate", "organization": t.slug,
        "name": f"{t.common_name.partition('.')[0]}-{t.slug}-intermediate"}),
    "cas.activate": lambda c, h, t: _post(c, h, f"/api/v1/cas/{t.next_ca}/activate"),
    "templates.list": lambda c, h, t: _get(c, h, "/api/v1/templates", organization=t.slug,
                                           limit="500"),
    "templates.get": lambda c, h, t: _get(c, h, f"/api/v1/templates/{t.template}",
                                          organization=t.slug),
    "templates.get_unscoped": lambda c, h, t: _get(c, h, f"/api/v1/templates/{t.template}"),
    "templates.create": lambda c, h, t: _post(c, h, "/api/v1/templates", {
        "name": f"new-{t.template}", "base": "vcc_service", "organization": t.slug,
        "max_validity_days": 30}),
    "templates.update": lambda c, h, t: _put(
        c, h, f"/api/v1/templates/{t.template}?organization={t.slug}",
        {"description": "changed", "max_validity_days": 20}),
    "templates.delete": lambda c, h, t: _delete(
        c, h, f"/api/v1/templates/{t.template}?organization={t.slug}"),
    "acme_eab.list": lambda c, h, t: _get(c, h, "/api/v1/acme/eab", organization=t.slug,
                                          limit="500"),
    "acme_eab.create": lambda c, h, t: _post(c, h, "/api/v1/acme/eab",
                                             {"organization": t.slug}),
    "acme_eab.revoke": lambda c, h, t: _delete(c, h, f"/api/v1/acme/eab/{t.eab_kid}"),
    "acme_accounts.list": lambda c, h, t: _get(c, h, "/api/v1/acme/accounts",
                                               organization=t.slug, limit="500"),
    "acme_accounts.deactivate": lambda c, h, t: _post(
        c, h, f"/api/v1/acme/accounts/{t.account_id}/deactivate"),
    "organizations.get": lambda c, h, t: _get(c, h, f"/api/v1/organizations/{t.slug}"),
    "organizations.update": lambda c, h, t: _patch(c, h, f"/api/v1/organizations/{t.slug}",
                                                   {"name": f"{t.slug} renamed"}),
    "audit.query": lambda c, h, t: _get(c, h, "/api/v1/audit", resource=t.cert_id),
    "audit.export": lambda c, h, t: _get(c, h, "/api/v1/audit/export", resource=t.cert_id),
    "signatures.create": lambda c, h, t: _post(c, h, "/api/v1/signatures", {
        "hash": hashlib.sha256(t.common_name.encode()).hexdigest(),
        "artifact_type": "python_package", "name": f"{t.common_name}.whl",
        "organization": t.slug}),
    "signatures.verify": lambda c, h, t: _post(c, h, "/api/v1/signatures/verify", {
        "signature": t.signature, "hash": t.signed_hash}),
    "services.list": lambda c, h, t: _get(c, h, "/api/v1/services", organization=t.slug,
                                          limit="500"),
    "services.get": lambda c, h, t: _get(c, h, f"/api/v1/services/{t.service}",
                                         organization=t.slug),
    "services.register": lambda c, h, t: _post(c, h, "/api/v1/services", {
        "name": "New", "slug": f"new-{t.service}", "organization": t.slug}),
    "services.update": lambda c, h, t: _patch(
        c, h, f"/api/v1/services/{t.service}?organization={t.slug}", {"version": "2"}),
    "services.heartbeat": lambda c, h, t: _post(
        c, h, f"/api/v1/services/{t.service}/heartbeat?organization={t.slug}",
        {"status": "degraded"}),
    "services.issue": lambda c, h, t: _post(
        c, h, f"/api/v1/services/{t.service}/certificate?organization={t.slug}",
        {"csr": make_csr(cn=f"{t.service}.example.test",
                         dns=(f"{t.service}.example.test",)).decode()}),
    "reports.generate": lambda c, h, t: _get(c, h, "/api/v1/reports/certificate_lifecycle",
                                             organization=t.slug),
    "reports.list": lambda c, h, t: _get(c, h, "/api/v1/reports", organization=t.slug,
                                         limit="500"),
    "reports.get": lambda c, h, t: _get(
        c, h, f"/api/v1/reports/crypto_inventory/{t.report_id}"),
    "stats": lambda c, h, t: _get(c, h, "/api/v1/stats", organization=t.slug),
    "est_secrets.list": lambda c, h, t: _get(c, h, "/api/v1/est/secrets",
                                             organization=t.slug, limit="500"),
    "est_secrets.create": lambda c, h, t: _post(c, h, "/api/v1/est/secrets",
                                                {"organization": t.slug}),
    "est_secrets.revoke": lambda c, h, t: _delete(c, h, f"/api/v1/est/secrets/{t.est_secret}"),
    "est_pending.list": lambda c, h, t: _get(c, h, "/api/v1/est/pending",
                                             organization=t.slug, limit="500"),
    "est_pending.approve": lambda c, h, t: _post(
        c, h, f"/api/v1/est/pending/{t.est_request}/approve"),
    "est_pending.reject": lambda c, h, t: _post(
        c, h, f"/api/v1/est/pending/{t.est_request}/reject"),
    "scep_challenges.list": lambda c, h, t: _get(c, h, "/api/v1/scep/challenges",
                                                 organization=t.slug, limit="500"),
    "scep_challenges.create": lambda c, h, t: _post(c, h, "/api/v1/scep/challenges",
                                                    {"organization": t.slug}),
    "scep_challenges.revoke": lambda c, h, t: _delete(
        c, h, f"/api/v1/scep/challenges/{t.scep_challenge}"),
    "scep_pending.list": lambda c, h, t: _get(c, h, "/api/v1/scep/pending",
                                              organization=t.slug, limit="500"),
    "scep_pending.approve": lambda c, h, t: _post(
        c, h, f"/api/v1/scep/pending/{t.scep_request}/approve"),
    "scep_pending.reject": lambda c, h, t: _post(
        c, h, f"/api/v1/scep/pending/{t.scep_request}/reject"),
}


def _client_pem() -> str:
    """A fresh client certificate of another CA (self-signed), PEM: one a service account
    may be bound to."""
    key = make_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "matrix client")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


async def _post(client: TestClient, auth: dict[str, str], path: str,
                body: dict[str, Any] | None = None) -> Answer:
    return await _answer(await client.post(path, headers=auth, json=body or {}))


async def _delete(client: TestClient, auth: dict[str, str], path: str) -> Answer:
    return await _answer(await client.delete(path, headers=auth))


async def _put(client: TestClient, auth: dict[str, str], path: str,
               body: dict[str, Any]) -> Answer:
    return await _answer(await client.put(path, headers=auth, json=body))


async def _patch(client: TestClient, auth: dict[str, str], path: str,
                 body: dict[str, Any]) -> Answer:
    return await _answer(await client.patch(path, headers=auth, json=body))


async def _target(services: Services, slug: str, n: int, endpoint: str) -> Target:
    common_name = f"m{n}.{slug}.example.test"
    issued = await services.authority.issue(IssuanceRequest(
        csr=make_csr(cn=common_name, dns=(common_name,)), profile="vcc_service", org=slug),
        SYSTEM)
    token = await services.authority.create_token(slug, "auditor", principal=SYSTEM)
    eab = await services.admin.create_eab_key(SYSTEM, slug)
    org = await services.authority.organization(slug)
    account = AcmeAccount(account_id=f"acct{n}", org_id=org.org_id,
                          key_thumbprint=f"thumbprint-{n}", jwk={"kty": "EC"},
                          created_at=dt.datetime.now(dt.UTC))
    await services.store.add_acme_account(account, AuditEvent(
        event_type="acme.account_created", category="acme", action="account_created",
        actor_type="system", actor_id="matrix", org_id=org.org_id,
        resource_type="acme_account", resource_id=account.account_id))
    bound = await services.admin.create_service_account(SYSTEM, slug, f"matrix {n}",
                                                        _client_pem().encode())
    template = (await services.admin.create_template(
        SYSTEM, f"t{n}-{slug}", TemplateSpec(base="vcc_service", max_validity_days=90),
        slug)).profile.name
    cas = await services.authority.issuing_cas(org)
    next_ca = cas.next or ""
    if endpoint == "cas.activate" and not next_ca:
        next_ca = (await rollover_issuing_ca(services.authority, slug, SYSTEM)).name
    target = Target(slug, issued.serial, issued.record.cert_id, common_name,
                    token.record.token_id, eab.kid, account.account_id, cas.active,
                    bound.account_id, template, next_ca)
    if endpoint == "signatures.verify":
        signed_hash = hashlib.sha256(common_name.encode()).hexdigest()
        signed = await services.signatures.sign(
            SignRequest(signed_hash, "helm_chart", f"{common_name}.tgz"),
            Principal("api", f"matrix-signer-{slug}", org.org_id, "code_signer"))
        target.signature_id = signed.record.signature_id
        target.signature = base64.b64encode(signed.record.signature_der).decode()
        target.signed_hash = signed_hash
    if endpoint.startswith("services."):
        target.service = f"svc{n}"
        await services.registry.register(SYSTEM, ServiceSpec(f"Service {n}", target.service,
                                                             organization=slug))
    if endpoint in ("reports.list", "reports.get"):
        target.report_id = (await ReportService(services.authority).generate(
            SYSTEM, ReportRequest("crypto_inventory", organization=slug))).record.report_id
    if endpoint.startswith(("est_", "scep_")):
        await _enrollment_targets(services, target, org.org_id, n)
    return target


async def _enrollment_targets(services: Services, target: Target, org_id: str, n: int
                              ) -> None:
    """An EST secret, a queued EST request (of a label that requires approval), a SCEP
    challenge and a queued SCEP request of the organization."""
    label = f"matrix-{target.slug}"
    await services.est.set_label(EstLabel(label, org_id, "vcc_service",
                                          require_approval=True), SYSTEM)
    target.est_secret = (await services.admin.enrollment.create_est_secret(
        SYSTEM, target.slug)).user
    target.scep_challenge = (await services.admin.enrollment.create_scep_challenge(
        SYSTEM, target.slug)).challenge_id
    now = dt.datetime.now(dt.UTC)
    name = f"e{n}.{target.slug}.example.test"
    target.est_request = f"est-req-{n}"
    await services.store.add_pending_enrollment(PendingEnrollment(
        request_id=target.est_request, label=label, org_id=org_id,
        csr_der=make_csr(cn=name, dns=(name,), pem=False), requester=f"secret:matrix-{n}",
        status="pending", created_at=now, csr_fingerprint=f"fp-{n}"), AuditEvent(
        event_type="est.request_pending", category="est", action="queue",
        actor_type="service", actor_id="est:matrix", org_id=org_id,
        resource_type="est_request", resource_id=target.est_request))
    target.scep_request = f"scep-tid-{n}"
    await services.store.record_scep_transaction(ScepTransaction(
        transaction_id=target.scep_request, key_fingerprint=f"key-{n}",
        request_fingerprint=f"req-{n}", org_id=org_id, status="pending", created_at=now,
        updated_at=now, profile="external_integration", requester="static",
        csr_der=make_csr(cn=name, dns=(), pem=False)), AuditEvent(
        event_type="scep.request_pending", category="scep", action="queue",
        actor_type="service", actor_id="scep:matrix", org_id=org_id,
        resource_type="scep_transaction", resource_id=target.scep_request))


async def _state(services: Services, target: Target) -> tuple[Any, ...]:
    """What a call on ``target`` could change: a refused call changes none of it."""
    store = services.store
    cert = await store.get_certificate_by_id(target.cert_id)
    token = await store.get_token(target.token_id)
    bound = await store.get_service_account(target.service_account_id)
    account = await store.get_acme_account(target.account_id)
    next_ca = await store.get_ca(target.next_ca) if target.next_ca else None
    org = await store.get_organization(target.slug)
    template = await store.get_template(target.template, org and org.org_id)
    service = await store.get_service(org.org_id, target.service) \
        if org and target.service else None
    enrollment = None
    if target.est_secret:
        est_request = await store.get_pending_enrollment(target.est_request)
        scep_request = await store.get_scep_transaction(target.scep_request)
        enrollment = (await store.get_enrollment_secret(target.est_secret) is not None,
                      await store.get_scep_challenge(target.scep_challenge) is not None,
                      est_request and est_request.status, scep_request and scep_request.status)
    # The target itself, and counts that are one aggregate each. What else a call could
    # have made (a token, an EAB key, a service account, a template, a service) writes an
    # audit entry: _appended checks that a refused call appended nothing but its denial.
    return (enrollment, service and (service.name, service.version, service.health_status,
                                     service.active_cert_id),
            template and (template.definition, template.status), cert and cert.status,
            token and token.revoked, bound and bound.revoked,
            await store.get_eab_key(target.eab_kid) is not None, account and account.status,
            next_ca and next_ca.status, org and (org.name, org.status),
            sum(n for _, _, n in await store.count_active_certificates(
                dt.datetime.now(dt.UTC))),
            len(await store.list_cas()))


async def _head(services: Services) -> int:
    head = await services.store.audit_head()
    return 0 if head is None else head.seq


async def _appended(services: Services, after: int) -> list[str]:
    """The statuses of the audit entries appended after seq ``after`` (read from there: the
    whole log would make the matrix quadratic)."""
    return [e.event.status for e in await services.store.audit_entries(after_seq=after)]


async def _share(services: Services, level: str) -> None:
    """gamma shares with alpha at ``level``; beta shares with gamma only (collaborative):
    naming another partner, or federating without beta, shows alpha nothing of beta's."""
    for slug in (OWN, OTHER, SHARING):
        await ensure_organization(services.authority, slug, slug.title(), SYSTEM)
    await services.admin.update_organization(SYSTEM, OTHER, OrganizationChange(
        isolation="collaborative", partners=[SHARING]))
    if level == "collaborative":
        await services.admin.update_organization(SYSTEM, SHARING, OrganizationChange(
            isolation="collaborative", partners=[OWN]))
    else:
        for slug in (OWN, SHARING):
            await services.admin.update_organization(SYSTEM, slug, OrganizationChange(
                isolation="federated"))


# About 1,000 cases per level, each with fresh resources: ~16 s each on this machine once
# the audit reads start at the call's own entries (they read the whole log before: 11 min).
@pytest.mark.timeout(600)
@pytest.mark.parametrize("level", ["collaborative", "federated"])
async def test_isolation_matrix(services: Services, aiohttp_client: ClientFactory,
                                level: str) -> None:
    assert set(MATRIX) == set(CALLS)
    assert all(set(row) == set(ROLES) for row in MATRIX.values())
    await _share(services, level)
    client = await aiohttp_client(build_https_app(services))
    tokens = {role: (await services.authority.create_token(OWN, role, principal=SYSTEM)).token
              for role in ROLES}
    mismatches: list[str] = []
    n = 0
    for endpoint, row in MATRIX.items():
        for role, expected_row in row.items():
            for slug, expected in zip((OWN, OTHER, SHARING), expected_row, strict=True):
                n += 1
                target = await _target(services, slug, n, endpoint)
                before = await _head(services)
                state = await _state(services, target)
                answer = await CALLS[endpoint](
                    client, {"Authorization": f"Bearer {tokens[role]}"}, target)
                if 200 <= answer.status < 300:
                    got = A if _contains(answer, target, endpoint) else E
                else:
                    got = {403: D, 404: H}.get(answer.status, f"status {answer.status}")
                    appended = await _appended(services, before)
                    if "denied" not in appended:
                        mismatches.append(f"{endpoint} {role} {slug}: refusal not audited")
                    if await _state(services, target) != state or \
                            set(appended) != {"denied"}:
                        mismatches.append(f"{endpoint} {role} {slug}: refused, yet changed")
                if got != expected:
                    mismatches.append(f"{endpoint} {role} {slug}: expected {expected}, "
                                      f"got {got}: {answer.text[:160]}")
    assert not mismatches, "\n".join(mismatches)
    assert n == len(MATRIX) * len(ROLES) * 3
