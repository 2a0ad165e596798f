"""Wake the chain keeper when an entry is queued, instead of polling (PostgreSQL LISTEN/NOTIFY).

Migration 0009 makes every insert into `audit_inbox` NOTIFY `voicelog_audit_inbox` at commit. Each
replica's keeper listens on one connection of its own and chains as soon as something is queued; it still
looks every `sequencer_idle_s` for what notifications cannot tell (a checkpoint come due by time, a
notification lost while the listening connection was down). Without a listening connection (SQLite, a
failed LISTEN, a dropped connection) the keeper polls every `sequencer_interval_s` as before and tries to
listen again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.logs import get_logger

log = get_logger("voicelog.audit")

CHANNEL = "voicelog_audit_inbox"


class InboxWakeups:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self._driver: Any = None  # the asyncpg connection under the pooled one
        self.event = asyncio.Event()

    @property
    def listening(self) -> bool:
        return self._driver is not None and not self._driver.is_closed()

    @property
    def backend_pid(self) -> int | None:
        """The listening connection's server process (for operators and tests), or None."""
        return int(self._driver.get_server_pid()) if self.listening else None

    async def listen(self) -> bool:
        """Start listening if possible; True when listening. Never raises."""
        if self.listening:
            return True
        await self.close()
        if self._engine.dialect.name != "postgresql":
            return False
        try:
            self._connection = await self._engine.connect()
            raw = await self._connection.get_raw_connection()
            driver = raw.driver_connection
            if driver is None:
                raise ConnectionError("no driver connection")
            await driver.add_listener(CHANNEL, self._notified)
            driver.add_termination_listener(self._lost)
            self._driver = driver
        except Exception as exc:
            log.warning("audit.keeper.listen_failed", error=type(exc).__name__)
            await self.close()
            return False
        self.event.set()  # anything queued before LISTEN took effect is chained by the next round
        return True

    def _notified(self, *_args: object) -> None:
        self.event.set()

    def _lost(self, *_args: object) -> None:
        self._driver = None
        self.event.set()  # the keeper falls back to polling at once and tries to listen again

    async def close(self) -> None:
        self._driver = None
        connection, self._connection = self._connection, None
        if connection is not None:
            # Never back to the pool with LISTEN still on it: the pool closes it instead.
            with contextlib.suppress(Exception):
                await connection.invalidate()
            with contextlib.suppress(Exception):
                await connection.close()
