"""Key specifications: what the CA core generates and what it accepts in requests."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes


class KeyAlgorithm(enum.StrEnum):
    RSA = "RSA"
    ECDSA = "ECDSA"
    ED25519 = "Ed25519"


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A key type and size, spelled like ``ec-p256``, ``rsa-3072`` or ``ed25519``."""

    algorithm: KeyAlgorithm
    size: int

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        spec = text.strip().lower().replace("_", "-")
        table = {
            "ec-p256": cls(KeyAlgorithm.ECDSA, 256),
            "ecdsa-p256": cls(KeyAlgorithm.ECDSA, 256),
            "p256": cls(KeyAlgorithm.ECDSA, 256),
            "ec-p384": cls(KeyAlgorithm.ECDSA, 384),
            "ecdsa-p384": cls(KeyAlgorithm.ECDSA, 384),
            "p384": cls(KeyAlgorithm.ECDSA, 384),
            "rsa-2048": cls(KeyAlgorithm.RSA, 2048),
            "rsa-3072": cls(KeyAlgorithm.RSA, 3072),
            "rsa-4096": cls(KeyAlgorithm.RSA, 4096),
            "ed25519": cls(KeyAlgorithm.ED25519, 256),
        }
        try:
            return table[spec]
        except KeyError:
            raise ValueError(
                f"unknown key type {text!r}; use one of {', '.join(sorted(table))}"
            ) from None

    def __str__(self) -> str:
        if self.algorithm is KeyAlgorithm.ECDSA:
            return f"ec-p{self.size}"
        if self.algorithm is KeyAlgorithm.RSA:
            return f"rsa-{self.size}"
        return "ed25519"

    @property
    def curve(self) -> ec.EllipticCurve:
        if self.algorithm is not KeyAlgorithm.ECDSA:
            raise ValueError(f"{self} is not an EC key")
        return ec.SECP256R1() if self.size == 256 else ec.SECP384R1()

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm | None:
        """Digest used when this key signs certificates, CRLs and OCSP responses."""
        if self.algorithm is KeyAlgorithm.ED25519:
            return None
        if self.algorithm is KeyAlgorithm.ECDSA and self.size == 384:
            return hashes.SHA384()
        return hashes.SHA256()


def spec_of(public_key: CertificatePublicKeyTypes) -> KeySpec:
    """The KeySpec of a public key; ValueError for key types the CA never accepts."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return KeySpec(KeyAlgorithm.RSA, public_key.key_size)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if isinstance(public_key.curve, ec.SECP256R1):
            return KeySpec(KeyAlgorithm.ECDSA, 256)
        if isinstance(public_key.curve, ec.SECP384R1):
            return KeySpec(KeyAlgorithm.ECDSA, 384)
        raise ValueError(f"EC curve {public_key.curve.name} is not allowed")
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return KeySpec(KeyAlgorithm.ED25519, 256)
    raise ValueError(f"key type {type(public_key).__name__} is not allowed")
