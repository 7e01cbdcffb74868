"""The OCSP responder (RFC 6960, RFC 5019) through the HTTP app, on the in-process cache and
on Redis: statuses, signatures, precomputation, revocation, caching headers, GET forms,
several CertIDs, nonces, the refresher, responder renewal, and every kind of bad input."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import urllib.parse
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient
from asn1crypto import algos as a_algos
from asn1crypto import core as a_core
from asn1crypto import ocsp as a_ocsp
from asn1crypto import x509 as a_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca_core.authority import Authority, IssuanceRequest, IssuedCertificate
from ca_core.hierarchy import ensure_organization
from ca_core.ocsp import OcspResponder, OcspSettings, _Status, cache_key
from ca_core.principal import Principal
from ca_core.records import AuditEvent, Revocation
from ca_core.response_cache import CachedResponse, CacheUnavailable, ResponseCache
from db.cache import MemoryResponseCache, RedisResponseCache
from gateway.app import build_http_app
from gateway.config import load_config
from gateway.runtime import Services
from gateway.status_jobs import watch_revocations
from protocols.ocsp.codec import decode_request
from tests.helpers import fresh_services, make_csr
from tests.redisutil import REDIS_URL, delete_prefix, require_redis, unique_prefix

ClientFactory = Callable[..., Any]
SYSTEM = Principal.system("test")
DER = serialization.Encoding.DER


# --- fixtures and helpers ----------------------------------------------------------------

@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def services(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Services]:
    """Gateway services with loaded OCSP responders, on either cache backend."""
    env: dict[str, str] = {}
    prefix = ""
    if request.param == "redis":
        require_redis()
        prefix = unique_prefix()
        env |= {"VCC_PKI_REDIS_URL": REDIS_URL, "VCC_PKI_REDIS_KEY_PREFIX": prefix}
    try:
        async with fresh_services(tmp_path, **env) as opened:
            await opened.ocsp.load(create=True)
            yield opened
    finally:
        if prefix:
            await delete_prefix(prefix)


@pytest.fixture
async def client(services: Services, aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(build_http_app(services))  # type: ignore[no-any-return]


async def issue(services: Services, org: str | None = None) -> IssuedCertificate:
    issued = await services.authority.issue(
        IssuanceRequest(csr=make_csr(), profile="vcc_service", org=org), SYSTEM)
    await services.ocsp.drain()
    return issued


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate,
                 algorithm: hashes.HashAlgorithm | None = None, nonce: bytes | None = None
                 ) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(DER)


def _cert_id(cert: x509.Certificate, issuer: x509.Certificate) -> a_ocsp.CertId:
    request = a_ocsp.OCSPRequest.load(ocsp_request(cert, issuer))
    return request["tbs_request"]["request_list"][0]["req_cert"]


def multi_request(pairs: list[tuple[x509.Certificate, x509.Certificate]]) -> bytes:
    """Several CertIDs in one request (cryptography can only build one)."""
    items = [{"req_cert": _cert_id(cert, issuer)} for cert, issuer in pairs]
    return a_ocsp.OCSPRequest({"tbs_request": {"request_list": items}}).dump()


async def post(client: TestClient, body: bytes, content_type: str = "application/ocsp-request"
               ) -> tuple[Any, bytes]:
    response = await client.post("/ocsp", data=body, headers={"Content-Type": content_type})
    return response, await response.read()


def verify(der: bytes, ca: x509.Certificate) -> ocsp.OCSPResponse:
    """Check what a relying party checks (RFC 6960 4.2.2.2, 3.2) and return the response."""
    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    (responder,) = response.certificates
    responder.verify_directly_issued_by(ca)
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    public_key = responder.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert response.signature_hash_algorithm is not None
    public_key.verify(response.signature, response.tbs_response_bytes,
                      ec.ECDSA(response.signature_hash_algorithm))
    assert response.responder_key_hash == \
        x509.SubjectKeyIdentifier.from_public_key(public_key).digest
    assert response.responder_name is None  # ResponderID byKey
    return response


def status_of(der: bytes) -> ocsp.OCSPResponseStatus:
    return ocsp.load_der_ocsp_response(der).response_status


def foreign_pair() -> tuple[x509.Certificate, x509.Certificate]:
    """A certificate and its issuer from a CA this gateway does not run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Elsewhere CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    return leaf, ca


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


# --- statuses and signatures -------------------------------------------------------------

async def test_good_then_revoked(client: TestClient, services: Services) -> None:
    issued = await issue(services)
    ca = issued.chain[0]
    response, body = await post(client, ocsp_request(issued.certificate, ca))
    assert response.status == 200
    assert response.content_type == "application/ocsp-response"
    good = verify(body, ca)
    assert good.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert good.serial_number == issued.certificate.serial_number
    assert good.next_update_utc is not None
    assert good.next_update_utc - good.this_update_utc == dt.timedelta(days=4)
    cache_control = response.headers["Cache-Control"]
    assert cache_control.endswith(", public, no-transform, must-revalidate")
    assert 345_000 < int(cache_control.split(",")[0].removeprefix("max-age=")) <= 345_600
    assert response.headers["ETag"].startswith('"')
    assert response.headers["Last-Modified"].endswith(" GMT")
    assert response.headers["Expires"].endswith(" GMT")

    await services.authority.revoke(issued.serial, "key_compromise", SYSTEM)
    for algorithm in (hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        _, body = await post(client, ocsp_request(issued.certificate, ca, algorithm))
        revoked = verify(body, ca)
        assert revoked.certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert revoked.revocation_reason is x509.ReasonFlags.key_compromise
        assert revoked.revocation_time_utc is not None
        assert isinstance(revoked.hash_algorithm, type(algorithm))


async def test_revocation_time_and_reason_are_the_revocations_in_every_response(
    client: TestClient, services: Services
) -> None:
    """Every way a revoked response is built (live for one CertID, live for several, the
    refresher, warm-up and the revocation watcher of a process with an empty cache) says
    the time and reason of the revoke call, not the time it was built: the clock is moved
    hours and days between revoking and building, past the refresh point."""
    clock = Clock()
    services.authority.clock = clock
    services.ocsp.clock = clock
    compromised, superseded, good = [await issue(services) for _ in range(3)]
    ca = good.chain[0]
    clock.now += dt.timedelta(hours=1, microseconds=250_000)
    first = await services.authority.revoke(compromised.serial, "key_compromise", SYSTEM)
    clock.now += dt.timedelta(minutes=37, seconds=11)
    second = await services.authority.revoke(superseded.serial, "superseded", SYSTEM)
    expected = {
        compromised.certificate.serial_number: (first.revoked_at,
                                                x509.ReasonFlags.key_compromise),
        superseded.certificate.serial_number: (second.revoked_at,
                                               x509.ReasonFlags.superseded),
    }
    assert first.revoked_at == (clock.now - dt.timedelta(minutes=37, seconds=11)).replace(
        microsecond=0)
    assert second.revoked_at == clock.now.replace(microsecond=0)
    clock.now += dt.timedelta(days=2, hours=5)  # past half of the 4-day validity
    built_at = clock.now.replace(microsecond=0)

    def check(single: Any, what: str) -> None:
        revoked_at, reason = expected[single.serial_number]
        assert single.certificate_status is ocsp.OCSPCertStatus.REVOKED, what
        assert single.this_update_utc == built_at, what  # built now, not at revocation
        assert (single.revocation_time_utc, single.revocation_reason) == (revoked_at, reason), \
            what

    for issued in (compromised, superseded):  # SHA-384 CertIDs: not precomputed, signed live
        _, body = await post(client, ocsp_request(issued.certificate, ca, hashes.SHA384()))
        check(verify(body, ca), "live, one CertID")
    _, body = await post(client, multi_request(
        [(good.certificate, ca), (compromised.certificate, ca), (superseded.certificate, ca)]))
    several = [r for r in verify(body, ca).responses
               if r.certificate_status is ocsp.OCSPCertStatus.REVOKED]
    assert len(several) == 2
    for single in several:
        check(single, "live, several CertIDs")

    assert await services.ocsp.refresh_due() >= 2
    issuer = services.ocsp._by_ca_id[good.record.issuer_ca_id]
    for serial in expected:
        entry = await services.cache.get(cache_key("sha1", issuer.key_id, serial))
        assert entry is not None
        check(verify(entry.der, ca), "refreshed")

    warmed = OcspResponder(services.authority, MemoryResponseCache(), clock=clock)
    await warmed.load()
    assert await warmed.warm() >= 3
    watcher = OcspResponder(services.authority, MemoryResponseCache(), clock=clock)
    await watcher.load()
    await watcher.apply_revocations(await services.store.revocations_since(0))
    for responder, what in ((warmed, "warm-up"), (watcher, "watcher")):
        for serial in expected:
            entry = await responder.cache.get(cache_key("sha1", issuer.key_id, serial))
            assert entry is not None, what
            check(verify(entry.der, ca), what)


async def test_unspecified_reason_is_left_out(client: TestClient, services: Services) -> None:
    issued = await issue(services)
    await services.authority.revoke(issued.serial, "unspecified", SYSTEM)
    _, body = await post(client, ocsp_request(issued.certificate, issued.chain[0]))
    revoked = verify(body, issued.chain[0])
    assert revoked.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason is None


async def test_cache_hit_needs_no_store_and_no_signature(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = await issue(services)
    request = ocsp_request(issued.certificate, issued.chain[0])
    _, first = await post(client, request)

    async def fail(*args: object, **kwargs: object) -> Any:
        raise AssertionError("a cache hit touched the store or a key")

    store = services.store
    for name in ("certificate_statuses", "get_certificate", "find_certificates_by_serial"):
        monkeypatch.setattr(store, name, fail)
    for issuer in services.ocsp._by_ca_id.values():
        assert issuer.responder is not None
        monkeypatch.setattr(issuer.responder.signer, "run", fail)
    for _ in range(3):
        response, body = await post(client, request)
        assert response.status == 200 and body == first


async def test_precomputed_at_issuance(services: Services) -> None:
    issued = await issue(services)
    issuer = services.ocsp._by_ca_id[issued.record.issuer_ca_id]
    entry = await services.cache.get(cache_key("sha1", issuer.key_id,
                                               issued.certificate.serial_number))
    assert entry is not None and entry.der and not entry.revoked
    assert ocsp.load_der_ocsp_response(entry.der).certificate_status is \
        ocsp.OCSPCertStatus.GOOD


async def test_signed_single_responses(services: Services) -> None:
    """The single responses the responder signs without a nonce (the precompute, the
    revocation, the refresher, live misses), made by cryptography's builder: each carries
    the status, reason, times and CertID asked for, and the CertID the cache entry keeps
    (what a request must contain to be answered from the cache) is byte for byte the one in
    the response and the one cryptography's request builder encodes."""
    clock = Clock()
    services.ocsp.clock = clock
    issued = await issue(services)
    issuer = services.ocsp._by_ca_id[issued.record.issuer_ca_id]
    responder = issuer.responder
    assert responder is not None
    serial = issued.certificate.serial_number
    revoked_at = clock.now.replace(microsecond=0) - dt.timedelta(minutes=3)
    statuses = [_Status(serial), _Status(serial, revoked_at, "unspecified"),
                _Status(serial, revoked_at, "key_compromise"),
                _Status(serial, revoked_at, "certificate_hold"),
                _Status(2**159 - 1), _Status(0x80), _Status(1)]
    for algorithm in ("sha1", "sha256", "sha384"):
        name_hash, key_hash = issuer.hashes[algorithm]
        for status in statuses:
            entry = await services.ocsp._sign(issuer, responder, algorithm, status)
            parsed = a_ocsp.OCSPResponse.load(entry.der)
            assert parsed.dump(force=True) == entry.der  # canonical DER
            single = parsed["response_bytes"]["response"].parsed[
                "tbs_response_data"]["responses"][0]
            assert single["cert_id"].dump() == entry.cert_id
            request = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
                name_hash, key_hash, status.serial,
                getattr(hashes, algorithm.upper())()).build().public_bytes(DER)
            assert entry.cert_id in request
            loaded = ocsp.load_der_ocsp_response(entry.der)
            assert loaded.serial_number == status.serial
            assert loaded.this_update_utc == clock.now.replace(microsecond=0)
            assert (entry.this_update, entry.revoked) == (
                int(clock.now.replace(microsecond=0).timestamp()), status.revoked_at is not None)
            if status.revoked_at is None:
                assert loaded.certificate_status is ocsp.OCSPCertStatus.GOOD
            else:
                assert loaded.revocation_time_utc == status.revoked_at
                reason = loaded.revocation_reason
                assert (reason.name if reason is not None else "unspecified") == status.reason
            assert loaded.responder_key_hash == a_x509.Certificate.load(
                responder.certificate.public_bytes(DER)).public_key.sha1
            assert loaded.certificates == [responder.certificate]
            responder.certificate.public_key().verify(  # type: ignore[union-attr]
                loaded.signature, loaded.tbs_response_bytes,
                ec.ECDSA(loaded.signature_hash_algorithm))  # type: ignore[arg-type]


def test_cert_id_encodes_as_asn1crypto_does() -> None:
    """The CertID prefix (per issuer) and the serial make the CertID asn1crypto encodes."""
    prefix = (a_algos.DigestAlgorithm({"algorithm": "sha1", "parameters": a_core.Null()}).dump()
              + a_core.OctetString(b"n" * 20).dump() + a_core.OctetString(b"k" * 20).dump())
    issuer = cast(Any, dataclasses.make_dataclass("I", ["cert_id_prefix"]))({"sha1": prefix})
    for value in (0, 1, 0x7F, 0x80, 0xFF, 0x100, 2**63, 2**64 - 1, 2**159, 2**160 - 1):
        expected = a_ocsp.CertId({
            "hash_algorithm": {"algorithm": "sha1", "parameters": a_core.Null()},
            "issuer_name_hash": b"n" * 20, "issuer_key_hash": b"k" * 20,
            "serial_number": value}).dump()
        assert OcspResponder._cert_id(cast(Any, None), issuer, "sha1", value) == expected


async def test_unknown_serial_and_foreign_issuer_are_unauthorized(
    client: TestClient, services: Services
) -> None:
    issued = await issue(services)
    ca = issued.chain[0]
    never_issued = (x509.CertificateBuilder().subject_name(issued.certificate.subject)
                    .issuer_name(ca.subject).public_key(issued.certificate.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(issued.certificate.not_valid_before_utc)
                    .not_valid_after(issued.certificate.not_valid_after_utc)
                    .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    for request in (ocsp_request(never_issued, ca), ocsp_request(*foreign_pair()),
                    ocsp_request(issued.certificate, issued.chain[1]),  # wrong issuer
                    ocsp_request(issued.certificate, ca, hashes.SHA224())):  # not indexed
        response, body = await post(client, request)
        assert response.status == 200
        assert status_of(body) is ocsp.OCSPResponseStatus.UNAUTHORIZED
        assert response.headers["Cache-Control"] == "max-age=0, no-cache"


# --- GET (RFC 5019 5) and HTTP caching -----------------------------------------------------

async def test_get_forms_and_if_none_match(client: TestClient, services: Services) -> None:
    issued = await issue(services)
    request = ocsp_request(issued.certificate, issued.chain[0])
    encoded = base64.b64encode(request).decode()
    # Find a request whose base64 has '+' and '/' (serials are random): try a few.
    for _ in range(50):
        if "+" in encoded and "/" in encoded:
            break
        issued = await issue(services)
        request = ocsp_request(issued.certificate, issued.chain[0])
        encoded = base64.b64encode(request).decode()
    else:
        pytest.fail("no request with '+' and '/' in its base64 in 50 tries")
    forms = {
        "url-encoded": urllib.parse.quote(encoded, safe=""),
        "raw": encoded,
        "plus as space": urllib.parse.quote(encoded.replace("+", " "), safe="/="),
        "doubled slash": "/" + encoded,
        "no padding": encoded.rstrip("="),
        "url-safe alphabet": base64.urlsafe_b64encode(request).decode(),
    }
    bodies = set()
    for name, path in forms.items():
        response = await client.get(f"/ocsp/{path}")
        body = await response.read()
        assert response.status == 200, name
        assert status_of(body) is ocsp.OCSPResponseStatus.SUCCESSFUL, name
        bodies.add(body)
    assert len(bodies) == 1  # all served from the same cache entry
    response = await client.get(f"/ocsp/{forms['url-encoded']}")
    etag = response.headers["ETag"]
    again = await client.get(f"/ocsp/{forms['url-encoded']}", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == etag


# --- several CertIDs, exact echo, nonces ---------------------------------------------------

async def test_several_cert_ids_in_one_request(client: TestClient, services: Services) -> None:
    first, second, third = [await issue(services) for _ in range(3)]
    ca = first.chain[0]
    await services.authority.revoke(second.serial, "superseded", SYSTEM)
    request = multi_request([(first.certificate, ca), (second.certificate, ca),
                             (third.certificate, ca)])
    response, body = await post(client, request)
    assert response.status == 200
    parsed = verify(body, ca)
    statuses = {r.serial_number: r.certificate_status for r in parsed.responses}
    assert statuses == {
        first.certificate.serial_number: ocsp.OCSPCertStatus.GOOD,
        second.certificate.serial_number: ocsp.OCSPCertStatus.REVOKED,
        third.certificate.serial_number: ocsp.OCSPCertStatus.GOOD,
    }
    asked = [item["req_cert"].dump() for item in
             a_ocsp.OCSPRequest.load(request)["tbs_request"]["request_list"]]
    answered = [single["cert_id"].dump() for single in a_ocsp.OCSPResponse.load(body)
                .basic_ocsp_response["tbs_response_data"]["responses"]]
    assert answered == asked


async def test_several_cert_ids_limits(client: TestClient, services: Services) -> None:
    issued = await issue(services)
    ca = issued.chain[0]
    await ensure_organization(services.authority, "health", "Health")
    await services.ocsp.load(create=True)
    other = await issue(services, org="health")
    mixed = multi_request([(issued.certificate, ca), (other.certificate, other.chain[0])])
    _, body = await post(client, mixed)
    assert status_of(body) is ocsp.OCSPResponseStatus.UNAUTHORIZED
    foreign = multi_request([(issued.certificate, ca), foreign_pair()])
    _, body = await post(client, foreign)
    assert status_of(body) is ocsp.OCSPResponseStatus.UNAUTHORIZED
    too_many = multi_request([(issued.certificate, ca)] * 33)
    _, body = await post(client, too_many)
    assert status_of(body) is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    # the second organization's own certificates are answered by its own responder
    _, body = await post(client, ocsp_request(other.certificate, other.chain[0]))
    assert verify(body, other.chain[0]).certificate_status is ocsp.OCSPCertStatus.GOOD


async def test_cert_id_without_null_parameters_is_echoed_exactly(
    client: TestClient, services: Services
) -> None:
    issued = await issue(services)
    cert_id = _cert_id(issued.certificate, issued.chain[0])
    # id-sha1 with the parameters absent (RFC 5754 2: both forms occur); asn1crypto would
    # add the NULL when building, so the AlgorithmIdentifier is loaded from its DER.
    sha1_without_null = a_algos.DigestAlgorithm.load(bytes.fromhex("300706052b0e03021a"))
    bare = a_ocsp.CertId({
        "hash_algorithm": sha1_without_null,
        "issuer_name_hash": cert_id["issuer_name_hash"],
        "issuer_key_hash": cert_id["issuer_key_hash"],
        "serial_number": cert_id["serial_number"],
    })
    request = a_ocsp.OCSPRequest({"tbs_request": {"request_list": [{"req_cert": bare}]}})
    _, body = await post(client, request.dump())
    verify(body, issued.chain[0])
    answered = a_ocsp.OCSPResponse.load(body).basic_ocsp_response[
        "tbs_response_data"]["responses"][0]["cert_id"]
    assert answered.dump() == bare.dump() != cert_id.dump()
    # That answer is not stored for the CertID's usual form: a canonical request still
    # gets its own CertID back.
    _, body = await post(client, ocsp_request(issued.certificate, issued.chain[0]))
    answered = a_ocsp.OCSPResponse.load(body).basic_ocsp_response[
        "tbs_response_data"]["responses"][0]["cert_id"]
    assert answered.dump() == cert_id.dump()


async def test_nonce_ignored_by_default(client: TestClient, services: Services) -> None:
    issued = await issue(services)
    ca = issued.chain[0]
    _, plain = await post(client, ocsp_request(issued.certificate, ca))
    _, body = await post(client, ocsp_request(issued.certificate, ca, nonce=b"n" * 200))
    assert body == plain  # the precomputed response, no nonce (RFC 5019)
    with pytest.raises(x509.ExtensionNotFound):
        ocsp.load_der_ocsp_response(body).extensions.get_extension_for_class(x509.OCSPNonce)


async def test_nonce_echoed_when_enabled(
    services: Services, aiohttp_client: ClientFactory
) -> None:
    issued = await issue(services)
    ca = issued.chain[0]
    responder = OcspResponder(services.authority, services.cache, OcspSettings(nonce=True))
    await responder.load()
    services.ocsp = responder
    client = await aiohttp_client(build_http_app(services))
    for nonce in (b"\x01", b"0123456789abcdef", b"x" * 128):
        response, body = await post(client, ocsp_request(issued.certificate, ca, nonce=nonce))
        parsed = verify(body, ca)
        echoed = parsed.extensions.get_extension_for_class(x509.OCSPNonce)
        assert echoed.value.nonce == nonce and echoed.critical is False
        assert response.headers["Cache-Control"] == "max-age=0, no-cache"
    _, body = await post(client, ocsp_request(issued.certificate, ca, nonce=b"x" * 129))
    assert status_of(body) is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    # several CertIDs with a nonce: asn1crypto path, nonce echoed
    request = a_ocsp.OCSPRequest({"tbs_request": {
        "request_list": [{"req_cert": _cert_id(issued.certificate, ca)}] * 2,
        "request_extensions": [{"extn_id": "nonce", "extn_value": b"abc"}],
    }}).dump()
    _, body = await post(client, request)
    assert verify(body, ca).extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == \
        b"abc"


# --- bad input ---------------------------------------------------------------------------

async def test_bad_input(client: TestClient, services: Services,
                         caplog: pytest.LogCaptureFixture) -> None:
    issued = await issue(services)
    good = ocsp_request(issued.certificate, issued.chain[0])
    malformed_posts = {
        "garbage": b"this is not DER",
        "truncated": good[:-7],
        "empty": b"",
        "trailing bytes": good + b"\x00",
        "wrong structure": issued.certificate.public_bytes(DER),
        "no CertID": a_ocsp.OCSPRequest({"tbs_request": {"request_list": []}}).dump(),
        "deep nesting": b"\x30\x80" * 4000,
        "nonce twice": a_ocsp.OCSPRequest({"tbs_request": {
            "request_list": [{"req_cert": _cert_id(issued.certificate, issued.chain[0])}],
            "request_extensions": [{"extn_id": "nonce", "critical": False,
                                    "extn_value": b"12345678"}] * 2}}).dump(),
        # RFC 6960 4.4: a critical extension the responder does not know is not ignored
        "critical unknown request extension": a_ocsp.OCSPRequest({"tbs_request": {
            "request_list": [{"req_cert": _cert_id(issued.certificate, issued.chain[0])}],
            "request_extensions": [{"extn_id": "1.2.3.4", "critical": True,
                                    "extn_value": b"\x05\x00"}]}}).dump(),
        "critical unknown single-request extension": a_ocsp.OCSPRequest({"tbs_request": {
            "request_list": [{
                "req_cert": _cert_id(issued.certificate, issued.chain[0]),
                "single_request_extensions": [{"extn_id": "1.2.3.4", "critical": True,
                                               "extn_value": b"\x05\x00"}]}]}}).dump(),
    }
    # the same extensions, not critical, are ignored: the answer is the status
    for critical_free in (
        {"request_extensions": [{"extn_id": "1.2.3.4", "critical": False,
                                 "extn_value": b"\x05\x00"}],
         "request_list": [{"req_cert": _cert_id(issued.certificate, issued.chain[0])}]},
        {"request_list": [{"req_cert": _cert_id(issued.certificate, issued.chain[0]),
                           "single_request_extensions": [{"extn_id": "1.2.3.4",
                                                          "critical": False,
                                                          "extn_value": b"\x05\x00"}]}]},
    ):
        _, answer = await post(client, a_ocsp.OCSPRequest({"tbs_request": critical_free}).dump())
        assert status_of(answer) is ocsp.OCSPResponseStatus.SUCCESSFUL
    for name, body in malformed_posts.items():
        response, answer = await post(client, body)
        assert response.status == 200, name
        assert status_of(answer) is ocsp.OCSPResponseStatus.MALFORMED_REQUEST, name
        assert response.headers["Cache-Control"] == "max-age=0, no-cache"
    for path in ("/ocsp/", "/ocsp", "/ocsp/not%20base64!!", "/ocsp/AAAA", "/ocsp/" + "A" * 6000,
                 "/ocsp/%ZZ", "/ocsp/" + urllib.parse.quote(base64.b64encode(good[:20]))):
        response = await client.get(path)
        assert response.status == 200, path
        assert status_of(await response.read()) is \
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST, path
    response, _ = await post(client, good, content_type="text/plain")
    assert response.status == 415
    response, _ = await post(client, b"\x30" * (16 * 1024 + 1))
    assert response.status == 413
    response, _ = await post(client, b"\x30" * (300 * 1024))
    assert response.status == 413
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_internal_failure_is_internal_error_not_500(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    issued = await issue(services)

    async def broken(query: object) -> CachedResponse:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(services.ocsp, "answer", broken)
    response, body = await post(client, ocsp_request(issued.certificate, issued.chain[0]))
    assert response.status == 200
    assert status_of(body) is ocsp.OCSPResponseStatus.INTERNAL_ERROR
    assert b"secret" not in body
    caplog.clear()


async def test_busy_responder_answers_try_later(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = await issue(services)
    request = ocsp_request(issued.certificate, issued.chain[0], hashes.SHA256())  # a miss
    monkeypatch.setattr(services.ocsp, "settings", OcspSettings(live_timeout=0.05))
    started = asyncio.Event()

    async def slow(*args: object, **kwargs: object) -> list[object]:
        started.set()
        await asyncio.sleep(10)
        return []

    monkeypatch.setattr(services.store, "certificate_statuses", slow)
    _, body = await post(client, request)
    assert started.is_set()
    assert status_of(body) is ocsp.OCSPResponseStatus.TRY_LATER
    from ca_core.errors import Unavailable

    with pytest.raises(Unavailable) as raised:
        await services.ocsp.answer(decode_request(request))
    assert raised.value.detail == "the responder is busy"


# --- revocations by other processes, the cache rules ------------------------------------

async def test_revocation_by_another_process_is_seen_within_a_second(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = await issue(services)
    ca = issued.chain[0]
    request = ocsp_request(issued.certificate, ca)
    _, body = await post(client, request)
    assert verify(body, ca).certificate_status is ocsp.OCSPCertStatus.GOOD
    monkeypatch.setattr(services, "config", load_config(environ={
        "VCC_PKI_DATA_DIR": str(services.config.data_dir), "VCC_PKI_REVOCATION_POLL_MS": "50"}))
    # The watcher's first look for revocations comes after it has taken its starting
    # point: a revocation made after that is one it must find.
    polling = asyncio.Event()
    revocations_since = services.store.revocations_since

    async def first_poll_seen(generation: int, limit: int = 1000) -> Any:
        polling.set()
        return await revocations_since(generation, limit)

    monkeypatch.setattr(services.store, "revocations_since", first_poll_seen)
    watcher = asyncio.create_task(watch_revocations(services))
    try:
        # Another process: its own Authority on the same store, no listener on this cache.
        other = Authority(services.store, services.keys, services.authority.settings)
        await asyncio.wait_for(polling.wait(), timeout=10)
        await other.revoke(issued.serial, "key_compromise", SYSTEM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while True:
            _, body = await post(client, request)
            if verify(body, ca).certificate_status is ocsp.OCSPCertStatus.REVOKED:
                break
            assert loop.time() < deadline, "revocation not visible within 1 s"
            await asyncio.sleep(0.02)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def test_good_never_replaces_revoked(services: Services) -> None:
    cache = services.cache
    now = int(dt.datetime.now(dt.UTC).timestamp())
    good = CachedResponse(b"good", False, now, now + 3600, b"id", '"g"')
    revoked = CachedResponse(b"revoked", True, now, now + 3600, b"id", '"r"')
    assert await cache.put("sha1:k:1", good, now + 60)
    assert await cache.put("sha1:k:1", revoked, now + 60)
    assert not await cache.put("sha1:k:1", good, now + 60)
    assert await cache.get("sha1:k:1") == revoked
    assert await cache.put("sha1:k:2", CachedResponse.tombstone(now + 3600), None)
    assert not await cache.put("sha1:k:2", good, None)
    assert await cache.put("sha1:k:2", revoked, None)
    assert await cache.get("sha1:k:2") == revoked
    assert await cache.due(now + 61, 10) == ["sha1:k:1"]
    await cache.forget("sha1:k:1")
    assert await cache.due(now + 61, 10) == []
    await cache.set_applied_generation(5)
    await cache.set_applied_generation(3)
    assert await cache.applied_generation() == 5


async def test_memory_cache_is_bounded_and_expires() -> None:
    clock = [1000.0]
    cache = MemoryResponseCache(max_entries=3, clock=lambda: clock[0])
    for i in range(5):
        await cache.put(f"k{i}", CachedResponse(b"x", False, 1000, 2000, b"", '""'), None)
    assert len(cache) == 3 and await cache.get("k0") is None and await cache.get("k4")
    clock[0] = 2000.0
    assert await cache.get("k4") is None


# --- refresher, responder renewal, warm-up, Redis outage --------------------------------

async def test_refresher_resigns_past_half_validity(services: Services) -> None:
    clock = Clock()
    responder = OcspResponder(services.authority, services.cache, clock=clock)
    await responder.load()
    issued = await services.authority.issue(
        IssuanceRequest(csr=make_csr(), profile="vcc_service", validity_days=3), SYSTEM)
    await responder.certificate_issued(issued)
    await responder.drain()
    issuer = responder._by_ca_id[issued.record.issuer_ca_id]
    key = cache_key("sha1", issuer.key_id, issued.certificate.serial_number)
    first = await services.cache.get(key)
    assert first is not None
    assert await responder.refresh_due() == 0
    clock.now += dt.timedelta(days=2, minutes=1)
    assert await responder.refresh_due() >= 1
    second = await services.cache.get(key)
    assert second is not None and second.this_update > first.this_update
    assert second.next_update - second.this_update == 4 * 86400
    # the certificate expires: its response is no longer kept fresh
    clock.now += dt.timedelta(days=2)
    await responder.refresh_due()
    assert key not in await services.cache.due(int(clock.now.timestamp()) + 10**7, 10**6)


async def test_responder_certificate_renewed_before_expiry(services: Services) -> None:
    clock = Clock()
    services.authority.clock = clock
    responder = OcspResponder(services.authority, services.cache, clock=clock)
    await responder.load()
    issuer = next(iter(responder._by_ca_id.values()))
    assert issuer.responder is not None
    old = issuer.responder.record
    await responder.maintain()
    assert issuer.responder.record.responder_id == old.responder_id  # idempotent
    clock.now = old.not_after - dt.timedelta(days=8)
    await responder.maintain()
    assert issuer.responder.record.responder_id != old.responder_id
    assert issuer.responder.record.not_after > old.not_after
    issued = await services.authority.issue(
        IssuanceRequest(csr=make_csr(), profile="vcc_service", validity_days=30), SYSTEM)
    request = ocsp_request(issued.certificate, issued.chain[0])
    entry = await responder.answer(decode_request(request))
    parsed = verify(entry.der, issued.chain[0])
    assert parsed.certificates[0].serial_number != x509.load_der_x509_certificate(
        old.certificate_der).serial_number


async def test_warm_fills_a_fresh_cache(services: Services) -> None:
    issued = [await issue(services) for _ in range(3)]
    responder = OcspResponder(services.authority, MemoryResponseCache())
    await responder.load()
    assert await responder.warm() >= 3
    assert await responder.warm() == 0
    issuer = responder._by_ca_id[issued[0].record.issuer_ca_id]
    for item in issued:
        assert await responder.cache.get(
            cache_key("sha1", issuer.key_id, item.certificate.serial_number)) is not None


async def test_redis_down_answers_live_and_refills(
    services: Services, aiohttp_client: ClientFactory, unused_tcp_port: int
) -> None:
    issued = await issue(services)
    ca = issued.chain[0]
    down = RedisResponseCache(f"redis://127.0.0.1:{unused_tcp_port}/0", prefix="vcc-pki-x:",
                              timeout=0.2)
    responder = OcspResponder(services.authority, down)
    await responder.load()
    services.ocsp = responder
    services.authority.add_listener(responder)
    client = await aiohttp_client(build_http_app(services))
    try:
        _, body = await post(client, ocsp_request(issued.certificate, ca))
        assert verify(body, ca).certificate_status is ocsp.OCSPCertStatus.GOOD
        await services.authority.revoke(issued.serial, "key_compromise", SYSTEM)
        assert responder.has_pending
        _, body = await post(client, ocsp_request(issued.certificate, ca))
        assert verify(body, ca).certificate_status is ocsp.OCSPCertStatus.REVOKED
    finally:
        await down.close()


class _Outage:
    """The real cache (in-process or Redis) behind a switch that makes every call fail as
    an unreachable Redis would: the outage is simulated, the cache is not."""

    def __init__(self, inner: ResponseCache) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise CacheUnavailable("simulated outage")
            return await attribute(*args, **kwargs)
        return call


async def test_revocation_during_a_cache_outage_reaches_the_cache_when_it_returns(
    services: Services, aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = await issue(services)
    ca = issued.chain[0]
    outage = _Outage(services.cache)
    responder = OcspResponder(services.authority, cast(ResponseCache, outage))
    await responder.load()
    await responder.warm()
    services.ocsp = responder
    services.authority.add_listener(responder)
    client = await aiohttp_client(build_http_app(services))
    request = ocsp_request(issued.certificate, ca)

    outage.down = True
    await services.authority.revoke(issued.serial, "key_compromise", SYSTEM)
    assert responder.has_pending
    _, body = await post(client, request)  # answered live meanwhile
    assert verify(body, ca).certificate_status is ocsp.OCSPCertStatus.REVOKED

    outage.down = False
    responder._pending_retry_at = 0.0  # as if the retry pause (5 s) had passed
    await responder.apply_revocations([])
    assert not responder.has_pending
    # Now the cache alone must say revoked: live answers are made impossible.
    async def no_store(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cache hit needs no store")

    monkeypatch.setattr(services.store, "certificate_statuses", no_store)
    responder._front.clear()
    _, body = await post(client, request)
    assert verify(body, ca).certificate_status is ocsp.OCSPCertStatus.REVOKED


def _revoke_behind_the_responder(services: Services, issued: IssuedCertificate) -> Any:
    """A revocation written to the store by another process (no listener of ours)."""
    return services.store.revoke_certificate(
        Revocation(issued.record.issuer_ca_id, issued.record.serial_hex,
                   issued.record.cert_id, dt.datetime.now(dt.UTC).replace(microsecond=0),
                   "key_compromise"),
        AuditEvent(event_type="certificate.revoked", category="certificate",
                   action="revoke", actor_type="system", actor_id="test"))


@pytest.mark.parametrize("services", ["memory"], indirect=True)
async def test_in_process_cache_has_no_front_cache(
    client: TestClient, services: Services
) -> None:
    """In-process, the cache itself is in memory: no front cache is kept before it, so a
    revocation another responder writes into it is answered by the very next request."""
    assert services.ocsp._front_ttl == 0
    issued = await issue(services)
    ca = issued.chain[0]
    request = ocsp_request(issued.certificate, ca)
    for _ in range(2):
        _, body = await post(client, request)
        assert verify(body, ca).certificate_status is ocsp.OCSPCertStatus.GOOD
    other = OcspResponder(services.authority, services.cache, services.ocsp.settings)
    try:
        await other.load()
        record = await _revoke_behind_the_responder(services, issued)
        assert record is not None
        await other.certificate_revoked(record)
        _, body = await post(client, request)
        assert verify(body, ca).certificate_status is ocsp.OCSPCertStatus.REVOKED
    finally:
        await other.aclose()


@pytest.mark.parametrize("services", [pytest.param("redis", marks=pytest.mark.redis)],
                         indirect=True)
async def test_front_cache_over_redis_shows_another_process_revocation_quickly(
    client: TestClient, services: Services
) -> None:
    """With Redis, hits are kept a quarter second in the process; a revocation written to
    Redis by another process is answered from Redis once that time has passed."""
    assert services.cache.shared and services.ocsp._front_ttl == 0.25
    issued = await issue(services)
    ca = issued.chain[0]
    request = ocsp_request(issued.certificate, ca)
    reads = 0
    redis_get = services.cache.get

    async def counted_get(key: str) -> CachedResponse | None:
        nonlocal reads
        reads += 1
        return await redis_get(key)

    services.cache.get = counted_get  # type: ignore[method-assign]
    for _ in range(3):
        _, body = await post(client, request)
        assert verify(body, ca).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert reads == 1  # the second and third hits came from the process
    # Another process: its own responder on the same Redis, revoking.
    prefix = services.cache.prefix  # type: ignore[attr-defined]
    other_cache = RedisResponseCache(REDIS_URL, prefix=prefix)
    other = OcspResponder(services.authority, other_cache, services.ocsp.settings)
    try:
        await other.load()
        record = await _revoke_behind_the_responder(services, issued)
        assert record is not None
        await other.certificate_revoked(record)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + services.ocsp.settings.front_cache_seconds + 0.2
        while True:
            _, body = await post(client, request)
            if verify(body, ca).certificate_status is ocsp.OCSPCertStatus.REVOKED:
                break
            assert loop.time() < deadline, "the front cache kept a good answer too long"
            await asyncio.sleep(0.02)
    finally:
        await other.aclose()
        await other_cache.close()


@pytest.mark.parametrize(("key_type", "algorithm"), [
    ("rsa-2048", x509.SignatureAlgorithmOID.RSA_WITH_SHA256),
    ("ec-p384", x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384),
])
async def test_several_cert_ids_signed_with_each_key_type(
        tmp_path: Path, aiohttp_client: ClientFactory, key_type: str,
        algorithm: x509.ObjectIdentifier) -> None:
    """The asn1crypto path (several CertIDs) names the signature algorithm of the
    responder's key (RFC 6960 4.2.1) and encodes good as [0] NULL and the nonce as a
    non-critical extension. (Responder keys are RSA or EC: profile ocsp_signing.)"""
    async with fresh_services(tmp_path, VCC_PKI_ISSUING_KEY_TYPE=key_type,
                              VCC_PKI_OCSP_NONCE="true") as services:
        await services.ocsp.load(create=True)
        first, second = await issue(services), await issue(services)
        ca = first.chain[0]
        request = a_ocsp.OCSPRequest({"tbs_request": {
            "request_list": [{"req_cert": _cert_id(c.certificate, ca)} for c in (first, second)],
            "request_extensions": [{"extn_id": "nonce", "extn_value": b"abc"}],
        }}).dump()
        client = await aiohttp_client(build_http_app(services))
        _, body = await post(client, request)
        # Without a nonce the HTTP caching headers are the response's own times.
        past = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=30)
        services.ocsp.clock = lambda: past
        response, _ = await post(client, multi_request(
            [(c.certificate, ca) for c in (first, second)]))
        assert response.headers["Last-Modified"] == formatdate(past.timestamp(), usegmt=True)
    parsed = ocsp.load_der_ocsp_response(body)
    assert parsed.signature_algorithm_oid == algorithm
    (responder,) = parsed.certificates
    key = responder.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(parsed.signature, parsed.tbs_response_bytes, padding.PKCS1v15(),
                   hashes.SHA256())
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(parsed.signature, parsed.tbs_response_bytes, ec.ECDSA(hashes.SHA384()))
    nonce = parsed.extensions.get_extension_for_class(x509.OCSPNonce)
    assert nonce.critical is False and nonce.value.nonce == b"abc"
    data = a_ocsp.OCSPResponse.load(body).basic_ocsp_response["tbs_response_data"]
    assert [single["cert_status"].dump() for single in data["responses"]] == [b"\x80\x00"] * 2


async def test_a_live_answer_is_cached_for_the_next_request(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CertID hashed with SHA-256 is not precomputed: signed live on the first request,
    the response is stored, and the next request is answered without the store."""
    issued = await issue(services)
    request = ocsp_request(issued.certificate, issued.chain[0], hashes.SHA256())
    first = await services.ocsp.answer(decode_request(request))

    async def fail(*args: object, **kwargs: object) -> Any:
        raise AssertionError("a cached answer touched the store")

    monkeypatch.setattr(services.store, "certificate_statuses", fail)
    again = await services.ocsp.answer(decode_request(request))
    assert again.der == first.der and not again.revoked
    # a live answer to a nonce is never stored
    nonce = ocsp_request(issued.certificate, issued.chain[0], hashes.SHA384(), nonce=b"n")
    monkeypatch.undo()
    services.ocsp.settings = dataclasses.replace(services.ocsp.settings, nonce=True)
    await services.ocsp.answer(decode_request(nonce))
    services.ocsp.settings = dataclasses.replace(services.ocsp.settings, nonce=False)
    monkeypatch.setattr(services.store, "certificate_statuses", fail)
    with pytest.raises(AssertionError, match="touched the store"):
        await services.ocsp.answer(decode_request(
            ocsp_request(issued.certificate, issued.chain[0], hashes.SHA384())))


async def test_live_refusals_say_why(services: Services, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """What the OCSP log line carries for each refused request (the wire has only the
    status code)."""
    from ca_core.errors import CAError
    from ca_core.ocsp import OcspQuery

    issued = await issue(services)
    ca = issued.chain[0]
    await ensure_organization(services.authority, "health", "Health")
    await services.ocsp.load(create=True)
    other = await issue(services, org="health")
    limit = services.ocsp.settings.max_cert_ids
    own = decode_request(ocsp_request(issued.certificate, ca)).cert_ids[0]
    unknown_serial = dataclasses.replace(own, serial=own.serial + 1)
    leaf, foreign = foreign_pair()
    cases: list[tuple[OcspQuery, str]] = [
        (OcspQuery(b"", ()), "the request names no certificate"),
        (OcspQuery(b"", (own,) * (limit + 1)), f"at most {limit} certificates per request"),
        (decode_request(multi_request([(issued.certificate, ca), (leaf, foreign)])),
         "this responder does not serve that issuer"),
        (decode_request(multi_request([(issued.certificate, ca),
                                       (other.certificate, other.chain[0])])),
         "ask about one issuer's certificates per request"),
        (OcspQuery(b"", (own, unknown_serial)), "no certificate with that serial was issued"),
    ]
    for query, detail in cases:
        with pytest.raises(CAError) as raised:
            await services.ocsp.answer(query)
        assert raised.value.detail == detail
    full = await services.ocsp.answer(  # the limit itself
        decode_request(multi_request([(issued.certificate, ca)] * limit)))
    assert len(list(ocsp.load_der_ocsp_response(full.der).responses)) == limit

    from ca_core.storage import StoreUnavailable

    async def down(*args: object) -> Any:
        raise StoreUnavailable("simulated outage")

    monkeypatch.setattr(services.store, "certificate_statuses", down)
    with caplog.at_level("WARNING", logger="ca_core.ocsp"), \
            pytest.raises(CAError) as raised:
        await services.ocsp.answer(OcspQuery(b"", (own, own)))
    assert raised.value.detail == "the certificate store is not available"
    assert [r.getMessage() for r in caplog.records] == [
        "OCSP live answer: store unavailable: simulated outage"]
    for issuer in services.ocsp._by_ca_id.values():
        monkeypatch.setattr(issuer, "responder", None)
    with pytest.raises(CAError) as raised:
        await services.ocsp.answer(OcspQuery(b"", (own, own)))
    assert raised.value.detail == "no OCSP responder key is available for that issuer"
