"""What the run attacks: per protocol, the surfaces (a route and a valid seed request that
the mutations start from), the valid control request that must keep succeeding, and the
route's body limit (for the huge-body attack). Seeds are made against the running gateway
the way real clients make them: a REST token, an ACME account request with a fresh nonce,
an EST one-time secret, a SCEP PKCSReq enveloped to the RA certificate."""

from __future__ import annotations

import base64
import collections
import json
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from asn1crypto import cms as asn1_cms
from asn1crypto import tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from conformance.gateway import Gateway
from tests.acme_client import AccountKey, jws
from tests.helpers import make_csr

Listener = Literal["http", "https", "est"]
# How a surface is mutated: its body, the last segment of its path, or the SCEP message
# in its query string.
Target = Literal["body", "tail", "query"]

PROTOCOLS = ("acme", "est", "scep", "ocsp-get", "ocsp-post", "tsa", "crl", "rest")
LISTENER_OF = {"acme": "https", "rest": "https", "est": "est", "scep": "http",
               "ocsp-get": "http", "ocsp-post": "http", "tsa": "http", "crl": "http"}


@dataclass
class Surface:
    name: str
    protocol: str
    method: str
    listener: Listener
    path: str  # for "tail": the prefix; the mutated segment is ``tail``
    seed: bytes = b""
    content_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    target: Target = "body"
    tail: str = ""
    body_limit: int = 0  # the route's own limit (413 above it); 0: a GET route
    counts: collections.Counter[int] = field(default_factory=collections.Counter)
    accepted: int = 0  # answered with success: the mutation left a valid request
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Control:
    """A valid request of a protocol and what its answer must be."""

    protocol: str
    method: str
    listener: Listener
    path: str
    body: bytes = b""
    content_type: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    issues: bool = False  # it makes a certificate (counted against the store)


@dataclass
class Seeds:
    surfaces: list[Surface]
    controls: dict[str, Control]
    admin_token: str  # pki_super_admin: the store checks read through REST


def _token(gateway: Gateway, role: str) -> str:
    return gateway.cli("token", "create", "--org", "default", "--role", role
                       ).stdout.strip().splitlines()[-1]


async def _scep_seed(gateway: Gateway, session: aiohttp.ClientSession) -> bytes:
    from tests.test_scep import csr_for, pki_message, requester

    async with session.get(f"{gateway.http_url}/scep",
                           params={"operation": "GetCACert"}) as response:
        signed = asn1_cms.ContentInfo.load(await response.read())["content"]
    certificates = [x509.load_der_x509_certificate(c.chosen.dump())
                    for c in signed["certificates"]]
    (ra,) = [c for c in certificates
             if not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca]
    challenge = gateway.cli("scep", "challenge", "create", "--org", "default"
                            ).stdout.split()[0]
    who = requester("hostile-scep")
    return await pki_message(who, ra, csr_for(who, challenge, cn="hostile-scep"))


async def make_seeds(gateway: Gateway, session: aiohttp.ClientSession,
                     admin_token: str) -> Seeds:
    token = _token(gateway, "cert_manager")
    rest_body = json.dumps({"csr": make_csr().decode(), "profile": "vcc_service"}).encode()
    bearer = {"Authorization": f"Bearer {token}"}
    async with session.post(f"{gateway.https_url}/api/v1/certificates", data=rest_body,
                            headers={**bearer, "Content-Type": "application/json"}
                            ) as response:
        assert response.status == 201, await response.text()
        issued = await response.json()
    certificate = x509.load_pem_x509_certificate(issued["certificate_pem"].encode())
    issuer = x509.load_pem_x509_certificate(issued["chain_pem"].encode())
    ocsp_der = ocsp.OCSPRequestBuilder().add_certificate(
        certificate, issuer, hashes.SHA1()).build().public_bytes(serialization.Encoding.DER)
    ocsp_b64 = base64.b64encode(ocsp_der).decode()
    tsq = tsp.TimeStampReq({"version": 1, "message_imprint": {
        "hash_algorithm": {"algorithm": "sha256"}, "hashed_message": b"\x11" * 32},
        "nonce": 12345, "cert_req": True}).dump()
    async with session.get(f"{gateway.https_url}/acme/directory") as response:
        directory = await response.json()
    async with session.head(directory["newNonce"]) as response:
        nonce = response.headers["Replay-Nonce"]
    key = AccountKey.make()
    account = json.dumps(jws(key, {"termsOfServiceAgreed": True}, {
        "nonce": nonce, "url": directory["newAccount"], "jwk": key.jwk})).encode()
    acme_path = "/" + directory["newAccount"].split("/", 3)[3]
    order_path = "/" + directory["newOrder"].split("/", 3)[3]
    nonce_path = "/" + directory["newNonce"].split("/", 3)[3]
    jose = "application/jose+json"
    secret = gateway.cli("est", "secret", "create", "--org", "default").stdout.split()
    basic = base64.b64encode(
        f"{secret[secret.index('user') + 1]}:{secret[secret.index('password') + 1]}".encode()
    ).decode()
    est_csr = base64.b64encode(
        x509.load_pem_x509_csr(make_csr()).public_bytes(serialization.Encoding.DER))
    scep_message = await _scep_seed(gateway, session)
    surfaces = [
        Surface("acme-account", "acme", "POST", "https", acme_path, account, jose,
                body_limit=64 * 1024),
        Surface("acme-order", "acme", "POST", "https", order_path, account, jose,
                body_limit=64 * 1024),
        # EST (its own listener): an enrollment with a real one-time secret; the paths.
        Surface("est-enroll", "est", "POST", "est", "/.well-known/est/simpleenroll", est_csr,
                "application/pkcs10", {"Authorization": f"Basic {basic}"},
                body_limit=64 * 1024),
        Surface("est-path", "est", "GET", "est", "/.well-known/est/", target="tail",
                tail="cacerts"),
        Surface("scep-post", "scep", "POST", "http", "/scep?operation=PKIOperation",
                scep_message, "application/x-pki-message", body_limit=64 * 1024),
        Surface("scep-get", "scep", "GET", "http", "/scep?operation=PKIOperation&message=",
                target="query", tail=base64.b64encode(scep_message).decode()),
        Surface("ocsp-get", "ocsp-get", "GET", "http", "/ocsp/", target="tail",
                tail=ocsp_b64),
        Surface("ocsp-post", "ocsp-post", "POST", "http", "/ocsp", ocsp_der,
                "application/ocsp-request", body_limit=16 * 1024),
        Surface("tsa", "tsa", "POST", "http", "/tsa", tsq, "application/timestamp-query",
                body_limit=16 * 1024),
        Surface("crl", "crl", "GET", "http", "/crl/", target="tail",
                tail="default-issuing.crl"),
        Surface("rest-issue", "rest", "POST", "https", "/api/v1/certificates", rest_body,
                "application/json", bearer, body_limit=256 * 1024),
        Surface("rest-get", "rest", "GET", "https", "/api/v1/certificates/", headers=bearer,
                target="tail", tail=issued["serial"]),
    ]
    controls = {
        "acme": Control("acme", "HEAD", "https", nonce_path),
        "est": Control("est", "GET", "est", "/.well-known/est/cacerts"),
        "scep": Control("scep", "GET", "http", "/scep?operation=GetCACaps"),
        "ocsp-get": Control("ocsp-get", "GET", "http", "/ocsp/" + ocsp_b64),
        "ocsp-post": Control("ocsp-post", "POST", "http", "/ocsp", ocsp_der,
                             "application/ocsp-request"),
        "tsa": Control("tsa", "POST", "http", "/tsa", tsq, "application/timestamp-query"),
        "crl": Control("crl", "GET", "http", "/crl/default-issuing.crl"),
        # A fresh CSR each time (control_body): the one valid request here that issues.
        "rest": Control("rest", "POST", "https", "/api/v1/certificates", b"",
                        "application/json", tuple(bearer.items()), issues=True),
    }
    return Seeds(surfaces, controls, admin_token)


def control_body(control: Control) -> bytes:
    if control.issues:
        return json.dumps({"csr": make_csr().decode(), "profile": "vcc_service"}).encode()
    return control.body
