"""The Signer contract: every CA signature goes through one of these.

A Signer holds a reference to a private key that lives in a key backend (an encrypted
PKCS#8 file, or a PKCS#11 token) and signs with it. cryptography's certificate, CRL and OCSP
builders accept a Python subclass of its private-key ABCs and call its ``sign()``; for a token
key, ``builder_key()`` returns such a subclass whose ``sign()`` calls the token, so the key
never leaves it. Such a call blocks: ``Signer.run`` runs a build that signs off the event loop
for token keys and inline for software keys (a software ECDSA signature takes ~50 µs, less
than a thread hop).

RSA keys also decrypt (``Signer.decrypt``: RSAES-PKCS1-v1_5 or RSAES-OAEP, RFC 8017 7), for
CMS key transport (RFC 5652 6.2.1) to an RA key such as SCEP's. A token key decrypts only
when it was generated for it (``KeyBackend.generate(..., decrypt=True)`` sets CKA_DECRYPT):
a CA signing key never becomes a decryption oracle. Software keys carry no usage flags, so
for them the caller alone decides which key decrypts.

    KeyBackendError                a key could not be generated, found, unlocked or used
    ├── UnsupportedKeyOperation    this key (or backend) cannot do that: not RSA, not
    │                              generated for decryption, a padding/hash it lacks
    └── DecryptionFailed           the ciphertext does not decrypt under this key (wrong
                                   key, bad padding, wrong length)
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TypeAlias, TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)

from ca_core.keys import KeyAlgorithm, KeySpec

T = TypeVar("T")


class KeyBackendError(Exception):
    """A key could not be generated, found, unlocked or used."""


class UnsupportedKeyOperation(KeyBackendError):
    """The key or its backend cannot perform this operation (see the module docstring)."""


class DecryptionFailed(KeyBackendError):
    """The ciphertext does not decrypt under this key.

    Deliberately one error for every cause (padding, length, wrong key): telling them apart
    to a client is the padding oracle of Bleichenbacher's attack (RFC 3218 2.3).
    """


# RSAES-OAEP hashes by hashlib name (RFC 8017 B.1; the ones RFC 4055 2.1 names for CMS).
OAEP_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


@dataclass(frozen=True, slots=True)
class RsaOaep:
    """RSAES-OAEP (RFC 8017 7.1) with these hashes (hashlib names) and an empty label, as
    CMS uses it (RFC 3560 3); SHA-1 for both is the RFC 4055 default."""

    hash: str = "sha1"
    mgf1_hash: str = "sha1"

    def __post_init__(self) -> None:
        for name in (self.hash, self.mgf1_hash):
            if name not in OAEP_HASHES:
                raise ValueError(f"OAEP with {name} is not supported; use {', '.join(OAEP_HASHES)}")


# How an RSA ciphertext is padded: "pkcs1v15" (RSAES-PKCS1-v1_5, RFC 8017 7.2) or RsaOaep.
RsaPadding: TypeAlias = Literal["pkcs1v15"] | RsaOaep


def software_padding(padding_: RsaPadding) -> padding.AsymmetricPadding:
    """cryptography's padding object for ``padding_``."""
    if padding_ == "pkcs1v15":
        return padding.PKCS1v15()
    if isinstance(padding_, RsaOaep):
        return padding.OAEP(mgf=padding.MGF1(OAEP_HASHES[padding_.mgf1_hash]()),
                            algorithm=OAEP_HASHES[padding_.hash](), label=None)
    raise ValueError(f"unknown RSA padding {padding_!r}")


class Signer(abc.ABC):
    """One CA private key, usable for X.509 builders and for raw (CMS) signatures."""

    key_ref: str
    key_spec: KeySpec
    hsm_backed: bool = False

    @property
    @abc.abstractmethod
    def public_key(self) -> CertificateIssuerPublicKeyTypes: ...

    @abc.abstractmethod
    def builder_key(self) -> CertificateIssuerPrivateKeyTypes:
        """An object cryptography's builders accept as ``private_key``."""

    @abc.abstractmethod
    def sign_sync(self, data: bytes) -> bytes:
        """Sign ``data`` with the key's digest (``key_spec.hash_algorithm``).

        ECDSA signatures are DER (X.509 form); RSA is PKCS#1 v1.5. Blocks for token keys.
        """

    async def run(self, build: Callable[[], T]) -> T:
        """Run a build that signs with this key, off the event loop if the key is remote."""
        return build()

    async def sign(self, data: bytes) -> bytes:
        return await self.run(lambda: self.sign_sync(data))

    @property
    def can_decrypt(self) -> bool:
        """Whether ``decrypt`` can work with this key (RSA, and allowed to decrypt)."""
        return False

    def decrypt_sync(self, ciphertext: bytes, padding: RsaPadding) -> bytes:
        """RSA-decrypt ``ciphertext``; blocks for token keys. Raises DecryptionFailed when it
        does not decrypt, UnsupportedKeyOperation when this key cannot decrypt so."""
        raise UnsupportedKeyOperation(f"{self.key_spec} key {self.key_ref} cannot decrypt")

    async def decrypt(self, ciphertext: bytes, padding: RsaPadding) -> bytes:
        """``decrypt_sync`` off the event loop if the key is remote (like ``sign``)."""
        return await self.run(lambda: self.decrypt_sync(ciphertext, padding))


@dataclass(frozen=True, slots=True)
class KeyProtection:
    """How a key is held, for the crypto inventory (``KeyBackend.describe``). For a token
    key, ``extractable`` and ``sensitive`` are the token's CKA_EXTRACTABLE and
    CKA_SENSITIVE; a software key has neither (None)."""

    backend: str
    summary: str  # one line for people: "software (encrypted file)", "PKCS#11, ..."
    module: str | None = None  # PKCS#11 module path
    label: str | None = None  # PKCS#11 token label
    extractable: bool | None = None
    sensitive: bool | None = None


class KeyBackend(abc.ABC):
    """Where CA keys are generated and found again by their ``key_ref``."""

    name: str

    def describe(self, key_ref: str) -> KeyProtection:
        """How the key ``key_ref`` is held; blocking (a token is asked). KeyBackendError
        when it cannot be found."""
        return KeyProtection(backend=self.name, summary=self.name)

    @abc.abstractmethod
    def generate(self, spec: KeySpec, label: str, *, decrypt: bool = False) -> Signer:
        """Create a new key named ``label``; blocking (call from a thread in async code).

        ``decrypt``: the key will also decrypt (RSA only; an RA key, never a CA key)."""

    @abc.abstractmethod
    def load(self, key_ref: str) -> Signer:
        """Open an existing key; blocking."""

    def check(self) -> dict[str, Any]:
        """Health details of the backend; raises KeyBackendError when it is unusable."""
        return {"backend": self.name}

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release sessions and handles."""


class SoftwareSigner(Signer):
    """A key held in process memory (loaded from an encrypted PKCS#8 file)."""

    def __init__(self, key: CertificateIssuerPrivateKeyTypes, spec: KeySpec, key_ref: str) -> None:
        self._key = key
        self.key_spec = spec
        self.key_ref = key_ref
        # The signature scheme objects, built once: per signature they cost about as much
        # Python as the rest of sign_sync (ECDSA.__init__ and the hash, ~3% of a time-stamp).
        self._algorithm = spec.hash_algorithm
        self._ecdsa = ec.ECDSA(self._algorithm) if self._algorithm is not None else None
        self._pkcs1 = padding.PKCS1v15()

    @property
    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        return self._key.public_key()

    def builder_key(self) -> CertificateIssuerPrivateKeyTypes:
        return self._key

    def sign_sync(self, data: bytes) -> bytes:
        key = self._key
        algorithm = self._algorithm
        if isinstance(key, ec.EllipticCurvePrivateKey) and self._ecdsa is not None:
            return key.sign(data, self._ecdsa)
        if isinstance(key, rsa.RSAPrivateKey) and algorithm is not None:
            return key.sign(data, self._pkcs1, algorithm)
        return key.sign(data)  # type: ignore[call-arg]

    @property
    def can_decrypt(self) -> bool:
        return isinstance(self._key, rsa.RSAPrivateKey)

    def decrypt_sync(self, ciphertext: bytes, padding: RsaPadding) -> bytes:
        key = self._key
        if not isinstance(key, rsa.RSAPrivateKey):
            raise UnsupportedKeyOperation(f"{self.key_spec} keys cannot decrypt (RSA only)")
        chosen = software_padding(padding)
        try:
            return key.decrypt(ciphertext, chosen)
        except ValueError:
            # OpenSSL >= 3.2 answers a bad PKCS#1 v1.5 padding with a pseudo-random plaintext
            # (implicit rejection) rather than an error; OAEP and lengths still fail here.
            raise DecryptionFailed("the ciphertext does not decrypt under this key") from None


def _no_export() -> NoReturn:
    raise TypeError("a token key cannot be exported")


class RemoteECKey(ec.EllipticCurvePrivateKey):
    """An EC private key whose ``sign()`` is a call into a token.

    ``sign_digest`` receives the message digest and returns DER ECDSA; hashing here keeps
    the token call to raw CKM_ECDSA, which every token (SoftHSM2 2.6 included) offers.
    """

    def __init__(
        self, public: ec.EllipticCurvePublicKey, sign_digest: Callable[[bytes], bytes]
    ) -> None:
        self._public = public
        self._sign_digest = sign_digest

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, utils.Prehashed):
            return self._sign_digest(bytes(data))
        digest = hashes.Hash(algorithm)
        digest.update(bytes(data))
        return self._sign_digest(digest.finalize())

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(
        self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey
    ) -> bytes:
        raise TypeError("CA keys are for signing only")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _no_export()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        _no_export()

    def __copy__(self) -> RemoteECKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> RemoteECKey:
        return self


class RemoteRSAKey(rsa.RSAPrivateKey):
    """An RSA private key whose PKCS#1 v1.5 ``sign()`` is a call into a token.

    ``sign_message`` receives the message and the hash and returns the signature, so a
    token can use its combined mechanism (CKM_SHA256_RSA_PKCS).
    """

    def __init__(
        self,
        public: rsa.RSAPublicKey,
        sign_message: Callable[[bytes, hashes.HashAlgorithm], bytes],
    ) -> None:
        self._public = public
        self._sign_message = sign_message

    def sign(
        self,
        data: bytes,
        padding_: padding.AsymmetricPadding,
        algorithm: utils.Prehashed | hashes.HashAlgorithm | utils.NoDigestInfo,
    ) -> bytes:
        if not isinstance(padding_, padding.PKCS1v15) or not isinstance(
            algorithm, hashes.HashAlgorithm
        ):
            raise TypeError("token RSA keys sign PKCS#1 v1.5 over the whole message")
        return self._sign_message(bytes(data), algorithm)

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        raise TypeError("CA keys are for signing only")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _no_export()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        _no_export()

    def __copy__(self) -> RemoteRSAKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> RemoteRSAKey:
        return self


def key_spec_algorithm_ok(spec: KeySpec) -> bool:
    """Token backends support RSA and ECDSA CA keys; Ed25519 CAs are software only."""
    return spec.algorithm in (KeyAlgorithm.RSA, KeyAlgorithm.ECDSA)
