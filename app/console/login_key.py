"""The key only voicelog's replicas hold, so only login cookies a replica minted open.

A sign-in in progress lives sealed in its login cookie (no row until it comes back). Sealed under the
cookie's own id alone, anyone could mint one and walk the callback to the issuer's token endpoint with the
console's client secret, as often as they like. Mixing in this key makes a cookie nobody minted a plain 400.
It is one random 256-bit value in `console_sessions` (made by the first replica that needs it, read by every
other), so a deployment needs no new secret; a database reader could mint login cookies, and with them
still nothing without the issuer's one-time code.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.console.models import ConsoleSessionRow
from app.console.sealing import row_key

KIND = "login-key"
ROW = row_key("voicelog console login key v1")
NEVER = datetime(9999, 12, 31, tzinfo=UTC)


class LoginKey:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._factory = session_factory
        self._key: bytes | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> bytes:
        if self._key is None:
            async with self._lock:
                if self._key is None:
                    self._key = await self._load_or_create()
        return self._key

    async def _load_or_create(self) -> bytes:
        async with self._factory() as db:
            row = await db.get(ConsoleSessionRow, ROW)
            if row is not None:
                return bytes(row.sealed)
            now = datetime.now(UTC)
            db.add(ConsoleSessionRow(id_sha256=ROW, kind=KIND, created_at=now, seen_at=now, expires_at=NEVER,
                                     sealed=os.urandom(32)))
            try:
                await db.commit()
            except IntegrityError:  # another replica made it first: use theirs
                await db.rollback()
        async with self._factory() as db:
            made = await db.get(ConsoleSessionRow, ROW)
            assert made is not None  # noqa: S101 - inserted above, by us or another replica
            return bytes(made.sealed)
