"""`voicelog_event_loop_lag_seconds`: a stall of the event loop shows up in the metric operators watch."""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from tests.fixtures.relay import RelayHandle


async def late_and_total(relay: RelayHandle) -> tuple[float, float]:
    """(timer firings more than 100 ms late, all firings) from the relay's /metrics."""
    async with httpx.AsyncClient(base_url=relay.http) as client:
        text = (await client.get("/metrics")).text
    buckets = dict(re.findall(r'^voicelog_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M))
    total = float(buckets["+Inf"])
    return total - float(buckets["0.1"]), total


async def test_a_blocked_event_loop_is_measured_as_lag(relay: RelayHandle) -> None:
    await asyncio.sleep(0.5)
    late_before, total_before = await late_and_total(relay)
    assert total_before >= 3  # it measures all the time, every 100 ms
    time.sleep(0.3)  # hold the relay's event loop (this test runs on it) as a stall would
    await asyncio.sleep(0.25)
    late_after, total_after = await late_and_total(relay)
    assert total_after > total_before
    assert late_after - late_before >= 1
