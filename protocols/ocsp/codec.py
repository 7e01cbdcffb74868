"""OCSP request decoding and error responses (RFC 6960 4.1 and 4.2.1).

Requests with one CertID, what every TLS stack sends, are decoded by cryptography (about
4 µs). cryptography refuses requests with several CertIDs, so those (and anything else it
rejects) are decoded by asn1crypto, which also keeps each CertID's DER for an exact echo.

The one mapping from CA-core errors to OCSP response statuses lives here::

    BadRequest (MalformedOcspRequest)         -> malformedRequest
    NotFound, Forbidden, Unauthorized          -> unauthorized
    Unavailable                                -> tryLater
    anything else                              -> internalError
"""

from __future__ import annotations

from typing import Any

from asn1crypto import ocsp as a_ocsp
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from ca_core.errors import BadRequest, Forbidden, NotFound, Unauthorized, Unavailable
from ca_core.ocsp import CertId, MalformedOcspRequest, OcspQuery

# Unsuccessful responses carry no signature and no time: build each once (RFC 6960 4.2.1).
ERROR_RESPONSES: dict[ocsp.OCSPResponseStatus, bytes] = {
    status: ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER)
    for status in (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
        ocsp.OCSPResponseStatus.INTERNAL_ERROR,
        ocsp.OCSPResponseStatus.TRY_LATER,
        ocsp.OCSPResponseStatus.UNAUTHORIZED,
    )
}

_NOT_INDEXED = "unsupported"  # a CertID hash we do not index: no issuer will match


def response_status_for(error: BaseException) -> ocsp.OCSPResponseStatus:
    if isinstance(error, BadRequest):
        return ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    if isinstance(error, NotFound | Forbidden | Unauthorized):
        return ocsp.OCSPResponseStatus.UNAUTHORIZED
    if isinstance(error, Unavailable):
        return ocsp.OCSPResponseStatus.TRY_LATER
    return ocsp.OCSPResponseStatus.INTERNAL_ERROR


def decode_request(der: bytes) -> OcspQuery:
    """An OCSPRequest (DER) as a query; MalformedOcspRequest for anything else."""
    if not der:
        raise MalformedOcspRequest("empty request")
    try:
        request = ocsp.load_der_ocsp_request(der)
        serial = request.serial_number
        name_hash = request.issuer_name_hash
        key_hash = request.issuer_key_hash
        extensions = request.extensions
    except x509.DuplicateExtension as exc:  # RFC 5280 4.2: each extension at most once
        raise MalformedOcspRequest("an extension appears twice") from exc
    except (ValueError, NotImplementedError):  # several (or no) CertIDs, or not DER
        return _decode_with_asn1crypto(der)
    try:
        algorithm = request.hash_algorithm.name
    except UnsupportedAlgorithm:
        algorithm = _NOT_INDEXED
    nonce = None
    for extension in extensions:
        if isinstance(extension.value, x509.OCSPNonce):
            nonce = extension.value.nonce
        elif extension.critical:
            raise MalformedOcspRequest(
                f"unsupported critical extension {extension.oid.dotted_string}")
    # cryptography does not show singleRequestExtensions; a critical one needs a DER TRUE
    # (01 01 FF), which plain requests never hold, so only those are parsed again.
    if _CRITICAL in der:
        _decode_with_asn1crypto(der)
    return OcspQuery(der, (CertId(algorithm, name_hash, key_hash, serial),), nonce)


_CRITICAL = b"\x01\x01\xff"


def _refuse_critical(extensions: Any, allowed: tuple[str, ...] = ()) -> None:
    """RFC 6960 4.4 / RFC 5280 4.2: a critical extension the responder does not know means
    it cannot answer as asked."""
    for extension in extensions or []:
        if extension["critical"].native and extension["extn_id"].native not in allowed:
            raise MalformedOcspRequest(
                f"unsupported critical extension {extension['extn_id'].dotted}")


def _decode_with_asn1crypto(der: bytes) -> OcspQuery:
    try:
        request = a_ocsp.OCSPRequest.load(der, strict=True)
        tbs = request["tbs_request"]
        cert_ids = []
        for item in tbs["request_list"]:
            cert_id = item["req_cert"]
            algorithm = cert_id["hash_algorithm"]["algorithm"].native
            cert_ids.append(CertId(
                algorithm if isinstance(algorithm, str) else _NOT_INDEXED,
                bytes(cert_id["issuer_name_hash"].native),
                bytes(cert_id["issuer_key_hash"].native),
                int(cert_id["serial_number"].native),
                cert_id.dump(),
            ))
            _refuse_critical(item["single_request_extensions"])
        nonce = None
        for extension in tbs["request_extensions"] or []:
            if extension["extn_id"].native == "nonce":
                nonce = bytes(extension["extn_value"].parsed.native)
        _refuse_critical(tbs["request_extensions"], allowed=("nonce",))
    except MalformedOcspRequest:
        raise
    except Exception as exc:
        # asn1crypto parses lazily and reports malformed input with whichever exception
        # its parser trips on: all of them mean "not an OCSPRequest", never internalError.
        raise MalformedOcspRequest("not a DER OCSPRequest") from exc
    if not cert_ids:
        raise MalformedOcspRequest("the request names no certificate")
    return OcspQuery(der, tuple(cert_ids), nonce)
