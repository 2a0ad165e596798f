""""Is resource R recording now?" answered from memory on the relay's hot path (C1).

The cache reloads every active consent every `refresh_s` seconds. A consent that expires is dropped at
its `not_after` exactly (checked on lookup); a withdrawal or a closed ticket on another replica stops new
recordings within `refresh_s` plus one reload (the documented bound); on this replica at once, because the
API that withdraws calls `forget`. An opt-in likewise: this replica records at once (the API that grants
calls `learn` after its commit), the others within the same bound (`recording_from`). If the database is
unreachable the cache keeps its last view for at most `stale_after_s`, then answers "not recording":
without a fresh opt-in, nothing is recorded.

Reloads may overlap (the refresh loop and an explicit reload); `SnapshotGuard` keeps a slow one from
bringing back a withdrawn consent or hiding a newer grant.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock
from app.context import ContextDep
from app.logs import get_logger
from app.snapshot_guard import SnapshotGuard
from app.tickets.service import ActiveConsent, active_consents

log = get_logger("voicelog.consent")

RELOAD_ALLOWANCE_S = 1.0  # one reload of the consents in force, database round trip included, with a margin


class ConsentCache:
    def __init__(self, *, clock: Clock, refresh_s: float = 2.0, stale_after_s: float = 30.0) -> None:
        self._clock = clock
        self.refresh_s = refresh_s
        self.stale_after_s = stale_after_s
        self._by_resource: dict[str, ActiveConsent] = {}
        self._loaded_at: float | None = None
        self._guard = SnapshotGuard()
        self._task: asyncio.Task[None] | None = None
        self._reloads_started = 0
        self._learned: dict[str, tuple[ActiveConsent, int]] = {}  # resource -> (consent, reloads started then)

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
        self._learned.pop(resource_id, None)
        self._guard.drop(resource_id)

    def learn(self, consent: ActiveConsent) -> None:
        """Called right after this replica committed an opt-in: its next session records (issue 19: one started
        0.24 s after the 201 used to wait for the next reload). Kept through reloads that began before it."""
        self._by_resource.setdefault(consent.resource_id, consent)
        self._learned[consent.resource_id] = (consent, self._reloads_started)

    def recording_from(self, not_before: datetime) -> datetime:
        """When every replica records a consent that starts at `not_before`: this one at once, the others after
        their next reload (`refresh_s` plus one reload)."""
        return not_before + timedelta(seconds=self.refresh_s + RELOAD_ALLOWANCE_S)

    async def reload(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        number = self._guard.begin()
        self._reloads_started += 1
        started = self._reloads_started
        async with session_factory() as session:
            consents = await active_consents(session=session, now=self._clock.now())
        by_resource: dict[str, ActiveConsent] = {}
        for consent in consents:  # the earliest consent in force wins, so the choice is stable
            by_resource.setdefault(consent.resource_id, consent)
        if not self._guard.accept(number, by_resource):
            return  # a reload that started later has already put a fresher view in force
        for resource_id, (consent, learned_at) in list(self._learned.items()):
            if learned_at >= started:  # this read may have begun before the opt-in was committed
                by_resource.setdefault(resource_id, consent)
            else:  # it began after the commit: the database has the final word
                del self._learned[resource_id]
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


def get_consents(ctx: ContextDep) -> ConsentCache:
    """The process's consent cache, for routes (beside its type, as `ResourcesDep` is, so `app.deps` needn't
    import tickets)."""
    return ctx.consents


ConsentsDep = Annotated[ConsentCache, Depends(get_consents)]
