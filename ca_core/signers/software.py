"""Software key backend: encrypted PKCS#8 files under ``<data_dir>/keys``.

The passphrase comes from ``VCC_PKI_KEY_PASSPHRASE`` or the file named by
``VCC_PKI_KEY_PASSPHRASE_FILE``; ``vcc-pki init`` creates a random passphrase file (0600)
in the data directory when neither is given, which suits a demo, not production.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from ca_core.keys import KeyAlgorithm, KeySpec, spec_of
from ca_core.signers.base import (
    KeyBackend,
    KeyBackendError,
    KeyProtection,
    Signer,
    SoftwareSigner,
    UnsupportedKeyOperation,
)

_LABEL = re.compile(r"^[A-Za-z0-9._-]{1,100}\Z")  # \Z: "$" lets a final "\n" in


def generate_private_key(spec: KeySpec) -> CertificateIssuerPrivateKeyTypes:
    if spec.algorithm is KeyAlgorithm.ECDSA:
        return ec.generate_private_key(spec.curve)
    if spec.algorithm is KeyAlgorithm.RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=spec.size)
    return ed25519.Ed25519PrivateKey.generate()


class SoftwareKeyBackend(KeyBackend):
    name = "software"

    def __init__(self, key_dir: Path, passphrase: bytes) -> None:
        if not passphrase:
            raise KeyBackendError("software keys need a non-empty passphrase")
        self._dir = key_dir
        self._passphrase = passphrase

    def _path(self, label: str) -> Path:
        if not _LABEL.match(label):
            raise KeyBackendError(f"invalid key label {label!r}")
        return self._dir / f"{label}.key.pem"

    def generate(self, spec: KeySpec, label: str, *, decrypt: bool = False) -> Signer:
        # A PKCS#8 file records no usage: ``decrypt`` only checks that the key can decrypt.
        if decrypt and spec.algorithm is not KeyAlgorithm.RSA:
            raise UnsupportedKeyOperation(f"{spec} keys cannot decrypt (RSA only)")
        path = self._path(label)
        if path.exists():
            raise KeyBackendError(f"key {label!r} already exists at {path}")
        key = generate_private_key(spec)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self._passphrase),
        )
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return SoftwareSigner(key, spec, f"file:{label}")

    def load(self, key_ref: str) -> Signer:
        if not key_ref.startswith("file:"):
            raise KeyBackendError(f"{key_ref!r} is not a software key reference")
        path = self._path(key_ref.removeprefix("file:"))
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), self._passphrase)
        except FileNotFoundError:
            raise KeyBackendError(f"key file {path} is missing") from None
        except (ValueError, TypeError) as exc:
            raise KeyBackendError(f"cannot unlock {path}: wrong passphrase?") from exc
        if not isinstance(
            key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        ):
            raise KeyBackendError(f"{path} holds an unsupported key type")
        return SoftwareSigner(key, spec_of(key.public_key()), key_ref)

    def describe(self, key_ref: str) -> KeyProtection:
        if not key_ref.startswith("file:"):
            raise KeyBackendError(f"{key_ref!r} is not a software key reference")
        path = self._path(key_ref.removeprefix("file:"))
        if not path.exists():
            raise KeyBackendError(f"key file {path.name} is missing")
        return KeyProtection(backend=self.name, summary="software (encrypted file)")

    def check(self) -> dict[str, object]:
        return {"backend": self.name, "key_dir": str(self._dir), "writable": os.access(
            self._dir if self._dir.exists() else self._dir.parent, os.W_OK)}
