"""One fuzz target per wire parser (issue 16).

Each target takes the raw bytes a client controls, runs them through the same decoding the
protocol front-end does, and lets only the protocol's own error type escape as "handled":
anything else propagates, and the fuzzer (atheris) or the corpus replay (tests/test_fuzz.py)
reports it as a crash. The targets call the real parsers, not copies of them; where the
front-end glues two parsers (the EST body is base64 around a PKCS#10 request), the target
glues them the same way.

Keys and certificates the targets need (the SCEP RA) are fixed test fixtures under
``tests/fixtures/fuzz``, so that the seeds made by ``fuzz/make_seeds.py`` decrypt.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from yarl import URL

from ca_core import admin
from ca_core.authority import parse_csr
from ca_core.cms import (
    BadSignature,
    CmsError,
    UnsupportedAlgorithm,
    open_enveloped,
    unverified_signed_attributes,
    verify_signed,
)
from ca_core.errors import BadRequest, CAError
from ca_core.org_policy import OrgPolicy
from ca_core.scep import ScepService
from ca_core.signers.base import SoftwareSigner
from ca_core.tsa import TimeStampRejected
from gateway.config import ConfigError, load_config
from protocols.acme import jws
from protocols.acme.problems import AcmeProblem
from protocols.est import codec as est_codec
from protocols.ocsp import codec as ocsp_codec
from protocols.ocsp import http as ocsp_http
from protocols.rest import api as rest_api
from protocols.tsa import codec as tsa_codec
from va.validator import Validator

# A test fixture (no secret): the SCEP seeds in corpus/ are encrypted to this RA key.
KEYS = Path(__file__).parent.parent / "tests" / "fixtures" / "fuzz"

Target = Callable[[bytes], None]


def _text(data: bytes) -> str:
    # What aiohttp hands a handler for non-UTF-8 bytes in a URL or header: surrogates.
    return data.decode("utf-8", "surrogateescape")


def _csr(data: bytes) -> None:
    """A CSR as every front-end reads one: BadCSR (a BadRequest) or a request."""
    try:
        csr = parse_csr(data)
    except BadRequest:
        return
    csr.is_signature_valid  # noqa: B018  # the signature check runs on every front-end


# --- ACME -----------------------------------------------------------------------------

def _structured_jws(data: bytes) -> bytes:
    # Byte mutations of a whole JWS rarely survive base64url, so most inputs spell its
    # parts in the clear (protected header NUL payload NUL signature) and are encoded here:
    # the fuzzer then mutates the JSON the parser reads after decoding.
    protected, _, rest = data.partition(b"\x00")
    payload, _, signature = rest.partition(b"\x00")
    return json.dumps({"protected": jws.b64url(protected), "payload": jws.b64url(payload),
                       "signature": jws.b64url(signature)}).encode()


def acme_jws(data: bytes) -> None:
    """A flattened JWS, its protected header's key, its payload and a CSR inside it; an
    input starting with "{" is the JWS as sent, any other its parts (_structured_jws)."""
    if not data.startswith(b"{"):
        data = _structured_jws(data)
    try:
        parsed = jws.parse(data)
        header = parsed.protected
        if "jwk" in header:
            key = jws.public_key(header["jwk"])
            if parsed.alg in jws.MAC_ALGORITHMS:
                jws.verify_mac(parsed, b"0" * 32)
            else:
                jws.verify(parsed, key)
        payload = parsed.payload_json() if parsed.payload else {}
        csr = payload.get("csr")
        if isinstance(csr, str):
            _csr(jws.b64url_decode(csr, "csr"))
        eab = payload.get("externalAccountBinding")
        if isinstance(eab, dict):
            inner = jws.parse(eab)
            jws.verify_mac(inner, b"0" * 32)
    except AcmeProblem:
        return


# --- EST ------------------------------------------------------------------------------

def est(data: bytes) -> None:
    """The base64 body around a PKCS#10 request (simpleenroll, serverkeygen), the Basic
    credentials and a client certificate forwarded by a proxy in a header."""
    selector, body = (data[0], data[1:]) if data else (0, b"")
    if selector % 3 == 0:
        try:
            der = est_codec.decode_base64(body)
        except BadRequest:
            return
        _csr(der)
    elif selector % 3 == 1:
        try:
            est_codec.decode_basic(_text(body))
        except ValueError:  # binascii.Error is one: the handler answers 401
            return
    else:
        try:
            est_codec.parse_header_certificate(_text(body))
        except BadRequest:
            return


# --- SCEP -----------------------------------------------------------------------------

_RA: tuple[SoftwareSigner, x509.Certificate] | None = None


def _ra() -> tuple[SoftwareSigner, x509.Certificate]:
    global _RA
    if _RA is None:
        from ca_core.keys import spec_of

        key = serialization.load_pem_private_key((KEYS / "scep_ra.key").read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        certificate = x509.load_pem_x509_certificate((KEYS / "scep_ra.pem").read_bytes())
        _RA = SoftwareSigner(key, spec_of(key.public_key()), "file:fuzz-ra"), certificate
    return _RA


def scep(data: bytes) -> None:
    """pkiMessage (RFC 8894 3): the SignedData, its SCEP attributes, the EnvelopedData it
    signs (decrypted with the RA key) and the PKCS#10 request inside: what
    ScepService.pki_operation reads before it looks anything up."""
    signer, certificate = _ra()
    try:
        try:
            signed = verify_signed(data)
        except (UnsupportedAlgorithm, BadSignature):
            ScepService._request_attributes(unverified_signed_attributes(data))
            return
        ScepService._request_attributes(signed.signed_attrs)
        opened = asyncio.run(open_enveloped(signed.content, signer, certificate))
    except (CmsError, BadRequest):
        return
    _csr(opened.content)


# --- OCSP -----------------------------------------------------------------------------

def ocsp_der(data: bytes) -> None:
    """An OCSPRequest in a POST body."""
    try:
        ocsp_codec.decode_request(data)
    except BadRequest:
        return


def ocsp_get(data: bytes) -> None:
    """The URL path of a GET (RFC 6960 A.1) and the request it holds."""
    try:
        der = ocsp_http._der_from_path("/ocsp/" + _text(data))
        ocsp_codec.decode_request(der)
    except BadRequest:
        return


# --- TSA ------------------------------------------------------------------------------

def tsa(data: bytes) -> None:
    """A TimeStampReq (RFC 3161 2.4.1)."""
    try:
        tsa_codec.decode_request(data)
    except TimeStampRejected:
        return


# --- REST -----------------------------------------------------------------------------

class _Body:
    """What rest_api._json_body reads of an aiohttp request."""

    content_type = "application/json"

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self) -> bytes:
        return self._data


def _run(coroutine: Any) -> Any:
    # _json_body never suspends on _Body: drive it without an event loop.
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine suspended")


class _Query:
    """What the parameter readers use of an aiohttp request: its query, parsed by yarl as
    aiohttp parses it (make_mocked_request is 30 times slower)."""

    def __init__(self, text: str) -> None:
        self.query = URL("/api/v1/certificates?" + text).query


_FIELDS: tuple[tuple[str, type], ...] = (
    ("csr", str), ("validity_days", int), ("profile", str), ("organization", str),
    ("reason", str), ("role", str), ("name", str), ("expires_in_days", int), ("slug", str),
    ("status", str), ("isolation", str),
)
_QUERY = ("status", "profile", "organization", "q", "cursor", "format", "actor", "action",
          "resource")


def rest(data: bytes) -> None:
    """A JSON body with every field the handlers read, then the same bytes as a query
    string with every parameter, the cursors included."""
    try:
        body = _run(rest_api._json_body(_Body(data)))  # type: ignore[arg-type]
        for name, kind in _FIELDS:
            rest_api._field(body, name, kind)
        rest_api._date(body, "invalidity_date")
        rest_api._change(body)
        if "policy" in body:
            OrgPolicy.parse(body["policy"])
    except BadRequest:
        pass
    request = _Query(_text(data))
    try:
        for name in _QUERY:
            rest_api._param(request, name)  # type: ignore[arg-type]
        for name in ("expiring_before", "since", "until"):
            rest_api._time_param(request, name)  # type: ignore[arg-type]
        admin.page_limit(rest_api._limit(request))  # type: ignore[arg-type]
        cursor = rest_api._param(request, "cursor")  # type: ignore[arg-type]
        try:
            admin.time_id_cursor(cursor)
        finally:
            admin.seq_cursor(cursor)
    except BadRequest:
        return


# --- configuration ----------------------------------------------------------------------

_CONFIG_DIR: list[str] = []  # made on first use, not on import


def config(data: bytes) -> None:
    """The TOML configuration file: ConfigError, or a configuration."""
    if not _CONFIG_DIR:
        _CONFIG_DIR.append(tempfile.mkdtemp(prefix="vcc-fuzz-config-"))
    path = os.path.join(_CONFIG_DIR[0], "config.toml")
    with open(path, "wb") as handle:
        handle.write(data)
    try:
        loaded = load_config(environ={}, path=path)
    except ConfigError:
        return
    # The settings objects the gateway builds at start-up from a loaded configuration.
    try:
        loaded.acme_settings()
        Validator(loaded.acme_validation_settings())
        loaded.est_settings()
        loaded.scep_settings()
    except (ConfigError, CAError):
        return


TARGETS: dict[str, Target] = {
    "acme_jws": acme_jws,
    "est": est,
    "scep": scep,
    "ocsp_der": ocsp_der,
    "ocsp_get": ocsp_get,
    "tsa": tsa,
    "rest": rest,
    "config": config,
}
