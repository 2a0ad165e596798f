"""Event-loop lag: how late a 100 ms timer fires. Every relayed frame waits at least that long too.

A relay's added latency is, at its worst, the time its event loop spends not reading sockets: a burst of
work on the loop, the garbage collector, or another thread holding the GIL. This measures it directly, in
production, as `voicelog_event_loop_lag_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections import deque

from prometheus_client import CollectorRegistry, Histogram

PERIOD_S = 0.1
RECENT = 10  # the samples `recent_lag_s` looks at: the last second


class LoopLagMonitor:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Histogram(
            "voicelog_event_loop_lag_seconds",
            f"How late a {PERIOD_S * 1000:.0f} ms timer on the event loop fired (frames wait as long).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self._task: asyncio.Task[None] | None = None
        self._recent: deque[float] = deque(maxlen=RECENT)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + PERIOD_S
            await asyncio.sleep(PERIOD_S)
            lag = max(0.0, loop.time() - due)
            self._recent.append(lag)
            self.lag.observe(lag)

    def recent_lag_s(self) -> float:
        """The median lag of the last second's samples (0 until there are 5): the relay's admission reads it.
        A median, so one pause (start-up, a collection) refuses nobody; a loop late sample after sample does."""
        if len(self._recent) < RECENT // 2:
            return 0.0
        return statistics.median(self._recent)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
