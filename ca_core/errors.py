"""Domain errors of the CA core.

Every protocol front-end maps these kinds to its own wire form (problem+json, OCSP status,
PKIStatusInfo, EST 4xx, SCEP failInfo) in exactly one place. The message of a CAError is
meant for the client and never contains internal detail; internal causes are logged.

    CAError
    ├── BadRequest            malformed input (CSR, JSON, serial)
    │   ├── BadCSR            not a parseable PKCS#10 request
    │   ├── BadCSRSignature   CSR signature does not verify
    │   ├── BadPublicKey      key type or size not allowed
    │   ├── UnknownProfile    no profile of that name
    │   ├── PolicyViolation   SAN / extension / profile rule broken
    │   └── ValidityTooLong   requested validity beyond the profile or issuer
    ├── Unauthorized          no or unknown credential
    ├── Forbidden             credential valid, action not permitted
    ├── NotFound              unknown serial, CA, profile, organization
    ├── Conflict              state does not allow it (already revoked, exists)
    └── Unavailable           store or key backend not usable right now
"""

from __future__ import annotations


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


class ValidityTooLong(BadRequest):
    kind = "validity_too_long"


class Unauthorized(CAError):
    kind = "unauthorized"


class Forbidden(CAError):
    kind = "forbidden"


class NotFound(CAError):
    kind = "not_found"


class Conflict(CAError):
    kind = "conflict"


class Unavailable(CAError):
    kind = "unavailable"
