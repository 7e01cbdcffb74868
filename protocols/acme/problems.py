"""ACME problem documents (RFC 8555 section 6.7, RFC 7807): the one place where ca_core's
errors become ``urn:ietf:params:acme:error:*`` types with their HTTP statuses.

``AcmeProblem`` is what the front-end raises for what it decodes itself (JWS, nonce header,
URLs, base64url); ``from_error`` maps a ``CAError`` of the RA or the Authority;
``stored`` renders the failure an order or a challenge keeps (``ca_core.acme.error_record``).
The detail of a server-side failure (500) never reaches the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ca_core.errors import CAError, RateLimited, RejectedIdentifier

PREFIX = "urn:ietf:params:acme:error:"

# ca_core error kind -> (RFC 8555 error type, HTTP status). A kind not listed is looked up
# by its base classes (``from_error``); the last resort is serverInternal.
_PROBLEMS: dict[str, tuple[str, int]] = {
    "bad_request": ("malformed", 400),
    "bad_csr": ("badCSR", 400),
    "bad_csr_signature": ("badCSR", 400),
    "bad_public_key": ("badCSR", 400),  # the CSR's key; a JWK's is the front-end's own
    "unknown_profile": ("invalidProfile", 400),
    "policy_violation": ("rejectedIdentifier", 400),
    "rejected_identifier": ("rejectedIdentifier", 400),
    "validity_too_long": ("malformed", 400),
    "unsupported_identifier": ("unsupportedIdentifier", 400),
    "unsupported_contact": ("unsupportedContact", 400),
    "invalid_contact": ("invalidContact", 400),
    "bad_revocation_reason": ("badRevocationReason", 400),
    "bad_nonce": ("badNonce", 400),
    "external_account_required": ("externalAccountRequired", 400),
    "unauthorized": ("unauthorized", 401),
    "forbidden": ("unauthorized", 403),
    "user_action_required": ("userActionRequired", 403),
    "order_not_ready": ("orderNotReady", 403),
    "not_found": ("malformed", 404),
    "account_does_not_exist": ("accountDoesNotExist", 400),
    "conflict": ("malformed", 409),
    "already_revoked": ("alreadyRevoked", 400),
    "account_key_in_use": ("conflict", 409),
    "rate_limited": ("rateLimited", 429),
    "unavailable": ("serverInternal", 503),
    # challenge failures, kept in the challenge (RFC 8555 8.2 and 6.7)
    "validation_failed": ("malformed", 400),
    "connection_failed": ("connection", 400),
    "dns_failed": ("dns", 400),
    "tls_failed": ("tls", 400),
    "incorrect_response": ("unauthorized", 403),
    "internal": ("serverInternal", 500),
}


# The store or key backend is down: when to try again (RFC 8555 6.6 lets a server say so;
# the REST API and the gateway's own 503s say 5 s too). Found missing by
# conformance/replicas/test_postgres_restart.py: ACME 503s came without it.
UNAVAILABLE_RETRY_AFTER = 5.0


class AcmeProblem(Exception):
    """An RFC 8555 problem: ``acme_type`` is the part after ``urn:ietf:params:acme:error:``."""

    def __init__(self, acme_type: str, detail: str, status: int = 400,
                 subproblems: Sequence[dict[str, Any]] = (),
                 retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.acme_type = acme_type
        self.detail = detail
        self.status = status
        self.subproblems = list(subproblems)
        self.retry_after = retry_after

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": PREFIX + self.acme_type, "detail": self.detail,
                               "status": self.status}
        if self.subproblems:
            doc["subproblems"] = self.subproblems
        return doc


def _type_and_status(error: CAError) -> tuple[str, int]:
    for cls in type(error).__mro__:
        found = _PROBLEMS.get(getattr(cls, "kind", ""))
        if found is not None:
            return found
    return "serverInternal", 500


def _identified(acme_type: str, detail: str, kind: str, value: str) -> dict[str, Any]:
    return {"type": PREFIX + acme_type, "detail": detail,
            "identifier": {"type": kind, "value": value}}


def from_error(error: CAError) -> AcmeProblem:
    """The problem a ca_core error is on the wire."""
    acme_type, status = _type_and_status(error)
    # A 503 says what is unavailable (the message is meant for clients, as for REST); a
    # 500 is ours and says nothing more.
    detail = error.detail if status < 500 or status == 503 else "internal error"
    subproblems = [_identified(acme_type, why, kind, value)
                   for kind, value, why in error.rejected] \
        if isinstance(error, RejectedIdentifier) else []
    retry_after = error.retry_after if isinstance(error, RateLimited) else \
        UNAVAILABLE_RETRY_AFTER if status == 503 else None
    return AcmeProblem(acme_type, detail, status, subproblems, retry_after)


def stored(record: dict[str, Any]) -> dict[str, Any]:
    """The problem document (RFC 8555 7.1.3 and 7.1.5 ``error``) of a failure an order or a
    challenge keeps. Records written before the RA kept kinds are documents already."""
    if "type" in record:
        return record
    acme_type, _ = _PROBLEMS.get(str(record.get("kind")), ("serverInternal", 500))
    document: dict[str, Any] = {"type": PREFIX + acme_type,
                                "detail": str(record.get("detail", ""))}
    if isinstance(record.get("identifier"), dict):
        document["identifier"] = record["identifier"]
    return document
