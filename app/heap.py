"""Garbage-collector settings for the long-running server, where a collection pause is a relay stall.

A full (generation 2) collection walks every tracked object, and after start-up that is mostly what
start-up made: modules, the app, SQLAlchemy and pydantic internals, the SDKs. Measured under 50 recorded
real-time sessions, such collections held the event loop 50-180 ms, the longest stalls seen
(`voicelog_event_loop_lag_seconds`). Freezing the start-up heap takes it out of every later collection.
"""

from __future__ import annotations

import gc


def settle_after_startup(*, young_threshold: int = 7_000) -> None:
    """Collect once, freeze what survives (never collected again: it lives as long as the process anyway),
    and let ten times more allocations happen between young collections (fewer, equally short, pauses)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
