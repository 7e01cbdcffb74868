"""ResponseCache: precomputed DER OCSP responses (RFC 6960, RFC 5019), by issuer and serial.

The interface the OCSP responder declares; its backends live in ``db.cache``:
``MemoryResponseCache`` (in-process, the default) and ``RedisResponseCache``
(``VCC_PKI_REDIS_URL``; shared by every gateway process). Keys are opaque strings the
OCSP responder makes from the CertID's hash algorithm, the issuer's key hash and the serial number.

Rules every backend keeps:

- An entry disappears at its nextUpdate; nobody is served a stale response from a cache.
- A response that says "good" never replaces one that says "revoked" (``put`` checks it
  atomically). Revocation is final in this CA, so whatever order a revocation re-sign, a
  refresh and a cache-miss write-back land in, the cache cannot go back to "good".
- A *tombstone* (an entry without a response, flagged revoked) blocks "good" responses the
  same way; the responder treats it as a miss and signs the revoked answer live.
- Every entry may carry a refresh time; ``due`` lists the keys whose time has come until
  ``put`` gives them a new one or ``forget`` drops them from the schedule.

Errors::

    CacheUnavailable   the backend cannot be reached (callers fall back to the store)
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Sequence
from dataclasses import dataclass

_HEADER = struct.Struct(">BqqHH")  # flags, thisUpdate, nextUpdate, len(cert_id), len(etag)
_REVOKED = 0x01


class CacheUnavailable(Exception):
    """The cache backend cannot be reached or refused the operation."""


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A signed OCSP response (DER) and what HTTP caching headers need to know of it."""

    der: bytes  # b"": a tombstone (revoked, no response yet)
    revoked: bool
    this_update: int  # seconds since the epoch
    next_update: int
    cert_id: bytes  # DER CertID the response answers (to check the request asked for it)
    etag: str  # quoted, as the ETag header carries it

    @classmethod
    def tombstone(cls, expires_at: int) -> CachedResponse:
        return cls(b"", True, 0, expires_at, b"", "")

    def encode(self) -> bytes:
        etag = self.etag.encode("ascii")
        header = _HEADER.pack(_REVOKED if self.revoked else 0, self.this_update,
                              self.next_update, len(self.cert_id), len(etag))
        return b"".join((header, self.cert_id, etag, self.der))

    @classmethod
    def decode(cls, blob: bytes) -> CachedResponse:
        try:
            flags, this_update, next_update, id_len, etag_len = _HEADER.unpack_from(blob)
        except struct.error as exc:
            raise CacheUnavailable("a cache entry is corrupt") from exc
        start = _HEADER.size
        cert_id = blob[start:start + id_len]
        etag = blob[start + id_len:start + id_len + etag_len].decode("ascii", "replace")
        der = blob[start + id_len + etag_len:]
        return cls(der, bool(flags & _REVOKED), this_update, next_update, cert_id, etag)


class ResponseCache(abc.ABC):
    """Precomputed OCSP responses; see the module docstring for the rules."""

    name: str
    shared: bool  # True: every gateway process sees the same entries

    @abc.abstractmethod
    async def get(self, key: str) -> CachedResponse | None:
        """The live entry under ``key``, or None. Raises CacheUnavailable."""

    @abc.abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[CachedResponse | None]: ...

    @abc.abstractmethod
    async def put(self, key: str, response: CachedResponse, refresh_at: int | None) -> bool:
        """Store ``response`` until its nextUpdate and schedule a refresh at ``refresh_at``
        (None: none). False when it says "good" and a "revoked" entry is in the way."""

    async def put_many(
        self, items: Sequence[tuple[str, CachedResponse, int | None]]
    ) -> list[bool]:
        return [await self.put(key, response, refresh_at) for key, response, refresh_at in items]

    @abc.abstractmethod
    async def due(self, now: int, limit: int) -> list[str]:
        """Keys whose refresh time is at or before ``now``, earliest first."""

    @abc.abstractmethod
    async def forget(self, key: str) -> None:
        """Drop ``key`` from the refresh schedule (the entry itself stays until it expires)."""

    @abc.abstractmethod
    async def applied_generation(self) -> int | None:
        """The revocation generation up to which revoked responses are in the cache (None:
        unknown, e.g. a fresh cache)."""

    @abc.abstractmethod
    async def set_applied_generation(self, generation: int) -> None:
        """Raise the applied generation to ``generation`` (never lowers it)."""

    async def ping(self) -> dict[str, object]:
        return {"backend": self.name}

    async def close(self) -> None:  # noqa: B027 - the memory cache holds nothing to release
        """Release connections."""
