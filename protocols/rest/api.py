"""The REST admin API (``/api/v1``): certificates, CAs, certificate templates (the
built-in profiles, read-only, and operators' narrowings of them), tokens, service accounts,
ACME EAB keys and accounts, organizations, the audit log, code signatures and the service
registry (``protocols.rest.services_api``).

Decode JSON or query parameters -> call the Authority or the AdminService (``ca_core.admin``,
the CLI's too) -> encode JSON. Authentication is a bearer token (``vcc-pki token create`` or
``POST /api/v1/tokens``) or, on the EST listener (which requests client certificates), a
client certificate bound to a service account (``vcc-pki service-account create``; a bearer
token wins when both come); authorization and tenant scoping are the core's. Errors are
problem+json (``protocols.rest.problems``). A list answers ``{"items": [...], "next":
CURSOR-or-null}``; pass ``cursor=NEXT`` for the next page. The OpenAPI 3.1 description of
all of it is ``/api/v1/openapi.json`` (``protocols.rest.openapi``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import ssl
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_core import cms
from ca_core.admin import (
    AdminService,
    AuditFilters,
    CaCreation,
    CertificateFilters,
    OrganizationChange,
    acme_account_document,
    audit_document,
    ca_document,
    eab_key_document,
    organization_document,
    service_account_document,
    template_document,
    token_document,
)
from ca_core.authority import (
    DEFAULT_PROFILE,
    Authority,
    IssuanceRequest,
    serial_display,
    serial_hex,
)
from ca_core.code_signing import CodeSigningService, SignedArtifact, SignRequest, Verification
from ca_core.errors import BadRequest, Unauthorized
from ca_core.keys import KeySpec
from ca_core.principal import Principal
from ca_core.records import AuditEntry, CertificateRecord
from ca_core.reports import ReportRequest, ReportService, report_summary
from ca_core.services import ServiceRegistry
from ca_core.sessions import WebSessions
from ca_core.stats import GatewayStats
from ca_core.templates import TemplateSpec
from protocols.est import tls_shim

log = logging.getLogger(__name__)

AUTHORITY = web.AppKey("authority", Authority)
ADMIN = web.AppKey("admin", AdminService)
SIGNATURES = web.AppKey("signatures", CodeSigningService)
REGISTRY = web.AppKey("registry", ServiceRegistry)
# The web admin page's sessions (protocols.web), on the HTTPS app only: its cookie
# authenticates the page's calls to this API, with CSRF_HEADER on every state change.
SESSIONS = web.AppKey("sessions", WebSessions)
SESSION_COOKIE = "__Host-vcc-admin"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def certificate_json(record: CertificateRecord, chain_pem: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "serial": serial_display(record.serial_hex),
        "subject": record.subject_dn,
        "common_name": record.common_name,
        "profile": record.profile,
        "san": record.san,
        "not_before": _iso(record.not_before),
        "not_after": _iso(record.not_after),
        "status": record.status,
        "revoked_at": _iso(record.revoked_at),
        "revocation_reason": record.revocation_reason,
        "certificate_pem": ssl.DER_cert_to_PEM_cert(record.certificate_der),
    }
    if chain_pem is not None:
        body["chain_pem"] = chain_pem
    return body


def _list_item(record: CertificateRecord) -> dict[str, Any]:
    body = certificate_json(record)
    body["organization_id"] = record.org_id
    return body


def _client_chain(request: web.Request) -> list[bytes]:
    """The TLS client certificate (DER) and the chain it came with, or [] when none was
    presented. Only the EST listener asks for one (the 8443 listener never does, so there
    this is always []); its handshake accepts any chain (``tls_shim``) and the core decides."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return []
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return []
    return [der, *tls_shim.peer_chain(ssl_object)]


async def _principal(request: web.Request) -> Principal:
    """A bearer token wins; then the web admin page's session cookie (HTTPS app only);
    then a client certificate bound to a service account (mTLS, on the listener that
    requests certificates); without any, 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return await request.app[AUTHORITY].authenticate(token.strip())
    session_id = request.cookies.get(SESSION_COOKIE)
    sessions = request.app.get(SESSIONS)
    if session_id and sessions is not None:
        _, principal = await sessions.resolve(session_id, request.headers.get(CSRF_HEADER),
                                              request.method not in _SAFE_METHODS)
        return principal
    chain = _client_chain(request)
    if chain:
        return await request.app[AUTHORITY].authenticate_certificate(chain)
    raise Unauthorized("a bearer token is required (Authorization: Bearer ...), or a client "
                       "certificate bound to a service account on the mTLS port")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="application/json required")
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"field {name!r} is required")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"field {name!r} must be a {kind.__name__}")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
            raise BadRequest(f"field {name!r} is not valid Unicode text") from None
    return value


def _date(body: dict[str, Any], name: str) -> dt.datetime | None:
    text = _field(body, name, str)
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"field {name!r} must be an RFC 3339 time") from None
    if value.tzinfo is None:
        raise BadRequest(f"field {name!r} needs a time zone")
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:  # before the first UTC instant
        raise BadRequest(f"field {name!r} is out of range") from None


async def issue_certificate(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    csr = _field(body, "csr", str, required=True)
    days = _field(body, "validity_days", int)
    profile, template = _field(body, "profile", str), _field(body, "template", str)
    if profile and template and profile != template:
        raise BadRequest("give 'profile' or 'template' (the same thing), not two different "
                         "names")
    issued = await request.app[AUTHORITY].issue(
        IssuanceRequest(
            csr=csr.encode(), profile=profile or template or DEFAULT_PROFILE,
            org=_field(body, "organization", str), validity_days=days,
        ),
        principal,
    )
    response = web.json_response(
        certificate_json(issued.record, issued.chain_pem), status=201
    )
    response.headers["Location"] = f"/api/v1/certificates/{issued.serial}"
    return response


async def revoke_certificate(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request) if request.can_read_body else {}
    record = await request.app[AUTHORITY].revoke(
        request.match_info["serial"],
        _field(body, "reason", str),
        principal,
        invalidity_date=_date(body, "invalidity_date"),
    )
    return web.json_response(certificate_json(record))


# --- query parameters ------------------------------------------------------------------

def _param(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if not value:  # absent or empty: no filter
        return None
    if len(value) > 1000:
        raise BadRequest(f"parameter {name!r} is too long")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"parameter {name!r} is not valid Unicode text") from None
    if "\x00" in value:
        raise BadRequest(f"parameter {name!r} holds a NUL character")
    return value


def _time_param(request: web.Request, name: str) -> dt.datetime | None:
    text = _param(request, name)
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"parameter {name!r} must be an RFC 3339 time") from None
    if value.tzinfo is None:
        raise BadRequest(f"parameter {name!r} needs a time zone")
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 lies before the first UTC instant
        raise BadRequest(f"parameter {name!r} is out of range") from None


def _limit(request: web.Request) -> int | None:
    text = _param(request, "limit")
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        raise BadRequest("parameter 'limit' must be an integer")
    return int(text)


def _page(items: list[dict[str, Any]], next_cursor: str | None) -> web.Response:
    return web.json_response({"items": items, "next": next_cursor})


# --- certificates --------------------------------------------------------------------------

async def list_certificates(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[ADMIN].list_certificates(principal, CertificateFilters(
        status=_param(request, "status"), expiring_before=_time_param(request,
                                                                      "expiring_before"),
        profile=_param(request, "profile"), organization=_param(request, "organization"),
        text=_param(request, "q")), _param(request, "cursor"), _limit(request))
    return _page([_list_item(r) for r in page.items], page.next)


_FORMATS = {"json", "pem", "der", "pkcs7"}
_CHAINS = {"default", "alternate"}


def _pem(certificates: tuple[x509.Certificate, ...]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


async def get_certificate(request: web.Request) -> web.Response:
    principal = await _principal(request)
    wanted = _param(request, "format") or "json"
    if wanted not in _FORMATS:
        raise BadRequest("format must be json, pem, der or pkcs7")
    which = _param(request, "chain") or "default"
    if which not in _CHAINS:
        raise BadRequest("chain must be default or alternate")
    record = await request.app[ADMIN].get_certificate(principal, request.match_info["serial"])
    if wanted == "json" and which == "default":
        return web.json_response(certificate_json(record))
    name = serial_display(record.serial_hex)
    if wanted == "der":
        return web.Response(body=record.certificate_der, content_type="application/pkix-cert",
                            headers={"Content-Disposition": f'attachment; filename="{name}.cer"'})
    chain = await request.app[ADMIN].certificate_chain(record, alternate=which == "alternate")
    if wanted == "json":
        return web.json_response(certificate_json(record, _pem(chain)))
    if wanted == "pem":
        text = ssl.DER_cert_to_PEM_cert(record.certificate_der) + "".join(
            c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
        return web.Response(text=text, content_type="application/pem-certificate-chain")
    certificate = x509.load_der_x509_certificate(record.certificate_der)
    return web.Response(body=cms.certs_only([certificate, *chain]),
                        content_type="application/pkcs7-mime",
                        headers={"Content-Disposition": f'attachment; filename="{name}.p7c"'})


async def renew_certificate(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request) if request.can_read_body else {}
    csr = _field(body, "csr", str)
    issued = await request.app[ADMIN].renew_certificate(
        principal, request.match_info["serial"], (csr or "").encode(),
        _field(body, "validity_days", int))
    response = web.json_response(certificate_json(issued.record, issued.chain_pem),
                                 status=201)
    response.headers["Location"] = f"/api/v1/certificates/{issued.serial}"
    return response


# --- tokens --------------------------------------------------------------------------------

async def list_tokens(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[ADMIN].list_tokens(
        principal, _param(request, "organization"), _param(request, "cursor"),
        _limit(request))
    return _page([token_document(t) for t in page.items], page.next)


async def create_token(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    created = await request.app[ADMIN].create_token(
        principal, _field(body, "organization", str, required=True),
        _field(body, "role", str, required=True), _field(body, "name", str) or "",
        _field(body, "expires_in_days", int))
    document = {**token_document(created.record), "token": created.token}
    response = web.json_response(document, status=201)
    response.headers["Location"] = f"/api/v1/tokens/{created.record.token_id}"
    return response


async def revoke_token(request: web.Request) -> web.Response:
    principal = await _principal(request)
    token = await request.app[ADMIN].revoke_token(principal, request.match_info["token_id"])
    return web.json_response(token_document(token))


# --- service accounts (mTLS client certificates) -------------------------------------------

async def list_service_accounts(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[ADMIN].list_service_accounts(
        principal, _param(request, "organization"), _param(request, "cursor"),
        _limit(request))
    return _page([service_account_document(a) for a in page.items], page.next)


async def create_service_account(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    certificate = _field(body, "certificate", str, required=True)
    account = await request.app[ADMIN].create_service_account(
        principal, _field(body, "organization", str, required=True),
        _field(body, "name", str, required=True), certificate.encode(),
        _field(body, "role", str))
    response = web.json_response(service_account_document(account), status=201)
    response.headers["Location"] = f"/api/v1/service-accounts/{account.account_id}"
    return response


async def revoke_service_account(request: web.Request) -> web.Response:
    principal = await _principal(request)
    account = await request.app[ADMIN].revoke_service_account(
        principal, request.match_info["account_id"])
    return web.json_response(service_account_document(account))


# --- CAs and templates ---------------------------------------------------------------------

async def list_cas(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[ADMIN].list_cas(principal, _param(request, "cursor"),
                                             _limit(request))
    return _page([ca_document(c) for c in page.items], page.next)


async def create_ca(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    key_text = _field(body, "key", str)
    try:
        key = None if key_text is None else KeySpec.parse(key_text)
    except ValueError as exc:
        raise BadRequest(str(exc)[:200]) from None
    record = await request.app[ADMIN].create_ca(principal, CaCreation(
        ca_type=_field(body, "type", str) or "issuing",
        organization=_field(body, "organization", str), name=_field(body, "name", str),
        parent=_field(body, "parent", str), key=key,
        validity_days=_field(body, "validity_days", int)))
    response = web.json_response(ca_document(record), status=201)
    response.headers["Location"] = f"/api/v1/cas/{record.name}/chain"
    return response


async def ca_chain(request: web.Request) -> web.Response:
    principal = await _principal(request)
    chain = await request.app[ADMIN].ca_chain(principal, request.match_info["name"])
    return web.Response(text=_pem(chain), content_type="application/pem-certificate-chain")


async def activate_ca(request: web.Request) -> web.Response:
    principal = await _principal(request)
    activated = await request.app[ADMIN].activate_ca(principal, request.match_info["name"])
    return web.json_response(ca_document(activated.record))


async def list_templates(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[ADMIN].list_templates(
        principal, _param(request, "organization"), _param(request, "cursor"),
        _limit(request))
    return _page([template_document(t) for t in page.items], page.next)


async def get_template(request: web.Request) -> web.Response:
    principal = await _principal(request)
    template = await request.app[ADMIN].get_template(
        principal, request.match_info["name"], _param(request, "organization"))
    return web.json_response(template_document(template))


async def create_template(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    name = _field(body, "name", str, required=True)
    organization = _field(body, "organization", str)
    spec = TemplateSpec.parse(body, ignore=frozenset({"name", "organization"}))
    template = await request.app[ADMIN].create_template(principal, name, spec, organization)
    response = web.json_response(template_document(template), status=201)
    # a super admin reaches an organization's template only by naming the organization
    scope = "" if organization is None else "?" + urlencode({"organization": organization})
    response.headers["Location"] = f"/api/v1/templates/{template.profile.name}{scope}"
    return response


async def update_template(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    template = await request.app[ADMIN].update_template(
        principal, request.match_info["name"], TemplateSpec.parse(body),
        _param(request, "organization"))
    return web.json_response(template_document(template))


async def delete_template(request: web.Request) -> web.Response:
    principal = await _principal(request)
    template = await request.app[ADMIN].delete_template(
        principal, request.match_info["name"], _param(request, "organization"))
    return web.json_response(template_document(template))


# --- ACME EAB keys and accounts ------------------------------------------------------------

async def list_eab_keys(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[ADMIN].list_eab_keys(
        principal, _param(request, "organization"), _param(request, "cursor"),
        _limit(request))
    return _page([eab_key_document(k) for k in page.items], page.next)


async def create_eab_key(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    key = await request.app[ADMIN].create_eab_key(
        principal, _field(body, "organization", str, required=True))
    # RFC 8555 7.3.4: the HMAC key as base64url without padding, as certbot's
    # --eab-hmac-key and lego's --eab.hmac take it; in this answer only.
    secret = base64.urlsafe_b64encode(key.hmac_key).decode().rstrip("=")
    response = web.json_response({**eab_key_document(key), "hmac_key": secret}, status=201)
    response.headers["Location"] = f"/api/v1/acme/eab/{key.kid}"
    return response


async def revoke_eab_key(request: web.Request) -> web.Response:
    principal = await _principal(request)
    key = await request.app[ADMIN].revoke_eab_key(principal, request.match_info["kid"])
    return web.json_response(eab_key_document(key))


async def list_acme_accounts(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[ADMIN].list_acme_accounts(
        principal, _param(request, "organization"), _param(request, "cursor"),
        _limit(request))
    return _page([acme_account_document(a) for a in page.items], page.next)


async def deactivate_acme_account(request: web.Request) -> web.Response:
    principal = await _principal(request)
    account = await request.app[ADMIN].deactivate_acme_account(
        principal, request.match_info["account_id"])
    return web.json_response(acme_account_document(account))


# --- organizations -------------------------------------------------------------------------

async def list_organizations(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[ADMIN].list_organizations(principal, _param(request, "cursor"),
                                                       _limit(request))
    return _page([organization_document(o) for o in page.items], page.next)


def _change(body: dict[str, Any]) -> OrganizationChange:
    policy = body.get("policy")
    if policy is not None and not isinstance(policy, dict):
        raise BadRequest("field 'policy' must be an object")
    return OrganizationChange(name=_field(body, "name", str), status=_field(body, "status", str),
                              isolation=_field(body, "isolation", str), policy=policy,
                              partners=_field(body, "partners", list))


async def create_organization(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    org = await request.app[ADMIN].create_organization(
        principal, _field(body, "slug", str, required=True), _field(body, "name", str),
        _change({k: v for k, v in body.items()
                 if k in ("isolation", "policy", "partners")}))
    response = web.json_response(organization_document(org), status=201)
    response.headers["Location"] = f"/api/v1/organizations/{org.slug}"
    return response


async def get_organization(request: web.Request) -> web.Response:
    principal = await _principal(request)
    org = await request.app[ADMIN].get_organization(principal, request.match_info["org"])
    return web.json_response(organization_document(org))


async def update_organization(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    org = await request.app[ADMIN].update_organization(principal, request.match_info["org"],
                                                       _change(body))
    return web.json_response(organization_document(org))


# --- audit ---------------------------------------------------------------------------------

def _audit_filters(request: web.Request) -> AuditFilters:
    return AuditFilters(since=_time_param(request, "since"),
                        until=_time_param(request, "until"), actor=_param(request, "actor"),
                        action=_param(request, "action"),
                        resource=_param(request, "resource"))


async def query_audit(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[ADMIN].query_audit(principal, _audit_filters(request),
                                                _param(request, "cursor"), _limit(request))
    return _page([audit_document(e) for e in page.items], page.next)


async def verify_audit(request: web.Request) -> web.Response:
    principal = await _principal(request)
    result = await request.app[ADMIN].verify_audit(principal)
    return web.json_response({
        "intact": result.intact, "entries": result.entries, "head_seq": result.head_seq,
        "problems": [{"seq": p.seq, "problem": p.problem} for p in result.problems]})


async def export_audit(request: web.Request) -> web.StreamResponse:
    """JSON Lines, streamed page by page: memory stays flat however long the log is."""
    principal = await _principal(request)
    entries = await request.app[ADMIN].export_audit(principal, _audit_filters(request))
    # The first entry is read before the 200 goes out, so that a failing store is still a
    # problem+json 503. A failure after it cuts the connection without the final chunk: an
    # error response written into the open body would read as a complete export.
    first = await anext(entries, None)
    response = web.StreamResponse(headers={"Content-Type": "application/jsonl"})
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(_jsonl(first))
            async for entry in entries:
                await response.write(_jsonl(entry))
    except Exception:
        log.exception("audit export cut off")
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


def _jsonl(entry: AuditEntry) -> bytes:
    return json.dumps(audit_document(entry), ensure_ascii=False).encode() + b"\n"


# --- code signatures (issue 14) ------------------------------------------------------------

def _signature_json(signed: SignedArtifact) -> dict[str, Any]:
    record, certificate = signed.record, signed.certificate
    return {
        "id": record.signature_id,
        "organization_id": record.org_id,
        "artifact_type": record.artifact_type,
        "name": record.artifact_name,
        "hash": record.artifact_hash,
        "hash_algorithm": record.hash_algorithm,
        "metadata": record.metadata,
        "signature": base64.b64encode(record.signature_der).decode(),
        "signature_algorithm": record.signature_algorithm,
        "signed_at": _iso(record.signed_at),
        "signer": {"serial": serial_display(serial_hex(certificate.serial_number)),
                   "subject": certificate.subject.rfc4514_string(),
                   "not_after": _iso(certificate.not_valid_after_utc)},
        "timestamped": record.timestamp_token is not None,
        "verified_count": record.verified_count,
        "last_verified_at": _iso(record.last_verified_at),
    }


def _verification_json(checked: Verification) -> dict[str, Any]:
    verdict, record = checked.verdict, checked.record
    signer = verdict.signer
    stamp = verdict.time_stamp
    return {
        "valid": verdict.valid,
        "status": verdict.status,
        # Proven by its time-stamp: valid then, whether or not it still is now.
        "valid_at_signing_time": verdict.valid and stamp is not None,
        "reasons": list(verdict.reasons),
        "signer": None if signer is None else {
            "serial": serial_display(serial_hex(signer.serial_number)),
            "subject": signer.subject.rfc4514_string(),
            "not_after": _iso(signer.not_valid_after_utc)},
        "signing_time": _iso(verdict.signing_time),
        "time_stamp": None if stamp is None else {
            "time": _iso(stamp.time), "serial": stamp.serial, "tsa": stamp.tsa},
        "signature_id": None if record is None else record.signature_id,
        "verified_count": None if record is None else record.verified_count,
        "last_verified_at": None if record is None else _iso(record.last_verified_at),
    }


async def create_signature(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRequest("field 'metadata' must be an object")
    signed = await request.app[SIGNATURES].sign(SignRequest(
        hash_hex=_field(body, "hash", str, required=True).lower(),
        hash_algorithm=_field(body, "hash_algorithm", str) or "sha256",
        artifact_type=_field(body, "artifact_type", str, required=True),
        name=_field(body, "name", str, required=True), metadata=metadata or {},
        organization=_field(body, "organization", str)), principal)
    response = web.json_response(_signature_json(signed), status=201 if signed.created else 200)
    return response


async def verify_signature(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    text = _field(body, "signature", str, required=True)
    try:
        signature = base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error
        raise BadRequest("field 'signature' must be base64 (the DER CMS signature)") from None
    checked = await request.app[SIGNATURES].verify(
        signature, _field(body, "hash", str, required=True).lower(),
        _field(body, "hash_algorithm", str) or "sha256", principal)
    return web.json_response(_verification_json(checked))


# --- compliance reports (issue 14) ---------------------------------------------------------

async def generate_report(request: web.Request) -> web.Response:
    """The report's bytes in the asked format; the stored report's id and SHA-256 in the
    headers (the same hash as in its report.generated audit event)."""
    principal = await _principal(request)
    generated = await ReportService(request.app[AUTHORITY]).generate(principal, ReportRequest(
        name=request.match_info["name"], format=_param(request, "format") or "json",
        organization=_param(request, "organization"), start=_param(request, "from"),
        end=_param(request, "to")))
    record = generated.record
    return web.Response(body=record.content, headers={
        "Content-Type": generated.content_type, "X-Report-Id": record.report_id,
        "X-Report-SHA256": record.content_sha256,
        "Content-Disposition": f'inline; filename="{record.report_type}-'
                               f'{record.report_id}.{record.report_format}"'})


async def stored_report(request: web.Request) -> web.Response:
    """A stored report's bytes again (``GET /api/v1/reports/{name}/{report_id}``)."""
    principal = await _principal(request)
    found = await ReportService(request.app[AUTHORITY]).stored(
        principal, request.match_info["name"], request.match_info["report_id"])
    record = found.record
    return web.Response(body=record.content, headers={
        "Content-Type": found.content_type, "X-Report-Id": record.report_id,
        "X-Report-SHA256": record.content_sha256,
        "Content-Disposition": f'inline; filename="{record.report_type}-'
                               f'{record.report_id}.{record.report_format}"'})


async def list_reports(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await ReportService(request.app[AUTHORITY]).list_reports(
        principal, _param(request, "organization"), _param(request, "cursor"), _limit(request))
    return _page([report_summary(r) for r in page.items], page.next)


# --- live counters (issue 17: the web page's rates) -----------------------------------------

async def stats(request: web.Request) -> web.Response:
    """This process's counters since it started (``ca_core.stats``): a client computes
    rates from two samples of the same ``process.id``."""
    principal = await _principal(request)
    body = await GatewayStats(request.app[AUTHORITY]).sample(
        principal, _param(request, "organization"))
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    from protocols.rest import enrollment_api, openapi, services_api

    app.router.add_get("/api/v1/openapi.json", openapi.serve)
    app.router.add_get("/api/v1/certificates", list_certificates)
    app.router.add_post("/api/v1/certificates", issue_certificate)
    app.router.add_get("/api/v1/certificates/{serial}", get_certificate)
    app.router.add_post("/api/v1/certificates/{serial}/revoke", revoke_certificate)
    app.router.add_post("/api/v1/certificates/{serial}/renew", renew_certificate)
    app.router.add_get("/api/v1/tokens", list_tokens)
    app.router.add_post("/api/v1/tokens", create_token)
    app.router.add_delete("/api/v1/tokens/{token_id}", revoke_token)
    app.router.add_get("/api/v1/service-accounts", list_service_accounts)
    app.router.add_post("/api/v1/service-accounts", create_service_account)
    app.router.add_delete("/api/v1/service-accounts/{account_id}", revoke_service_account)
    app.router.add_get("/api/v1/cas", list_cas)
    app.router.add_post("/api/v1/cas", create_ca)
    app.router.add_get("/api/v1/cas/{name}/chain", ca_chain)
    app.router.add_post("/api/v1/cas/{name}/activate", activate_ca)
    app.router.add_get("/api/v1/templates", list_templates)
    app.router.add_post("/api/v1/templates", create_template)
    app.router.add_get("/api/v1/templates/{name}", get_template)
    app.router.add_put("/api/v1/templates/{name}", update_template)
    app.router.add_delete("/api/v1/templates/{name}", delete_template)
    app.router.add_get("/api/v1/acme/eab", list_eab_keys)
    app.router.add_post("/api/v1/acme/eab", create_eab_key)
    app.router.add_delete("/api/v1/acme/eab/{kid}", revoke_eab_key)
    app.router.add_get("/api/v1/acme/accounts", list_acme_accounts)
    app.router.add_post("/api/v1/acme/accounts/{account_id}/deactivate",
                        deactivate_acme_account)
    app.router.add_get("/api/v1/organizations", list_organizations)
    app.router.add_post("/api/v1/organizations", create_organization)
    app.router.add_get("/api/v1/organizations/{org}", get_organization)
    app.router.add_patch("/api/v1/organizations/{org}", update_organization)
    app.router.add_get("/api/v1/audit", query_audit)
    app.router.add_get("/api/v1/audit/verify", verify_audit)
    app.router.add_get("/api/v1/audit/export", export_audit)
    app.router.add_post("/api/v1/signatures", create_signature)
    app.router.add_post("/api/v1/signatures/verify", verify_signature)
    services_api.add_routes(app)
    enrollment_api.add_routes(app)
    app.router.add_get("/api/v1/reports", list_reports)
    app.router.add_get("/api/v1/reports/{name}", generate_report)
    app.router.add_get("/api/v1/reports/{name}/{report_id}", stored_report)
    app.router.add_get("/api/v1/stats", stats)
