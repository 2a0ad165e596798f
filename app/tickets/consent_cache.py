""""Is resource R recording now?" answered from memory on the relay's hot path (C1).

The cache reloads every active consent every `refresh_s` seconds. A consent that expires is dropped at
its `not_after` exactly (checked on lookup); a withdrawal or a closed ticket on another replica stops new
recordings within `refresh_s` plus one reload (the documented bound); on this replica at once, because the
API that withdraws calls `forget`. If the database is unreachable the cache keeps its last view for at
most `stale_after_s`, then answers "not recording": without a fresh opt-in, nothing is recorded.

Reloads may overlap (the refresh loop and an explicit reload); `SnapshotGuard` keeps a slow one from
bringing back a withdrawn consent or hiding a newer grant.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock
from app.logs import get_logger
from app.snapshot_guard import SnapshotGuard
from app.tickets.service import ActiveConsent, active_consents

log = get_logger("voicelog.consent")


class ConsentCache:
    def __init__(self, *, clock: Clock, refresh_s: float = 2.0, stale_after_s: float = 30.0) -> None:
        self._clock = clock
        self.refresh_s = refresh_s
        self.stale_after_s = stale_after_s
        self._by_resource: dict[str, ActiveConsent] = {}
        self._loaded_at: float | None = None
        self._guard = SnapshotGuard()
        self._task: asyncio.Task[None] | None = None

    def lookup(self, resource_id: str, now: datetime | None = None) -> ActiveConsent | None:
        """The consent a new session of this resource records under, or None (C1)."""
        if self._loaded_at is None or self._clock.monotonic_ns() / 1e9 - self._loaded_at > self.stale_after_s:
            return None
        consent = self._by_resource.get(resource_id)
        if consent is None or consent.not_after <= (now or self._clock.now()):
            return None
        return consent

    def forget(self, resource_id: str) -> None:
        """Called right after this replica committed a withdrawal or a ticket closure."""
        self._by_resource.pop(resource_id, None)
        self._guard.drop(resource_id)

    async def reload(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        number = self._guard.begin()
        async with session_factory() as session:
            consents = await active_consents(session=session, now=self._clock.now())
        by_resource: dict[str, ActiveConsent] = {}
        for consent in consents:  # the earliest consent in force wins, so the choice is stable
            by_resource.setdefault(consent.resource_id, consent)
        if not self._guard.accept(number, by_resource):
            return  # a reload that started later has already put a fresher view in force
        self._by_resource = by_resource
        self._loaded_at = self._clock.monotonic_ns() / 1e9

    async def run(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        while True:
            try:
                await self.reload(session_factory)
            except Exception:
                log.warning("consent.cache.reload_failed")
            await asyncio.sleep(self.refresh_s)

    def start(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self._task = asyncio.create_task(self.run(session_factory), name="consent-cache")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
