"""RFC 3161 time-stamping: tokens (RFC 5816 ESSCertIDv2, nonce echo, certReq), every bad
input as its PKIStatus/failInfo or HTTP 413/415 with nothing recorded, the TSA certificate
checks, renewal, the clock check, configuration and the CLI.

Requests are built with asn1crypto's ``tsp`` specs in the test (no fixture files); tokens
are checked field by field and their signatures verified with cryptography against the
TSA certificate. ``conformance/test_tsa_openssl.py`` does the same with the real openssl.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime as dt
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from asn1crypto import algos, cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca_core import tsa as tsa_core
from ca_core.authority import serial_hex
from ca_core.hierarchy import activate_issuing_ca, rollover_issuing_ca
from ca_core.keys import KeySpec
from ca_core.records import TimeStampRecord
from ca_core.storage import StoreUnavailable
from ca_core.tsa import (
    DEFAULT_POLICY_OID,
    RENEW_BEFORE,
    TimeStampAuthority,
    TimeStampQuery,
    TsaCertificateRejected,
    TsaSettings,
    check_tsa_certificate,
    current_tsa,
    ensure_tsa,
)
from gateway.app import build_http_app
from gateway.cli import main
from gateway.config import ConfigError, load_config
from gateway.runtime import Services, open_services
from protocols.tsa import http as tsa_http
from protocols.tsa.codec import TimeStampResp
from tests.helpers import fresh_services

ClientFactory = Callable[..., Any]
QUERY = "application/timestamp-query"
OIDS = {"sha1": "1.3.14.3.2.26", "md5": "1.2.840.113549.2.5", "sha256": "2.16.840.1.101.3.4.2.1",
        "sha384": "2.16.840.1.101.3.4.2.2", "sha512": "2.16.840.1.101.3.4.2.3"}
OTHER_POLICY = "1.3.6.1.4.1.55555.1.2"
NULL = core.Null()  # what `openssl ts -query` puts as hash parameters


# --- helpers ------------------------------------------------------------------------------

class _AlgorithmIdentifier(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012 - asn1crypto's declaration style
        ("algorithm", core.ObjectIdentifier),
        ("parameters", core.Any, {"optional": True}),
    ]


def request_der(
    data: bytes = b"archived document\n",
    algorithm: str = "sha256",
    nonce: int | None = 0x1234_5678_9ABC_DEF0,
    cert_req: bool = True,
    policy: str | None = None,
    hashed: bytes | None = None,
    hash_oid: str | None = None,
    parameters: Any = NULL,
    version: int = 1,
    extensions: list[dict[str, Any]] | None = None,
) -> bytes:
    """A TimeStampReq as `openssl ts -query` makes it (NULL hash parameters, a nonce)."""
    digest = hashed if hashed is not None else hashlib.new(algorithm, data).digest()
    # Through a plain AlgorithmIdentifier: asn1crypto's DigestAlgorithm insists on NULL
    # parameters for the hashes it knows, and the tests need other ones too.
    identifier = _AlgorithmIdentifier({"algorithm": hash_oid or OIDS[algorithm],
                                       "parameters": parameters})
    fields: dict[str, Any] = {
        "version": version,
        "message_imprint": {
            "hash_algorithm": algos.DigestAlgorithm.load(identifier.dump()),
            "hashed_message": digest,
        },
        "cert_req": cert_req,
    }
    if policy is not None:
        fields["req_policy"] = policy
    if nonce is not None:
        fields["nonce"] = nonce
    if extensions is not None:
        fields["extensions"] = extensions
    der: bytes = tsp.TimeStampReq(fields).dump()
    return der


@dataclasses.dataclass
class Reply:
    response: Any  # codec.TimeStampResp
    http_status: int

    @property
    def status(self) -> str:
        status: str = self.response["status"]["status"].native
        return status

    @property
    def fail_info(self) -> set[str]:
        value = self.response["status"]["fail_info"].native
        return set() if value is None else set(value)

    @property
    def token(self) -> Any:
        return self.response["time_stamp_token"]

    @property
    def signed_data(self) -> Any:
        return self.token["content"]

    @property
    def tst_info(self) -> Any:
        return self.signed_data["encap_content_info"]["content"].parsed


class Recorder:
    """Counts the tokens the TSA records (wraps Store.add_timestamp)."""

    def __init__(self, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
        self.records: list[TimeStampRecord] = []
        original = services.store.add_timestamp

        async def add_timestamp(record: TimeStampRecord) -> None:
            await original(record)
            self.records.append(record)

        monkeypatch.setattr(services.store, "add_timestamp", add_timestamp)


@pytest.fixture
def recorder(services: Services, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    return Recorder(services, monkeypatch)


def tsa_app(services: Services, settings: TsaSettings | None = None,
            stamper: TimeStampAuthority | None = None) -> web.Application:
    app = web.Application(client_max_size=services.config.max_body_bytes)
    tsa_http.add_routes(app, stamper or TimeStampAuthority(
        services.authority, settings or services.config.tsa_settings()))
    return app


@pytest.fixture
async def client(services: Services, aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(tsa_app(services))  # type: ignore[no-any-return]


async def post(client: TestClient, body: bytes, content_type: str = QUERY) -> Reply:
    response = await client.post("/tsa", data=body, headers={"Content-Type": content_type})
    assert response.status == 200, await response.text()
    assert response.content_type == "application/timestamp-reply"
    return Reply(TimeStampResp.load(await response.read()), response.status)


async def tsa_loaded(services: Services) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    record = current_tsa(await services.store.list_cas(), services.authority.clock())
    assert record is not None
    loaded = await services.authority.ca(record.name)
    return loaded.certificate, loaded.chain


def verify_token(reply: Reply, tsa_cert: x509.Certificate) -> Any:
    """Check the CMS structure and signature by hand; returns the SignerInfo."""
    assert reply.status == "granted" and not reply.fail_info
    assert reply.token["content_type"].native == "signed_data"
    signed_data = reply.signed_data
    assert signed_data["version"].native == "v3"
    assert signed_data["encap_content_info"]["content_type"].native == "tst_info"
    tst_der = signed_data["encap_content_info"]["content"].contents
    (signer_info,) = signed_data["signer_infos"]
    sid = signer_info["sid"].chosen
    assert sid["serial_number"].native == tsa_cert.serial_number
    assert sid["issuer"].dump() == tsa_cert.issuer.public_bytes()
    attributes = {a["type"].native: a["values"] for a in signer_info["signed_attrs"]}
    assert set(attributes) - {"signing_certificate"} == {
        "content_type", "message_digest", "signing_time", "signing_certificate_v2"}
    assert attributes["content_type"][0].native == "tst_info"
    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    assert attributes["message_digest"][0].native == hashlib.new(digest_name, tst_der).digest()
    # RFC 5816 ESSCertIDv2: SHA-256 (the default, so absent) of the TSA certificate.
    (ess,) = attributes["signing_certificate_v2"][0]["certs"]
    cert_der = tsa_cert.public_bytes(serialization.Encoding.DER)
    assert ess["hash_algorithm"].native["algorithm"] == "sha256"
    assert b"\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01" not in ess.dump()  # DEFAULT omitted
    assert ess["cert_hash"].native == hashlib.sha256(cert_der).digest()
    assert ess["issuer_serial"]["serial_number"].native == tsa_cert.serial_number
    assert ess["issuer_serial"]["issuer"][0].chosen.untag().dump() == tsa_cert.issuer.public_bytes()
    signing_time = attributes["signing_time"][0].native
    assert abs(signing_time - reply.tst_info["gen_time"].native) < dt.timedelta(seconds=2)
    # The signature covers the signed attributes as a SET OF (tag 0x31, RFC 5652 5.4).
    signed = b"\x31" + signer_info["signed_attrs"].dump()[1:]
    public_key = tsa_cert.public_key()
    chosen_hash = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}[digest_name]
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        assert signer_info["signature_algorithm"]["algorithm"].native == f"{digest_name}_ecdsa"
        public_key.verify(signer_info["signature"].native, signed, ec.ECDSA(chosen_hash))
    else:
        assert isinstance(public_key, rsa.RSAPublicKey)
        public_key.verify(signer_info["signature"].native, signed, padding.PKCS1v15(),
                          chosen_hash)
    return signer_info


# --- granted tokens -------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
async def test_granted_token(client: TestClient, services: Services, recorder: Recorder,
                             algorithm: str) -> None:
    data = f"document hashed with {algorithm}\n".encode()
    request = request_der(data, algorithm)
    reply = await post(client, request)
    tsa_cert, chain = await tsa_loaded(services)
    verify_token(reply, tsa_cert)
    tst = reply.tst_info
    sent = tsp.TimeStampReq.load(request)
    assert tst["version"].native == "v1"
    assert tst["policy"].dotted == DEFAULT_POLICY_OID
    assert tst["message_imprint"].dump() == sent["message_imprint"].dump()
    assert tst["message_imprint"]["hashed_message"].native == hashlib.new(algorithm, data).digest()
    assert 0 < tst["serial_number"].native < 2**160
    assert abs(tst["gen_time"].native - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=5)
    assert tst["accuracy"].native == {"seconds": 1, "millis": None, "micros": None}
    assert tst["ordering"].native is False and b"\x01\x01\xff" not in tst.contents
    assert tst["tsa"].native is None
    # certReq: the TSA certificate and its CAs, the root left out (a SET OF: DER order).
    certificates = {c.chosen.dump() for c in reply.signed_data["certificates"]}
    assert certificates == {c.public_bytes(serialization.Encoding.DER) for c in chain}
    assert len(certificates) == 3
    assert chain[-1].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value.endswith(
        "Intermediate CA")
    # recorded before it was returned, and found again by serial
    (record,) = recorder.records
    assert record.serial_hex == serial_hex(tst["serial_number"].native)
    assert record.hash_algorithm == algorithm and record.cert_req and record.has_nonce
    assert record.message_imprint == hashlib.new(algorithm, data).digest()
    assert await services.store.get_timestamp(record.serial_hex) == record


async def test_cert_req_false_carries_no_certificates(client: TestClient,
                                                      services: Services) -> None:
    reply = await post(client, request_der(cert_req=False))
    tsa_cert, _ = await tsa_loaded(services)
    verify_token(reply, tsa_cert)
    assert isinstance(reply.signed_data["certificates"], core.Void)


@pytest.mark.parametrize("nonce", [
    1,
    0x80 << 56,  # high bit set: DER puts a leading zero byte before it
    0x00FF,
    int.from_bytes(os.urandom(64), "big") | (1 << 511),  # 512-bit nonce, also leading 00
    -5,
], ids=["one", "leading-zero-byte", "0x00ff", "512-bit", "negative"])
async def test_nonce_echoed_bit_exact(client: TestClient, nonce: int) -> None:
    request = request_der(nonce=nonce)
    reply = await post(client, request)
    sent = tsp.TimeStampReq.load(request)["nonce"]
    echoed = reply.tst_info["nonce"]
    assert echoed.dump() == sent.dump()
    assert echoed.native == nonce


def _tlv(tag: int, content: bytes) -> bytes:
    """One DER TLV, for requests asn1crypto would not build (malformed on purpose)."""
    size = len(content)
    length = bytes([size]) if size < 128 else b"\x81" + bytes([size]) if size < 256 \
        else b"\x82" + size.to_bytes(2, "big")
    return bytes([tag]) + length + content


def raw_request(*, parameters: bytes = b"\x05\x00", policy: bytes = b"",
                nonce: bytes = b"", extensions: bytes | None = None) -> bytes:
    """A sha256 TimeStampReq from raw parts: the NULL parameters, a reqPolicy TLV, a nonce
    TLV and the [0] extensions contents as given."""
    digest = hashlib.sha256(b"archived document\n").digest()
    algorithm = _tlv(0x30, _tlv(0x06, bytes.fromhex("608648016503040201")) + parameters)
    imprint = _tlv(0x30, algorithm + _tlv(0x04, digest))
    body = b"\x02\x01\x01" + imprint + policy + nonce + b"\x01\x01\xff"
    if extensions is not None:
        body += _tlv(0xA0, extensions)
    return _tlv(0x30, body)


async def test_raw_request_helper_builds_a_valid_request(client: TestClient) -> None:
    assert (await post(client, raw_request(nonce=b"\x02\x01\x07"))).status == "granted"


async def test_nonce_length_limit_is_128_octets(client: TestClient) -> None:
    at_limit = _tlv(0x02, b"\x01" + b"\x00" * 127)
    reply = await post(client, raw_request(nonce=at_limit))
    assert reply.status == "granted" and reply.tst_info["nonce"].dump() == at_limit
    over = await post(client, raw_request(nonce=_tlv(0x02, b"\x01" + b"\x00" * 128)))
    assert over.fail_info == {"bad_request"}


@pytest.mark.parametrize(("body", "fail_info"), [
    (raw_request(nonce=b"\x02\x00"), "bad_data_format"),  # an INTEGER with no octets
    (raw_request(nonce=b"\x02\x03\x00\x00\x01"), "bad_data_format"),  # redundant zeros
    (raw_request(nonce=b"\x02\x02\xff\x80"), "bad_data_format"),  # redundant 0xff
    (raw_request(policy=b"\x06\x00"), "bad_data_format"),  # an OID with no arcs
    (raw_request(parameters=b"\x05\x01\x00"), "bad_data_format"),  # a NULL with content
    (raw_request(parameters=b"\x05\x81\x00"), "bad_data_format"),  # a NULL, long form
    (raw_request(extensions=b""), "bad_data_format"),  # extensions SIZE (1..MAX)
], ids=["empty-nonce", "nonce-leading-zeros", "nonce-leading-ff", "empty-policy",
        "null-with-content", "null-long-length", "empty-extensions"])
async def test_malformed_fields_are_bad_data_format_and_not_recorded(
        client: TestClient, recorder: Recorder, body: bytes, fail_info: str) -> None:
    """Each of these would make a token that `openssl ts` cannot read (DER INTEGERs and
    OIDs are minimal), or breaks the syntax RFC 3161 gives the request."""
    reply = await post(client, body)
    assert reply.status == "rejection", reply.status
    assert reply.fail_info == {fail_info}
    assert recorder.records == []


def _with_cert_req(replacement: bytes, trailing: bytes = b"") -> bytes:
    """raw_request() with its certReq BOOLEAN replaced and elements appended."""
    der = raw_request()
    body = der[2:].replace(b"\x01\x01\xff", replacement) + trailing
    return _tlv(0x30, body)


@pytest.mark.parametrize("body", [
    _with_cert_req(b"\x03\x02\x00\xff"),  # a BIT STRING where certReq belongs
    _with_cert_req(b"\x09\x01\x00"),  # a REAL where certReq belongs
    _with_cert_req(b"\x01\x01\xff", b"\x03\x01\x00"),  # certReq, then a BIT STRING
    _with_cert_req(b"\x01\x01\xff", b"\x02\x01\x05"),  # certReq, then an INTEGER
], ids=["bitstring-certreq", "real-certreq", "trailing-bitstring", "trailing-integer"])
async def test_elements_rfc3161_does_not_declare_are_bad_data_format(
        client: TestClient, recorder: Recorder, body: bytes, tmp_path: Path) -> None:
    """asn1crypto keeps trailing elements of no declared type as extra children; OpenSSL
    refuses such requests (`openssl ts -query -in`), so the TSA must not grant them."""
    query = tmp_path / "q.tsq"
    query.write_bytes(body)
    refused = subprocess.run(["openssl", "ts", "-query", "-in", str(query), "-text"],
                             capture_output=True, check=False)
    assert refused.returncode != 0
    reply = await post(client, body)
    assert reply.status == "rejection", reply.status
    assert reply.fail_info == {"bad_data_format"}
    assert recorder.records == []


async def test_no_nonce(client: TestClient, recorder: Recorder) -> None:
    reply = await post(client, request_der(nonce=None))
    assert reply.status == "granted"
    assert isinstance(reply.tst_info["nonce"], core.Void)
    assert not recorder.records[0].has_nonce


async def test_accepted_other_policy(services: Services, aiohttp_client: ClientFactory) -> None:
    settings = dataclasses.replace(services.config.tsa_settings(),
                                   accepted_policies=(OTHER_POLICY,))
    client = await aiohttp_client(tsa_app(services, settings))
    reply = await post(client, request_der(policy=OTHER_POLICY))
    assert reply.status == "granted"
    assert reply.tst_info["policy"].dotted == OTHER_POLICY
    default = await post(client, request_der(policy=DEFAULT_POLICY_OID))
    assert default.tst_info["policy"].dotted == DEFAULT_POLICY_OID


async def test_settings_shape_the_token(services: Services, aiohttp_client: ClientFactory
                                        ) -> None:
    settings = dataclasses.replace(services.config.tsa_settings(), accuracy_ms=1500,
                                   include_tsa_name=True, legacy_ess_cert_id=True)
    client = await aiohttp_client(tsa_app(services, settings))
    reply = await post(client, request_der())
    tsa_cert, _ = await tsa_loaded(services)
    tst = reply.tst_info
    assert tst["accuracy"].native == {"seconds": 1, "millis": 500, "micros": None}
    assert tst["tsa"].chosen.untag().dump() == tsa_cert.subject.public_bytes()
    (signer_info,) = reply.signed_data["signer_infos"]
    attributes = {a["type"].native: a["values"] for a in signer_info["signed_attrs"]}
    (legacy,) = attributes["signing_certificate"][0]["certs"]
    assert legacy["cert_hash"].native == hashlib.sha1(
        tsa_cert.public_bytes(serialization.Encoding.DER)).digest()

    no_accuracy = dataclasses.replace(settings, accuracy_ms=0)
    client = await aiohttp_client(tsa_app(services, no_accuracy))
    assert isinstance((await post(client, request_der())).tst_info["accuracy"], core.Void)


async def test_served_by_the_gateway_http_app(services: Services,
                                              aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(build_http_app(services))
    reply = await post(client, request_der())
    assert reply.status == "granted"
    chain = await client.get("/tsa/chain.pem")
    assert chain.status == 200
    assert (await chain.text()).count("BEGIN CERTIFICATE") == 3


async def test_rsa_tsa_key(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    async with fresh_services(tmp_path, VCC_PKI_TSA_KEY_TYPE="rsa-2048") as services:
        client = await aiohttp_client(tsa_app(services))
        reply = await post(client, request_der(algorithm="sha512"))
        tsa_cert, _ = await tsa_loaded(services)
        assert isinstance(tsa_cert.public_key(), rsa.RSAPublicKey)
        signer_info = verify_token(reply, tsa_cert)
        assert signer_info["signature_algorithm"]["algorithm"].native == "rsassa_pkcs1v15"


def reference_token(reply: Reply, request: bytes, tsa_cert: x509.Certificate,
                    chain: tuple[x509.Certificate, ...], settings: TsaSettings) -> bytes:
    """The token of ``reply`` built again with asn1crypto's plain constructors from the
    request, the TSA certificate and the reply's own serial, times and signature."""
    sent = tsp.TimeStampReq.load(request)
    got_tst = reply.tst_info
    (got_signer,) = reply.signed_data["signer_infos"]
    got_attrs = {a["type"].native: a["values"] for a in got_signer["signed_attrs"]}
    accuracy = dict(zip(("seconds", "millis"), divmod(settings.accuracy_ms, 1000),
                        strict=True))
    tst_fields: dict[str, Any] = {
        "version": "v1", "policy": got_tst["policy"].dotted,
        "message_imprint": tsp.MessageImprint.load(sent["message_imprint"].dump()),
        "serial_number": got_tst["serial_number"].native,
        "gen_time": got_tst["gen_time"].native,
        "accuracy": {k: v for k, v in accuracy.items() if v},
    }
    if not isinstance(sent["nonce"], core.Void):
        tst_fields["nonce"] = core.Integer.load(sent["nonce"].dump())
    if settings.include_tsa_name:
        tst_fields["tsa"] = asn1_x509.GeneralName(
            {"directory_name": asn1_x509.Name.load(tsa_cert.subject.public_bytes())})
    tst = tsp.TSTInfo(tst_fields).dump()
    cert = asn1_x509.Certificate.load(tsa_cert.public_bytes(serialization.Encoding.DER))
    issuer_serial = {"issuer": [asn1_x509.GeneralName({"directory_name": cert.issuer})],
                     "serial_number": cert.serial_number}
    digest_name = got_signer["digest_algorithm"]["algorithm"].native
    attributes = [
        {"type": "content_type", "values": ["tst_info"]},
        {"type": "message_digest", "values": [hashlib.new(digest_name, tst).digest()]},
        {"type": "signing_time",
         "values": [cms.Time({"utc_time": got_attrs["signing_time"][0].native})]},
        {"type": "signing_certificate_v2", "values": [{"certs": [{
            "cert_hash": hashlib.sha256(cert.dump()).digest(),
            "issuer_serial": issuer_serial}]}]},
    ]
    if settings.legacy_ess_cert_id:
        attributes.append({"type": "signing_certificate", "values": [{"certs": [{
            "cert_hash": hashlib.sha1(cert.dump()).digest(), "issuer_serial": issuer_serial}]}]})
    signed_data: dict[str, Any] = {
        "version": "v3",
        "digest_algorithms": [{"algorithm": digest_name}],
        "encap_content_info": {"content_type": "tst_info",
                               "content": cms.ParsableOctetString(tst)},
        "signer_infos": [{
            "version": "v1",
            "sid": {"issuer_and_serial_number": {"issuer": cert.issuer,
                                                 "serial_number": cert.serial_number}},
            "digest_algorithm": {"algorithm": digest_name},
            "signed_attrs": attributes,
            "signature_algorithm": got_signer["signature_algorithm"].native,
            "signature": got_signer["signature"].native,
        }],
    }
    if sent["cert_req"].native:
        signed_data["certificates"] = [
            asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER))
            for c in chain]
    token: bytes = cms.ContentInfo({"content_type": "signed_data",
                                    "content": cms.SignedData(signed_data)}).dump()
    return token


@pytest.mark.parametrize(("changes", "cert_req", "nonce"), [
    ({}, True, 0x80 << 56),
    ({}, False, None),
    ({"accuracy_ms": 1500, "include_tsa_name": True, "legacy_ess_cert_id": True}, True, 7),
    ({"accuracy_ms": 250}, False, -3),
], ids=["default", "no-cert-req-no-nonce", "name-legacy-ess", "millis"])
async def test_token_bytes_equal_plain_asn1crypto_construction(
        services: Services, aiohttp_client: ClientFactory, changes: dict[str, Any],
        cert_req: bool, nonce: int | None) -> None:
    """The fast composition (ca_core.tsa.compose) gives exactly what asn1crypto's own
    constructors give for the same values: same DER, byte for byte."""
    settings = dataclasses.replace(services.config.tsa_settings(), **changes)
    client = await aiohttp_client(tsa_app(services, settings))
    request = request_der(cert_req=cert_req, nonce=nonce)
    response = await client.post("/tsa", data=request, headers={"Content-Type": QUERY})
    body = await response.read()
    reply = Reply(TimeStampResp.load(body), response.status)
    tsa_cert, chain = await tsa_loaded(services)
    verify_token(reply, tsa_cert)
    token = reference_token(reply, request, tsa_cert, chain, settings)
    assert reply.token.dump() == token
    assert body == TimeStampResp({"status": {"status": "granted"},
                                  "time_stamp_token": cms.ContentInfo.load(token)}).dump()


# --- bad input --------------------------------------------------------------------------------

VALID = request_der()


@pytest.mark.parametrize(("body", "fail_info"), [
    (b"", "bad_data_format"),
    (b"garbage, not DER at all", "bad_data_format"),
    (VALID[: len(VALID) // 2], "bad_data_format"),  # truncated
    (VALID + b"\x00\x00", "bad_data_format"),  # trailing bytes
    (b"\x30\x03\x02\x01\x01", "bad_data_format"),  # a SEQUENCE, but no imprint
    (b"\x30\x80" + VALID[2:], "bad_data_format"),  # indefinite length
    (request_der(version=2), "bad_data_format"),
    (request_der(hash_oid="1.2.3.4.5"), "bad_alg"),  # unknown hash OID
    (request_der(algorithm="sha1"), "bad_alg"),  # SHA-1 refused by default
    (request_der(algorithm="md5"), "bad_alg"),
    (request_der(parameters=core.OctetString(b"x")), "bad_data_format"),  # sha256 takes NULL
    (request_der(hash_oid="1.2.3.4.5", parameters=core.OctetString(b"x")), "bad_alg"),
    (request_der(hashed=b"\x01" * 20), "bad_data_format"),  # sha256 OID, 20 octets
    (request_der(algorithm="sha512", hashed=b"\x01" * 32), "bad_data_format"),
    (request_der(policy=OTHER_POLICY), "unaccepted_policy"),
    (request_der(extensions=[{"extn_id": "1.2.3.4", "critical": False,
                              "extn_value": b"\x05\x00"}]), "unaccepted_extensions"),
    (request_der(nonce=int.from_bytes(os.urandom(200), "big")), "bad_request"),
], ids=["empty", "garbage", "truncated", "trailing", "no-imprint", "indefinite", "version-2",
        "unknown-hash-oid", "sha1", "md5", "hash-parameters", "unknown-hash-parameters",
        "short-imprint",
        "imprint-of-other-length", "policy", "extension", "huge-nonce"])
async def test_bad_requests_are_rejected_and_not_recorded(
        client: TestClient, recorder: Recorder, body: bytes, fail_info: str) -> None:
    reply = await post(client, body)
    assert reply.status == "rejection"
    assert reply.fail_info == {fail_info}
    assert isinstance(reply.token, core.Void)
    assert reply.response["status"]["status_string"].native  # a reason for the client
    assert "Traceback" not in str(reply.response["status"]["status_string"].native)
    assert recorder.records == []


async def test_sha1_allowed_when_configured(services: Services,
                                            aiohttp_client: ClientFactory) -> None:
    settings = dataclasses.replace(services.config.tsa_settings(),
                                   hash_algorithms=("sha1", "sha256"))
    client = await aiohttp_client(tsa_app(services, settings))
    assert (await post(client, request_der(algorithm="sha1"))).status == "granted"
    assert (await post(client, request_der(algorithm="sha384"))).fail_info == {"bad_alg"}


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/json",
                                          "text/plain"])
async def test_wrong_content_type_is_415(client: TestClient, recorder: Recorder,
                                         content_type: str) -> None:
    response = await client.post("/tsa", data=VALID, headers={"Content-Type": content_type})
    assert response.status == 415
    assert recorder.records == []


@pytest.mark.parametrize("size", [16 * 1024 + 1, 300 * 1024])
async def test_oversized_body_is_413(client: TestClient, recorder: Recorder, size: int) -> None:
    body = VALID + b"\x00" * (size - len(VALID))
    response = await client.post("/tsa", data=body, headers={"Content-Type": QUERY})
    assert response.status == 413
    assert recorder.records == []


async def test_oversized_chunked_body_is_413(client: TestClient, recorder: Recorder) -> None:
    """No Content-Length (chunked transfer): the size is checked on what arrives."""
    async def chunks() -> AsyncIterator[bytes]:
        yield VALID
        for _ in range(20):
            yield b"\x00" * 1024

    response = await client.post("/tsa", data=chunks(), headers={"Content-Type": QUERY})
    assert response.status == 413
    assert recorder.records == []


async def test_get_is_405(client: TestClient) -> None:
    assert (await client.get("/tsa")).status == 405


async def test_unsynchronised_clock_is_time_not_available(
        services: Services, aiohttp_client: ClientFactory, recorder: Recorder,
        tmp_path: Path) -> None:
    flag = tmp_path / "clock-unsynchronised"
    settings = dataclasses.replace(services.config.tsa_settings(), clock_check=f"file:{flag}")
    client = await aiohttp_client(tsa_app(services, settings))
    assert (await post(client, VALID)).status == "granted"
    flag.touch()
    reply = await post(client, VALID)
    assert reply.status == "rejection" and reply.fail_info == {"time_not_available"}
    flag.unlink()
    assert (await post(client, VALID)).status == "granted"
    assert len(recorder.records) == 2


async def test_clock_check_that_fails_means_not_available(
        services: Services, aiohttp_client: ClientFactory) -> None:
    def broken() -> bool:
        raise OSError("no adjtimex here")

    stamper = TimeStampAuthority(services.authority, clock_check=broken)
    client = await aiohttp_client(tsa_app(services, stamper=stamper))
    assert (await post(client, VALID)).fail_info == {"time_not_available"}


async def test_store_failure_is_system_failure(client: TestClient, services: Services,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    async def unavailable(record: TimeStampRecord) -> None:
        raise StoreUnavailable("database is locked")

    monkeypatch.setattr(services.store, "add_timestamp", unavailable)
    reply = await post(client, VALID)
    assert reply.status == "rejection" and reply.fail_info == {"system_failure"}
    assert "locked" not in str(reply.response["status"]["status_string"].native)


async def test_unexpected_error_is_system_failure_not_500(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: Any, query: TimeStampQuery) -> Any:
        raise RuntimeError("internal detail that must not leak")

    monkeypatch.setattr(TimeStampAuthority, "check", explode)
    reply = await post(client, VALID)
    assert reply.fail_info == {"system_failure"}
    assert "internal detail" not in str(reply.response["status"]["status_string"].native)


async def test_serial_collision_draws_a_new_serial(client: TestClient, services: Services,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    serials = iter([7, 7, 8])
    monkeypatch.setattr(tsa_core.x509, "random_serial_number", lambda: next(serials))
    first, second = await post(client, VALID), await post(client, VALID)
    assert first.tst_info["serial_number"].native == 7
    assert second.tst_info["serial_number"].native == 8


# --- the TSA certificate -------------------------------------------------------------------

def _certificate(
    key: ec.EllipticCurvePrivateKey,
    eku: list[x509.ObjectIdentifier] | None = None,
    eku_critical: bool = True,
    key_usage: dict[str, bool] | None = None,
    ca: bool = False,
    days: tuple[int, int] = (-1, 30),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test TSA")])
    usages = {"digital_signature": True, "content_commitment": False,
              "key_encipherment": False, "data_encipherment": False, "key_agreement": False,
              "key_cert_sign": False, "crl_sign": False, "encipher_only": False,
              "decipher_only": False, **(key_usage or {})}
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(x509.KeyUsage(**usages), critical=True)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=eku_critical)
    return builder.sign(key, hashes.SHA256())


TS = ExtendedKeyUsageOID.TIME_STAMPING


def test_check_accepts_a_good_certificate() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    check_tsa_certificate(_certificate(key, [TS]), key.public_key(), dt.datetime.now(dt.UTC))
    # nonRepudiation alone is fine for OpenSSL too
    check_tsa_certificate(
        _certificate(key, [TS], key_usage={"digital_signature": False,
                                           "content_commitment": True}),
        key.public_key(), dt.datetime.now(dt.UTC))


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"eku": None}, "no extended key usage"),
    ({"eku": [TS], "eku_critical": False}, "must be critical"),
    ({"eku": [TS, ExtendedKeyUsageOID.CODE_SIGNING]}, "timeStamping only"),
    ({"eku": [TS], "key_usage": {"key_cert_sign": True}}, "key usage"),
    ({"eku": [TS], "key_usage": {"digital_signature": False}}, "key usage"),
    ({"eku": [TS], "ca": True}, "CA certificate"),
    ({"eku": [TS], "days": (-30, -1)}, "not valid now"),
    ({"eku": [TS], "days": (1, 30)}, "not valid now"),
], ids=["no-eku", "eku-not-critical", "eku-extra", "ku-cert-sign", "ku-none", "ca", "expired",
        "not-yet-valid"])
def test_check_rejects_what_openssl_ts_verify_rejects(kwargs: dict[str, Any],
                                                      problem: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(TsaCertificateRejected, match=problem):
        check_tsa_certificate(_certificate(key, **kwargs), key.public_key(),
                              dt.datetime.now(dt.UTC))


def test_check_rejects_another_key_and_issuer() -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(key, [TS])
    with pytest.raises(TsaCertificateRejected, match="does not match"):
        check_tsa_certificate(cert, other.public_key(), dt.datetime.now(dt.UTC))
    with pytest.raises(TsaCertificateRejected, match="not issued by"):
        check_tsa_certificate(cert, key.public_key(), dt.datetime.now(dt.UTC),
                              issuer=_certificate(other, [TS]))


async def test_issued_tsa_certificate_passes_and_chains(services: Services) -> None:
    tsa_cert, chain = await tsa_loaded(services)
    eku = tsa_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [TS]
    assert chain[0] == tsa_cert and len(chain) == 3
    issuing = await services.authority.ca("default-issuing")
    assert chain[1] == issuing.certificate
    # recorded like every certificate the issuing CA signs (so OCSP and CRLs know it)
    (record,) = await services.store.find_certificates_by_serial(serial_hex(tsa_cert.serial_number))
    assert record.profile == "timestamp_authority"


async def test_ensure_tsa_is_idempotent_and_renews_before_expiry(services: Services) -> None:
    authority = services.authority
    assert await ensure_tsa(authority) is None
    first = current_tsa(await services.store.list_cas(), authority.clock())
    assert first is not None
    later = first.not_after - RENEW_BEFORE + dt.timedelta(days=1)
    authority.clock = lambda: later
    renewed = await ensure_tsa(authority)
    assert renewed is not None and renewed.renewed == first.name
    current = current_tsa(await services.store.list_cas(), later)
    assert current is not None and current.name == renewed.name
    assert current.not_after > first.not_after
    assert await ensure_tsa(authority) is None  # and only once
    stamper = TimeStampAuthority(authority)
    await stamper.open()
    assert stamper.loaded.record.name == renewed.name
    events = [e.event.event_type for e in await services.store.audit_entries()]
    assert events.count("tsa.created") == 1 and events.count("tsa.renewed") == 1


async def test_a_renewed_tsa_is_certified_by_the_active_issuing_ca(services: Services) -> None:
    authority = services.authority
    first = current_tsa(await services.store.list_cas(), authority.clock())
    assert first is not None
    await rollover_issuing_ca(authority, "default")
    await activate_issuing_ca(authority, "default-issuing-g2")
    later = first.not_after - RENEW_BEFORE + dt.timedelta(days=1)
    authority.clock = lambda: later
    renewed = await ensure_tsa(authority)
    assert renewed is not None
    record = await services.store.get_ca(renewed.name)
    assert record is not None
    active = (await authority.ca("default-issuing-g2")).record
    assert record.parent_ca_id == active.ca_id
    x509.load_der_x509_certificate(record.certificate_der).verify_directly_issued_by(
        x509.load_der_x509_certificate(active.certificate_der))


async def test_no_valid_tsa_certificate_refuses_to_start(services: Services) -> None:
    record = current_tsa(await services.store.list_cas(), services.authority.clock())
    assert record is not None
    services.authority.clock = lambda: record.not_after + dt.timedelta(seconds=1)
    stamper = TimeStampAuthority(services.authority)
    with pytest.raises(TsaCertificateRejected, match="no valid TSA certificate"):
        await stamper.open()
    # The HTTP app does not start (its startup opens the TSA), as `vcc-pki serve` then.
    runner = web.AppRunner(tsa_app(services, stamper=stamper))
    try:
        with pytest.raises(TsaCertificateRejected):
            await runner.setup()
    finally:
        await runner.cleanup()


async def test_tsa_not_open_is_system_failure(services: Services) -> None:
    stamper = TimeStampAuthority(services.authority)
    with pytest.raises(tsa_core.Unavailable):
        await stamper.timestamp(TimeStampQuery(OIDS["sha256"], b"\x00" * 32))


# --- configuration ------------------------------------------------------------------------

def test_config_from_environment(tmp_path: Path) -> None:
    config = load_config(environ={
        "VCC_PKI_DATA_DIR": str(tmp_path),
        "VCC_PKI_TSA_POLICY_OID": "1.2.3.4.1",
        "VCC_PKI_TSA_ACCEPTED_POLICIES": "1.2.3.4.2, 1.2.3.4.3",
        "VCC_PKI_TSA_ACCURACY_MS": "250",
        "VCC_PKI_TSA_HASH_ALGORITHMS": "SHA-384,sha3-256",
        "VCC_PKI_TSA_INCLUDE_TSA_NAME": "true",
        "VCC_PKI_TSA_CLOCK_CHECK": f"file:{tmp_path / 'unsynced'}",
        "VCC_PKI_TSA_KEY_TYPE": "ec-p384",
    })
    settings = config.tsa_settings()
    assert settings.policies == {"1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"}
    assert settings.accuracy_ms == 250 and settings.include_tsa_name
    assert [h.name for h in settings.hashes.values()] == ["sha384", "sha3_256"]
    assert settings.key == KeySpec.parse("ec-p384")
    assert load_config(environ={"VCC_PKI_DATA_DIR": str(tmp_path)}).tsa_settings() == \
        TsaSettings()


def test_config_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "vcc-pki.toml"
    path.write_text('[tsa]\npolicy_oid = "1.2.3.9"\nhash_algorithms = ["sha512"]\n'
                    'legacy_ess_cert_id = true\n')
    settings = load_config(environ={}, path=str(path)).tsa_settings()
    assert settings.policy_oid == "1.2.3.9" and settings.hash_algorithms == ("sha512",)
    assert settings.legacy_ess_cert_id


@pytest.mark.parametrize(("name", "value"), [
    ("VCC_PKI_TSA_POLICY_OID", "not-an-oid"),
    ("VCC_PKI_TSA_POLICY_OID", "1.40.5"),  # second arc under 1 must be below 40
    ("VCC_PKI_TSA_POLICY_OID", "3.1"),
    ("VCC_PKI_TSA_ACCEPTED_POLICIES", "1.2.3,01x"),
    ("VCC_PKI_TSA_HASH_ALGORITHMS", "sha256,md5"),
    ("VCC_PKI_TSA_HASH_ALGORITHMS", "whirlpool"),
    ("VCC_PKI_TSA_ACCURACY_MS", "-1"),
    ("VCC_PKI_TSA_CLOCK_CHECK", "ntp"),
    ("VCC_PKI_TSA_KEY_TYPE", "ed25519"),
    ("VCC_PKI_TSA_INCLUDE_TSA_NAME", "maybe"),
])
def test_bad_config_is_refused(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError):
        load_config(environ={"VCC_PKI_DATA_DIR": str(tmp_path), name: value})


def test_adjtimex_clock_check_agrees_with_the_kernel() -> None:
    """The check says what the kernel says, read independently through glibc's
    ntp_adjtime (the same system call): unsynchronised is TIME_ERROR (5). No privilege."""
    check = tsa_core.make_clock_check("adjtimex")
    assert check is not None
    buffer = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
    state = ctypes.CDLL(None, use_errno=True).ntp_adjtime(buffer)
    assert check() is (state >= 0 and state != 5)


@pytest.mark.parametrize(("state", "synchronised"), [
    (0, True), (1, True), (2, True), (3, True), (4, True),  # TIME_OK .. TIME_WAIT
    (5, False),  # TIME_ERROR: STA_UNSYNC or STA_CLOCKERR set
    (-1, False),  # the call failed
])
def test_adjtimex_clock_check_maps_the_clock_state(
        monkeypatch: pytest.MonkeyPatch, state: int, synchronised: bool) -> None:
    seen: list[bytes] = []

    class Libc:
        def adjtimex(self, buffer: Any) -> int:
            seen.append(bytes(buffer.raw[:4]))
            return state

    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: Libc())
    check = tsa_core.make_clock_check("adjtimex")
    assert check is not None
    assert check() is synchronised
    assert seen and all(modes == bytes(4) for modes in seen)  # it never sets the clock


# --- CLI ------------------------------------------------------------------------------------

def test_cli_tsa_show_and_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    monkeypatch.setenv("VCC_PKI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VCC_PKI_KEY_PASSPHRASE", "cli-test")
    monkeypatch.delenv("VCC_PKI_CONFIG", raising=False)
    assert main(["init"]) == 0
    assert "created tsa CA tsa-" in capsys.readouterr().out

    async def stamp() -> str:
        async with open_services(load_config()) as services:
            await services.authority.load()
            stamper = TimeStampAuthority(services.authority)
            await stamper.open()
            issued = await stamper.timestamp(TimeStampQuery(OIDS["sha256"], b"\x11" * 32))
            return issued.serial

    serial = asyncio.run(stamp())
    assert main(["tsa", "show", f"0x{serial}"]) == 0
    shown = capsys.readouterr().out
    assert serial in shown and "11" * 32 in shown and "sha256" in shown
    assert main(["tsa", "show", "0x1234"]) == 1
    assert "no time-stamp with serial" in capsys.readouterr().err
    assert main(["tsa", "chain"]) == 0
    assert capsys.readouterr().out.count("BEGIN CERTIFICATE") == 3
    assert main(["ca", "list"]) == 0
    assert " tsa " in capsys.readouterr().out


async def test_imprint_algorithm_is_the_requests_each_time(client: TestClient) -> None:
    """RFC 3161 2.4.2: the token's messageImprint is the request's, hash algorithm and its
    parameters (absent or NULL) included, for each request in turn (the TSA keeps the
    encoded forms it has seen)."""
    seen = []
    for algorithm, parameters in [("sha256", NULL), ("sha384", NULL), ("sha256", None),
                                  ("sha512", None), ("sha384", NULL)]:
        request = tsp.TimeStampReq.load(request_der(algorithm=algorithm, parameters=parameters))
        reply = await post(client, request.dump())
        imprint = reply.tst_info["message_imprint"]
        assert imprint.dump() == request["message_imprint"].dump()
        seen.append(imprint["hash_algorithm"].dump())
    assert len(set(seen)) == 4


def test_refusals_say_why(services: Services) -> None:
    """The statusString of a rejection (RFC 3161 2.4.2 PKIFreeText) names the problem."""
    stamper = TimeStampAuthority(services.authority, services.config.tsa_settings())
    sha256 = OIDS["sha256"]
    cases = [
        (TimeStampQuery(OIDS["sha1"], b"\x00" * 20),
         "hash algorithm sha1 is not accepted; use one of sha256, sha384, sha512"),
        (TimeStampQuery("1.2.3.4.5", b"\x00" * 32),
         "hash algorithm 1.2.3.4.5 is not accepted; use one of sha256, sha384, sha512"),
        (TimeStampQuery(sha256, b"\x00" * 32, hash_parameters=b"\x04\x01x"),
         "sha256 takes no parameters, or a DER NULL"),
        (TimeStampQuery(sha256, b"\x00" * 20), "a sha256 imprint has 32 octets, not 20"),
        (TimeStampQuery(sha256, b"\x00" * 32, version=2), "unsupported TimeStampReq version 2"),
        (TimeStampQuery(sha256, b"\x00" * 32, policy="1.2.3"),
         "policy 1.2.3 is not offered by this TSA"),
        (TimeStampQuery(sha256, b"\x00" * 32, extensions=("1.2.3.4",)),
         "unsupported extension 1.2.3.4"),
        (TimeStampQuery(sha256, b"\x00" * 32, nonce=b"\x02\x02\x00\x01"),
         "the nonce is not a DER INTEGER"),
        (TimeStampQuery(sha256, b"\x00" * 32, nonce=b"\x04\x01x"),
         "the nonce is not a DER INTEGER"),
        (TimeStampQuery(sha256, b"\x00" * 32, nonce=b"\x02\x05\x01"),
         "the nonce is not a DER INTEGER"),
        (TimeStampQuery(sha256, b"\x00" * 32, nonce=b"\x02\x00"),
         "the nonce is not a DER INTEGER"),
    ]
    for query, detail in cases:
        with pytest.raises(tsa_core.TimeStampRejected) as raised:
            stamper.check(query)
        assert raised.value.detail == detail


async def test_gen_time_and_the_certificates_validity_bounds(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    """genTime keeps milliseconds (RFC 3161 2.4.2 accuracy) and drops the rest; a token is
    granted from the TSA certificate's notBefore up to, not including, its notAfter."""
    stamper = TimeStampAuthority(services.authority, services.config.tsa_settings(),
                                 clock_check=lambda: True)
    with pytest.raises(tsa_core.Unavailable) as raised:
        await stamper.timestamp(TimeStampQuery(OIDS["sha256"], b"\x00" * 32))
    assert raised.value.detail == "the time-stamping authority is not open"
    await stamper.open()
    certificate = stamper.loaded.certificate
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    query = TimeStampQuery(OIDS["sha256"], b"\x00" * 32)
    stamper.clock = lambda: start + dt.timedelta(microseconds=1000)
    issued = await stamper.timestamp(query)
    assert issued.record.gen_time == start + dt.timedelta(microseconds=1000)
    stamper.clock = lambda: start + dt.timedelta(microseconds=1999)
    assert (await stamper.timestamp(query)).record.gen_time == \
        start + dt.timedelta(microseconds=1000)
    stamper.clock = lambda: start
    await stamper.timestamp(query)
    stamper.clock = lambda: end
    with caplog.at_level("ERROR", logger="ca_core.tsa"), \
            pytest.raises(tsa_core.Unavailable) as raised:
        await stamper.timestamp(query)
    assert raised.value.detail == "the TSA certificate is not valid now"
    assert [r.getMessage() for r in caplog.records] == [
        f"TSA certificate {stamper.loaded.record.name} is not valid at {end}"]
    stamper._clock_check = lambda: False
    with pytest.raises(tsa_core.TimeNotAvailable) as not_synced:
        await stamper.timestamp(query)
    assert not_synced.value.detail == "the TSA clock is not synchronised; try again later"


def test_hash_algorithm_names() -> None:
    """Configured hash names: any case, with or without '-' or '_'; broken ones refused."""
    assert tsa_core.hash_algorithm(" SHA_256 ") == tsa_core.hash_algorithm("sha-256") \
        == tsa_core.HASH_ALGORITHMS["sha256"]
    assert tsa_core.hash_algorithm("Sha3_256") == tsa_core.HASH_ALGORITHMS["sha3_256"]
    with pytest.raises(ValueError, match=r"^MD5 is broken and never accepted for time-stamps$"):
        tsa_core.hash_algorithm("MD5")
    with pytest.raises(ValueError) as raised:
        tsa_core.hash_algorithm("whirlpool")
    assert str(raised.value) == ("unknown hash algorithm 'whirlpool'; use some of "
                                 + ", ".join(tsa_core.HASH_ALGORITHMS))


def test_der_tags_need_the_low_tag_number_form() -> None:
    from ca_core import der

    assert der.implicit(30, b"\x04\x00") == b"\x9e\x00"
    with pytest.raises(ValueError, match=r"^tag number 31 needs the high-tag-number form$"):
        der.explicit(31, b"\x04\x00")


async def test_failures_are_logged_and_say_why(
        services: Services, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A failed signature or store write is logged with its cause and refused with a
    reason; serial clashes are logged and retried until the attempts run out."""
    from ca_core.storage import StoreConflict

    stamper = TimeStampAuthority(services.authority, services.config.tsa_settings(),
                                 clock_check=lambda: True)
    await stamper.open()
    unit = stamper._unit
    assert unit is not None
    query = TimeStampQuery(OIDS["sha256"], b"\x00" * 32)

    async def broken_key(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("token removed")

    with monkeypatch.context() as patch, caplog.at_level("ERROR", logger="ca_core.tsa"):
        patch.setattr(unit, "sign", broken_key)
        with pytest.raises(tsa_core.Unavailable) as raised:
            await stamper.timestamp(query)
    assert raised.value.detail == "the TSA key is not available"
    assert [r.getMessage() for r in caplog.records] == [
        f"signing a time-stamp with {unit.name} failed: token removed"]
    caplog.clear()

    async def store_down(record: Any) -> None:
        raise StoreUnavailable("disk gone")

    with monkeypatch.context() as patch, caplog.at_level("ERROR", logger="ca_core.tsa"):
        patch.setattr(services.store, "add_timestamp", store_down)
        with pytest.raises(tsa_core.Unavailable) as raised:
            await stamper.timestamp(query)
    assert raised.value.detail == "the time-stamp store is not available"
    assert [r.getMessage() for r in caplog.records] == ["recording a time-stamp failed: disk gone"]
    caplog.clear()

    async def taken(record: Any) -> None:
        raise StoreConflict("serial taken")

    with monkeypatch.context() as patch, caplog.at_level("WARNING", logger="ca_core.tsa"):
        patch.setattr(services.store, "add_timestamp", taken)
        with pytest.raises(tsa_core.Unavailable) as raised:
            await stamper.timestamp(query)
    assert raised.value.detail == "could not allocate a unique serial number"
    assert [r.getMessage() for r in caplog.records] == [
        "time-stamp serial collision; drawing a new serial"] * tsa_core._MAX_SERIAL_ATTEMPTS


def test_gen_time_encoder_equals_asn1crypto_from_the_datetime() -> None:
    """The per-second cached genTime text gives asn1crypto's own DER for the datetime."""
    from ca_core.tsa import GenTimeEncoder

    encode = GenTimeEncoder()
    base = dt.datetime(2026, 12, 7, 1, 2, 3, tzinfo=dt.UTC)
    values = [base, base.replace(microsecond=1000), base.replace(microsecond=120000),
              base.replace(microsecond=999000), base.replace(microsecond=100),
              base + dt.timedelta(seconds=1), base.replace(microsecond=5000),  # back again
              base.astimezone(dt.timezone(dt.timedelta(hours=-7), "X")).replace(
                  microsecond=450000),
              dt.datetime(1999, 12, 31, 23, 59, 59, 990000, tzinfo=dt.UTC),
              dt.datetime(2050, 1, 1, tzinfo=dt.UTC)]
    for value in values:
        assert encode(value) == core.GeneralizedTime(value).dump(), value
    with pytest.raises(ValueError, match="aware"):
        encode(base.replace(tzinfo=None))
