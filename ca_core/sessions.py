"""Sign-in sessions of the web admin page (issue 17).

An operator signs in with a bearer token; the page then holds only an opaque session id (an
HttpOnly cookie, set by ``protocols.web``). The session keeps the token server-side and
resolves to a Principal by ``Authority.authenticate`` on EVERY request, so a revoked token or
a disabled organization ends the session at once, and RBAC is exactly the API's. State
changes need the session's CSRF token (a header the page's script sends; a cross-site form
cannot set it, nor read it). Sessions end on sign-out, after ``idle`` without use and after
``lifetime`` in any case.

The session table is in-process (``MemorySessions``): a session is bound to the gateway
process that opened it. Behind a load balancer with several replicas, use sticky sessions
until a shared implementation of ``SessionTable`` (Redis or the store) exists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from typing import Protocol

from ca_core.authority import Authority, Clock
from ca_core.errors import Forbidden, Unauthorized
from ca_core.principal import Principal


@dataclass(frozen=True, slots=True)
class SessionSettings:
    idle: dt.timedelta = dt.timedelta(minutes=30)
    lifetime: dt.timedelta = dt.timedelta(hours=8)
    max_sessions: int = 10_000  # a flood of sign-ins cannot grow the table without bound


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    token: str  # the bearer token, kept server-side only: authenticated again per request
    csrf: str
    created_at: dt.datetime
    last_used: dt.datetime
    expires_at: dt.datetime  # the absolute end; the idle end is last_used + idle


class SessionTable(Protocol):
    def get(self, key: str) -> Session | None: ...
    def put(self, key: str, session: Session) -> None: ...
    def delete(self, key: str) -> None: ...
    def prune(self, now: dt.datetime, idle: dt.timedelta) -> None: ...
    def __len__(self) -> int: ...


class MemorySessions:
    """Keyed by a hash of the session id, so that the table never holds the cookie."""

    def __init__(self) -> None:
        self._items: dict[str, Session] = {}

    def get(self, key: str) -> Session | None:
        return self._items.get(key)

    def put(self, key: str, session: Session) -> None:
        self._items[key] = session

    def delete(self, key: str) -> None:
        self._items.pop(key, None)

    def prune(self, now: dt.datetime, idle: dt.timedelta) -> None:
        for key in [k for k, s in self._items.items()
                    if s.expires_at <= now or s.last_used + idle <= now]:
            del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class WebSessions:
    def __init__(self, authority: Authority, settings: SessionSettings | None = None,
                 table: SessionTable | None = None, clock: Clock | None = None) -> None:
        self.authority = authority
        self.settings = settings or SessionSettings()
        self.table: SessionTable = table if table is not None else MemorySessions()
        self.clock: Clock = clock or authority.clock

    async def open(self, token: str) -> tuple[Session, Principal]:
        """Sign in: the token must authenticate now (Unauthorized otherwise)."""
        principal = await self.authority.authenticate(token)
        now = self.clock()
        self.table.prune(now, self.settings.idle)
        if len(self.table) >= self.settings.max_sessions:
            raise Unauthorized("too many open sessions; try again later")
        session = Session(secrets.token_urlsafe(32), token, secrets.token_urlsafe(32), now, now,
                          now + self.settings.lifetime)
        self.table.put(_key(session.session_id), session)
        return session, principal

    def _live(self, session_id: str) -> Session:
        key = _key(session_id)
        session = self.table.get(key)
        now = self.clock()
        if session is None:
            raise Unauthorized("no session: sign in again")
        if session.expires_at <= now or session.last_used + self.settings.idle <= now:
            self.table.delete(key)
            raise Unauthorized("the session has expired: sign in again")
        return session

    async def resolve(self, session_id: str, csrf: str | None, state_changing: bool
                      ) -> tuple[Session, Principal]:
        """The session's Principal, authenticated afresh from its token. A state change
        without the session's CSRF token is refused (403, audited)."""
        session = self._live(session_id)
        try:
            principal = await self.authority.authenticate(session.token)
        except Unauthorized:
            self.table.delete(_key(session_id))  # the token is gone: so is the session
            raise
        if state_changing and not (csrf and hmac.compare_digest(csrf, session.csrf)):
            await self.authority.denied(principal, "session:csrf", "session", None)
            raise Forbidden("a state change needs the session's X-CSRF-Token header")
        session = replace(session, last_used=self.clock())
        self.table.put(_key(session_id), session)
        return session, principal

    def close(self, session_id: str) -> None:
        self.table.delete(_key(session_id))
