"""What /readyz reports of the database and each region's store: probed in the background, each probe
bounded, so the probe the orchestrator sends reads memory and never waits on a dependency (C8)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from sqlalchemy import text

from app.logs import get_logger

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.storage.router import RegionRouter

log = get_logger("voicelog.readiness")

CHECKING = "checking"  # no probe has finished yet
DATABASE_PROBE_TIMEOUT_S = 2.0
PROBE_EVERY_S = 2.0


async def database_state(engine: AsyncEngine) -> str:
    """"ok" or "unreachable", within DATABASE_PROBE_TIMEOUT_S whatever the database or the pool does."""
    try:
        async with asyncio.timeout(DATABASE_PROBE_TIMEOUT_S), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        return "unreachable"
    return "ok"


class DependencyProbes:
    """The last result of each dependency's probe, refreshed every `every_s`; a probe not yet finished reads
    "checking". The database and the stores are probed side by side, each result kept as soon as it is known."""

    def __init__(self, *, engine: AsyncEngine, stores: RegionRouter, regions: list[str],
                 every_s: float = PROBE_EVERY_S) -> None:
        self._engine, self._stores, self._every_s = engine, stores, every_s
        self.database = CHECKING
        self.storage: dict[str, str] = dict.fromkeys(regions, CHECKING)
        self._task: asyncio.Task[None] | None = None
        self._first_round = asyncio.Event()

    async def refresh(self) -> None:
        await asyncio.gather(self._probe_database(), self._probe_storage())

    async def _probe_database(self) -> None:
        self.database = await database_state(self._engine)

    async def _probe_storage(self) -> None:
        self.storage = await self._stores.check_ready()  # each region bounded by its ready_timeout_s

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # a probe's bug must not end the loop that keeps readiness current
                log.warning("readiness.probe_failed", error=type(exc).__name__)
            self._first_round.set()
            await asyncio.sleep(self._every_s)

    async def start(self, *, wait_s: float) -> None:
        """Start probing; wait up to `wait_s` for the first round, so a healthy start reports its results."""
        self._task = asyncio.create_task(self.run(), name="readiness-probes")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._first_round.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
