"""ACME request JWS (RFC 8555 section 6.2, RFC 7515 flattened JSON serialization).

josepy parses the JWKs and checks RS256/ES256/ES384 and HMAC signatures (raw r||s ECDSA
included); josepy 2.2 has no EdDSA, so Ed25519 (RFC 8037) is checked here with
cryptography. The protected header is plain JSON: ``nonce`` and ``url`` are ACME's own
members, read from it directly. Here too: strict base64url (RFC 7515 section 2) and the
JWK thumbprint (RFC 7638) that names an account.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import josepy
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from josepy import json_util

from protocols.acme.problems import AcmeProblem

ACCOUNT_ALGORITHMS = ("RS256", "ES256", "ES384", "EdDSA")
MAC_ALGORITHMS = ("HS256", "HS384", "HS512")
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1"}


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of the key itself: RSA and EC keys through
    josepy, which re-encodes the members from the key, so two spellings of one key (a
    leading zero octet in ``n``, say) have one thumbprint and so one account. josepy has no
    OKP keys: Ed25519's ``x`` is decoded and encoded again for the same reason."""
    kty = jwk.get("kty") if isinstance(jwk, dict) else None
    required = {"RSA": ("e", "n"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x")}.get(str(kty))
    if required is None or any(not isinstance(jwk.get(m), str) for m in required):
        raise AcmeProblem("badPublicKey", "unsupported or incomplete JWK")
    if kty == "OKP":
        canonical = json.dumps(
            {"crv": jwk["crv"], "kty": "OKP", "x": b64url(b64url_decode(jwk["x"], "the JWK's x"))},
            separators=(",", ":"), sort_keys=True)
        return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())
    try:
        key: josepy.jwk.JWK = josepy.jwk.JWK.from_json(  # type: ignore[assignment]
            {m: jwk[m] for m in ("kty", *required)})
        return b64url(key.thumbprint())
    except (josepy.errors.DeserializationError, ValueError, TypeError, KeyError,
            AttributeError):
        raise AcmeProblem("badPublicKey", "the JWK cannot be read") from None


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 2), as josepy writes it."""
    text: str = json_util.encode_b64jose(data)
    return text


def b64url_decode(text: Any, what: str) -> bytes:
    """Strict base64url without padding (RFC 7515 2): josepy's decoder accepts padding and
    drops characters outside the alphabet, which an ACME server must refuse (malformed)."""
    if not isinstance(text, str) or "=" in text or "+" in text or "/" in text:
        raise AcmeProblem("malformed", f"{what} is not base64url without padding")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise AcmeProblem("malformed", f"{what} is not base64url") from None


@dataclass(frozen=True, slots=True)
class Jws:
    protected: dict[str, Any]
    payload: bytes  # b"": POST-as-GET
    signature: bytes
    signing_input: bytes

    @property
    def alg(self) -> str:
        return str(self.protected.get("alg"))

    def payload_json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise AcmeProblem("malformed", "the payload is not JSON") from None
        if not isinstance(value, dict):
            raise AcmeProblem("malformed", "the payload is not a JSON object")
        return value


def parse(body: bytes | dict[str, Any]) -> Jws:
    """A flattened JWS (the only serialization ACME allows)."""
    if isinstance(body, dict):
        document = body
    else:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise AcmeProblem("malformed", "the request body is not JSON") from None
    if not isinstance(document, dict) or "signatures" in document:
        raise AcmeProblem("malformed", "send a flattened JWS")
    if "header" in document:
        raise AcmeProblem("malformed", "unprotected JWS headers are not allowed")
    protected_b64 = document.get("protected")
    payload_b64 = document.get("payload")
    if not isinstance(protected_b64, str) or not isinstance(payload_b64, str):
        raise AcmeProblem("malformed", "the JWS lacks protected or payload")
    try:
        protected = json.loads(b64url_decode(protected_b64, "protected"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AcmeProblem("malformed", "the protected header is not JSON") from None
    if not isinstance(protected, dict):
        raise AcmeProblem("malformed", "the protected header is not an object")
    if "crit" in protected:
        # RFC 7515 4.1.11: a recipient must reject a JWS whose crit names an extension it
        # does not understand, or is malformed (empty, not a list of names). ACME defines
        # none and this server understands none (b64 of RFC 7797 included).
        raise AcmeProblem("malformed", "the protected header names critical extensions "
                          "(crit) this server does not understand")
    return Jws(
        protected=protected,
        payload=b64url_decode(payload_b64, "payload") if payload_b64 else b"",
        signature=b64url_decode(document.get("signature"), "signature"),
        signing_input=f"{protected_b64}.{payload_b64}".encode("ascii"),
    )


def public_key(jwk: Any) -> PublicKeyTypes:
    """The public key of a JWK; badPublicKey for what we do not accept."""
    if not isinstance(jwk, dict) or "d" in jwk or "k" in jwk:
        raise AcmeProblem("badPublicKey", "the JWK must be a public key")
    jwk_thumbprint(jwk)  # badPublicKey unless the RFC 7638 members are there, as strings
    try:
        canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        raise AcmeProblem("badPublicKey", "the JWK cannot be read") from None
    return _public_key(canonical)


_ACCOUNT_KEYS: OrderedDict[str, PublicKeyTypes] = OrderedDict()
_ACCOUNT_KEYS_MAX = 4096


def account_public_key(key_thumbprint: str, jwk: dict[str, Any]) -> PublicKeyTypes:
    """The key of a stored account, by its RFC 7638 thumbprint (computed when the key was
    registered or changed): no JSON canonicalisation or hashing on each request."""
    key = _ACCOUNT_KEYS.get(key_thumbprint)
    if key is None:
        key = public_key(jwk)
        _ACCOUNT_KEYS[key_thumbprint] = key
        if len(_ACCOUNT_KEYS) > _ACCOUNT_KEYS_MAX:
            _ACCOUNT_KEYS.popitem(last=False)
    return key


@functools.lru_cache(maxsize=4096)
def _public_key(canonical: str) -> PublicKeyTypes:
    # Every signed request of an account carries or names the same key: parse it once.
    # A failure raises, and exceptions are not cached.
    jwk = json.loads(canonical)
    if jwk.get("kty") == "OKP":
        if jwk.get("crv") != "Ed25519":
            raise AcmeProblem("badPublicKey", "only Ed25519 OKP keys are supported")
        raw = b64url_decode(jwk.get("x"), "the JWK's x")
        try:
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise AcmeProblem("badPublicKey", "not an Ed25519 public key") from None
    if jwk.get("kty") not in ("RSA", "EC"):
        raise AcmeProblem("badPublicKey", f"unsupported key type {jwk.get('kty')!r}")
    try:
        parsed: Any = josepy.jwk.JWK.from_json(jwk)
    except (josepy.errors.DeserializationError, ValueError, TypeError, KeyError,
            AttributeError):
        raise AcmeProblem("badPublicKey", "the JWK cannot be read") from None
    # josepy wraps the cryptography key to make it comparable.
    key = getattr(parsed.key, "_wrapped", parsed.key)
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048 or key.key_size > 8192:
            raise AcmeProblem("badPublicKey", "RSA account keys must be 2048 to 8192 bits")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise AcmeProblem("badPublicKey", "EC account keys must be P-256 or P-384")
        return key
    raise AcmeProblem("badPublicKey", "unsupported key")


def verify(jws: Jws, key: PublicKeyTypes) -> None:
    """The signature over the JWS with ``key``, under an algorithm that fits the key."""
    alg = jws.alg
    if alg not in ACCOUNT_ALGORITHMS:
        raise AcmeProblem("badSignatureAlgorithm", f"algorithm {alg!r} is not accepted; "
                          f"use one of {', '.join(ACCOUNT_ALGORITHMS)}")
    fits = (
        (alg == "RS256" and isinstance(key, rsa.RSAPublicKey))
        or (alg in _CURVES and isinstance(key, ec.EllipticCurvePublicKey)
            and key.curve.name == _CURVES[alg])
        or (alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey))
    )
    if not fits:
        raise AcmeProblem("badSignatureAlgorithm", f"algorithm {alg} does not fit the key")
    if isinstance(key, ed25519.Ed25519PublicKey):
        try:
            key.verify(jws.signature, jws.signing_input)
        except InvalidSignature:
            raise AcmeProblem("malformed", "the JWS signature is invalid") from None
        return
    algorithm = josepy.jwa.JWASignature.from_json(alg)
    try:
        ok = algorithm.verify(key, jws.signing_input, jws.signature)
    except (InvalidSignature, ValueError, TypeError):
        ok = False
    if not ok:
        raise AcmeProblem("malformed", "the JWS signature is invalid")


def verify_mac(jws: Jws, secret: bytes) -> None:
    """An External Account Binding JWS (RFC 8555 7.3.4): HS256/384/512 over the account key."""
    if jws.alg not in MAC_ALGORITHMS:
        raise AcmeProblem("badSignatureAlgorithm",
                          f"EAB must use one of {', '.join(MAC_ALGORITHMS)}")
    algorithm = josepy.jwa.JWASignature.from_json(jws.alg)
    try:
        ok = algorithm.verify(secret, jws.signing_input, jws.signature)
    except (InvalidSignature, ValueError, TypeError):
        ok = False
    if not ok:
        raise AcmeProblem("unauthorized", "the External Account Binding MAC is invalid", 401)
