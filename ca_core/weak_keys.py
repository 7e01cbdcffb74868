"""Known-weak RSA keys (Debian's OpenSSL PRNG flaw, CVE-2008-0166), refused as subject keys
where the operator has a list (Debian no longer ships one: ``openssl-blacklist`` was
removed; lists from it, or from Boulder's ``goodkey`` data, work as they are).

The list format is ``openssl-blacklist``'s: one key per line, the last 20 hexadecimal
digits of the SHA-1 of ``Modulus=<HEX>\\n`` (the output of ``openssl rsa -noout
-modulus``, uppercase hex, with its newline); lines starting with ``#`` and blank lines
are ignored. ``vcc-pki`` reads it from ``VCC_PKI_WEAK_KEYS_FILE``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

_ENTRY = re.compile(r"[0-9a-f]{20}\Z")


def weak_key_fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """The list entry of an RSA key (see the module docstring)."""
    modulus = f"Modulus={public_key.public_numbers().n:X}\n".encode()
    return hashlib.sha1(modulus, usedforsecurity=False).hexdigest()[20:]


@dataclass(frozen=True, slots=True)
class WeakKeys:
    fingerprints: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def load(cls, path: Path) -> WeakKeys:
        """Read a list; ValueError naming the first line that is not an entry."""
        entries = set()
        with path.open(encoding="ascii", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                text = line.strip().lower()
                if not text or text.startswith("#"):
                    continue
                if not _ENTRY.match(text):
                    raise ValueError(f"{path}:{number}: not a weak-key entry (20 hex digits)")
                entries.add(text)
        return cls(frozenset(entries))

    def __len__(self) -> int:
        return len(self.fingerprints)

    def is_weak(self, public_key: CertificatePublicKeyTypes) -> bool:
        return bool(self.fingerprints) and isinstance(public_key, rsa.RSAPublicKey) and \
            weak_key_fingerprint(public_key) in self.fingerprints
