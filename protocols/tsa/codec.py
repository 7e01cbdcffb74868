"""TimeStampReq decoding and TimeStampResp encoding (RFC 3161 2.4.1 and 2.4.2).

asn1crypto's ``tsp`` module declares the structures; this module is the one adapter on top:
its TimeStampResp makes ``timeStampToken`` OPTIONAL, as RFC 3161 does (a rejection carries
none; asn1crypto 1.5 declares it mandatory and refuses to encode a rejection).

The one mapping from CA-core errors to PKIStatusInfo lives here::

    kind bad_alg                  -> rejection, failInfo badAlg
    kind bad_data_format          -> rejection, failInfo badDataFormat
    kind unaccepted_policy        -> rejection, failInfo unacceptedPolicy
    kind unaccepted_extensions    -> rejection, failInfo unacceptedExtension
    kind time_not_available       -> rejection, failInfo timeNotAvailable
    any other BadRequest          -> rejection, failInfo badRequest
    Unavailable, anything else    -> rejection, failInfo systemFailure

The statusString carries the CAError's client-facing detail (never internal text).
"""

from __future__ import annotations

from asn1crypto import algos, cms, core, tsp

from ca_core import der
from ca_core.errors import BadRequest, CAError
from ca_core.tsa import BadDataFormat, TimeStampQuery

MAX_REQUEST_BYTES = 16 * 1024  # a TimeStampReq is ~60-100 bytes; extensions stay small


class TimeStampResp(tsp.TimeStampResp):  # type: ignore[misc]  # asn1crypto is untyped
    """RFC 3161 2.4.2: ``timeStampToken TimeStampToken OPTIONAL``."""

    _fields = [  # noqa: RUF012 - asn1crypto's declaration style
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


# PKIFailureInfo bit names (asn1crypto's) by CAError kind.
_FAIL_INFO = {
    "bad_alg": "bad_alg",
    "bad_data_format": "bad_data_format",
    "bad_request": "bad_request",
    "unaccepted_policy": "unaccepted_policy",
    "unaccepted_extensions": "unaccepted_extensions",
    "time_not_available": "time_not_available",
}
SYSTEM_FAILURE = "system_failure"

# Encoded once: every granted response starts with it.
_GRANTED = tsp.PKIStatusInfo({"status": "granted"}).dump()


def fail_info_for(error: BaseException) -> str:
    """The PKIFailureInfo bit (asn1crypto name) that answers ``error``."""
    if isinstance(error, CAError):
        fail_info = _FAIL_INFO.get(error.kind)
        if fail_info is not None:
            return fail_info
        if isinstance(error, BadRequest):
            return "bad_request"
    return SYSTEM_FAILURE


# How many fields each structure declares: a parsed value with more children carries
# trailing elements of no declared type (asn1crypto keeps them), which OpenSSL refuses.
_DECLARED = {tsp.TimeStampReq: len(tsp.TimeStampReq()),
             tsp.MessageImprint: len(tsp.MessageImprint()),
             algos.DigestAlgorithm: len(algos.DigestAlgorithm())}


def decode_request(der: bytes) -> TimeStampQuery:
    """A TimeStampReq (DER) as a query; BadDataFormat for anything that is not one."""
    if not der:
        raise BadDataFormat("empty request")
    try:
        request = tsp.TimeStampReq.load(der, strict=True)
        imprint = request["message_imprint"]
        algorithm = imprint["hash_algorithm"]
        parameters = algorithm["parameters"]
        policy = request["req_policy"]
        nonce = request["nonce"]
        extensions = request["extensions"]
        query = TimeStampQuery(
            version=int(request["version"]),
            hash_oid=algorithm["algorithm"].dotted,
            hash_parameters=None if isinstance(parameters, core.Void) else parameters.dump(),
            hashed_message=imprint["hashed_message"].native,
            policy=None if isinstance(policy, core.Void) else policy.dotted,
            nonce=None if isinstance(nonce, core.Void) else nonce.dump(),
            cert_req=bool(request["cert_req"].native),
            extensions=() if isinstance(extensions, core.Void)
            else tuple(e["extn_id"].dotted for e in extensions),
        )
    except Exception as exc:
        # asn1crypto parses lazily and reports malformed input with ValueError, TypeError,
        # KeyError, IndexError or OverflowError, depending on where it trips: all of them
        # mean "this is not a TimeStampReq" (RFC 3161: badDataFormat), never a 500.
        raise BadDataFormat("the body is not a DER TimeStampReq") from exc
    if not isinstance(query.hashed_message, bytes):
        raise BadDataFormat("the body is not a DER TimeStampReq")
    for value in (request, imprint, algorithm):
        if len(value) != _DECLARED[type(value)]:
            raise BadDataFormat("the TimeStampReq holds elements RFC 3161 does not declare")
    if not isinstance(policy, core.Void) and not policy.contents:
        raise BadDataFormat("reqPolicy is an object identifier with no arcs")
    if not isinstance(extensions, core.Void) and not query.extensions:
        raise BadDataFormat("extensions, when present, hold at least one (RFC 3161 2.4.1)")
    return query


def granted(token: bytes) -> bytes:
    """A TimeStampResp granting ``token`` (a DER ContentInfo that ca_core built): the
    SEQUENCE of status and token, written around the token's own octets (ca_core.der)."""
    return der.sequence(_GRANTED, token)


def rejection(fail_info: str, text: str | None = None) -> bytes:
    """A TimeStampResp with PKIStatus rejection, one failInfo bit and a statusString."""
    status: dict[str, object] = {
        "status": "rejection",
        "fail_info": tsp.PKIFailureInfo({fail_info}),
    }
    if text:
        status["status_string"] = [text[:200]]
    response: bytes = TimeStampResp({"status": status}).dump()
    return response
