"""Console sessions in the database, so any replica serves any signed-in user; sign-ins in their cookie.

The browser holds a random 256-bit id only. The row is keyed by SHA-256 of that id and its secrets (bearer
token, flashes) are sealed under a key derived from it (`sealing.py`). Rows expire (idle and absolute) and
are deleted; each create also trims its kind to `capacity` rows, the oldest to expire first. A sign-in in
progress keeps its state (PKCE verifier, nonce, state) sealed in the login cookie the same way, so it costs
no row until it comes back; then a marker row makes it usable once.

A session read during a request is written back (seen time, flashes added or shown) by
`SaveTouchedSessions` just before the response starts, so the next request sees it on whichever replica.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.console.models import ConsoleSessionRow
from app.console.sealing import csrf_matches, csrf_token, open_state, row_key, seal_state
from app.identity.principal import Principal
from app.logs import get_logger

log = get_logger("voicelog.console")

MAX_ID_LENGTH = 128
MAX_LOGIN_COOKIE = 3072  # a sealed sign-in is ~1 KiB; browsers keep 4 KiB per cookie
_TOUCHED = "console_sessions_touched"


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
    created: datetime
    seen: datetime
    token: str | None = None
    flashes: list[tuple[str, str]] = field(default_factory=list)
    principal: Principal | None = None  # from the token, verified again on each request; never stored
    changed: bool = False  # sealed state to write back
    ended: bool = False  # deleted: never written back

    @property
    def csrf(self) -> str:
        return csrf_token(self.id)

    def flash(self, kind: str, message: str) -> None:
        self.flashes.append((kind, message[:500]))
        self.changed = True

    def take_flashes(self) -> list[tuple[str, str]]:
        taken, self.flashes = self.flashes, []
        self.changed = self.changed or bool(taken)
        return taken

    def csrf_ok(self, presented: str | None) -> bool:
        return csrf_matches(self.id, presented)


def _login_fields(login: PendingLogin) -> dict[str, str]:
    return {**login.__dict__, "created": login.created.isoformat()}


def _login_from(fields: dict[str, Any]) -> PendingLogin:
    created = datetime.fromisoformat(fields["created"])
    if created.tzinfo is None:
        raise ValueError("a sign-in's time carries its zone")
    return PendingLogin(**{**fields, "created": created})


def seal_pending_login(login: PendingLogin, server_key: bytes) -> str:
    """The login cookie's value: a random id, then the sign-in's state sealed under a key derived from that
    id and the servers' key.

    The server keeps nothing for a sign-in that has not come back: a flood of anonymous sign-ins costs no
    row and cannot push out anyone else's. Only a replica can mint or open one."""
    login_id = secrets.token_urlsafe(32)
    payload = json.dumps(_login_fields(login), separators=(",", ":"), ensure_ascii=False).encode()
    sealed = seal_state(login_id, "login", payload, server_key=server_key)
    return f"{login_id}.{base64.urlsafe_b64encode(sealed).decode().rstrip('=')}"


def open_pending_login(value: str | None, server_key: bytes) -> tuple[str, PendingLogin] | None:
    """(login id, sign-in) from a login cookie, or None if it is absent, malformed, altered or not minted by
    a replica."""
    if not value or len(value) > MAX_LOGIN_COOKIE:
        return None
    login_id, _, sealed_text = value.partition(".")
    if not login_id or len(login_id) > MAX_ID_LENGTH:
        return None
    try:
        sealed = base64.urlsafe_b64decode(sealed_text + "=" * (-len(sealed_text) % 4))
    except ValueError:
        return None
    payload = open_state(login_id, "login", sealed, server_key=server_key)
    if payload is None:
        return None
    try:
        fields = json.loads(payload)
        if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
            return None
        return login_id, _login_from(fields)
    except (ValueError, TypeError, KeyError):
        return None


def _sealed_payload(session: ConsoleSession) -> bytes:
    return json.dumps({"token": session.token, "flashes": session.flashes}, separators=(",", ":")).encode()


def _from_payload(session_id: str, row: ConsoleSessionRow, payload: bytes, now: datetime) -> ConsoleSession:
    state: dict[str, Any] = json.loads(payload)
    return ConsoleSession(
        id=session_id, created=row.created_at, seen=now, token=state.get("token"),
        flashes=[(kind, message) for kind, message in state.get("flashes", [])])


class SessionStore:
    """One kind of row (`session` or `login`) with its lifetimes; each call is its own short transaction."""

    def __init__(self, *, session_factory: async_sessionmaker[AsyncSession], kind: str, idle: timedelta,
                 absolute: timedelta, capacity: int) -> None:
        self._factory = session_factory
        self.kind = kind
        self._idle = idle
        self._absolute = absolute
        self._capacity = capacity

    def _expires(self, created: datetime, seen: datetime) -> datetime:
        return min(created + self._absolute, seen + self._idle)

    async def create(self, now: datetime, *, token: str | None = None) -> ConsoleSession:
        """A new random id; expired rows of this kind go first, and the oldest past `capacity` after."""
        session = ConsoleSession(id=secrets.token_urlsafe(32), created=now, seen=now, token=token)
        await self._insert(session.id, now, expires=self._expires(now, now),
                           sealed=seal_state(session.id, self.kind, _sealed_payload(session)))
        return session

    async def _insert(self, row_id: str, now: datetime, *, expires: datetime, sealed: bytes) -> bool:
        """Add a row of this kind, after deleting the expired ones and before trimming to `capacity`;
        False (nothing written) if a row of that id exists already."""
        async with self._factory() as db:
            await db.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.kind == self.kind,
                                                             ConsoleSessionRow.expires_at < now))
            db.add(ConsoleSessionRow(id_sha256=row_key(row_id), kind=self.kind, created_at=now, seen_at=now,
                                     expires_at=expires, sealed=sealed))
            try:
                await db.flush()
            except IntegrityError:
                await db.rollback()
                return False
            await self._trim(db)
            await db.commit()
        return True

    async def _trim(self, db: AsyncSession) -> None:
        # Keep the `capacity` rows that expire last; rows tied with the last of them stay too (with microsecond
        # times the overshoot is nil in practice).
        cutoff = (select(ConsoleSessionRow.expires_at).where(ConsoleSessionRow.kind == self.kind)
                  .order_by(ConsoleSessionRow.expires_at.desc()).offset(self._capacity - 1).limit(1)
                  .scalar_subquery())
        await db.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.kind == self.kind,
                                                         ConsoleSessionRow.expires_at < cutoff))

    async def get(self, session_id: str | None, now: datetime) -> ConsoleSession | None:
        """The live session of this id, or None (unknown, other kind, expired and now deleted, or tampered)."""
        if not session_id or len(session_id) > MAX_ID_LENGTH:
            return None
        key = row_key(session_id)
        async with self._factory() as db:
            row = await db.get(ConsoleSessionRow, key)
            if row is None or row.kind != self.kind:
                return None
            payload = open_state(session_id, self.kind, row.sealed) if now <= row.expires_at else None
            if payload is None:
                await db.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.id_sha256 == key))
                await db.commit()
                return None
            return _from_payload(session_id, row, payload, now)

    async def save(self, session: ConsoleSession) -> None:
        """Write back the seen time (sliding the idle expiry) and, when it changed, the sealed state."""
        if session.ended:
            return
        values: dict[str, Any] = {"seen_at": session.seen, "expires_at": self._expires(session.created, session.seen)}
        if session.changed:
            values["sealed"] = seal_state(session.id, self.kind, _sealed_payload(session))
        async with self._factory() as db:
            await db.execute(update(ConsoleSessionRow)
                             .where(ConsoleSessionRow.id_sha256 == row_key(session.id),
                                    ConsoleSessionRow.kind == self.kind).values(**values))
            await db.commit()
        session.changed = False

    async def drop(self, session: ConsoleSession) -> bool:
        """Delete the row (sign-out); True only for the one caller that deleted it."""
        session.ended = True
        async with self._factory() as db:
            result = await db.execute(delete(ConsoleSessionRow).where(
                ConsoleSessionRow.id_sha256 == row_key(session.id), ConsoleSessionRow.kind == self.kind))
            await db.commit()
        return getattr(result, "rowcount", 0) == 1

    async def use_once(self, login_id: str, now: datetime, *, until: datetime) -> bool:
        """Record that sign-in `login_id` came back; True only for the first caller on any replica.

        Rows of this kind are markers written at the callback (never for a sign-in that did not come back),
        kept `until` the sign-in's cookie could no longer be accepted, and trimmed like sessions."""
        return await self._insert(login_id, now, expires=until, sealed=b"")

    async def sign_in(self, principal: Principal, token: str, now: datetime) -> ConsoleSession:
        """A fresh id (and so a fresh CSRF token) at sign-in: no session fixation."""
        session = await self.create(now, token=token)
        session.principal = principal
        return session


def touched(request: Request, store: SessionStore, session: ConsoleSession) -> None:
    """Have `SaveTouchedSessions` write `session` back before this request's response starts."""
    request.scope.setdefault("state", {}).setdefault(_TOUCHED, []).append((store, session))


class SaveTouchedSessions:
    """ASGI middleware: the sessions a request read are saved before its response starts, so the browser's
    next request (a redirect after a POST, say) finds the flashes and the new seen time on any replica."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # shared by every Request made from this scope

        async def saving(message: Message) -> None:
            if message["type"] == "http.response.start":
                for store, session in state.pop(_TOUCHED, []):
                    try:
                        await store.save(session)
                    except Exception as exc:  # the answer stands (its work is committed); a flash may be lost
                        log.warning("console.session.save_failed", error=type(exc).__name__)
            await send(message)

        await self.app(scope, receive, saving)
