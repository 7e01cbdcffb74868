"""A small ACME client for tests: signs requests with josepy (RS/ES) or cryptography
(Ed25519), and lets a test break any part of a request on purpose."""

from __future__ import annotations

import base64
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import josepy
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from protocols.acme.jws import jwk_thumbprint

JOSE = "application/jose+json"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class AccountKey:
    private: Any
    alg: str

    @classmethod
    def make(cls, kind: str = "ec-p256") -> AccountKey:
        if kind == "ec-p256":
            return cls(ec.generate_private_key(ec.SECP256R1()), "ES256")
        if kind == "ec-p384":
            return cls(ec.generate_private_key(ec.SECP384R1()), "ES384")
        if kind == "rsa":
            return cls(rsa.generate_private_key(65537, 2048), "RS256")
        if kind == "ed25519":
            return cls(ed25519.Ed25519PrivateKey.generate(), "EdDSA")
        raise ValueError(kind)

    @property
    def jwk(self) -> dict[str, Any]:
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            raw = self.private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
        key = josepy.JWKEC(key=self.private) if isinstance(
            self.private, ec.EllipticCurvePrivateKey) else josepy.JWKRSA(key=self.private)
        result: dict[str, Any] = key.public_key().to_json()
        return result

    @property
    def thumbprint(self) -> str:
        return jwk_thumbprint(self.jwk)

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(data)
        algorithm = josepy.jwa.JWASignature.from_json(self.alg)
        signature: bytes = algorithm.sign(self.private, data)
        return signature


def jws(key: AccountKey, payload: Any, protected: dict[str, Any],
        alg: str | None = None) -> dict[str, str]:
    header = {"alg": alg or key.alg, **protected}
    protected_b64 = b64(json.dumps(header).encode())
    payload_b64 = "" if payload is None else b64(
        payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    signature = key.sign(f"{protected_b64}.{payload_b64}".encode())
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64(signature)}


def mac_jws(kid: str, secret: bytes, payload: Any, url: str, alg: str = "HS256"
            ) -> dict[str, str]:
    protected_b64 = b64(json.dumps({"alg": alg, "kid": kid, "url": url}).encode())
    payload_b64 = b64(json.dumps(payload).encode())
    algorithm = josepy.jwa.JWASignature.from_json(alg)
    signature = algorithm.sign(secret, f"{protected_b64}.{payload_b64}".encode())
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64(signature)}


def csr_for(names: list[str], key: Any = None, ips: list[str] | None = None) -> bytes:
    import ipaddress

    from cryptography import x509

    key = key or ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips or []]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or ips or ["x"])[0])]))
    builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@dataclass
class Client:
    http: TestClient
    key: AccountKey = field(default_factory=AccountKey.make)
    directory_path: str = "/acme/directory"
    directory: dict[str, Any] = field(default_factory=dict)
    account_url: str | None = None

    def path(self, url: str) -> str:
        return urllib.parse.urlsplit(url).path

    async def load(self) -> dict[str, Any]:
        response = await self.http.get(self.directory_path)
        assert response.status == 200
        self.directory = await response.json()
        return self.directory

    async def nonce(self) -> str:
        response = await self.http.head(self.path(self.directory["newNonce"]))
        assert response.status == 200, response.status
        return response.headers["Replay-Nonce"]

    async def post(self, url: str, payload: Any, *, use_jwk: bool = False,
                   key: AccountKey | None = None, nonce: str | None = None,
                   header: dict[str, Any] | None = None, content_type: str = JOSE,
                   alg: str | None = None) -> Any:
        key = key or self.key
        protected: dict[str, Any] = {"nonce": nonce or await self.nonce(), "url": url}
        if use_jwk or self.account_url is None:
            protected["jwk"] = key.jwk
        else:
            protected["kid"] = self.account_url
        protected.update(header or {})
        body = jws(key, payload, protected, alg)
        return await self.http.post(self.path(url), data=json.dumps(body),
                                    headers={"Content-Type": content_type})

    async def register(self, **extra: Any) -> Any:
        payload = {"termsOfServiceAgreed": True, "contact": ["mailto:ops@example.org"], **extra}
        response = await self.post(self.directory["newAccount"], payload, use_jwk=True)
        if response.status in (200, 201):
            self.account_url = response.headers["Location"]
        return response
