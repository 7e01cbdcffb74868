"""Short-lived ACME state that is not worth a database row: replay nonces and rate-limit
counters. The interface ACME declares; its backends live in ``db.acme_state``:
in-process by default; in Redis (``VCC_PKI_REDIS_URL``) when several gateway
processes must agree (a nonce issued by one process is accepted by every other).

Errors::

    StateUnavailable   Redis cannot be reached (the caller answers serverInternal)
"""

from __future__ import annotations

import abc
import secrets


class StateUnavailable(Exception):
    """The shared state backend cannot be reached."""


def new_nonce() -> str:
    # 128 bits from the CSPRNG, base64url without padding (RFC 8555 6.5.1).
    return secrets.token_urlsafe(16)


class AcmeState(abc.ABC):
    name = "abstract"

    @abc.abstractmethod
    async def issue_nonce(self) -> str: ...

    @abc.abstractmethod
    async def consume_nonce(self, nonce: str) -> bool:
        """True exactly once for a nonce this deployment issued and that has not expired."""

    @abc.abstractmethod
    async def hit(self, key: str, limit: int, window_seconds: int) -> float | None:
        """Count one event under ``key``; None while under ``limit`` per window, else the
        seconds until the window ends (for Retry-After)."""

    async def close(self) -> None:  # noqa: B027 - the in-process backend holds nothing
        pass
