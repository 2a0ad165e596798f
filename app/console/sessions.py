"""Server-side console sessions: the browser holds a random id only; tokens and CSRF secrets stay here.

In memory, per process: a replica restart signs everyone out, and several replicas need sticky sessions.
Bounded (oldest dropped first) so a flood of anonymous logins cannot grow it without limit.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from app.identity.principal import Principal


@dataclass
class PendingLogin:
    """What the callback must see again: state (CSRF of the login), PKCE verifier, nonce, where to go."""

    state: str
    code_verifier: str
    nonce: str
    redirect_uri: str
    next_path: str
    created: datetime


@dataclass
class ConsoleSession:
    id: str
    csrf: str
    created: datetime
    seen: datetime
    principal: Principal | None = None
    token: str | None = None
    login: PendingLogin | None = None
    flashes: list[tuple[str, str]] = field(default_factory=list)

    def flash(self, kind: str, message: str) -> None:
        self.flashes.append((kind, message[:500]))

    def take_flashes(self) -> list[tuple[str, str]]:
        taken, self.flashes = self.flashes, []
        return taken

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


class SessionStore:
    def __init__(self, *, idle: timedelta, absolute: timedelta, capacity: int) -> None:
        self._idle = idle
        self._absolute = absolute
        self._capacity = capacity
        self._sessions: OrderedDict[str, ConsoleSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, now: datetime) -> ConsoleSession:
        session = ConsoleSession(id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), created=now, seen=now)
        self._sessions[session.id] = session
        while len(self._sessions) > self._capacity:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None, now: datetime) -> ConsoleSession | None:
        if not session_id or len(session_id) > 128:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if now - session.seen > self._idle or now - session.created > self._absolute:
            self.drop(session_id)
            return None
        session.seen = now
        self._sessions.move_to_end(session_id)
        return session

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def sign_in(self, old: ConsoleSession, principal: Principal, token: str, now: datetime) -> ConsoleSession:
        """A fresh id and CSRF token at sign-in (no session fixation); the pre-login session is gone."""
        self.drop(old.id)
        session = self.create(now)
        session.principal, session.token = principal, token
        return session
