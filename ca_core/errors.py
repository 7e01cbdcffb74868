"""Domain errors of the CA core.

Every protocol front-end maps these kinds to its own wire form (problem+json, OCSP status,
PKIStatusInfo, EST 4xx, SCEP failInfo) in exactly one place (for ACME:
``protocols/acme/problems.py``). The message of a CAError is meant for the client and never
contains internal detail; internal causes are logged.

    CAError
    ├── BadRequest                malformed input (CSR, JSON, serial)
    │   ├── BadCSR                not a parseable PKCS#10 request, or not the one asked for
    │   │   └── BadCSRSignature   CSR signature does not verify
    │   ├── BadPublicKey          key type or size not allowed
    │   ├── UnknownProfile        no profile of that name
    │   ├── PolicyViolation       SAN / extension / profile rule broken
    │   │   └── RejectedIdentifier  identifiers an ACME order may not name, each with why
    │   ├── ValidityTooLong       requested validity beyond the profile or issuer
    │   ├── UnsupportedIdentifier an identifier type the CA never issues for
    │   ├── UnsupportedContact    a contact scheme accounts cannot have
    │   ├── InvalidContact        a contact that is not a valid address
    │   ├── BadRevocationReason   a reason code that revocation does not take
    │   ├── BadNonce              an anti-replay nonce unknown, used or expired
    │   └── ExternalAccountRequired  a new account without the binding the server requires
    ├── Unauthorized              no or unknown credential
    ├── Forbidden                 credential valid, action not permitted
    │   ├── UserActionRequired    the terms of service must be agreed to first
    │   └── OrderNotReady         the order's state does not allow finalization
    ├── NotFound                  unknown serial, CA, profile, organization, ACME resource
    │   └── AccountDoesNotExist   no ACME account has that key or URL
    ├── Conflict                  state does not allow it (already revoked, exists)
    │   ├── AlreadyRevoked        the certificate is revoked already
    │   └── AccountKeyInUse       the key is another account's
    ├── RateLimited               too many requests of one kind; ``retry_after`` seconds
    ├── Unavailable               store or key backend not usable right now
    └── ValidationFailed          an ACME challenge was not met (the validator's verdict)
        ├── ConnectionFailed      the applicant's server could not be reached
        ├── DnsFailed             a DNS lookup failed
        ├── TlsFailed             the TLS-ALPN handshake failed
        └── IncorrectResponse     what the applicant published is not the key authorization
"""

from __future__ import annotations

from collections.abc import Sequence


class CAError(Exception):
    """Base of all errors the CA core reports to a caller."""

    kind = "internal"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(CAError):
    kind = "bad_request"


class BadCSR(BadRequest):
    kind = "bad_csr"


class BadCSRSignature(BadCSR):
    kind = "bad_csr_signature"


class BadPublicKey(BadRequest):
    kind = "bad_public_key"


class UnknownProfile(BadRequest):
    kind = "unknown_profile"


class PolicyViolation(BadRequest):
    kind = "policy_violation"


class RejectedIdentifier(PolicyViolation):
    """``rejected`` lists (identifier type, value, why) for each refused identifier."""

    kind = "rejected_identifier"

    def __init__(self, detail: str, rejected: Sequence[tuple[str, str, str]] = ()) -> None:
        super().__init__(detail)
        self.rejected = tuple(rejected)


class ValidityTooLong(BadRequest):
    kind = "validity_too_long"


class UnsupportedIdentifier(BadRequest):
    kind = "unsupported_identifier"


class UnsupportedContact(BadRequest):
    kind = "unsupported_contact"


class InvalidContact(BadRequest):
    kind = "invalid_contact"


class BadRevocationReason(BadRequest):
    kind = "bad_revocation_reason"


class BadNonce(BadRequest):
    kind = "bad_nonce"


class ExternalAccountRequired(BadRequest):
    kind = "external_account_required"


class Unauthorized(CAError):
    kind = "unauthorized"


class Forbidden(CAError):
    kind = "forbidden"


class UserActionRequired(Forbidden):
    kind = "user_action_required"


class OrderNotReady(Forbidden):
    kind = "order_not_ready"


class NotFound(CAError):
    kind = "not_found"


class AccountDoesNotExist(NotFound):
    kind = "account_does_not_exist"


class Conflict(CAError):
    kind = "conflict"


class AlreadyRevoked(Conflict):
    kind = "already_revoked"


class AccountKeyInUse(Conflict):
    kind = "account_key_in_use"


class RateLimited(CAError):
    kind = "rate_limited"

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Unavailable(CAError):
    kind = "unavailable"


class ValidationFailed(CAError):
    kind = "validation_failed"


class ConnectionFailed(ValidationFailed):
    kind = "connection_failed"


class DnsFailed(ValidationFailed):
    kind = "dns_failed"


class TlsFailed(ValidationFailed):
    kind = "tls_failed"


class IncorrectResponse(ValidationFailed):
    kind = "incorrect_response"
