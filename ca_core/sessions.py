"""Sign-in sessions of the web admin page (issue 17).

An operator signs in with a bearer token, or with a TLS client certificate bound to a service
account (on the listener that requests one); the page then holds only an opaque session id
(an HttpOnly cookie, set by ``protocols.web``). The session keeps the credential server-side
(the token, or the certificate: ``mtls:`` and its DER in base64) and resolves to a Principal
by ``Authority.authenticate`` (``authenticate_certificate``) on EVERY request, so a revoked
token, an unbound or revoked certificate or a disabled organization ends the session at
once, and RBAC is exactly the API's. State
changes need the session's CSRF token (a header the page's script sends; a cross-site form
cannot set it, nor read it). Sessions end on sign-out, after ``idle`` without use and after
``lifetime`` in any case.

Where sessions live is a ``SessionTable``: in-process by default (``MemorySessions``: a
session is bound to the process that opened it), in Redis when configured
(``db.sessions.RedisSessions``: every replica and worker knows every session), as ACME nonces
do. The table never holds what would let its reader act: entries are keyed by a hash of the
session id, and the bearer token is sealed (AES-256-GCM) under a key derived from the
session id, which only the browser's cookie carries.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ca_core.authority import Authority, Clock
from ca_core.errors import Forbidden, Unauthorized
from ca_core.principal import Principal
from ca_core.records import AuditEvent


@dataclass(frozen=True, slots=True)
class SessionSettings:
    idle: dt.timedelta = dt.timedelta(minutes=30)
    lifetime: dt.timedelta = dt.timedelta(hours=8)
    max_sessions: int = 10_000  # a flood of sign-ins cannot grow the table without bound


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A session as its table holds it: no session id, the token sealed."""

    sealed_token: bytes  # nonce (12 bytes) + AES-GCM ciphertext, under a key from the id
    csrf: str
    created_at: dt.datetime
    last_used: dt.datetime
    expires_at: dt.datetime  # the absolute end; the idle end is last_used + idle


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    token: str  # the credential (a bearer token, or mtls:<certificate>): authenticated again
    # on every request
    csrf: str
    created_at: dt.datetime
    last_used: dt.datetime
    expires_at: dt.datetime


class SessionTable(Protocol):
    """Where sessions live. ``put`` gets the time the entry may be forgotten after (its
    idle or absolute end, whichever is first). ``Unavailable`` when the backend is down."""

    async def get(self, key: str) -> StoredSession | None: ...
    async def put(self, key: str, session: StoredSession, ttl: dt.timedelta) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def close(self) -> None: ...


class MemorySessions:
    """One process's sessions, at most ``max_sessions`` (the oldest-ending go first)."""

    def __init__(self, max_sessions: int = 10_000,
                 clock: Clock | None = None) -> None:
        self._items: dict[str, tuple[StoredSession, dt.datetime]] = {}
        self._max = max_sessions
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    async def get(self, key: str) -> StoredSession | None:
        found = self._items.get(key)
        if found is None or found[1] <= self._clock():
            return None
        return found[0]

    async def put(self, key: str, session: StoredSession, ttl: dt.timedelta) -> None:
        now = self._clock()
        if key not in self._items and len(self._items) >= self._max:
            self._items = {k: v for k, v in self._items.items() if v[1] > now}
            while len(self._items) >= self._max:  # a flood of sign-ins: bounded memory
                del self._items[min(self._items, key=lambda k: self._items[k][1])]
        self._items[key] = (session, now + ttl)

    async def delete(self, key: str) -> None:
        self._items.pop(key, None)

    async def close(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _key(session_id: str) -> str:
    return hashlib.sha256(b"vcc-pki session key\0" + session_id.encode()).hexdigest()


def _aead(session_id: str) -> AESGCM:
    return AESGCM(hashlib.sha256(b"vcc-pki session seal\0" + session_id.encode()).digest())


def _seal(session_id: str, token: str) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + _aead(session_id).encrypt(nonce, token.encode(), None)


def _unseal(session_id: str, sealed: bytes) -> str | None:
    try:
        return _aead(session_id).decrypt(sealed[:12], sealed[12:], None).decode()
    except (InvalidTag, ValueError, UnicodeDecodeError):
        return None


_CERTIFICATE = "mtls:"  # a credential that is a client certificate, not a token


def _credential_of(chain_der: Sequence[bytes]) -> str:
    return _CERTIFICATE + base64.b64encode(chain_der[0]).decode()


class WebSessions:
    def __init__(self, authority: Authority, settings: SessionSettings | None = None,
                 table: SessionTable | None = None, clock: Clock | None = None) -> None:
        self.authority = authority
        self.settings = settings or SessionSettings()
        self.clock: Clock = clock or authority.clock
        self.table: SessionTable = table if table is not None else MemorySessions(
            self.settings.max_sessions, self.clock)

    def _ttl(self, stored: StoredSession) -> dt.timedelta:
        end = min(stored.expires_at, stored.last_used + self.settings.idle)
        return max(end - self.clock(), dt.timedelta(seconds=1))

    async def open(self, token: str) -> tuple[Session, Principal]:
        """Sign in: the token must authenticate now (Unauthorized otherwise; a refused
        sign-in is audited, without the token, as a failed mTLS authentication is)."""
        try:
            if token.startswith(_CERTIFICATE):  # a certificate is not a token
                raise Unauthorized("the token is not valid")
            principal = await self.authority.authenticate(token)
        except Unauthorized as refused:
            await self._refused(refused, "token")
            raise
        return await self._start(token, principal, "token")

    async def open_certificate(self, chain_der: Sequence[bytes]) -> tuple[Session, Principal]:
        """Sign in with the TLS client certificate of this connection (``chain_der[0]``;
        the handshake proved possession of its key): it must be bound to a service account
        now (``Authority.authenticate_certificate``, which audits a refusal)."""
        if not chain_der:
            raise Unauthorized("no client certificate was presented")
        try:
            principal = await self.authority.authenticate_certificate(chain_der)
        except Unauthorized as refused:
            await self._refused(refused, "certificate")
            raise
        return await self._start(_credential_of(chain_der), principal, "certificate")

    async def _refused(self, refused: Unauthorized, method: str) -> None:
        await self.authority.store.append_audit(AuditEvent(
            event_type="session.refused", category="authentication",
            action="session:open", actor_type="user", resource_type="session",
            status="failed", data={"reason": refused.detail,
                                   **({} if method == "token" else {"method": method})}))

    async def _start(self, credential: str, principal: Principal, method: str
                     ) -> tuple[Session, Principal]:
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        stored = StoredSession(_seal(session_id, credential), secrets.token_urlsafe(32), now,
                               now, now + self.settings.lifetime)
        await self.table.put(_key(session_id), stored, self._ttl(stored))
        # A token's session, the first kind, is audited as before; others name their kind.
        await self._audit("session.opened", "session:open", principal, session_id,
                          None if method == "token" else {"method": method})
        return self._session(session_id, credential, stored), principal

    async def _authenticate(self, credential: str) -> Principal:
        """The Principal of a session's credential, afresh."""
        if credential.startswith(_CERTIFICATE):
            try:
                der = base64.b64decode(credential[len(_CERTIFICATE):], validate=True)
            except (binascii.Error, ValueError):
                raise Unauthorized("no session: sign in again") from None
            return await self.authority.authenticate_certificate([der])
        return await self.authority.authenticate(credential)

    async def _audit(self, event_type: str, action: str, principal: Principal,
                     session_id: str, data: dict[str, str] | None = None) -> None:
        # The session is named by a prefix of its table key: enough to pair an opening with
        # its closing, useless for taking the session over.
        await self.authority.store.append_audit(AuditEvent(
            event_type=event_type, category="authentication", action=action,
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            org_id=principal.org_id, resource_type="session",
            resource_id=_key(session_id)[:16], data={"role": principal.role, **(data or {})}))

    @staticmethod
    def _session(session_id: str, token: str, stored: StoredSession) -> Session:
        return Session(session_id, token, stored.csrf, stored.created_at, stored.last_used,
                       stored.expires_at)

    async def _live(self, session_id: str) -> tuple[StoredSession, str]:
        key = _key(session_id)
        stored = await self.table.get(key) if len(session_id) <= 128 else None
        if stored is None:
            raise Unauthorized("no session: sign in again")
        now = self.clock()
        if stored.expires_at <= now or stored.last_used + self.settings.idle <= now:
            await self.table.delete(key)
            raise Unauthorized("the session has expired: sign in again")
        token = _unseal(session_id, stored.sealed_token)
        if token is None:
            raise Unauthorized("no session: sign in again")
        return stored, token

    async def resolve(self, session_id: str, csrf: str | None, state_changing: bool
                      ) -> tuple[Session, Principal]:
        """The session's Principal, authenticated afresh from its token. A state change
        without the session's CSRF token is refused (403, audited)."""
        stored, token = await self._live(session_id)
        try:
            principal = await self._authenticate(token)
        except Unauthorized:
            await self.table.delete(_key(session_id))  # the token is gone: so is the session
            raise
        if state_changing and not (csrf and hmac.compare_digest(csrf.encode("utf-8", "replace"),
                                                                stored.csrf.encode())):
            await self.authority.denied(principal, "session:csrf", "session", None)
            raise Forbidden("a state change needs the session's X-CSRF-Token header")
        stored = replace(stored, last_used=self.clock())
        await self.table.put(_key(session_id), stored, self._ttl(stored))
        return self._session(session_id, token, stored), principal

    async def close(self, session_id: str, principal: Principal | None = None) -> None:
        """Sign out (audited when ``principal``, who signs out, is given)."""
        await self.table.delete(_key(session_id))
        if principal is not None:
            await self._audit("session.closed", "session:close", principal, session_id)
