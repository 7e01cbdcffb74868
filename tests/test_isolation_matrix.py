"""The isolation matrix (issue 13): for every role x REST endpoint x (own organization,
other organization), the expected outcome comes from the one table MATRIX below and is
asserted; every refusal (403 or 404) must also be audited as ``denied``.

Outcomes: ``allow`` (2xx, and the target is in the answer), ``empty`` (200, the target is
not in the answer: the scope of a list), ``hide`` (404: existence must not leak), ``deny``
(403). Tokens act from organization "alpha"; "beta" is the other organization. The target
certificate of each case was requested by the CA itself, so a service_account (``*_own``
permissions) never sees it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient

from ca_core.authority import IssuanceRequest
from ca_core.code_signing import SignRequest
from ca_core.hierarchy import ensure_organization, rollover_issuing_ca
from ca_core.principal import ROLES, Principal
from ca_core.records import AcmeAccount, AuditEvent
from gateway.app import build_https_app
from gateway.runtime import Services
from tests.helpers import make_csr

ClientFactory = Callable[..., Any]
SYSTEM = Principal.system("matrix")
OWN, OTHER = "alpha", "beta"

A, E, H, D = "allow", "empty", "hide", "deny"
# endpoint -> role -> (own organization, other organization). The one table.
MATRIX: dict[str, dict[str, tuple[str, str]]] = {
    "certificates.list": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (A, H),
        "service_account": (E, H), "code_signer": (A, H), "auditor": (A, H)},
    "certificates.get": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (A, H),
        "service_account": (H, H), "code_signer": (A, H), "auditor": (A, H)},
    "certificates.issue": {
        "pki_super_admin": (A, A), "pki_admin": (A, D), "cert_manager": (A, D),
        "service_account": (A, D), "code_signer": (D, D), "auditor": (D, D)},
    "certificates.revoke": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (A, H),
        "service_account": (H, H), "code_signer": (D, D), "auditor": (D, D)},
    "certificates.renew": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (A, H),
        "service_account": (H, H), "code_signer": (D, D), "auditor": (D, D)},
    "tokens.list": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "tokens.create": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "tokens.revoke": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "cas.list": {
        "pki_super_admin": (A, A), "pki_admin": (A, E), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "cas.chain": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "cas.create": {
        "pki_super_admin": (A, A), "pki_admin": (D, D), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "cas.activate": {
        "pki_super_admin": (A, A), "pki_admin": (D, D), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    # templates are the same for every organization (profiles are code): no "other"
    "templates.list": {
        "pki_super_admin": (A, A), "pki_admin": (A, A), "cert_manager": (A, A),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "templates.get": {
        "pki_super_admin": (A, A), "pki_admin": (A, A), "cert_manager": (A, A),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "acme_eab.list": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "acme_eab.create": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "acme_eab.revoke": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "acme_accounts.list": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "acme_accounts.deactivate": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "organizations.get": {
        "pki_super_admin": (A, A), "pki_admin": (A, H), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "organizations.update": {
        "pki_super_admin": (A, A), "pki_admin": (D, D), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (D, D)},
    "audit.query": {
        "pki_super_admin": (A, A), "pki_admin": (A, E), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (A, E)},
    "audit.export": {
        "pki_super_admin": (A, A), "pki_admin": (A, E), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (D, D), "auditor": (A, E)},
    # the seed gives signature:create and signature:verify to code_signer alone
    "signatures.create": {
        "pki_super_admin": (D, D), "pki_admin": (D, D), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (A, D), "auditor": (D, D)},
    "signatures.verify": {
        "pki_super_admin": (D, D), "pki_admin": (D, D), "cert_manager": (D, D),
        "service_account": (D, D), "code_signer": (A, H), "auditor": (D, D)},
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
    next_ca: str = ""  # a rollover's next CA (made for cas.activate only)
    signature_id: str = ""  # a code signature (made for signatures.verify only)
    signature: str = ""  # its base64 DER
    signed_hash: str = ""


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
    if endpoint == "cas.list":
        return target.ca_name in [c["name"] for c in _items(answer, endpoint)]
    if endpoint == "acme_eab.list":
        return target.eab_kid in [k["kid"] for k in _items(answer, endpoint)]
    if endpoint == "acme_accounts.list":
        return target.account_id in [a["id"] for a in _items(answer, endpoint)]
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
    "cas.list": lambda c, h, t: _get(c, h, "/api/v1/cas", limit="500"),
    "cas.chain": lambda c, h, t: _get(c, h, f"/api/v1/cas/{t.ca_name}/chain"),
    "cas.create": lambda c, h, t: _post(c, h, "/api/v1/cas", {"organization": t.slug}),
    "cas.activate": lambda c, h, t: _post(c, h, f"/api/v1/cas/{t.next_ca}/activate"),
    "templates.list": lambda c, h, t: _get(c, h, "/api/v1/templates"),
    "templates.get": lambda c, h, t: _get(c, h, "/api/v1/templates/vcc_service"),
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
}


async def _post(client: TestClient, auth: dict[str, str], path: str,
                body: dict[str, Any] | None = None) -> Answer:
    return await _answer(await client.post(path, headers=auth, json=body or {}))


async def _delete(client: TestClient, auth: dict[str, str], path: str) -> Answer:
    return await _answer(await client.delete(path, headers=auth))


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
    cas = await services.authority.issuing_cas(org)
    next_ca = cas.next or ""
    if endpoint == "cas.activate" and not next_ca:
        next_ca = (await rollover_issuing_ca(services.authority, slug, SYSTEM)).name
    target = Target(slug, issued.serial, issued.record.cert_id, common_name,
                    token.record.token_id, eab.kid, account.account_id, cas.active, next_ca)
    if endpoint == "signatures.verify":
        signed_hash = hashlib.sha256(common_name.encode()).hexdigest()
        signed = await services.signatures.sign(
            SignRequest(signed_hash, "helm_chart", f"{common_name}.tgz"),
            Principal("api", f"matrix-signer-{slug}", org.org_id, "code_signer"))
        target.signature_id = signed.record.signature_id
        target.signature = base64.b64encode(signed.record.signature_der).decode()
        target.signed_hash = signed_hash
    return target


async def _state(services: Services, target: Target) -> tuple[Any, ...]:
    """What a call on ``target`` could change: a refused call changes none of it."""
    store = services.store
    cert = await store.get_certificate_by_id(target.cert_id)
    token = await store.get_token(target.token_id)
    account = await store.get_acme_account(target.account_id)
    next_ca = await store.get_ca(target.next_ca) if target.next_ca else None
    org = await store.get_organization(target.slug)
    return (cert and cert.status, token and token.revoked,
            await store.get_eab_key(target.eab_kid) is not None, account and account.status,
            next_ca and next_ca.status, org and (org.name, org.status),
            sum(n for _, _, n in await store.count_active_certificates(
                dt.datetime.now(dt.UTC))),
            len(await store.list_cas()), len(await store.list_tokens(limit=10_000)),
            len(await store.list_eab_keys(limit=10_000)))


async def _denials(services: Services) -> int:
    return sum(e.event.status == "denied" for e in await services.store.audit_entries())


async def test_isolation_matrix(services: Services, aiohttp_client: ClientFactory) -> None:
    assert set(MATRIX) == set(CALLS)
    assert all(set(row) == set(ROLES) for row in MATRIX.values())
    for slug in (OWN, OTHER):
        await ensure_organization(services.authority, slug, slug.title(), SYSTEM)
    client = await aiohttp_client(build_https_app(services))
    tokens = {role: (await services.authority.create_token(OWN, role, principal=SYSTEM)).token
              for role in ROLES}
    mismatches: list[str] = []
    n = 0
    for endpoint, row in MATRIX.items():
        for role, expected_pair in row.items():
            for slug, expected in zip((OWN, OTHER), expected_pair, strict=True):
                n += 1
                target = await _target(services, slug, n, endpoint)
                before = await _denials(services)
                state = await _state(services, target)
                answer = await CALLS[endpoint](
                    client, {"Authorization": f"Bearer {tokens[role]}"}, target)
                if 200 <= answer.status < 300:
                    got = A if _contains(answer, target, endpoint) else E
                else:
                    got = {403: D, 404: H}.get(answer.status, f"status {answer.status}")
                    if await _denials(services) == before:
                        mismatches.append(f"{endpoint} {role} {slug}: refusal not audited")
                    if await _state(services, target) != state:
                        mismatches.append(f"{endpoint} {role} {slug}: refused, yet changed")
                if got != expected:
                    mismatches.append(f"{endpoint} {role} {slug}: expected {expected}, "
                                      f"got {got}: {answer.text[:160]}")
    assert not mismatches, "\n".join(mismatches)
    assert n == len(MATRIX) * len(ROLES) * 2
