"""The OpenAPI 3.1 description of the REST admin API, served at ``/api/v1/openapi.json``.

Written here by hand beside the handlers (``protocols.rest.api``), small helpers keeping it
short; ``tests/test_rest_openapi.py`` checks it with openapi-spec-validator, checks that
every route of the app is described (and nothing else), and runs schemathesis against a
gateway started the normal way, which must find no 5xx and no response that breaks it.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from aiohttp import web

from ca_core.admin import CERTIFICATE_STATUSES, MAX_LIMIT, MAX_TOKEN_DAYS
from ca_core.authority import DEFAULT_PROFILE, DEFAULT_REVOCATION_REASON
from ca_core.code_signing import ARTIFACT_TYPES, DIGEST_LENGTHS, MAX_NAME
from ca_core.enrollment_admin import MAX_LIFETIME_MINUTES
from ca_core.org_policy import ISOLATION_LEVELS, MAX_PARTNERS, ORG_STATUSES
from ca_core.principal import ROLES
from ca_core.reports import FORMATS, REPORT_NAMES
from ca_core.services import (
    HEALTH_STATUSES,
    MAX_ENDPOINTS,
    RENEWAL_STATES,
    SERVICE_PROFILE,
    SERVICE_TYPES,
)
from ca_core.templates import TEMPLATE_STATUSES

JSON = "application/json"
PROBLEM = "application/problem+json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _problems(*statuses: int) -> dict[str, Any]:
    meaning = {400: "bad input", 401: "no valid bearer token (or client certificate)",
               403: "not permitted",
               404: "not found (or not the caller's to see)", 405: "method not allowed",
               409: "conflict", 413: "body too large", 415: "not application/json",
               503: "the store or key backend is unavailable"}
    return {str(s): {"description": meaning[s], "content": {PROBLEM: {"schema":
                                                                      _ref("Problem")}}}
            for s in (*statuses, 401, 503)}


def _query(name: str, description: str, schema: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": schema}}}


def _page_of(item: str) -> dict[str, Any]:
    return {"type": "object", "required": ["items", "next"], "properties": {
        "items": {"type": "array", "items": _ref(item)},
        "next": {"type": ["string", "null"],
                 "description": "cursor of the next page; null on the last"}}}


_PAGING = [
    _query("cursor", "the `next` of the previous page"),
    _query("limit", f"page size, 1 to {MAX_LIMIT} (default 100)",
           {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
]
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_ISOLATION = {"type": "string", "enum": list(ISOLATION_LEVELS), "description":
              "who may read its certificates: strict (its own only), collaborative (also "
              "its partners), federated (also every federated organization)"}
_PARTNERS = {"type": "array", "maxItems": MAX_PARTNERS, "items": {"type": "string"},
             "description": "slugs of active organizations that may read its certificates "
             "when collaborative (one-way; kept but inert at other levels)"}

_STRINGS = {"type": "array", "items": {"type": "string"}}
_TEMPLATE_FIELDS: dict[str, Any] = {
    "base": {"type": "string", "description": "a built-in profile (not ocsp_signing, "
             "scep_ra or timestamp_authority)"},
    "description": {"type": "string"},
    "key_usage": _STRINGS, "extended_key_usage": _STRINGS, "allowed_keys": _STRINGS,
    "san_types": _STRINGS, "allowed_roles": _STRINGS,
    "max_validity_days": {"type": "integer", "description": "at most the base's and the "
                          "organization policy's"},
    "default_validity_days": {"type": "integer"},
    "require_san": {"type": "boolean"},
    "status": {"type": "string", "enum": list(TEMPLATE_STATUSES)},
}

_SCHEMAS: dict[str, Any] = {
    "Problem": {"type": "object", "required": ["type", "title", "status", "detail"],
                "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                               "status": {"type": "integer"}, "detail": {"type": "string"},
                               "request_id": {"type": "string"}}},
    "Certificate": {"type": "object", "required": [
        "serial", "subject", "common_name", "profile", "san", "not_before", "not_after",
        "status", "revoked_at", "revocation_reason", "certificate_pem"], "properties": {
        "serial": {"type": "string", "description": "hex, as openssl prints it"},
        "subject": {"type": "string"}, "common_name": {"type": "string"},
        "profile": {"type": "string"},
        "san": {"type": "object", "additionalProperties": {
            "type": "array", "items": {"type": "string"}}},
        "not_before": _TIME, "not_after": _TIME,
        "status": {"type": "string", "enum": ["active", "revoked"]},
        "revoked_at": _NULLABLE_TIME, "revocation_reason": {"type": ["string", "null"]},
        "certificate_pem": {"type": "string"}, "chain_pem": {"type": "string"},
        "organization_id": {"type": "string"}}},
    "IssueRequest": {"type": "object", "required": ["csr"], "properties": {
        "csr": {"type": "string", "description": "PEM PKCS#10"},
        "profile": {"type": "string", "default": DEFAULT_PROFILE,
                    "description": "a built-in profile or a template name"},
        "template": {"type": "string", "description": "the same as profile (both given "
                     "and different: 400)"},
        "organization": {"type": "string", "description": "slug (default: the token's)"},
        "validity_days": {"type": "integer"}}},
    "RevokeRequest": {"type": "object", "properties": {
        "reason": {"type": "string", "default": DEFAULT_REVOCATION_REASON},
        "invalidity_date": _TIME}},
    "RenewRequest": {"type": "object", "properties": {
        "csr": {"type": "string", "description": "a new key's CSR; without: the same key"},
        "validity_days": {"type": "integer"}}},
    "Token": {"type": "object", "required": [
        "id", "organization_id", "role", "name", "created_at", "expires_at", "revoked"],
        "properties": {
        "id": {"type": "string"}, "organization_id": {"type": "string"},
        "role": {"type": "string"}, "name": {"type": "string"}, "created_at": _TIME,
        "expires_at": _NULLABLE_TIME, "revoked": {"type": "boolean"},
        "token": {"type": "string", "description": "the bearer secret, in the answer to "
                  "its creation only"}}},
    "TokenRequest": {"type": "object", "required": ["organization", "role"], "properties": {
        "organization": {"type": "string"}, "role": {"type": "string", "enum": list(ROLES)},
        "name": {"type": "string"},
        "expires_in_days": {"type": "integer", "minimum": 1, "maximum": MAX_TOKEN_DAYS}}},
    "ServiceAccount": {"type": "object", "required": [
        "id", "organization_id", "role", "name", "fingerprint", "subject", "issuer",
        "serial", "not_after", "created_at", "revoked"], "properties": {
        "id": {"type": "string"}, "organization_id": {"type": "string"},
        "role": {"type": "string"}, "name": {"type": "string"},
        "fingerprint": {"type": "string", "description": "SHA-256 of the certificate's "
                        "DER, lowercase hex"},
        "subject": {"type": "string"}, "issuer": {"type": "string"},
        "serial": {"type": "string", "description": "hex, as openssl prints it"},
        "not_after": _TIME, "created_at": _TIME, "revoked": {"type": "boolean"}}},
    "ServiceAccountRequest": {"type": "object", "required": [
        "organization", "name", "certificate"], "properties": {
        "organization": {"type": "string", "description": "slug"},
        "name": {"type": "string"},
        "certificate": {"type": "string", "description": "the client certificate, PEM "
                        "(any CA's: it is pinned by its SHA-256 fingerprint)"},
        "role": {"type": "string", "enum": [r for r in ROLES if r != "pki_super_admin"],
                 "default": "service_account"}}},
    "CA": {"type": "object", "required": [
        "name", "id", "type", "organization_id", "parent_id", "status", "subject", "serial",
        "key", "key_backend", "not_before", "not_after", "created_at"], "properties": {
        "name": {"type": "string"}, "id": {"type": "string"},
        "parent_id": {"type": ["string", "null"],
                      "description": "the id of the CA that signed it; null: a root"},
        "type": {"type": "string", "enum": ["root", "intermediate", "issuing", "tsa"]},
        "organization_id": {"type": ["string", "null"],
                            "description": "null: shared by every organization"},
        "status": {"type": "string", "description": "active, next (a rollover's, until "
                   "activated) or retired"},
        "subject": {"type": "string"}, "serial": {"type": "string"},
        "key": {"type": "string"}, "key_backend": {"type": "string"},
        "not_before": _TIME, "not_after": _TIME, "created_at": _NULLABLE_TIME}},
    "CARequest": {"type": "object", "properties": {
        "type": {"type": "string", "enum": ["issuing", "intermediate"],
                 "description": "default issuing"},
        "organization": {"type": "string", "description": "slug; required for an issuing "
                         "CA; for an intermediate, absent means shared (super admin only)"},
        "name": {"type": "string", "description": "intermediate only (default "
                 "SLUG-intermediate); lowercase letters, digits and '-'"},
        "parent": {"type": "string", "description": "issuing only: the intermediate that "
                   "signs it (shared or the organization's own; default: the current "
                   "issuing CA's)"},
        "validity_days": {"type": "integer", "minimum": 1, "maximum": 36525,
                          "description": "intermediate only; capped by the root's end"},
        "key": {"type": "string", "description": "ec-p256, ec-p384, rsa-2048, rsa-3072, "
                "rsa-4096 (default: the configured key type, or the current CA's)"}}},
    "Template": {"type": "object", "required": [
        "name", "description", "key_usage", "extended_key_usage", "max_validity_days",
        "default_validity_days", "allowed_keys", "san_types", "require_san",
        "allowed_roles", "base", "organization_id", "builtin", "read_only", "status"],
        "properties": {
        "name": {"type": "string"}, "description": {"type": "string"},
        "key_usage": {"type": "array", "items": {"type": "string"}},
        "extended_key_usage": {"type": "array", "items": {"type": "string"}},
        "max_validity_days": {"type": "integer"},
        "default_validity_days": {"type": "integer"},
        "allowed_keys": {"type": "array", "items": {"type": "string"}},
        "san_types": {"type": "array", "items": {"type": "string"}},
        "require_san": {"type": "boolean"}, "eku_critical": {"type": "boolean"},
        "ocsp_no_check": {"type": "boolean"}, "internal_only": {"type": "boolean"},
        "allowed_roles": {"type": "array", "items": {"type": "string"}},
        "base": {"type": "string", "description": "the built-in it narrows; \"\" for a "
                 "built-in"},
        "organization_id": {"type": ["string", "null"],
                            "description": "null: global (or a built-in)"},
        "builtin": {"type": "boolean"},
        "read_only": {"type": "boolean", "description": "built-ins are code"},
        "status": {"type": "string", "enum": list(TEMPLATE_STATUSES)},
        "created_by": {"type": ["string", "null"]}, "created_at": _NULLABLE_TIME,
        "updated_at": _NULLABLE_TIME}},
    "TemplateChange": {"type": "object", "description": "what a template narrows; what "
                       "it leaves out is the base's (on update: kept)",
                       "properties": _TEMPLATE_FIELDS},
    "TemplateRequest": {"type": "object", "required": ["name", "base"], "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]{0,62}$",
                 "description": "not a built-in's name"},
        "organization": {"type": "string", "description": "slug; default: the token's "
                         "(a super admin without it: a global template)"},
        **_TEMPLATE_FIELDS}},
    "EabKey": {"type": "object", "required": [
        "kid", "organization_id", "created_at", "account_id", "used"], "properties": {
        "kid": {"type": "string"}, "organization_id": {"type": "string"},
        "created_at": _TIME, "account_id": {"type": ["string", "null"]},
        "used": {"type": "boolean"},
        "hmac_key": {"type": "string", "description": "base64url HMAC key, in the answer "
                     "to its creation only"}}},
    "EabKeyRequest": {"type": "object", "required": ["organization"], "properties": {
        "organization": {"type": "string", "description": "slug"}}},
    "AcmeAccount": {"type": "object", "required": [
        "id", "organization_id", "status", "contact", "eab_kid", "key_thumbprint",
        "created_at"], "properties": {
        "id": {"type": "string"}, "organization_id": {"type": "string"},
        "status": {"type": "string", "enum": ["valid", "deactivated", "revoked"]},
        "contact": {"type": "array", "items": {"type": "string"}},
        "eab_kid": {"type": ["string", "null"]}, "key_thumbprint": {"type": "string"},
        "created_at": _NULLABLE_TIME}},
    "Policy": {"type": "object", "properties": {
        "allowed_names": {"type": "array", "items": {"type": "string"}},
        "allowed_ip_ranges": {"type": "array", "items": {"type": "string"}},
        "profiles": {"type": "array", "items": {"type": "string"}},
        "max_validity_days": {"type": ["integer", "null"]},
        "idn": {"type": "string", "enum": ["single-script", "refuse", "allow"],
                "description": "internationalized (xn--) names: one script per label (the "
                "default; mixed-script look-alikes refused), none, or not examined"}}},
    "Organization": {"type": "object", "required": [
        "id", "slug", "name", "status", "isolation", "partners", "policy", "created_at"],
        "properties": {
        "id": {"type": "string"}, "slug": {"type": "string"}, "name": {"type": "string"},
        "status": {"type": "string", "enum": list(ORG_STATUSES)},
        "isolation": _ISOLATION, "partners": _PARTNERS,
        "policy": _ref("Policy"), "created_at": _NULLABLE_TIME}},
    "OrganizationRequest": {"type": "object", "required": ["slug"], "properties": {
        "slug": {"type": "string", "description": "lowercase letters, digits and '-'"},
        "name": {"type": "string"}, "isolation": _ISOLATION, "partners": _PARTNERS,
        "policy": _ref("Policy")}},
    "OrganizationChange": {"type": "object", "properties": {
        "name": {"type": "string"}, "status": {"type": "string", "enum": list(ORG_STATUSES)},
        "isolation": _ISOLATION, "partners": _PARTNERS, "policy": _ref("Policy")}},
    "AuditEntry": {"type": "object", "required": [
        "seq", "id", "timestamp", "event_type", "category", "action", "actor_type",
        "status", "data", "previous_hash", "hash"], "properties": {
        "seq": {"type": "integer"}, "id": {"type": "string"}, "timestamp": _TIME,
        "event_type": {"type": "string"}, "category": {"type": "string"},
        "action": {"type": "string"}, "actor_type": {"type": "string"},
        "actor_id": {"type": ["string", "null"]},
        "organization_id": {"type": ["string", "null"]},
        "resource_type": {"type": ["string", "null"]},
        "resource_id": {"type": ["string", "null"]}, "status": {"type": "string"},
        "data": {"type": "object"}, "previous_hash": {"type": "string"},
        "hash": {"type": "string"}}},
    "AuditVerification": {"type": "object", "required": [
        "intact", "entries", "head_seq", "problems"], "properties": {
        "intact": {"type": "boolean"}, "entries": {"type": "integer"},
        "head_seq": {"type": "integer"},
        "problems": {"type": "array", "items": {"type": "object", "properties": {
            "seq": {"type": "integer"}, "problem": {"type": "string"}}}}}},
    "SignatureRequest": {"type": "object", "required": ["hash", "artifact_type", "name"],
                         "properties": {
        "hash": {"type": "string", "description": "the artifact's hash, hex (64 digits for "
                 "sha256, 128 for sha512)"},
        "hash_algorithm": {"type": "string", "enum": list(DIGEST_LENGTHS),
                           "default": "sha256"},
        "artifact_type": {"type": "string", "enum": list(ARTIFACT_TYPES)},
        "name": {"type": "string", "maxLength": MAX_NAME,
                 "description": "the artifact's name or path"},
        "metadata": {"type": "object", "description": "stored with the signature"},
        "organization": {"type": "string", "description": "slug (default: the token's)"}}},
    "Signer": {"type": "object", "required": ["serial", "subject", "not_after"],
               "properties": {"serial": {"type": "string"}, "subject": {"type": "string"},
                              "not_after": _TIME}},
    "Signature": {"type": "object", "required": [
        "id", "organization_id", "artifact_type", "name", "hash", "hash_algorithm",
        "metadata", "signature", "signature_algorithm", "signed_at", "signer",
        "timestamped", "verified_count", "last_verified_at"], "properties": {
        "id": {"type": "string"}, "organization_id": {"type": "string"},
        "artifact_type": {"type": "string", "enum": list(ARTIFACT_TYPES)},
        "name": {"type": "string"}, "hash": {"type": "string"},
        "hash_algorithm": {"type": "string", "enum": list(DIGEST_LENGTHS)},
        "metadata": {"type": "object"},
        "signature": {"type": "string", "description": "base64 of the DER CMS SignedData "
                      "(detached; signingTime; RFC 3161 signatureTimeStampToken): the "
                      "content of FILE.p7s"},
        "signature_algorithm": {"type": "string"}, "signed_at": _TIME,
        "signer": _ref("Signer"), "timestamped": {"type": "boolean"},
        "verified_count": {"type": "integer"}, "last_verified_at": _NULLABLE_TIME}},
    "VerifyRequest": {"type": "object", "required": ["signature", "hash"], "properties": {
        "signature": {"type": "string", "description": "base64 of the DER signature"},
        "hash": {"type": "string", "description": "the artifact's hash, hex"},
        "hash_algorithm": {"type": "string", "enum": list(DIGEST_LENGTHS),
                           "default": "sha256"}}},
    "Verification": {"type": "object", "required": [
        "valid", "status", "valid_at_signing_time", "reasons", "signer", "signing_time",
        "time_stamp", "signature_id", "verified_count", "last_verified_at"], "properties": {
        "valid": {"type": "boolean", "description": "valid now, or at signing time"},
        "status": {"type": "string",
                   "enum": ["valid", "valid_at_signing_time", "invalid"],
                   "description": "valid_at_signing_time: the certificate expired or was "
                   "revoked after the signature's time-stamp"},
        "valid_at_signing_time": {"type": "boolean",
                                  "description": "proven by the signature's time-stamp"},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "signer": {"oneOf": [_ref("Signer"), {"type": "null"}]},
        "signing_time": _NULLABLE_TIME,
        "time_stamp": {"oneOf": [{"type": "null"}, {"type": "object", "required": [
            "time", "serial", "tsa"], "properties": {
            "time": _TIME, "serial": {"type": "string"}, "tsa": {"type": "string"}}}]},
        "signature_id": {"type": ["string", "null"]},
        "verified_count": {"type": ["integer", "null"]},
        "last_verified_at": _NULLABLE_TIME}},
    "Stats": {"type": "object", "description": "this process's counters since it "
              "started (ca_core.stats): rates are the difference of two samples of the "
              "same process.id over the time between them; with several workers each "
              "counts its own", "required": [
        "sampled_at", "process", "organization", "issuance", "revocations", "ocsp", "tsa"],
              "properties": {
        "sampled_at": _TIME,
        "process": {"type": "object", "required": ["id", "started_at"], "properties": {
            "id": {"type": "string"}, "started_at": _TIME}},
        "organization": {"type": ["string", "null"],
                         "description": "the organization the issuance figures cover "
                         "(null: every one)"},
        "issuance": {"type": "object", "required": ["issued", "rejected", "error"],
                     "properties": {k: {"type": "integer"}
                                    for k in ("issued", "rejected", "error")}},
        "revocations": {"type": "integer"},
        "ocsp": {"description": "null unless the caller sees every organization (the OCSP "
                 "counters are not kept per organization)", "oneOf": [
            {"type": "null"}, {"type": "object", "required": ["responses", "cache"],
                               "properties": {
                "responses": {"type": "object", "description": "by OCSPResponseStatus",
                              "additionalProperties": {"type": "integer"}},
                "cache": {"type": "object", "required": ["hit", "miss", "live"],
                          "description": "hit: from the response cache (successful "
                          "responses less those signed live); miss: signed live for a "
                          "cacheable request; live: not cacheable (nonce, several CertIDs)",
                          "properties": {k: {"type": "integer"}
                                         for k in ("hit", "miss", "live")}}}}]},
        "tsa": {"description": "null unless the caller sees every organization", "oneOf": [
            {"type": "null"}, {"type": "object", "required": ["granted", "rejection"],
                               "properties": {"granted": {"type": "integer"},
                                              "rejection": {"type": "integer"}}}]}}},
    "ReportSummary": {"type": "object", "required": [
        "id", "report", "organization_id", "format", "period", "sha256", "size", "status",
        "generated_at", "generated_by"], "properties": {
        "id": {"type": "string"}, "report": {"type": "string"},
        "organization_id": {"type": ["string", "null"],
                            "description": "null: a report over every organization"},
        "format": {"type": "string", "enum": list(FORMATS)},
        "period": {"type": "object", "required": ["from", "to"], "properties": {
            "from": _TIME, "to": _TIME}},
        "sha256": {"type": "string", "description": "of the report's bytes, as in its "
                   "report.generated audit event"},
        "size": {"type": "integer"}, "status": {"type": "string"},
        "generated_at": _TIME, "generated_by": {"type": ["string", "null"]}}},
    "Report": {"type": "object", "required": [
        "report", "report_id", "organization", "organization_id", "period", "generated_at",
        "generated_by"], "description": "certificate_lifecycle: figures, charts, "
        "definitions; crypto_inventory: keys, last_signature_basis", "properties": {
        "report": {"type": "string", "enum": list(REPORT_NAMES)},
        "report_id": {"type": "string"}, "organization": {"type": ["string", "null"]},
        "organization_id": {"type": ["string", "null"]},
        "period": {"type": "object"}, "generated_at": _TIME,
        "generated_by": {"type": ["string", "null"]},
        "figures": {"type": "object"}, "charts": {"type": "object"},
        "definitions": {"type": "object"},
        "keys": {"type": "array", "items": {"type": "object"}},
        "last_signature_basis": {"type": "string"}}},
}

# --- the service registry (issue 14; handlers in protocols.rest.services_api) -------------
_SERVICE_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1, "maxLength": 200},
    "type": {"type": "string", "enum": list(SERVICE_TYPES), "default": "api"},
    "endpoints": {"type": "array", "maxItems": MAX_ENDPOINTS,
                  "items": {"type": "string", "description": "http(s) URL"}},
    "health_check_url": {"type": "string", "description": "http(s) URL"},
    "version": {"type": "string", "maxLength": 50},
    "environment": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,50}$",
                    "default": "production"},
    "metadata": {"type": "object"},
}
_SERVICE_SCHEMAS: dict[str, Any] = {
    "Service": {"type": "object", "required": [
        "id", "organization_id", "name", "slug", "type", "endpoints", "health_check_url",
        "version", "environment", "metadata", "status", "created_by", "created_at",
        "updated_at", "certificate", "renewal_state", "last_seen", "health_status",
        "reported_version"], "properties": {
        "id": {"type": "string"}, "organization_id": {"type": "string"},
        "name": {"type": "string"}, "slug": {"type": "string"},
        "type": {"type": "string", "enum": list(SERVICE_TYPES)},
        "endpoints": {"type": "array"}, "health_check_url": {"type": ["string", "null"]},
        "version": {"type": ["string", "null"]}, "environment": {"type": "string"},
        "metadata": {"type": "object"}, "status": {"type": "string"},
        "created_by": {"type": "string", "description": "the principal that registered it"},
        "created_at": _TIME, "updated_at": _TIME,
        "certificate": {"oneOf": [{"type": "null"}, {"type": "object", "required": [
            "serial", "not_after", "status"], "properties": {
            "serial": {"type": "string"}, "not_after": _TIME,
            "status": {"type": ["string", "null"]}}}],
            "description": "the active certificate (at most one)"},
        "renewal_state": {"type": "string", "enum": list(RENEWAL_STATES), "description":
                          "none: no (unrevoked) certificate; due: ends within 30 days"},
        "last_seen": _NULLABLE_TIME,
        "health_status": {"type": ["string", "null"], "enum": [*HEALTH_STATUSES, None]},
        "reported_version": {"type": ["string", "null"]}}},
    "ServiceRequest": {"type": "object", "required": ["name", "slug"], "properties": {
        **_SERVICE_FIELDS,
        "slug": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$",
                 "description": "unique in the organization; not 'policy'"},
        "organization": {"type": "string", "description": "slug (default: the caller's)"}}},
    "ServiceChange": {"type": "object", "properties": {
        **_SERVICE_FIELDS, "status": {"type": "string", "enum": ["active", "inactive"]}}},
    "Heartbeat": {"type": "object", "properties": {
        "status": {"type": "string", "enum": list(HEALTH_STATUSES), "default": "healthy"},
        "version": {"type": "string", "maxLength": 50}}},
    "ServiceCertificateRequest": {"type": "object", "required": ["csr"], "properties": {
        "csr": {"type": "string", "description": "PEM PKCS#10"},
        "validity_days": {"type": "integer", "minimum": 1}}},
}
_SLUG = _path("slug", "the service's slug")
_SERVICE_ORG = _query("organization", "organization slug (default: the caller's)")


def _service_paths() -> dict[str, Any]:
    tag = "services"
    scoped = [_SLUG, _SERVICE_ORG]
    return {
        "/api/v1/services": {
            "get": _op("list services with their certificate, expiry and renewal state "
                       "(a service account: its own service)", {
                           "200": _json(_page_of("Service"), "one page"),
                           **_problems(400, 403, 404)},
                       parameters=[_SERVICE_ORG, *_PAGING], tag=tag),
            "post": _op("register a service (service:*; a service account registers its "
                        "own, once)", {
                            "201": _json(_ref("Service"), "registered"),
                            **_problems(400, 403, 404, 409, 413, 415)},
                        body=_body(_ref("ServiceRequest")), tag=tag),
        },
        "/api/v1/services/policy": {
            "get": _op("the seed's service-to-service mTLS policy matrix, as data", {
                "200": _json({"type": "object", "required": [
                    "service_communication_policies"]}, "the matrix"),
                **_problems(403)}, tag=tag),
        },
        "/api/v1/services/{slug}": {
            "get": _op("one service", {"200": _json(_ref("Service"), "the service"),
                                       **_problems(400, 403, 404)},
                       parameters=scoped, tag=tag),
            "patch": _op("change a service's description (a service account: its own)", {
                "200": _json(_ref("Service"), "updated"),
                **_problems(400, 403, 404, 413, 415)},
                parameters=scoped, body=_body(_ref("ServiceChange")), tag=tag),
        },
        "/api/v1/services/{slug}/heartbeat": {
            "post": _op("report health (last_seen = now)", {
                "200": _json(_ref("Service"), "recorded"),
                **_problems(400, 403, 404, 413, 415)},
                parameters=scoped, body=_body(_ref("Heartbeat"), False), tag=tag),
        },
        "/api/v1/services/{slug}/certificate": {
            "get": _op("the service's active certificate", {
                "200": _json(_ref("Certificate"), "the certificate"),
                **_problems(400, 403, 404)}, parameters=scoped, tag=tag),
            "post": _op(f"issue a {SERVICE_PROFILE} certificate for the service: it becomes "
                        "the active one (the previous stays valid) and authenticates as "
                        "the service on the mTLS port", {
                            "201": _json(_ref("Certificate"), "issued"),
                            **_problems(400, 403, 404, 409, 413, 415)},
                        parameters=scoped, body=_body(_ref("ServiceCertificateRequest")),
                        tag=tag),
        },
        "/api/v1/services/{slug}/certificate/renew": {
            "post": _op("renew the active certificate (same key and names)", {
                "201": _json(_ref("Certificate"), "issued"),
                **_problems(400, 403, 404, 409, 413, 415)},
                parameters=scoped, body=_body(_ref("RenewRequest"), False), tag=tag),
        },
    }


# --- EST and SCEP enrollment credentials and queues (issue 17; handlers in
# protocols.rest.enrollment_api) ------------------------------------------------------------
_CREDENTIAL_STATUS = {"type": "string", "enum": ["unused", "used", "expired", "revoked"],
                      "description": "revoked: in the answer of its revocation only (a "
                      "revoked one is deleted)"}
_LIFETIME = {"type": "integer", "minimum": 1, "maximum": MAX_LIFETIME_MINUTES,
             "description": "lifetime in minutes (default and maximum: the gateway's "
             "settings; EST 24 h and 90 days, SCEP 1 h and 30 days)"}
_REQUEST_FIELDS: dict[str, Any] = {
    "id": {"type": "string"}, "organization_id": {"type": "string"},
    "subject": {"type": "string", "description": "the CSR's subject (RFC 4514)"},
    "requester": {"type": ["string", "null"], "description": "the credential it came with"},
    "created_at": _TIME, "decided_at": _NULLABLE_TIME,
    "serial": {"type": ["string", "null"], "description": "the certificate issued on "
               "approval (in the answer of the approval)"}}
_ENROLLMENT_SCHEMAS: dict[str, Any] = {
    "EstSecret": {"type": "object", "required": [
        "id", "organization_id", "label", "subject", "expires_at", "used_at", "created_at",
        "status"], "properties": {
        "id": {"type": "string", "description": "the HTTP Basic user name"},
        "organization_id": {"type": "string"},
        "label": {"type": "string", "description": "\"\": any label of the organization"},
        "subject": {"type": ["string", "null"],
                    "description": "the CSR's subject must be exactly this"},
        "expires_at": _TIME, "used_at": _NULLABLE_TIME, "created_at": _TIME,
        "status": _CREDENTIAL_STATUS,
        "user": {"type": "string", "description": "in the creation answer only"},
        "password": {"type": "string", "description": "in the creation answer only"}}},
    "EstSecretRequest": {"type": "object", "required": ["organization"], "properties": {
        "organization": {"type": "string", "description": "slug or id"},
        "label": {"type": "string", "description": "only this label (default: any of the "
                  "organization's)"},
        "subject": {"type": "string", "description": "pin the CSR's subject (RFC 4514)"},
        "expires_in_minutes": _LIFETIME}},
    "EstRequest": {"type": "object", "required": [
        "id", "organization_id", "label", "subject", "requester", "status", "created_at",
        "decided_at", "serial"], "properties": {
        **_REQUEST_FIELDS, "label": {"type": "string"},
        "status": {"type": "string", "enum": ["pending", "issued", "rejected"]}}},
    "ScepChallenge": {"type": "object", "required": [
        "id", "organization_id", "profile", "expires_at", "used_at", "created_at",
        "status"], "properties": {
        "id": {"type": "string"}, "organization_id": {"type": "string"},
        "profile": {"type": "string", "description": "its endpoint: /scep/ORG/PROFILE"},
        "expires_at": _TIME, "used_at": _NULLABLE_TIME, "created_at": _TIME,
        "status": _CREDENTIAL_STATUS,
        "password": {"type": "string", "description": "the challengePassword; in the "
                     "creation answer only"}}},
    "ScepChallengeRequest": {"type": "object", "required": ["organization"], "properties": {
        "organization": {"type": "string", "description": "slug or id"},
        "profile": {"type": "string", "description": "the endpoint's profile (default "
                    "external_integration)"},
        "expires_in_minutes": _LIFETIME}},
    "ScepRequest": {"type": "object", "required": [
        "id", "organization_id", "profile", "subject", "requester", "status", "created_at",
        "decided_at", "serial"], "properties": {
        **_REQUEST_FIELDS,
        "id": {"type": "string", "description": "the transactionID"},
        "profile": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["pending", "success", "rejected", "failure"]}}},
}
_ENROLLMENT_ORG = _query("organization", "organization slug or id (default: the caller's; "
                         "a super admin: all)")


def _enrollment_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for protocol, credential, noun, request in (
            ("est", "secrets", "EstSecret", "EstRequest"),
            ("scep", "challenges", "ScepChallenge", "ScepRequest")):
        tag, what = f"{protocol} enrollment", protocol.upper()
        ident = "secret_id" if protocol == "est" else "challenge_id"
        request_id = "request_id" if protocol == "est" else "transaction_id"
        decided = {"200": _json(_ref(request), "decided"), **_problems(403, 404, 409)}
        paths.update({
            f"/api/v1/{protocol}/{credential}": {
                "get": _op(f"list {what} one-time {credential} (never their passwords)", {
                    "200": _json(_page_of(noun), "one page"), **_problems(400, 403, 404)},
                    parameters=[_ENROLLMENT_ORG, *_PAGING], tag=tag),
                "post": _op(f"create a one-time {what} {credential[:-1]}: its password is "
                            "in this answer only", {
                                "201": _json(_ref(noun), "created"),
                                **_problems(400, 403, 404, 409, 413, 415)},
                            body=_body(_ref(f"{noun}Request")), tag=tag),
            },
            f"/api/v1/{protocol}/{credential}/{{{ident}}}": {
                "delete": _op(f"revoke an unused {credential[:-1]} (deleted; a used one: "
                              "409, revoke its certificate)", {
                                  "200": _json(_ref(noun), "revoked"),
                                  **_problems(403, 404, 409)},
                              parameters=[_path(ident, f"{credential[:-1]} id")], tag=tag),
            },
            f"/api/v1/{protocol}/pending": {
                "get": _op(f"{what} requests waiting for approval, oldest first", {
                    "200": _json(_page_of(request), "one page"), **_problems(400, 403, 404)},
                    parameters=[_ENROLLMENT_ORG, *_PAGING], tag=tag),
            },
            f"/api/v1/{protocol}/pending/{{{request_id}}}/approve": {
                "post": _op("approve: the certificate is issued now and the client gets it "
                            "on its next " + ("identical request" if protocol == "est"
                                              else "CertPoll"), decided,
                            parameters=[_path(request_id, "as the pending list shows it")],
                            tag=tag),
            },
            f"/api/v1/{protocol}/pending/{{{request_id}}}/reject": {
                "post": _op("reject: the client's retries are refused", decided,
                            parameters=[_path(request_id, "as the pending list shows it")],
                            tag=tag),
            },
        })
    return paths


_REPORT_QUERY = [
    _query("format", "json (default), csv or html", {"type": "string",
                                                      "enum": list(FORMATS)}),
    _query("organization", "slug or id (default: the caller's; a super admin without it: "
           "every organization)"),
    _query("from", "period start: a date (midnight UTC) or an RFC 3339 time (default: 30 "
           "days before to)"),
    _query("to", "period end, exclusive; a date includes that day (default: now)"),
]

_SERIAL = _path("serial", "hex serial (0A1B..., 0a:1b:..., 0x0a1b...)")
_ORG = _path("org", "slug or id")
_CA = _path("name", "CA name (GET /api/v1/cas)")
_TEMPLATE = _path("name", "template or built-in profile name")
_TEMPLATE_ORG = _query("organization", "organization slug (default: the token's; a super "
                       "admin without it: global templates)")
_AUDIT_FILTERS = [
    _query("since", "entries at or after this time", _TIME),
    _query("until", "entries before this time", _TIME),
    _query("actor", "actor id, e.g. token:0123abcd"),
    _query("action", "e.g. issue, revoke, create_token"),
    _query("resource", "resource id"),
]


def _op(summary: str, responses: dict[str, Any], *, parameters: list[Any] | None = None,
        body: dict[str, Any] | None = None, tag: str) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    return operation


def document() -> dict[str, Any]:
    cert = "certificates"
    return {
        "openapi": "3.1.0",
        "info": {"title": "VCC-PKI admin API", "version": "1",
                 "description": "Certificates, CAs, templates, tokens, service accounts, "
                 "ACME EAB keys and accounts, organizations, the audit log, code "
                 "signatures, the service registry and compliance reports. Authentication: "
                 "a bearer token, or on the EST port a client certificate bound to a "
                 "service account (mTLS). "
                 "Errors are RFC 9457 problem+json."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"mtls": []}, {"session": []}],
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": "__Host-vcc-admin",
                        "description": "the web admin page's session (POST /admin/session "
                        "with a bearer token); a state change also needs its X-CSRF-Token "
                        "header"},
            "mtls": {"type": "mutualTLS", "description": "a client certificate bound to a "
                     "service account, on the EST port only (it alone requests one)"}},
                       "schemas": {**_SCHEMAS, **_SERVICE_SCHEMAS,
                                   **_ENROLLMENT_SCHEMAS}},
        "paths": {
            "/api/v1/certificates": {
                "get": _op("list certificates, newest first: the caller's organization's "
                           "and those that share with it by their isolation level", {
                    "200": _json(_page_of("Certificate"), "one page"),
                    **_problems(400, 403, 404)},
                    parameters=[
                        _query("status", "active, revoked or expired",
                               {"type": "string", "enum": list(CERTIFICATE_STATUSES)}),
                        _query("expiring_before", "notAfter before this time", _TIME),
                        _query("profile", "profile name"),
                        _query("organization", "organization slug: the caller's, or one "
                               "that shares its certificates with it (its isolation level)"),
                        _query("q", "substring of the subject or a SAN, any case"),
                        *_PAGING], tag=cert),
                "post": _op("issue a certificate from a CSR", {
                    "201": _json(_ref("Certificate"), "issued"),
                    **_problems(400, 403, 404, 409, 413, 415)},
                    body=_body(_ref("IssueRequest")), tag=cert),
            },
            "/api/v1/certificates/{serial}": {
                "get": _op("one certificate: JSON, or PEM (with its chain), DER or PKCS#7", {
                    "200": {"description": "the certificate", "content": {
                        JSON: {"schema": _ref("Certificate")},
                        "application/pem-certificate-chain": {"schema": {"type": "string"}},
                        "application/pkix-cert": {"schema": {"type": "string",
                                                             "format": "binary"}},
                        "application/pkcs7-mime": {"schema": {"type": "string",
                                                              "format": "binary"}}}},
                    **_problems(400, 403, 404)},
                    parameters=[_SERIAL, _query("format", "json (default), pem, der or pkcs7",
                                                {"type": "string", "enum": [
                                                    "json", "pem", "der", "pkcs7"]}),
                                _query("chain", "default, or alternate: the chain through "
                                       "a cross-certificate (404 when there is none); in "
                                       "JSON as chain_pem",
                                       {"type": "string", "enum": ["default", "alternate"]})],
                    tag=cert),
            },
            "/api/v1/certificates/{serial}/revoke": {
                "post": _op("revoke a certificate", {
                    "200": _json(_ref("Certificate"), "revoked"),
                    **_problems(400, 403, 404, 409, 413, 415)},
                    parameters=[_SERIAL], body=_body(_ref("RevokeRequest"), False), tag=cert),
            },
            "/api/v1/certificates/{serial}/renew": {
                "post": _op("a new certificate for the same names, organization and profile",
                            {"201": _json(_ref("Certificate"), "issued"),
                             **_problems(400, 403, 404, 409, 413, 415)},
                            parameters=[_SERIAL], body=_body(_ref("RenewRequest"), False),
                            tag=cert),
            },
            "/api/v1/tokens": {
                "get": _op("list tokens (never their secrets)", {
                    "200": _json(_page_of("Token"), "one page"), **_problems(400, 403, 404)},
                    parameters=[_query("organization", "organization slug"), *_PAGING],
                    tag="tokens"),
                "post": _op("create a token; its secret is in this answer only", {
                    "201": _json(_ref("Token"), "created"),
                    **_problems(400, 403, 404, 409, 413, 415)},
                    body=_body(_ref("TokenRequest")), tag="tokens"),
            },
            "/api/v1/tokens/{token_id}": {
                "delete": _op("revoke a token: it stops working at once", {
                    "200": _json(_ref("Token"), "revoked"), **_problems(403, 404)},
                    parameters=[_path("token_id", "token id")], tag="tokens"),
            },
            "/api/v1/service-accounts": {
                "get": _op("list service accounts (client certificates bound by fingerprint)", {
                    "200": _json(_page_of("ServiceAccount"), "one page"),
                    **_problems(400, 403, 404)},
                    parameters=[_query("organization", "organization slug"), *_PAGING],
                    tag="service accounts"),
                "post": _op("bind a client certificate to a new service account: on the EST "
                            "port it then authenticates (mTLS) as the account's role", {
                                "201": _json(_ref("ServiceAccount"), "created"),
                                **_problems(400, 403, 404, 409, 413, 415)},
                            body=_body(_ref("ServiceAccountRequest")),
                            tag="service accounts"),
            },
            "/api/v1/service-accounts/{account_id}": {
                "delete": _op("revoke a service account: its certificate stops "
                              "authenticating at once", {
                                  "200": _json(_ref("ServiceAccount"), "revoked"),
                                  **_problems(403, 404)},
                              parameters=[_path("account_id", "service account id")],
                              tag="service accounts"),
            },
            "/api/v1/cas": {
                "get": _op("list CAs: the caller's organization's and the shared hierarchy", {
                    "200": _json(_page_of("CA"), "one page"), **_problems(400, 403)},
                    parameters=_PAGING, tag="cas"),
                "post": _op("create an intermediate CA under the root (an organization's or "
                            "shared) or an issuing CA for an organization: its first, or the "
                            "successor of a rollover (status next, issues once activated)", {
                                "201": _json(_ref("CA"), "created"),
                                **_problems(400, 403, 404, 409, 413, 415)},
                            body=_body(_ref("CARequest")), tag="cas"),
            },
            "/api/v1/cas/{name}/chain": {
                "get": _op("the CA's certificate, the CAs above it and the root, as PEM", {
                    "200": {"description": "PEM certificates, the root last", "content": {
                        "application/pem-certificate-chain": {"schema": {"type": "string"}}}},
                    **_problems(403, 404)}, parameters=[_CA], tag="cas"),
            },
            "/api/v1/cas/{name}/activate": {
                "post": _op("activate a rollover's next issuing CA (the one it replaces is "
                            "retired)", {"200": _json(_ref("CA"), "activated"),
                                         **_problems(403, 404, 409)},
                            parameters=[_CA], tag="cas"),
            },
            "/api/v1/templates": {
                "get": _op("certificate templates: the built-ins (read-only), the global "
                           "ones and the organization's", {
                               "200": _json(_page_of("Template"), "one page"),
                               **_problems(400, 403, 404)},
                           parameters=[_TEMPLATE_ORG, *_PAGING], tag="templates"),
                "post": _op("create a template narrowing a built-in profile", {
                    "201": _json(_ref("Template"), "created"),
                    **_problems(400, 403, 404, 409, 413, 415)},
                    body=_body(_ref("TemplateRequest")), tag="templates"),
            },
            "/api/v1/templates/{name}": {
                "get": _op("one template, as the organization resolves the name (its own, "
                           "else global, else built-in)", {
                               "200": _json(_ref("Template"), "the template"),
                               **_problems(400, 403, 404)},
                           parameters=[_TEMPLATE, _TEMPLATE_ORG], tag="templates"),
                "put": _op("change a template (built-ins: 409)", {
                    "200": _json(_ref("Template"), "updated"),
                    **_problems(400, 403, 404, 409, 413, 415)},
                    parameters=[_TEMPLATE, _TEMPLATE_ORG], body=_body(_ref("TemplateChange")),
                    tag="templates"),
                "delete": _op("delete a template (built-ins: 409)", {
                    "200": _json(_ref("Template"), "deleted"),
                    **_problems(400, 403, 404, 409)},
                    parameters=[_TEMPLATE, _TEMPLATE_ORG], tag="templates"),
            },
            "/api/v1/acme/eab": {
                "get": _op("list ACME EAB keys (never their HMAC keys)", {
                    "200": _json(_page_of("EabKey"), "one page"), **_problems(400, 403, 404)},
                    parameters=[_query("organization", "organization slug"), *_PAGING],
                    tag="acme"),
                "post": _op("create an EAB key; its HMAC key is in this answer only", {
                    "201": _json(_ref("EabKey"), "created"),
                    **_problems(400, 403, 404, 413, 415)},
                    body=_body(_ref("EabKeyRequest")), tag="acme"),
            },
            "/api/v1/acme/eab/{kid}": {
                "delete": _op("revoke an unused EAB key (a used one: deactivate its account)",
                              {"200": _json(_ref("EabKey"), "revoked"),
                               **_problems(403, 404, 409)},
                              parameters=[_path("kid", "EAB key id")], tag="acme"),
            },
            "/api/v1/acme/accounts": {
                "get": _op("list ACME accounts", {
                    "200": _json(_page_of("AcmeAccount"), "one page"),
                    **_problems(400, 403, 404)},
                    parameters=[_query("organization", "organization slug"), *_PAGING],
                    tag="acme"),
            },
            "/api/v1/acme/accounts/{account_id}/deactivate": {
                "post": _op("deactivate an ACME account: refused from its next request on", {
                    "200": _json(_ref("AcmeAccount"), "deactivated"),
                    **_problems(403, 404)},
                    parameters=[_path("account_id", "ACME account id")], tag="acme"),
            },
            "/api/v1/organizations": {
                "get": _op("list organizations (an organization's admin: its own)", {
                    "200": _json(_page_of("Organization"), "one page"),
                    **_problems(400, 403)}, parameters=_PAGING, tag="organizations"),
                "post": _op("create an organization and its issuing CA", {
                    "201": _json(_ref("Organization"), "created"),
                    **_problems(400, 403, 409, 413, 415)},
                    body=_body(_ref("OrganizationRequest")), tag="organizations"),
            },
            "/api/v1/organizations/{org}": {
                "get": _op("one organization", {
                    "200": _json(_ref("Organization"), "the organization"),
                    **_problems(403, 404)}, parameters=[_ORG], tag="organizations"),
                "patch": _op("change name, status (disabled: its credentials stop at once), "
                             "isolation level or policy", {
                                 "200": _json(_ref("Organization"), "updated"),
                                 **_problems(400, 403, 404, 409, 413, 415)},
                             parameters=[_ORG], body=_body(_ref("OrganizationChange")),
                             tag="organizations"),
            },
            "/api/v1/audit": {
                "get": _op("audit entries in chain order", {
                    "200": _json(_page_of("AuditEntry"), "one page"), **_problems(400, 403)},
                    parameters=[*_AUDIT_FILTERS, *_PAGING], tag="audit"),
            },
            "/api/v1/audit/verify": {
                "get": _op("verify the hash chain of the whole log", {
                    "200": _json(_ref("AuditVerification"), "the result"),
                    **_problems(403)}, tag="audit"),
            },
            "/api/v1/audit/export": {
                "get": _op("every matching entry as JSON Lines (streamed)", {
                    "200": {"description": "one AuditEntry per line",
                            "content": {"application/jsonl": {"schema": {"type": "string"}}}},
                    **_problems(400, 403)}, parameters=_AUDIT_FILTERS, tag="audit"),
            },
            "/api/v1/signatures": {
                "post": _op("sign an artifact's hash (role code_signer, own organization): a "
                            "detached CMS signature with signingTime and an RFC 3161 "
                            "time-stamp; the same hash again answers the stored one (200)", {
                                "201": _json(_ref("Signature"), "signed"),
                                "200": _json(_ref("Signature"),
                                             "signed before with the same certificate"),
                                **_problems(400, 403, 404, 409, 413, 415)},
                            body=_body(_ref("SignatureRequest")), tag="signatures"),
            },
            "/api/v1/signatures/verify": {
                "post": _op("verify a signature of the caller's organization against the "
                            "artifact's hash (counts verified_count when valid)", {
                                "200": _json(_ref("Verification"), "the verdict"),
                                **_problems(400, 403, 404, 413, 415)},
                            body=_body(_ref("VerifyRequest")), tag="signatures"),
            },
            **_service_paths(),
            **_enrollment_paths(),
            "/api/v1/reports": {
                "get": _op("stored compliance reports, oldest first (compliance:read: the "
                           "caller's organization's; a super admin: all or one's)", {
                    "200": _json(_page_of("ReportSummary"), "one page"),
                    **_problems(400, 403, 404)},
                    parameters=[_query("organization", "slug or id"), *_PAGING],
                    tag="reports"),
            },
            "/api/v1/reports/{name}": {
                "get": _op("generate a compliance report, store it with its SHA-256 and "
                           "audit it (report.generated); headers X-Report-Id and "
                           "X-Report-SHA256 name the stored report", {
                    "200": {"description": "the report in the asked format", "content": {
                        JSON: {"schema": _ref("Report")},
                        "text/csv": {"schema": {"type": "string"}},
                        "text/html": {"schema": {"type": "string"}}}},
                    **_problems(400, 403, 404)},
                    parameters=[{**_path("name", "the report"), "schema": {
                        "type": "string", "enum": list(REPORT_NAMES)}}, *_REPORT_QUERY],
                    tag="reports"),
            },
            "/api/v1/reports/{name}/{report_id}": {
                "get": _op("a stored report again: the exact bytes its report.generated "
                           "audit event hashed (compliance:read: the caller's "
                           "organization's; a super admin: any)", {
                    "200": {"description": "the stored report", "content": {
                        JSON: {"schema": _ref("Report")},
                        "text/csv": {"schema": {"type": "string"}},
                        "text/html": {"schema": {"type": "string"}}}},
                    **_problems(403, 404)},
                    parameters=[{**_path("name", "the report"), "schema": {
                        "type": "string", "enum": list(REPORT_NAMES)}},
                        _path("report_id", "the id the list and X-Report-Id give")],
                    tag="reports"),
            },
            "/api/v1/stats": {
                "get": _op("live counters of the answering process for the web page's "
                           "rates: certificate requests, revocations, OCSP answers and "
                           "cache hits, time-stamps (compliance:read: the caller's "
                           "organization's issuance; OCSP and TSA to a super admin)", {
                    "200": _json(_ref("Stats"), "one sample"),
                    **_problems(400, 403, 404)},
                    parameters=[_query("organization", "slug or id (default: the caller's; "
                                       "a super admin without it: every organization)")],
                    tag="reports"),
            },
            **{f"/api/v1/health{part}": {"get": {
                "summary": f"health{part.replace('/', ' of the ')}", "tags": ["meta"],
                "security": [], "responses": {
                    "200": _json({"type": "object"}, "healthy"),
                    "503": _json({"type": "object"}, "unhealthy")}}}
               for part in ("", "/database", "/hsm")},
            "/api/v1/openapi.json": {
                "get": {"summary": "this document", "tags": ["meta"], "security": [],
                        "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}},
            },
        },
    }


@functools.cache
def _encoded() -> bytes:
    return json.dumps(document(), indent=1).encode()


async def serve(request: web.Request) -> web.Response:
    return web.Response(body=_encoded(), content_type=JSON)
