"""Write the seed corpus of every fuzz target (fuzz/corpus/TARGET/seed-*): valid requests
of each protocol, made the way the conformance clients make them. Run once; the seeds are
committed. ``python -m fuzz.make_seeds`` (idempotent: the RA key is made only once).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import urllib.parse
from pathlib import Path

from asn1crypto import algos, core, tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509 import ocsp
from cryptography.x509.oid import AttributeOID, NameOID

from ca_core import admin
from ca_core import scep_attributes as sa
from ca_core.cms import encrypt_enveloped, sign_data
from ca_core.keys import spec_of
from ca_core.signers.base import SoftwareSigner

HERE = Path(__file__).parent
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, cn: str
                 ) -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(1000)
            .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=3650))
            .sign(key, hashes.SHA256()))


def _ra() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    keys = HERE.parent / "tests" / "fixtures" / "fuzz"
    keys.mkdir(exist_ok=True)
    if not (keys / "scep_ra.key").exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (keys / "scep_ra.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (keys / "scep_ra.pem").write_bytes(
            _self_signed(key, "fuzz SCEP RA").public_bytes(serialization.Encoding.PEM))
    loaded = serialization.load_pem_private_key((keys / "scep_ra.key").read_bytes(), None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    return loaded, x509.load_pem_x509_certificate((keys / "scep_ra.pem").read_bytes())


def _csr(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, challenge: str | None = None
         ) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name("device.example"))
    builder = builder.add_extension(x509.SubjectAlternativeName(
        [x509.DNSName("device.example"), x509.DNSName("www.device.example")]), critical=False)
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return builder.sign(key, hashes.SHA256())


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jws(key: ec.EllipticCurvePrivateKey, protected: dict[str, object], payload: bytes
         ) -> bytes:
    protected_b64 = _b64u(json.dumps(protected).encode())
    payload_b64 = _b64u(payload) if payload else ""
    der = key.sign(f"{protected_b64}.{payload_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return json.dumps({"protected": protected_b64, "payload": payload_b64,
                       "signature": _b64u(signature)}).encode()


def _write(target: str, seeds: dict[str, bytes]) -> None:
    directory = HERE / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (directory / f"seed-{name}").write_bytes(data)


def main() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = _csr(ec_key)
    csr_der = csr.public_bytes(serialization.Encoding.DER)
    csr_pem = csr.public_bytes(serialization.Encoding.PEM)
    numbers = ec_key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "x": _b64u(numbers.x.to_bytes(32, "big")),
           "y": _b64u(numbers.y.to_bytes(32, "big"))}
    url = "http://127.0.0.1:8080/acme"
    mac = _b64u(hashlib.sha256(b"eab").digest())
    eab = {"protected": _b64u(json.dumps({"alg": "HS256", "kid": "kid-1",
                                          "url": f"{url}/new-account"}).encode()),
           "payload": _b64u(json.dumps(jwk).encode()), "signature": mac}
    def parts(protected: dict[str, object], payload: bytes) -> bytes:
        return json.dumps(protected).encode() + b"\x00" + payload + b"\x00" + b"\x01" * 64

    _write("acme_jws", {
        "parts-new-account": parts({"alg": "ES256", "jwk": jwk, "nonce": "abc",
                                    "url": f"{url}/new-account"},
                                   json.dumps({"contact": ["mailto:a@example.org"],
                                               "externalAccountBinding": eab}).encode()),
        "parts-eab-hmac": parts({"alg": "HS256", "jwk": jwk, "url": f"{url}/new-account"},
                                b"{}"),
        "parts-finalize": parts({"alg": "ES256", "kid": f"{url}/acct/1", "nonce": "abc",
                                 "url": f"{url}/order/1/finalize"},
                                json.dumps({"csr": _b64u(csr_der)}).encode()),
        "parts-rsa-jwk": parts({"alg": "RS256", "jwk": {
            "kty": "RSA", "e": "AQAB",
            "n": _b64u(rsa_key.public_key().public_numbers().n.to_bytes(256, "big"))}}, b""),
        "parts-okp-jwk": parts({"alg": "EdDSA", "jwk": {
            "kty": "OKP", "crv": "Ed25519", "x": _b64u(b"\x11" * 32)}}, b""),
        "new-account": _jws(ec_key, {"alg": "ES256", "jwk": jwk, "nonce": "abc",
                                     "url": f"{url}/new-account"},
                            json.dumps({"termsOfServiceAgreed": True,
                                        "contact": ["mailto:a@example.org"],
                                        "externalAccountBinding": eab}).encode()),
        "new-order": _jws(ec_key, {"alg": "ES256", "kid": f"{url}/acct/1", "nonce": "abc",
                                   "url": f"{url}/new-order"},
                          json.dumps({"identifiers": [{"type": "dns",
                                                       "value": "device.example"}]}).encode()),
        "finalize": _jws(ec_key, {"alg": "ES256", "kid": f"{url}/acct/1", "nonce": "abc",
                                  "url": f"{url}/order/1/finalize"},
                         json.dumps({"csr": _b64u(csr_der)}).encode()),
        "post-as-get": _jws(ec_key, {"alg": "ES256", "kid": f"{url}/acct/1", "nonce": "abc",
                                     "url": f"{url}/order/1"}, b""),
    })

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _self_signed(ca_key, "fuzz CA")
    leaf_pem = ca.public_bytes(serialization.Encoding.PEM)
    _write("est", {
        "simpleenroll": b"\x00" + base64.encodebytes(csr_der),
        "simpleenroll-pem": b"\x00" + csr_pem,
        "basic": b"\x01Basic " + base64.b64encode(b"device:s3cret"),
        "header-cert-escaped": b"\x02" + urllib.parse.quote(leaf_pem.decode()).encode(),
        "header-cert-der": b"\x02" + base64.b64encode(
            ca.public_bytes(serialization.Encoding.DER)),
    })

    _, ra_cert = _ra()
    requester = _self_signed(rsa_key, "device")
    signer = SoftwareSigner(rsa_key, spec_of(rsa_key.public_key()), "file:seed")
    scep_csr = _csr(rsa_key, "challenge-1").public_bytes(serialization.Encoding.DER)

    async def pki_message(message_type: str, cipher: str) -> bytes:
        envelope = encrypt_enveloped(scep_csr, [ra_cert], cipher=cipher)  # type: ignore[arg-type]
        return await sign_data(signer, requester, envelope, certificates=[requester],
                               signed_attrs=[sa.printable(sa.TRANSACTION_ID, "0123abcd"),
                                             sa.printable(sa.MESSAGE_TYPE, message_type),
                                             sa.octets(sa.SENDER_NONCE, b"n" * 16)])

    _write("scep", {
        "pkcsreq-aes256": asyncio.run(pki_message("19", "aes256_cbc")),
        "renewal-des3": asyncio.run(pki_message("17", "tripledes_3key")),
        "certpoll": asyncio.run(pki_message("20", "aes128_cbc")),
    })

    builder = ocsp.OCSPRequestBuilder().add_certificate(ca, ca, hashes.SHA1())
    plain = builder.build().public_bytes(serialization.Encoding.DER)
    with_nonce = builder.add_extension(x509.OCSPNonce(b"\x01" * 16), critical=False).build()
    nonce_der = with_nonce.public_bytes(serialization.Encoding.DER)
    _write("ocsp_der", {"plain": plain, "nonce": nonce_der})
    _write("ocsp_get", {
        "escaped": urllib.parse.quote(base64.b64encode(plain).decode(), safe="").encode(),
        "raw": base64.b64encode(nonce_der),
        "urlsafe": base64.urlsafe_b64encode(plain).rstrip(b"="),
    })

    def timestamp_request(nonce: int | None, policy: str | None, cert_req: bool) -> bytes:
        fields: dict[str, object] = {
            "version": "v1",
            "message_imprint": tsp.MessageImprint({
                "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
                "hashed_message": hashlib.sha256(b"data").digest()}),
            "cert_req": cert_req,
        }
        if nonce is not None:
            fields["nonce"] = nonce
        if policy is not None:
            fields["req_policy"] = core.ObjectIdentifier(policy)
        return bytes(tsp.TimeStampReq(fields).dump())

    _write("tsa", {"plain": timestamp_request(None, None, False),
                   "nonce-certreq": timestamp_request(0x1234567890, None, True),
                   "policy": timestamp_request(7, "1.3.6.1.4.1.4146.2.3", False)})

    cursor = admin.encode_cursor(NOW, "0123")
    _write("rest", {
        "issue": json.dumps({"csr": csr_pem.decode(), "profile": "vcc_service",
                             "organization": "default", "validity_days": 30}).encode(),
        "revoke": json.dumps({"reason": "keyCompromise",
                              "invalidity_date": "2026-01-01T00:00:00Z"}).encode(),
        "org": json.dumps({"slug": "acme-corp", "name": "ACME", "isolation": "strict",
                           "policy": {"allowed_names": ["example.org"],
                                      "allowed_ip_ranges": ["10.0.0.0/8"],
                                      "profiles": ["vcc_service"],
                                      "max_validity_days": 90}}).encode(),
        "token": json.dumps({"organization": "default", "role": "operator",
                             "name": "ci", "expires_in_days": 30}).encode(),
        "query": f"status=valid&profile=vcc_service&q=device&limit=50&cursor={cursor}"
                 "&expiring_before=2026-02-01T00:00:00Z".encode(),
        "query-audit": f"since=2026-01-01T00:00:00%2B01:00&until=2026-02-01T00:00:00Z"
                       f"&actor=admin&action=issue&cursor={admin.encode_cursor(42)}".encode(),
    })

    _write("config", {
        "example": (HERE.parent / "deploy" / "vcc-pki.example.toml").read_bytes(),
        "small": b'data_dir = "/tmp/vcc"\nworkers = 2\nkey_backend = "software"\n'
                 b'[ocsp]\nvalidity_days = 2\n[est]\nmax_body_bytes = 4096\n'
                 b'trusted_proxies = ["127.0.0.1/32"]\n[acme]\ndns_resolver = "127.0.0.1:53"\n',
    })


if __name__ == "__main__":
    main()
