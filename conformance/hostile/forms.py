"""Is an answer in its protocol's own form? One check per protocol; each returns None
when the answer is acceptable, else what is wrong with it (DESIGN.md, Invariants: bad
input gets the protocol's error form, never a 500 or a traceback).

- ACME (RFC 8555 6.7): ``application/problem+json`` with an ``urn:ietf:params:acme:error:``
  type.
- REST: ``application/problem+json`` (RFC 9457) whose ``status`` is the HTTP status.
- OCSP (RFC 6960 2.3): a DER OCSPResponse; malformedRequest or unauthorized for bad input.
  HTTP-level faults (another media type, a body over 16 KiB, a method) are 4xx text.
- TSA (RFC 3161 2.4.2): a DER TimeStampResp, status rejection with a failInfo; HTTP-level
  faults 4xx text.
- SCEP (RFC 8894 3.3): a CertRep whose pkiStatus is FAILURE with a failInfo, or 4xx text.
- EST (RFC 7030 4.2.3): 4xx ``text/plain``.
- CRL: 404 for a name that is not a CRL.

A success (2xx) is counted as accepted: the mutation left a valid request (a bit flip in
a time-stamp's hash, say). What it changed in the store is checked apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from asn1crypto import cms, core, ocsp, tsp

# RFC 8894 3.2.1.3: pkiStatus, failInfo (signed attributes of a CertRep).
_PKI_STATUS = "2.16.840.1.113733.1.9.3"
_FAIL_INFO = "2.16.840.1.113733.1.9.4"


class _TimeStampResp(core.Sequence):
    """RFC 3161 2.4.2: asn1crypto's TimeStampResp makes the token mandatory, which a
    rejection does not carry."""

    _fields: ClassVar[list[Any]] = [("status", tsp.PKIStatusInfo),
                                    ("time_stamp_token", cms.ContentInfo,
                                     {"optional": True})]


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    content_type: str
    body: bytes


Check = Callable[[Answer], str | None]


def _problem(answer: Answer) -> dict[str, object] | str:
    if answer.content_type != "application/problem+json":
        return f"{answer.status} as {answer.content_type or 'no type'}, not problem+json"
    try:
        document = json.loads(answer.body)
    except ValueError:
        return f"{answer.status}: problem+json that is not JSON"
    if not isinstance(document, dict) or not isinstance(document.get("type"), str):
        return f"{answer.status}: problem document without a type"
    if document.get("status", answer.status) != answer.status:
        return f"{answer.status}: problem document says status {document.get('status')}"
    return document


def _http_fault_text(answer: Answer) -> str | None:
    """An HTTP-level refusal before the protocol is reached: 4xx, text."""
    if 400 <= answer.status < 500 and answer.content_type in ("text/plain", ""):
        return None
    return f"{answer.status} as {answer.content_type or 'no type'}"


def acme(answer: Answer) -> str | None:
    if answer.status < 400:
        return None
    document = _problem(answer)
    if isinstance(document, str):
        return document
    kind = str(document["type"])
    if not kind.startswith("urn:ietf:params:acme:error:"):
        return f"{answer.status}: problem type {kind!r} is not an ACME error"
    return None


def rest(answer: Answer) -> str | None:
    if answer.status < 400:
        return None
    document = _problem(answer)
    return document if isinstance(document, str) else None


def ocsp_answer(answer: Answer) -> str | None:
    if answer.status != 200:
        return _http_fault_text(answer)
    if answer.content_type != "application/ocsp-response":
        return f"200 as {answer.content_type}, not application/ocsp-response"
    try:
        status = ocsp.OCSPResponse.load(answer.body)["response_status"].native
    except (ValueError, TypeError, KeyError) as exc:
        return f"not a DER OCSPResponse: {exc}"
    if status not in ("successful", "malformed_request", "unauthorized"):
        return f"OCSPResponse status {status} for bad input"
    return None


def tsa(answer: Answer) -> str | None:
    if answer.status != 200:
        return _http_fault_text(answer)
    if answer.content_type != "application/timestamp-reply":
        return f"200 as {answer.content_type}, not application/timestamp-reply"
    try:
        info = _TimeStampResp.load(answer.body)["status"]
        status = info["status"].native
        fail_info = info["fail_info"].native
    except (ValueError, TypeError, KeyError) as exc:
        return f"not a DER TimeStampResp: {exc}"
    if status in ("granted", "granted_with_mods"):
        return None
    if status != "rejection" or not fail_info:
        return f"TimeStampResp {status} with failInfo {fail_info} for bad input"
    return None


def scep_status(body: bytes) -> tuple[str, str | None]:
    """pkiStatus and failInfo of a CertRep (not verified: the form is checked here, the
    signature by tests/test_scep.py)."""
    signed = cms.ContentInfo.load(body)["content"]
    attrs = {a["type"].dotted: a["values"][0].native
             for a in signed["signer_infos"][0]["signed_attrs"]}
    return str(attrs[_PKI_STATUS]), (str(attrs[_FAIL_INFO]) if _FAIL_INFO in attrs else None)


def scep(answer: Answer) -> str | None:
    if answer.status != 200:
        return _http_fault_text(answer)
    if answer.content_type != "application/x-pki-message":
        return f"200 as {answer.content_type}, not application/x-pki-message"
    try:
        status, fail_info = scep_status(answer.body)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        return f"not a CertRep: {exc}"
    if status == "2" and fail_info is None:
        return "CertRep FAILURE without a failInfo"
    return None


def est(answer: Answer) -> str | None:
    if answer.status < 400:
        return None
    if 400 <= answer.status < 500 and answer.content_type == "text/plain":
        return None
    return f"{answer.status} as {answer.content_type or 'no type'}, not 4xx text/plain"


def crl(answer: Answer) -> str | None:
    if answer.status in (200, 404):
        return None
    return f"{answer.status} for a CRL name"


def accepted(protocol: str, answer: Answer) -> bool:
    """Did the gateway do what the request asked (a certificate, a token, a status)?"""
    if answer.status >= 300:
        return False
    try:
        if protocol == "scep" and answer.content_type == "application/x-pki-message":
            return scep_status(answer.body)[0] == "0"
        if protocol == "tsa":
            return str(_TimeStampResp.load(answer.body)["status"]["status"].native
                       ).startswith("granted")
        if protocol.startswith("ocsp"):
            return bool(ocsp.OCSPResponse.load(answer.body)["response_status"].native
                        == "successful")
    except (ValueError, TypeError, KeyError, IndexError):
        return False
    return True


CHECKS: dict[str, Check] = {"acme": acme, "rest": rest, "ocsp-get": ocsp_answer,
                            "ocsp-post": ocsp_answer, "tsa": tsa, "scep": scep, "est": est,
                            "crl": crl}
