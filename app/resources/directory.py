"""Where does resource R's session go? Answered from memory, so call set-up needs no database (C8).

Every replica keeps every resource's routing (id, name, region, upstream) in memory, reloaded every
`refresh_s`. A name it does not know waits for a reload that began after it arrived (one every
`miss_reload_gap_s` at most, shared by every caller waiting), so a resource registered on another replica
is found on its first call, and a flood of unknown names costs the database one query per gap. When the
database is down the last view stays in force: live calls and new calls of known resources go on (only
recording needs the database, and it degrades on its own, C8), and a name not in memory gets "retry"
(503), never a wrong "no such resource". A resource removed on another replica is still routed here until
this replica's next successful reload (`refresh_s` while the database answers); removal is only allowed
for a resource with no tickets, so such a call is never recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.context import ContextDep
from app.logs import get_logger
from app.resources.models import Resource
from app.snapshot_guard import SnapshotGuard

log = get_logger("voicelog.resources")


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """The part of a resource the relay needs to admit and route one of its sessions."""

    id: str
    name: str
    region: str
    upstream_endpoint: str


class DirectoryUnavailable(Exception):
    """A name not in memory, and the database cannot be read to learn whether it exists (503, retry)."""


class ResourceDirectory:
    def __init__(self, *, refresh_s: float = 5.0, miss_reload_gap_s: float = 0.5, miss_wait_s: float = 5.0,
                 registry: CollectorRegistry | None = None) -> None:
        self.refresh_s = refresh_s
        self.miss_reload_gap_s = miss_reload_gap_s
        self.miss_wait_s = miss_wait_s
        self._by_name: dict[str, RelayTarget] = {}
        self._loaded = False
        self._guard = SnapshotGuard()
        self._miss_reload: asyncio.Task[bool] | None = None
        self._miss_reload_started = -float("inf")
        self._task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        self._loaded_at = Gauge(
            "voicelog_resource_directory_loaded_timestamp_seconds",
            "When this replica last read every resource's routing from the database (Unix time).",
            registry=registry,
        )

    @property
    def loaded(self) -> bool:
        """True once one reload succeeded: from then on sessions are routed even if the database is down."""
        return self._loaded

    async def find(self, name: str, session_factory: async_sessionmaker[AsyncSession]) -> RelayTarget | None:
        """The resource's routing, or None if no such resource is registered.

        A name in memory is answered at once, whatever the database does. Raises `DirectoryUnavailable` for
        a name not in memory when the database cannot be read, or not within `miss_wait_s`."""
        target = self._by_name.get(name)
        if target is not None:
            return target
        try:
            async with asyncio.timeout(self.miss_wait_s):  # a database that stopped answering: 503, not a hang
                return await self._find_after_reload(name, session_factory)
        except TimeoutError:
            raise DirectoryUnavailable() from None

    async def _find_after_reload(self, name: str, session_factory: async_sessionmaker[AsyncSession]
                                 ) -> RelayTarget | None:
        arrived = time.monotonic()
        while True:  # wait for a reload that began after this call arrived: it sees any commit before it
            task = self._miss_reload
            if task is not None and self._miss_reload_started >= arrived:
                break
            if task is not None and not task.done():
                await asyncio.shield(task)  # began too early to count; the next one will not
                continue
            wait = self._miss_reload_started + self.miss_reload_gap_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # another caller may have started one meanwhile
            self._miss_reload_started = time.monotonic()
            self._miss_reload = asyncio.create_task(self._reload_or_log(session_factory),
                                                    name="resource-directory-miss")
        read = await asyncio.shield(task)  # one caller leaving does not cancel the others' reload
        target = self._by_name.get(name)
        if target is None and not read:
            raise DirectoryUnavailable()  # perhaps registered meanwhile: "retry", never a wrong "no such resource"
        return target

    def forget(self, name: str) -> None:
        """Called right after this replica committed the removal of `name`."""
        self._by_name.pop(name, None)
        self._guard.drop(name)

    async def reload(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        number = self._guard.begin()
        async with session_factory() as session:
            rows = await session.execute(
                select(Resource.id, Resource.name, Resource.region, Resource.upstream_endpoint))
            by_name = {r.name: RelayTarget(r.id, r.name, r.region, r.upstream_endpoint) for r in rows}
        if not self._guard.accept(number, by_name):
            return  # a reload that started later has already put a fresher view in force
        self._by_name = by_name
        self._loaded = True
        self._loaded_at.set_to_current_time()

    async def _reload_or_log(self, session_factory: async_sessionmaker[AsyncSession]) -> bool:
        """True if the database was read (the view is current), False if the reload failed (logged)."""
        try:
            await self.reload(session_factory)
        except Exception:
            log.warning("resource.directory.reload_failed")
            return False
        return True

    async def run(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        while True:
            await self._reload_or_log(session_factory)
            self._first_attempt.set()
            await asyncio.sleep(self.refresh_s)

    async def start(self, session_factory: async_sessionmaker[AsyncSession], *, wait_s: float = 5.0) -> None:
        """Load now and then every `refresh_s`, in the background. Waits at most `wait_s` for the first
        attempt, so a hung database never holds start-up; `/readyz` says "not_loaded" until a load succeeded
        (a failure is logged and retried on the next period)."""
        self._task = asyncio.create_task(self.run(session_factory), name="resource-directory")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), wait_s)

    async def stop(self) -> None:
        for task in (self._task, self._miss_reload):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def get_resources(ctx: ContextDep) -> ResourceDirectory:
    """The process's directory, for routes (beside its type, as `AccessDep` is, so `app.deps` needn't import it)."""
    return ctx.resources


ResourcesDep = Annotated[ResourceDirectory, Depends(get_resources)]
