"""RFC 9457 problem details for the REST API: the one place CAErrors become HTTP errors."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ca_core.errors import BadRequest, CAError, Conflict, Forbidden, NotFound, Unauthorized

PROBLEM_JSON = "application/problem+json"

_STATUS = {
    "bad_request": 400,
    "bad_csr": 400,
    "bad_csr_signature": 400,
    "bad_public_key": 400,
    "unknown_profile": 400,
    "policy_violation": 400,
    "validity_too_long": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "unavailable": 503,
}

_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
    415: "Unsupported Media Type", 500: "Internal Server Error", 503: "Service Unavailable",
}


def problem(status: int, kind: str, detail: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {
        "type": f"urn:vcc-pki:problem:{kind}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **extra,
    }
    response = web.Response(status=status, text=json.dumps(body), content_type=PROBLEM_JSON)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="vcc-pki"'
    if status == 503:
        response.headers["Retry-After"] = "5"
    return response


# A kind without an entry of its own answers as the nearest class it derives from.
_BY_CLASS: tuple[tuple[type[CAError], int], ...] = (
    (BadRequest, 400), (Unauthorized, 401), (Forbidden, 403), (NotFound, 404), (Conflict, 409),
)


def problem_from_error(error: CAError) -> web.Response:
    status = _STATUS.get(error.kind) or next(
        (code for cls, code in _BY_CLASS if isinstance(error, cls)), 500)
    detail = error.detail if status < 500 or status == 503 else "internal error"
    return problem(status, error.kind, detail)
